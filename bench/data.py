"""Benchmark data sets for the delta engine, fetched or generated once and cached.

Three kinds of (old, new) pairs, all cached under ``bench/data/`` (gitignored):

``libcrypto``
    A real binary from two versions of a Debian security update:
    ``libcrypto.so.3`` from ``libssl3`` (3.0.20 -> 3.0.22 on bookworm), fetched
    with ``apt-get download`` and unpacked with ``dpkg-deb -x``. When libssl3 has
    fewer than two versions available, the next package of :data:`PACKAGES` that
    has two is used instead.
``fsimage``
    Two 256 MiB ext4 images made by ``mke2fs -t ext4 -d TREE`` with a fixed UUID,
    hash seed, root owner and fake time, from trees that hold the old resp. new
    package's files plus the same set of other real shared libraries from
    ``/usr/lib`` (copied identically into both). The package's files come first in
    mke2fs's name-ordered walk, so a file that grows shifts every block behind it.
    The images are not byte-reproducible across builds (inode change times come
    from the copied tree), which is why they are built once and cached.
``near``
    A large binary (a name-ordered concatenation of real ``.so`` files from
    ``/usr/lib``, cut to a fixed size) and a copy with ~60 scattered single-byte
    changes (well under 1% of its 4 KiB blocks changed).

Run ``python bench/data.py`` to build them all and print what was built.
This module only obtains data: it times and compares nothing (that is
``compare_delta.py``) and never touches the package under test.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("BSIPATCH_BENCH_DATA", BENCH_DIR / "data"))

#: Packages tried in order for the "real binaries" pair: (package, file to compare).
PACKAGES: tuple[tuple[str, str], ...] = (
    ("libssl3", "libcrypto.so.3"),
    ("libxml2", "libxml2.so.2"),
    ("libcurl4", "libcurl.so.4"),
    ("libc6", "libc.so.6"),
    ("libsqlite3-0", "libsqlite3.so.0"),
)
#: Preferred versions (the security update quoted in the issue); used when available.
PREFERRED_VERSIONS: dict[str, tuple[str, str]] = {
    "libssl3": ("3.0.20-1~deb12u2", "3.0.22-1~deb12u2"),
}

LIB_DIR = Path("/usr/lib/x86_64-linux-gnu")
FS_IMAGE_SIZE = 256 * 1024 * 1024
FS_FILL_BYTES = 96 * 1024 * 1024  # identical .so files copied into both trees
FS_UUID = "5eb1ba7c-0000-4000-8000-b51da7c40003"
FAKE_TIME = 1_764_288_000  # 2025-11-28T00:00:00Z: inode and superblock times
NEAR_SIZE = 92_000_000
NEAR_CHANGES = 60
NEAR_SEED = 3
QUICK_NEAR_SIZE = 16_000_000
#: The major-update pair: the largest file of a big package, several releases apart.
MAJOR_PACKAGE = ("chromium", "chromium")  # (package, member file)
#: The scattered-changes image: random data with runs rewritten at random places.
SCATTER_SIZE = 1 << 30
SCATTER_RUNS = 256
SCATTER_RUN_LEN = 40 << 10
SCATTER_SEED = 13


@dataclasses.dataclass(frozen=True)
class Pair:
    """One benchmark data set: an old file, a new file and what they are."""

    name: str
    old: Path
    new: Path
    description: str

    def to_dict(self) -> dict[str, object]:
        """Sizes, paths and description as JSON-ready values."""
        return {
            "name": self.name,
            "description": self.description,
            "old": str(self.old),
            "new": str(self.new),
            "old_size": self.old.stat().st_size,
            "new_size": self.new.stat().st_size,
        }


def _log(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def _atomic_copy_bytes(data: bytes, dest: Path) -> None:
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)


# --------------------------------------------------------------------------- Debian packages


def _version_lt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b], check=False).returncode == 0


def _sort_versions(versions: Iterable[str]) -> list[str]:
    """Distinct Debian versions, oldest first (dpkg's ordering)."""
    return sorted(
        set(versions),
        key=functools.cmp_to_key(lambda a, b: -1 if _version_lt(a, b) else (a != b)),
    )


def available_versions(package: str) -> list[str]:
    """Versions of ``package`` that apt can download, oldest first."""
    try:
        out = _run(["apt-cache", "madison", package]).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    versions = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and parts[0] == package:
            versions.append(parts[1])
    return _sort_versions(versions)


def _cached_debs(package: str) -> list[tuple[str, Path]]:
    """(version, path) of .deb files of ``package`` already in the cache, oldest first."""
    deb_dir = DATA_DIR / "debs"
    found: dict[str, Path] = {}
    for p in sorted(deb_dir.glob(f"{package}_*_amd64.deb")) if deb_dir.is_dir() else []:
        info = _run(["dpkg-deb", "-f", str(p), "Package", "Version"]).stdout
        fields = dict(line.split(": ", 1) for line in info.splitlines() if ": " in line)
        if fields.get("Package") == package:
            found[fields["Version"]] = p
    return [(v, found[v]) for v in _sort_versions(found)]


def _download_deb(package: str, version: str) -> Path:
    deb_dir = DATA_DIR / "debs"
    deb_dir.mkdir(parents=True, exist_ok=True)
    for v, p in _cached_debs(package):
        if v == version:
            return p
    _log(f"apt-get download {package}={version}")
    try:
        _run(["apt-get", "download", f"{package}={version}"], cwd=deb_dir)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"apt-get download {package}={version} failed: {exc.stderr.strip()} "
            "(run `apt-get update` first?)"
        ) from exc
    for v, p in _cached_debs(package):
        if v == version:
            return p
    raise RuntimeError(f"apt-get download {package}={version} left no .deb in {deb_dir}")


