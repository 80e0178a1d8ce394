"""Making patches: compute the operations from old to new and write them as a patch.

The pipeline: the ops from search.py (block pre-pass, suffix arrays, search; old
and new hashed meanwhile on a side thread) -> segment encoding (C) -> zstd
compression of the segments, each in up to two frames, on threads -> the bsipatch
stream (or BSDIFF40 via bsdiff40.py). One progress bar covers both halves.
This module does the orchestration and the file I/O; it does not apply patches.
"""

from __future__ import annotations

import concurrent.futures as cf
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
from bsipatch.delta.search import (
    COST_INDEX,
    COST_SCAN,
    COST_WRITE,
    HOLE_MIN,
    PAGE_DROP_ABOVE,
    Meter,
    Ops,
    _anon,
    _ptr,
    compute_ops,
)
from bsipatch.hashing import Sha256

# zstandard, the patch framing and the temp-file helpers are imported where they are
# used, after the suffix-array phase: that phase is the diff's memory peak, and these
# modules add several MB of resident memory.
if TYPE_CHECKING:
    import zstandard

    from bsipatch._io import PathLike
    from bsipatch.delta.patchformat import PatchInfo

ProgressFn = Callable[[int, int], None]


#: zstd level. Measured on libcrypto 3.0.20 -> 3.0.22 (two frames of 388 + 353 KB,
#: compressed in parallel): level 19 190,892 B in 71 ms (the longer frame), 18
#: 191,612 B in 51 ms, 17 196,534 B in 32 ms; bsdiff's patch is 204,087 B.
DEFAULT_LEVEL = 18
#: Default and largest output bytes per segment (patchfmt checks the same limit). Each
#: segment costs 112 header bytes and its own zstd frame: on the 92 MB near-identical
#: bench pair 128 MiB (one segment) makes 716 bytes of patch, 64 MiB 880.
DEFAULT_SEGMENT_SIZE = 128 << 20
MAX_SEGMENT_SIZE = 256 << 20
#: Inputs larger than this (old + new) are hashed while the pre-pass runs.
EARLY_HASH_ABOVE = 64 << 20
#: A segment payload whose buffered sections and diff section are both at least this
#: long is written as two zstd frames, compressed in parallel (docs/patch-format.md).
FRAME_SPLIT_MIN = 64 << 10


def native_sha256(buf: Buffer) -> bytes:
    """SHA-256 of a buffer with the native core (GIL released, no OpenSSL)."""
    out = ffi.new("uint8_t[32]")
    lib.bsi_sha256(_ptr(buf), len(buf), out)
    return bytes(ffi.buffer(out))


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
    h = Sha256()
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


#: Payloads at least this long are sampled for compressibility (level_for).
SAMPLE_ABOVE = 1 << 20
SAMPLE_PIECES, SAMPLE_LEN = 8, 16 << 10
#: A payload whose samples shrink by less than this fraction at zstd level 1 is taken as
#: incompressible (random literals: a scattered change in an encrypted or compressed
#: image) and compressed at FAST_LEVEL. Measured on 2 MiB of random bytes: level 18
#: 2.7 MB/s, level 1 1.9 GB/s, both 2,097,209-2,097,210 bytes out.
INCOMPRESSIBLE_SAVING = 0.02
FAST_LEVEL = 1


