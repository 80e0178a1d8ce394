"""Making patches: compute the operations from old to new and write them as a patch.

The pipeline: block pre-pass (C; old and new hashed meanwhile on a side thread)
-> suffix arrays of the old regions still needed, one part per thread (C, SA-IS)
-> bsdiff-style search of the unmatched regions of new, several at once on threads
(C, GIL released) -> segment encoding (C) -> zstd compression of the segments,
each in up to two frames, on threads -> the bsipatch stream (or BSDIFF40 via
bsdiff40.py).
This module does the orchestration and the file I/O; it does not apply patches.
"""

from __future__ import annotations

import concurrent.futures as cf
import mmap
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, BinaryIO

from bsipatch._buffers import ZEROS as _ZERO
from bsipatch._buffers import (
    Buffer,
    drop_pages,
    holes,
    open_buffer,
    sha256_buffer,
    zero_digest,
)
from bsipatch._io import is_pathlike
from bsipatch._native import check, ffi, lib
from bsipatch._threads import default_threads

# hashlib (OpenSSL), zstandard, the patch framing and the temp-file helpers are
# imported where they are used, after the suffix-array phase: that phase is the
# diff's memory peak, and these modules add several MB of resident memory.
if TYPE_CHECKING:
    import zstandard

    from bsipatch._io import PathLike
    from bsipatch.delta.patchformat import PatchInfo

ProgressFn = Callable[[int, int], None]


BS = lib.BSI_BLOCK_SIZE
#: Old images up to this size are indexed whole (claimed blocks included); larger
#: ones only where the pre-pass left gaps. Measured on libcrypto 3.0.20 -> 3.0.22,
#: indexing only the unclaimed regions gives the smaller patch (192,903 vs 198,408
#: bytes) and a smaller index, so by default nothing is indexed whole.
FULL_INDEX_LIMIT = 0
SEARCH_OPS_CAP = 1 << 13
#: Indexes of at least this many bytes per thread are suffix-sorted in parallel parts.
SA_PART_MIN = 1 << 20
#: Gaps are searched in regions of at least this many bytes (about 8 per thread).
SEARCH_CHUNK_MIN = 512 << 10
#: zstd level. Measured on libcrypto 3.0.20 -> 3.0.22 (two frames of 388 + 353 KB,
#: compressed in parallel): level 19 190,892 B in 71 ms (the longer frame), 18
#: 191,612 B in 51 ms, 17 196,534 B in 32 ms; bsdiff's patch is 204,087 B.
DEFAULT_LEVEL = 18
#: Default and largest output bytes per segment (patchfmt checks the same limit).
DEFAULT_SEGMENT_SIZE = 64 << 20
MAX_SEGMENT_SIZE = 256 << 20
#: The pre-pass works through the images in chunks of this many bytes, releasing
#: mapped pages in between when the images are larger than PAGE_DROP_ABOVE.
PREPASS_CHUNK = 64 << 20
PAGE_DROP_ABOVE = 256 << 20
#: Inputs larger than this (old + new) are hashed while the pre-pass runs.
EARLY_HASH_ABOVE = 64 << 20
#: A segment payload whose buffered sections and diff section are both at least this
#: long is written as two zstd frames, compressed in parallel (docs/patch-format.md).
FRAME_SPLIT_MIN = 64 << 10
#: File holes at least this long are taken as zeros without reading them.
HOLE_MIN = 1 << 20
OP_SIZE = ffi.sizeof("bsi_op")


def _anon(size: int) -> mmap.mmap:
    """Lazily zeroed anonymous memory: untouched pages cost no resident memory."""
    return mmap.mmap(-1, max(size, 1))


def native_sha256(buf: Buffer) -> bytes:
    """SHA-256 of a buffer with the native core (GIL released, no OpenSSL)."""
    out = ffi.new("uint8_t[32]")
    lib.bsi_sha256(_ptr(buf), len(buf), out)
    return bytes(ffi.buffer(out))


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


