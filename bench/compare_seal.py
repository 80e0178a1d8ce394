"""Compare bsipatch's seal with veritysetup, hashlib and OpenSSL on one image, in one run.

Creates a random image (1 GiB by default) in a temporary directory, warms the page
cache, then times, interleaved over ``--repeat`` rounds so machine load hits all
of them alike:

* bsipatch seal build (library call, and the ``bsipatch seal`` CLI),
* bsipatch full verify against the hash file (library, and ``bsipatch verify``),
* ``veritysetup format`` and ``veritysetup verify`` on the same image and salt,
* hashlib.sha256 over the image's 4 KiB blocks with a 2-thread pool (salted, as
  dm-verity), and with one thread,
* bsipatch's native block hashing in memory with 1 and 2 threads (SHA-NI and the
  portable fallback), and
* ``openssl speed -evp sha256 -bytes 4096 -seconds 3`` (one core),

and prints medians (wall time, GB/s, CPU seconds) and the ratios the goals name.
Root hashes from bsipatch and veritysetup are checked to be equal.

Usage:
    python bench/compare_seal.py [--size-mib 1024] [--repeat 5] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bsipatch import hashing  # noqa: E402
from bsipatch.seal.tree import seal_image, verify_image  # noqa: E402

BLOCK = 4096


def make_image(path: Path, size: int) -> None:
    rng = np.random.default_rng(12345)
    step = 64 << 20
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(step, left)
            f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            left -= n


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed_call(fn) -> tuple[float, float, object]:
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, time.process_time() - c0, result


def timed_proc(argv: list[str]) -> tuple[float, float, str]:
    c0, t0 = children_cpu(), time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if res.returncode != 0:
        raise RuntimeError(f"{argv[0]} {argv[1]} failed: {res.stderr.strip()}")
    return wall, cpu, res.stdout


def hashlib_pool(path: Path, salt: bytes, threads: int, chunk: int = 1 << 20) -> bytes:
    """Salted SHA-256 of every 4 KiB block with hashlib, chunks spread over a pool."""
    size = path.stat().st_size
    base = hashlib.sha256(salt)
    fd = os.open(path, os.O_RDONLY)
    try:

        def work(off: int) -> bytes:
            data = os.pread(fd, chunk, off)
            out = []
            for i in range(0, len(data), BLOCK):
                h = base.copy()
                h.update(data[i : i + BLOCK])
                out.append(h.digest())
            return b"".join(out)

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            return b"".join(pool.map(work, range(0, size, chunk)))
    finally:
        os.close(fd)


def openssl_speed(seconds: int = 3) -> float:
    """Bytes per second of ``openssl speed -evp sha256`` on 4096-byte buffers (one core)."""
    res = subprocess.run(
        ["openssl", "speed", "-evp", "sha256", "-bytes", "4096", "-seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in res.stdout.splitlines():
        m = re.match(r"^sha256\s+([\d.]+)k\s*$", line.strip())
        if m:
            return float(m.group(1)) * 1000.0
    raise RuntimeError(f"cannot parse openssl speed output:\n{res.stdout}")


def mem_hash_rate(
    data: np.ndarray, salt: bytes, threads: int, repeat: int
) -> tuple[float, float, float]:
    """Bytes per wall second and per CPU second (medians), and per wall second (best run)."""
    out = np.empty((data.size // BLOCK, 32), dtype=np.uint8)
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        hashing.hash_blocks(data, salt=salt, threads=threads, out=out)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return (
        data.size / statistics.median(walls),
        data.size / statistics.median(cpus),
        data.size / min(walls),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", help="where to create the image (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args(argv)

    vs = shutil.which("veritysetup") or shutil.which("veritysetup", path="/usr/sbin:/sbin")
    if not vs:
        print("veritysetup not found (Debian package cryptsetup-bin)", file=sys.stderr)
        return 2
    size = args.size_mib << 20
    salt = bytes(range(32))
    tmp = Path(tempfile.mkdtemp(prefix="bsi-seal-bench-", dir=args.dir))
    rows: dict[str, list[tuple[float, float]]] = {}

    def add(name: str, wall: float, cpu: float) -> None:
        rows.setdefault(name, []).append((wall, cpu))

    try:
        img = tmp / "image.img"
        make_image(img, size)
        warm(img)
        py = [sys.executable, "-m", "bsipatch"]
        env_note = f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        print(
            f"image: {size >> 20} MiB random at {img} ({env_note}); "
            f"SHA-256 code: {hashing.implementation()}",
            flush=True,
        )
        root_vs = root_bsi = None
        for r in range(args.repeat):
            w, c, seal = timed_call(lambda: seal_image(img, hash_file=tmp / "bsi.hash", salt=salt))
            add("bsipatch seal (library)", w, c)
            root_bsi = seal.root_hash
            w, c, _ = timed_call(lambda s=seal: verify_image(img, s, hash_file=tmp / "bsi.hash"))
            add("bsipatch verify (library)", w, c)
            w, c, out = timed_proc(
                [vs, "format", str(img), str(tmp / "vs.hash"), "--salt", salt.hex()]
            )
            add("veritysetup format", w, c)
            root_vs = bytes.fromhex(re.search(r"Root hash:\s+([0-9a-f]{64})", out).group(1))
            w, c, _ = timed_proc([vs, "verify", str(img), str(tmp / "vs.hash"), root_vs.hex()])
            add("veritysetup verify", w, c)
            os.environ["PYTHONPATH"] = str(ROOT)
            w, c, _ = timed_proc(
                [
                    *py,
                    "seal",
                    str(img),
                    "--hash-file",
                    str(tmp / "cli.hash"),
                    "--salt",
                    salt.hex(),
                    "-q",
                ]
            )
            add("bsipatch seal (CLI process)", w, c)
            w, c, _ = timed_proc(
                [
                    *py,
                    "verify",
                    str(img),
                    "--root",
                    root_bsi.hex(),
                    "--hash-file",
                    str(tmp / "cli.hash"),
                    "-q",
                ]
            )
            add("bsipatch verify (CLI process)", w, c)
            w, c, _ = timed_call(lambda: hashlib_pool(img, salt, 2))
            add("hashlib 4 KiB blocks, 2-thread pool", w, c)
            if r == 0:
                w, c, _ = timed_call(lambda: hashlib_pool(img, salt, 1))
                add("hashlib 4 KiB blocks, 1 thread", w, c)
            print(f"  round {r + 1}/{args.repeat} done", flush=True)
        assert root_bsi == root_vs, "bsipatch and veritysetup disagree on the root hash"
        # veritysetup accepts bsipatch's hash file
        timed_proc([vs, "verify", str(img), str(tmp / "bsi.hash"), root_bsi.hex()])

        mem = np.random.default_rng(1).integers(0, 256, 256 << 20, dtype=np.uint8)
        reps = max(3, args.repeat)
        rate1 = mem_hash_rate(mem, salt, 1, reps)
        rate2 = mem_hash_rate(mem, salt, 2, reps)
        before = hashing.simd_active()
        hashing.use_simd(False)
        rate_portable = mem_hash_rate(mem[: 64 << 20], salt, 1, 3)[0]
        hashing.use_simd(before)
        ossl = openssl_speed(3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for k, v in rows.items()
    }
    print()
    best = {k: min(w for w, _ in v) for k, v in rows.items()}
    print(f"{'method':42s} {'median s':>9s} {'GB/s':>7s} {'CPU s':>7s} {'best s':>7s}  runs")
    for name, (w, c) in med.items():
        print(
            f"{name:42s} {w:9.3f} {size / w / 1e9:7.2f} {c:7.2f} {best[name]:7.3f}  "
            f"{len(rows[name])}"
        )
    print(
        f"{'bsipatch hash_blocks in memory, 1 thread':42s} {'':9s} {rate1[0] / 1e9:7.2f}"
        f"  ({rate1[1] / 1e9:.2f} GB per CPU second, best run {rate1[2] / 1e9:.2f})"
    )
    print(
        f"{'bsipatch hash_blocks in memory, 2 threads':42s} {'':9s} {rate2[0] / 1e9:7.2f}"
        f"  ({rate2[1] / 1e9:.2f} GB per CPU second, best run {rate2[2] / 1e9:.2f})"
    )
    print(f"{'bsipatch hash_blocks, portable, 1 thread':42s} {'':9s} {rate_portable / 1e9:7.2f}")
    print(
        f"{'openssl speed -evp sha256 -bytes 4096':42s} {'':9s} {ossl / 1e9:7.2f}"
        "  (openssl divides by user CPU time)"
    )
    print(
        f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
        "(wall times are only comparable on an idle machine)"
    )

    def ratio(a: str, b: str) -> float:
        return med[b][0] / med[a][0]

    ratios = {
        "one core vs openssl, wall (goal >= 0.90)": rate1[0] / ossl,
        "one core vs openssl, per CPU second": rate1[1] / ossl,
        "2 threads vs 1 thread, wall (goal >= 1.8)": rate2[0] / rate1[0],
        "2 threads vs 1 thread, best runs": rate2[2] / rate1[2],
        "2 threads vs 1 thread, CPU efficiency (1.0 = perfect)": rate2[1] / rate1[1],
        "seal build vs veritysetup format (goal >= 2)": ratio(
            "bsipatch seal (library)", "veritysetup format"
        ),
        "verify vs veritysetup verify (goal >= 2)": ratio(
            "bsipatch verify (library)", "veritysetup verify"
        ),
        "seal build vs veritysetup format, best runs": best["veritysetup format"]
        / best["bsipatch seal (library)"],
        "verify vs veritysetup verify, best runs": best["veritysetup verify"]
        / best["bsipatch verify (library)"],
        "seal build vs veritysetup format, CPU seconds": med["veritysetup format"][1]
        / med["bsipatch seal (library)"][1],
        "seal CLI process vs veritysetup format": ratio(
            "bsipatch seal (CLI process)", "veritysetup format"
        ),
        "verify CLI process vs veritysetup verify": ratio(
            "bsipatch verify (CLI process)", "veritysetup verify"
        ),
        "seal build vs hashlib 2-thread pool": ratio(
            "bsipatch seal (library)", "hashlib 4 KiB blocks, 2-thread pool"
        ),
    }
    print()
    for name, value in ratios.items():
        print(f"{name:56s} {value:6.2f}x")
    if args.json:
        print(
            json.dumps(
                {
                    "size": size,
                    "median_seconds": {k: v[0] for k, v in med.items()},
                    "median_cpu_seconds": {k: v[1] for k, v in med.items()},
                    "best_seconds": best,
                    "mem_rate_1": rate1[0],
                    "mem_rate_2": rate2[0],
                    "mem_rate_1_cpu": rate1[1],
                    "mem_rate_2_cpu": rate2[1],
                    "mem_rate_portable": rate_portable,
                    "openssl_rate": ossl,
                    "ratios": ratios,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
