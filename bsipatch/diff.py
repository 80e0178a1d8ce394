"""Making patches: compute the operations from old to new and write them as a patch.

The pipeline: block pre-pass (C) -> suffix array of the old regions still needed
(C, SA-IS) -> bsdiff-style search of the unmatched regions of new, several at once
on threads (C, GIL released) -> segment encoding (C) -> zstd compression of the
segments on threads -> the bsipatch stream (or BSDIFF40 via bsdiff40.py).
This module does the orchestration and the file I/O; it does not apply patches.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import mmap
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Union

import zstandard

from . import patchfmt
from ._io import PathLike, atomic_write, is_pathlike
from ._native import check, ffi, lib
from .patchfmt import Header, PatchInfo, SegmentHeader

Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]
ProgressFn = Callable[[int, int], None]

BS = lib.BSI_BLOCK_SIZE
#: Old images up to this size are indexed whole (claimed blocks included), which
#: finds more matches in executables; larger ones only where the pre-pass left gaps.
FULL_INDEX_LIMIT = 64 << 20
SEARCH_OPS_CAP = 1 << 16
OP_SIZE = ffi.sizeof("bsi_op")


def default_threads() -> int:
    """Threads used when ``threads=None``: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _anon(size: int) -> mmap.mmap:
    """Lazily zeroed anonymous memory: untouched pages cost no resident memory."""
    return mmap.mmap(-1, max(size, 1))


