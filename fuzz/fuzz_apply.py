"""Atheris harness for the whole Python apply path (framing, zstd, C applier).

Run: ``pip install atheris`` then ``python fuzz/fuzz_apply.py -max_total_time=60``.
Any exception other than a bsipatch PatchError is a finding. Seeds: unless corpus
directories are given, a few real patches of ``OLD`` (bsipatch format at two levels,
and BSDIFF40) are made at start-up into a temporary corpus directory, so mutations
start from inputs that pass the framing.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from bsipatch.delta.apply import apply
    from bsipatch.errors import PatchError

OLD = bytes((i * 31 + (i >> 8)) & 0xFF for i in range(65536))


def test_one(data: bytes) -> None:
    with contextlib.suppress(PatchError):
        apply(OLD, data, io.BytesIO(), threads=1)


def _seed_corpus() -> str:
    from bsipatch.delta.diff import diff

    seeds = Path(tempfile.mkdtemp(prefix="bsipatch-fuzz-"))
    new = bytearray(OLD)
    new[1000:1010] = b"0123456789"
    new[30000:30000] = b"inserted" * 20
    churn = bytearray(OLD)  # 4-byte values moved alike: a dense difference stream
    for i in range(0, len(churn) - 4, 7):
        churn[i] = (churn[i] + 0x40) & 0xFF
    variants = {
        "edit": bytes(new),
        "churn": bytes(churn),
        "empty": b"",
        "grown": OLD + b"tail" * 100,
        "unrelated": bytes(range(256)) * 8,
    }
    for name, data in variants.items():
        for fmt in ("bsipatch", "bsipatch-v1", "bsdiff40"):
            out = io.BytesIO()  # bsipatch: version 3 (one segment), -v1: the framed form
            diff(OLD, data, out, format=fmt[:8], compact=fmt != "bsipatch-v1")
            (seeds / f"{name}.{fmt}").write_bytes(out.getvalue())
    return str(seeds)


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(_seed_corpus())
    atheris.Setup(args, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
