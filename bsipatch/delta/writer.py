"""Writing a patch: encode operations into segments, compress them, frame them.

:func:`write_bsipatch` turns the ops of search.py into segment payloads (the C
encoder, csrc/bsi_diff.c), compresses each payload in up to two zstd frames on
threads, and writes the framing: version 3 (compact.py) when the output is one
segment, keeping the smaller of the sparse and the dense difference stream and
storing the payload raw when zstd does not help; else version 1, or 2 with an
executable transform (patchformat.py). It does not search for differences or pick
the transform (diff.py) and does not apply patches.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from bsipatch._buffers import ZEROS as _ZERO
from bsipatch._buffers import Buffer, drop_pages, holes, zero_digest
from bsipatch._native import check, ffi, lib
from bsipatch.delta.search import HOLE_MIN, PAGE_DROP_ABOVE, Ops, _anon, _ptr
from bsipatch.hashing import Sha256

# zstandard and the patch framing are imported where they are used, after the
# suffix-array phase: that phase is the diff's memory peak, and these modules add
# several MB of resident memory.
if TYPE_CHECKING:
    import zstandard

    from bsipatch.delta.patchformat import Header, PatchInfo, SegmentHeader

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
#: A segment payload whose buffered sections and diff section are both at least this
#: long is written as two zstd frames, compressed in parallel (docs/patch-format.md).
FRAME_SPLIT_MIN = 64 << 10
#: Choosing a segment's difference stream (dense_wins): dense differences up to
#: EXACT_PARTS_BELOW bytes are tried at the patch's level, larger ones at
#: ESTIMATE_LEVEL (level 3 ranked the two wrongly on small code-like changes; 7 ranks
#: them as level 18 does on libcrypto, at a fifth of the time); the dense stream is
#: not tried when it is more than DENSE_MAX_RATIO times the sparse parts.
EXACT_PARTS_BELOW = 256 << 10
ESTIMATE_LEVEL = 7
DENSE_MAX_RATIO = 8
#: One-segment payloads up to this size (sparse + dense) are compressed both ways at
#: the full level and the smaller kept; larger ones are chosen by dense_wins(). (On
#: libexpat 2.5.0 deb12u2 -> u5 arm64 without the transform the parts alone say sparse,
#: 9,386 against 9,819 B at level 18, the whole payloads dense, 23,050 against 23,488:
#: zstd finds the differences' matches in the other sections too.)
EXACT_CHOICE_BELOW = 512 << 10


def native_sha256(buf: Buffer) -> bytes:
    """SHA-256 of a buffer with the native core (GIL released, no OpenSSL)."""
    out = ffi.new("uint8_t[32]")
    lib.bsi_sha256(_ptr(buf), len(buf), out)
    return bytes(ffi.buffer(out))


Segment = tuple[int, int, bytes, tuple[int, ...], int]
#: A segment and its dense twin (None when it has none): :func:`iter_segment_pairs`.
Pair = tuple[Segment, "Segment | None"]


class _Encoder:
    """The C segment encoder with its section buffers (reused from segment to segment)."""

    def __init__(self, ops: Ops, old: Buffer, new: Buffer) -> None:
        from bsipatch.delta import patchformat as pf

        self.ops, self.n_old, self.n_new = ops, len(old), len(new)
        self.pold, self.pnew = _ptr(old), _ptr(new)
        self.bufs: list[Any] = [bytearray(pf.CTRL_CAP), bytearray(pf.RUNS_CAP)]
        self.bufs.append(bytearray(pf.RUNS_CAP))
        self.bufs += [_anon(pf.LIT_CAP), _anon(pf.DIFF_CAP)]

    def encode(self, enc: Any, max_out: int) -> Segment:
        """One segment from ``enc``'s cursor (advanced), at most ``max_out`` bytes."""
        start = int(enc.new_pos)
        args = [a for b in self.bufs for a in (ffi.from_buffer(b), len(b))]
        rc = lib.bsi_seg_encode(
            enc, self.ops.array, self.ops.count, self.pold, self.n_old, self.pnew, self.n_new,
            max_out, *args,
        )  # fmt: skip
        check(rc, "segment encoding")
        if enc.out_len == 0:  # pragma: no cover - would be a bug in the encoder
            raise RuntimeError("segment encoder made no progress")
        lens = (enc.ctrl_len, enc.runs_len, enc.nruns_len, enc.lit_len, enc.diff_len)
        head = b"".join(int(x).to_bytes(8, "little") for x in (enc.out_len, enc.n_ops, *lens))
        parts = [b[:n] for b, n in zip(self.bufs, lens, strict=True)]
        payload = b"".join((head, *parts))
        kinds = tuple(int(x) for x in enc.kind_bytes)
        return (start, int(enc.out_len), payload, kinds, int(enc.n_ops))


