"""Classic BSDIFF40 patches: apply them (import) and write them from our ops (export).

Layout (as produced by Colin Percival's bsdiff and Debian's bsdiff/bspatch):
a 32-byte header ``"BSDIFF40"``, then three 8-byte sign-magnitude little-endian
integers (length of the bzip2 control block, length of the bzip2 diff block,
size of the new file), then the three bzip2 streams: control triples ``(x, y, z)``
(add x diff bytes to old, copy y extra bytes, move the old position by z), diff
bytes, extra bytes. Every value read is untrusted and checked. No SHA-256 exists
in this format, so the base image cannot be verified before applying.

This module does not search for differences (diff.py does) and does not handle
the bsipatch format (patchfmt.py / apply.py).
"""

from __future__ import annotations

import bz2
import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from bsipatch import _partial as partial
from bsipatch._io import PathLike, fsync_dir, is_pathlike, new_file_mode
from bsipatch.delta.patchformat import BSDIFF40_MAGIC, PatchInfo
from bsipatch.errors import CorruptPatch, PatchTooLarge, TruncatedPatch, UnsupportedPatch

if TYPE_CHECKING:
    from bsipatch._buffers import Buffer


class Ops(Protocol):
    """What :func:`write_bsdiff40` needs of :class:`bsipatch.delta.diff.Ops`."""

    stats: dict[str, Any]

    def __iter__(self) -> Iterator[tuple[int, int, int]]: ...


HEADER_SIZE = 32
CHUNK = 1 << 20
#: Largest new size accepted from a BSDIFF40 header (the format has no segments).
MAX_NEW_SIZE = 1 << 40


def offtin(b: bytes) -> int:
    """Decode bsdiff's 8-byte sign-magnitude little-endian integer."""
    v = int.from_bytes(b[:8], "little")
    if v & (1 << 63):
        return -(v & ~(1 << 63))
    return v


def offtout(v: int) -> bytes:
    """Encode an integer the way bsdiff's ``offtout`` does."""
    if v < 0:
        return ((-v) | (1 << 63)).to_bytes(8, "little")
    return v.to_bytes(8, "little")


class _BzStream:
    """Incremental reader of one bzip2 stream held in memory, with exact reads."""

    def __init__(self, data: bytes, name: str) -> None:
        self._d = bz2.BZ2Decompressor()
        self._data = data
        self._fed = False
        self._buf = b""
        self.name = name

    def read(self, n: int) -> bytes:
        out = [self._buf]
        have = len(self._buf)
        self._buf = b""
        try:
            while have < n:
                if self._d.eof:
                    break
                if not self._fed:
                    chunk = self._d.decompress(self._data, max_length=n - have)
                    self._fed = True
                else:
                    if not self._d.needs_input:
                        chunk = self._d.decompress(b"", max_length=n - have)
                    else:
                        break
                out.append(chunk)
                have += len(chunk)
        except (OSError, EOFError, ValueError) as exc:
            raise CorruptPatch(f"BSDIFF40 {self.name} block: bad bzip2 data ({exc})") from exc
        data = b"".join(out)
        if len(data) > n:
            self._buf = data[n:]
            data = data[:n]
        if len(data) < n:
            raise CorruptPatch(f"BSDIFF40 {self.name} block ended early")
        return data


def _read_all(f: BinaryIO, prefix: bytes, max_patch_size: int | None) -> bytes:
    chunks = [prefix]
    total = len(prefix)
    while True:
        want = CHUNK
        if max_patch_size is not None:
            want = min(want, max_patch_size - total + 1)
        b = f.read(want)
        if not b:
            break
        chunks.append(b)
        total += len(b)
        if max_patch_size is not None and total > max_patch_size:
            raise PatchTooLarge(f"patch is larger than the allowed {max_patch_size} bytes")
    return b"".join(chunks)


def _parse(data: bytes) -> tuple[int, int, int]:
    if len(data) < HEADER_SIZE:
        raise TruncatedPatch(f"BSDIFF40 header is {len(data)} bytes, expected {HEADER_SIZE}")
    if data[:8] != BSDIFF40_MAGIC:
        raise UnsupportedPatch(f"not a BSDIFF40 patch: magic {data[:8]!r}")
    ctrl_len, diff_len, new_size = offtin(data[8:16]), offtin(data[16:24]), offtin(data[24:32])
    if ctrl_len < 0 or diff_len < 0 or new_size < 0:
        raise CorruptPatch("BSDIFF40 header has a negative length")
    if HEADER_SIZE + ctrl_len + diff_len > len(data):
        raise TruncatedPatch(
            f"BSDIFF40 header declares {HEADER_SIZE + ctrl_len + diff_len}+ bytes, "
            f"patch has {len(data)}"
        )
    if new_size > MAX_NEW_SIZE:
        raise PatchTooLarge(f"BSDIFF40 patch declares a {new_size}-byte output")
    return ctrl_len, diff_len, new_size


