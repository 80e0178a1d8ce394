"""Stored dm-verity leaves of installed images, so a later install need not rehash them.

An install whose manifest seals a component's base and target images with the same
salt (bsipatch's publisher does: "lineage salt") needs the base image's leaves under
that salt: the new image's leaves for blocks copied from the base are the base's
leaves (:class:`bsipatch.delta.apply.Provenance`). The first install computes them while it
verifies the base image against the manifest's base seal; this module keeps them in
``<preboot>/cache/leaves/`` for the next one.

An entry is used only when BOTH hold, checked at every use:

* the leaves build the tree whose root is the trusted seal's root (the manifest's
  base seal, from signed metadata): a damaged or edited entry is refused;
* the image file still has the identity it had when it was hashed and verified:
  device, inode, size, mtime and ctime (``os.stat``). Any change made through the
  file system (a write, truncate, chmod, a rename onto it, resetting mtime with
  ``utime``) moves ctime, which user space cannot set back; so does a hard link or
  unlink of the file, which merely costs a rehash.

What it cannot see: a write to the underlying block device that bypasses the file
system (or a clock set back to forge ctime), i.e. an attacker who already has root
on the device and can equally rewrite ``state.json`` or the release images. Against
that the images stay protected as before: every block an app reads through
:meth:`bsipatch.device.preboot.Preboot.open_component` is checked against the seal.

Entries are plain files replaced atomically; losing one (or a torn one after a power
cut) only means hashing the image again. This module decides nothing about which
seal is trusted: the caller passes the seal from a verified manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from bsipatch._crashpoints import crashpoint
from bsipatch._io import atomic_write
from bsipatch.errors import SealMismatch
from bsipatch.seal.tree import Seal, check_leaves

CACHE_SUBDIR = Path("cache") / "leaves"
SUFFIX = ".leaves"
FORMAT = 1
MAX_HEADER = 4096

__all__ = ["identity", "load", "prune", "store"]


def identity(path: Path) -> dict[str, int]:
    """What must not change while an entry is trusted: dev, inode, size, mtime, ctime."""
    st = Path(path).stat()
    return {
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _seal_dict(seal: Seal) -> dict[str, Any]:
    return {
        "root_hash": seal.root_hash.hex(),
        "salt": seal.salt.hex(),
        "size": seal.data_size,
        "hash_type": seal.hash_type,
    }


def _entry(root: Path, rel: str, seal: Seal) -> Path:
    key = json.dumps([rel, _seal_dict(seal)], sort_keys=True).encode()
    return root / CACHE_SUBDIR / (hashlib.sha256(key).hexdigest()[:32] + SUFFIX)


def load(root: Path, image: Path, seal: Seal) -> np.ndarray | None:
    """The stored leaves of ``image`` under ``seal``, or ``None``.

    ``None`` when there is no entry, the entry is damaged, the image's identity
    changed since it was stored, or the leaves do not give ``seal``'s root.

    Args:
        root: the preboot directory.
        image: the image file (inside ``root``).
        seal: the trusted seal the image must match (salt, size and root are used).
    """
    rel = str(image.relative_to(root))
    try:
        with open(_entry(root, rel, seal), "rb") as f:
            head = json.loads(f.readline(MAX_HEADER))
            if (
                not isinstance(head, dict)
                or head.get("format") != FORMAT
                or head.get("image") != rel
                or head.get("seal") != _seal_dict(seal)
                or head.get("identity") != identity(image)
            ):
                return None
            leaves = np.empty((seal.data_blocks, 32), dtype=np.uint8)
            got = f.readinto(leaves.data.cast("B")) if leaves.size else 0
            if got != leaves.size or f.read(1):
                return None
    except (OSError, ValueError):
        return None
    try:
        check_leaves(leaves, seal)
    except SealMismatch:
        return None
    return leaves


def store(root: Path, image: Path, seal: Seal, leaves: np.ndarray, ident: dict[str, int]) -> None:
    """Store the leaves of ``image`` (verified against ``seal``) taken at identity ``ident``.

    ``ident`` is :func:`identity` read BEFORE the image was hashed, so a change during
    the hashing makes the entry stale rather than wrong.
    """
    rel = str(image.relative_to(root))
    path = _entry(root, rel, seal)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {"format": FORMAT, "image": rel, "seal": _seal_dict(seal), "identity": ident}
    with atomic_write(path) as f:
        f.write(json.dumps(head, sort_keys=True).encode() + b"\n")
        f.write(np.ascontiguousarray(leaves, dtype=np.uint8).data.cast("B"))
    crashpoint("leafcache.stored")


def prune(root: Path) -> list[str]:
    """Remove entries whose image is gone or changed, and leftover temporary files.

    Returns:
        The names removed.
    """
    removed: list[str] = []
    directory = root / CACHE_SUBDIR
    if not directory.is_dir():
        return removed
    for p in sorted(directory.iterdir()):
        keep = False
        if p.name.endswith(SUFFIX) and not p.name.startswith("."):
            try:
                with open(p, "rb") as f:
                    head = json.loads(f.readline(MAX_HEADER))
                keep = head.get("identity") == identity(root / head["image"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                keep = False
        if not keep:
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p.name)
    return removed
