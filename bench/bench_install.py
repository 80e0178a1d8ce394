"""Benchmark: install a release that changes 1% of a 1 GiB image, vs a full-image update.

Run: ``python bench/bench_install.py [--size-mib 1024] [--change 0.01] [--dir DIR]``

What it does (vendor side untimed, device side timed, each measured operation in a
fresh child process so CPU time, peak RSS and I/O counters are its own):

1. Generates a base image (``--size-mib``; by default 1 GiB): 30% zero blocks, 40%
   low-entropy blocks (4 random bits per byte, ~2x compressible), 30% random blocks.
   The new image replaces ``--change`` (1%) of the 4 KiB blocks with fresh random data.
2. Vendor side: ``bsipatch.delta.diff.diff`` makes the patch, ``bsipatch.seal.tree.seal_image``
   the seals, and ``zstd -T0 -<level>`` a compressed copy of the whole new image (the
   baseline's download).
3. Device side, bsipatch: ``Preboot.create`` with the base image (untimed), then
   ``install_release`` (timed): base-seal check, streaming apply, patch digest check,
   target-seal verification, atomic activation. Base and target share a salt, so
   install takes the fast path (docs/preboot.md, "Fast install"): copied blocks are
   reflinked or written by O_DIRECT, only changed blocks are hashed, the target seal is
   checked from the leaves. Run twice: the first install verifies the base image
   against the manifest's base seal (and keeps its leaves); the second (after
   ``uninstall``) finds both cached, as every later release on that OS version would.
4. Device side, baseline: stream-decompress the ``.zst`` into a staging file, fsync,
   verify against the target seal, rename into place (timed).

Reported per operation: wall seconds, CPU seconds (user+sys, all threads), bytes
written to storage (``/proc/self/io`` write_bytes), peak RSS, and bytes downloaded
(patch size vs compressed full image). Children run with ``OPENBLAS_NUM_THREADS=1`` and
import their modules before measuring. No timed asserts: this prints a table (and
``--json`` writes one document). Put ``--dir`` on a reflink file system (XFS, btrfs) to
measure shared extents; see bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BLOCK = 4096
CHUNK_BLOCKS = 16384  # 64 MiB per generation step
SALT = bytes.fromhex("5a" * 32)


def make_images(base: Path, new: Path, size_mib: int, change: float, seed: int) -> int:
    """Write the base and new images; return the number of changed blocks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    nblocks = size_mib * 1024 * 1024 // BLOCK
    changed = 0
    with open(base, "wb") as fb, open(new, "wb") as fn:
        for start in range(0, nblocks, CHUNK_BLOCKS):
            n = min(CHUNK_BLOCKS, nblocks - start)
            kind = rng.random(n)
            data = rng.integers(0, 256, size=(n, BLOCK), dtype=np.uint8)
            low = (kind >= 0.3) & (kind < 0.7)
            data[low] &= 0x0F
            data[kind < 0.3] = 0
            fb.write(data.tobytes())
            flip = rng.random(n) < change
            changed += int(flip.sum())
            data[flip] = rng.integers(0, 256, size=(int(flip.sum()), BLOCK), dtype=np.uint8)
            fn.write(data.tobytes())
    return changed


def _io_counters() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            k, v = line.split(":")
            out[k.strip()] = int(v)
    except OSError:
        pass
    return out


def _measure(fn: Any) -> dict[str, Any]:
    io0 = _io_counters()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    io1 = _io_counters()
    return {
        "wall_s": wall,
        "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "user_s": r1.ru_utime - r0.ru_utime,
        "sys_s": r1.ru_stime - r0.ru_stime,
        "bytes_written": io1.get("write_bytes", 0) - io0.get("write_bytes", 0),
        "wchar": io1.get("wchar", 0) - io0.get("wchar", 0),
        # VmHWM: this process's own high-water mark (ru_maxrss survives exec on Linux);
        # it counts mapped file pages too (apply maps the old image)
        "peak_rss_mib": _vm_hwm_kib() / 1024,
    }


