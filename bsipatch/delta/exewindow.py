"""The predicted old image of a large apply, in windows transformed on demand.

:func:`predicted_old` (exe.py) makes a private copy-on-write map of the whole old file
and rewrites every reference in it: on a large executable nearly every code page then
becomes anonymous memory (Chromium: 264 MiB). :func:`windowed_old` instead gives the C
applier a ``bsi_exe_source`` (csrc/bsi_exe.c): the regions of the bulky kinds (x86-64
and AArch64 code, RELA tables) are transformed one window at a time, on demand, into a
small LRU cache; the other kinds (symbols, unwind tables, pointer arrays, pointers
relocated in place) are applied eagerly to a private map, where they touch few pages.
The bytes read are exactly those of the whole-image transform when the transform's
regions allow it (checked here and, for pointers relocated in place, by the eager pass);
otherwise :func:`windowed_old` returns None and the caller uses :func:`predicted_old`.
Memory of the windowed form: the cache (``WINDOWS`` x 2^``WINDOW_SHIFT`` bytes), the
x86-64 walk's checkpoints (8 bytes per 16 KiB of code) and the pages the eager kinds
rewrite. Nothing here reads patches or applies segments.
"""

from __future__ import annotations

import mmap
import os

from bsipatch._lite import suppress
from bsipatch._native import check, ffi, lib
from bsipatch.delta.exe import ImageTransform, Transform, _PrivateMap, new_index

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from typing import Any

    from bsipatch._buffers import Buffer

#: Bytes :func:`file_predicted_old` makes and writes at a time.
FILE_CHUNK = 1 << 20
_WINDOWED = (lib.BSI_EXE_X86_64, lib.BSI_EXE_A64, lib.BSI_EXE_RELA)


class WindowedOld:
    """The predicted old image behind a native ``bsi_exe_source`` (``source``); owns the
    memory it points to. ``read(off, n)`` gives predicted bytes (tests, diagnostics)."""

    def __init__(self, base: mmap.mmap, orig: Any, keep: list[Any], src: Any) -> None:
        self.base = base
        self._orig = orig
        self._keep = keep
        self.source = src
        self.size = int(src.size)

    def __len__(self) -> int:
        return self.size

    def read(self, off: int, n: int) -> bytes:
        """Predicted old bytes ``[off, off + n)``."""
        out = bytearray(n)
        check(
            lib.bsi_exe_source_read(self.source, off, n, ffi.from_buffer(out) if n else ffi.NULL),
            "windowed read",
        )
        return bytes(out)

    @property
    def reads(self) -> int:
        """Reads of windowed regions so far (each transformed the range it asked for)."""
        return int(self.source.reads)

    def close(self) -> None:
        self.source = self._orig = None
        self._keep = []
        with suppress(BufferError, ValueError):
            self.base.close()


def private_bytes(t: Transform | ImageTransform) -> int:
    """About how many bytes of the old image the whole-image transform rewrites in a
    private copy: its regions (every kind but LOAD), plus the 8-byte pointers its RELA
    entries (24 bytes each) put in place elsewhere."""
    groups = t.groups if isinstance(t, ImageTransform) else (t,)
    regions = [r for g in groups for r in g.regions if r.kind != lib.BSI_EXE_LOAD]
    return sum(r.len for r in regions) + sum(
        r.len // 3 for r in regions if r.kind == lib.BSI_EXE_RELA
    )


def _sorted_windowed(groups: tuple[Transform, ...]) -> list[tuple[int, Any]] | None:
    """(group, region) of every windowed region, sorted by offset; None when a windowed
    region overlaps another non-LOAD region (then the windows would not be exact)."""
    rows = sorted(
        (r.off, r.off + r.len, r.kind in _WINDOWED, g, r)
        for g, t in enumerate(groups)
        for r in t.regions
        if r.kind != lib.BSI_EXE_LOAD and r.len > 0
    )
    any_end = windowed_end = 0
    out = []
    for off, end, windowed, g, r in rows:
        if off < windowed_end or (windowed and off < any_end):
            return None
        any_end = max(any_end, end)
        if windowed:
            windowed_end = end
            out.append((g, r))
    return out


