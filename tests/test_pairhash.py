"""The diff's paired SHA-256 of old and new: the same digests as hashlib, holes included."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from bsipatch._buffers import MappedFile, open_buffer
from bsipatch.delta import pairhash


def _sparse(path: Path, size: int, data: list[tuple[int, int]], rnd: random.Random) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for s, e in data:
            f.seek(s)
            f.write(rnd.randbytes(e - s))
    return path


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # holes at the start, inside and at the end; sizes no multiple of a piece
        ((5_000_123, [(100_000, 1_500_000), (3_000_000, 3_000_001)]),
         (5_000_123, [(0, 3 * 4096), (4_999_000, 5_000_123)])),
        ((3_333_333, [(0, 3_333_333)]), (1_234_567, [(1 << 20, 1_234_567)])),  # unequal sizes
        ((0, []), (300 * 4096 + 5, [(8192, 299 * 4096)])),  # empty old
    ],
)  # fmt: skip
def test_digests_equal_hashlib_for_files_and_buffers(
    tmp_path: Path,
    old: tuple[int, list[tuple[int, int]]],
    new: tuple[int, list[tuple[int, int]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pairhash, "PIECE", 64 << 10)  # many pieces, holes inside them
    rnd = random.Random(3)
    po = _sparse(tmp_path / "old", *old, rnd)
    pn = _sparse(tmp_path / "new", *new, rnd)
    want = hashlib.sha256(po.read_bytes()).digest(), hashlib.sha256(pn.read_bytes()).digest()
    with open_buffer(po) as a, open_buffer(pn) as b:
        assert isinstance(b, MappedFile)
        assert pairhash.sha256_pair(a, b) == want
    assert pairhash.sha256_pair(po.read_bytes(), pn.read_bytes()) == want


def test_open_buffer_exit_with_a_view_still_alive_keeps_the_result(tmp_path: Path) -> None:
    """A view that outlives the ``with`` (e.g. held by an object in a reference cycle
    until the collector runs) must not turn a finished job into a BufferError; the map
    is unmapped once the view goes."""
    import gc
    import weakref

    p = tmp_path / "img"
    p.write_bytes(b"x" * 10_000)
    with open_buffer(p) as m:
        view = memoryview(m)[:100]
        ref = weakref.ref(m)
    assert bytes(view[:3]) == b"xxx"  # still mapped: no use after unmap
    del view, m
    gc.collect()
    assert ref() is None  # and gone with its last view
