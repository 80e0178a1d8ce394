"""Patch sizes on every file of a small security update: bsipatch against Debian bsdiff.

Issue 13's "tiny changes" goal: on every file of the libssl3 3.0.20 -> 3.0.22 update
(Debian bookworm, amd64: the engines, the OpenSSL modules, libssl, libcrypto and the
documentation files) bsipatch's patch must be no larger than bsdiff's. This script
unpacks both packages (bench/data.py fetches and caches them with apt-get), makes
both patches of every file present in both, checks that each applies back to the new
file byte for byte (bspatch for bsdiff, bsipatch's own applier for bsipatch), and
prints one table row per file with the ratio, the framing bsipatch chose (version 3
is the compact one-segment framing), its difference stream and whether it kept the
executable transform. ``--framed`` adds the size bsipatch's framed versions (1/2)
give the same file, for comparison.

    python bench/tiny_libssl.py [--framed] [--json out.json]

Exit status 1 when any file's bsipatch patch is larger than bsdiff's.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as bench_data


def _files(old_tree: Path, new_tree: Path) -> list[str]:
    out = []
    for p in sorted(old_tree.rglob("*")):
        rel = p.relative_to(old_tree)
        if (
            p.is_file()
            and not p.is_symlink()
            and (new_tree / rel).is_file()
            and rel.name != ".done"
        ):
            out.append(str(rel))
    return out


def _bsdiff(old: Path, new: Path, tmp: Path) -> int:
    patch = tmp / "p.bsdiff"
    subprocess.run(["bsdiff", str(old), str(new), str(patch)], check=True)
    subprocess.run(["bspatch", str(old), str(tmp / "out"), str(patch)], check=True)
    if (tmp / "out").read_bytes() != new.read_bytes():
        raise SystemExit(f"bspatch did not rebuild {new}")
    return patch.stat().st_size


def _bsipatch(old: Path, new: Path, **kw: object) -> tuple[int, object]:
    from bsipatch.delta.apply import apply
    from bsipatch.delta.diff import diff

    buf = io.BytesIO()
    info = diff(old, new, buf, **kw)  # type: ignore[arg-type]
    out = io.BytesIO()
    apply(old, buf.getvalue(), out)
    if out.getvalue() != new.read_bytes():
        raise SystemExit(f"bsipatch did not rebuild {new}")
    return len(buf.getvalue()), info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--framed", action="store_true", help="also the framed (v1/v2) size")
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    package, _member, v_old, v_new, old_tree, new_tree = bench_data.package_trees()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bsipatch-tiny-") as t:
        tmp = Path(t)
        for rel in _files(old_tree, new_tree):
            old, new = old_tree / rel, new_tree / rel
            b = _bsdiff(old, new, tmp)
            s, info = _bsipatch(old, new)
            stats = info.stats  # type: ignore[attr-defined]
            row = {
                "file": rel,
                "old_bytes": old.stat().st_size,
                "new_bytes": new.stat().st_size,
                "bsdiff": b,
                "bsipatch": s,
                "ratio": round(s / b, 3),
                "version": info.version,  # type: ignore[attr-defined]
                "stream": "dense" if stats.get("dense_segments") else "sparse",
                "transform": "transform_bytes" in stats,
            }
            if args.framed:
                row["framed"] = _bsipatch(old, new, compact=False)[0]
            rows.append(row)
    print(f"{package} {v_old} -> {v_new} (amd64): bsipatch vs Debian bsdiff, bytes\n")
    head = "| file | old | new | bsdiff | bsipatch | ratio | version | stream | transform |"
    head += " framed v1/v2 |" if args.framed else ""
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        line = (
            f"| {Path(str(r['file'])).name} | {r['old_bytes']:,} | {r['new_bytes']:,} "
            f"| {r['bsdiff']:,} | {r['bsipatch']:,} | {r['ratio']:.3f} | {r['version']} "
            f"| {r['stream']} | {'yes' if r['transform'] else 'no'} |"
        )
        print(line + (f" {r['framed']:,} |" if args.framed else ""))
    worse = [r["file"] for r in rows if int(r["bsipatch"]) > int(r["bsdiff"])]  # type: ignore[call-overload]
    print(f"\nfiles: {len(rows)}; bsipatch larger than bsdiff on: {worse or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