def _vm_hwm_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_breakdown(work: Path) -> dict[str, Any]:
    """Where the install's CPU goes: each step of install_release measured alone."""
    from bsipatch.delta.apply import Provenance, apply
    from bsipatch.device.install import load_manifest
    from bsipatch.seal.tree import check_leaves, verified_leaves, verify_image

    meta = json.loads((work / "meta.json").read_text())
    comp = load_manifest(meta["manifest"]).components[0]
    base = next((work / "preboot" / "base").iterdir()) / "system.img"
    out = work / "breakdown.img"
    patch = work / "system.bsipatch"
    bseal, tseal = comp.base.to_seal(), comp.target.to_seal()
    got: dict[str, Any] = {}

    def provenance_apply() -> None:
        got["prov"] = Provenance(got["leaves"], bseal.salt)
        apply(base, patch, out, verify_old=False, verify_new=False, provenance=got["prov"])

    steps = {
        "verify base seal, keep its leaves (1st only)": lambda: got.update(
            leaves=verified_leaves(base, bseal)
        ),
        "apply with provenance (clone/copy, hash made)": provenance_apply,
        "check target seal from the leaves": lambda: check_leaves(got["prov"].leaves, tseal),
        "patch SHA-256": lambda: hashlib.sha256(patch.read_bytes()),
        "(old) apply, all digests checked": lambda: apply(base, patch, out),
        "(old) verify target seal by rehashing": lambda: verify_image(out, tseal),
    }
    result = {name: _measure(fn) for name, fn in steps.items()}
    p = got["prov"]
    result["provenance"] = {
        "copied_blocks": p.copied_blocks,
        "zero_blocks": p.zero_blocks,
        "hashed_blocks": p.hashed_blocks,
        "copy_method": p.copy_method,
    }
    out.unlink()
    return result


# --- child-process measurements ----------------------------------------------------------


def child_install(work: Path) -> dict[str, Any]:
    # import what install_release loads lazily before measuring, as child_full does for
    # its modules: neither side's figure includes interpreter start-up or imports
    import zstandard  # noqa: F401

    from bsipatch.delta import apply  # noqa: F401
    from bsipatch.device import install as inst
    from bsipatch.device.preboot import Preboot
    from bsipatch.seal import leafcache  # noqa: F401

    meta = json.loads((work / "meta.json").read_text())
    manifest = inst.load_manifest(meta["manifest"])
    pb = Preboot(work / "preboot")
    result: dict[str, Any] = {}

    def run() -> None:
        result.update(inst.install_release(pb, manifest, inst.open_patch_in(work)))

    m = _measure(run)
    m["result"] = result
    return m


