"""Shared builders for the TUF tests: keys, small images, a published repository.

Images are small random byte strings with a few changed blocks per release, so a
repository with three releases builds in well under a second. Signing times follow the
real clock (publishing refuses metadata that would already be expired).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bsipatch.device.preboot import Preboot
from bsipatch.trust import signers
from bsipatch.trust.manifest import Cve
from bsipatch.trust.publish import ComponentInput, build_release
from bsipatch.trust.tufrepo import init_repository

NOW = datetime.now(timezone.utc).replace(microsecond=0)
BUILD = "23B85"
ACTIVATION = {"webkit": "relaunch", "libsys": "reboot"}
SIZE = 16 * 4096


def keyset() -> signers.KeySet:
    """One fresh Ed25519 signer per role."""
    return signers.KeySet({r: [signers.generate()] for r in signers.ROLES})


def images(root: Path, seed: int = 7) -> dict[str, dict[str, Path]]:
    """tag -> component -> image: base, a (both changed), b (webkit changed again)."""
    rng = random.Random(seed)
    out: dict[str, dict[str, Path]] = {"base": {}, "a": {}, "b": {}}
    for name in ACTIVATION:
        base = bytearray(rng.randbytes(SIZE))
        a = bytearray(base)
        a[4096 : 4096 + 100] = rng.randbytes(100)
        b = bytearray(a)
        if name == "webkit":
            b[8192 : 8192 + 100] = rng.randbytes(100)
        for tag, data in (("base", base), ("a", a), ("b", b)):
            p = root / f"{name}-{tag}.img"
            p.write_bytes(bytes(data))
            out[tag][name] = p
    return out


def publish(
    repo: Path, keys: signers.KeySet, imgs: dict[str, dict[str, Path]], letter: str, tag: str,
    names: tuple[str, ...] = tuple(ACTIVATION), minutes: int = 0, **kw: Any,
) -> Any:  # fmt: skip
    """Publish ``26.1 (<letter>)`` with the ``tag`` images of ``names``."""
    return build_release(
        repo,
        release_id=f"26.1 ({letter})",
        os_version="26.1",
        builds=(BUILD,),
        supplemental_build=f"{BUILD}{letter}",
        components=[
            ComponentInput(
                n,
                ACTIVATION[n],
                imgs["base"][n],
                imgs[tag][n],
                (Cve(f"CVE-2026-4{ord(letter):03d}{len(n)}", f"fix in {n}"),),
            )
            for n in names
        ],
        keys=keys,
        now=NOW + timedelta(minutes=minutes),
        **kw,
    )


def new_repo(root: Path, keys: signers.KeySet | None = None) -> tuple[Path, signers.KeySet]:
    """An empty repository at ``root / "repo"``."""
    keys = keys or keyset()
    repo = root / "repo"
    init_repository(repo, keys, now=NOW)
    return repo, keys


def device(root: Path, imgs: dict[str, dict[str, Path]]) -> Preboot:
    """A preboot volume with the base images."""
    return Preboot.create(
        root / "preboot",
        os_version="26.1",
        build=BUILD,
        images=dict(imgs["base"]),
        activation=dict(ACTIVATION),
    )
