"""Seals: dm-verity compatible hash trees, checked against the real veritysetup,
bad input refused with typed errors, the verified reader, the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess

import numpy as np
import pytest
from conftest import require_tool
from hypothesis import given, settings
from hypothesis import strategies as st

from bsipatch import cli, hashing
from bsipatch.errors import SealError, SealFormatError, SealMismatch
from bsipatch.seal.tree import (
    BLOCK_SIZE,
    Seal,
    Superblock,
    open_verified,
    read_superblock,
    seal_image,
    verify_image,
)

SALTS = [b"", b"\x01", bytes(range(32)), bytes(range(256))]


def _image(path, size, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


def _vs_format(image, hash_file, salt: bytes, *extra) -> bytes:
    tool = require_tool("veritysetup")
    res = subprocess.run(
        [tool, "format", str(image), str(hash_file), "--salt", salt.hex() or "-", *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    roots = [line.split()[-1] for line in res.stdout.splitlines() if line.startswith("Root hash")]
    return bytes.fromhex(roots[0])


def _vs_verify(image, hash_file, root: bytes) -> subprocess.CompletedProcess:
    tool = require_tool("veritysetup")
    return subprocess.run(
        [tool, "verify", str(image), str(hash_file), root.hex()],
        capture_output=True,
        text=True,
        check=False,
    )


def _flip(path, offset, bit=0):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


# --- interoperability with veritysetup ------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("blocks", [1, 2, 128, 129, 300])
@pytest.mark.parametrize("salt", SALTS, ids=["empty", "1B", "32B", "256B"])
def test_veritysetup_hash_file_verifies_with_bsipatch(tmp_path, blocks, salt):
    img = tmp_path / "img"
    _image(img, blocks * BLOCK_SIZE, seed=blocks)
    root = _vs_format(img, tmp_path / "vs.hash", salt)
    verify_image(img, root, hash_file=tmp_path / "vs.hash")
    verify_image(img, root, salt=salt)
    seal = seal_image(img, salt=salt)
    assert seal.root_hash == root
    assert seal.data_blocks == blocks


@pytest.mark.interop
@pytest.mark.parametrize(
    ("blocks", "salt"),
    [(b, s) for b in (1, 2, 129) for s in SALTS] + [(16385, bytes(range(32)))],
)
def test_bsipatch_hash_file_passes_veritysetup_verify(tmp_path, blocks, salt):
    img = tmp_path / "img"
    _image(img, blocks * BLOCK_SIZE, seed=blocks + 7)
    seal = seal_image(img, hash_file=tmp_path / "bsi.hash", salt=salt)
    res = _vs_verify(img, tmp_path / "bsi.hash", seal.root_hash)
    assert res.returncode == 0, res.stderr
    # and a wrong root is refused by veritysetup too
    bad = bytes([seal.root_hash[0] ^ 1]) + seal.root_hash[1:]
    assert _vs_verify(img, tmp_path / "bsi.hash", bad).returncode != 0


@pytest.mark.interop
def test_hash_file_is_byte_identical_to_veritysetup_apart_from_uuid(tmp_path):
    img = tmp_path / "img"
    _image(img, 700 * BLOCK_SIZE)
    salt = bytes.fromhex("00112233445566778899")
    root = _vs_format(img, tmp_path / "vs.hash", salt)
    seal = seal_image(img, hash_file=tmp_path / "bsi.hash", salt=salt)
    assert seal.root_hash == root
    ours, theirs = (tmp_path / "bsi.hash").read_bytes(), (tmp_path / "vs.hash").read_bytes()
    assert len(ours) == len(theirs) == 4096 * (1 + 6 + 1)
    assert ours[:16] == theirs[:16] and ours[32:] == theirs[32:]


@pytest.mark.interop
def test_hash_type_0_matches_veritysetup_format_0(tmp_path):
    img = tmp_path / "img"
    _image(img, 200 * BLOCK_SIZE)
    root = _vs_format(img, tmp_path / "vs.hash", b"\xab\xcd", "--format=0")
    seal = seal_image(img, salt=b"\xab\xcd", hash_type=0)
    assert seal.root_hash == root
    verify_image(img, root, hash_file=tmp_path / "vs.hash")
    verify_image(img, seal)


@pytest.mark.interop
def test_empty_image_refused_by_veritysetup_sealed_by_bsipatch(tmp_path):
    img = tmp_path / "empty"
    img.write_bytes(b"")
    tool = require_tool("veritysetup")
    res = subprocess.run(
        [tool, "format", str(img), str(tmp_path / "vs.hash")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode != 0  # "device ... is too small"
    seal = seal_image(img, hash_file=tmp_path / "e.hash", salt=b"salt")
    assert seal.data_size == 0 and seal.data_blocks == 0
    assert seal.root_hash == hashlib.sha256(b"salt").digest()
    assert read_superblock(tmp_path / "e.hash").data_blocks == 0
    verify_image(img, seal)
    verify_image(img, seal.root_hash, hash_file=tmp_path / "e.hash")
    with open_verified(img, seal) as r:
        assert r.read() == b""
    # a one-byte image is not the empty image
    (tmp_path / "one").write_bytes(b"\0")
    with pytest.raises(SealMismatch):
        verify_image(tmp_path / "one", seal)
    with pytest.raises(SealError):
        verify_image(tmp_path / "one", seal.root_hash, salt=b"salt")


@pytest.mark.interop
def test_partial_last_block_is_protected_unlike_veritysetup(tmp_path):
    img = tmp_path / "img"
    data = _image(img, 5 * BLOCK_SIZE + 123)
    salt = b"\x05" * 32
    root = _vs_format(img, tmp_path / "vs.hash", salt)
    # veritysetup leaves the tail unprotected: change its last byte, still verifies
    tampered = tmp_path / "tampered"
    tampered.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert _vs_verify(tampered, tmp_path / "vs.hash", root).returncode == 0
    # bsipatch refuses such a hash file rather than leave the tail unchecked
    with pytest.raises(SealFormatError, match="unprotected"):
        verify_image(img, root, hash_file=tmp_path / "vs.hash")
    # bsipatch's own seal covers the tail (zero padded) and names it
    seal = seal_image(img, hash_file=tmp_path / "bsi.hash", salt=salt)
    assert seal.data_blocks == 6 and seal.data_size == len(data)
    verify_image(img, seal, hash_file=tmp_path / "bsi.hash")
    with pytest.raises(SealMismatch) as info:
        verify_image(tampered, seal, hash_file=tmp_path / "bsi.hash")
    assert info.value.block == 5 and info.value.area == "data"
    with pytest.raises(SealMismatch):
        verify_image(tampered, seal)
    # veritysetup accepts bsipatch's hash file for the image zero padded to a block
    padded = tmp_path / "padded"
    padded.write_bytes(data + bytes(-len(data) % BLOCK_SIZE))
    assert _vs_verify(padded, tmp_path / "bsi.hash", seal.root_hash).returncode == 0
    # the exact size is bound: appending zeros (same padded block) is refused
    grown = tmp_path / "grown"
    grown.write_bytes(data + b"\0")
    with pytest.raises(SealMismatch, match="bytes"):
        verify_image(grown, seal)


# --- bad input -----------------------------------------------------------------------


@pytest.fixture()
def sealed(tmp_path):
    """A 300-block image (tree: 1 top block + 3 leaf blocks) with its hash file."""
    img = tmp_path / "img"
    data = _image(img, 300 * BLOCK_SIZE, seed=42)
    hf = tmp_path / "img.hash"
    seal = seal_image(img, hash_file=hf, salt=b"\x11" * 32)
    return img, hf, seal, data


def test_bit_flip_in_image_names_the_block(sealed):
    img, hf, seal, data = sealed
    for block in (0, 1, 127, 128, 299):
        img.write_bytes(data)
        offset = block * BLOCK_SIZE + random.Random(block).randrange(BLOCK_SIZE)
        _flip(img, offset, bit=block % 8)
        with pytest.raises(SealMismatch) as info:
            verify_image(img, seal, hash_file=hf)
        assert info.value.block == block and info.value.area == "data"
        assert f"data block {block}" in str(info.value)
        with pytest.raises(SealMismatch) as info:
            verify_image(img, seal)
        assert info.value.area == "root"


def test_two_bad_blocks_name_the_first(sealed):
    img, hf, seal, _ = sealed
    _flip(img, 250 * BLOCK_SIZE)
    _flip(img, 17 * BLOCK_SIZE + 9)
    with pytest.raises(SealMismatch) as info:
        verify_image(img, seal, hash_file=hf)
    assert info.value.block == 17


@pytest.mark.interop
def test_every_bit_flip_in_the_tree_is_caught_and_named(sealed):
    img, hf, seal, _ = sealed
    good = hf.read_bytes()
    rng = random.Random(0)
    # hash file blocks: 0 superblock, 1 top level, 2..4 level 0
    for hblock in (1, 2, 3, 4):
        for _ in range(3):
            offset = hblock * BLOCK_SIZE + rng.randrange(BLOCK_SIZE)
            hf.write_bytes(good)
            _flip(hf, offset, rng.randrange(8))
            with pytest.raises(SealMismatch) as info:
                verify_image(img, seal, hash_file=hf)
            assert info.value.block == hblock
            assert info.value.area == ("root" if hblock == 1 else "hash")
            with pytest.raises(SealMismatch):
                open_verified(img, seal, hash_file=hf)
            assert _vs_verify(img, hf, seal.root_hash).returncode != 0


def test_flips_in_superblock_fields_are_refused(sealed):
    img, hf, seal, _ = sealed
    good = hf.read_bytes()
    # magic, version, hash type, algorithm, block sizes, data blocks, salt size, salt
    for offset in (0, 8, 12, 32, 65, 69, 72, 80, 88):
        hf.write_bytes(good)
        _flip(hf, offset, 1)
        with pytest.raises(SealError):
            verify_image(img, seal, hash_file=hf)


def test_truncated_hash_file(sealed):
    img, hf, seal, _ = sealed
    good = hf.read_bytes()
    for size in (0, 100, 511, 4096, len(good) - 1):
        hf.write_bytes(good[:size])
        with pytest.raises(SealFormatError, match="truncated"):
            verify_image(img, seal, hash_file=hf)
        with pytest.raises(SealFormatError, match="truncated"):
            open_verified(img, seal, hash_file=hf)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("magic", b"verity\0\1", "magic"),
        ("version", 2, "version"),
        ("hash_type", 7, "hash type"),
        ("algorithm", "sha1", "algorithm"),
        ("data_block_size", 512, "block sizes"),
        ("hash_block_size", 8192, "block sizes"),
        ("data_blocks", 301, "covers 301"),
    ],
)
def test_wrong_superblock(sealed, field, value, message):
    img, hf, seal, _ = sealed
    raw = bytearray(hf.read_bytes())
    sb = Superblock.unpack(bytes(raw))
    if field == "magic":
        raw[0:8] = value
    else:
        import dataclasses

        if field == "version":
            packed = bytearray(sb.pack())
            packed[8:12] = value.to_bytes(4, "little")
        else:
            packed = bytearray(dataclasses.replace(sb, **{field: value}).pack())
        raw[0:512] = packed
    hf.write_bytes(bytes(raw))
    with pytest.raises(SealFormatError, match=message):
        verify_image(img, seal, hash_file=hf)


def test_superblock_salt_size_over_256_refused(sealed):
    img, hf, seal, _ = sealed
    raw = bytearray(hf.read_bytes())
    raw[80:82] = (257).to_bytes(2, "little")
    hf.write_bytes(bytes(raw))
    with pytest.raises(SealFormatError, match="salt size"):
        verify_image(img, seal.root_hash, hash_file=hf)


def test_wrong_salt(sealed):
    img, hf, seal, _ = sealed
    with pytest.raises(SealFormatError, match="wrong salt"):
        verify_image(img, seal.root_hash, hash_file=hf, salt=b"\x12" * 32)
    with pytest.raises(SealMismatch) as info:
        verify_image(img, seal.root_hash, salt=b"\x12" * 32)
    assert info.value.area == "root"
    other = Seal(root_hash=seal.root_hash, salt=b"", data_size=seal.data_size)
    with pytest.raises(SealFormatError, match="wrong salt"):
        verify_image(img, other, hash_file=hf)


def test_wrong_root(sealed):
    img, hf, seal, _ = sealed
    wrong = hashlib.sha256(b"not it").digest()
    with pytest.raises(SealMismatch) as info:
        verify_image(img, wrong, hash_file=hf)
    assert info.value.area == "root"
    with pytest.raises(SealMismatch):
        verify_image(img, wrong, salt=seal.salt)
    with pytest.raises(SealMismatch):
        open_verified(img, wrong, hash_file=hf)
    with pytest.raises(SealFormatError):
        verify_image(img, b"short", salt=b"")
    with pytest.raises(SealFormatError):
        verify_image(img, "zz" * 32, salt=b"")


def test_hash_file_for_another_image_size(sealed, tmp_path):
    _img, hf, seal, data = sealed
    (tmp_path / "small").write_bytes(data[: 200 * BLOCK_SIZE])
    with pytest.raises(SealFormatError, match="covers 300"):
        verify_image(tmp_path / "small", seal.root_hash, hash_file=hf)
    with pytest.raises(SealMismatch, match="seal says"):
        verify_image(tmp_path / "small", seal)


# --- seals, sources, paths -------------------------------------------------------------


def test_seal_dict_round_trip_and_bad_dicts():
    seal = seal_image(b"abc" * 5000, salt=b"\x01\x02")
    d = seal.to_dict()
    assert d["size"] == 15000 and d["salt"] == "0102" and d["hash_algorithm"] == "sha256"
    assert Seal.from_dict(json.loads(json.dumps(d))) == seal
    for bad in (
        {},
        {"root_hash": "00", "salt": "", "size": 1},
        {**d, "size": -1},
        {**d, "salt": "zz"},
        {**d, "size": "5"},
        {**d, "salt": "00" * 257},
        {**d, "data_block_size": 512},
        {**d, "hash_algorithm": "sha1"},
        [],
    ):
        with pytest.raises(SealFormatError):
            Seal.from_dict(bad)


def test_sources_and_chunkings_agree(tmp_path):
    data = random.Random(3).randbytes(97 * BLOCK_SIZE + 5)
    path = tmp_path / "img"
    path.write_bytes(data)
    ref = seal_image(data, salt=b"x")
    assert seal_image(path, salt=b"x") == ref
    assert seal_image(str(path), salt=b"x", threads=1) == ref
    assert seal_image(bytearray(data), salt=b"x") == ref
    assert seal_image(io.BytesIO(data), salt=b"x") == ref
    with open(path, "rb") as f:
        assert seal_image(f, salt=b"x") == ref
    for chunk, threads in ((4096, 3), (3 * 4096, 2), (10 << 20, 4)):
        assert seal_image(path, salt=b"x", chunk_size=chunk, threads=threads) == ref
        verify_image(path, ref, chunk_size=chunk, threads=threads)


def test_non_seekable_stream_is_sealed(tmp_path):
    data = random.Random(4).randbytes(40 * BLOCK_SIZE + 1)
    import threading

    r, w = os.pipe()

    def writer():
        with os.fdopen(w, "wb") as f:
            f.write(data)

    t = threading.Thread(target=writer)
    t.start()
    with os.fdopen(r, "rb") as f:
        seal = seal_image(f, salt=b"p", chunk_size=8 * BLOCK_SIZE)
    t.join()
    assert seal == seal_image(data, salt=b"p")


def test_random_salt_by_default_and_salt_limits():
    a, b = seal_image(bytes(4096)), seal_image(bytes(4096))
    assert len(a.salt) == 32 and a.salt != b.salt and a.root_hash != b.root_hash
    assert seal_image(bytes(4096), salt="").salt == b""
    with pytest.raises(ValueError):
        seal_image(bytes(4096), salt=bytes(257))


def test_portable_and_simd_paths_give_the_same_seal(tmp_path):
    data = random.Random(8).randbytes(300 * BLOCK_SIZE)
    before = hashing.simd_active()
    try:
        hashing.use_simd(False)
        slow = seal_image(data, salt=b"s")
        hashing.use_simd(True)
        fast = seal_image(data, salt=b"s")
    finally:
        hashing.use_simd(before)
    assert slow == fast


def test_progress_reports_to_the_end(tmp_path):
    path = tmp_path / "img"
    _image(path, 50 * BLOCK_SIZE)
    calls = []
    seal_image(path, salt=b"", progress=lambda d, t: calls.append((d, t)), chunk_size=8 * 4096)
    assert calls[-1] == (50 * BLOCK_SIZE, 50 * BLOCK_SIZE)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_image_shrinking_while_hashing_is_reported(tmp_path):
    path = tmp_path / "img"
    data = _image(path, 64 * BLOCK_SIZE)

    class Shrinking(io.RawIOBase):
        def __init__(self):
            self.f = io.BytesIO(data)

        def readable(self):
            return True

        def seekable(self):
            return True

        def seek(self, off, whence=0):
            return self.f.seek(off, whence)

        def tell(self):
            return self.f.tell()

        def readinto(self, b):
            if self.f.tell() >= 32 * BLOCK_SIZE:
                return 0  # the file "ended" early
            return self.f.readinto(b)

    with pytest.raises(SealMismatch, match="shrank"):
        seal_image(Shrinking(), salt=b"", chunk_size=16 * BLOCK_SIZE)


# --- the verified reader -------------------------------------------------------------


@pytest.mark.parametrize("with_hash_file", [True, False])
def test_verified_reader_reads_and_seeks(sealed, with_hash_file):
    img, hf, seal, data = sealed
    kwargs = {"hash_file": hf} if with_hash_file else {}
    with open_verified(img, seal, **kwargs) as r:
        assert r.readable() and r.seekable()
        assert r.read() == data
        rng = random.Random(1)
        for _ in range(50):
            pos = rng.randrange(len(data))
            n = rng.randrange(1, 3 * BLOCK_SIZE)
            r.seek(pos)
            assert r.read(n) == data[pos : pos + n]
        assert r.seek(-10, io.SEEK_END) == len(data) - 10
        assert r.read() == data[-10:]
        assert r.read() == b""


def test_verified_reader_with_root_and_hash_file_and_tail(tmp_path):
    path = tmp_path / "img"
    data = _image(path, 10 * BLOCK_SIZE + 77)
    seal = seal_image(path, hash_file=tmp_path / "h", salt=b"q")
    with open_verified(path, seal.root_hash.hex(), hash_file=tmp_path / "h") as r:
        assert r.read() == data
    with open_verified(data, seal) as r:
        r.seek(10 * BLOCK_SIZE)
        assert r.read() == data[10 * BLOCK_SIZE :]


def test_verified_reader_catches_a_bad_block_on_read(sealed):
    img, hf, seal, data = sealed
    with open_verified(img, seal, hash_file=hf) as r:
        _flip(img, 200 * BLOCK_SIZE + 5)  # changed after opening, as an attacker could
        assert r.read(BLOCK_SIZE) == data[:BLOCK_SIZE]
        r.seek(199 * BLOCK_SIZE)
        assert r.read(BLOCK_SIZE) == data[199 * BLOCK_SIZE : 200 * BLOCK_SIZE]
        with pytest.raises(SealMismatch) as info:
            r.read(10)
        assert info.value.block == 200
        r.seek(150 * BLOCK_SIZE)
        with pytest.raises(SealMismatch) as info:
            r.read(100 * BLOCK_SIZE)  # spans the bad block: nothing returned
        assert info.value.block == 200
        r.seek(201 * BLOCK_SIZE)
        assert r.read() == data[201 * BLOCK_SIZE :]


def test_verified_reader_small_reads_hash_each_block_once(sealed):
    img, hf, seal, data = sealed
    with open_verified(img, seal, hash_file=hf) as r:
        got = b"".join(iter(lambda: r.read(100), b""))
        assert got == data
        assert r.blocks_checked < 2 * 300  # not once per 100-byte read
        # a read served from the verified copy in memory is not re-read from disk
        r.seek(len(data) - 50)
        _flip(img, len(data) - 45)
        assert r.read(10) == data[-50:-40]
        r.seek(0)  # elsewhere the image is read, checked, and the change caught
        r.read(10)
        r.seek(len(data) - 50)
        with pytest.raises(SealMismatch):
            r.read(10)


def test_verified_reader_single_block_image(tmp_path):
    path = tmp_path / "img"
    data = _image(path, 1000)
    seal = seal_image(path, hash_file=tmp_path / "h", salt=b"")
    with open_verified(path, seal, hash_file=tmp_path / "h") as r:
        assert r.read() == data
    _flip(path, 999)
    with open_verified(path, seal, hash_file=tmp_path / "h") as r, pytest.raises(SealMismatch):
        r.read()
    with pytest.raises(SealMismatch) as info:
        verify_image(path, seal, hash_file=tmp_path / "h")
    assert info.value.block == 0


# --- large sparse images -------------------------------------------------------------


def test_sparse_file_holes_hash_like_zeros(tmp_path):
    path = tmp_path / "sparse.img"
    size = (20 << 20) + 777
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (0, (8 << 20) - 1, 8 << 20, (13 << 20) + 5, size - 1):
            f.seek(off)
            f.write(b"\xff")
    data = path.read_bytes()
    ref = seal_image(data, salt=b"h")
    for chunk in (BLOCK_SIZE, 3 * BLOCK_SIZE, 1 << 20, 8 << 20):
        assert seal_image(path, salt=b"h", chunk_size=chunk, threads=2) == ref


@pytest.mark.slow
def test_sparse_image_over_4_gib(tmp_path):
    path = tmp_path / "big.img"
    size = (4 << 30) + 3 * BLOCK_SIZE + 100  # > 2^32 bytes, partial last block
    marks = {0: b"head", (1 << 32) - 2: b"across-4GiB", size - 50: b"tail"}
    with open(path, "wb") as f:
        f.truncate(size)
        for off, payload in marks.items():
            f.seek(off)
            f.write(payload)
    seal = seal_image(path, hash_file=tmp_path / "big.hash", salt=b"\x42" * 32)
    assert seal.data_size == size and seal.data_blocks == size // BLOCK_SIZE + 1
    verify_image(path, seal, hash_file=tmp_path / "big.hash")
    # veritysetup needs ~30 s for this file, so check leaves around 4 GiB directly
    with open(tmp_path / "big.hash", "rb") as f:
        levels = hashing.verity_levels(seal.data_blocks)
        assert levels == [8193, 65, 1]
        f.seek(4096 * (1 + 1 + 65))  # superblock, then the upper levels (top first)
        leaves = np.frombuffer(f.read(), dtype=np.uint8).reshape(-1, 32)
    zero = hashlib.sha256(b"\x42" * 32 + bytes(BLOCK_SIZE)).digest()
    blk = ((1 << 32) - 2) // BLOCK_SIZE
    with open(path, "rb") as f:
        f.seek(blk * BLOCK_SIZE)
        block = f.read(BLOCK_SIZE)
    assert leaves[blk].tobytes() == hashlib.sha256(b"\x42" * 32 + block).digest()
    assert leaves[blk - 1].tobytes() == zero
    # a flip beyond 4 GiB is found and named
    _flip(path, (1 << 32) + 5)
    with pytest.raises(SealMismatch) as info:
        verify_image(path, seal, hash_file=tmp_path / "big.hash")
    assert info.value.block == (1 << 32) // BLOCK_SIZE
    with open_verified(path, seal, hash_file=tmp_path / "big.hash") as r:
        r.seek(size - 50)
        assert r.read() == b"tail" + bytes(46)
        r.seek(1 << 32)
        with pytest.raises(SealMismatch):
            r.read(10)


# --- CLI -----------------------------------------------------------------------------


def test_cli_seal_and_verify(tmp_path, capsys):
    img = tmp_path / "img"
    data = _image(img, 20 * BLOCK_SIZE + 3)
    hf = tmp_path / "img.hash"
    assert cli.main(["seal", str(img), "--hash-file", str(hf), "--salt", "abcd", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["salt"] == "abcd" and out["size"] == len(data) and out["data_blocks"] == 21
    root = out["root_hash"]
    assert cli.main(["verify", str(img), "--root", root, "--hash-file", str(hf)]) == 0
    assert "OK" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "verify",
                str(img),
                "--root",
                root,
                "--salt",
                "abcd",
                "--size",
                str(len(data)),
                "--json",
                "-q",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["ok"] is True
    assert (
        cli.main(
            ["verify", str(img), "--root", root, "--hash-file", str(hf), "--size", str(len(data))]
        )
        == 0
    )
    capsys.readouterr()

    _flip(img, 7 * BLOCK_SIZE + 1)
    assert cli.main(["verify", str(img), "--root", root, "--hash-file", str(hf)]) == 3
    assert "data block 7" in capsys.readouterr().err
    assert cli.main(["verify", str(img), "--root", root, "--salt", "abce"]) == 3
    assert "root hash mismatch" in capsys.readouterr().err
    assert cli.main(["verify", str(img), "--root", root]) == 3
    assert "--salt" in capsys.readouterr().err
    (tmp_path / "trunc").write_bytes(hf.read_bytes()[:5000])
    assert (
        cli.main(["verify", str(img), "--root", root, "--hash-file", str(tmp_path / "trunc")]) == 3
    )
    assert "truncated" in capsys.readouterr().err
    for bad in (
        ["--root", "xyz", "--salt", "-"],
        ["--root", root, "--threads", "0"],
        ["--root", root, "--salt", "00" * 257],
        ["--root", root, "--size", "-1"],
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(["verify", str(img), *bad])
        assert info.value.code == 2


def test_cli_seal_random_salt_and_empty_salt(tmp_path, capsys):
    img = tmp_path / "img"
    _image(img, BLOCK_SIZE)
    assert cli.main(["seal", str(img), "--json"]) == 0
    assert len(bytes.fromhex(json.loads(capsys.readouterr().out)["salt"])) == 32
    assert cli.main(["seal", str(img), "--salt", "-"]) == 0
    out = capsys.readouterr().out
    assert "salt:        -" in out
    root = hashlib.sha256(img.read_bytes()).hexdigest()
    assert root in out
    assert cli.main(["verify", str(img), "--root", root, "--salt", "-"]) == 0


def test_cli_missing_image_is_a_clear_error(tmp_path, capsys):
    # an I/O error carries the seal family's exit code (3) and names the file
    assert cli.main(["seal", str(tmp_path / "nope")]) == 3
    assert "nope: No such file" in capsys.readouterr().err
    assert cli.main(["verify", str(tmp_path / "nope"), "--root", "00" * 32, "--salt", "-"]) == 3
    assert "nope" in capsys.readouterr().err


# --- property: seals equal an independent Python model of dm-verity -------------------


def _model_root(data: bytes, salt: bytes) -> bytes:
    """dm-verity root in plain hashlib (zero-padded tail; empty image -> sha256(salt))."""
    if not data:
        return hashlib.sha256(salt).digest()
    padded = data + bytes(-len(data) % BLOCK_SIZE)
    digests = [
        hashlib.sha256(salt + padded[i : i + BLOCK_SIZE]).digest()
        for i in range(0, len(padded), BLOCK_SIZE)
    ]
    while len(digests) > 1:
        level = b"".join(digests)
        level += bytes(-len(level) % BLOCK_SIZE)
        digests = [
            hashlib.sha256(salt + level[i : i + BLOCK_SIZE]).digest()
            for i in range(0, len(level), BLOCK_SIZE)
        ]
    return digests[0]


@settings(max_examples=40, deadline=None)
@given(
    blocks=st.integers(0, 300),
    tail=st.integers(0, BLOCK_SIZE - 1),
    salt=st.binary(max_size=256),
    chunk_blocks=st.integers(1, 64),
    threads=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_seal_matches_python_model(
    tmp_path_factory, blocks, tail, salt, chunk_blocks, threads, seed
):
    size = blocks * BLOCK_SIZE + (tail if blocks < 300 else 0)
    data = random.Random(seed).randbytes(size)
    path = tmp_path_factory.mktemp("p") / "img"
    path.write_bytes(data)
    seal = seal_image(
        path,
        salt=salt,
        threads=threads,
        chunk_size=chunk_blocks * BLOCK_SIZE,
        hash_file=path.with_suffix(".hash"),
    )
    assert seal.root_hash == _model_root(data, salt)
    assert seal.data_size == size
    verify_image(
        path,
        seal,
        hash_file=path.with_suffix(".hash"),
        threads=threads,
        chunk_size=chunk_blocks * BLOCK_SIZE,
    )
    with open_verified(path, seal, hash_file=path.with_suffix(".hash")) as r:
        assert r.read() == data
