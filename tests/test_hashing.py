"""Native SHA-256 and block hashing: NIST known answers and agreement with hashlib,
on both code paths (SHA-NI and the portable fallback)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest

from bsipatch import hashing

VECTORS = Path(__file__).parent / "vectors" / "sha256_nist.txt"
BIG = 2_000_000


def _load_vectors():
    out = []
    for line in VECTORS.read_text(encoding="ascii").splitlines():
        spec, digest = line.rsplit(" ", 1)
        kind, _, rest = spec.partition(":")
        size = int(rest.split(":")[1]) if kind == "repeat" else len(rest)
        marks = [pytest.mark.slow] if size > BIG else []
        out.append(pytest.param(spec, digest, id=spec[:24], marks=marks))
    return out


def _message_pieces(spec: str, chunk: int = 1 << 24):
    kind, _, rest = spec.partition(":")
    if kind == "hex":
        yield bytes.fromhex(rest)
    elif kind == "ascii":
        yield rest.encode("ascii")
    else:
        byte, count = rest.split(":")
        left = int(count)
        block = bytes.fromhex(byte) * min(left, chunk)
        while left:
            n = min(left, len(block))
            yield block[:n]
            left -= n


PATHS = ["portable", "sha-ni"]


@pytest.fixture(params=PATHS)
def code_path(request):
    """Run the test once on each SHA-256 implementation (skip SHA-NI if the CPU lacks it)."""
    before = hashing.simd_active()
    if request.param == "sha-ni":
        if not hashing.simd_available():
            pytest.skip("this CPU has no SHA-NI")
        if not hashing.use_simd(True):
            pytest.skip("SHA-NI forced off")
    else:
        hashing.use_simd(False)
    assert hashing.implementation() == request.param
    yield request.param
    hashing.use_simd(before)


@pytest.mark.parametrize(("spec", "digest"), _load_vectors())
def test_nist_known_answers(code_path, spec, digest):
    if (
        code_path == "portable"
        and hashing.simd_available()
        and spec.startswith("repeat")
        and int(spec.split(":")[2]) > BIG
    ):
        # The long messages test the 64-bit length in the shared padding code; the
        # portable compression is covered by every short vector. Saves ~25 s.
        pytest.skip("long message: checked on the SHA-NI path")
    pieces = list(_message_pieces(spec)) if not spec.startswith("repeat") else None
    if pieces is not None and len(pieces) == 1:
        assert hashing.sha256(pieces[0]).hex() == digest
    h = hashing.Sha256()
    for piece in _message_pieces(spec):
        h.update(piece)
    assert h.hexdigest() == digest


def test_vectors_file_is_complete():
    lines = VECTORS.read_text(encoding="ascii").splitlines()
    assert len(lines) == 18
    assert "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" in lines[1]


def test_agrees_with_hashlib_on_random_lengths(code_path):
    rng = random.Random(1)
    lengths = list(range(0, 300)) + [rng.randrange(300, 200_000) for _ in range(60)]
    for n in lengths:
        data = rng.randbytes(n)
        assert hashing.sha256(data) == hashlib.sha256(data).digest(), n


def test_streaming_agrees_with_hashlib_on_random_splits(code_path):
    rng = random.Random(2)
    for _ in range(40):
        data = rng.randbytes(rng.randrange(0, 5000))
        h = hashing.Sha256()
        ref = hashlib.sha256()
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 200)
            h.update(data[pos : pos + step])
            ref.update(data[pos : pos + step])
            pos += step
            if rng.random() < 0.2:
                assert h.copy().digest() == ref.copy().digest()
        assert h.digest() == ref.digest()


def test_accepts_any_contiguous_buffer(code_path):
    data = bytes(range(256)) * 10
    ref = hashlib.sha256(data).digest()
    assert hashing.sha256(bytearray(data)) == ref
    assert hashing.sha256(memoryview(data)) == ref
    assert hashing.sha256(np.frombuffer(data, dtype=np.uint8)) == ref
    with pytest.raises(TypeError):
        hashing.sha256("text")


def _ref_blocks(data, bs, salt, after):
    return np.array(
        [
            list(
                hashlib.sha256(
                    data[i : i + bs] + salt if after else salt + data[i : i + bs]
                ).digest()
            )
            for i in range(0, len(data), bs)
        ],
        dtype=np.uint8,
    ).reshape(-1, 32)


@pytest.mark.parametrize("salt_len", [0, 1, 31, 32, 55, 63, 64, 65, 100, 128, 256])
@pytest.mark.parametrize("salt_after", [False, True])
def test_hash_blocks_matches_hashlib_for_salts(code_path, salt_len, salt_after):
    rng = random.Random(salt_len * 2 + salt_after)
    salt = rng.randbytes(salt_len)
    for bs, n in ((4096, 9), (512, 7), (64, 5), (100, 3), (1, 4)):
        data = rng.randbytes(bs * n)
        got = hashing.hash_blocks(data, block_size=bs, salt=salt, salt_after=salt_after, threads=3)
        assert got.shape == (n, 32) and got.dtype == np.uint8
        assert np.array_equal(got, _ref_blocks(data, bs, salt, salt_after))


@pytest.mark.parametrize("threads", [1, 2, 3, 7, None])
def test_hash_blocks_same_result_for_any_thread_count(code_path, threads):
    rng = random.Random(5)
    data = rng.randbytes(4096 * 301)
    salt = rng.randbytes(32)
    ref = _ref_blocks(data, 4096, salt, False)
    assert np.array_equal(hashing.hash_blocks(data, salt=salt, threads=threads), ref)


def test_hash_blocks_large_input_uses_threads_and_agrees(code_path):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size=8 << 20, dtype=np.uint8)
    salt = b"s" * 32
    got = hashing.hash_blocks(data, salt=salt, threads=4)
    raw = data.tobytes()
    for i in (0, 1, 1000, 2047):
        assert got[i].tobytes() == hashlib.sha256(salt + raw[i * 4096 : (i + 1) * 4096]).digest()


def test_hash_blocks_writes_into_given_array_without_copy():
    data = bytes(4096 * 4)
    out = np.zeros((6, 32), dtype=np.uint8)
    view = out[1:5]
    result = hashing.hash_blocks(data, out=view, threads=1)
    assert result is view
    assert not out[0].any() and not out[5].any()
    assert out[1].tobytes() == hashlib.sha256(bytes(4096)).digest()


def test_hash_blocks_refuses_bad_input():
    with pytest.raises(ValueError, match="multiple"):
        hashing.hash_blocks(bytes(4097))
    with pytest.raises(ValueError):
        hashing.hash_blocks(bytes(4096), block_size=0)
    with pytest.raises(ValueError):
        hashing.hash_blocks(bytes(4096), threads=0)
    with pytest.raises(ValueError, match="shape"):
        hashing.hash_blocks(bytes(8192), out=np.zeros((3, 32), dtype=np.uint8))
    assert hashing.hash_blocks(b"").shape == (0, 32)


def test_both_paths_agree_on_random_blocks():
    if not hashing.simd_available():
        pytest.skip("this CPU has no SHA-NI")
    before = hashing.simd_active()
    rng = random.Random(9)
    data = rng.randbytes(4096 * 64)
    try:
        hashing.use_simd(True)
        fast = hashing.hash_blocks(data, salt=b"abc")
        hashing.use_simd(False)
        slow = hashing.hash_blocks(data, salt=b"abc")
    finally:
        hashing.use_simd(before)
    assert np.array_equal(fast, slow)


def test_verity_levels_geometry():
    assert hashing.verity_levels(0) == []
    assert hashing.verity_levels(1) == []
    assert hashing.verity_levels(2) == [1]
    assert hashing.verity_levels(128) == [1]
    assert hashing.verity_levels(129) == [2, 1]
    assert hashing.verity_levels(262144) == [2048, 16, 1]  # 1 GiB
    assert hashing.verity_levels(2**40) == [2**33, 2**26, 2**19, 2**12, 32, 1]


def test_verity_build_matches_a_python_model():
    rng = random.Random(4)
    salt = rng.randbytes(20)
    for n in (1, 2, 127, 128, 129, 300, 16385):
        leaves = np.frombuffer(rng.randbytes(32 * n), dtype=np.uint8).reshape(n, 32)
        root, tree = hashing.verity_build(leaves, salt=salt)
        # model: pack digests 128 per zero-padded block, level by level, top first on disk
        levels = []
        cur = leaves.tobytes()
        count = n
        while count > 1:
            packed = cur + bytes(-len(cur) % 4096)
            levels.append(packed)
            cur = b"".join(
                hashlib.sha256(salt + packed[i : i + 4096]).digest()
                for i in range(0, len(packed), 4096)
            )
            count = len(packed) // 4096
        assert root == (cur if n > 1 else leaves[0].tobytes())
        assert tree.tobytes() == b"".join(reversed(levels))


def test_python_threads_hash_in_parallel_correctly():
    import concurrent.futures

    rng = random.Random(11)
    bufs = [rng.randbytes(4096 * 64) for _ in range(8)]
    refs = [_ref_blocks(b, 4096, b"t", False) for b in bufs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda b: hashing.hash_blocks(b, salt=b"t", threads=2), bufs * 3))
    for i, out in enumerate(outs):
        assert np.array_equal(out, refs[i % 8])


def test_public_exports():
    import bsipatch

    assert bsipatch.sha256(b"abc") == hashlib.sha256(b"abc").digest()
    assert bsipatch.hash_blocks(bytes(4096)).shape == (1, 32)


def test_two_streams_at_once_equal_two_updates() -> None:
    rnd = random.Random(21)
    before = hashing.simd_active()
    for simd in (True, False):
        hashing.use_simd(simd)
        try:
            a, b = hashing.Sha256(), hashing.Sha256()
            ra, rb = hashlib.sha256(), hashlib.sha256()
            # equal phases (the two-way path) and, after one odd update, unequal ones
            for n in (0, 1, 63, 64, 65, 4096, 100_003, 1 << 20):
                da, db = rnd.randbytes(n), rnd.randbytes(n)
                hashing.update_two(a, da, b, db)
                ra.update(da)
                rb.update(db)
                assert (a.digest(), b.digest()) == (ra.digest(), rb.digest())
            a.update(b"x")
            ra.update(b"x")
            d = rnd.randbytes(1000)
            hashing.update_two(a, d, b, d)
            ra.update(d)
            rb.update(d)
            assert (a.digest(), b.digest()) == (ra.digest(), rb.digest())
        finally:
            hashing.use_simd(before)
    with pytest.raises(ValueError, match="equal lengths"):
        hashing.update_two(hashing.Sha256(), b"ab", hashing.Sha256(), b"a")
