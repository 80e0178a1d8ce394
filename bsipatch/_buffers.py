"""Buffers over images: read-only maps of files (with their holes), bytes-likes and
file objects as one ``Buffer``; SHA-256 of a buffer that skips file holes.

Shared by the delta engine and the device layer. No format or policy here.
"""

from __future__ import annotations

import errno
import mmap
import os

from bsipatch._io import is_pathlike
from bsipatch._lite import suppress

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO, Union

    from bsipatch._io import PathLike

    Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]  # noqa: UP007
else:  # the same name at run time (it is imported), without typing
    Buffer = bytes | bytearray | memoryview | mmap.mmap


class MappedFile(mmap.mmap):
    """A read-only map of a file that also knows the file's path and data extents."""

    path: str
    extents: list[tuple[int, int]]


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The file's data ranges from SEEK_DATA/SEEK_HOLE (everything else reads as zero).

    Falls back to one range covering the file where the OS cannot tell.
    """
    if not hasattr(os, "SEEK_DATA"):  # pragma: no cover - non-Linux
        return [(0, size)] if size else []
    out: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                d = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            h = min(os.lseek(fd, d, os.SEEK_HOLE), size)
            if d >= size:
                break
            out.append((d, h))
            pos = h
    except OSError:
        return [(0, size)] if size else []
    return out


class open_buffer:  # named as the function it was: ``with open_buffer(src) as buf``
    """A read-only buffer over a path (a :class:`MappedFile`), bytes-like, or file, as a
    context manager that unmaps a file's map on exit (a plain class: the apply path does
    not load contextlib)."""

    def __init__(self, src: PathLike | Buffer | BinaryIO) -> None:
        self._src = src
        self._map: MappedFile | None = None

    def __enter__(self) -> Buffer:
        src = self._src
        if is_pathlike(src):
            with open(src, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    return b""
                m = MappedFile(f.fileno(), 0, access=mmap.ACCESS_READ)
                m.path = os.fspath(src)
                m.extents = data_extents(f.fileno(), size)
            self._map = m
            return m
        if isinstance(src, (bytes, bytearray, memoryview, mmap.mmap)):
            return src
        if hasattr(src, "read"):
            data: bytes = src.read()
            return data
        raise TypeError(f"expected a path, bytes or a binary file, got {type(src).__name__}")

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        m, self._map = self._map, None
        if m is None:
            return
        # A view or cffi buffer of the map that is still alive makes close() refuse
        # (BufferError) rather than unmap memory in use: when unwinding (an error, Ctrl-C),
        # frames of the traceback; after a success, an object not yet freed (one in a
        # reference cycle until the collector runs, or a finished pool task that another
        # thread has not dropped yet). The work is done either way: the map is then
        # unmapped when its last view goes, and the caller gets its result or exception.
        with suppress(BufferError):
            m.close()


def holes(buf: Buffer, min_len: int = 0) -> list[tuple[int, int]]:
    """Ranges known to read as zero without looking (file holes), at least ``min_len`` long."""
    if not isinstance(buf, MappedFile):
        return []
    out = []
    pos = 0
    for s, e in [*buf.extents, (len(buf), len(buf))]:
        if s - pos >= max(min_len, 1):
            out.append((pos, s))
        pos = max(pos, e)
    return out


def sha256_buffer(buf: Buffer, new: Callable[[], Any] | None = None) -> bytes:
    """SHA-256 of a buffer; a mapped file is read with plain reads, holes hashed as zeros.

    ``new`` makes the hash object (default ``hashlib.sha256``; the apply path passes
    the native :class:`bsipatch.hashing.Sha256` and so never loads OpenSSL)."""
    if new is None:
        import hashlib  # lazy: the diff's suffix-array phase runs without OpenSSL loaded

        new = hashlib.sha256
    if not isinstance(buf, MappedFile):
        h0 = new()
        h0.update(buf)
        return bytes(h0.digest())
    h = new()
    chunk = 1 << 20
    zero = memoryview(bytes(chunk))
    data = bytearray(chunk)
    mv = memoryview(data)
    size = len(buf)
    pos = 0
    with open(buf.path, "rb") as f:
        for s, e in [*buf.extents, (size, size)]:
            while pos < s:
                n = min(chunk, s - pos)
                h.update(zero[:n])
                pos += n
            f.seek(max(pos, s))
            pos = max(pos, s)
            while pos < e:
                n = f.readinto(mv[: min(chunk, e - pos)])
                if not n:
                    raise OSError(f"{buf.path} changed while being read")
                h.update(mv[:n])
                pos += n
    return h.digest()


def drop_pages(buf: Buffer, start: int = 0, end: int | None = None) -> None:
    """Release the resident pages of a mapped file (re-read on demand later), all of
    them or those wholly inside ``[start, end)``. A map that holds its only copy of
    some bytes (``keep_pages``: a private copy-on-write map that was written to)
    is left alone: dropping its pages would bring back the file's bytes."""
    if isinstance(buf, mmap.mmap) and not getattr(buf, "keep_pages", False):
        with suppress(OSError, ValueError):  # best effort
            if start == 0 and end is None:
                buf.madvise(mmap.MADV_DONTNEED)
                return
            a = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
            b = min(len(buf) if end is None else end, len(buf)) // mmap.PAGESIZE * mmap.PAGESIZE
            if b > a:
                buf.madvise(mmap.MADV_DONTNEED, a, b - a)


ZEROS = memoryview(bytes(1 << 20))


_ZERO_DIGESTS: dict[int, bytes] = {}


def zero_digest(n: int) -> bytes:
    """SHA-256 of ``n`` zero bytes (cached: all-zero segments of sparse images repeat it)."""
    if n in _ZERO_DIGESTS:
        return _ZERO_DIGESTS[n]
    import hashlib  # lazy: the diff's suffix-array phase runs without OpenSSL loaded

    h = hashlib.sha256()
    left = n
    while left > 0:
        k = min(left, len(ZEROS))
        h.update(ZEROS[:k])
        left -= k
    if len(_ZERO_DIGESTS) >= 8:  # a few sizes repeat (segment sizes); keep it small
        _ZERO_DIGESTS.clear()
    _ZERO_DIGESTS[n] = digest = h.digest()
    return digest
