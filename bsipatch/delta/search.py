"""Finding the operations from old to new: block pre-pass, suffix arrays, search.

The pipeline: block pre-pass (C) -> suffix arrays of the old regions still needed,
one part per thread (C, SA-IS), and an 8-gram filter of them -> bsdiff-style search
of the unmatched regions of new, several at once on threads (C, GIL released; the
filter skips lookups of bytes that occur nowhere in old) -> the ops, normalised. Progress
is reported as one bar over all of it (:class:`Meter`). This module does not encode,
compress or write patches (diff.py does).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import mmap
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from bsipatch._buffers import Buffer, drop_pages, holes
from bsipatch._native import check, ffi, lib
from bsipatch._threads import default_threads
from bsipatch.delta.meter import Meter as Meter
from bsipatch.delta.opspost import normalized, packed, unpack_into
from bsipatch.delta.sasort import sort_part

ProgressFn = Callable[[int, int], None]

BS = lib.BSI_BLOCK_SIZE
#: Old images up to this size are indexed whole (claimed blocks included); larger
#: ones only where the pre-pass left gaps. Measured on libcrypto 3.0.20 -> 3.0.22,
#: indexing only the unclaimed regions gives the smaller patch (192,903 vs 198,408
#: bytes) and a smaller index, so by default nothing is indexed whole.
FULL_INDEX_LIMIT = 0
SEARCH_OPS_CAP = 1 << 13
#: Indexes of at least this many bytes per thread are suffix-sorted in parallel parts
#: (libcrypto's 1.3 MB index, after the hints: two parts, patch 73,990 against
#: 74,002 bytes in one; libxml2 2.9.14 amd64 21,661 against 21,615).
SA_PART_MIN = 512 << 10
#: The index is sorted in at most this many parts, and the gaps are searched in about
#: SEARCH_CHUNKS regions of at least SEARCH_CHUNK_MIN bytes, whatever the thread count
#: (parts and regions are searched separately, so their number shapes the patch: the
#: same inputs give the same patch with 1 thread or 8; 2 parts and 16 regions are what
#: 2 threads made before).
SA_PARTS = 2
SEARCH_CHUNKS = 16
#: Gaps are searched in regions of at least this many bytes.
SEARCH_CHUNK_MIN = 512 << 10
#: The pre-pass works through the images in chunks of this many bytes, releasing
#: mapped pages in between when the images are larger than PAGE_DROP_ABOVE.
PREPASS_CHUNK = 64 << 20
PAGE_DROP_ABOVE = 256 << 20
#: Runs of all-zero pages at least this long become ZERO ops at once (file holes among
#: them are not read).
HOLE_MIN = 1 << 20
#: Granularity of those runs (holes are found in file-system blocks of at most this).
ZERO_PAGE = 4096
#: Pages checked per native call when looking for zero runs.
ZERO_STEP = 1 << 14
OP_SIZE = ffi.sizeof("bsi_op")
#: Build the 8-gram filter of the index (csrc/bsi_diff.c) and let the search use it.
USE_FILTER = True
#: Aligned ranges given as hints (compute_ops ``hints``: the executable transform's
#: anchors) become ADD ops without a search where at least HINT_MIN bytes long once
#: HINT_MARGIN bytes are left to the search at each end (the search then continues
#: them, and normalising joins the two, instead of cutting an op at the hint's edge);
#: the old blocks they cover are not indexed. Measured on the libcrypto.so.3 3.0.20 ->
#: 3.0.22 update (patch bytes / suffix-sorted bytes): x86-64 74,109 / 3,226,904
#: without hints, 74,081 / 1,461,528 with; arm64 73,012 / 3,311,784 and 73,034 /
#: 1,497,256. Without the margin, or with shorter hints, the patch grows (32 bytes, no
#: margin: 82,382 bytes; 1,024 bytes, 2,048 margin: 74,029 on x86-64 but 74,696 on arm64).
HINT_MIN = 8192
HINT_MARGIN = 1024
#: Relative cost per byte of each phase (roughly ns per byte on one core), so that the
#: progress bar moves in step with the time spent: indexing old blocks, scanning new,
#: suffix-sorting the index, searching the gaps, encoding and writing the patch.
COST_INDEX, COST_SCAN, COST_SORT, COST_SEARCH, COST_WRITE = 1, 2, 60, 30, 2


def zero_runs(buf: Buffer, min_len: int = HOLE_MIN) -> list[tuple[int, int]]:
    """Maximal runs of all-zero ``ZERO_PAGE``-aligned pages of ``buf``, at least ``min_len``
    bytes long. Holes of a mapped file are taken as zero without reading them, and the
    data around them is checked page by page, so the result depends only on the bytes,
    not on how the file is stored (a sparse and a dense copy give the same runs, hence
    the same patch)."""
    size = len(buf)
    n_pages = size // ZERO_PAGE
    if n_pages == 0:
        return []
    runs: list[list[int]] = []

    def add(s: int, e: int) -> None:
        if runs and runs[-1][1] == s:
            runs[-1][1] = e
        else:
            runs.append([s, e])

    ptr = ffi.cast("uint8_t *", ffi.from_buffer(buf))
    flags = bytearray(ZERO_STEP)
    pflags = ffi.from_buffer(flags)

    def scan(p0: int, p1: int) -> None:  # data pages [p0, p1): check each
        for c0 in range(p0, p1, ZERO_STEP):
            n = min(ZERO_STEP, p1 - c0)
            check(lib.bsi_zero_pages(ptr + c0 * ZERO_PAGE, n, ZERO_PAGE, pflags), "zero pages")
            i = flags.find(1, 0, n)
            while i >= 0:
                j = flags.find(0, i, n)
                j = n if j < 0 else j
                add((c0 + i) * ZERO_PAGE, (c0 + j) * ZERO_PAGE)
                i = flags.find(1, j, n)

    page = 0
    for hs, he in holes(buf, 1):
        h0, h1 = -(-hs // ZERO_PAGE), min(he // ZERO_PAGE, n_pages)
        if h1 <= h0:
            continue
        scan(page, h0)
        add(h0 * ZERO_PAGE, h1 * ZERO_PAGE)
        page = h1
    scan(page, n_pages)
    return [(s, e) for s, e in runs if e - s >= min_len]


#: Anonymous buffers at least this large ask for transparent huge pages.
HUGE_ABOVE = 2 << 20


class _AnonMap(mmap.mmap):
    """Private anonymous memory: it holds the only copy of its bytes, so nothing may
    drop its pages (``_buffers.drop_pages`` checks ``keep_pages``)."""

    keep_pages = True


def _anon(size: int, huge: bool = False) -> mmap.mmap:
    """Lazily zeroed private anonymous memory: untouched pages cost no resident memory.
    Private, not shared: a shared anonymous map is backed by shmem, whose page faults
    and frees cost about a third more (measured on the suffix sort of 1.6 MB of
    libcrypto: 0.16 vs 0.11 s). ``huge``: ask for huge pages (fewer faults and TLB
    misses), only for buffers that are touched all over: on a buffer sized for the
    worst case and touched here and there (the suffix sort's workspace) every touch
    would take 2 MiB (the Chromium pair's diff peaked 276 MB higher)."""
    m = _AnonMap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge and size >= HUGE_ABOVE and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            m.madvise(mmap.MADV_HUGEPAGE)
    return m


def _ptr(buf: Buffer) -> Any:
    return ffi.from_buffer(buf) if len(buf) else ffi.NULL


class Ops:
    """A cffi array of ``bsi_op`` covering the new image, plus search statistics."""

    def __init__(self, array: Any, count: int, stats: dict[str, Any]) -> None:
        self.array = array
        self.count = count
        self.stats = stats

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        for i in range(self.count):
            op = self.array[i]
            yield int(op.kind), int(op.len), int(op.old_off)


def _index_ranges(claimed: Buffer, old_size: int, whole: bool) -> list[tuple[int, int]]:
    """Old ranges to index: blocks not claimed by a copy (all when ``whole``), zero blocks out."""
    nob = old_size // BS
    marks = bytes(claimed[:nob])
    wanted = b"[\x00\x01]+" if whole else b"\x00+"
    ranges = [(m.start() * BS, m.end() * BS) for m in re.finditer(wanted, marks)]
    if old_size % BS:
        tail = (nob * BS, old_size)
        if ranges and ranges[-1][1] == tail[0]:
            ranges[-1] = (ranges[-1][0], old_size)
        else:
            ranges.append(tail)
    return ranges


class _Prepass:
    """The block pre-pass over old and new: COPY/ZERO ops and the GAP ops between them."""

    def __init__(self, old: Buffer, new: Buffer, meter: Meter) -> None:
        self.old, self.new, self.meter = old, new, meter
        on, nn = len(old), len(new)
        self.pold, self.pnew = _ptr(old), _ptr(new)
        self.slots = lib.bsi_prepass_table_slots(on)
        self.table = _anon(self.slots * 8, huge=True)
        self.ptable = ffi.cast("uint64_t *", ffi.from_buffer(self.table))
        self.claimed = _anon(on // BS + 1)
        self.pclaimed = ffi.from_buffer(self.claimed)
        self.max_ops = lib.bsi_prepass_max_ops(nn)
        self.pre_buf = _anon(self.max_ops * OP_SIZE)
        self.pre = ffi.cast("bsi_op *", ffi.from_buffer(self.pre_buf))
        self.big = on + nn > PAGE_DROP_ABOVE
        self.st = ffi.new("bsi_prepass_state *")

    def _index(self, b0: int, b1: int) -> None:
        """Index old blocks [b0, b1) in chunks."""
        step = PREPASS_CHUNK // BS
        for c0 in range(b0, b1, step):
            c1 = min(c0 + step, b1)
            check(
                lib.bsi_prepass_index(
                    self.pold, len(self.old), c0, c1, self.ptable, self.slots, self.pclaimed
                ),
                "block index",
            )
            if self.big:
                drop_pages(self.old)
            self.meter.add((c1 - c0) * BS * COST_INDEX)

    def index_old(self) -> None:
        """Index old: blocks in holes are zero blocks without reading them."""
        nob = len(self.old) // BS
        b = 0
        for hs, he in holes(self.old, HOLE_MIN):
            b0, b1 = -(-hs // BS), he // BS
            if b1 > b0:
                self.claimed[b0:b1] = b"\x02" * (b1 - b0)
                self._index(b, b0)
                self.meter.add((b1 - b0) * BS * COST_INDEX)
                b = b1
        self._index(b, nob)

    def _scan_to(self, end: int) -> None:
        st, nn = self.st, len(self.new)
        while st.pos < end:
            start = st.pos
            stop = min(end, st.pos + PREPASS_CHUNK)
            check(
                lib.bsi_prepass_scan(
                    st, self.pold, len(self.old), self.pnew, nn, stop, self.ptable,
                    self.slots, self.pclaimed, self.pre, self.max_ops,
                ),
                "block pre-pass",
            )  # fmt: skip
            if self.big:
                drop_pages(self.new)
                drop_pages(self.old)
            self.meter.add((st.pos - start) * COST_SCAN)
            if st.pos >= nn:
                break

    def scan_new(self) -> int:
        """Scan new (zero runs become ZERO ops, holes unread); return the op count."""
        nn = len(self.new)
        for hs, he in zero_runs(self.new, HOLE_MIN):
            self._scan_to(hs)
            before = self.st.pos
            check(lib.bsi_prepass_zero(self.st, nn, he, self.pre, self.max_ops), "block pre-pass")
            self.meter.add((self.st.pos - before) * COST_SCAN)
        self._scan_to(nn)
        npre = check(
            lib.bsi_prepass_finish(
                self.st, self.pold, len(self.old), self.pnew, nn, self.pre, self.max_ops
            ),
            "block pre-pass",
        )
        self.table.close()
        return int(npre)

    def carve(self, npre: int, hints: Sequence[tuple[int, int, int]]) -> int:
        """Cut the aligned ranges ``hints`` (``(new_off, len, old_off)``, in new order,
        not overlapping) out of the gaps as ADD ops (see HINT_MIN), claiming the old
        blocks they cover (so they are not indexed); return the new op count
        (``self.pre`` replaced)."""
        ops: list[tuple[int, int, int]] = []
        gap, add = int(lib.BSI_OP_GAP), int(lib.BSI_OP_ADD)
        pos, hi, on = 0, 0, len(self.old)
        for i in range(npre):
            op = self.pre[i]
            kind, n = int(op.kind), int(op.len)
            if kind != gap:
                ops.append((kind, n, int(op.old_off)))
                pos += n
                continue
            cur, end = pos, pos + n
            while hi < len(hints) and hints[hi][0] + hints[hi][1] <= cur:
                hi += 1
            j = hi
            while j < len(hints) and hints[j][0] < end:
                hs, hl, ho = hints[j]
                a, b = max(hs + HINT_MARGIN, cur), min(hs + hl - HINT_MARGIN, end)
                o = ho + a - hs
                if b - a >= HINT_MIN and o >= 0 and o + b - a <= on:
                    if a > cur:
                        ops.append((gap, a - cur, 0))
                    ops.append((add, b - a, o))
                    b0, b1 = -(-o // BS), (o + b - a) // BS
                    if b1 > b0:
                        self.claimed[b0:b1] = b"\x01" * (b1 - b0)
                    cur = b
                j += 1
            if cur < end:
                ops.append((gap, end - cur, 0))
            pos = end
        arr = ffi.new("bsi_op[]", max(len(ops), 1))
        for i, (kind, n, o) in enumerate(ops):
            arr[i].kind, arr[i].len, arr[i].old_off = kind, n, o
        self.pre = arr
        return len(ops)

    def gaps(self, npre: int) -> list[tuple[int, int]]:
        """The new ranges the pre-pass left unmatched."""
        gaps: list[tuple[int, int]] = []
        pos = 0
        for i in range(npre):
            op = self.pre[i]
            if op.kind == lib.BSI_OP_GAP:
                gaps.append((pos, pos + op.len))
            pos += op.len
        return gaps


class _Index:
    """Suffix arrays of the old ranges to search, sorted in parallel parts."""

    def __init__(self, old: Buffer, claimed: Buffer, threads: int, in_place: bool = False) -> None:
        on = len(old)
        self.threads = threads
        self.ranges = _index_ranges(claimed, on, on <= FULL_INDEX_LIMIT)
        self.size = sum(e - s for s, e in self.ranges)
        if self.ranges == [(0, on)]:
            self.idx: Buffer = old
        elif in_place:  # the caller restores old after the search (compute_ops restore)
            self.idx = old
            base = ffi.cast("uint8_t *", ffi.from_buffer(old))
            p = 0
            for s, e in self.ranges:  # ranges ascend, so each moves down (or stays)
                if s != p:
                    ffi.memmove(base + p, base + s, e - s)
                p += e - s
            del base
            tail = -(-self.size // mmap.PAGESIZE) * mmap.PAGESIZE
            if isinstance(old, mmap.mmap) and tail < on:  # made again by restore()
                old.madvise(mmap.MADV_DONTNEED, tail, on - tail)
        else:
            self.idx = _anon(self.size, huge=True)
            mv = memoryview(old)
            p = 0
            for s, e in self.ranges:
                self.idx[p : p + e - s] = mv[s:e]
                p += e - s
            del mv
            drop_pages(old)
        self.remap = self.ranges != [(0, on)]
        self.wide = self.size >= (1 << 31) - 2
        self.isz = 8 if self.wide else 4
        self.sa_buf = _anon(self.size * self.isz, huge=True)
        # The index is sorted in parts, one per thread, in parallel: a lookup then
        # searches every part (matches stop at a part's end; their extension does not).
        self.nparts = max(1, min(SA_PARTS, lib.BSI_MAX_SA_PARTS, self.size // SA_PART_MIN))
        self.bounds = [self.size * k // self.nparts for k in range(self.nparts + 1)]
        self.parts = ffi.new("bsi_sa_part[]", self.nparts)
        self.pidx = ffi.from_buffer(self.idx) if self.size else ffi.NULL
        self.psa = ffi.from_buffer(self.sa_buf)
        self.bkts: list[Any] = []
        self.sorters: list[str] = []
        self.map_old = ffi.new("uint64_t[]", [s for s, _ in self.ranges] or [0])
        self.map_len = ffi.new("uint64_t[]", [e - s for s, e in self.ranges] or [0])
        # the 8-gram filter (built with the suffix arrays): most lookups of new data that
        # is nowhere in old are skipped
        self.filter_log2 = int(lib.bsi_gram_filter_log2(self.size)) if USE_FILTER else 0
        self.filter_buf = (
            _anon((1 << self.filter_log2) // 8, huge=True) if self.filter_log2 else None
        )
        self.filter = (
            ffi.cast("uint64_t *", ffi.from_buffer(self.filter_buf))
            if self.filter_buf is not None
            else ffi.NULL
        )

    def build_filter(self) -> None:
        if self.filter_buf is not None:
            check(
                lib.bsi_gram_filter_build(self.pidx, self.size, self.filter, self.filter_log2),
                "8-gram filter",
            )

    def sort_part(self, k: int) -> None:
        off, n = self.bounds[k], self.bounds[k + 1] - self.bounds[k]
        sa = self.psa + off * self.isz
        text = self.pidx + off if n else ffi.NULL
        part = self.parts[k]
        part.off, part.len = off, n
        bkt = ffi.new("uint64_t[]", 65537)
        self.bkts.append(bkt)
        part.bkt = bkt
        if self.wide:
            part.sa64 = ffi.cast("int64_t *", sa)
        else:
            part.sa32 = ffi.cast("int32_t *", sa)
        sa32 = ffi.NULL if self.wide else part.sa32
        self.sorters.append(sort_part(text, n, sa32, part.sa64 if self.wide else ffi.NULL))
        check(lib.bsi_sa_buckets(text, n, bkt), "suffix buckets")

    def sort(self, meter: Meter) -> None:
        def one(k: int) -> None:
            self.sort_part(k)
            meter.add((self.bounds[k + 1] - self.bounds[k]) * COST_SORT)

        if self.nparts == 1 or self.threads == 1:
            for k in range(self.nparts):
                one(k)
            self.build_filter()
            return
        with cf.ThreadPoolExecutor(max_workers=min(self.threads, self.nparts)) as pool:
            futs = [pool.submit(one, k) for k in range(self.nparts)]
            futs.append(pool.submit(self.build_filter))
            for f in futs:
                f.result()

    def close(self) -> None:
        """Let go of the suffix arrays and the index copy (the search is over)."""
        self.parts = self.psa = self.pidx = self.bkts = None  # type: ignore[assignment]
        self.filter = self.filter_buf = None
        self.sa_buf = self.idx = None  # type: ignore[assignment]


def _remapped(index: _Index, buf: Any, n: int) -> tuple[Any, int]:
    """Search results mapped from index to old coordinates (an op crossing k range
    boundaries becomes k+1 ops: the buffer grows until it fits)."""
    cap = n * 2 + 16
    while True:
        rbuf = ffi.new("bsi_op[]", cap)
        m = lib.bsi_ops_remap(buf, n, index.map_old, index.map_len, len(index.ranges), rbuf, cap)
        if m != lib.BSI_E_NOMEM:
            return rbuf, check(m, "remap")
        cap *= 4


def _search_region(
    index: _Index, new: Buffer, s: int, e: int, local: Any
) -> list[tuple[bytes, int]]:
    """Search new[s:e) in the index; the ops found, in order, as (packed ops, count)."""
    out: list[tuple[bytes, int]] = []
    stopped = ffi.new("uint64_t *")
    buf = getattr(local, "buf", None)
    if buf is None:
        buf = local.buf = ffi.new("bsi_op[]", SEARCH_OPS_CAP)
    pnew = _ptr(new)
    while s < e:
        n = check(
            lib.bsi_diff_search_filtered(
                index.pidx, index.size, index.parts, index.nparts, pnew, len(new), s, e,
                buf, SEARCH_OPS_CAP, stopped, index.filter, index.filter_log2,
            ),
            "delta search",
        )  # fmt: skip
        if index.remap and n:
            out.append(packed(*_remapped(index, buf, n), local))
        elif n:
            out.append(packed(buf, n, local))
        s = stopped[0]
    return out


def _search_gaps(
    index: _Index, new: Buffer, gaps: list[tuple[int, int]], threads: int, meter: Meter
) -> dict[int, list[tuple[int, list[tuple[bytes, int]]]]]:
    """Search every gap (big ones cut so all threads have work), several at once."""
    gap_total = sum(e - s for s, e in gaps)
    chunk = max(SEARCH_CHUNK_MIN, gap_total // SEARCH_CHUNKS + 1)
    regions: list[tuple[int, int, int]] = []
    for gi, (s, e) in enumerate(gaps):
        while e - s > chunk * 3 // 2:
            regions.append((gi, s, s + chunk))
            s += chunk
        regions.append((gi, s, e))
    local = threading.local()

    def search(region: tuple[int, int, int]) -> list[tuple[bytes, int]]:
        _, s, e = region
        found = _search_region(index, new, s, e, local)
        # the search phase is the diff's memory peak: release this region of new
        drop_pages(new, s, e)
        return found

    results: dict[int, list[tuple[int, list[tuple[bytes, int]]]]] = {}
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        # largest regions first, so that no long one starts last
        order = sorted(regions, key=lambda r: r[1] - r[2])
        futs = {pool.submit(search, r): r for r in order}
        for fut in cf.as_completed(futs):
            gi, s, e = futs[fut]
            results.setdefault(gi, []).append((s, fut.result()))
            meter.add((e - s) * COST_SEARCH)
    return results


def _assemble(
    pre: Any, npre: int, results: dict[int, list[tuple[int, list[tuple[bytes, int]]]]]
) -> tuple[Any, int]:
    """Pre-pass ops with each gap replaced by its search results, in order."""
    total = npre + sum(n for lst in results.values() for _, parts in lst for _, n in parts)
    final = ffi.new("bsi_op[]", max(total, 1))
    w = 0
    gi = 0
    for i in range(npre):
        if pre[i].kind == lib.BSI_OP_GAP:
            for _, parts in sorted(results.get(gi, []), key=lambda t: t[0]):
                for data, n in parts:
                    unpack_into(final + w, data, n)
                    w += n
            gi += 1
        else:
            final[w] = pre[i]
            w += 1
    return final, w


def compute_ops(
    old: Buffer,
    new: Buffer,
    *,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    meter: Meter | None = None,
    hints: Sequence[tuple[int, int, int]] | None = None,
    restore: Callable[[], None] | None = None,
) -> Ops:
    """Compute the operations that turn ``old`` into ``new``.

    Args:
        old: the old image bytes.
        new: the new image bytes.
        threads: threads for suffix sorting (up to SA_PARTS parts at once) and search
            (default: all CPUs); the ops do not depend on it.
        progress: ``(done, total)`` callback over the whole computation (see
            :class:`Meter`), ending at ``(len(new), len(new))``.
        meter: report into this :class:`Meter` instead (diff() shares one with the
            writing phase); ``progress`` is then ignored and 100% is not reported.
        hints: ranges ``(new_off, len, old_off)`` known to align new with old (in new
            order, not overlapping; e.g. the anchors of an executable pair): the long
            ones are taken as ADD ops without a search (HINT_MIN).
        restore: given when ``old`` is the caller's own writable copy that this call
            restores: the index is then built in ``old`` itself (its unindexed blocks
            overwritten) instead of in a copy, and ``restore()`` is called once the
            search is over. On the Chromium pair that copy was 270 MB at the diff's
            memory peak.

    Returns:
        The normalised :class:`Ops`.
    """
    threads = threads or default_threads()
    on, nn = len(old), len(new)
    own = meter is None
    if meter is None:
        meter = Meter(progress, nn, on * COST_INDEX + nn * COST_SCAN)
    stats: dict[str, Any] = {}
    pp = _Prepass(old, new, meter)
    pp.index_old()
    npre = pp.scan_new()
    if hints:
        npre = pp.carve(npre, hints)
    # new is not read again until the search, which reads only its gaps: release its
    # pages so the suffix sort (the memory peak) does not carry them
    drop_pages(new)
    gaps = pp.gaps(npre)
    gap_total = sum(e - s for s, e in gaps)
    stats["prepass_matched_bytes"] = nn - gap_total
    results: dict[int, list[tuple[int, list[tuple[bytes, int]]]]] = {}
    if gaps:
        index = _Index(old, pp.claimed, threads, in_place=restore is not None)
        stats["indexed_bytes"] = index.size
        meter.replan(
            index.size * COST_SORT + gap_total * COST_SEARCH + (0 if own else nn * COST_WRITE)
        )
        index.sort(meter)
        results = _search_gaps(index, new, gaps, threads, meter)
        index.close()
        if restore is not None and index.remap:
            restore()
    final, w = _assemble(pp.pre, npre, results)
    pp.pre_buf.close()
    count = normalized(final, w, old, new, stats)
    stats["n_ops"] = count
    if own:
        meter.finish()
    return Ops(final, count, stats)
