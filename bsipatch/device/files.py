"""Small durable-file helpers and the records stored on the preboot volume.

Names (release slugs, component names), fsynced file creation and copies, the JSON
encoding every preboot record uses, the ``<name>.seal.json`` record, and removal of the
temporary files an interrupted atomic write leaves. No layout, no state, no trust
decisions here (that is :mod:`bsipatch.device.preboot`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bsipatch._io import PathLike, write_new_file
from bsipatch._io import fsync_file as fsync_file

_CHUNK = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def release_slug(release_id: str) -> str:
    """The directory name of a release: ``"26.1 (a)"`` -> ``"26.1-a"``.

    Raises:
        ValueError: the id gives an empty or unsafe name.
    """
    slug = re.sub(r"[^A-Za-z0-9._+]+", "-", release_id).strip("-")
    if not slug or slug in (".", "..") or not _NAME_RE.match(slug):
        raise ValueError(f"release id {release_id!r} gives no usable directory name")
    return slug


def check_name(name: str, what: str = "component name") -> str:
    """Return ``name`` if it is a safe file name stem, else raise ``ValueError``."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise ValueError(f"bad {what} {name!r}: use letters, digits, . _ + - (max 64)")
    return name


def write_durable(path: Path, data: bytes, mode: int = 0o444) -> None:
    """Create ``path`` (which must not exist) with ``data``, fsynced, with ``mode``.

    Used inside staging directories only: the directory is fsynced by the caller
    before it is renamed into place. The one durable-write path is :mod:`bsipatch._io`.
    """
    write_new_file(path, data, mode)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented, key-sorted JSON text (UTF-8, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def seal_record_dict(seal: Any, sha256_hex: str | None = None) -> dict[str, Any]:
    """The ``<name>.seal.json`` record of a :class:`bsipatch.seal.tree.Seal` (+ file SHA-256)."""
    record: dict[str, Any] = {
        "seal": {
            "root_hash": seal.root_hash.hex(),
            "salt": seal.salt.hex(),
            "size": int(seal.data_size),
        }
    }
    if sha256_hex is not None:
        record["sha256"] = sha256_hex
    return record


def seal_from_record(record: dict[str, Any]) -> Any:
    """Turn a stored ``<name>.seal.json`` record into a :class:`bsipatch.seal.tree.Seal`."""
    from bsipatch.seal.tree import Seal

    s = record["seal"]
    return Seal(
        root_hash=bytes.fromhex(s["root_hash"]),
        salt=bytes.fromhex(s["salt"]),
        data_size=int(s["size"]),
    )


def is_temp_name(name: str) -> bool:
    """True for the temporary names :func:`bsipatch._io.atomic_write` and apply use."""
    return name.startswith(".") and name.endswith((".tmp", ".bsipatch-tmp"))


def remove_stray_temps(directory: Path) -> list[str]:
    """Remove temporary files a crash left in ``directory`` (not recursive).

    Only for directories whose writers hold the preboot lock (or do not run yet, at
    boot): a temporary file is never referenced, so removing it loses nothing.
    """
    removed: list[str] = []
    try:
        children = list(directory.iterdir())
    except FileNotFoundError:
        return removed
    for p in children:
        if is_temp_name(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
    return removed


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def copy_durable(src: PathLike, dst: Path, progress: Callable[[int], None] | None = None) -> str:
    """Copy ``src`` to new file ``dst`` (fsynced, read-only); return its hex SHA-256."""
    h = hashlib.sha256()
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with open(src, "rb") as f:
            while True:
                b = f.read(_CHUNK)
                if not b:
                    break
                h.update(b)
                view = memoryview(b)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if progress:
                    progress(len(b))
        os.fchmod(fd, 0o444)
        os.fsync(fd)
    finally:
        os.close(fd)
    return h.hexdigest()
