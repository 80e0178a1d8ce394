"""BSDIFF40 interoperability: Debian's bsdiff/bspatch both ways, and hostile patches."""

from __future__ import annotations

import bz2
import io
import os
import random
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool

from bsipatch.delta.apply import apply
from bsipatch.delta.bsdiff40 import offtin, offtout
from bsipatch.delta.diff import diff
from bsipatch.delta.info import read_patch_info
from bsipatch.errors import CorruptPatch, PatchError, TruncatedPatch


def _pair() -> tuple[bytes, bytes]:
    rnd = random.Random(9)
    old = bytes(rnd.randrange(16) for _ in range(120_000))
    new = bytearray(old)
    for _ in range(100):
        new[rnd.randrange(len(new))] = rnd.randrange(256)
    new[4000:4000] = os.urandom(3000)
    del new[70_000:71_000]
    return old, bytes(new)


def test_offt_encoding() -> None:
    for v in (0, 1, 255, 1 << 40, -1, -(1 << 40)):
        assert offtin(offtout(v)) == v
    assert offtout(-5)[7] & 0x80


@pytest.mark.interop
def test_bspatch_applies_our_export(tmp_path: Path) -> None:
    bspatch = require_tool("bspatch")
    old, new = _pair()
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    diff(tmp_path / "old", tmp_path / "new", tmp_path / "p", format="bsdiff40")
    subprocess.run([bspatch, tmp_path / "old", tmp_path / "out", tmp_path / "p"], check=True)
    assert (tmp_path / "out").read_bytes() == new


@pytest.mark.interop
def test_we_apply_bsdiff_patches(tmp_path: Path) -> None:
    bsdiff = require_tool("bsdiff")
    old, new = _pair()
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    subprocess.run([bsdiff, tmp_path / "old", tmp_path / "new", tmp_path / "p"], check=True)
    apply(tmp_path / "old", tmp_path / "p", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == new
    info = read_patch_info(tmp_path / "p")
    assert info.format == "bsdiff40" and info.new_size == len(new)


@pytest.mark.interop
def test_real_executables_both_ways(tmp_path: Path) -> None:
    bsdiff, bspatch = require_tool("bsdiff"), require_tool("bspatch")
    a, b = Path("/usr/bin/cp").resolve(), Path("/usr/bin/mv").resolve()
    if not (a.exists() and b.exists()):
        pytest.skip("no executables")
    diff(a, b, tmp_path / "ours", format="bsdiff40")
    subprocess.run([bspatch, a, tmp_path / "o1", tmp_path / "ours"], check=True)
    assert (tmp_path / "o1").read_bytes() == b.read_bytes()
    subprocess.run([bsdiff, a, b, tmp_path / "theirs"], check=True)
    apply(a, tmp_path / "theirs", tmp_path / "o2")
    assert (tmp_path / "o2").read_bytes() == b.read_bytes()


def test_export_import_roundtrip_edge_cases() -> None:
    for old, new in [(b"", b""), (b"", b"abc" * 100), (b"xyz" * 100, b""), _pair()]:
        p = io.BytesIO()
        diff(old, new, p, format="bsdiff40")
        out = io.BytesIO()
        apply(old, p.getvalue(), out)
        assert out.getvalue() == new


def _make(ctrl: list[tuple[int, int, int]], dif: bytes, extra: bytes, new_size: int) -> bytes:
    c = bz2.compress(b"".join(offtout(x) + offtout(y) + offtout(z) for x, y, z in ctrl))
    d = bz2.compress(dif)
    return (
        b"BSDIFF40"
        + offtout(len(c))
        + offtout(len(d))
        + offtout(new_size)
        + c
        + d
        + bz2.compress(extra)
    )


def test_hostile_bsdiff40_patches_refused(tmp_path: Path) -> None:
    old = b"0123456789" * 10
    cases = [
        _make([(-1, 0, 0)], b"", b"", 10),  # negative length
        _make([(50, 0, 0)], bytes(50), b"", 10),  # more than the new size
        _make([(5, 0, 0)], bytes(5), b"", 10),  # control ends early
        _make([(10, 0, 0)], bytes(3), b"", 10),  # diff block ends early
        _make([(0, 10, 0)], b"", b"abc", 10),  # extra block ends early
        b"BSDIFF40" + offtout(10**6) + offtout(0) + offtout(5) + b"x",
        b"BSDIFF40" + offtout(-3) + offtout(0) + offtout(5),
    ]
    for p in cases:
        with pytest.raises(PatchError):
            apply(old, p, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    bad = bytearray(_make([(10, 0, 0)], bytes(10), b"", 10))
    bad[40] ^= 0xFF
    with pytest.raises((CorruptPatch, TruncatedPatch)):
        apply(old, bytes(bad), io.BytesIO())


def test_out_of_range_old_reads_count_as_zero_like_bspatch() -> None:
    old = b"abc"
    p = _make([(5, 0, 0)], b"\x01\x01\x01\x01\x01", b"", 5)
    out = io.BytesIO()
    apply(old, p, out)
    assert out.getvalue() == b"bcd\x01\x01"


@pytest.mark.interop
def test_export_first_op_away_from_old_start(tmp_path: Path) -> None:
    """bspatch starts at old offset 0; an export whose first op reads elsewhere seeks first."""
    bspatch = require_tool("bspatch")
    old = os.urandom(4097)
    new = old[4096:] + old[:4096]
    (tmp_path / "old").write_bytes(old)
    diff(old, new, tmp_path / "p", format="bsdiff40")
    subprocess.run([bspatch, tmp_path / "old", tmp_path / "out", tmp_path / "p"], check=True)
    assert (tmp_path / "out").read_bytes() == new
    out = io.BytesIO()
    apply(old, (tmp_path / "p").read_bytes(), out)
    assert out.getvalue() == new


def test_iter_apply_and_reader_stream_bsdiff40() -> None:
    from bsipatch.delta.apply import ApplyReader, iter_apply

    old, new = _pair()
    p = io.BytesIO()
    diff(old, new, p, format="bsdiff40")
    chunks = list(iter_apply(old, p.getvalue(), chunk_size=5000))
    assert b"".join(chunks) == new and max(map(len, chunks)) <= 5000
    with ApplyReader(old, io.BytesIO(p.getvalue())) as r:
        assert r.read() == new
