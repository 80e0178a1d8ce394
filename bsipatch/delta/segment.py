"""One segment of a patch: decompress its payload and drive the C applier over it.

:func:`segment_chunks` turns one segment whose digest the reader already checked
into output chunks, in order, checking the payload's lengths and the operation
statistics (and, on request, the segment's output SHA-256). The per-byte work is
in csrc/bsi_patch.c. This module does not read patches, write files or check the
old or the whole new image (see apply.py).
"""

from __future__ import annotations

import itertools
import mmap
import struct

from bsipatch._buffers import zero_digest
from bsipatch._native import error_name, ffi, lib
from bsipatch.delta.patchformat import PAYLOAD_HEADER_SIZE, same_digest
from bsipatch.errors import CorruptPatch, PatchTooLarge, TruncatedPatch
from bsipatch.hashing import Sha256

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from bsipatch.delta.oldimage import OldImage
    from bsipatch.delta.patchformat import Header, SegmentHeader

OUT_CHUNK = 1 << 20
#: Output chunk when reported blocks are skipped: their pages are never touched, and
#: larger chunks mean fewer, larger copies.
SKIP_OUT_CHUNK = 8 << 20
IN_CHUNK = 256 << 10
BLOCK = 4096

_NATIVE_ERRORS = {
    lib.BSI_E_CORRUPT: CorruptPatch,
    lib.BSI_E_RANGE: CorruptPatch,
    lib.BSI_E_OVERFLOW: PatchTooLarge,
    lib.BSI_E_TRUNCATED: TruncatedPatch,
}


def native_error(rc: int, seg: SegmentHeader) -> Exception:
    """The error for a negative applier return code in segment ``seg``."""
    cls = _NATIVE_ERRORS.get(rc, CorruptPatch)
    return cls(f"segment {seg.index}: bad operations ({error_name(rc)})")


def is_zero_segment(seg: SegmentHeader) -> bool:
    """True when the segment declares only ZERO output and the digest of zeros.

    The applier's own counts confirm the first part, so such a segment's output is
    zeros by construction and its digest need not be computed.
    """

    return seg.kind_bytes[3] == seg.out_len and same_digest(
        seg.out_sha256, zero_digest(seg.out_len)
    )


def _decompressed(seg: SegmentHeader, comp: bytes) -> Iterator[bytes]:
    """The segment's payload in pieces: the 56-byte payload header first, whole."""
    if seg.framing is not None:  # version 3: the header comes from the patch header
        from bsipatch.delta.compact import payload_pieces

        yield from payload_pieces(seg.framing, comp, seg.payload_len)
        return
    from bsipatch._zstd import zstd

    zstandard = zstd()

    total = 0
    try:
        dctx = zstandard.ZstdDecompressor()
        with dctx.stream_reader(comp, read_size=IN_CHUNK, read_across_frames=False) as r:
            head = b""
            while len(head) < PAYLOAD_HEADER_SIZE:
                more = r.read(PAYLOAD_HEADER_SIZE - len(head))
                if not more:
                    raise CorruptPatch(f"segment {seg.index}: payload shorter than its header")
                head += more
            total = len(head)
            yield head
            while True:
                data = r.read(IN_CHUNK)
                if not data:
                    break
                total += len(data)
                if total > seg.payload_len:
                    raise CorruptPatch(f"segment {seg.index}: payload longer than declared")
                yield data
    except zstandard.ZstdError as exc:
        raise CorruptPatch(f"segment {seg.index}: zstd: {exc}") from exc
    if total != seg.payload_len:
        raise CorruptPatch(
            f"segment {seg.index}: payload is {total} bytes, declared {seg.payload_len}"
        )


def _buffered_need(header: Header, seg: SegmentHeader, head: bytes) -> int:
    """Bytes of sections the payload header (untrusted, checked) says must be buffered."""
    ctrl_len, runs_len, nruns_len, lit_len = struct.unpack_from("<4Q", head, 16)
    need = ctrl_len + runs_len + nruns_len + lit_len
    if need > header.max_buffered or need > seg.payload_len:
        raise PatchTooLarge(
            f"segment {seg.index}: needs {need} buffered bytes, the header allows "
            f"{header.max_buffered}"
        )
    return int(need)


