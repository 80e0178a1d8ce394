"""Executable-aware diffing: where an old ELF file's references live and where they went.

For an old and a new ELF file (x86-64 or AArch64) this module decides the regions
(code, relocation, symbol and unwind tables, from the section headers) and derives,
from a first alignment of old and new, where each range of old virtual addresses
went (the map, exemap.py); it then runs the transform (exe.py) to make the predicted
old image the diff is computed against. Only the diff uses it: the applier needs
exe.py alone. It does not search for differences or frame patches.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterable
from typing import NamedTuple

from bsipatch._buffers import Buffer, drop_pages
from bsipatch._native import check, ffi, lib
from bsipatch.delta import elf as elfmod
from bsipatch.delta.exe import (
    MAX_MAP,
    MAX_REGIONS,
    ImageTransform,
    Region,
    Transform,
    predicted_old,
)
from bsipatch.delta.exemap import build_map

#: Old files at least this large get their first alignment from anchors (anchor_ranges),
#: smaller ones from a full search (compute_ops). Measured on the bench exe set, one
#: thread (patch bytes, anchors vs full search): libcrypto.so.3 x86-64 74,327 vs 76,361
#: (whole diff 0.58 vs 1.07 CPU s), arm64 73,237 vs 75,959 (0.83 vs 1.15 CPU s); but
#: libssl.so.3 x86-64 15,375 vs 14,594, libxml2 23,377 vs 21,846, ssh 14,462 vs 12,969,
#: libexpat 28,655 vs 28,262 (anchors taking one window in 8), where the full search
#: costs only 0.1-0.3 CPU s.
ANCHOR_ABOVE = 2 << 20

#: Old files at least this large let the search index their predicted old image in
#: place and make it again afterwards (Prepared.restore): on the Chromium pair (279 MB)
#: that saves a 270 MB copy at the memory peak for ~1.5 CPU s; on small files the
#: transform's second run would cost more than the copy.
INDEX_IN_PLACE_ABOVE = 32 << 20

_CODE_KIND = {elfmod.EM_X86_64: int(lib.BSI_EXE_X86_64), elfmod.EM_AARCH64: int(lib.BSI_EXE_A64)}


def regions_of(e: elfmod.Elf) -> list[Region]:
    """Regions of an old ELF file: loadable segments, code, relocation/symbol/unwind tables."""
    out = [
        Region(
            ld.off, ld.filesz, ld.va, int(lib.BSI_EXE_LOAD), min(ld.memsz - ld.filesz, 0xFFFFFFFF)
        )
        for ld in e.loads
    ]
    for s in e.sections:
        if s.type == elfmod.SHT_NOBITS or not s.flags & elfmod.SHF_ALLOC or s.size == 0:
            continue
        if s.flags & elfmod.SHF_EXECINSTR:
            out.append(Region(s.off, s.size, s.addr, _CODE_KIND[e.machine]))
        elif s.type == elfmod.SHT_RELA and s.entsize == 24:
            out.append(Region(s.off, s.size, s.addr, int(lib.BSI_EXE_RELA), e.machine))
        elif s.type in (elfmod.SHT_DYNSYM, elfmod.SHT_SYMTAB) and s.entsize == 24:
            out.append(Region(s.off, s.size, s.addr, int(lib.BSI_EXE_SYM)))
        elif s.name == ".eh_frame_hdr":
            out.append(Region(s.off, s.size, s.addr, int(lib.BSI_EXE_EHHDR)))
        elif s.name == ".eh_frame":
            out.append(Region(s.off, s.size, s.addr, int(lib.BSI_EXE_EHFRAME)))
        elif e.type == elfmod.ET_EXEC and s.type in (elfmod.SHT_INIT_ARRAY, elfmod.SHT_FINI_ARRAY):
            out.append(Region(s.off, s.size, s.addr, int(lib.BSI_EXE_PTR64)))
    return out[:MAX_REGIONS]


def plan(old: Buffer, new: Buffer, aligned: Iterable[tuple[int, int, int]]) -> Transform | None:
    """The transform for old -> new, or None when they are not two ELF files of one architecture."""
    eo, en = elfmod.parse(old), elfmod.parse(new)
    if eo is None or en is None or eo.machine != en.machine:
        return None
    return Transform(tuple(regions_of(eo)), tuple(build_map(eo, en, aligned)[:MAX_MAP]))


class Prepared(NamedTuple):
    """What the diff needs for an executable pair: the transform, its block, the predicted old."""

    transform: Transform | ImageTransform
    block: bytes
    predicted: Buffer
    stats: dict[str, int]
    #: the anchors' alignment of new with the predicted old, when anchors made it
    hints: list[tuple[int, int, int]] | None = None
    #: makes ``predicted`` again from the old image (compute_ops ``restore``: the
    #: search may index the predicted old in place), or None
    restore: Callable[[], None] | None = None


def aligned_ranges(ops: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``(new_off, len, old_off)`` of the COPY and ADD operations of an op list."""
    out = []
    pos = 0
    for kind, n, old_off in ops:
        if kind in (lib.BSI_OP_COPY, lib.BSI_OP_ADD):
            out.append((pos, n, old_off))
        pos += n
    return out


