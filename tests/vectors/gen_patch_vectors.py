"""Write the stored version 1 patches of tests/vectors (see README.md, "patch-v1-*").

The pair is made from a fixed seed (``pair()``, shared with tests/test_compact.py).
Run with an older bsipatch to store what it wrote:
``python tests/vectors/gen_patch_vectors.py``; the files in the repository were
written by bsipatch at commit 29da1a4, before the compact framing (version 3) existed.
"""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

SEED = 20261128


def pair(seed: int = SEED, size: int = 60_000) -> tuple[bytes, bytes]:
    """The old and new images the stored patches connect."""
    rnd = random.Random(seed)
    old = bytes(rnd.randrange(8) for _ in range(size))
    new = bytearray(old)
    for _ in range(40):
        new[rnd.randrange(len(new))] = rnd.randrange(256)
    new[1000:1000] = bytes(rnd.randrange(256) for _ in range(500))
    del new[30000:30200]
    new += old[:4096]
    return old, bytes(new)


def main() -> int:
    from bsipatch.delta.diff import diff

    old, new = pair()
    here = Path(__file__).resolve().parent
    for name, kw in (
        ("patch-v1-one-segment.bsipatch", {}),
        ("patch-v1-four-segments.bsipatch", {"segment_size": 16384}),
    ):
        out = io.BytesIO()
        try:
            diff(old, new, out, level=19, threads=1, compact=False, **kw)  # type: ignore[arg-type]
        except TypeError:  # a bsipatch from before version 3 (no compact=)
            diff(old, new, out, level=19, threads=1, **kw)  # type: ignore[arg-type]
        (here / name).write_bytes(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
