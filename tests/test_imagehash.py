"""Hashing the old and new images during an apply: the thread (PairHasher) and the
inline hasher small images use give the digests hashlib gives, and an apply through
either is exact, refuses a wrong base image and resumes."""

from __future__ import annotations

import hashlib
import io
import os
import random
from pathlib import Path

import pytest

from bsipatch.delta import imagehash
from bsipatch.delta.apply import apply
from bsipatch.delta.diff import diff
from bsipatch.errors import TruncatedPatch, WrongBaseImage


@pytest.fixture(params=["inline", "thread"])
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    below = 1 << 62 if request.param == "inline" else -1
    monkeypatch.setattr(imagehash, "INLINE_BELOW", below)
    return str(request.param)


@pytest.mark.parametrize("seed", range(4))
def test_digests_are_hashlibs(kind: str, seed: int) -> None:
    rng = random.Random(seed)
    old = rng.randbytes(rng.choice((0, 1, 5000, 3 << 20)))
    new = rng.randbytes(rng.choice((0, 7, 4096, (3 << 20) + 11)))
    h = imagehash.new_hasher(imagehash.OldStream(old, 1 << 40), len(old) + len(new))
    assert isinstance(h, imagehash.InlineHasher) == (kind == "inline")
    try:
        h.hash_new()
        pos = 0
        while pos < len(new):
            buf = h.buffer()
            n = min(len(buf), rng.randrange(1, 1 << 20), len(new) - pos)
            buf[:n] = new[pos : pos + n]
            h.put(memoryview(buf)[:n])
            pos += n
        h.finish_new()
        assert h.h.digest() == hashlib.sha256(new).digest()
        assert h.old_digest() == hashlib.sha256(old).digest()
    finally:
        h.shutdown()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path, bytes]:
    old = os.urandom(300_000)
    new = old[:70_000] + b"changed" * 500 + old[80_000:] + os.urandom(3000)
    op, np_, pp = tmp_path / "old.img", tmp_path / "new.img", tmp_path / "u.bsipatch"
    op.write_bytes(old)
    np_.write_bytes(new)
    diff(op, np_, pp, segment_size=16384, level=3)
    return op, np_, pp, new


def test_apply_through_either_hasher(kind: str, pair: tuple, tmp_path: Path) -> None:
    op, np_, pp, new = pair
    out = tmp_path / "out.img"
    apply(op, pp, out)
    assert out.read_bytes() == new
    out.unlink()
    apply(op, pp, out, verify_old=False)
    assert out.read_bytes() == new
    out.unlink()
    with pytest.raises(WrongBaseImage):
        apply(np_, pp, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.img", "old.img", "u.bsipatch"]


def test_resume_through_either_hasher(kind: str, pair: tuple, tmp_path: Path) -> None:
    op, _, pp, new = pair
    out = tmp_path / "out.img"
    data = pp.read_bytes()
    with pytest.raises(TruncatedPatch):
        apply(op, io.BytesIO(data[: len(data) * 2 // 3]), out, resume=True)
    info = apply(op, io.BytesIO(data), out, resume=True)
    assert out.read_bytes() == new
    assert info.stats["resumed_segments"] > 2
