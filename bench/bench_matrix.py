"""Matrix release builds at scale: wall and CPU time in process and on LocalClusters, a model.

Builds a synthetic but realistic matrix: V variants x 3 components, each image an
ext4 file system made by ``mke2fs -d`` (as :mod:`data` makes the ext4 set) from a
tree of real ``/usr/lib`` shared libraries (a different window of them per variant
and component) plus one "fixed" library first in name order. Each release changes
that library a little (40 scattered bytes, +8 KiB, so every block behind it moves):
base -> (a) -> (b) -> (c). (a) and (b) are published first (in process, not timed);
then (c) with ``--from-previous 2`` (3 tasks per variant and component) is built
three times from the same repository state: ``--cluster none``, a 1-worker and a
2-worker LocalCluster. The three repositories must be byte-identical.

It prints and writes (``--out``) wall time, CPU seconds (this process plus every
worker process, from ``getrusage``), scaling efficiency, Dask's overhead per task,
the fitted per-task time model and its check against the runs, the predictions for
200 variants on 8/32/128 workers, and the bytes a device on (a) downloads for (c)
with and without N->1 (the real agent, installing on a real preboot volume).

    python bench/bench_matrix.py                     # scaled: 4 variants, 16/32/64 MiB
    python bench/bench_matrix.py --variants 8 --sizes 64,128,256   # the issue's size

This is a measurement script; it asserts only that the three builds agree.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from data import DATA_DIR, FAKE_TIME, FS_UUID, LIB_DIR  # noqa: E402

NOW = datetime.now(timezone.utc).replace(microsecond=0)  # TUF refuses expired metadata
COMPONENTS = (("webkit", "relaunch"), ("libsystem", "reboot"), ("kernelcache", "reboot"))
LETTERS = "abc"


def _libs() -> list[Path]:
    return [
        p
        for p in sorted(LIB_DIR.glob("*.so*"))
        if p.is_file() and not p.is_symlink() and 64 << 10 <= p.stat().st_size <= 40 << 20
    ]


def _fixed_lib(seed: int, release: int, cap: int) -> bytes:
    """The library a release fixes: a real one, changed a little more per release."""
    libs = _libs()
    data = bytearray(libs[seed % len(libs)].read_bytes()[:cap])
    rng = random.Random(seed)
    for r in range(release):
        for _ in range(40):
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        data += rng.randbytes(8192)  # grows: every block behind it moves
        del r
    return bytes(data)


def _image(out: Path, size: int, seed: int, release: int) -> None:
    """An ext4 image of ``size`` bytes: the fixed library, then real libraries (~50 %)."""
    tree = out.with_suffix(".tree")
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "usr" / "lib").mkdir(parents=True)
    fixed = _fixed_lib(seed, release, min(3 << 20, size // 10))
    (tree / "usr" / "lib" / "aaa-fixed.so").write_bytes(fixed)
    libs, total, i = _libs(), len(fixed), seed * 7
    while total < size * 0.5:
        lib = libs[i % len(libs)]
        i += 1
        if total + lib.stat().st_size > size * 0.6:
            continue
        shutil.copyfile(lib, tree / "usr" / "lib" / f"{i:05d}-{lib.name}")
        total += lib.stat().st_size
    for root, dirs, files in os.walk(tree):
        for name in dirs + files:
            os.utime(Path(root) / name, (FAKE_TIME, FAKE_TIME), follow_symlinks=False)
    os.utime(tree, (FAKE_TIME, FAKE_TIME))
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.truncate(size)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FAKE_TIME), SOURCE_DATE_EPOCH=str(FAKE_TIME))
    mke2fs = shutil.which("mke2fs") or "/usr/sbin/mke2fs"
    subprocess.run(
        [mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096", "-d", str(tree), "-U", FS_UUID,
         "-E", f"hash_seed={FS_UUID},root_owner=0:0", str(tmp)],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    tmp.replace(out)
    shutil.rmtree(tree)


def make_images(variants: int, sizes: list[int]) -> dict[tuple[int, str, str], Path]:
    """base, (a), (b), (c) of every variant and component (cached under bench/data)."""
    out: dict[tuple[int, str, str], Path] = {}
    d = DATA_DIR / "matrix" / f"v{variants}-{'-'.join(str(s) for s in sizes)}"
    d.mkdir(parents=True, exist_ok=True)
    for v in range(variants):
        for ci, (comp, _) in enumerate(COMPONENTS):
            size = sizes[ci % len(sizes)] << 20
            for r, tag in enumerate(("base", *LETTERS)):
                p = d / f"v{v}-{comp}-{tag}.ext4"
                if not p.exists():
                    _image(p, size, 100 * v + ci, r)
                out[(v, comp, tag)] = p
    return out


def matrix_doc(imgs: dict, variants: int, letter: str) -> dict:
    prev = LETTERS[: LETTERS.index(letter)]
    return {
        "release": f"26.1 ({letter})",
        "os_version": "26.1",
        "components": {c: {"activation": a, "cves": []} for c, a in COMPONENTS},
        "variants": [
            {
                "name": f"family{v}",
                "build": f"23C{v:02d}",
                "supplemental_build": f"23C{v:02d}{letter}",
                "images": {
                    c: {"base": str(imgs[(v, c, "base")]), "new": str(imgs[(v, c, letter)])}
                    for c, _ in COMPONENTS
                },
                "previous": {
                    f"26.1 ({p})": {c: str(imgs[(v, c, p)]) for c, _ in COMPONENTS} for p in prev
                },
            }
            for v in range(variants)
        ],
    }


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def timed_build(repo: Path, m, ks, cluster: str, workers: int | None) -> dict:
    from bsipatch.vendor.build import build_matrix

    c0, s0, t0 = _cpu_children(), _cpu_self(), time.monotonic()
    rep = build_matrix(repo, m, keys=ks, now=NOW, published=NOW + timedelta(minutes=2),
                       from_previous=2, cluster=cluster, workers=workers)  # fmt: skip
    wall = time.monotonic() - t0
    tasks = [r.seconds for r in rep.results]
    return {
        "cluster": f"{cluster}" + (f"-{workers}" if cluster == "local" else ""),
        "wall": wall,
        "cpu": (_cpu_self() - s0) + (_cpu_children() - c0),
        "plan": rep.plan_seconds,
        "run": rep.run_seconds,
        "publish": rep.publish_seconds,
        "startup": rep.cluster_timings.get("startup_seconds", 0.0),
        "shutdown": rep.cluster_timings.get("shutdown_seconds", 0.0),
        "task_sum": sum(tasks),
        "task_cpu_sum": sum(r.cpu_seconds for r in rep.results),
        "n_tasks": len(tasks),
        "tasks": [
            {
                "key": r.key,
                "seconds": r.seconds,
                "cpu": r.cpu_seconds,
                "size": _size(m, r),
                "src": r.source_release,
            }
            for r in rep.results
        ],
    }


def _size(m, r) -> int:
    v = next(v for v in m.variants if v.name == r.variant)
    return Path(v.images[r.component][1].url).stat().st_size


def makespan(durations: list[float], workers: int, per_task: float) -> float:
    """Greedy list scheduling in submission order (what Dask does with equal-priority tasks)."""
    free = [0.0] * workers
    for d in durations:
        i = min(range(workers), key=free.__getitem__)
        free[i] += d + per_task
    return max(free)


def fit_time_per_mib(tasks: list[dict], key: str = "seconds") -> tuple[float, float]:
    """Least squares ``seconds = a + b * MiB`` over the tasks of one run."""
    xs = [t["size"] / 2**20 for t in tasks]
    ys = [t[key] for t in tasks]
    _n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs) or 1.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def predict(
    fit: tuple[float, float],
    ratios: list[float],
    sizes_mib: list[int],
    variants: int,
    workers: int,
    per_task: float,
    fixed: float,
    transfer_mb_s: float | None,
) -> float:
    """Wall seconds for ``variants`` x 3 components x 3 sources on ``workers`` workers.

    Per-task time: the fitted ``a + b * MiB`` times a measured actual/fitted ratio
    (drawn with a fixed seed), plus reading source and new image at ``transfer_mb_s``
    per worker (``None``: local files), plus Dask's measured overhead per task.
    """
    rng = random.Random(1)
    a, b = fit
    durations = []
    for _v in range(variants):
        for ci in range(len(COMPONENTS)):
            mib = sizes_mib[ci % len(sizes_mib)]
            for _src in range(3):
                d = (a + b * mib) * rng.choice(ratios)
                if transfer_mb_s:
                    d += 2 * mib * 1.048576 / transfer_mb_s
                durations.append(d)
    return fixed + makespan(durations, workers, per_task)


def device_bytes(imgs: dict, repo_a: Path, repo_c: Path, root_json: bytes, tmp: Path) -> dict:
    """A device of variant 0 installs (a), then (c): bytes with N->1 and the base patches."""
    from bsipatch.agent.agent import Agent
    from bsipatch.device.preboot import Preboot

    dev = Preboot.create(
        tmp / "preboot",
        os_version="26.1",
        build="23C00",
        images={c: imgs[(0, c, "base")] for c, _ in COMPONENTS},
        activation=dict(COMPONENTS),
    )
    later = NOW + timedelta(minutes=30)
    Agent(dev, repo_a, now=later, trusted_root=root_json).run()
    rep = Agent(dev, repo_c, now=later, trusted_root=root_json).run()["installed"]
    with_n1 = rep["downloaded_patch_bytes"]
    without = sum(s["base_patch_bytes"] for s in rep["patch_sources"].values())
    return {
        "release": rep["release"],
        "with_n_to_1": with_n1,
        "without_n_to_1": without,
        "ratio": without / with_n1,
        "image_bytes": rep["full_image_bytes"],
        "sources": {c: s["source"] for c, s in rep["patch_sources"].items()},
    }


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".publish.lock"
    }


def run(args: argparse.Namespace) -> dict:
    from bsipatch.trust import signers
    from bsipatch.trust.tufrepo import init_repository
    from bsipatch.vendor.build import build_matrix
    from bsipatch.vendor.matrix import parse_matrix

    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.monotonic()
    imgs = make_images(args.variants, sizes)
    print(f"images ready in {time.monotonic() - t0:.0f} s", flush=True)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ks = signers.KeySet({r: [signers.generate()] for r in signers.ROLES})
    repo = work / "repo"
    init_repository(repo, ks, now=NOW)
    mats = {
        x: parse_matrix(matrix_doc(imgs, args.variants, x), base_dir=work, source=x)
        for x in LETTERS
    }
    for i, letter in enumerate("ab"):
        t = time.monotonic()
        build_matrix(repo, mats[letter], keys=ks, now=NOW, published=NOW + timedelta(seconds=i),
                     from_previous=2, cluster="none")  # fmt: skip
        print(f"published 26.1 ({letter}) in {time.monotonic() - t:.0f} s", flush=True)
        if letter == "a":
            shutil.copytree(repo, work / "snap-a")
    runs = []
    for cluster, workers in (("none", None), ("local", 1), ("local", 2)):
        dest = work / f"repo-{cluster}-{workers}"
        shutil.copytree(repo, dest)
        r = timed_build(dest, mats["c"], ks, cluster, workers)
        print(f"{r['cluster']}: wall {r['wall']:.1f} s, cpu {r['cpu']:.1f} s", flush=True)
        runs.append((dest, r))
    ref = _files(runs[0][0])
    same = all(_files(d) == ref for d, _ in runs[1:])
    root_json = (repo / "metadata" / "1.root.json").read_bytes()
    device = device_bytes(imgs, work / "snap-a", runs[2][0], root_json, work)
    return analyse(args, sizes, [r for _, r in runs], same, device)


def analyse(args: argparse.Namespace, sizes: list[int], runs: list[dict], same: bool,
            device: dict) -> dict:  # fmt: skip
    none, one, two = runs
    n = one["n_tasks"]
    overhead = (one["run"] - one["startup"] - one["shutdown"] - one["task_sum"]) / n
    fit_wall = fit_time_per_mib(one["tasks"])
    fit = fit_time_per_mib(one["tasks"], "cpu")  # dedicated cores: a task's time is its CPU
    ratios = [t["cpu"] / (fit[0] + fit[1] * t["size"] / 2**20) for t in one["tasks"]]
    fixed2 = two["plan"] + two["publish"] + two["startup"] + two["shutdown"]
    check2 = fixed2 + makespan([t["seconds"] for t in one["tasks"]], 2, overhead)
    per_comp_publish = two["publish"] / (args.variants * len(COMPONENTS))
    predictions = {}
    for w in (8, 32, 128):
        fixed = per_comp_publish * 200 * len(COMPONENTS)
        predictions[w] = {
            "local_files": predict(fit, ratios, [64, 128, 256], 200, w, overhead, fixed, None),
            "object_store_100MBps": predict(
                fit, ratios, [64, 128, 256], 200, w, overhead, fixed, 100.0
            ),
        }
    return {
        "load": os.getloadavg(),
        "cpus": os.cpu_count(),
        "variants": args.variants,
        "sizes_mib": sizes,
        "tasks": n,
        "same_bytes": same,
        "runs": [{k: v for k, v in r.items() if k != "tasks"} for r in runs],
        "speedup_2_vs_1": one["wall"] / two["wall"],
        "efficiency_2": one["wall"] / (2 * two["wall"]),
        "task_efficiency_2": one["task_sum"] / two["task_sum"],
        "dask_overhead_per_task": overhead,
        "fit_cpu_seconds": {"a": fit[0], "per_mib": fit[1]},
        "fit_wall_seconds_loaded": {"a": fit_wall[0], "per_mib": fit_wall[1]},
        "model_check_local2": {"predicted": check2, "measured": two["wall"]},
        "predict_200_variants": predictions,
        "device": device,
        "task_seconds": [t | {"cluster": "local-1"} for t in one["tasks"]],
        "none_wall": none["wall"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument("--sizes", default="16,32,64", help="MiB per component (3 values)")
    ap.add_argument("--work", default=str(DATA_DIR / "matrix-work"))
    ap.add_argument("--out", default=str(BENCH / "results" / "matrix.json"))
    args = ap.parse_args(argv)
    res = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "task_seconds"}, indent=1))
    return 0 if res["same_bytes"] else 1


if __name__ == "__main__":
    sys.exit(main())