def read_info(f: BinaryIO, *, prefix: bytes = b"") -> PatchInfo:
    """PatchInfo of a BSDIFF40 patch (header fields and the control triples' totals)."""
    data = _read_all(f, prefix, None)
    ctrl_len, diff_len, new_size = _parse(data)
    ctrl = _BzStream(data[HEADER_SIZE : HEADER_SIZE + ctrl_len], "control")
    pos = 0
    triples = add = extra = 0
    while pos < new_size:
        t = ctrl.read(24)
        x, y = offtin(t[0:8]), offtin(t[8:16])
        if x < 0 or y < 0 or pos + x + y > new_size:
            raise CorruptPatch("BSDIFF40 control triple out of range")
        triples += 1
        add += x
        extra += y
        pos += x + y
    stats: dict[str, int | dict[str, int | str]] = {
        "n_ops": triples,
        "add_bytes": add,
        "insert_bytes": extra,
        "ctrl_compressed": ctrl_len,
        "diff_compressed": diff_len,
        "extra_compressed": len(data) - HEADER_SIZE - ctrl_len - diff_len,
    }
    return PatchInfo("bsdiff40", 0, -1, b"", new_size, b"", len(data), [], stats)


def iter_bsdiff40(
    old: Buffer, data: bytes, progress: Callable[[int, int], None] | None = None
) -> Iterator[bytes]:
    """Apply an in-memory BSDIFF40 patch to ``old``, yielding the output in chunks.

    Semantics follow bspatch: diff bytes are added to old bytes, old bytes outside
    the old image count as zero.

    Raises:
        CorruptPatch, TruncatedPatch, PatchTooLarge, UnsupportedPatch.
    """
    import numpy as np

    ctrl_len, diff_len, new_size = _parse(data)
    ctrl = _BzStream(data[HEADER_SIZE : HEADER_SIZE + ctrl_len], "control")
    dif = _BzStream(data[HEADER_SIZE + ctrl_len : HEADER_SIZE + ctrl_len + diff_len], "diff")
    ext = _BzStream(data[HEADER_SIZE + ctrl_len + diff_len :], "extra")
    oldv = np.frombuffer(old, dtype=np.uint8) if len(old) else np.zeros(0, np.uint8)
    osz = len(oldv)
    newpos = oldpos = 0
    while newpos < new_size:
        t = ctrl.read(24)
        x, y, z = offtin(t[0:8]), offtin(t[8:16]), offtin(t[16:24])
        if x < 0 or y < 0 or newpos + x > new_size:
            raise CorruptPatch(f"BSDIFF40 control triple ({x}, {y}, {z}) out of range")
        left = x
        while left > 0:
            n = min(left, CHUNK)
            d = np.frombuffer(dif.read(n), dtype=np.uint8).copy()
            lo, hi = max(oldpos, 0), min(oldpos + n, osz)
            if lo < hi:
                d[lo - oldpos : hi - oldpos] += oldv[lo:hi]
            yield d.tobytes()
            left -= n
            oldpos += n
            newpos += n
        if newpos + y > new_size:
            raise CorruptPatch(f"BSDIFF40 extra block of {y} bytes runs past the new size")
        left = y
        while left > 0:
            n = min(left, CHUNK)
            yield ext.read(n)
            left -= n
            newpos += n
        oldpos += z
        if progress:
            progress(newpos, new_size)