def _extract_deb(deb: Path) -> Path:
    dest = DATA_DIR / "pkgs" / deb.name.removesuffix(".deb")
    if not (dest / ".done").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(dest)])
        (dest / ".done").touch()
    return dest


def _find_member(root: Path, filename: str) -> Path:
    for p in sorted(root.rglob(filename)):
        real = p.resolve()
        if real.is_file() and real.is_relative_to(root.resolve()):
            return real
    raise RuntimeError(f"{filename} not found in {root}")


def choose_package_versions() -> tuple[str, str, str, str]:
    """Pick (package, member file, old version, new version) for the real-binary pair.

    Already-downloaded versions count as available, so a cached pair keeps
    working after apt drops one of the versions.

    Raises:
        RuntimeError: no package of :data:`PACKAGES` has two versions.
    """
    for package, member in PACKAGES:
        ordered = _sort_versions(
            available_versions(package) + [v for v, _ in _cached_debs(package)]
        )
        preferred = PREFERRED_VERSIONS.get(package)
        if preferred and set(preferred) <= set(ordered):
            return package, member, preferred[0], preferred[1]
        if len(ordered) >= 2:
            return package, member, ordered[-2], ordered[-1]
    raise RuntimeError(
        "no package with two downloadable versions among "
        + ", ".join(p for p, _ in PACKAGES)
        + " (run `apt-get update`; are the security and main pockets both in sources?)"
    )


def package_trees() -> tuple[str, str, str, str, Path, Path]:
    """Download and unpack the old and new package.

    Returns:
        (package, member, old version, new version, old tree, new tree).
    """
    package, member, v_old, v_new = choose_package_versions()
    old_tree = _extract_deb(_download_deb(package, v_old))
    new_tree = _extract_deb(_download_deb(package, v_new))
    return package, member, v_old, v_new, old_tree, new_tree


def libcrypto_pair() -> Pair:
    """The real-binary pair (``libcrypto.so.3`` of two libssl3 versions by default)."""
    package, member, v_old, v_new, old_tree, new_tree = package_trees()
    out = DATA_DIR / "real"
    out.mkdir(parents=True, exist_ok=True)
    old = out / f"{member}.{v_old}"
    new = out / f"{member}.{v_new}"
    for src_tree, dest in ((old_tree, old), (new_tree, new)):
        if not dest.exists():
            _atomic_copy_bytes(_find_member(src_tree, member).read_bytes(), dest)
    return Pair(
        name="libcrypto",
        old=old,
        new=new,
        description=f"{member} from {package} {v_old} -> {v_new} (Debian security update)",
    )


# --------------------------------------------------------------------------- file-system images


def _fill_libraries(total: int, exclude: Iterable[str] = ()) -> list[Path]:
    """Real shared libraries from /usr/lib, name order, until ``total`` bytes."""
    skip = set(exclude)
    chosen: list[Path] = []
    size = 0
    for p in sorted(LIB_DIR.glob("*.so*")):
        if p.is_symlink() or not p.is_file() or p.name.split(".so")[0] in skip:
            continue
        n = p.stat().st_size
        if n < 64 * 1024 or n > 40 * 1024 * 1024:
            continue
        chosen.append(p)
        size += n
        if size >= total:
            break
    return chosen


def _build_tree(dest: Path, pkg_tree: Path, fill: list[Path]) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(pkg_tree, dest, symlinks=True, ignore=shutil.ignore_patterns(".done"))
    # The identical libraries go where mke2fs -d (which visits entries in name order)
    # places them after the package's files, so that a file that grows shifts every
    # block behind it: the image is mostly moved, not changed.
    libdir = dest / "usr" / "local" / "lib"
    libdir.mkdir(parents=True, exist_ok=True)
    for lib in fill:
        target = libdir / lib.name
        if not target.exists():
            shutil.copyfile(lib, target)
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            p = Path(root) / name
            os.utime(p, (FAKE_TIME, FAKE_TIME), follow_symlinks=False)
    os.utime(dest, (FAKE_TIME, FAKE_TIME))