def child_full(work: Path) -> dict[str, Any]:
    import zstandard

    from bsipatch._io import fsync_dir
    from bsipatch.seal.tree import Seal, verify_image

    meta = json.loads((work / "meta.json").read_text())
    t = meta["manifest"]["components"][0]["target"]
    seal = Seal(
        root_hash=bytes.fromhex(t["root_hash"]), salt=bytes.fromhex(t["salt"]), data_size=t["size"]
    )
    dest_dir = work / "fullupdate"
    dest_dir.mkdir(exist_ok=True)
    tmp = dest_dir / ".system.img.tmp"
    final = dest_dir / "system.img"

    def run() -> None:
        dctx = zstandard.ZstdDecompressor()
        with open(work / "new.img.zst", "rb") as src, open(tmp, "wb") as dst:
            dctx.copy_stream(src, dst, read_size=1 << 20, write_size=1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        verify_image(tmp, seal)
        tmp.rename(final)
        fsync_dir(dest_dir)

    return _measure(run)


def child_uninstall(work: Path) -> dict[str, Any]:
    from bsipatch.device import install as inst
    from bsipatch.device.preboot import Preboot

    return _measure(lambda: inst.uninstall(Preboot(work / "preboot")))


def run_child(what: str, work: Path) -> dict[str, Any]:
    # OpenBLAS (loaded by numpy, used by neither side) starts a worker per core that
    # busy-waits for a while after the import: without this, ~0.1 s of CPU that belongs
    # to no one lands in whichever measurement follows the import
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    r = subprocess.run(
        [sys.executable, __file__, "--child", what, "--dir", str(work)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if r.returncode != 0:
        raise SystemExit(f"child {what} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- main --------------------------------------------------------------------------------


def prepare(work: Path, size_mib: int, change: float, level: int, seed: int) -> dict[str, Any]:
    from bsipatch.delta.diff import diff
    from bsipatch.device.preboot import Preboot
    from bsipatch.seal.tree import seal_image

    base, new = work / "base.img", work / "new.img"
    t0 = time.perf_counter()
    changed = make_images(base, new, size_mib, change, seed)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    info = diff(str(base), str(new), str(work / "system.bsipatch"))
    diff_s = time.perf_counter() - t0
    patch = (work / "system.bsipatch").read_bytes()
    sb = seal_image(str(base), salt=SALT)
    st = seal_image(str(new), salt=SALT)
    t0 = time.perf_counter()
    subprocess.run(
        ["zstd", "-q", "-f", "-T0", f"-{level}", str(new), "-o", str(work / "new.img.zst")],
        check=True,
    )
    zstd_s = time.perf_counter() - t0
    manifest = {
        "_type": "release",
        "spec_version": 1,
        "release_id": "26.1 (a)",
        "os_version": "26.1",
        "builds": ["23B85"],
        "supplemental_build": "23B85a",
        "published": "2026-11-28T00:00:00Z",
        "sequence": 1,
        "expires": "2027-11-28T00:00:00Z",
        "components": [
            {
                "name": "system",
                "activation": "relaunch",
                "base": {
                    "root_hash": sb.root_hash.hex(),
                    "salt": sb.salt.hex(),
                    "size": sb.data_size,
                    "sha256": info.old_sha256.hex(),
                },
                "target": {
                    "root_hash": st.root_hash.hex(),
                    "salt": st.salt.hex(),
                    "size": st.data_size,
                    "sha256": info.new_sha256.hex(),
                },
                "patch": {
                    "path": "system.bsipatch",
                    "sha256": hashlib.sha256(patch).hexdigest(),
                    "size": len(patch),
                },
                "cves": [],
            }
        ],
    }
    del patch
    Preboot.create(
        work / "preboot",
        os_version="26.1",
        build="23B85",
        images={"system": str(base)},
        activation={"system": "relaunch"},
    )
    meta = {
        "size": base.stat().st_size,
        "changed_blocks": changed,
        "generate_s": gen_s,
        "diff_s": diff_s,
        "zstd_level": level,
        "zstd_s": zstd_s,
        "patch_bytes": (work / "system.bsipatch").stat().st_size,
        "zst_bytes": (work / "new.img.zst").stat().st_size,
        "manifest": manifest,
    }
    (work / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--change", type=float, default=0.01, help="fraction of blocks changed")
    ap.add_argument("--zstd-level", type=int, default=9)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--dir", help="work directory (default: a temporary one, removed after)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--reuse", action="store_true", help="reuse the images in --dir")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        fn = {
            "install": child_install,
            "full": child_full,
            "uninstall": child_uninstall,
            "breakdown": child_breakdown,
        }[args.child]
        print(json.dumps(fn(Path(args.dir)), default=str))
        return 0

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-install-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.reuse and (work / "meta.json").exists():
            meta = json.loads((work / "meta.json").read_text())
            if (work / "preboot" / "releases").is_dir():
                run_child("uninstall", work)
            # forget the cached base-seal check and base leaves, so the first install
            # pays for them again
            (work / "preboot" / "verified.json").unlink(missing_ok=True)
            shutil.rmtree(work / "preboot" / "cache", ignore_errors=True)
        else:
            if (work / "meta.json").exists():
                shutil.rmtree(work)
                work.mkdir()
            meta = prepare(work, args.size_mib, args.change, args.zstd_level, args.seed)
        first = run_child("install", work)
        run_child("uninstall", work)
        second = run_child("install", work)
        full = run_child("full", work)
        breakdown = run_child("breakdown", work)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    mib = 1024 * 1024
    print(
        f"image {meta['size'] / mib:.0f} MiB, {meta['changed_blocks']} of "
        f"{meta['size'] // BLOCK} blocks changed ({args.change:.1%}); "
        f"vendor side: diff {meta['diff_s']:.1f} s, "
        f"zstd -{meta['zstd_level']} {meta['zstd_s']:.1f} s"
    )
    rows = [
        ("bsipatch install (1st)", first, meta["patch_bytes"]),
        ("bsipatch install (2nd)", second, meta["patch_bytes"]),
        (f"full image, zstd -{meta['zstd_level']}", full, meta["zst_bytes"]),
    ]
    print(f"{'':28} {'download':>12} {'wall s':>8} {'CPU s':>8} {'written':>12} {'peak RSS':>10}")
    for label, m, dl in rows:
        print(
            f"{label:28} {dl / mib:9.1f} MiB {m['wall_s']:8.2f} {m['cpu_s']:8.2f} "
            f"{m['bytes_written'] / mib:8.1f} MiB {m['peak_rss_mib']:6.0f} MiB"
        )
    print("install steps measured alone:")
    for label, m in breakdown.items():
        if "cpu_s" in m:
            print(f"  {label:46} wall {m['wall_s']:6.2f} s  CPU {m['cpu_s']:6.2f} s")
    print(f"  provenance of the new blocks: {breakdown['provenance']}")
    print(f"  install seal check: {second['result'].get('verification')}")
    dl_ratio = meta["zst_bytes"] / meta["patch_bytes"]
    cpu1, cpu2 = full["cpu_s"] / first["cpu_s"], full["cpu_s"] / second["cpu_s"]
    wall1, wall2 = full["wall_s"] / first["wall_s"], full["wall_s"] / second["wall_s"]
    print(
        f"ratios vs full image: download {dl_ratio:.1f}x fewer bytes; "
        f"CPU {cpu1:.2f}x (1st) / {cpu2:.2f}x (2nd) less; wall {wall1:.2f}x / {wall2:.2f}x"
    )
    if args.json:
        meta_out = {k: v for k, v in meta.items() if k != "manifest"}
        Path(args.json).write_text(
            json.dumps(
                {
                    "meta": meta_out,
                    "install_first": first,
                    "install_second": second,
                    "full": full,
                    "breakdown": breakdown,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