def apply_to(
    old: Buffer,
    data: bytes,
    write: Callable[[bytes], Any],
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Apply an in-memory BSDIFF40 patch to ``old``, passing output chunks to ``write``.

    Returns:
        The new size.
    """
    total = 0
    for chunk in iter_bsdiff40(old, data, progress):
        write(chunk)
        total += len(chunk)
    return total


def read_patch_bytes(
    f: BinaryIO, *, prefix: bytes = b"", max_patch_size: int | None = None
) -> bytes:
    """Read a whole BSDIFF40 patch (its three streams sit at offsets given in its header)."""
    data = _read_all(f, prefix, max_patch_size)
    _parse(data)
    return data


def apply_bsdiff40(
    old: PathLike | Buffer,
    f: BinaryIO,
    out: PathLike | BinaryIO,
    *,
    prefix: bytes = b"",
    progress: Callable[[int, int], None] | None = None,
    max_patch_size: int | None = None,
) -> PatchInfo:
    """Apply a BSDIFF40 patch read from ``f`` (after ``prefix``) to ``old`` into ``out``.

    A path ``out`` is written through a temporary file renamed into place on success.
    """
    from bsipatch._buffers import open_buffer

    data = _read_all(f, prefix, max_patch_size)
    _parse(data)
    with open_buffer(old) as old_buf:
        old_size = len(old_buf)
        if is_pathlike(out):
            target = Path(out)
            directory = target.parent if str(target.parent) else Path()
            fd, name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".bsipatch-tmp", dir=directory
            )
            partial.add(name)
            try:
                os.fchmod(fd, new_file_mode())
                with os.fdopen(fd, "wb") as w:
                    new_size = apply_to(old_buf, data, w.write, progress)
                    w.flush()
                    os.fsync(w.fileno())
                Path(name).replace(target)
                fsync_dir(directory)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    Path(name).unlink()
                raise
            finally:
                partial.discard(name)
        else:
            new_size = apply_to(old_buf, data, out.write, progress)
    return PatchInfo("bsdiff40", 0, old_size, b"", new_size, b"", len(data), [], {})


def write_bsdiff40(old: Buffer, new: Buffer, ops: Ops, out: BinaryIO) -> PatchInfo:
    """Write ``ops`` (from diff.compute_ops) as a BSDIFF40 patch to ``out``."""
    import numpy as np

    from bsipatch._native import lib

    oldv = np.frombuffer(old, dtype=np.uint8) if len(old) else np.zeros(0, np.uint8)
    newv = np.frombuffer(new, dtype=np.uint8) if len(new) else np.zeros(0, np.uint8)
    cz, dz, ez = bz2.BZ2Compressor(9), bz2.BZ2Compressor(9), bz2.BZ2Compressor(9)
    cparts: list[bytes] = []
    dparts: list[bytes] = []
    eparts: list[bytes] = []
    triples: list[list[int]] = []  # [x, y, old_start]
    pos = 0
    oldpos = 0  # old position after the current triple's add part
    for kind, length, old_off in ops:
        if kind in (lib.BSI_OP_COPY, lib.BSI_OP_ADD):
            if not triples and old_off != 0:
                triples.append([0, 0, 0])  # bspatch starts at old offset 0: seek first
            if triples and triples[-1][1] == 0 and old_off == oldpos:
                triples[-1][0] += length
            else:
                triples.append([length, 0, old_off])
            d = newv[pos : pos + length] - oldv[old_off : old_off + length]
            for i in range(0, length, CHUNK):
                dparts.append(dz.compress(d[i : i + CHUNK].tobytes()))
            oldpos = old_off + length
        else:
            if not triples:
                triples.append([0, 0, 0])
            triples[-1][1] += length
            if kind == lib.BSI_OP_ZERO:
                for i in range(0, length, CHUNK):
                    eparts.append(ez.compress(bytes(min(CHUNK, length - i))))
            else:
                eparts.append(ez.compress(bytes(new[pos : pos + length])))
        pos += length
    for i, (x, y, start) in enumerate(triples):
        nxt = triples[i + 1][2] if i + 1 < len(triples) else start + x
        cparts.append(cz.compress(offtout(x) + offtout(y) + offtout(nxt - (start + x))))
    ctrl = b"".join(cparts) + cz.flush()
    dif = b"".join(dparts) + dz.flush()
    ext = b"".join(eparts) + ez.flush()
    head = BSDIFF40_MAGIC + offtout(len(ctrl)) + offtout(len(dif)) + offtout(len(new))
    for part in (head, ctrl, dif, ext):
        out.write(part)
    size = len(head) + len(ctrl) + len(dif) + len(ext)
    return PatchInfo(
        "bsdiff40", 0, len(old), b"", len(new), b"", size, [], {"n_ops": len(triples), **ops.stats}
    )


def is_bsdiff40(data: bytes) -> bool:
    """True when ``data`` starts with the BSDIFF40 magic."""
    return data[:8] == BSDIFF40_MAGIC


__all__ = [
    "apply_bsdiff40",
    "apply_to",
    "is_bsdiff40",
    "offtin",
    "offtout",
    "read_info",
    "write_bsdiff40",
]