def _mke2fs(tree: Path, image: Path) -> None:
    mke2fs = shutil.which("mke2fs") or shutil.which("mke2fs", path="/usr/sbin:/sbin")
    if mke2fs is None:
        raise RuntimeError("mke2fs not found (Debian package e2fsprogs)")
    tmp = image.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    with tmp.open("wb") as f:
        f.truncate(FS_IMAGE_SIZE)
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FAKE_TIME), SOURCE_DATE_EPOCH=str(FAKE_TIME))
    argv = [
        mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "bench", "-d", str(tree),
        "-U", FS_UUID, "-E", f"hash_seed={FS_UUID},root_owner=0:0", str(tmp),
    ]  # fmt: skip
    _log(" ".join(argv))
    _run(argv, env=env)
    tmp.replace(image)


def fsimage_pair() -> Pair:
    """Two 256 MiB ext4 images: package old/new plus identical libraries."""
    package, _member, v_old, v_new, old_tree, new_tree = package_trees()
    out = DATA_DIR / "fs"
    out.mkdir(parents=True, exist_ok=True)
    old = out / f"{package}-{v_old}.ext4"
    new = out / f"{package}-{v_new}.ext4"
    fill = _fill_libraries(FS_FILL_BYTES, exclude=("libcrypto", "libssl"))
    for pkg_tree, image in ((old_tree, old), (new_tree, new)):
        if image.exists():
            continue
        tree = out / (image.name + ".tree")
        _build_tree(tree, pkg_tree, fill)
        _mke2fs(tree, image)
        shutil.rmtree(tree)
    fill_mb = sum(p.stat().st_size for p in fill) / 1e6
    return Pair(
        name="fsimage",
        old=old,
        new=new,
        description=(
            f"256 MiB ext4 (mke2fs -d): {package} {v_old} -> {v_new} files plus "
            f"{len(fill)} identical /usr/lib libraries ({fill_mb:.0f} MB)"
        ),
    )


# --------------------------------------------------------------------------- near-identical pair


