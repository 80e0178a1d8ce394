"""Component images for ``bsipatch demo``: realistic file contents and the image files.

Files are copies of real shared libraries from ``/usr/lib`` when present, else
generated code-like data; a "security fix" changes them the way a rebuilt library
changes. Images are ext4 file systems built with ``mke2fs -d`` when it is installed,
else deterministic tar archives built here in pure Python. Deterministic for a seed;
no network, no bsipatch logic.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

FIXED_TIME = 1_764_000_000  # file times inside the images (deterministic builds)
BLOCK = 4096

# real libraries that make realistic image contents, if this machine has them
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
ENGINE_LIBS = (
    "libxml2.so.2",
    "libsqlite3.so.0",
    "libharfbuzz.so.0",
    "libfreetype.so.6",
    "libpng16.so.16",
    "libjpeg.so.62",
    "libicuuc.so.72",
    "libxslt.so.1",
)
SYSTEM_LIBS = (
    "libc.so.6",
    "libm.so.6",
    "libz.so.1",
    "libssl.so.3",
    "libcrypto.so.3",
    "libstdc++.so.6",
)


def find_lib(name: str) -> Path | None:
    for d in LIB_DIRS:
        p = Path(d) / name
        if p.is_file():
            return p.resolve()
    return None


def code_like(seed: int, size: int) -> bytes:
    """Deterministic bytes that look like machine code plus a string table."""
    rng = random.Random(seed)  # noqa: S311 - deterministic demo data, not secrets
    ops = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8))) for _ in range(400)]
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randrange(4, 16)))
        for _ in range(300)
    ]
    out = bytearray(b"\x7fELF\x02\x01\x01" + bytes(9))
    while len(out) < size * 4 // 5:
        out += b"".join(rng.choice(ops) for _ in range(64))
    while len(out) < size:
        out += rng.choice(words).encode() + b"\0"
    return bytes(out[:size])


def gather(libs: tuple[str, ...], budget: int, seed: int, prefix: str) -> dict[str, bytes]:
    """Files for one image: real libraries up to ``budget`` bytes, else generated."""
    files: dict[str, bytes] = {}
    used = 0
    for name in libs:
        p = find_lib(name)
        if p is None:
            continue
        data = p.read_bytes()
        if used + len(data) > budget:
            data = data[: max(0, budget - used)]
        if len(data) < 64 << 10:
            break
        files[f"{prefix}/{name}"] = data
        used += len(data)
        if used >= budget:
            break
    i = 0
    while used < budget:
        size = min(budget - used, 1 << 20)
        files[f"{prefix}/lib{prefix.lower()}{i}.so"] = code_like(seed + i, size)
        used += size
        i += 1
    return files


def security_fix(files: dict[str, bytes], seed: int) -> dict[str, bytes]:
    """A "security fix" as a rebuilt library looks: one file gets 1.5 kB of new code,
    a dozen changed instructions, and, after the insertion point, the small changes
    of every relative address that now points across it (one byte in ~300)."""
    rng = random.Random(seed)  # noqa: S311 - deterministic demo data, not secrets
    out = dict(files)
    name = sorted(files, key=lambda n: (-len(files[n]), n))[seed % min(2, len(files))]
    data = bytearray(files[name])
    for _ in range(12):
        off = rng.randrange(0, len(data) - 64)
        data[off : off + 16] = bytes(rng.randrange(256) for _ in range(16))
    insert_at = len(data) // 3
    for off in range(insert_at, len(data) - 256, 256):
        if rng.random() < 0.8:
            pos = off + rng.randrange(252)
            data[pos] = (data[pos] + 0x06) & 0xFF  # displacement grew by 1536 = 0x600
    data[insert_at:insert_at] = code_like(seed * 7919, 1536)
    out[name] = bytes(data)
    return out


def _mke2fs() -> str | None:
    return shutil.which("mke2fs") or shutil.which("mke2fs", path="/usr/sbin:/sbin")


def build_image(
    files: dict[str, bytes], dest: Path, *, label: str, use_mke2fs: bool | None = None
) -> str:
    """Write a component image holding ``files``; returns the format used.

    ext4 via ``mke2fs -d`` (fixed UUID, hash seed and time) when available and
    ``use_mke2fs`` is not False; else a deterministic tar archive padded to 4 KiB.
    """
    tool = _mke2fs() if use_mke2fs is not False else None
    if tool:
        with tempfile.TemporaryDirectory(prefix="bsipatch-demo-tree-") as tree:
            for rel, data in sorted(files.items()):
                p = Path(tree, rel)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
                os.utime(p, (FIXED_TIME, FIXED_TIME))
            for d in sorted({Path(tree, r).parent for r in files}, reverse=True):
                os.utime(d, (FIXED_TIME, FIXED_TIME))
            total = sum(len(d) for d in files.values())
            blocks = (total * 5 // 4 + (2 << 20)) // BLOCK
            uuid = hashlib.sha256(label.encode()).hexdigest()
            uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:32]}"
            env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FIXED_TIME))
            dest.unlink(missing_ok=True)
            proc = subprocess.run(
                [
                    tool, "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-O", "^has_journal",
                    "-L", label[:16], "-U", uuid, "-E", f"hash_seed={uuid},root_owner=0:0",
                    "-N", "256", "-d", tree, str(dest), str(blocks),
                ],
                env=env,
                capture_output=True,
                check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                return "ext4 (mke2fs -d)"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mtime = FIXED_TIME
            info.mode = 0o755
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    raw += bytes(-len(raw) % BLOCK)
    dest.write_bytes(raw)
    return "tar (built-in, pure Python)"
