"""The patch format and the C streaming applier: framing, limits, corruption, chunking."""

from __future__ import annotations

import io
import itertools
import os
import random
import struct

import pytest

from bsipatch._native import ffi, lib
from bsipatch.delta import patchformat as patchfmt
from bsipatch.delta.apply import apply, iter_apply
from bsipatch.delta.diff import compute_ops, diff, iter_segments
from bsipatch.delta.info import read_patch_info
from bsipatch.errors import (
    CorruptPatch,
    OutputMismatch,
    PatchError,
    PatchTooLarge,
    TruncatedPatch,
    UnsupportedPatch,
)


def _pair(seed: int = 1, size: int = 60_000) -> tuple[bytes, bytes]:
    rnd = random.Random(seed)
    old = bytes(rnd.randrange(8) for _ in range(size))
    new = bytearray(old)
    for _ in range(40):
        new[rnd.randrange(len(new))] = rnd.randrange(256)
    new[1000:1000] = os.urandom(500)
    del new[30000:30200]
    new += old[:4096]
    return old, bytes(new)


def _make(old: bytes, new: bytes, **kw) -> bytes:
    out = io.BytesIO()
    diff(old, new, out, **kw)
    return out.getvalue()


def _payload_apply(old: bytes, payload: bytes, out_len: int, step: int) -> bytes:
    """Drive the C state machine directly, feeding ``step`` bytes per call."""
    st = ffi.new("bsi_patch_state *")
    cap = len(payload)
    scratch = ffi.new("uint8_t[]", max(cap, 1))
    out = bytearray(7)  # a tiny output buffer forces many "output full" stops
    ob = ffi.new("bsi_outbuf *")
    keep_out = ffi.from_buffer(out)
    ob.ptr, ob.size, ob.pos = keep_out, len(out), 0
    ib = ffi.new("bsi_inbuf *")
    assert lib.bsi_patch_init(st, out_len, len(old), cap) == 0
    pold = ffi.from_buffer(old) if old else ffi.NULL
    result = bytearray()
    for i in range(0, len(payload) + 1, step):
        data = payload[i : i + step]
        keep = ffi.from_buffer(data) if data else ffi.NULL
        ib.ptr, ib.size, ib.pos = keep, len(data), 0
        while True:
            rc = lib.bsi_patch_feed(st, pold, len(old), scratch, cap, ib, ob)
            assert rc >= 0, ffi.string(lib.bsi_error_name(rc))
            result += out[: ob.pos]
            ob.pos = 0
            if rc == 0:
                break
        assert ib.pos == ib.size
    assert lib.bsi_patch_finish(st) == 0
    return bytes(result)


@pytest.mark.parametrize("step", [1, 3, 64, 4096, 1 << 20])
def test_state_machine_accepts_any_chunking(step: int) -> None:
    old, new = _pair()
    ops = compute_ops(old, new, threads=2)
    got = bytearray()
    for off, n, payload, _, _ in iter_segments(ops, old, new, 16384):
        if step == 1 and off > 40000:
            got += new[off : off + n]  # one byte at a time is slow in Python: first segments
            continue
        got += _payload_apply(old, payload, n, step)
    assert bytes(got) == new


def test_header_roundtrip_and_fields() -> None:
    old, new = _pair()
    p = _make(old, new, segment_size=16384)
    h = patchfmt.Header.unpack(p[: patchfmt.HEADER_SIZE])
    assert p[:8] == b"BSIPATCH"
    assert h.old_size == len(old) and h.new_size == len(new)
    info = read_patch_info(p)
    assert info.format == "bsipatch"
    assert len(info.segments) == (len(new) + 16383) // 16384
    assert sum(s.out_len for s in info.segments) == len(new)
    st = info.stats
    assert st["copy_bytes"] + st["add_bytes"] + st["insert_bytes"] + st["zero_bytes"] == len(new)