def compute_ops(
    old: Buffer, new: Buffer, *, threads: int | None = None, progress: ProgressFn | None = None
) -> Ops:
    """Compute the operations that turn ``old`` into ``new``.

    Args:
        old: the old image bytes.
        new: the new image bytes.
        threads: threads for suffix sorting (one index part each) and search
            (default: all CPUs).
        progress: ``(done, total)`` callback over bytes of new searched.

    Returns:
        The normalised :class:`Ops`.
    """
    threads = threads or default_threads()
    on, nn = len(old), len(new)
    pold, pnew = _ptr(old), _ptr(new)
    stats: dict[str, Any] = {}

    slots = lib.bsi_prepass_table_slots(on)
    table = _anon(slots * 8)
    ptable = ffi.cast("uint64_t *", ffi.from_buffer(table))
    claimed = _anon(on // BS + 1)
    pclaimed = ffi.from_buffer(claimed)
    max_ops = lib.bsi_prepass_max_ops(nn)
    pre_buf = _anon(max_ops * OP_SIZE)
    pre = ffi.cast("bsi_op *", ffi.from_buffer(pre_buf))
    big = on + nn > PAGE_DROP_ABOVE

    # index old: blocks in holes are zero blocks without reading them
    nob = on // BS
    b = 0
    for hs, he in holes(old, HOLE_MIN):
        b0, b1 = -(-hs // BS), he // BS
        if b1 > b0:
            claimed[b0:b1] = b"\x02" * (b1 - b0)
            for c0 in range(b, b0, PREPASS_CHUNK // BS):
                check(
                    lib.bsi_prepass_index(
                        pold, on, c0, min(c0 + PREPASS_CHUNK // BS, b0), ptable, slots, pclaimed
                    ),
                    "block index",
                )
                if big:
                    drop_pages(old)
            b = b1
    for c0 in range(b, nob, PREPASS_CHUNK // BS):
        check(
            lib.bsi_prepass_index(
                pold, on, c0, min(c0 + PREPASS_CHUNK // BS, nob), ptable, slots, pclaimed
            ),
            "block index",
        )
        if big:
            drop_pages(old)

    # scan new: holes become ZERO ops without reading them
    st = ffi.new("bsi_prepass_state *")

    def scan_to(end: int) -> None:
        while st.pos < end:
            stop = min(end, st.pos + PREPASS_CHUNK)
            check(
                lib.bsi_prepass_scan(
                    st, pold, on, pnew, nn, stop, ptable, slots, pclaimed, pre, max_ops
                ),
                "block pre-pass",
            )
            if big:
                drop_pages(new)
                drop_pages(old)
            if st.pos >= nn:
                break

    for hs, he in holes(new, HOLE_MIN):
        scan_to(hs)
        check(lib.bsi_prepass_zero(st, nn, he, pre, max_ops), "block pre-pass")
    scan_to(nn)
    npre = check(lib.bsi_prepass_finish(st, pold, on, pnew, nn, pre, max_ops), "block pre-pass")
    table.close()
    # new is not read again until the search, which reads only its gaps: release its
    # pages so the suffix sort (the memory peak) does not carry them
    drop_pages(new)
    gaps: list[tuple[int, int]] = []
    pos = 0
    for i in range(npre):
        op = pre[i]
        if op.kind == lib.BSI_OP_GAP:
            gaps.append((pos, pos + op.len))
        pos += op.len
    gap_total = sum(e - s for s, e in gaps)
    stats["prepass_matched_bytes"] = nn - gap_total

    results: dict[int, list[tuple[int, list[tuple[Any, int]]]]] = {}
    if gaps:
        ranges = _index_ranges(claimed, on, on <= FULL_INDEX_LIMIT)
        idx_size = sum(e - s for s, e in ranges)
        stats["indexed_bytes"] = idx_size
        if ranges == [(0, on)]:
            idx: Buffer = old
        else:
            idx = _anon(idx_size)
            mv = memoryview(old)
            p = 0
            for s, e in ranges:
                idx[p : p + e - s] = mv[s:e]
                p += e - s
            del mv
            drop_pages(old)
        wide = idx_size >= (1 << 31) - 2
        isz = 8 if wide else 4
        sa_buf = _anon(idx_size * isz)
        # The index is sorted in parts, one per thread, in parallel: a lookup then
        # searches every part (matches stop at a part's end; their extension does not).
        nparts = max(1, min(threads, lib.BSI_MAX_SA_PARTS, idx_size // SA_PART_MIN))
        bounds = [idx_size * k // nparts for k in range(nparts + 1)]
        parts = ffi.new("bsi_sa_part[]", nparts)
        pidx = ffi.from_buffer(idx) if idx_size else ffi.NULL
        psa = ffi.from_buffer(sa_buf)
        bkts = []

        def sort_part(k: int) -> None:
            off, n = bounds[k], bounds[k + 1] - bounds[k]
            sa = psa + off * isz
            text = pidx + off if n else ffi.NULL
            parts[k].off, parts[k].len = off, n
            bkt = ffi.new("uint64_t[]", 65537)
            bkts.append(bkt)
            parts[k].bkt = bkt
            if wide:
                parts[k].sa64 = ffi.cast("int64_t *", sa)
            else:
                parts[k].sa32 = ffi.cast("int32_t *", sa)
            if n:
                ws_size = lib.bsi_sais_workspace_size(n, 1 if wide else 0)
                ws = _anon(ws_size)
                sort = lib.bsi_sais64 if wide else lib.bsi_sais32
                out = parts[k].sa64 if wide else parts[k].sa32
                check(sort(text, out, n, ffi.from_buffer(ws), ws_size), "suffix sort")
                ws.close()
            check(lib.bsi_sa_buckets(text, n, bkt), "suffix buckets")

        if nparts == 1:
            sort_part(0)
        else:
            with cf.ThreadPoolExecutor(max_workers=nparts) as pool:
                for f in [pool.submit(sort_part, k) for k in range(nparts)]:
                    f.result()

        # regions: gaps, big ones cut so all threads have work
        chunk = max(SEARCH_CHUNK_MIN, gap_total // (threads * 8) + 1)
        regions: list[tuple[int, int, int]] = []
        for gi, (s, e) in enumerate(gaps):
            while e - s > chunk * 3 // 2:
                regions.append((gi, s, s + chunk))
                s += chunk
            regions.append((gi, s, e))
        map_old = ffi.new("uint64_t[]", [s for s, _ in ranges] or [0])
        map_len = ffi.new("uint64_t[]", [e - s for s, e in ranges] or [0])
        remap = idx is not old
        done = [0]

        local = threading.local()

        def search(region: tuple[int, int, int]) -> list[tuple[Any, int]]:
            _, s, e = region
            out: list[tuple[Any, int]] = []
            stopped = ffi.new("uint64_t *")
            buf = getattr(local, "buf", None)
            if buf is None:
                buf = local.buf = ffi.new("bsi_op[]", SEARCH_OPS_CAP)
            while s < e:
                n = check(
                    lib.bsi_diff_search_parts(
                        pidx,
                        idx_size,
                        parts,
                        nparts,
                        pnew,
                        nn,
                        s,
                        e,
                        buf,
                        SEARCH_OPS_CAP,
                        stopped,
                    ),
                    "delta search",
                )
                if remap and n:
                    # an op crossing k range boundaries becomes k+1 ops: grow until it fits
                    cap = n * 2 + 16
                    while True:
                        rbuf = ffi.new("bsi_op[]", cap)
                        m = lib.bsi_ops_remap(buf, n, map_old, map_len, len(ranges), rbuf, cap)
                        if m != lib.BSI_E_NOMEM:
                            break
                        cap *= 4
                    out.append((rbuf, check(m, "remap")))
                elif n:
                    keep = ffi.new("bsi_op[]", n)
                    ffi.memmove(keep, buf, n * OP_SIZE)
                    out.append((keep, n))
                s = stopped[0]
            # the search phase is the diff's memory peak: release this region of new
            drop_pages(new, region[1], region[2])
            return out

        with cf.ThreadPoolExecutor(max_workers=threads) as pool:
            # largest regions first, so that no long one starts last
            order = sorted(regions, key=lambda r: r[1] - r[2])
            futs = {pool.submit(search, r): r for r in order}
            for fut in cf.as_completed(futs):
                gi, s, e = futs[fut]
                results.setdefault(gi, []).append((s, fut.result()))
                done[0] += e - s
                if progress:
                    progress(done[0], gap_total)
        del sa_buf

    # assemble: pre-pass ops with each gap replaced by its search results
    total = npre + sum(n for lst in results.values() for _, parts in lst for _, n in parts)
    final = ffi.new("bsi_op[]", max(total, 1))
    w = 0
    gi = 0
    for i in range(npre):
        if pre[i].kind == lib.BSI_OP_GAP:
            for _, parts in sorted(results.get(gi, []), key=lambda t: t[0]):
                for buf, n in parts:
                    ffi.memmove(final + w, buf, n * OP_SIZE)
                    w += n
            gi += 1
        else:
            final[w] = pre[i]
            w += 1
    pre_buf.close()
    count = check(lib.bsi_ops_normalize(final, w, pold, on, pnew, nn), "normalise ops")
    stats["n_ops"] = count
    return Ops(final, count, stats)


def iter_segments(
    ops: Ops, old: Buffer, new: Buffer, segment_size: int
) -> Iterator[tuple[int, int, bytes, tuple[int, ...], int]]:
    """Encode ops into segment payloads.

    Yields:
        (out_offset, out_len, payload, kind_bytes, n_ops) per segment.
    """
    enc = ffi.new("bsi_seg_enc *")
    from bsipatch.delta import patchformat as patchfmt

    ctrl = bytearray(patchfmt.CTRL_CAP)
    runs = bytearray(patchfmt.RUNS_CAP)
    nruns = bytearray(patchfmt.RUNS_CAP)
    lit = _anon(patchfmt.LIT_CAP)
    dif = _anon(patchfmt.DIFF_CAP)
    pold, pnew = _ptr(old), _ptr(new)
    while enc.new_pos < len(new):
        start = enc.new_pos
        check(
            lib.bsi_seg_encode(
                enc,
                ops.array,
                ops.count,
                pold,
                len(old),
                pnew,
                len(new),
                segment_size,
                ffi.from_buffer(ctrl),
                len(ctrl),
                ffi.from_buffer(runs),
                len(runs),
                ffi.from_buffer(nruns),
                len(nruns),
                ffi.from_buffer(lit),
                patchfmt.LIT_CAP,
                ffi.from_buffer(dif),
                patchfmt.DIFF_CAP,
            ),
            "segment encoding",
        )
        if enc.out_len == 0:  # pragma: no cover - would be a bug in the encoder
            raise RuntimeError("segment encoder made no progress")
        head = b"".join(
            x.to_bytes(8, "little")
            for x in (
                enc.out_len,
                enc.n_ops,
                enc.ctrl_len,
                enc.runs_len,
                enc.nruns_len,
                enc.lit_len,
                enc.diff_len,
            )
        )
        payload = b"".join(
            (
                head,
                ctrl[: enc.ctrl_len],
                runs[: enc.runs_len],
                nruns[: enc.nruns_len],
                lit[: enc.lit_len],
                dif[: enc.diff_len],
            )
        )
        yield (
            start,
            int(enc.out_len),
            payload,
            tuple(int(x) for x in enc.kind_bytes),
            int(enc.n_ops),
        )


def _sha256_range(buf: Buffer, off: int, n: int) -> bytes:
    """SHA-256 of buf[off:off+n]; zero holes of a mapped file are hashed without reading."""
    import hashlib

    h = hashlib.sha256()
    mv = memoryview(buf)
    pos, end = off, off + n
    for hs, he in holes(buf, HOLE_MIN):
        if he <= pos or hs >= end:
            continue
        if hs > pos:
            h.update(mv[pos:hs])
        z = min(he, end) - max(hs, pos)
        while z > 0:
            k = min(z, len(_ZERO))
            h.update(_ZERO[:k])
            z -= k
        pos = min(he, end)
    if pos < end:
        h.update(mv[pos:end])
    return h.digest()


def zstd_params(level: int, size: int) -> zstandard.ZstdCompressionParameters:
    """zstd parameters for one segment payload: the level's, with smaller match tables.

    Measured on the libcrypto 3.0.20 -> 3.0.22 payload (741 KB) at level 19: chain
    log 19 / hash log 18 instead of 21 / 21 costs 29 bytes (0.015%) and shrinks the
    compression context from 17 MiB to 4 MiB, which keeps the diff's peak memory
    below the suffix-array phase's.
    """
    import zstandard

    p = zstandard.ZstdCompressionParameters.from_level(level, source_size=max(size, 1))
    return zstandard.ZstdCompressionParameters(
        window_log=p.window_log,
        chain_log=min(p.chain_log, max(p.window_log - 1, 6), 20),
        hash_log=min(p.hash_log, max(p.window_log - 2, 6), 19),
        search_log=p.search_log,
        min_match=p.min_match,
        target_length=p.target_length,
        strategy=p.strategy,
        write_content_size=1,
    )


def write_bsipatch(
    old: Buffer,
    new: Buffer,
    ops: Ops,
    out: BinaryIO,
    *,
    level: int = DEFAULT_LEVEL,
    threads: int = 1,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    old_sha256: bytes,
    new_sha256: bytes,
    progress: ProgressFn | None = None,
) -> PatchInfo:
    """Write ops as a bsipatch stream to ``out``; return its :class:`PatchInfo`."""
    import zstandard

    from bsipatch.delta import patchformat as patchfmt
    from bsipatch.delta.patchformat import Header, PatchInfo, SegmentHeader

    written = 0
    made: list[Header] = []

    def start() -> Header:
        # written when the first segment is: packing it (hashlib's import, two
        # digests) then overlaps the first segment's compression
        nonlocal written
        if not made:
            header = Header(
                patchfmt.VERSION,
                segment_size,
                len(old),
                old_sha256,
                len(new),
                new_sha256,
                patchfmt.CTRL_CAP + 2 * patchfmt.RUNS_CAP + patchfmt.LIT_CAP,
                patchfmt.PAYLOAD_HEADER_SIZE
                + patchfmt.CTRL_CAP
                + 2 * patchfmt.RUNS_CAP
                + patchfmt.LIT_CAP
                + patchfmt.DIFF_CAP,
            )
            hbytes = header.pack()
            made.append(Header.unpack(hbytes))
            out.write(hbytes)
            written += len(hbytes)
        return made[0]

    segs: list[SegmentHeader] = []
    digests: list[bytes] = []

    def frame(data: bytes | memoryview) -> bytes:
        cctx = zstandard.ZstdCompressor(compression_params=zstd_params(level, len(data)))
        return cctx.compress(data)

    def digest(off: int, n: int, kinds: tuple[int, ...]) -> bytes:
        if off == 0 and n == len(new):
            return new_sha256  # one segment: its output is the new image
        return zero_digest(n) if kinds[lib.BSI_OP_ZERO] == n else _sha256_range(new, off, n)

    def submit(item: tuple[int, int, bytes, tuple[int, ...], int]) -> list[Any]:
        # two frames (buffered sections | diff section) compress on two threads
        off, n, payload, kinds, _ = item
        cut = len(payload) - int.from_bytes(payload[48:56], "little")
        if min(cut, len(payload) - cut) >= FRAME_SPLIT_MIN:
            mv = memoryview(payload)
            parts = [pool.submit(frame, mv[:cut]), pool.submit(frame, mv[cut:])]
        else:
            parts = [pool.submit(frame, payload)]
        return [*parts, pool.submit(digest, off, n, kinds)]

    with cf.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: list[tuple[Any, Any]] = []

        def drain(limit: int) -> None:
            nonlocal written
            while len(pending) > limit:
                header = start()
                item, futs = pending.pop(0)
                comp = b"".join(f.result() for f in futs[:-1])
                out_sha = futs[-1].result()
                off, n, payload, kinds, n_ops = item
                seg = SegmentHeader(
                    len(segs), off, n, len(payload), len(comp), n_ops, kinds, out_sha
                )
                body = seg.body()
                d = SegmentHeader.compute_digest(header.digest, body, comp)
                out.write(body + d)
                out.write(comp)
                written += len(body) + 32 + len(comp)
                segs.append(
                    SegmentHeader(
                        seg.index, off, n, len(payload), len(comp), n_ops, kinds, out_sha, d
                    )
                )
                digests.append(d)
                if len(old) + len(new) > PAGE_DROP_ABOVE:
                    drop_pages(new)
                    drop_pages(old)
                if progress:
                    progress(off + n, len(new))

        for item in iter_segments(ops, old, new, segment_size):
            pending.append((item, submit(item)))
            drain(max(1, threads))
        drain(0)
    header = start()
    trailer = patchfmt.pack_trailer(header, digests)
    out.write(trailer)
    written += len(trailer)
    kinds = [sum(s.kind_bytes[i] for s in segs) for i in range(4)]
    stats = {
        "segment_size": segment_size,
        "n_segments": len(segs),
        "n_ops": sum(s.n_ops for s in segs),
        **{f"{k}_bytes": v for k, v in zip(patchfmt.KIND_NAMES, kinds, strict=True)},
        "compressed_bytes": sum(s.comp_len for s in segs),
        **ops.stats,
    }
    return PatchInfo(
        "bsipatch",
        patchfmt.VERSION,
        len(old),
        old_sha256,
        len(new),
        new_sha256,
        written,
        segs,
        stats,
    )


def diff(
    old: PathLike | Buffer,
    new: PathLike | Buffer,
    patch: PathLike | BinaryIO,
    *,
    format: str = "bsipatch",
    level: int = DEFAULT_LEVEL,
    threads: int | None = None,
    segment_size: int | None = None,
    progress: ProgressFn | None = None,
) -> PatchInfo:
    """Make a patch that turns ``old`` into ``new``.

    Args:
        old: the old image: path or bytes-like.
        new: the new image: path or bytes-like.
        patch: output path (written atomically) or writable binary file.
        format: ``"bsipatch"`` (default) or ``"bsdiff40"`` (classic bsdiff).
        level: zstd compression level for bsipatch (1..22, default 18).
        threads: threads for suffix sorting (one index part each), search and
            compression (default: all CPUs; 1 gives one index part).
        segment_size: largest output bytes per segment (default 64 MiB, at most 256 MiB);
            a segment also ends when its literal or difference section reaches 8 MiB.
        progress: ``(done, total)`` callback.

    Returns:
        The :class:`PatchInfo` of the written patch.

    Raises:
        ValueError: unknown format or out-of-range option.

    Example:
        >>> import bsipatch
        >>> info = bsipatch.diff("old.img", "new.img", "update.bsipatch")  # doctest: +SKIP
    """
    if format not in ("bsipatch", "bsdiff40"):
        raise ValueError(f"format must be 'bsipatch' or 'bsdiff40', not {format!r}")
    if not 1 <= level <= 22:
        raise ValueError(f"level must be in 1..22, not {level}")
    seg = segment_size or DEFAULT_SEGMENT_SIZE
    if not 4096 <= seg <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment_size must be in 4096..{MAX_SEGMENT_SIZE}, not {seg}")
    nthreads = threads or default_threads()
    with ExitStack() as stack:
        old_buf = stack.enter_context(open_buffer(old))
        new_buf = stack.enter_context(open_buffer(new))
        # one bar over both phases: searching the unmatched bytes, then writing
        n_new = len(new_buf)
        search_total = [0]

        def on_search(done: int, total: int) -> None:
            search_total[0] = total
            if progress:
                progress(done, total + n_new)

        def on_write(done: int, total: int) -> None:
            if progress:
                progress(search_total[0] + done, search_total[0] + total)

        # Hash on a side thread while the (single-threaded) pre-pass runs. Large
        # images: hashlib with plain reads that skip holes. Small files: the native
        # SHA-256 over the maps the pre-pass reads anyway (no OpenSSL pages at the
        # suffix-sort peak).
        early = None
        if format == "bsipatch":
            hasher = stack.enter_context(cf.ThreadPoolExecutor(max_workers=1))
            if len(old_buf) + n_new > EARLY_HASH_ABOVE:
                early = hasher.submit(lambda: (sha256_buffer(old_buf), sha256_buffer(new_buf)))
            else:
                early = hasher.submit(lambda: (native_sha256(old_buf), native_sha256(new_buf)))
        ops = compute_ops(old_buf, new_buf, threads=nthreads, progress=on_search)
        if early is not None:
            old_sha, new_sha = early.result()
        from bsipatch._io import atomic_write

        out: BinaryIO = stack.enter_context(atomic_write(patch)) if is_pathlike(patch) else patch
        if format == "bsdiff40":
            from bsipatch.delta.bsdiff40 import write_bsdiff40

            return write_bsdiff40(old_buf, new_buf, ops, out)
        return write_bsipatch(
            old_buf,
            new_buf,
            ops,
            out,
            level=level,
            threads=nthreads,
            segment_size=seg,
            old_sha256=old_sha,
            new_sha256=new_sha,
            progress=on_write,
        )