def iter_segments(
    ops: Ops, old: Buffer, new: Buffer, segment_size: int, *, dense: bool = False
) -> Iterator[Segment]:
    """Encode ops into segment payloads (``dense``: the dense difference stream).

    Yields:
        (out_offset, out_len, payload, kind_bytes, n_ops) per segment; the payload
        starts with its 56-byte header (docs/patch-format.md, "Segment payload").
    """
    enc = ffi.new("bsi_seg_enc *")
    enc.dense = int(dense)
    encoder = _Encoder(ops, old, new)
    while enc.new_pos < len(new):
        yield encoder.encode(enc, segment_size)


def iter_segment_pairs(
    ops: Ops, old: Buffer, new: Buffer, segment_size: int
) -> Iterator[tuple[Segment, Segment | None]]:
    """Each segment of :func:`iter_segments` with its dense twin: the same output range
    with the dense difference stream, or None when the segment has no ADD bytes or the
    dense sections would not hold that range."""
    enc = ffi.new("bsi_seg_enc *")
    twin = ffi.new("bsi_seg_enc *")
    twin.dense = 1
    encoder = _Encoder(ops, old, new)
    while enc.new_pos < len(new):
        twin.op_index, twin.op_skip, twin.new_pos = enc.op_index, enc.op_skip, enc.new_pos
        sparse = encoder.encode(enc, segment_size)
        dense = None
        if sparse[3][lib.BSI_OP_ADD] and not dense_hopeless(sparse):
            dense = encoder.encode(twin, sparse[1])
            dense = dense if dense[1] == sparse[1] else None
        yield sparse, dense


def _sections(payload: bytes) -> tuple[int, ...]:
    """ctrl, runs, nruns, lit, diff lengths of a payload (from its header)."""
    return tuple(int.from_bytes(payload[i : i + 8], "little") for i in range(16, 56, 8))


def dense_hopeless(sparse: Segment) -> bool:
    """Whether the dense twin of ``sparse`` would lose without a trial, so need not be
    encoded: its differences (the segment's ADD bytes) are more than DENSE_MAX_RATIO
    times the sparse parts (dense_wins says no) and the two payloads are too long for
    _compact's exact trial (libcrypto 3.0.20 -> 3.0.22: a 3.5 MB dense payload against
    199 KB, whose encoding cost 20-60 ms of the diff)."""
    _ctrl, runs, nruns, _lit, dif = _sections(sparse[2])
    add = int(sparse[3][lib.BSI_OP_ADD])
    return add > DENSE_MAX_RATIO * (runs + nruns + dif) and len(sparse[2]) + add > (
        EXACT_CHOICE_BELOW
    )


