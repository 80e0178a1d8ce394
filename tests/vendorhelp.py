"""Small build matrices for the vendor tests: images, keys, a repository, a matrix file."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path

from bsipatch.trust import signers
from bsipatch.trust.tufrepo import init_repository

NOW = datetime.now(timezone.utc).replace(microsecond=0)  # TUF refuses already-expired metadata
NOW_TEXT = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
COMPONENTS = {"webkit": "relaunch", "libsystem": "reboot"}


def make_image(path: Path, seed: int, size: int) -> bytes:
    """Compressible-but-not-trivial bytes: 64-byte words drawn from a small vocabulary."""
    rng = random.Random(seed)
    vocab = [rng.randbytes(64) for _ in range(512)]
    data = b"".join(rng.choice(vocab) for _ in range(size // 64))
    path.write_bytes(data)
    return data


def edit(data: bytes, seed: int, n: int = 12) -> bytes:
    """A small change: ``n`` scattered 16-byte edits and one 300-byte insertion."""
    rng = random.Random(seed)
    b = bytearray(data)
    for _ in range(n):
        at = rng.randrange(len(b) - 16)
        b[at : at + 16] = rng.randbytes(16)
    at = rng.randrange(len(b))
    b[at:at] = rng.randbytes(300)
    return bytes(b[: len(data)])


def keyset(keydir: Path) -> signers.KeySet:
    """A key directory (for the CLI) and its signers (for the API)."""
    signers.generate_keydir(keydir)
    return signers.KeySet.from_dir(keydir)


def init_repo(path: Path, ks: signers.KeySet) -> Path:
    init_repository(path, ks, now=NOW)
    return path


def images(root: Path, variants: int, size: int = 256 * 1024, releases: str = "ac") -> dict:
    """Base image and one image per release letter for each variant and component."""
    out: dict = {}
    for v in range(variants):
        for i, comp in enumerate(COMPONENTS):
            d = root / f"v{v}"
            d.mkdir(parents=True, exist_ok=True)
            data = make_image(d / f"{comp}.base.img", 1000 * v + i, size)
            out[(v, comp, "base")] = d / f"{comp}.base.img"
            for k, letter in enumerate(releases):
                data = edit(data, 7 * v + 3 * i + k)  # each release builds on the last
                (d / f"{comp}.{letter}.img").write_bytes(data)
                out[(v, comp, letter)] = d / f"{comp}.{letter}.img"
    return out


def matrix(path: Path, imgs: dict, variants: int, letter: str, previous: str = "") -> Path:
    doc = {
        "release": f"26.1 ({letter})",
        "os_version": "26.1",
        "components": {
            c: {"activation": a, "cves": [{"id": "CVE-2026-4100" + str(i), "description": c}]}
            for i, (c, a) in enumerate(COMPONENTS.items())
        },
        "variants": [
            {
                "name": f"family{v}",
                "build": f"23B8{v}",
                "supplemental_build": f"23B8{v}{letter}",
                "images": {
                    c: {"base": str(imgs[(v, c, "base")]), "new": str(imgs[(v, c, letter)])}
                    for c in COMPONENTS
                },
                "previous": {
                    f"26.1 ({p})": {c: str(imgs[(v, c, p)]) for c in COMPONENTS} for p in previous
                },
            }
            for v in range(variants)
        ],
    }
    path.write_text(json.dumps(doc, indent=1))
    return path
