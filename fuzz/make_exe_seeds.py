"""Write seed inputs for fuzz/fuzz_exe.c from pairs of ELF files.

Each seed is the harness's input layout (region count, map count, 14-byte regions,
12-byte map entries, then the old file) for the transform exe.prepare() plans for
the pair; entries that do not fit the harness's narrow fields are dropped. Usage:
    python fuzz/make_exe_seeds.py OLD NEW OUT [OLD NEW OUT ...]
This script only writes seeds; it does not fuzz.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from bsipatch.delta import exe
from bsipatch.delta.diff import compute_ops


def seed(old: bytes, new: bytes) -> bytes:
    """The harness input for old -> new."""
    prep = exe.prepare(old, new, compute_ops)
    if prep is None:
        raise SystemExit("not an ELF pair")
    regs = [r for r in prep.transform.regions if max(r.off, r.len, r.va) < 1 << 32][:31]
    maps = [m for m in prep.transform.map if 0 <= m[0] < 1 << 32 and m[1] < 1 << 32][:63]
    out = bytearray([len(regs), len(maps)])
    for r in regs:
        arg = (
            {62: 1, 183: 2}.get(r.arg, min(r.arg, 63) << 2) if r.kind == 3 else min(r.arg, 63) << 2
        )
        out += struct.pack("<IIIBB", r.off, r.len, r.va, r.kind, arg)
    for va, n, d in maps:
        out += struct.pack("<IIi", va, n, max(min(d, 2**31 - 1), -(2**31)))
    return bytes(out) + old


def main(argv: list[str]) -> int:
    for i in range(0, len(argv) - 2, 3):
        data = seed(Path(argv[i]).read_bytes(), Path(argv[i + 1]).read_bytes())
        Path(argv[i + 2]).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
