"""The on-disk state of a device's preboot volume: layout, lock, atomic state pointer, recovery.

Layout (see docs/preboot.md for the full description)::

    <dir>/state.json                  the atomic pointer: OS, activation chain, booted release
    <dir>/journal                     write-ahead intent records (bsipatch.device.journal)
    <dir>/lock                        flock()ed by the one process changing the volume
    <dir>/verified.json               cache: which manifest seals an image already matched
    <dir>/base/<os>-<build>/          base images of an OS version (read-only, never modified)
        os.json  <name>.img  <name>.seal.json
    <dir>/releases/<slug>/            one installed release: every component image
        release.json  <name>.img  <name>.seal.json   (unchanged ones hard-linked)
    <dir>/staging/<tx>/               a release or base being built (never referenced)
    <dir>/trash/                      directories being deleted

This module reads the state, switches it atomically, creates a volume, answers
``status`` and "which image does a new open get", holds the lock, and recovers after a
crash. It does not apply patches, decide trust or choose releases (that is
:mod:`bsipatch.device.install` and the agent).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import io
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

from bsipatch._crashpoints import crashpoint
from bsipatch._io import PathLike, atomic_write, fsync_dir, os_error_to_staging
from bsipatch._time import now_text
from bsipatch.device.base import (
    ACTIVATIONS,
    CREATE_NAMES,
    STATE_FORMAT,
    build_base,
    create_in,
    empty_dir,
    make_writable,
)
from bsipatch.device.files import (
    check_name,
    copy_durable,
    file_sha256,
    fsync_file,
    is_temp_name,
    json_bytes,
    release_slug,
    remove_stray_temps,
    seal_from_record,
    seal_record_dict,
    write_durable,
)
from bsipatch.device.journal import Journal
from bsipatch.device.pending import sweep_pending
from bsipatch.errors import LockedError, SealMismatch, StateError

HISTORY_LIMIT = 200
_LOCKED_FILES = ("state.json", "verified.json")

__all__ = [  # the helpers are re-exported for callers that import them from here
    "ACTIVATIONS",
    "STATE_FORMAT",
    "ComponentReader",
    "Preboot",
    "build_base",
    "check_name",
    "copy_durable",
    "crashpoint",
    "file_sha256",
    "fsync_file",
    "is_temp_name",
    "json_bytes",
    "release_slug",
    "remove_stray_temps",
    "seal_from_record",
    "seal_record_dict",
    "write_durable",
]


class ComponentReader(io.RawIOBase):
    """A verified reader over an image file it owns: closing it closes both.

    Args:
        verified: the :class:`bsipatch.seal.tree.VerifiedReader` reading ``file``.
        file: the open image file (kept open as long as the reader is).
    """

    def __init__(self, verified: Any, file: BinaryIO) -> None:
        super().__init__()
        self._verified = verified
        self._file = file

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return int(self._verified.readinto(b))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return int(self._verified.seek(offset, whence))

    def tell(self) -> int:
        return int(self._verified.tell())

    def close(self) -> None:
        if not self.closed:
            try:
                self._verified.close()
            finally:
                self._file.close()
        super().close()


class Preboot:
    """A preboot directory: the device's base images, installed releases and state.

    Readers (:meth:`status`, :meth:`component_path`, :meth:`open_component`) never take
    the lock: they read ``state.json``, which is only ever replaced by an atomic rename,
    so they see the state before or after a change, never a mix. Writers hold
    :meth:`lock` and go through :mod:`bsipatch.device.install`.

    Args:
        path: the preboot directory (made by :meth:`create`).
        clock: returns the time recorded in the history (defaults to
            :func:`bsipatch._time.now_text`).

    Raises:
        StateError: ``path`` holds no preboot state.
    """

    def __init__(self, path: PathLike, *, clock: Callable[[], str] | None = None) -> None:
        self.path = Path(path)
        self.clock = clock or now_text
        self._lock_fd: int | None = None
        self._lock_depth = 0
        if not self.state_path.exists():
            raise StateError(f"{self.path} is not a bsipatch preboot directory (no state.json)")
        self.journal = Journal(self.path / "journal")

    # --- paths ---------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        """The atomically replaced state file."""
        return self.path / "state.json"

    @property
    def releases_dir(self) -> Path:
        """Directory of installed releases."""
        return self.path / "releases"

    @property
    def staging_dir(self) -> Path:
        """Directory of releases/bases being built."""
        return self.path / "staging"

    @property
    def trash_dir(self) -> Path:
        """Directory of trees being deleted."""
        return self.path / "trash"

    # --- creation ----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: PathLike,
        *,
        os_version: str,
        build: str,
        images: Mapping[str, PathLike],
        activation: dict[str, str],
        clock: Callable[[], str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Preboot:
        """Make a new preboot directory holding the base images of one OS version.

        Each image is copied in, fsynced, sealed (random salt) and made read-only.

        Args:
            path: a directory that does not exist or is empty (or holds what an
                interrupted create left: that is removed and creation starts again).
            os_version: e.g. ``"26.1"``.
            build: the OS build, e.g. ``"23B85"``.
            images: component name -> image file to copy in.
            activation: component name -> ``"relaunch"`` or ``"reboot"``.
            clock: time source for the history.
            progress: ``(done, total)`` bytes callback.

        Returns:
            The new :class:`Preboot`.

        Raises:
            ValueError: bad names, activation or an empty image set.
            StateError: ``path`` is not empty.
            UnsupportedFilesystem: ``path`` lacks atomic rename, directory fsync, hard
                links or flock (:func:`bsipatch.device.fscheck.check_filesystem`).
            StagingError: an I/O error (DiskFullError, ReadOnlyError).
        """
        from bsipatch.device.fscheck import check_filesystem

        path = Path(path)
        clock = clock or now_text
        if path.exists() and any(path.iterdir()):
            names = {p.name for p in path.iterdir() if not p.name.startswith(".bsipatch-fscheck-")}
            if (path / "state.json").exists() or not names <= CREATE_NAMES:
                raise StateError(f"{path} is not empty; refusing to create a preboot there")
            # an earlier create was interrupted before its state.json: start again
            empty_dir(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error_to_staging(exc, f"creating preboot {path}") from exc
        check_filesystem(path)
        try:
            create_in(path, os_version, build, images, activation, clock, progress)
        except BaseException as exc:
            # nothing refers to a half-made directory: empty it so create can be retried
            if path.is_dir():
                empty_dir(path)
            if isinstance(exc, OSError):
                raise os_error_to_staging(exc, f"creating preboot {path}") from exc
            raise
        return cls(path, clock=clock)

    # --- state ---------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        """The current state (one read of ``state.json``; never blocks on a writer)."""
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_bytes())
        except FileNotFoundError as exc:
            raise StateError(f"{self.path}: state.json is missing") from exc
        except ValueError as exc:
            raise StateError(f"{self.path}: state.json is damaged: {exc}") from exc
        if state.get("format") != STATE_FORMAT:
            raise StateError(f"{self.path}: unknown state format {state.get('format')!r}")
        return state

    def write_state(self, state: dict[str, Any]) -> None:
        """Replace ``state.json`` atomically (the commit point of every operation).

        Callers hold the lock and have journalled their intent.
        """
        if self._lock_fd is None:
            raise RuntimeError("write_state without holding the preboot lock")
        state = dict(state)
        state["history"] = state.get("history", [])[-HISTORY_LIMIT:]
        crashpoint("state.before-write")
        with atomic_write(self.state_path) as f:
            f.write(json_bytes(state))
        crashpoint("state.written")

    def selection_dir(self, base_rel: str, slug: str | None) -> Path:
        """The directory holding the images of base ``base_rel`` + release ``slug``."""
        if slug is None:
            return self.path / base_rel
        return self.releases_dir / slug

    def os_info(self, base_rel: str) -> dict[str, Any]:
        """The ``os.json`` of a base directory (version, build, components)."""
        info: dict[str, Any] = json.loads((self.path / base_rel / "os.json").read_bytes())
        return info

    def release_info(self, slug: str) -> dict[str, Any]:
        """The ``release.json`` of an installed release."""
        info: dict[str, Any] = json.loads((self.releases_dir / slug / "release.json").read_bytes())
        return info

    def seal_record(self, directory: Path, name: str) -> dict[str, Any]:
        """The stored seal record of image ``name`` in ``directory``."""
        record: dict[str, Any] = json.loads((directory / f"{name}.seal.json").read_bytes())
        return record

    def components(self, state: dict[str, Any] | None = None) -> dict[str, str]:
        """Component name -> activation of the installed OS version."""
        state = state or self.read_state()
        comps = self.os_info(state["os"]["base"])["components"]
        return {name: c["activation"] for name, c in comps.items()}

    def _component_dir(self, state: dict[str, Any], name: str) -> Path:
        comps = self.components(state)
        if name not in comps:
            raise KeyError(f"no component {name!r} (have {', '.join(sorted(comps))})")
        if comps[name] == "reboot":
            booted = state["booted"]
            directory = self.selection_dir(booted["base"], booted["release"])
            if (directory / f"{name}.img").exists():
                return directory
        chain = state["chain"]
        return self.selection_dir(state["os"]["base"], chain[-1] if chain else None)

    def component_path(self, name: str) -> Path:
        """The image a new open of component ``name`` should use now.

        ``relaunch`` components: the active release's image (or the base image).
        ``reboot`` components: the image of the release that was active at the last
        :func:`bsipatch.device.install.boot`.

        Raises:
            KeyError: no such component.
        """
        for _ in range(9):
            try:
                return self._component_dir(self.read_state(), name) / f"{name}.img"
            except FileNotFoundError:  # os.json of a base that gc just removed: re-read
                continue
        return self._component_dir(self.read_state(), name) / f"{name}.img"

    def open_component(self, name: str) -> BinaryIO:
        """Open component ``name`` for reading, every block checked against its seal.

        The file is opened first and its seal read from the same directory, so the
        reader keeps a consistent view (the old inode) whatever installs, rollbacks or
        garbage collection happen afterwards.

        Returns:
            A seekable binary reader (a :class:`ComponentReader` over
            :class:`bsipatch.seal.tree.VerifiedReader`); close it (or use ``with``).

        Raises:
            KeyError: no such component.
            SealError: the image does not match its seal.
            StagingError: the image cannot be opened.
        """
        from bsipatch.seal.tree import open_verified

        last: OSError | None = None
        for _ in range(10):
            try:
                directory = self._component_dir(self.read_state(), name)
                f = open(directory / f"{name}.img", "rb")  # noqa: SIM115
                try:
                    seal = seal_from_record(self.seal_record(directory, name))
                except BaseException:
                    f.close()
                    raise
            except FileNotFoundError as exc:  # removed by gc between read_state and open
                last = exc
                continue
            try:
                from bsipatch.device.readback import readback_check

                # the first open of a tentative release's new image reads it back from disk
                readback_check(self.path, self.read_state(), directory, name, seal)
                return cast(BinaryIO, ComponentReader(open_verified(f, seal), f))
            except BaseException:
                f.close()
                raise
        raise os_error_to_staging(last or OSError(errno.ENOENT, "missing"), f"opening {name}")

    # --- lock ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[Preboot]:
        """Hold the exclusive, non-blocking preboot lock (re-entrant in this object).

        Raises:
            LockedError: another process (or another Preboot object) holds it.
        """
        if self._lock_fd is not None:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        lock_path = self.path / "lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES):
                raise os_error_to_staging(exc, f"opening {lock_path}") from exc
            try:
                fd = os.open(lock_path, os.O_RDONLY)
            except OSError as exc2:
                raise os_error_to_staging(exc, f"opening {lock_path}") from exc2
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise LockedError(
                f"{self.path} is locked by another process (an install or rollback is running)"
            ) from exc
        except OSError as exc:
            os.close(fd)
            raise os_error_to_staging(exc, f"locking {lock_path}") from exc
        self._lock_fd = fd
        self._lock_depth = 1
        try:
            yield self
        finally:
            self._lock_fd = None
            self._lock_depth = 0
            os.close(fd)

    # --- recovery and sweeping ---------------------------------------------------------

    def recover(self) -> list[dict[str, Any]]:
        """Finish or undo an interrupted operation, then remove unreferenced leftovers.

        An operation whose state switch (``state.json`` naming its transaction as
        ``last_tx``) happened is finished; one whose switch did not happen is undone
        (its staging directory and any release directory nothing refers to are removed).
        Safe to run any number of times, and after a crash during recovery.

        Returns:
            One ``{"tx", "op", "outcome": "finished"|"undone"}`` per transaction.

        Raises:
            LockedError: another process holds the lock.
            StagingError: the volume cannot be written.
        """
        with self.lock():
            try:
                return self.recover_locked()
            except OSError as exc:
                raise os_error_to_staging(exc, f"recovering {self.path}") from exc

    def recover_locked(self) -> list[dict[str, Any]]:
        """:meth:`recover` for a caller that already holds the lock (OSError not mapped)."""
        pending = self.journal.pending()
        report = []
        state = self.read_state()
        for tx in pending:
            committed = state.get("last_tx") == tx["tx"]
            crashpoint("recover.start")
            self.sweep(state)
            crashpoint("recover.swept")
            self.journal.end(tx["tx"])
            report.append(
                {"tx": tx["tx"], "op": tx["op"], "outcome": "finished" if committed else "undone"}
            )
        if not pending:
            self.sweep(state)
        self.remove_stray_temps()
        self.journal.compact()
        return report

    def remove_stray_temps(self) -> list[str]:
        """Remove temp files a kill during an atomic write left (``.state.json.*.tmp``).

        Only the files written under the lock (``state.json``, ``verified.json``), so
        no concurrent writer's temp file can be taken. Callers hold the lock.
        """
        removed = []
        for name in _LOCKED_FILES:
            for tmp in self.path.glob(f".{name}.*.tmp"):
                if tmp.is_file() or tmp.is_symlink():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp.name)
        return removed

    def referenced(self, state: dict[str, Any]) -> tuple[set[str], set[str]]:
        """(release slugs, base dirs) that ``state`` refers to and must be kept."""
        releases = set(state["chain"])
        if state["booted"].get("release"):
            releases.add(state["booted"]["release"])
        bases = {state["os"]["base"], state["booted"]["base"]}
        return releases, bases

    def sweep(self, state: dict[str, Any] | None = None) -> list[str]:
        """Remove staging leftovers, trash, and releases/bases ``state`` does not refer to.

        Callers hold the lock. Directories are first renamed into ``trash/`` (one atomic
        step, fsynced) and then deleted, so a half-deleted tree is never mistaken for a
        whole one. Open files keep their inodes: readers are not disturbed.

        Returns:
            The relative paths removed.
        """
        state = state or self.read_state()
        releases, bases = self.referenced(state)
        removed = []
        victims: list[Path] = []
        for d in sorted(self.staging_dir.iterdir()):
            victims.append(d)
        for d in sorted(self.releases_dir.iterdir()):
            if d.name not in releases:
                victims.append(d)
        for d in sorted((self.path / "base").iterdir()):
            if f"base/{d.name}" not in bases:
                victims.append(d)
        for d in victims:
            rel = str(d.relative_to(self.path))
            dest = self.trash_dir / f"{d.parent.name}-{d.name}"
            n = 0
            while dest.exists():
                n += 1
                dest = self.trash_dir / f"{d.parent.name}-{d.name}.{n}"
            d.chmod(d.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)
            d.rename(dest)
            crashpoint("sweep.renamed")
            fsync_dir(d.parent)
            fsync_dir(self.trash_dir)
            removed.append(rel)
        for d in sorted(self.trash_dir.iterdir()):
            if d.is_dir() and not d.is_symlink():
                make_writable(d)
                shutil.rmtree(d)
            else:
                d.unlink()
            crashpoint("sweep.deleted")
        fsync_dir(self.trash_dir)
        return removed + sweep_pending(self.path)

    # --- verification -----------------------------------------------------------------

    def verify_selection(self, base_rel: str, slug: str | None, *, exact: bool = False) -> None:
        """Check every component image of a base/release against its stored seal.

        Args:
            base_rel: the base directory (``base/<os>-<build>``).
            slug: the release, or ``None`` for the base images.
            exact: also compare the SHA-256 recorded when the base was created
                (byte-identical check; base images only).

        Raises:
            SealError: an image does not match its seal (or its recorded SHA-256).
            StagingError: an image cannot be read.
        """
        from bsipatch.seal.tree import verify_image

        directory = self.selection_dir(base_rel, slug)
        names = self.os_info(base_rel)["components"]
        for name in sorted(names):
            record = self.seal_record(directory, name)
            image = directory / f"{name}.img"
            try:
                verify_image(image, seal_from_record(record))
                if exact and "sha256" in record:
                    digest = file_sha256(image)
                    if not hmac.compare_digest(digest, record["sha256"]):
                        raise SealMismatch(
                            f"{image}: SHA-256 {digest} differs from the recorded "
                            f"{record['sha256']}",
                            area="root",
                        )
            except OSError as exc:
                raise os_error_to_staging(exc, f"reading {image}") from exc

    # --- status --------------------------------------------------------------------------

    def release_id_of(self, slug: str | None) -> str | None:
        """The release id (``"26.1 (a)"``) of an installed release directory name."""
        if slug is None:
            return None
        try:
            return str(self.release_info(slug)["release_id"])
        except (OSError, ValueError, KeyError):
            return slug

    def status(self) -> dict[str, Any]:
        """What the device runs: see :func:`bsipatch.device.report.status`."""
        from bsipatch.device.report import status

        return status(self)
