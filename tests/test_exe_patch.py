"""Executable-aware patches end to end: bsipatch.diff makes version 2 patches for ELF
pairs, every applier shape rebuilds the new file byte for byte, the patch is smaller
than the version 1 patch of the same pair, and damage to the transform block is caught.

Inputs: libraries the C compiler builds (x86-64 with gcc, AArch64 with
aarch64-linux-gnu-gcc: a function inserted in the middle, one function changed) and
libexpat.so.1 from Debian bookworm -> bookworm-security (amd64 and arm64).
"""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

import exe_data
import numpy as np
import pytest

import bsipatch
from bsipatch.delta import patchformat as patchfmt
from bsipatch.delta.apply import ApplyReader, Provenance, iter_apply
from bsipatch.delta.diff import diff
from bsipatch.delta.info import read_patch_info
from bsipatch.errors import CorruptPatch, TruncatedPatch, UnsupportedPatch, WrongBaseImage
from bsipatch.seal.tree import image_leaves


@pytest.fixture(scope="module")
def pairs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[bytes, bytes]]:
    out = exe_data.standard_pairs(request, tmp_path_factory)
    return out


def _diff(old: bytes, new: bytes, **kw: object) -> tuple[bytes, patchfmt.PatchInfo]:
    f = io.BytesIO()
    # compact= is not a public option (the framing is the engine's choice)
    make = diff if "compact" in kw else bsipatch.diff
    info = make(old, new, f, **kw)  # type: ignore[operator]
    return f.getvalue(), info


NAMES = ["x86-insert", "x86-change", "a64-insert", "a64-change", "expat-amd64", "expat-arm64"]


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_and_smaller_than_version_1(
    name: str, pairs: dict[str, tuple[bytes, bytes]], tmp_path: Path
) -> None:
    old, new = pairs[name]
    v2, info = _diff(old, new, compact=False)
    v1, info1 = _diff(old, new, exe=False, compact=False)
    assert info.version == 2 and info1.version == 1
    assert v2[8:10] == b"\x02\x00" and v2[144:148] == b"BXFM"
    assert len(v2) < len(v1), (len(v2), len(v1))
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(v2)
    bsipatch.apply(tmp_path / "old", tmp_path / "p", tmp_path / "new")  # path: threads, temp file
    assert (tmp_path / "new").read_bytes() == new
    out = io.BytesIO()
    bsipatch.apply(old, v2, out)  # buffers and a stream
    assert out.getvalue() == new
    assert b"".join(iter_apply(old, io.BytesIO(v2), chunk_size=777)) == new
    assert ApplyReader(old, v2).read() == new
    info_read = read_patch_info(v2)
    assert info_read.version == 2 and info_read.stats["transform_bytes"] > 12
    # the version 1 patch of the same pair still applies
    out1 = io.BytesIO()
    bsipatch.apply(old, v1, out1)
    assert out1.getvalue() == new
    # the default (compact framing, version 3) carries the same transform, smaller
    v3, info3 = _diff(old, new)
    assert info3.version == 3 and len(v3) < len(v2) and v3[8:10] == b"\x03\x00"
    assert info3.stats["transform_bytes"] == info.stats["transform_bytes"]
    bsipatch.apply(tmp_path / "old", v3, tmp_path / "new3")
    assert (tmp_path / "new3").read_bytes() == new
    assert b"".join(iter_apply(old, io.BytesIO(v3), chunk_size=777)) == new


def test_real_pairs_gain(pairs: dict[str, tuple[bytes, bytes]]) -> None:
    """On the real update the reference-aware patch is at least 5% smaller."""
    for arch in ("amd64", "arm64"):
        old, new = pairs[f"expat-{arch}"]
        v2, _ = _diff(old, new)
        v1, _ = _diff(old, new, exe=False)
        assert len(v2) < 0.95 * len(v1), (arch, len(v2), len(v1))


def test_provenance_with_a_transform_hashes_the_output(
    pairs: dict[str, tuple[bytes, bytes]], tmp_path: Path
) -> None:
    old, new = pairs["expat-amd64"]
    v2, _ = _diff(old, new)
    (tmp_path / "old").write_bytes(old)
    salt = bytes(range(32))
    prov = Provenance(image_leaves(tmp_path / "old", salt), salt)
    bsipatch.hazmat.apply(
        tmp_path / "old", io.BytesIO(v2), tmp_path / "new", verify_old=True, verify_new=True,
        provenance=prov,
    )  # fmt: skip
    assert (tmp_path / "new").read_bytes() == new
    assert np.array_equal(prov.leaves, image_leaves(tmp_path / "new", salt))
    assert prov.hashed_blocks == len(prov.leaves)


