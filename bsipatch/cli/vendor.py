"""``bsipatch release build REPO --matrix FILE``: the matrix build's options and handler.

:mod:`bsipatch.cli.release` adds these options to ``release build`` and calls
:func:`cmd_matrix_build` when ``--matrix`` is given. The vendor package (and with it
Dask) is imported only then. No build logic here: see :mod:`bsipatch.vendor.build`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bsipatch.cli._common import emit
from bsipatch.errors import FormatError

_SINGLE = ("id", "os_version", "build", "supplemental_build", "component", "cve", "back_to_base")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--matrix``, ``--cluster``, ``--workers``, ``--from-previous`` to ``release build``."""
    p.add_argument(
        "--matrix",
        metavar="FILE",
        help="build matrix (.json or .toml): one release for many variants (replaces "
        "--id, --os-version, --build, --supplemental-build and --component)",
    )
    p.add_argument(
        "--cluster",
        metavar="none|local|tcp://HOST:PORT",
        help="with --matrix: where tasks run (default: local Dask cluster when there is "
        "more than one task, else in process)",
    )
    p.add_argument(
        "--workers", type=int, metavar="N", help="with --cluster local: worker processes"
    )
    p.add_argument(
        "--from-previous",
        type=int,
        default=0,
        metavar="K",
        help="with --matrix: also patch from the images of each variant's last K releases",
    )


def check_single(args: argparse.Namespace) -> None:
    """Without ``--matrix``, demand the single-build options; with it, refuse them."""
    given = [o for o in _SINGLE if getattr(args, o, None)]
    if args.matrix:
        if given:
            opts = ", ".join("--" + o.replace("_", "-") for o in given)
            raise FormatError(f"--matrix replaces {opts}: give the release in the matrix file")
        return
    missing = [o for o in _SINGLE[:4] if not getattr(args, o, None)]
    if missing:
        opts = ", ".join("--" + o.replace("_", "-") for o in missing)
        raise FormatError(f"release build needs {opts} (or --matrix FILE)")
    if args.cluster or args.workers or args.from_previous:
        raise FormatError("--cluster, --workers and --from-previous go with --matrix")


def cmd_matrix_build(
    args: argparse.Namespace, keys: Any, now: datetime, published: datetime, expiry: Any
) -> int:
    """Run a matrix build (keys, times and lifetimes come from the ``release build`` handler)."""
    from bsipatch.vendor.build import build_matrix
    from bsipatch.vendor.matrix import load_matrix

    matrix = load_matrix(args.matrix)
    report = build_matrix(
        args.repo,
        matrix,
        keys=keys,
        now=now,
        published=published,
        expiry=expiry,
        from_previous=args.from_previous,
        cluster=args.cluster,
        workers=args.workers,
        threads=args.threads or 1,
        say=progress_line(args),
    )
    rel = report.release
    lines = [
        f"published {rel.release_id} (sequence {rel.sequence}) for {len(matrix.variants)} "
        f"variant(s), {len(report.results)} patch(es) in {report.seconds:.1f} s "
        f"(cluster {report.cluster})"
    ]
    for r in report.results:
        src = r.source_release or "base"
        lines.append(f"  {r.build} {r.component:12} from {src:10} {r.patch_size} bytes")
    emit(args, report.to_dict(), lines)
    return 0


def progress_line(args: argparse.Namespace) -> Callable[[str], None]:
    """Where per-task lines go: stderr unless ``--quiet``/``--json``."""
    if args.quiet or args.json:
        return lambda _line: None
    return lambda line: print(line, file=sys.stderr, flush=True)
