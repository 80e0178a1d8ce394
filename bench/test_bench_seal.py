"""pytest-benchmark: native SHA-256 block hashing and seals, each group with its baseline.

Run: ``python -m pytest bench/test_bench_seal.py --benchmark-group-by=group``.
Groups: one-shot SHA-256 (baseline hashlib), 4 KiB blocks on one thread (baseline
hashlib with a reused salted context), 4 KiB blocks on two threads (baseline a
2-thread hashlib pool), seal build (baseline ``veritysetup format``) and verify
(baseline ``veritysetup verify``). No timed asserts: results are read as ratios.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import shutil
import subprocess

import numpy as np
import pytest

from bsipatch import hashing
from bsipatch.seal.tree import seal_image, verify_image

BLOCK = 4096
SALT = bytes(range(32))
MEM = 64 << 20  # in-memory buffers
IMAGE = 256 << 20  # image file for seal / verify


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, MEM, dtype=np.uint8)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("seal") / "image.img"
    rng = np.random.default_rng(8)
    with open(path, "wb") as f:
        for _ in range(IMAGE // (32 << 20)):
            f.write(rng.integers(0, 256, 32 << 20, dtype=np.uint8).tobytes())
    return path


def _veritysetup() -> str:
    tool = shutil.which("veritysetup") or shutil.which("veritysetup", path="/usr/sbin:/sbin")
    if not tool:
        pytest.skip("veritysetup not found (Debian package cryptsetup-bin)")
    return tool


def _hashlib_blocks(buf: bytes, start: int = 0, end: int | None = None) -> bytes:
    base = hashlib.sha256(SALT)
    end = len(buf) if end is None else end
    out = []
    for i in range(start, end, BLOCK):
        h = base.copy()
        h.update(buf[i : i + BLOCK])
        out.append(h.digest())
    return b"".join(out)


# --- one-shot SHA-256 of 1 MiB ---------------------------------------------------------


@pytest.mark.benchmark(group="sha256 1 MiB one-shot")
def test_sha256_bsipatch(benchmark, data):
    buf = data[: 1 << 20].tobytes()
    assert benchmark(hashing.sha256, buf) == hashlib.sha256(buf).digest()


@pytest.mark.benchmark(group="sha256 1 MiB one-shot")
def test_sha256_hashlib_baseline(benchmark, data):
    buf = data[: 1 << 20].tobytes()
    benchmark(lambda: hashlib.sha256(buf).digest())


# --- salted 4 KiB blocks, one thread ---------------------------------------------------


@pytest.mark.benchmark(group="4 KiB blocks x 64 MiB, 1 thread")
def test_blocks_1thread_bsipatch(benchmark, data):
    out = benchmark(hashing.hash_blocks, data, salt=SALT, threads=1)
    assert out.shape == (MEM // BLOCK, 32)


@pytest.mark.benchmark(group="4 KiB blocks x 64 MiB, 1 thread")
def test_blocks_1thread_portable(benchmark, data):
    before = hashing.simd_active()
    hashing.use_simd(False)
    try:
        benchmark.pedantic(
            hashing.hash_blocks, args=(data,), kwargs={"salt": SALT, "threads": 1}, rounds=3
        )
    finally:
        hashing.use_simd(before)


@pytest.mark.benchmark(group="4 KiB blocks x 64 MiB, 1 thread")
def test_blocks_1thread_hashlib_baseline(benchmark, data):
    buf = data.tobytes()
    benchmark.pedantic(_hashlib_blocks, args=(buf,), rounds=3)


# --- salted 4 KiB blocks, two threads --------------------------------------------------


@pytest.mark.benchmark(group="4 KiB blocks x 64 MiB, 2 threads")
def test_blocks_2threads_bsipatch(benchmark, data):
    benchmark(hashing.hash_blocks, data, salt=SALT, threads=2)


@pytest.mark.benchmark(group="4 KiB blocks x 64 MiB, 2 threads")
def test_blocks_2threads_hashlib_pool_baseline(benchmark, data):
    buf = data.tobytes()
    step = 1 << 20

    def run() -> bytes:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            parts = pool.map(lambda s: _hashlib_blocks(buf, s, s + step), range(0, MEM, step))
            return b"".join(parts)

    benchmark.pedantic(run, rounds=3)


# --- seal build and verify of a 256 MiB image -------------------------------------------


@pytest.mark.benchmark(group="seal build 256 MiB")
def test_seal_build_bsipatch(benchmark, image, tmp_path):
    benchmark.pedantic(
        seal_image, args=(image,), kwargs={"hash_file": tmp_path / "h", "salt": SALT}, rounds=5
    )


@pytest.mark.benchmark(group="seal build 256 MiB")
def test_seal_build_veritysetup_baseline(benchmark, image, tmp_path):
    tool = _veritysetup()
    argv = [tool, "format", str(image), str(tmp_path / "h"), "--salt", SALT.hex()]
    benchmark.pedantic(
        subprocess.run, args=(argv,), kwargs={"check": True, "capture_output": True}, rounds=5
    )


@pytest.mark.benchmark(group="seal verify 256 MiB")
def test_seal_verify_bsipatch(benchmark, image, tmp_path):
    seal = seal_image(image, hash_file=tmp_path / "h", salt=SALT)
    benchmark.pedantic(
        verify_image, args=(image, seal), kwargs={"hash_file": tmp_path / "h"}, rounds=5
    )


@pytest.mark.benchmark(group="seal verify 256 MiB")
def test_seal_verify_veritysetup_baseline(benchmark, image, tmp_path):
    tool = _veritysetup()
    seal = seal_image(image, hash_file=tmp_path / "h", salt=SALT)
    argv = [tool, "verify", str(image), str(tmp_path / "h"), seal.root_hash.hex()]
    benchmark.pedantic(
        subprocess.run, args=(argv,), kwargs={"check": True, "capture_output": True}, rounds=5
    )