def _rehash_header(p: bytearray) -> None:
    p[112:144] = hashlib.sha256(bytes(p[:112])).digest()


def test_damage_to_the_transform_block_is_caught(pairs: dict[str, tuple[bytes, bytes]]) -> None:
    old, new = pairs["x86-change"]
    v2, _ = _diff(old, new, compact=False)
    head = struct.unpack_from("<4sIII", v2, 144)
    end = 144 + 16 + head[3] + 32
    for pos in (144, 148, 152, 156, 170, end - 40, end - 1):
        bad = bytearray(v2)
        bad[pos] ^= 0x40
        with pytest.raises(CorruptPatch):
            bsipatch.apply(old, bytes(bad), io.BytesIO())
    for cut in (150, 170, end - 1):
        with pytest.raises(TruncatedPatch):
            bsipatch.apply(old, v2[:cut], io.BytesIO())
    # a version 2 header without its block, or a block under a version 1 header
    dropped = bytearray(v2[:144] + v2[end:])
    with pytest.raises(CorruptPatch):
        bsipatch.apply(old, bytes(dropped), io.BytesIO())
    as_v1 = bytearray(v2)
    as_v1[8:10] = b"\x01\x00"
    _rehash_header(as_v1)
    with pytest.raises(CorruptPatch):
        bsipatch.apply(old, bytes(as_v1), io.BytesIO())
    future = bytearray(v2)
    future[8:10] = b"\x04\x00"
    _rehash_header(future)
    with pytest.raises(UnsupportedPatch):
        bsipatch.apply(old, bytes(future), io.BytesIO())


def test_wrong_old_image_is_reported(pairs: dict[str, tuple[bytes, bytes]], tmp_path: Path) -> None:
    old, new = pairs["a64-insert"]
    v2, _ = _diff(old, new)
    other = bytearray(old)
    other[len(other) // 2] ^= 1
    (tmp_path / "old").write_bytes(bytes(other))
    with pytest.raises(WrongBaseImage):
        bsipatch.apply(tmp_path / "old", v2, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(WrongBaseImage):
        bsipatch.apply(bytes(other), v2, io.BytesIO())


def test_non_elf_inputs_keep_version_1() -> None:
    old = bytes(range(256)) * 400
    new = old[:5000] + b"changed" + old[5000:]
    v, info = _diff(old, new, compact=False)
    assert info.version == 1 and v[8:10] == b"\x01\x00"
    elfish = b"\x7fELF" + old[4:]
    v, info = _diff(elfish, elfish[:100] + b"x" + elfish[101:], compact=False)
    assert info.version == 1
    v, info = _diff(elfish, elfish[:100] + b"x" + elfish[101:])
    assert info.version == 3 and "transform_bytes" not in info.stats


def test_concatenated_elf_files(pairs: dict[str, tuple[bytes, bytes]]) -> None:
    """Libraries glued together are not one ELF file. The first starts at offset 0, an
    aligned offset of an image, so it gets the image transform (version 2, smaller);
    glued at unaligned offsets, none is found and the version 1 bytes are kept."""
    (a, b), (c, d) = pairs["x86-insert"], pairs["a64-change"]
    old, new = a + c, b + d
    v, info = _diff(old, new, compact=False)
    v1, _ = _diff(old, new, exe=False, compact=False)
    assert info.version == 2 and len(v) < len(v1)
    assert bsipatch.apply(old, v) == new
    v, info = _diff(old, new)  # one segment: the compact framing, same transform
    v1, _ = _diff(old, new, exe=False)
    assert info.version == 3 and info.stats["transform_bytes"] > 0 and len(v) < len(v1)
    assert bsipatch.apply(old, v) == new
    old, new = b"\x01" * 100 + old, b"\x01" * 100 + new
    v, info = _diff(old, new, compact=False)
    v1, _ = _diff(old, new, exe=False, compact=False)
    assert info.version == 1 and v == v1
    v, info = _diff(old, new)
    v1, _ = _diff(old, new, exe=False)
    assert "transform_bytes" not in info.stats and v == v1
