"""CLI commands of the delta engine: ``diff``, ``apply`` and ``info``.

Argument parsing, progress bars and output only; the work is in bsipatch.delta.diff,
bsipatch.delta.apply and bsipatch.delta.patchformat. ``apply``'s command itself is in
bsipatch.cli.fast (its quick entry runs it without argparse).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bsipatch.cli._common import (
    add_command,
    emit,
    int_in,
    positive_int,
    progress_enabled,
    refuse_same_file,
)
from bsipatch.cli.fast import cmd_apply
from bsipatch.cli.progress import Progress

MAX_SEGMENT_SIZE = 256 << 20  # bsipatch.delta.diff.MAX_SEGMENT_SIZE (not imported: CLI start-up)


def _human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _info_lines(d: dict[str, Any]) -> list[str]:
    if d["format"] == "bsdiff40":
        lines = [
            "format:      BSDIFF40 (classic bsdiff; no checksums)",
            "old image:   size and sha256 not recorded by BSDIFF40",
            f"new image:   {d['new_size']} bytes  sha256 not recorded by BSDIFF40",
        ]
    else:
        lines = [
            f"format:      {d['format']} (version {d['version']})",
            f"old image:   {d['old_size']} bytes  sha256 {d['old_sha256']}",
            f"new image:   {d['new_size']} bytes  sha256 {d['new_sha256']}",
        ]
    lines.append(f"patch size:  {d['patch_size']} bytes ({_human_size(d['patch_size'])})")
    st = d.get("stats", {})
    if st:
        lines.append("stats:       " + ", ".join(f"{k}={v}" for k, v in sorted(st.items())))
    for s in d.get("segments", []):
        b = s["bytes"]
        lines.append(
            f"  segment {s['index']:4d} @ {s['out_offset']:>12} len {s['out_len']:>9} "
            f"comp {s['comp_len']:>9} ops {s['n_ops']:>6} copy {b['copy']} add {b['add']} "
            f"insert {b['insert']} zero {b['zero']}"
        )
    return lines


def cmd_diff(args: argparse.Namespace) -> int:
    """bsipatch diff OLD NEW PATCH."""
    import gc

    # The diff makes few reference cycles, but its imports create enough objects to
    # trigger a dozen collections (about 20 ms of a 0.2 s diff of small files).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _diff(args)
    finally:
        if was_enabled:
            gc.enable()


def _diff(args: argparse.Namespace) -> int:
    from bsipatch.delta.diff import diff

    refuse_same_file(args.patch, {"OLD": args.old, "NEW": args.new})
    with Progress("diff", enabled=progress_enabled(args)) as bar:
        info = diff(
            args.old,
            args.new,
            args.patch,
            format=args.format,
            level=args.level,
            threads=args.threads,
            segment_size=args.segment_size,
            progress=bar.callback,
        )
    d = info.to_dict()
    emit(
        args,
        d,
        [
            f"wrote {args.patch}: {info.patch_size} bytes ({info.format}), "
            f"{info.new_size} bytes of new image from {info.old_size} bytes of old"
        ],
    )
    return 0


def _size_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a byte count, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def cmd_info(args: argparse.Namespace) -> int:
    """bsipatch info PATCH."""
    from bsipatch.delta.info import read_patch_info

    patch: Any = sys.stdin.buffer if args.patch == "-" else args.patch
    info = read_patch_info(patch)
    d = info.to_dict()
    emit(args, d, _info_lines(d))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's subcommands to the CLI."""
    p = add_command(sub, "diff", "make a patch from OLD to NEW", cmd_diff)
    p.add_argument("old", metavar="OLD", help="the image the patch applies to")
    p.add_argument("new", metavar="NEW", help="the image the patch makes")
    p.add_argument("patch", metavar="PATCH", help="the patch file to write")
    p.add_argument(
        "--format",
        choices=("bsipatch", "bsdiff40"),
        default="bsipatch",
        help="bsipatch (default: segmented, zstd, SHA-256 checked) or classic BSDIFF40",
    )
    p.add_argument("--level", type=int_in(1, 22), default=18, help="zstd level 1..22 (default 18)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads (default: all CPUs)")
    p.add_argument(
        "--segment-size",
        type=int_in(4096, MAX_SEGMENT_SIZE),
        default=None,
        metavar="BYTES",
        help="largest output bytes per segment, 4096..256 MiB (default 128 MiB)",
    )

    p = add_command(
        sub, "apply", "apply PATCH (bsipatch or BSDIFF40) to OLD, writing OUT", cmd_apply
    )
    p.add_argument("old", metavar="OLD", help="the image the patch was made for")
    p.add_argument("patch", metavar="PATCH", help="patch file, or - for standard input")
    p.add_argument("out", metavar="OUT", help="where to write the new image")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep a partial output on interruption and continue from it",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="segments applied at once (default: up to 3)",
    )
    p.add_argument(
        "--max-patch-size",
        type=positive_int,
        metavar="BYTES",
        default=None,
        help="refuse patches longer than this many bytes",
    )
    p.add_argument(
        "--expected-size",
        type=_size_arg,
        default=None,
        metavar="BYTES",
        help="the new image's size: the patch header must declare exactly this (without "
        "it, a header claiming output out of proportion to OLD and PATCH is refused)",
    )

    p = add_command(sub, "info", "show a patch's header, segments and op statistics", cmd_info)
    p.add_argument("patch", metavar="PATCH", help="patch file, or - for standard input")
