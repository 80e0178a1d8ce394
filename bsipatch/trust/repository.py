"""The release repository: a directory of plain static files any web server can serve.

Layout (relative to the repository root)::

    root.json                              current trust root (signed envelope)
    roots/<N>.root.json                    every root version N, for rotation chains
    catalog.json                           the dated catalog (catalog role)
    releases/<slug>/manifest.json          a release manifest (release role); slug "26.1-a"
    releases/<slug>/<component>.bsipatch  the patch of one component
    images/<os_version>/<build>/<component>.img   full base images of an OS build

This module knows those paths and reads and writes the files (writes are atomic via
:func:`bsipatch._io.atomic_write`). It decides no trust: what it reads is raw bytes
for :class:`bsipatch.trust.verify.Verifier`.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bsipatch._io import atomic_write
from bsipatch.errors import FormatError, MetadataError
from bsipatch.trust.manifest import _NAME, check_build, check_release_path, release_slug

__all__ = [
    "CATALOG",
    "ROOT",
    "Repository",
    "image_relpath",
    "manifest_relpath",
    "patch_relpath",
    "root_relpath",
]

PathLike = str | os.PathLike[str]

ROOT = "root.json"
CATALOG = "catalog.json"
LOCK = ".publish.lock"

# Re-entrancy of Repository.lock() within a thread: (pid, repository path) -> depth.
# flock() on a second descriptor of the same file would wait for ourselves; other
# threads do open their own descriptor and wait.
_held = threading.local()


def root_relpath(version: int) -> str:
    """``roots/<version>.root.json``."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"root version must be >= 1, got {version!r}")
    return f"roots/{version}.root.json"


def manifest_relpath(release_id: str) -> str:
    """``releases/<slug>/manifest.json`` for a release id like ``"26.1 (a)"``."""
    return f"releases/{release_slug(release_id)}/manifest.json"


def _check_component(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise FormatError(f"invalid component name {name!r}")
    return name


def patch_relpath(release_id: str, component: str) -> str:
    """``releases/<slug>/<component>.bsipatch``."""
    return f"releases/{release_slug(release_id)}/{_check_component(component)}.bsipatch"


def image_relpath(os_version: str, build: str, component: str) -> str:
    """``images/<os_version>/<build>/<component>.img``."""
    check_release_path(os_version, "os_version")
    check_build(build, "build")
    return f"images/{os_version}/{build}/{_check_component(component)}.img"


class Repository:
    """A repository directory on the local file system (vendor side, or a mirror).

    Args:
        path: the repository root directory.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Repository({str(self.path)!r})"

    @contextmanager
    def lock(self) -> Iterator[Repository]:
        """Hold the publisher lock (``.publish.lock``, ``flock``) for a read-modify-write.

        Publishing reads the catalog, adds to it and writes it back; two publishers at
        once would lose one release. This waits for the other to finish. Re-entrant
        within a process; released by the kernel when a process dies.
        """
        key = f"{os.getpid()}:{self.path.resolve()}"  # a forked child holds nothing
        depths: dict[str, int] = _held.__dict__.setdefault("depths", {})
        if depths.get(key):
            depths[key] += 1
            try:
                yield self
            finally:
                depths[key] -= 1
            return
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            depths[key] = 1
            try:
                yield self
            finally:
                del depths[key]
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def resolve(self, relpath: str) -> Path:
        """The absolute path of a repository-relative path (refusing ``..`` and the like).

        Raises:
            FormatError: ``relpath`` is not a safe relative path.
        """
        check_release_path(relpath, "repository path")
        return self.path / relpath

    # --- reading ---------------------------------------------------------------------

    def read(self, relpath: str, *, max_size: int | None = None) -> bytes:
        """Read a file of the repository.

        Raises:
            FormatError: unsafe path.
            MetadataError: the file is missing, unreadable or larger than ``max_size``.
        """
        p = self.resolve(relpath)
        try:
            with open(p, "rb") as f:
                data = f.read() if max_size is None else f.read(max_size + 1)
        except FileNotFoundError:
            raise MetadataError(f"{relpath} is missing from repository {self.path}") from None
        except OSError as exc:
            raise MetadataError(f"cannot read {p}: {exc.strerror or exc}") from None
        if max_size is not None and len(data) > max_size:
            raise MetadataError(f"{relpath} is larger than {max_size} bytes")
        return data

    def exists(self, relpath: str) -> bool:
        """True when the file exists."""
        return self.resolve(relpath).exists()

    def read_root(self, version: int | None = None) -> bytes:
        """``root.json`` (or ``roots/<version>.root.json``)."""
        return self.read(ROOT if version is None else root_relpath(version))

    def read_catalog(self) -> bytes:
        """``catalog.json``."""
        return self.read(CATALOG)

    def read_manifest(self, release_id: str) -> bytes:
        """``releases/<slug>/manifest.json``."""
        return self.read(manifest_relpath(release_id))

    def root_versions(self) -> list[int]:
        """The versions N present as ``roots/<N>.root.json``, ascending."""
        d = self.path / "roots"
        out = []
        if d.is_dir():
            for p in d.iterdir():
                stem = p.name.removesuffix(".root.json")
                if p.name.endswith(".root.json") and stem.isdigit():
                    out.append(int(stem))
        return sorted(out)

    # --- writing ---------------------------------------------------------------------

    def write(self, relpath: str, data: bytes) -> Path:
        """Write ``data`` to a repository file atomically (creating directories).

        The file is world-readable (0644): the repository is public.
        """
        p = self.resolve(relpath)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(p) as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(data)
        return p

    def write_root(self, version: int, data: bytes) -> None:
        """Write ``roots/<version>.root.json``, then ``root.json`` (both atomic)."""
        self.write(root_relpath(version), data)
        self.write(ROOT, data)

    def write_catalog(self, data: bytes) -> None:
        """Write ``catalog.json`` atomically (the commit point of a publication)."""
        self.write(CATALOG, data)

    def write_manifest(self, release_id: str, data: bytes) -> str:
        """Write a release manifest; return its relative path."""
        rel = manifest_relpath(release_id)
        self.write(rel, data)
        return rel
