"""The old-to-new address map of an executable pair, from a first alignment of the files.

A first diff aligns ranges of the new file with ranges of the old one. Turned into
virtual addresses through both files' loadable segments, each aligned range says
"old addresses [a, a+n) moved by d". The heaviest chain of them that keeps both
old and new order (security updates do not reorder code) becomes the map; neighbours
that moved by the same amount are joined across small gaps (the changed bytes
between them moved too), and what no range covers falls back to its section's move.
This module computes the map only; exe.py packs and applies it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable

from bsipatch.delta import elf as elfmod

#: Aligned ranges shorter than this are not used to build the map.
MIN_MATCH = 32
#: Neighbouring map entries with the same delta are joined across gaps up to this long.
JOIN_GAP = 1 << 16

Entry = tuple[int, int, int]  # (old_va, len, delta)


def _pieces(
    old: elfmod.Elf, new: elfmod.Elf, aligned: Iterable[tuple[int, int, int]]
) -> list[Entry]:
    # file ranges -> virtual addresses through the loadable segments, over plain tuples:
    # this runs for every aligned range (200 K on the Chromium pair), twice per diff
    oloads = [(ld.off, ld.off + ld.filesz, ld.va - ld.off) for ld in old.loads]
    nloads = [(ld.off, ld.off + ld.filesz, ld.va - ld.off) for ld in new.loads]
    ofind, nfind = _finder(oloads), _finder(nloads)
    out: list[Entry] = []
    for new_off, n, old_off in aligned:
        if n < MIN_MATCH:
            continue
        for os_, oe, obias in ofind(old_off, old_off + n):
            s, e = max(old_off, os_), min(old_off + n, oe)
            if e - s < MIN_MATCH:
                continue
            start = new_off + (s - old_off)
            for ns, ne, nbias in nfind(start, start + e - s):
                a, b = max(start, ns), min(start + e - s, ne)
                if b - a >= MIN_MATCH:
                    va = s + obias + (a - start)
                    out.append((va, b - a, a + nbias - va))
    return out


Load = tuple[int, int, int]  # (file offset, end, va - offset)


def _finder(loads: list[Load]) -> Callable[[int, int], list[Load]]:
    """``find(s, e)``: the loads (in their order) that may overlap the file range
    [s, e): all of them, or, when they are sorted and disjoint (as linkers lay them
    out), only those from the last one starting at or before s to the last starting
    before e (the others cannot overlap it, so the pieces are the same)."""
    if any(a[0] > b[0] or a[1] > b[0] for a, b in itertools.pairwise(loads)):
        return lambda s, e: loads
    starts = [ld[0] for ld in loads]

    def find(s: int, e: int) -> list[Load]:
        i = max(bisect.bisect_right(starts, s) - 1, 0)
        return loads[i : bisect.bisect_left(starts, e, i)]

    return find


def _monotone(pieces: list[Entry]) -> list[Entry]:
    """The heaviest (by length) chain of pieces that start in the same order in old and in
    new; overlaps between neighbours of the chain (a byte or two, where one alignment's
    extension ran into the next) are trimmed off the later one.

    Pieces are taken in old order and kept in a Fenwick tree of best chain weight keyed
    by their new start, so each piece asks for the best chain starting before it in new
    (csrc/bsi_align.c bsi_map_chain: in Python this was ~2.5 s of each of the two maps
    of the Chromium pair's diff, 200 K pieces).
    """
    if not pieces:
        return []
    from bsipatch._native import check, ffi, lib

    pieces = sorted(pieces)
    keys = sorted({va + d for va, _n, d in pieces})
    n, nk = len(pieces), len(keys)
    found = ffi.new("int64_t[]", n)
    m = check(
        lib.bsi_map_chain(
            ffi.new("uint64_t[]", [p[0] for p in pieces]),
            ffi.new("uint64_t[]", [p[1] for p in pieces]),
            ffi.new("int64_t[]", [p[0] + p[2] for p in pieces]),
            n, ffi.new("int64_t[]", keys), nk,
            ffi.new("uint64_t[]", nk + 1), ffi.new("int64_t[]", nk + 1),
            ffi.new("uint64_t[]", n), ffi.new("int64_t[]", n), found,
        ),
        "map chain",
    )  # fmt: skip
    chain = [pieces[i] for i in ffi.unpack(found, m)]
    out: list[Entry] = []
    for va, n, d in reversed(chain):
        if out:
            cut = max(out[-1][0] + out[-1][1] - va, out[-1][0] + out[-1][2] + out[-1][1] - (va + d))
            if cut >= n:
                continue
            if cut > 0:
                va, n = va + cut, n - cut
        out.append((va, n, d))
    return out


def _join(entries: list[Entry]) -> list[Entry]:
    """Join neighbours (in old order) with the same delta across gaps up to JOIN_GAP."""
    out: list[list[int]] = []
    for va, n, d in entries:
        if out and out[-1][2] == d and va - (out[-1][0] + out[-1][1]) <= JOIN_GAP:
            out[-1][1] = va + n - out[-1][0]
        else:
            out.append([va, n, d])
    return [(a, b, c) for a, b, c in out]


def _extend(entries: list[Entry], old: elfmod.Elf) -> list[Entry]:
    """Stretch each entry over the gap after it, up to the next entry or its section's end:
    the bytes between two alignments (a changed function) moved like the bytes before."""
    ends = sorted(s.addr + s.size for s in old.sections if s.flags & elfmod.SHF_ALLOC and s.size)
    out = []
    for i, (va, n, d) in enumerate(entries):
        end = va + n
        k = bisect.bisect_left(ends, end)
        limit = ends[k] if k < len(ends) else end
        if i + 1 < len(entries):
            limit = min(limit, entries[i + 1][0])
        out.append((va, max(end, limit) - va, d))
    return out


def _fill(entries: list[Entry], fallback: list[Entry]) -> list[Entry]:
    """Add the parts of fallback ranges that no entry covers (entries sorted, disjoint)."""
    out = list(entries)
    starts = [e[0] for e in entries]
    for va, n, d in sorted(fallback):
        pos, end = va, va + n
        i = bisect.bisect_right(starts, pos) - 1
        i = max(i, 0)
        while pos < end:
            while i < len(entries) and entries[i][0] + entries[i][1] <= pos:
                i += 1
            nxt = entries[i][0] if i < len(entries) else end
            if nxt > pos:
                stop = min(nxt, end)
                out.append((pos, stop - pos, d))
                pos = stop
            else:
                pos = entries[i][0] + entries[i][1]
    out.sort()
    merged: list[Entry] = []
    for e in out:  # fallbacks may overlap each other: keep the first
        if merged and e[0] < merged[-1][0] + merged[-1][1]:
            cut = merged[-1][0] + merged[-1][1]
            if e[0] + e[1] <= cut:
                continue
            e = (cut, e[0] + e[1] - cut, e[2])
        merged.append(e)
    return merged


def build_map(
    old: elfmod.Elf, new: elfmod.Elf, aligned: Iterable[tuple[int, int, int]]
) -> list[Entry]:
    """The old-to-new address map ``(old_va, len, delta)``, sorted and disjoint, from
    aligned file ranges ``(new_off, len, old_off)`` of a first diff."""
    chain = _extend(_join(_monotone(_pieces(old, new, aligned))), old)
    fallback = []
    for s in old.sections:
        t = new.section(s.name)
        if s.flags & elfmod.SHF_ALLOC and s.size and t is not None and t.size:
            fallback.append((s.addr, min(s.size, t.size), t.addr - s.addr))
    return _join(_fill(chain, fallback))