def dense_wins(sparse: Segment, dense: Segment, level: int) -> bool:
    """Whether the dense difference stream compresses smaller, judged on the parts that
    differ (runs sections and differences): at ``level`` when the dense differences
    are at most EXACT_PARTS_BELOW bytes, else at ESTIMATE_LEVEL; never when they are
    more than DENSE_MAX_RATIO times the sparse parts (ADD stretches that are mostly
    unchanged bytes: libcrypto 3.0.20 -> 3.0.22 has 3.9 MB of dense differences
    against 0.7 MB of sparse parts, compressing to 208 KB against 193 KB at level 18,
    and the dense trial alone would cost 0.85 CPU s)."""
    import zstandard

    ctrl, runs, nruns, _lit, dif = _sections(sparse[2])
    dd = _sections(dense[2])[4]
    if dd > DENSE_MAX_RATIO * (runs + nruns + dif):
        return False
    lvl = level if dd <= EXACT_PARTS_BELOW else min(level, ESTIMATE_LEVEL)
    cctx = zstandard.ZstdCompressor(level=lvl)
    sp, dp = memoryview(sparse[2]), memoryview(dense[2])
    cost = len(cctx.compress(sp[56 + ctrl : 56 + ctrl + runs + nruns]))
    cost += len(cctx.compress(sp[len(sp) - dif :]))
    return len(cctx.compress(dp[len(dp) - dd :])) < cost


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