def _concat_libraries(size: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    for p in sorted(LIB_DIR.glob("*.so*")):
        if p.is_symlink() or not p.is_file():
            continue
        data = p.read_bytes()
        parts.append(data)
        total += len(data)
        if total >= size:
            break
    if total < size:
        raise RuntimeError(f"only {total} bytes of libraries in {LIB_DIR}, need {size}")
    return b"".join(parts)[:size]


def near_pair(size: int = NEAR_SIZE, changes: int = NEAR_CHANGES, seed: int = NEAR_SEED) -> Pair:
    """A large real binary and a copy with ``changes`` scattered single-byte edits."""
    out = DATA_DIR / "near"
    out.mkdir(parents=True, exist_ok=True)
    old = out / f"libs-{size}.bin"
    new = out / f"libs-{size}-{changes}x-seed{seed}.bin"
    if not old.exists():
        _log(f"concatenating {LIB_DIR}/*.so* to {size} bytes")
        _atomic_copy_bytes(_concat_libraries(size), old)
    if not new.exists():
        data = bytearray(old.read_bytes())
        rng = random.Random(seed)
        for pos in sorted(rng.sample(range(size), changes)):
            data[pos] ^= rng.randrange(1, 256)
        _atomic_copy_bytes(bytes(data), new)
    blocks = (size + 4095) // 4096
    changed = changed_blocks(old, new)
    return Pair(
        name="near" if size == NEAR_SIZE else f"near{size // 1_000_000}M",
        old=old,
        new=new,
        description=(
            f"{size / 1e6:.0f} MB of concatenated /usr/lib .so files, {changes} scattered "
            f"single-byte changes ({changed} of {blocks} 4 KiB blocks = "
            f"{100 * changed / blocks:.2f}%)"
        ),
    )


def major_pair() -> Pair:
    """The largest file of :data:`MAJOR_PACKAGE` from its oldest and newest version apt
    offers (chromium 150 -> 156 on bookworm: six major releases apart, ~300 MB)."""
    package, member = MAJOR_PACKAGE
    ordered = _sort_versions(available_versions(package) + [v for v, _ in _cached_debs(package)])
    if len(ordered) < 2:
        raise RuntimeError(f"apt offers fewer than two versions of {package}")
    v_old, v_new = ordered[0], ordered[-1]
    out = DATA_DIR / "major"
    out.mkdir(parents=True, exist_ok=True)
    old, new = out / f"{member}.{v_old}", out / f"{member}.{v_new}"
    for v, dest in ((v_old, old), (v_new, new)):
        if not dest.exists():
            tree = _extract_deb(_download_deb(package, v))
            src = max(
                (f for f in tree.rglob(member) if f.is_file() and not f.is_symlink()),
                key=lambda f: f.stat().st_size,
            )
            shutil.copyfile(src, dest)
    return Pair(
        name="major",
        old=old,
        new=new,
        description=f"{member} from {package} {v_old} -> {v_new} (major update)",
    )


def scatter_pair(
    size: int = SCATTER_SIZE,
    runs: int = SCATTER_RUNS,
    run_len: int = SCATTER_RUN_LEN,
    seed: int = SCATTER_SEED,
) -> Pair:
    """Random data and a copy with ``runs`` runs of ``run_len`` bytes rewritten at
    random offsets: a sealed image with a few changed files (1% of 1 GiB by default)."""
    out = DATA_DIR / "scatter"
    out.mkdir(parents=True, exist_ok=True)
    old = out / f"random-{size}-seed{seed}.img"
    new = out / f"random-{size}-seed{seed}-{runs}x{run_len}.img"
    rng = random.Random(seed)
    if not old.exists():
        _log(f"writing {size:,} random bytes")
        tmp = old.with_suffix(".tmp")
        with tmp.open("wb") as f:
            for _ in range(0, size, 1 << 24):
                f.write(rng.randbytes(1 << 24))
        tmp.replace(old)
    if not new.exists():
        tmp = new.with_suffix(".tmp")
        shutil.copyfile(old, tmp)
        with tmp.open("r+b") as f:
            for pos in sorted(rng.sample(range(0, size - run_len, 4096), runs)):
                f.seek(pos + rng.randrange(4096))
                f.write(rng.randbytes(run_len))
        tmp.replace(new)
    return Pair(
        name="scatter",
        old=old,
        new=new,
        description=(
            f"{size / 2**30:.0f} GiB of random data, {runs} runs of {run_len // 1024} KiB "
            f"rewritten at random places ({100 * runs * run_len / size:.1f}%)"
        ),
    )


def changed_blocks(old: Path, new: Path, block: int = 4096) -> int:
    """Number of ``block``-sized blocks that differ at the same offset."""
    a, b = old.read_bytes(), new.read_bytes()
    n = max(len(a), len(b))
    return sum(1 for i in range(0, n, block) if a[i : i + block] != b[i : i + block])


# --------------------------------------------------------------------------- selection

SET_NAMES = ("libcrypto", "near", "fsimage", "major", "scatter")


def get_pairs(names: Iterable[str] = SET_NAMES, *, quick: bool = False) -> list[Pair]:
    """Build (or reuse from the cache) the named data sets, in the order given.

    Args:
        names: any of :data:`SET_NAMES`, or ``exe`` (not run by default: ten pairs).
        quick: use the smaller near-identical pair (16 MB instead of 92 MB).

    Returns:
        The pairs.

    Raises:
        ValueError: an unknown name.
        RuntimeError: the data could not be fetched or generated.
    """
    pairs = []
    for name in names:
        if name == "libcrypto":
            pairs.append(libcrypto_pair())
        elif name == "near":
            pairs.append(near_pair(QUICK_NEAR_SIZE if quick else NEAR_SIZE))
        elif name == "fsimage":
            pairs.append(fsimage_pair())
        elif name == "major":
            pairs.append(major_pair())
        elif name == "scatter":
            pairs.append(scatter_pair())
        elif name == "exe":  # ten ELF pairs of real security updates (bench/exe_data.py)
            from exe_data import exe_pairs

            pairs.extend(exe_pairs())
        else:
            raise ValueError(
                f"unknown data set {name!r}; choose from {', '.join((*SET_NAMES, 'exe'))}"
            )
    return pairs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Build the data sets and print what they are."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default=",".join(SET_NAMES), help="comma-separated data sets")
    ap.add_argument("--quick", action="store_true", help="the smaller near-identical pair")
    ap.add_argument("--force", action="store_true", help="rebuild generated files")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    if args.force:
        for sub in ("real", "fs", "near", "scatter"):
            shutil.rmtree(DATA_DIR / sub, ignore_errors=True)
    pairs = get_pairs([s for s in args.sets.split(",") if s], quick=args.quick)
    rows = []
    for p in pairs:
        d = p.to_dict()
        d["old_sha256"] = _sha256(p.old)
        d["new_sha256"] = _sha256(p.new)
        rows.append(d)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for d in rows:
            print(f"{d['name']}: {d['description']}")
            print(f"  old {d['old_size']:>11,} B  {d['old_sha256'][:16]}  {d['old']}")
            print(f"  new {d['new_size']:>11,} B  {d['new_sha256'][:16]}  {d['new']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