def level_for(data: bytes | memoryview, level: int) -> int:
    """The zstd level for one frame: ``level``, or FAST_LEVEL when sampling says the data
    will not compress (then a high level only costs time)."""
    import zstandard

    n = len(data)
    if n < SAMPLE_ABOVE or level <= FAST_LEVEL:
        return level
    mv = memoryview(data)
    step = (n - SAMPLE_LEN) // (SAMPLE_PIECES - 1)
    sample = b"".join(mv[i * step : i * step + SAMPLE_LEN] for i in range(SAMPLE_PIECES))
    packed = len(zstandard.ZstdCompressor(level=1).compress(sample))
    return FAST_LEVEL if packed > len(sample) * (1 - INCOMPRESSIBLE_SAVING) else level


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
    transform: bytes | None = None,
) -> PatchInfo:
    """Write ops as a bsipatch stream to ``out``; return its :class:`PatchInfo`.

    ``progress(n, len(new))`` is called after each segment with that segment's output
    bytes ``n`` (an increment, so diff() can add it to its own bar). With ``transform``
    (an executable transform's body, exe.py) the patch is version 2: ``old`` is then the
    predicted old image the ops were computed against."""
    import zstandard

    from bsipatch.delta import patchformat as patchfmt
    from bsipatch.delta.patchformat import Header, PatchInfo, SegmentHeader

    written = 0
    made: list[Header] = []
    chain: list[bytes] = []

    def start() -> Header:
        # written when the first segment is: packing it (hashlib's import, two
        # digests) then overlaps the first segment's compression
        nonlocal written
        if not made:
            header = Header(
                patchfmt.VERSION_TRANSFORM if transform is not None else patchfmt.VERSION,
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
            if transform is not None:
                from bsipatch.delta.exe import pack_block

                block, digest = pack_block(made[0].digest, transform)
                chain.append(digest)
                out.write(block)
                written += len(block)
        return made[0]

    segs: list[SegmentHeader] = []
    digests: list[bytes] = []

    def frame(data: bytes | memoryview) -> bytes:
        lvl = level_for(data, level)
        cctx = zstandard.ZstdCompressor(compression_params=zstd_params(lvl, len(data)))
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
                    progress(n, len(new))  # this segment's output bytes (not a running total)

        for item in iter_segments(ops, old, new, segment_size):
            pending.append((item, submit(item)))
            drain(max(1, threads))
        drain(0)
    header = start()
    trailer = patchfmt.pack_trailer(header, digests, tuple(chain))
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
    if transform is not None:
        stats["transform_bytes"] = len(transform)
    return PatchInfo(
        "bsipatch",
        header.version,
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
    exe: bool = True,
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
        segment_size: largest output bytes per segment (default 128 MiB, at most 256 MiB);
            a segment also ends when its literal or difference section reaches 8 MiB.
        progress: ``(done, total)`` callback.
        exe: for two ELF files (x86-64 or AArch64), make a reference-aware patch
            (version 2, docs/patch-format.md "Executable transform"); False: never.

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
        # one bar over everything: pre-pass, suffix sort, search, then writing
        n_new = len(new_buf)
        meter = Meter(
            progress,
            n_new,
            len(old_buf) * COST_INDEX + n_new * COST_SCAN + n_new * COST_WRITE,
        )

        def on_write(done: int, total: int) -> None:
            meter.add(done * COST_WRITE)

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
        prep = None
        if exe and format == "bsipatch":
            from bsipatch.delta.exeplan import prepare

            def align(o: Buffer, n: Buffer) -> Ops:
                return compute_ops(o, n, threads=nthreads)

            prep = prepare(old_buf, new_buf, align)
            if prep is None:  # an image: its ELF files, if any moved code
                from bsipatch.delta.exeimage import prepare_image

                prep = prepare_image(
                    old_buf, new_buf, align, path=old if is_pathlike(old) else None
                )
        base = prep.predicted if prep is not None else old_buf
        ops = compute_ops(base, new_buf, threads=nthreads, meter=meter)
        if early is not None:
            old_sha, new_sha = early.result()
        from bsipatch._io import atomic_write

        out: BinaryIO = stack.enter_context(atomic_write(patch)) if is_pathlike(patch) else patch
        if format == "bsdiff40":
            from bsipatch.delta.bsdiff40 import write_bsdiff40

            info = write_bsdiff40(old_buf, new_buf, ops, out)
            meter.finish()
            return info
        info = write_bsipatch(
            base,
            new_buf,
            ops,
            out,
            level=level,
            threads=nthreads,
            segment_size=seg,
            old_sha256=old_sha,
            new_sha256=new_sha,
            progress=on_write,
            transform=prep.block if prep is not None else None,
        )
        meter.finish()
        return info