def zstd_params(
    level: int, size: int, *, magicless: bool = False
) -> zstandard.ZstdCompressionParameters:
    """zstd parameters for one segment payload: the level's, with smaller match tables
    (``magicless``: version 3's frames, without magic, content size or checksum).

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
        write_content_size=0 if magicless else 1,
        write_checksum=0,
        write_dict_id=0,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS if magicless else zstandard.FORMAT_ZSTD1,
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


def _frames(
    pool: cf.Executor, payload: bytes | memoryview, cut: int, level: int, magicless: bool
) -> list[Any]:
    """Futures of the zstd frames of one payload: two (cut at ``cut``, the start of the
    diff section) compressed in parallel when both parts are long enough, else one."""

    def frame(data: bytes | memoryview) -> bytes:
        import zstandard

        params = zstd_params(level_for(data, level), len(data), magicless=magicless)
        return zstandard.ZstdCompressor(compression_params=params).compress(data)

    if min(cut, len(payload) - cut) >= FRAME_SPLIT_MIN:
        mv = memoryview(payload)
        return [pool.submit(frame, mv[:cut]), pool.submit(frame, mv[cut:])]
    return [pool.submit(frame, payload)]


def _summary(
    version: int,
    old: Buffer,
    new: Buffer,
    segment_size: int,
    shas: tuple[bytes, bytes],
    written: int,
    segs: list[SegmentHeader],
    stats: dict[str, Any],
) -> PatchInfo:
    """The :class:`PatchInfo` of a patch just written."""
    from bsipatch.delta.patchformat import KIND_NAMES, PatchInfo

    kinds = [sum(s.kind_bytes[i] for s in segs) for i in range(4)]
    summary = {
        "segment_size": segment_size,
        "n_segments": len(segs),
        "n_ops": sum(s.n_ops for s in segs),
        **{f"{k}_bytes": v for k, v in zip(KIND_NAMES, kinds, strict=True)},
        "compressed_bytes": sum(s.comp_len for s in segs),
        **stats,
    }
    return PatchInfo(
        "bsipatch", version, len(old), shas[0], len(new), shas[1], written, segs, summary
    )


class _Framed:
    """Writes a version 1 or 2 patch: header, [transform block], segments, trailer.

    Segments compress on ``threads`` threads (each in up to two frames) and are
    written in order as they finish; the header goes out with the first segment.
    """

    def __init__(self, old: Buffer, new: Buffer, out: BinaryIO, opts: _Options) -> None:
        self.old, self.new, self.out, self.o = old, new, out, opts
        self.written = 0
        self.header: Header | None = None
        self.chain: list[bytes] = []
        self.segs: list[SegmentHeader] = []

    def start(self) -> Header:
        """The patch header, written (with the transform block) on first use."""
        from bsipatch.delta import patchformat as pf

        if self.header is None:
            o = self.o
            version = pf.VERSION_TRANSFORM if o.transform is not None else pf.VERSION
            buffered = pf.CTRL_CAP + 2 * pf.RUNS_CAP + pf.LIT_CAP
            header = pf.Header(
                version,
                o.segment_size,
                len(self.old),
                o.old_sha256,
                len(self.new),
                o.new_sha256,
                buffered,
                pf.PAYLOAD_HEADER_SIZE + buffered + pf.DIFF_CAP,
                flags=pf.FLAG_SEGMENT_MODES,
            )
            hbytes = header.pack()
            self.header = pf.Header.unpack(hbytes)
            self._write(hbytes)
            if o.transform is not None:
                from bsipatch.delta.exe import pack_block

                block, digest = pack_block(self.header.digest, o.transform)
                self.chain.append(digest)
                self._write(block)
        return self.header

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def _out_sha(self, off: int, n: int, kinds: tuple[int, ...]) -> bytes:
        if off == 0 and n == len(self.new):
            return self.o.new_sha256  # one segment: its output is the new image
        if kinds[lib.BSI_OP_ZERO] == n:
            return zero_digest(n)
        return _sha256_range(self.new, off, n)

    def submit(self, pool: cf.Executor, pair: Pair) -> tuple[Segment, bool, list[Any]]:
        """Choose one segment's difference stream, start compressing it and hashing
        its output."""
        dense = pair[1] is not None and dense_wins(pair[0], pair[1], self.o.level)
        item = pair[1] if dense and pair[1] is not None else pair[0]
        off, n, payload, kinds, _ = item
        cut = len(payload) - int.from_bytes(payload[48:56], "little")
        frames = _frames(pool, payload, cut, self.o.level, magicless=False)
        return item, dense, [*frames, pool.submit(self._out_sha, off, n, kinds)]

    def finish_segment(self, item: Segment, dense: bool, futs: list[Any]) -> None:
        """Write one segment whose compression finished."""
        from bsipatch.delta.patchformat import SegmentHeader

        header = self.start()
        comp = b"".join(f.result() for f in futs[:-1])
        off, n, payload, kinds, n_ops = item
        k4 = (kinds[0], kinds[1], kinds[2], kinds[3])
        fields = (len(self.segs), off, n, len(payload), len(comp), n_ops, k4, futs[-1].result())
        body = SegmentHeader(*fields, dense=dense).body()
        d = SegmentHeader.compute_digest(header.digest, body, comp)
        self._write(body + d)
        self._write(comp)
        self.segs.append(SegmentHeader(*fields, d, dense=dense))
        if len(self.old) + len(self.new) > PAGE_DROP_ABOVE:
            drop_pages(self.new)
            drop_pages(self.old)
        if self.o.progress:
            self.o.progress(n, len(self.new))  # this segment's bytes (not a running total)

    def write(self, pairs: Iterator[Pair], stats: dict[str, Any]) -> PatchInfo:
        """Write every segment of ``pairs`` (each with its dense twin) and the trailer."""
        from bsipatch.delta.patchformat import pack_trailer

        threads = max(1, self.o.threads)
        with cf.ThreadPoolExecutor(max_workers=threads) as pool:
            pending: list[tuple[Segment, bool, list[Any]]] = []
            for pair in pairs:
                pending.append(self.submit(pool, pair))
                while len(pending) > threads:
                    self.finish_segment(*pending.pop(0))
            for item, dense, futs in pending:
                self.finish_segment(item, dense, futs)
        header = self.start()
        self._write(pack_trailer(header, [s.digest for s in self.segs], tuple(self.chain)))
        stats["dense_segments"] = sum(s.dense for s in self.segs)
        if self.o.transform is not None:
            stats["transform_bytes"] = len(self.o.transform)
        shas = (self.o.old_sha256, self.o.new_sha256)
        return _summary(
            header.version,
            self.old,
            self.new,
            self.o.segment_size,
            shas,
            self.written,
            self.segs,
            stats,
        )


def _compact(
    old: Buffer, new: Buffer, ops: Ops, pair: Pair, opts: _Options
) -> tuple[bytes, PatchInfo]:
    """A version 3 patch (one segment) and its :class:`PatchInfo`. The difference stream
    that compresses smaller is kept (small payloads: both compressed at the full level;
    others: dense_wins()), and the payload is stored raw when zstd does not make it
    smaller."""
    from bsipatch.delta import compact as cp
    from bsipatch.delta.patchformat import SegmentHeader

    sparse, dense = pair
    cands = [(sparse, 0)]
    if dense is not None:
        if len(sparse[2]) + len(dense[2]) <= EXACT_CHOICE_BELOW:
            cands.append((dense, cp.FLAG_DENSE))
        elif dense_wins(sparse, dense, opts.level):
            cands = [(dense, cp.FLAG_DENSE)]
    with cf.ThreadPoolExecutor(max_workers=max(1, opts.threads)) as pool:
        tried = []
        for item, flag in cands:
            sections = memoryview(item[2])[56:]
            cut = len(sections) - int.from_bytes(item[2][48:56], "little")
            tried.append((item, flag, sections, _frames(pool, sections, cut, opts.level, True)))
        xfm = _frames(pool, opts.transform, 0, 19, True) if opts.transform else []
        done = [(it, flag, sec, b"".join(f.result() for f in fut)) for it, flag, sec, fut in tried]
        best = min(done, key=lambda c: len(c[3]))
        xcomp = b"".join(f.result() for f in xfm)
    item, flags, sections, comp = best
    if len(sections) <= len(comp):
        comp, flags = bytes(sections), flags | cp.FLAG_RAW
    _, n, payload, kinds, n_ops = item
    lengths = tuple(int.from_bytes(payload[i : i + 8], "little") for i in range(16, 56, 8))
    fields = cp.Fields(
        flags | (cp.FLAG_TRANSFORM if opts.transform else 0),
        len(old),
        opts.old_sha256,
        n,
        opts.new_sha256,
        n_ops,
        (kinds[0], kinds[1], kinds[2], kinds[3]),
        lengths,  # type: ignore[arg-type]
        len(comp),
        len(opts.transform or b""),
        len(xcomp),
    )
    head = cp.pack_header(fields)
    digest = native_sha256(head + xcomp + comp)
    data = b"".join((head, xcomp, comp, digest))
    dense_seg = bool(flags & cp.FLAG_DENSE)
    seg = SegmentHeader(
        0, 0, n, fields.payload_len, len(comp), n_ops, fields.kind_bytes, opts.new_sha256,
        dense=dense_seg,
    )  # fmt: skip
    stats = dict(ops.stats)
    stats["dense_segments"] = int(dense_seg)
    if opts.transform is not None:
        stats["transform_bytes"] = len(opts.transform)
    shas = (opts.old_sha256, opts.new_sha256)
    return data, _summary(3, old, new, n, shas, len(data), [seg], stats)


class _Options(NamedTuple):
    """How write_bsipatch writes (see its arguments)."""

    level: int
    threads: int
    segment_size: int
    old_sha256: bytes
    new_sha256: bytes
    progress: ProgressFn | None
    transform: bytes | None


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
    compact: bool = True,
) -> PatchInfo:
    """Write ops as a bsipatch stream to ``out``; return its :class:`PatchInfo`.

    A patch whose output is one segment is written in the compact framing (version 3)
    unless ``compact`` is False; others as version 1, or 2 with ``transform`` (an
    executable transform's body, exe.py; ``old`` is then the predicted old image the
    ops were computed against). ``progress(n, len(new))`` is called after each segment
    with that segment's output bytes ``n`` (an increment, so diff() can add it to its
    own bar)."""
    opts = _Options(level, threads, segment_size, old_sha256, new_sha256, progress, transform)
    items = iter_segment_pairs(ops, old, new, segment_size)
    first = next(items, None)
    second = next(items, None) if first is not None else None
    if compact and first is not None and second is None:
        data, info = _compact(old, new, ops, first, opts)
        out.write(data)
        if progress:
            progress(len(new), len(new))
        return info
    head = [x for x in (first, second) if x is not None]
    return _Framed(old, new, out, opts).write(itertools.chain(head, items), dict(ops.stats))
