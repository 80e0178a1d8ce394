"""Private work directories for a release being downloaded and staged without the preboot lock.

An install streams its patches from the network into new images. That can take a
while, and the preboot lock must not be held meanwhile (rollback, boot and uninstall
would fail with "locked"). So the images are built in ``<preboot>/pending/<name>/``,
owned by the process building them, which holds an ``flock`` on
``<preboot>/pending/<name>.lock`` for as long as the directory is in use. Only to
activate does the installer take the preboot lock and rename the directory into
``staging/<tx>`` (from then on the journal covers it).

Recovery (:func:`sweep_pending`, called by :meth:`Preboot.sweep`) removes the work
directories whose lock nobody holds (their process died) and leaves live ones alone.

This module makes no trust decisions and does not touch ``state.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import stat
from pathlib import Path
from types import TracebackType

from bsipatch._io import fsync_dir

PENDING = "pending"
_LOCK_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def _make_writable(path: Path) -> None:
    for d, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            Path(d).chmod(stat.S_IRWXU)


class PendingDir:
    """A locked work directory ``<root>/pending/<name>/``; removed on exit unless taken.

    Args:
        root: the preboot directory.

    Example:
        >>> with PendingDir(pb.path) as work:  # doctest: +SKIP
        ...     build_images_in(work.path)
        ...     work.take(pb.staging_dir / tx)
    """

    def __init__(self, root: Path) -> None:
        self.parent = Path(root) / PENDING
        self.parent.mkdir(mode=0o700, exist_ok=True)
        for _ in range(100):
            name = f"{os.getpid()}-{secrets.token_hex(6)}"
            lock = self.parent / f"{name}.lock"
            fd = os.open(lock, _LOCK_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if lock.lstat().st_ino == os.fstat(fd).st_ino:
                    break
            except (BlockingIOError, FileNotFoundError):
                pass  # a concurrent sweep took it between create and flock: next name
            os.close(fd)
        else:  # pragma: no cover - needs 100 lost races in a row
            raise OSError(f"cannot create a work directory in {self.parent}")
        self._fd: int | None = fd
        self.lock_path = lock
        self.path = self.parent / name
        self.path.mkdir(mode=0o755)
        fsync_dir(self.parent)

    def take(self, dest: Path) -> None:
        """Rename the work directory to ``dest`` (same file system); it is no longer ours."""
        self.path.rename(dest)
        self.path = dest
        self._taken = True

    def release(self) -> None:
        """Remove the directory (unless taken) and the lock file; drop the lock."""
        if self._fd is None:
            return
        if not getattr(self, "_taken", False) and self.path.exists():
            _make_writable(self.path)
            shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> PendingDir:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _in_use(lock: Path) -> bool:
    """True while a live process holds ``lock``; a free lock is removed (we took it)."""
    try:
        fd = os.open(lock, _LOCK_FLAGS)
    except FileNotFoundError:
        return False
    except OSError:  # a symlink or another odd entry: not a lock anyone holds
        lock.unlink(missing_ok=True)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.unlink(missing_ok=True)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def sweep_pending(root: Path) -> list[str]:
    """Remove the work directories of processes that died; keep the live ones.

    Returns:
        The removed paths, relative to ``root``.
    """
    parent = Path(root) / PENDING
    if not parent.is_dir():
        return []
    removed = []
    for entry in sorted(parent.iterdir()):
        if entry.name.endswith(".lock"):
            if not _in_use(entry):
                work = parent / entry.name[: -len(".lock")]
                if work.is_dir() and not work.is_symlink():
                    _make_writable(work)
                    shutil.rmtree(work, ignore_errors=True)
                    removed.append(f"{PENDING}/{work.name}")
        elif not (parent / f"{entry.name}.lock").exists():
            if entry.is_dir() and not entry.is_symlink():
                _make_writable(entry)
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(f"{PENDING}/{entry.name}")
    return removed


__all__ = ["PENDING", "PendingDir", "sweep_pending"]