def test_truncated_at_every_region_raises_typed_error() -> None:
    old, new = _pair()
    p = _make(old, new, segment_size=16384)
    cuts = sorted(
        set(
            list(range(0, 200))
            + list(range(0, len(p), max(1, len(p) // 150)))
            + [len(p) - i for i in range(1, 60)]
        )
    )
    for cut in cuts:
        with pytest.raises(TruncatedPatch):
            apply(old, p[:cut], io.BytesIO())


def test_corrupted_bytes_are_refused() -> None:
    old, new = _pair()
    p = _make(old, new, segment_size=16384)
    rnd = random.Random(7)
    positions = sorted(set(list(range(0, 160)) + rnd.sample(range(len(p)), 250)))
    for pos in positions:
        bad = bytearray(p)
        bad[pos] ^= 1 << rnd.randrange(8)
        with pytest.raises(PatchError):
            apply(old, bytes(bad), io.BytesIO())


def test_extra_bytes_after_trailer_refused() -> None:
    old, new = _pair()
    p = _make(old, new)
    with pytest.raises(CorruptPatch):
        apply(old, p + b"\0", io.BytesIO())


def test_wrong_version_and_magic() -> None:
    old, new = _pair()
    for compact in (True, False):
        p = bytearray(_make(old, new, compact=compact))
        p[8] = 4  # versions 1, 2 (an executable transform) and 3 (compact) exist
        with pytest.raises(UnsupportedPatch):
            apply(old, bytes(p), io.BytesIO())
    p = bytearray(_make(old, new, compact=False))
    p[8] = 3  # a version 1 header read as the compact framing: refused, typed
    with pytest.raises(PatchError):
        apply(old, bytes(p), io.BytesIO())
    with pytest.raises(UnsupportedPatch):
        apply(old, b"NOTAPATCH" + bytes(200), io.BytesIO())
    with pytest.raises(TruncatedPatch):
        apply(old, b"BSIP", io.BytesIO())


def _forge(
    old: bytes,
    new_size: int,
    segs: list[tuple[bytes, int]],
    *,
    declared_new: int,
    max_buffered: int = 1 << 20,
    cuts: tuple[int, ...] = (),
    junk: bytes = b"",
) -> bytes:
    """A patch with valid digests around hand-made payloads (an attacker can do this).

    Each payload is compressed as one zstd frame, or one frame per piece between
    ``cuts``; ``junk`` is appended to every segment's compressed bytes.
    """
    import hashlib

    import zstandard

    h = patchfmt.Header(
        1,
        1 << 20,
        len(old),
        hashlib.sha256(old).digest(),
        declared_new,
        hashlib.sha256(b"x").digest(),
        max_buffered,
    )
    hb = h.pack()
    h = h._replace(digest=hb[-32:])
    parts = [hb]
    digests = []
    off = 0
    for payload, out_len in segs:
        edges = [0, *cuts, len(payload)]
        comp = b"".join(
            zstandard.ZstdCompressor().compress(payload[a:b]) for a, b in itertools.pairwise(edges)
        )
        comp += junk
        seg = patchfmt.SegmentHeader(
            len(digests),
            off,
            out_len,
            len(payload),
            len(comp),
            1,
            (0, 0, 0, out_len),
            hashlib.sha256(bytes(out_len)).digest(),
        )
        body = seg.body()
        d = patchfmt.SegmentHeader.compute_digest(h.digest, body, comp)
        parts += [body, d, comp]
        digests.append(d)
        off += out_len
    parts.append(patchfmt.pack_trailer(h, digests))
    return b"".join(parts)


def _payload(
    out_len: int, ctrl: bytes, runs: bytes = b"", lit: bytes = b"", dif: bytes = b"", n_ops: int = 1
) -> bytes:
    return (
        struct.pack("<7Q", out_len, n_ops, len(ctrl), len(runs), 0, len(lit), len(dif))
        + ctrl
        + runs
        + lit
        + dif
    )


def test_forged_ops_out_of_range_are_refused() -> None:
    old = bytes(range(256)) * 4
    # COPY of 100 bytes from offset 2000 (beyond old)
    ctrl = bytes([(100 << 2 | 0) & 0x7F | 0x80, 100 >> 5, 0xA0, 0x1F])
    p = _forge(old, 100, [(_payload(100, ctrl), 100)], declared_new=100)
    with pytest.raises(CorruptPatch):
        apply(old, p, io.BytesIO())


def test_forged_op_longer_than_segment_is_refused() -> None:
    old = bytes(1024)
    # INSERT of 200 bytes in a segment that declares 100
    v = 200 << 2 | 2
    ctrl = bytes([v & 0x7F | 0x80, v >> 7])
    p = _forge(old, 100, [(_payload(100, ctrl, lit=bytes(100)), 100)], declared_new=100)
    with pytest.raises(PatchTooLarge):
        apply(old, p, io.BytesIO())


def test_segment_beyond_declared_size_is_refused() -> None:
    old = bytes(1024)
    v = 100 << 2 | 3
    ctrl = bytes([v & 0x7F | 0x80, v >> 7])
    p = _forge(old, 100, [(_payload(100, ctrl), 100), (_payload(100, ctrl), 100)], declared_new=150)
    with pytest.raises(PatchTooLarge):
        apply(old, p, io.BytesIO())


def test_oversized_buffer_declaration_is_refused() -> None:
    old = bytes(1024)
    p = _forge(old, 10, [], declared_new=0, max_buffered=200 << 20)
    with pytest.raises(UnsupportedPatch):
        apply(old, p, io.BytesIO())


def test_segment_split_into_frames_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer may cut a payload into two zstd frames (compressed in parallel);
    the reader takes the concatenated contents as the payload."""
    import zstandard

    import bsipatch.delta.writer

    monkeypatch.setattr(bsipatch.delta.writer, "FRAME_SPLIT_MIN", 16)
    old, new = _pair()
    p = _make(old, new, threads=2, compact=False)
    info = read_patch_info(io.BytesIO(p))
    start = patchfmt.HEADER_SIZE + patchfmt.SEG_SIZE
    comp = p[start : start + info.segments[0].comp_len]
    d = zstandard.ZstdDecompressor().decompressobj()
    first = d.decompress(comp)
    assert d.unused_data  # a second frame follows
    rest = zstandard.ZstdDecompressor().decompress(d.unused_data)
    assert len(first) + len(rest) == info.segments[0].payload_len
    assert struct.unpack_from("<Q", first, 48)[0] == len(rest)  # the cut is at the diff section
    out = io.BytesIO()
    apply(old, p, out)
    assert out.getvalue() == new


def test_forged_frames_read_as_one_payload_and_junk_after_them_is_refused() -> None:
    old = bytes(1024)
    v = 100 << 2 | 3  # ZERO 100
    ctrl = bytes([v & 0x7F | 0x80, v >> 7])
    payload = _payload(100, ctrl)
    p = _forge(old, 100, [(payload, 100)], declared_new=100, cuts=(5, 56))
    with pytest.raises(OutputMismatch):  # the payload decoded; only the forged digest fails
        apply(old, p, io.BytesIO())
    p = _forge(old, 100, [(payload, 100)], declared_new=100, junk=b"\0junk")
    with pytest.raises(CorruptPatch):
        apply(old, p, io.BytesIO())


def test_max_patch_size_enforced() -> None:
    old, new = _pair()
    p = _make(old, new)
    with pytest.raises(PatchTooLarge):
        apply(old, io.BytesIO(p), io.BytesIO(), max_patch_size=len(p) - 1)
    apply(old, io.BytesIO(p), io.BytesIO(), max_patch_size=len(p))


def test_iter_apply_chunks() -> None:
    old, new = _pair()
    p = _make(old, new, segment_size=8192)
    chunks = list(iter_apply(old, io.BytesIO(p), chunk_size=1000))
    assert b"".join(chunks) == new
    assert max(len(c) for c in chunks) <= 1000


def test_forged_zero_segment_with_other_ops_is_refused() -> None:
    """A segment claiming to be all zeros (so its digest is not recomputed) must be."""
    import hashlib

    old = bytes(1024)
    v = 100 << 2 | 2  # INSERT 100 literal bytes, while the header says ZERO
    ctrl = bytes([v & 0x7F | 0x80, v >> 7])
    payload = _payload(100, ctrl, lit=b"\xff" * 100)
    import zstandard

    h = patchfmt.Header(
        1,
        1 << 20,
        len(old),
        hashlib.sha256(old).digest(),
        100,
        hashlib.sha256(b"\xff" * 100).digest(),
        1 << 20,
    )
    hb = h.pack()
    h = h._replace(digest=hb[-32:])
    comp = zstandard.ZstdCompressor().compress(payload)
    seg = patchfmt.SegmentHeader(
        0, 0, 100, len(payload), len(comp), 1, (0, 0, 0, 100), hashlib.sha256(bytes(100)).digest()
    )
    d = patchfmt.SegmentHeader.compute_digest(h.digest, seg.body(), comp)
    p = hb + seg.body() + d + comp + patchfmt.pack_trailer(h, [d])
    with pytest.raises(CorruptPatch, match="statistics"):
        apply(old, p, io.BytesIO())


def _prov_apply(
    old: bytes, payload: bytes, out_len: int, out_size: int, skip: bool, phase: int = 0
):
    """Drive bsi_patch_feed_prov; return (output with skipped blocks as b'?', prov)."""
    import numpy as np

    st = ffi.new("bsi_patch_state *")
    cap = len(payload)
    scratch = ffi.new("uint8_t[]", max(cap, 1))
    out = bytearray(out_size)
    ob = ffi.new("bsi_outbuf *")
    keep_out = ffi.from_buffer(out)
    ob.ptr, ob.size, ob.pos = keep_out, len(out), 0
    ib = ffi.new("bsi_inbuf *")
    prov = np.zeros((phase + out_len) // 4096, dtype=np.uint64)
    pprov = ffi.cast("uint64_t *", prov.ctypes.data)
    flags = lib.BSI_PATCH_SKIP_REPORTED if skip else 0
    assert lib.bsi_patch_init(st, out_len, len(old), cap) == 0
    assert lib.bsi_patch_set_phase(st, phase) == 0
    keep = ffi.from_buffer(payload)
    ib.ptr, ib.size, ib.pos = keep, len(payload), 0
    result = bytearray()
    while True:
        out[:] = b"?" * len(out)
        rc = lib.bsi_patch_feed_prov(
            st, ffi.from_buffer(old), len(old), scratch, cap, ib, ob, pprov, len(prov), flags
        )
        assert rc >= 0, ffi.string(lib.bsi_error_name(rc))
        result += out[: ob.pos]
        ob.pos = 0
        if rc == 0:
            break
    assert lib.bsi_patch_finish(st) == 0
    return bytes(result), prov


@pytest.mark.parametrize("out_size", [7, 4096, 3 * 4096 + 5, 1 << 20])
@pytest.mark.parametrize("skip", [False, True])
def test_provenance_reports_only_true_whole_block_copies(out_size: int, skip: bool) -> None:
    rnd = random.Random(7)
    old = b"".join(bytes(4096) if i % 5 == 0 else rnd.randbytes(4096) for i in range(40))
    new = bytearray(old)
    new[4096 * 7 : 4096 * 7] = rnd.randbytes(1000)  # everything after moves off alignment
    new[4096 * 20 : 4096 * 20] = rnd.randbytes(3096)  # ...and back on
    new[4096 * 30 + 5] ^= 1
    new = bytes(new) + bytes(3 * 4096) + b"tail"
    ops = compute_ops(old, new, threads=1)
    seen = {"copy": 0, "zero": 0}
    for off, n, payload, _, _ in iter_segments(ops, old, new, 1 << 20):
        assert off == 0
        got, prov = _prov_apply(old, payload, n, out_size, skip)
        for i, v in enumerate(prov.tolist()):
            block = new[i * 4096 : (i + 1) * 4096]
            if v == lib.BSI_PROV_ZERO:
                assert block == bytes(4096)
                seen["zero"] += 1
            elif v >= lib.BSI_PROV_COPY:
                k = v - lib.BSI_PROV_COPY
                assert block == old[k * 4096 : (k + 1) * 4096]
                seen["copy"] += 1
            if v and skip:
                assert got[i * 4096 : (i + 1) * 4096] == b"?" * 4096  # not produced
            else:
                assert got[i * 4096 : (i + 1) * 4096] == block
        assert len(got) == n
    if out_size >= 4096:
        assert seen["copy"] > 15 and seen["zero"] >= 3
    else:
        assert seen == {"copy": 0, "zero": 0}  # no room for a whole block: none reported


def test_provenance_arguments_are_checked() -> None:
    import numpy as np

    st = ffi.new("bsi_patch_state *")
    ib, ob = ffi.new("bsi_inbuf *"), ffi.new("bsi_outbuf *")
    buf = bytearray(16)
    ob.ptr, ob.size = ffi.from_buffer(buf), 16
    prov = np.zeros(1, dtype=np.uint64)
    pprov = ffi.cast("uint64_t *", prov.ctypes.data)
    old = ffi.new("uint8_t[]", 1)
    lib.bsi_patch_init(st, 8192, 1, 0)
    assert lib.bsi_patch_feed_prov(st, old, 1, ffi.NULL, 0, ib, ob, pprov, 1, 0) == lib.BSI_E_INVAL
    lib.bsi_patch_init(st, 4096, 1, 0)
    assert (
        lib.bsi_patch_feed_prov(st, old, 1, ffi.NULL, 0, ib, ob, ffi.NULL, 0, 1) == lib.BSI_E_INVAL
    )
    lib.bsi_patch_init(st, 4096, 1, 0)
    assert lib.bsi_patch_feed_prov(st, old, 1, ffi.NULL, 0, ib, ob, pprov, 1, 8) == lib.BSI_E_INVAL
    lib.bsi_patch_init(st, 4096, 1, 0)
    assert lib.bsi_patch_feed_prov(st, old, 1, ffi.NULL, 0, ib, ob, pprov, 1, 1) == 0


@pytest.mark.parametrize("skip", [False, True])
def test_provenance_of_segments_that_start_inside_a_block(skip: bool) -> None:
    """Segments cut at any offset: entries follow the image's block grid (the phase)."""
    rnd = random.Random(8)
    old = b"".join(bytes(4096) if i % 6 == 0 else rnd.randbytes(4096) for i in range(30))
    new = old[:50_000] + rnd.randbytes(300) + old[50_000:] + b"end"
    new = new[: 4096 * 20] + old[4096 * 3 : 4096 * 9] + new[4096 * 20 :]  # aligned again
    ops = compute_ops(old, new, threads=1)
    reported = 0
    for off, n, payload, _, _ in iter_segments(ops, old, new, 10_000):
        phase = off % 4096
        got, prov = _prov_apply(old, payload, n, 3 * 4096, skip, phase)
        for j, v in enumerate(prov.tolist()):
            b = off // 4096 + j
            block = new[b * 4096 : (b + 1) * 4096]
            if v:
                reported += 1
                assert j > 0 or phase == 0  # entry 0 of a shifted segment is partial
                assert (b + 1) * 4096 <= off + n
                if v == lib.BSI_PROV_ZERO:
                    assert block == bytes(4096)
                else:
                    k = v - lib.BSI_PROV_COPY
                    assert block == old[k * 4096 : (k + 1) * 4096]
                lo = b * 4096 - off
                assert got[lo : lo + 4096] == (b"?" * 4096 if skip else block)
        if not skip:
            assert got == new[off : off + n]
    assert reported > 10
    st = ffi.new("bsi_patch_state *")
    lib.bsi_patch_init(st, 100, 0, 0)
    assert lib.bsi_patch_set_phase(st, 4096) == lib.BSI_E_INVAL