def anchor_ranges(old: Buffer, new: Buffer) -> list[tuple[int, int, int]] | None:
    """A fast first alignment ``(new_off, len, old_off)`` from exact anchors
    (csrc/bsi_align.c), or None when old is too large for it (4 GiB)."""
    from bsipatch.delta.search import _anon

    on, nn = len(old), len(new)
    if on >= (1 << 32) - 2:
        return None
    slots = lib.bsi_align_table_slots(on)
    table = _anon(slots * 8, huge=True)  # lazily zeroed
    cap = nn // lib.BSI_ALIGN_MIN + 1
    out = ffi.new("uint64_t[]", 3 * cap)
    n = check(
        lib.bsi_align_ranges(
            ffi.from_buffer(old) if on else ffi.NULL, on,
            ffi.from_buffer(new) if nn else ffi.NULL, nn,
            ffi.cast("uint64_t *", ffi.from_buffer(table)), slots, out, cap,
        ),
        "first alignment",
    )  # fmt: skip
    table.close()
    flat = ffi.unpack(out, 3 * n)
    return list(zip(flat[0::3], flat[1::3], flat[2::3], strict=True))


def _anchored(
    old: Buffer, new: Buffer, eo: elfmod.Elf, en: elfmod.Elf, regions: tuple[Region, ...]
) -> list[tuple[int, int, int]] | None:
    """Two rounds of anchors: the first aligns old with new; where references moved,
    few exact anchors match, so the second aligns new with the old image as the first
    map predicts it (file offsets are the same), which matches far more. None when old
    is too large for anchors."""
    aligned = anchor_ranges(old, new)
    if aligned is None:
        return None
    first = Transform(regions, tuple(build_map(eo, en, aligned)[:MAX_MAP]))
    return anchor_ranges(predicted_old(old, first)[0], new)


def plan_pair(
    old: Buffer,
    new: Buffer,
    eo: elfmod.Elf,
    en: elfmod.Elf,
    align: Callable[[Buffer, Buffer], Iterable[tuple[int, int, int]]] | None = None,
    *,
    anchors: bool | None = None,
) -> Transform:
    """The transform of one ELF pair (parsed as ``eo``/``en``), in ``old``'s file offsets.

    The first alignment comes from anchors (:func:`anchor_ranges`, linear time) when
    ``anchors`` is true, or when it is None and old is at least ANCHOR_ABOVE bytes;
    otherwise from a full search, ``align(old, new)`` (a diff's operations ``(kind,
    len, old_off)``; default ``compute_ops``).
    """
    return plan_pair_aligned(old, new, eo, en, align, anchors=anchors)[0]


def plan_pair_aligned(
    old: Buffer,
    new: Buffer,
    eo: elfmod.Elf,
    en: elfmod.Elf,
    align: Callable[[Buffer, Buffer], Iterable[tuple[int, int, int]]] | None = None,
    *,
    anchors: bool | None = None,
) -> tuple[Transform, list[tuple[int, int, int]] | None]:
    """:func:`plan_pair`, and the anchors' alignment of new with the predicted old
    ``(new_off, len, old_off)`` when anchors made it (else None)."""
    regions = tuple(regions_of(eo))
    use_anchors = len(old) >= ANCHOR_ABOVE if anchors is None else anchors
    aligned = _anchored(old, new, eo, en, regions) if use_anchors else None
    hints = aligned
    if aligned is None:
        if align is None:
            from bsipatch.delta.search import compute_ops

            align = compute_ops
        aligned = aligned_ranges(align(old, new))
    return Transform(regions, tuple(build_map(eo, en, aligned)[:MAX_MAP])), hints


def prepare(
    old: Buffer,
    new: Buffer,
    align: Callable[[Buffer, Buffer], Iterable[tuple[int, int, int]]] | None = None,
    *,
    anchors: bool | None = None,
) -> Prepared | None:
    """For two ELF files of one architecture: align them (:func:`plan_pair`), plan and
    run the transform. Returns None for anything else (the caller diffs as usual).
    """
    eo, en = elfmod.parse(old), elfmod.parse(new)
    if eo is None or en is None or eo.machine != en.machine:
        return None
    t, hints = plan_pair_aligned(old, new, eo, en, align, anchors=anchors)
    predicted, stats = predicted_old(old, t)
    # the old file's pages were read by the anchors and the copy: a large pair's diff
    # keeps only the copy resident (the file's pages count in its peak memory)
    drop_pages(old)
    drop_pages(new)

    def restore() -> None:
        assert isinstance(predicted, mmap.mmap)
        predicted[:] = memoryview(old)[: len(old)]
        t.apply_to(predicted)
        drop_pages(old)

    in_place = len(old) >= INDEX_IN_PLACE_ABOVE
    return Prepared(t, t.pack(), predicted, stats, hints, restore if in_place else None)
