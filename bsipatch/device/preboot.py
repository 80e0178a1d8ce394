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
import datetime as _dt
import errno
import fcntl
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from bsipatch._crashpoints import crashpoint
from bsipatch._io import PathLike, atomic_write, fsync_dir, os_error_to_staging
from bsipatch.device.journal import Journal
from bsipatch.errors import LockedError, SealMismatch, StateError

STATE_FORMAT = 1
ACTIVATIONS = ("relaunch", "reboot")
HISTORY_LIMIT = 200
_CHUNK = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")

__all__ = [
    "ACTIVATIONS",
    "Preboot",
    "crashpoint",
    "release_slug",
    "utc_now",
]


def utc_now() -> str:
    """The current time as ISO-8601 UTC with a ``Z`` (seconds precision)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def fsync_file(path: PathLike) -> None:
    """fsync a file's data and metadata by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes, mode: int = 0o444) -> None:
    """Create ``path`` (which must not exist) with ``data``, fsynced, with ``mode``.

    Used inside staging directories only: the directory is fsynced by the caller
    before it is renamed into place.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


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


_CREATE_NAMES = {"base", "releases", "staging", "trash", "journal", "lock"}


def is_temp_name(name: str) -> bool:
    """True for the temporary names :func:`bsipatch._io.atomic_write` and apply use."""
    return name.startswith(".") and name.endswith((".tmp", ".bsipatch-tmp"))


def remove_stray_temps(directory: Path) -> list[str]:
    """Remove temporary files a crash left in ``directory`` (not recursive).

    Only for directories whose writers hold the preboot lock (or do not run yet, at
    boot): a temporary file is never referenced, so removing it loses nothing.
    """
    removed = []
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


def _empty_dir(path: Path) -> None:
    """Remove everything inside ``path`` (read-only directories included)."""
    _make_writable(path)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            _make_writable(child)
            shutil.rmtree(child)
        else:
            child.unlink()


def _make_writable(path: Path) -> None:
    """Give the owner write permission on every directory below ``path`` (for removal)."""
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = Path(root) / d
            p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)
    path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)


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
        clock: returns the time recorded in the history (defaults to :func:`utc_now`).

    Raises:
        StateError: ``path`` holds no preboot state.
    """

    def __init__(self, path: PathLike, *, clock: Callable[[], str] | None = None) -> None:
        self.path = Path(path)
        self.clock = clock or utc_now
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
        images: dict[str, PathLike],
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
            StagingError: an I/O error (DiskFullError, ReadOnlyError).
        """
        path = Path(path)
        clock = clock or utc_now
        if path.exists() and any(path.iterdir()):
            names = {p.name for p in path.iterdir()}
            if (path / "state.json").exists() or not names <= _CREATE_NAMES:
                raise StateError(f"{path} is not empty; refusing to create a preboot there")
            # an earlier create was interrupted before its state.json: start again
            _empty_dir(path)
        try:
            _create_in(path, os_version, build, images, activation, clock, progress)
        except BaseException as exc:
            # nothing refers to a half-made directory: empty it so create can be retried
            if path.is_dir():
                _empty_dir(path)
            if isinstance(exc, OSError):
                raise os_error_to_staging(exc, f"creating preboot {path}") from exc
            raise
        return cls(path, clock=clock)

    # --- state ---------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        """The current state (one read of ``state.json``; never blocks on a writer)."""
        try:
            state = json.loads(self.state_path.read_bytes())
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
        return json.loads((self.path / base_rel / "os.json").read_bytes())

    def release_info(self, slug: str) -> dict[str, Any]:
        """The ``release.json`` of an installed release."""
        return json.loads((self.releases_dir / slug / "release.json").read_bytes())

    def seal_record(self, directory: Path, name: str) -> dict[str, Any]:
        """The stored seal record of image ``name`` in ``directory``."""
        return json.loads((directory / f"{name}.seal.json").read_bytes())

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
                return ComponentReader(open_verified(f, seal), f)
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
        self.journal.compact()
        remove_stray_temps(self.path)
        return report

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
                _make_writable(d)
                shutil.rmtree(d)
            else:
                d.unlink()
            crashpoint("sweep.deleted")
        fsync_dir(self.trash_dir)
        return removed

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
        """What the device runs: OS, active release per component, pending, history.

        Returns:
            A JSON-serialisable dict::

                {"preboot": str, "os_version": str, "build": str,
                 "active_release": "26.1 (a)" | None, "previous_release": ... | None,
                 "booted_release": ... | None, "installed_releases": [...],
                 "components": {name: {"activation", "release", "image", "root_hash",
                                       "pending": bool, "pending_release"}},
                 "pending": [{"component", "release", "activation"}],
                 "recovery_needed": bool, "history": [...]}
        """
        state = self.read_state()
        chain = state["chain"]
        active = chain[-1] if chain else None
        active_dir = self.selection_dir(state["os"]["base"], active)
        comps = self.components(state)
        changed = set()
        if active is not None:
            try:
                info = self.release_info(active)
                changed = {n for n, c in info["components"].items() if c.get("changed")}
            except (OSError, ValueError, KeyError):
                pass
        out_components: dict[str, Any] = {}
        pending = []
        for name, activation in sorted(comps.items()):
            try:
                directory = self._component_dir(state, name)
                root = self.seal_record(directory, name)["seal"]["root_hash"]
                new_root = self.seal_record(active_dir, name)["seal"]["root_hash"]
            except (OSError, ValueError, KeyError):
                directory, root, new_root = active_dir, None, None
            is_pending = activation == "reboot" and root != new_root
            in_use_release = state["booted"]["release"] if is_pending else active
            entry = {
                "activation": activation,
                "release": self.release_id_of(in_use_release)
                if (name in changed or is_pending)
                else None,
                "image": str(directory / f"{name}.img"),
                "root_hash": root,
                "pending": is_pending,
                "pending_release": self.release_id_of(active) if is_pending else None,
            }
            if is_pending:
                pending.append(
                    {
                        "component": name,
                        "release": self.release_id_of(active),
                        "activation": activation,
                    }
                )
            out_components[name] = entry
        return {
            "preboot": str(self.path),
            "os_version": state["os"]["version"],
            "build": state["os"]["build"],
            "active_release": self.release_id_of(active),
            "previous_release": self.release_id_of(chain[-2]) if len(chain) > 1 else None,
            "booted_release": self.release_id_of(state["booted"]["release"]),
            "installed_releases": [self.release_id_of(s) for s in chain],
            "components": out_components,
            "pending": pending,
            "recovery_needed": bool(self.journal.pending()),
            "history": list(state.get("history", [])),
        }


def _create_in(
    path: Path,
    os_version: str,
    build: str,
    images: dict[str, PathLike],
    activation: dict[str, str],
    clock: Callable[[], str],
    progress: Callable[[int, int], None] | None,
) -> None:
    """The body of :meth:`Preboot.create` (``path`` is empty or missing)."""
    path.mkdir(parents=True, exist_ok=True)
    for sub in ("base", "releases", "staging", "trash"):
        (path / sub).mkdir(exist_ok=True)
    Journal.create(path / "journal")
    (path / "lock").touch()
    fsync_dir(path)
    base_rel = build_base(
        path, "staging", "create", os_version, build, images, activation, progress
    )
    state = {
        "format": STATE_FORMAT,
        "os": {"version": os_version, "build": build, "base": base_rel},
        "chain": [],
        "booted": {"base": base_rel, "release": None},
        "last_tx": None,
        "history": [{"time": clock(), "op": "create", "os_version": os_version, "build": build}],
    }
    with atomic_write(path / "state.json") as f:
        f.write(json_bytes(state))


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


def build_base(
    root: Path,
    staging_sub: str,
    tag: str,
    os_version: str,
    build: str,
    images: dict[str, PathLike],
    activation: dict[str, str],
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Copy, seal and store base images as ``base/<os>-<build>``; return that relative path.

    The images are built in ``<root>/<staging_sub>/<tag>`` and the finished directory is
    renamed into ``base/`` (fsynced) in one step. Callers journal the operation.

    Raises:
        ValueError: bad names or activation values.
        StateError: that base directory already exists.
        OSError: I/O errors (callers map them).
    """
    from bsipatch.seal.tree import seal_image

    check_name(release_slug(f"{os_version}-{build}"), "OS version/build")
    if not images:
        raise ValueError("no base images given")
    if set(images) != set(activation):
        raise ValueError(
            f"activation must name exactly the images: images {sorted(images)}, "
            f"activation {sorted(activation)}"
        )
    for name, act in activation.items():
        check_name(name)
        if act not in ACTIVATIONS:
            raise ValueError(f"activation of {name} is {act!r}; expected relaunch or reboot")
    key = release_slug(f"{os_version}-{build}")
    final = root / "base" / key
    if final.exists():
        raise StateError(f"base images of {os_version} {build} already exist at {final}")
    stage = root / staging_sub / tag
    stage.mkdir()
    fsync_dir(stage.parent)
    total = sum(Path(p).stat().st_size for p in images.values())
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    for name in sorted(images):
        img = stage / f"{name}.img"
        digest = copy_durable(images[name], img, step)
        crashpoint("base.copied")
        seal = seal_image(img)
        write_durable(stage / f"{name}.seal.json", json_bytes(seal_record_dict(seal, digest)))
    info = {
        "os_version": os_version,
        "build": build,
        "components": {n: {"activation": activation[n]} for n in sorted(images)},
    }
    write_durable(stage / "os.json", json_bytes(info))
    fsync_dir(stage)
    crashpoint("base.staged")
    stage.rename(final)
    fsync_dir(final.parent)
    fsync_dir(stage.parent)
    crashpoint("base.moved")
    final.chmod(0o555)
    return f"base/{key}"