@contextmanager
def open_buffer(src: PathLike | Buffer | BinaryIO) -> Iterator[Buffer]:
    """Yield a read-only buffer over a path (mmap), bytes-like object, or binary file."""
    if is_pathlike(src):
        with open(src, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                yield b""
                return
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                yield m
            finally:
                m.close()
    elif isinstance(src, (bytes, bytearray, memoryview, mmap.mmap)):
        yield src
    elif hasattr(src, "read"):
        yield src.read()
    else:
        raise TypeError(f"expected a path, bytes or a binary file, got {type(src).__name__}")


def _ptr(buf: Buffer) -> Any:
    return ffi.from_buffer(buf) if len(buf) else ffi.NULL


@dataclass
class Ops:
    """A cffi array of ``bsi_op`` covering the new image, plus search statistics."""

    array: Any
    count: int
    stats: dict

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


def compute_ops(old: Buffer, new: Buffer, *, threads: int | None = None,
                progress: ProgressFn | None = None) -> Ops:
    """Compute the operations that turn ``old`` into ``new``.

    Args:
        old: the old image bytes.
        new: the new image bytes.
        threads: search threads (default: all CPUs).
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
    claimed = _anon(on // BS + 1)
    max_ops = lib.bsi_prepass_max_ops(nn)
    pre_buf = _anon(max_ops * OP_SIZE)
    pre = ffi.cast("bsi_op *", ffi.from_buffer(pre_buf))
    npre = check(lib.bsi_diff_prepass(pold, on, pnew, nn, ffi.cast("uint64_t *", ffi.from_buffer(table)),
                                      slots, ffi.from_buffer(claimed), pre, max_ops), "block pre-pass")
    table.close()
    # claimed: 1 = used by a copy, 2 = zero block (both stay out of a partial index)
    gaps: list[tuple[int, int]] = []
    pos = 0
    for i in range(npre):
        op = pre[i]
        if op.kind == lib.BSI_OP_GAP:
            gaps.append((pos, pos + op.len))
        pos += op.len
    gap_total = sum(e - s for s, e in gaps)
    stats["prepass_matched_bytes"] = nn - gap_total

    results: dict[int, list[tuple[Any, int]]] = {}
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
        wide = idx_size >= (1 << 31) - 2
        sa_buf = _anon(idx_size * (8 if wide else 4))
        if idx_size:
            ws_size = lib.bsi_sais_workspace_size(idx_size, 1 if wide else 0)
            ws = _anon(ws_size)
            if wide:
                rc = lib.bsi_sais64(ffi.from_buffer(idx), ffi.cast("int64_t *", ffi.from_buffer(sa_buf)),
                                    idx_size, ffi.from_buffer(ws), ws_size)
            else:
                rc = lib.bsi_sais32(ffi.from_buffer(idx), ffi.cast("int32_t *", ffi.from_buffer(sa_buf)),
                                    idx_size, ffi.from_buffer(ws), ws_size)
            check(rc, "suffix sort")
            ws.close()
        sa32 = ffi.cast("int32_t *", ffi.from_buffer(sa_buf)) if idx_size and not wide else ffi.NULL
        sa64 = ffi.cast("int64_t *", ffi.from_buffer(sa_buf)) if idx_size and wide else ffi.NULL
        pidx = ffi.from_buffer(idx) if idx_size else ffi.NULL

        # regions: gaps, big ones cut so all threads have work
        chunk = max(1 << 20, gap_total // (threads * 4) + 1)
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

        def search(region: tuple[int, int, int]) -> list[tuple[Any, int]]:
            _, s, e = region
            out: list[tuple[Any, int]] = []
            stopped = ffi.new("uint64_t *")
            while s < e:
                buf = ffi.new("bsi_op[]", SEARCH_OPS_CAP)
                n = check(lib.bsi_diff_search(pidx, idx_size, sa32, sa64, pnew, nn, s, e, buf,
                                              SEARCH_OPS_CAP, stopped), "delta search")
                if remap and n:
                    cap = n * 2 + len(ranges) + 4
                    rbuf = ffi.new("bsi_op[]", cap)
                    n = check(lib.bsi_ops_remap(buf, n, map_old, map_len, len(ranges), rbuf, cap),
                              "remap")
                    buf = rbuf
                out.append((buf, n))
                s = stopped[0]
            return out

        with cf.ThreadPoolExecutor(max_workers=threads) as pool:
            futs = {pool.submit(search, r): r for r in regions}
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


def iter_segments(ops: Ops, old: Buffer, new: Buffer, segment_size: int
                  ) -> Iterator[tuple[int, int, bytes, tuple[int, ...], int]]:
    """Encode ops into segment payloads: yields (out_offset, out_len, payload, kind_bytes, n_ops)."""
    enc = ffi.new("bsi_seg_enc *")
    ctrl = bytearray(patchfmt.CTRL_CAP)
    runs = bytearray(patchfmt.RUNS_CAP)
    lit = _anon(segment_size)
    dif = _anon(segment_size)
    pold, pnew = _ptr(old), _ptr(new)
    while enc.new_pos < len(new):
        start = enc.new_pos
        check(lib.bsi_seg_encode(enc, ops.array, ops.count, pold, len(old), pnew, len(new),
                                 segment_size, ffi.from_buffer(ctrl), len(ctrl),
                                 ffi.from_buffer(runs), len(runs), ffi.from_buffer(lit), segment_size,
                                 ffi.from_buffer(dif), segment_size), "segment encoding")
        if enc.out_len == 0:  # pragma: no cover - would be a bug in the encoder
            raise RuntimeError("segment encoder made no progress")
        head = b"".join(x.to_bytes(8, "little") for x in (
            enc.out_len, enc.n_ops, enc.ctrl_len, enc.runs_len, enc.lit_len, enc.diff_len))
        payload = b"".join((head, ctrl[: enc.ctrl_len], runs[: enc.runs_len], lit[: enc.lit_len],
                            dif[: enc.diff_len]))
        yield start, int(enc.out_len), payload, tuple(int(x) for x in enc.kind_bytes), int(enc.n_ops)


def _sha256(buf: Buffer) -> bytes:
    return hashlib.sha256(buf).digest()


def write_bsipatch(old: Buffer, new: Buffer, ops: Ops, out: BinaryIO, *, level: int = 19,
                   threads: int = 1, segment_size: int = patchfmt.DEFAULT_SEGMENT_SIZE,
                   old_sha256: bytes, new_sha256: bytes,
                   progress: ProgressFn | None = None) -> PatchInfo:
    """Write ops as a bsipatch stream to ``out``; return its :class:`PatchInfo`."""
    header = Header(patchfmt.VERSION, segment_size, len(old), old_sha256, len(new), new_sha256,
                    patchfmt.CTRL_CAP + patchfmt.RUNS_CAP + segment_size)
    hbytes = header.pack()
    header = Header.unpack(hbytes)
    out.write(hbytes)
    written = len(hbytes)
    segs: list[SegmentHeader] = []
    digests: list[bytes] = []
    newmv = memoryview(new)

    def compress(item: tuple[int, int, bytes, tuple[int, ...], int]) -> tuple[bytes, bytes]:
        off, n, payload, _, _ = item
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        return cctx.compress(payload), _sha256(newmv[off : off + n])

    with cf.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: list[tuple[Any, Any]] = []

        def drain(limit: int) -> None:
            nonlocal written
            while len(pending) > limit:
                item, fut = pending.pop(0)
                comp, out_sha = fut.result()
                off, n, payload, kinds, n_ops = item
                seg = SegmentHeader(len(segs), off, n, len(payload), len(comp), n_ops,
                                    kinds, out_sha)  # type: ignore[arg-type]
                body = seg.body()
                d = SegmentHeader.compute_digest(header.digest, body, comp)
                out.write(body + d)
                out.write(comp)
                written += len(body) + 32 + len(comp)
                segs.append(SegmentHeader(seg.index, off, n, len(payload), len(comp), n_ops,
                                          kinds, out_sha, d))  # type: ignore[arg-type]
                digests.append(d)
                if progress:
                    progress(off + n, len(new))

        for item in iter_segments(ops, old, new, segment_size):
            pending.append((item, pool.submit(compress, item)))
            drain(max(1, threads))
        drain(0)
    trailer = patchfmt.pack_trailer(header, digests)
    out.write(trailer)
    written += len(trailer)
    kinds = [sum(s.kind_bytes[i] for s in segs) for i in range(4)]
    stats = {
        "segment_size": segment_size,
        "n_segments": len(segs),
        "n_ops": sum(s.n_ops for s in segs),
        **{f"{k}_bytes": v for k, v in zip(patchfmt.KIND_NAMES, kinds)},
        "compressed_bytes": sum(s.comp_len for s in segs),
        **ops.stats,
    }
    return PatchInfo("bsipatch", patchfmt.VERSION, len(old), old_sha256, len(new), new_sha256,
                     written, segs, stats)


def diff(old: PathLike | Buffer, new: PathLike | Buffer, patch: PathLike | BinaryIO, *,
         format: str = "bsipatch", level: int = 19, threads: int | None = None,  # noqa: A002
         segment_size: int | None = None, progress: ProgressFn | None = None) -> PatchInfo:
    """Make a patch that turns ``old`` into ``new``.

    Args:
        old: the old image: path or bytes-like.
        new: the new image: path or bytes-like.
        patch: output path (written atomically) or writable binary file.
        format: ``"bsipatch"`` (default) or ``"bsdiff40"`` (classic bsdiff).
        level: zstd compression level for bsipatch (1..22, default 19).
        threads: threads for search and compression (default: all CPUs).
        segment_size: output bytes per segment (default 8 MiB, at most 16 MiB).
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
    seg = segment_size or patchfmt.DEFAULT_SEGMENT_SIZE
    if not 4096 <= seg <= patchfmt.MAX_SEGMENT_SIZE:
        raise ValueError(f"segment_size must be in 4096..{patchfmt.MAX_SEGMENT_SIZE}, not {seg}")
    nthreads = threads or default_threads()
    with ExitStack() as stack:
        old_buf = stack.enter_context(open_buffer(old))
        new_buf = stack.enter_context(open_buffer(new))
        with cf.ThreadPoolExecutor(max_workers=2) as pool:
            if format == "bsipatch":
                f_old = pool.submit(_sha256, old_buf)
                f_new = pool.submit(_sha256, new_buf)
            ops = compute_ops(old_buf, new_buf, threads=nthreads)
            if format == "bsipatch":
                old_sha, new_sha = f_old.result(), f_new.result()
        if is_pathlike(patch):
            out = stack.enter_context(atomic_write(patch))  # type: ignore[arg-type]
        else:
            out = patch  # type: ignore[assignment]
        if format == "bsdiff40":
            from .bsdiff40 import write_bsdiff40

            return write_bsdiff40(old_buf, new_buf, ops, out)
        return write_bsipatch(old_buf, new_buf, ops, out, level=level, threads=nthreads,
                              segment_size=seg, old_sha256=old_sha, new_sha256=new_sha,
                              progress=progress)