def _private_map(path: str | os.PathLike[str], size: int) -> mmap.mmap | None:
    with suppress(OSError, ValueError), open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == size:
            return _PrivateMap(
                f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
    return None


def windowed_old(
    old: Buffer,
    t: Transform | ImageTransform,
    path: str | os.PathLike[str] | None,
) -> WindowedOld | None:
    """The predicted old image of ``old`` (the file at ``path``) under ``t``, in windows;
    None when the transform's regions do not allow exact windows (or there is no file):
    use :func:`bsipatch.delta.exe.predicted_old` then."""
    groups = t.groups if isinstance(t, ImageTransform) else (t,)
    wl = _sorted_windowed(groups)
    size = len(old)
    if not wl or path is None or size == 0:
        return None
    base = _private_map(path, size)
    if base is None:
        return None
    keep: list[Any] = []
    natives = [g._native() for g in groups]
    avoid = ffi.new("bsi_exe_region[]", len(wl))
    wregs = ffi.new("bsi_exe_wregion[]", len(wl))
    nck = 0
    for i, (g, r) in enumerate(wl):
        for dst in (avoid[i], wregs[i].r):
            dst.off, dst.len, dst.va, dst.kind, dst.arg = r.off, r.len, r.va, r.kind, r.arg
        wregs[i].group = g
        if r.kind == lib.BSI_EXE_X86_64:
            nck += (r.len >> lib.BSI_EXE_CK_SHIFT) + 2
    index = new_index()
    conflicts = ffi.new("uint64_t *")
    pbase = ffi.from_buffer(base)
    for regs, nreg, m, nmap in natives:
        rc = lib.bsi_exe_transform_eager(
            pbase, size, regs, nreg, m, nmap, index, avoid, len(wl), conflicts
        )
        check(rc, "exe transform")
        if conflicts[0]:
            del pbase
            base.close()
            return None
    cgroups = ffi.new("bsi_exe_group[]", len(groups))
    for i, (regs, nreg, m, nmap) in enumerate(natives):
        cgroups[i].regions, cgroups[i].n_regions, cgroups[i].map, cgroups[i].n_map = (
            regs,
            nreg,
            m,
            nmap,
        )
    ckpt = ffi.new("uint8_t[]", max(nck, 1))
    scratch = ffi.new("uint8_t[]", 2 * lib.BSI_EXE_CHUNK + 128)
    porig = ffi.from_buffer(old)
    src = ffi.new("bsi_exe_source *")
    src.base, src.orig, src.size = pbase, porig, size
    src.groups, src.n_groups = cgroups, len(groups)
    src.wregions, src.n_wregions = wregs, len(wl)
    src.ckpt, src.n_ckpt, src.index = ckpt, nck, index
    src.scratch = scratch
    check(lib.bsi_exe_source_init(src), "windowed old image")
    keep += [natives, avoid, wregs, index, pbase, cgroups, ckpt, scratch]
    return WindowedOld(base, porig, keep, src)


def file_predicted_old(
    old: Buffer, t: Transform | ImageTransform, path: str | os.PathLike[str], directory: str
) -> mmap.mmap | None:
    """The whole predicted old image in an unlinked temporary file in ``directory``
    (``O_TMPFILE``), written in order from the windowed source (:func:`windowed_old`, a
    chunk at a time) and mapped shared read-only: its pages are the file's (page cache),
    not anonymous memory. The file's blocks are reserved first (``posix_fallocate``), so
    a full disk is found before anything is written. Returns None when the windows are
    not exact for ``t`` or anything about the file fails (a full disk, no ``O_TMPFILE``):
    the caller then reads through windows or makes a private copy. Costs ``len(old)``
    bytes of disk space while the apply runs; the kernel writes the dirty pages back only
    under memory pressure or after its writeback delay (not at all once the file is
    closed, which frees it)."""
    flags = getattr(os, "O_TMPFILE", 0)
    size = len(old)
    if not flags or size == 0:
        return None
    w = windowed_old(old, t, path)
    if w is None:
        return None
    try:
        fd = os.open(directory, flags | os.O_RDWR, 0o600)
    except OSError:
        w.close()
        return None
    try:
        os.posix_fallocate(fd, 0, size)
        chunk = bytearray(FILE_CHUNK)
        view, pchunk = memoryview(chunk), ffi.from_buffer(chunk)
        for off in range(0, size, FILE_CHUNK):
            n = min(FILE_CHUNK, size - off)
            check(lib.bsi_exe_source_read(w.source, off, n, pchunk), "windowed read")
            done = 0
            while done < n:
                k = os.pwrite(fd, view[done:n], off + done)
                if k <= 0:
                    return None
                done += k
        del pchunk
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    except OSError:
        return None
    finally:
        os.close(fd)
        w.close()
