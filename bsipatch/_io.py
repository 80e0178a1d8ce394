"""Small, shared I/O helpers: opening sources, crash-safe file replacement, fsync.

Everything that writes a file other code relies on goes through
:func:`atomic_write`: a temporary file in the same directory, fsynced, renamed
into place, then the directory fsynced. No trust decisions here.
"""

from __future__ import annotations

import errno
import io
import os
import stat

from bsipatch import _partial as partial
from bsipatch.errors import DiskFullError, ReadOnlyError, StagingError, UnsafeFile

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from typing import BinaryIO, Union, cast

    from typing_extensions import TypeIs

    PathLike = Union[str, os.PathLike[str]]  # noqa: UP007
    Source = Union[PathLike, bytes, bytearray, memoryview, BinaryIO]  # noqa: UP007
else:  # the same names at run time (they are imported), without typing

    def cast(kind: object, value: object) -> object:
        return value

    PathLike = str | os.PathLike
    Source = PathLike | bytes | bytearray | memoryview | io.IOBase


def is_pathlike(obj: object) -> TypeIs[str | os.PathLike[str]]:
    """True for ``str`` and ``os.PathLike`` objects."""
    return isinstance(obj, (str, os.PathLike))


class _Borrowed:
    """A caller's file object as a context manager that leaves it open."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def __enter__(self) -> BinaryIO:
        return self.f

    def __exit__(self, *exc: object) -> None:
        return None


def open_source(src: Source) -> AbstractContextManager[BinaryIO]:
    """A context manager giving a binary readable file object for a path, a bytes-like
    object or a file (plain objects, not contextlib's: the apply path does not load it).

    A file object passed in is given as is and not closed.
    """
    if is_pathlike(src):
        return cast("BinaryIO", open(src, "rb"))  # the caller's `with` closes it
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(src))
    if hasattr(src, "read"):
        return _Borrowed(src)
    raise TypeError(f"expected a path, bytes or a binary file object, got {type(src).__name__}")


def fsync_dir(path: PathLike) -> None:
    """fsync a directory so that renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_private(path: PathLike, flags: int = os.O_RDWR | os.O_CREAT, mode: int = 0o600) -> int:
    """Open a temp or partial file of ours: no symlink followed, regular, owned by us.

    Returns:
        The file descriptor (the caller closes it).

    Raises:
        UnsafeFile: ``path`` is a symbolic link, not a regular file, or owned by
            another user (someone may want us to write through it).
        OSError: any other failure to open.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(f"{path} is a symbolic link; refusing to write through it") from None
        raise
    st = os.fstat(fd)
    why = ""
    if not stat.S_ISREG(st.st_mode):
        why = "is not a regular file"
    elif st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by this process (uid {os.geteuid()})"
    if why:
        os.close(fd)
        raise UnsafeFile(f"{path} {why}; refusing to use it")
    os.set_blocking(fd, True)
    return fd


def os_error_to_staging(exc: OSError, what: str) -> StagingError:
    """Map an ``OSError`` from the preboot volume to a typed :class:`StagingError`."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"{what}: no space left on device")
    if exc.errno == errno.EROFS:
        return ReadOnlyError(f"{what}: file system is read-only")
    return StagingError(f"{what}: {exc.strerror or exc}")


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", "rb") as f:  # bytes: no codec to import
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: fall back to the set-and-restore dance
    os.umask(mask)
    return mask


def new_file_mode(mode: int = 0o666) -> int:
    """``mode`` with the process umask applied: the mode a plain ``open(path, "w")`` gives."""
    return mode & ~current_umask()


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (a short write is retried, never dropped)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_file(path: PathLike) -> None:
    """fsync a file's data and metadata by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: PathLike, data: bytes, mode: int = 0o444) -> None:
    """Create ``path`` (which must not exist, nor be a symlink) with ``data``, fsynced.

    For files inside a staging directory that the caller fsyncs and renames into place
    as a whole; a file that replaces another in place goes through :func:`atomic_write`.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        write_all(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: PathLike, mode: str = "wb") -> AbstractContextManager[BinaryIO]:
    """Write ``path`` crash-safely: temp file in the same directory, fsync, rename, fsync dir.

    If the body raises, the temporary file is removed and ``path`` is untouched.

    Example:
        >>> with atomic_write("/tmp/x.bin") as f:  # doctest: +SKIP
        ...     f.write(b"data")
    """
    from contextlib import contextmanager  # here: the apply path does not load contextlib

    return contextmanager(_atomic_write)(path, mode)


def _atomic_write(path: PathLike, mode: str) -> Iterator[BinaryIO]:
    import tempfile  # here, with pathlib: the apply path, which writes no other file, skips them
    from pathlib import Path

    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    partial.add(tmp)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, mode) as f:
            yield cast("BinaryIO", f)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(target)
        fsync_dir(directory)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        partial.discard(tmp)


def read_exact(f: BinaryIO, n: int) -> bytes:
    """Read exactly ``n`` bytes unless EOF comes first (then return what there was)."""
    chunks = []
    remaining = n
    while remaining > 0:
        b = f.read(remaining)
        if not b:
            break
        chunks.append(b)
        remaining -= len(b)
    return b"".join(chunks)
