"""Atheris harness for the whole Python apply path (framing, zstd, C applier).

Run: ``pip install atheris`` then ``python fuzz/fuzz_apply.py -max_total_time=60``.
Any exception other than a bsipatch PatchError is a finding. Seeds: a few real
patches are generated at start-up and used as the first inputs' shape.
"""

from __future__ import annotations

import contextlib
import io
import sys

import atheris

with atheris.instrument_imports():
    from bsipatch.apply import apply
    from bsipatch.errors import PatchError

OLD = bytes((i * 31 + (i >> 8)) & 0xFF for i in range(65536))


def test_one(data: bytes) -> None:
    with contextlib.suppress(PatchError):
        apply(OLD, data, io.BytesIO(), threads=1)


def main() -> None:
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