def segment_chunks(
    old: OldImage,
    header: Header,
    seg: SegmentHeader,
    comp: bytes,
    *,
    verify: bool = True,
    prov: Any = None,
    skip: bool = False,
    buffers: Callable[[], Any] | None = None,
) -> Iterator[memoryview]:
    """Decompress one verified segment and apply it, yielding its output in order.

    Every view but the last is ``min(OUT_CHUNK, out_len)`` bytes (``SKIP_OUT_CHUNK``
    with ``skip``, the buffer's size with ``buffers``), so views start at multiples of
    that into the segment. Without ``buffers`` a view is valid until the next one is
    requested. The generator raises after the last chunk when the segment does not
    verify.

    Args:
        verify: check the output against the segment's ``out_sha256`` (the operation
            statistics are always checked). ``False`` when the caller verifies the
            output another way (the whole image's SHA-256, or a seal).
        prov: a zeroed ``numpy.uint64`` array of ``(phase + out_len) // 4096`` entries
            that the applier fills with the provenance of the whole image blocks the
            segment makes, entry ``j`` for image block ``out_offset // 4096 + j``, with
            ``phase = out_offset % 4096`` (BSI_PROV_* in csrc/bsi_decls_delta.h). A
            reported block lies inside one yielded chunk; its entry is final then.
        skip: do not produce the bytes of blocks reported in ``prov`` (their place in
            the yielded view holds stale bytes); needs ``prov`` and ``verify=False``.
        buffers: returns a fresh writable buffer (all of one size) for each chunk; the
            yielded view is over it and stays valid until the caller reuses it.

    Raises:
        CorruptPatch, TruncatedPatch, PatchTooLarge: bad payload (a wrong segment
        output digest is a CorruptPatch).
    """

    if skip and (prov is None or verify):
        raise ValueError("skip needs prov and verify=False")
    h = Sha256() if verify and not is_zero_segment(seg) else None
    if buffers is None:
        # lazily zeroed pages: what the applier skips (reported blocks) is never touched
        fixed = mmap.mmap(-1, min(SKIP_OUT_CHUNK if skip else OUT_CHUNK, seg.out_len))

        def buffers() -> Any:
            return fixed

    flags = lib.BSI_PATCH_SKIP_REPORTED if skip else 0
    for chunk in _applied(old, header, seg, comp, prov, flags, buffers):
        if h is not None:
            h.update(chunk)
        yield chunk
    if h is not None and not same_digest(h.digest(), seg.out_sha256):
        raise CorruptPatch(f"segment {seg.index}: output SHA-256 mismatch")


def _applied(
    old: OldImage,
    header: Header,
    seg: SegmentHeader,
    comp: bytes,
    prov: Any,
    flags: int,
    buffers: Callable[[], Any],
) -> Iterator[memoryview]:
    """Drive the C applier over the segment's payload, yielding full output buffers;
    check that the payload was complete and exact and matches its statistics."""
    if prov is not None and old.source is not None:
        raise ValueError("provenance is not reported from a predicted old image")
    pprov = ffi.cast("uint64_t *", prov.ctypes.data) if prov is not None else ffi.NULL
    nprov = 0 if prov is None else len(prov)
    st = ffi.new("bsi_patch_state *")
    ob = ffi.new("bsi_outbuf *")
    ib = ffi.new("bsi_inbuf *")
    out: Any = None
    payload = _decompressed(seg, comp)
    head = next(payload)
    cap = _buffered_need(header, seg, head)
    scratch = bytearray(cap)
    pscratch = ffi.from_buffer(scratch) if cap else ffi.NULL
    lib.bsi_patch_init(st, seg.out_len, old.size, cap)
    if seg.dense:
        lib.bsi_patch_set_mode(st, lib.BSI_PATCH_DENSE)
    if prov is not None:
        lib.bsi_patch_set_phase(st, seg.out_offset % BLOCK)
    for data in itertools.chain((head,), payload, (b"",)):
        keep = ffi.from_buffer(data) if data else ffi.NULL
        ib.ptr, ib.size, ib.pos = keep, len(data), 0
        while True:
            if out is None:  # a buffer only while there is output to make
                if st.out_done < st.out_total:
                    out = buffers()
                    ob.ptr, ob.size, ob.pos = ffi.from_buffer(out), len(out), 0
                else:
                    ob.ptr, ob.size, ob.pos = ffi.NULL, 0, 0
            if old.source is not None:  # the predicted old image made on demand
                with old.source_lock:  # one scratch buffer: one segment at a time
                    rc = lib.bsi_patch_feed_src(st, old.source, pscratch, cap, ib, ob)
            else:
                rc = lib.bsi_patch_feed_prov(
                    st, old.ptr, old.size, pscratch, cap, ib, ob, pprov, nprov, flags
                )
            if rc < 0:
                raise native_error(rc, seg)
            if out is not None and (ob.pos == ob.size or st.out_done == st.out_total):
                yield memoryview(out)[: ob.pos]
                old.note_output(ob.pos)
                out = None
            if rc == 0:
                break
        if ib.pos != ib.size:  # pragma: no cover - the C side reports this as an error
            raise CorruptPatch(f"segment {seg.index}: unused payload bytes")
    rc = lib.bsi_patch_finish(st)
    if rc < 0:
        raise native_error(rc, seg)
    if tuple(st.kind_bytes) != seg.kind_bytes:
        raise CorruptPatch(f"segment {seg.index}: operations differ from its statistics")
