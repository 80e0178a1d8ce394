"""Version 3 patches (compact framing of one-segment patches) and the dense difference stream.

Round trips through every applier shape, the writer's choices (sparse or dense
stream, raw payload), and hostile compact patches: every field out of range, wrong
digests, truncation at every byte, trailing bytes, bad zstd framing; each refused
with its typed error. The C applier's dense mode is driven directly too.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
from pathlib import Path

import pytest

from bsipatch._native import ffi, lib
from bsipatch.delta import compact
from bsipatch.delta.apply import ApplyReader, apply, iter_apply
from bsipatch.delta.diff import diff
from bsipatch.delta.info import read_patch_info
from bsipatch.errors import (
    CorruptPatch,
    HeaderMismatch,
    ImplausiblePatch,
    OutputMismatch,
    PatchError,
    PatchTooLarge,
    TruncatedPatch,
    UnsupportedPatch,
    WrongBaseImage,
)


def _make(old: bytes, new: bytes, **kw: object) -> tuple[bytes, object]:
    out = io.BytesIO()
    info = diff(old, new, out, **kw)  # type: ignore[arg-type]
    return out.getvalue(), info


def _code_like(seed: int, size: int = 40_000) -> tuple[bytes, bytes]:
    """Old and new where 4-byte values at irregular places all moved by the same amount
    (the reference churn of a rebuilt library): the dense stream wins."""
    rnd = random.Random(seed)
    old = bytearray(rnd.randrange(256) for _ in range(size))
    new = bytearray(old)
    i = 0
    while i < size - 4:
        (v,) = struct.unpack_from("<I", new, i)
        struct.pack_into("<I", new, i, (v + 0x40) & 0xFFFFFFFF)
        i += rnd.randrange(4, 10)
    return bytes(old), bytes(new)


def _sparse_like(seed: int, size: int = 60_000) -> tuple[bytes, bytes]:
    rnd = random.Random(seed)
    old = bytes(rnd.randrange(8) for _ in range(size))
    new = bytearray(old)
    for _ in range(40):
        new[rnd.randrange(len(new))] = rnd.randrange(256)
    new[1000:1000] = os.urandom(500)
    return old, bytes(new)


def _parse(p: bytes) -> tuple[compact.Fields, int]:
    """The fields of a compact patch and the offset where its data starts."""
    r = io.BytesIO(p)
    r.read(10)
    fields, _ = compact.read_fields(r.read, p[:10])
    return fields, r.tell()


def _repack(p: bytes, *, data: bytes | None = None, **changes: object) -> bytes:
    """The patch with header fields changed and the digest recomputed (what an attacker
    who writes patches can do)."""
    fields, start = _parse(p)
    head = compact.pack_header(fields._replace(**changes))
    body = p[start:-32] if data is None else data
    return head + body + hashlib.sha256(head + body).digest()


def _apply_all_shapes(old: bytes, p: bytes, tmp_path: Path) -> list[bytes]:
    (tmp_path / "old").write_bytes(old)
    apply(tmp_path / "old", p, tmp_path / "new")
    out = io.BytesIO()
    apply(old, io.BytesIO(p), out)
    return [
        (tmp_path / "new").read_bytes(),
        out.getvalue(),
        b"".join(iter_apply(old, p, chunk_size=999)),
        ApplyReader(old, p).read(),
    ]


def test_one_segment_patch_is_compact_and_applies_in_every_shape(tmp_path: Path) -> None:
    old, new = _sparse_like(1)
    p, info = _make(old, new)
    v1, _ = _make(old, new, compact=False)
    assert p[:10] == b"BSIPATCH\x03\x00" and info.version == 3  # type: ignore[attr-defined]
    assert len(v1) - len(p) > 150  # 304 B of framing become about 110
    assert _apply_all_shapes(old, p, tmp_path) == [new] * 4
    got = read_patch_info(p)
    assert got.version == 3 and got.patch_size == len(p) and len(got.segments) == 1
    seg = got.segments[0]
    assert seg.out_len == len(new) and seg.out_sha256 == hashlib.sha256(new).digest()
    assert sum(seg.kind_bytes) == len(new)
    assert got.old_sha256 == hashlib.sha256(old).digest()


def test_writer_keeps_the_smaller_difference_stream(tmp_path: Path) -> None:
    old, new = _code_like(2)
    p, info = _make(old, new)
    assert info.stats["dense_segments"] == 1  # type: ignore[attr-defined]
    fields, _ = _parse(p)
    assert fields.flags & compact.FLAG_DENSE and fields.sections[1:3] == (0, 0)
    assert _apply_all_shapes(old, p, tmp_path) == [new] * 4
    old2, new2 = _sparse_like(3)
    p2, info2 = _make(old2, new2)
    assert info2.stats["dense_segments"] == 0  # type: ignore[attr-defined]
    assert _apply_all_shapes(old2, p2, tmp_path) == [new2] * 4


def test_tiny_payload_is_stored_raw(tmp_path: Path) -> None:
    old = os.urandom(3000)
    p, _ = _make(old, old)
    fields, _ = _parse(p)
    assert fields.flags & compact.FLAG_RAW and fields.comp_len == fields.payload_len
    assert len(p) < 135  # Debian bsdiff's patch for an unchanged 2.5 KB file is 135 B
    assert _apply_all_shapes(old, p, tmp_path) == [old] * 4


def test_several_segments_keep_version_1() -> None:
    old, new = _sparse_like(4)
    p, info = _make(old, new, segment_size=16384)
    assert info.version == 1 and p[8:10] == b"\x01\x00"  # type: ignore[attr-defined]


def test_truncated_at_every_byte_is_a_truncated_patch() -> None:
    old, new = _sparse_like(5)
    p, _ = _make(old, new)
    for cut in range(len(p)):
        with pytest.raises(TruncatedPatch):
            apply(old, p[:cut], io.BytesIO())


def test_trailing_bytes_are_refused_before_decompression() -> None:
    old, new = _sparse_like(6)
    p, _ = _make(old, new)
    for junk in (b"\0", b"x" * 100, p[-32:]):
        with pytest.raises(CorruptPatch, match="after the patch digest"):
            apply(old, p + junk, io.BytesIO())


def test_every_flipped_bit_is_a_typed_error() -> None:
    old, new = _code_like(7, 4000)
    p, _ = _make(old, new)
    rnd = random.Random(7)
    for pos in range(len(p)):
        bad = bytearray(p)
        bad[pos] ^= 1 << rnd.randrange(8)
        with pytest.raises(PatchError):
            apply(old, bytes(bad), io.BytesIO())
    bad = bytearray(p)
    bad[-1] ^= 1
    with pytest.raises(CorruptPatch, match="digest"):
        apply(old, bytes(bad), io.BytesIO())


XFM = compact.FLAG_TRANSFORM


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"flags": 8}, UnsupportedPatch),
        ({"old_size": 1 << 60}, ImplausiblePatch),
        ({"new_size": 1 << 63}, ImplausiblePatch),
        ({"new_size": (1 << 64) - 1}, ImplausiblePatch),
        ({"new_size": 0}, CorruptPatch),
        ({"n_ops": 0}, CorruptPatch),
        ({"n_ops": 1 << 40}, CorruptPatch),
        ({"kind_bytes": (1 << 40, 0, 0, 0)}, CorruptPatch),
        ({"sections": (1 << 40, 0, 0, 0, 0)}, UnsupportedPatch),
        ({"sections": (10, 0, 0, 0, 40 << 20)}, UnsupportedPatch),
        ({"sections": (10, 0, 0, 0, 1 << 20)}, CorruptPatch),
        ({"comp_len": 1 << 40}, CorruptPatch),
        ({"comp_len": 0}, CorruptPatch),
        (
            {"flags": compact.FLAG_TRANSFORM, "xfm_raw_len": 1 << 40, "xfm_comp_len": 9},
            CorruptPatch,
        ),
        ({"flags": compact.FLAG_TRANSFORM, "xfm_raw_len": 100, "xfm_comp_len": 0}, CorruptPatch),
    ],
)
def test_absurd_fields_are_refused_before_anything_is_read(
    changes: dict[str, object], error: type[Exception]
) -> None:
    old, new = _sparse_like(8)
    p, _ = _make(old, new)
    with pytest.raises(error):
        apply(old, _repack(p, **changes), io.BytesIO())
    with pytest.raises(error):
        read_patch_info(_repack(p, **changes))


def test_claims_are_checked_before_the_one_segment_limit() -> None:
    old, new = _sparse_like(9)
    p, _ = _make(old, new)
    big = _repack(p, new_size=300 << 20)
    with pytest.raises(ImplausiblePatch):  # no expected size: out of proportion
        apply(old, big, io.BytesIO())
    with pytest.raises(HeaderMismatch):  # the signed target says otherwise
        apply(old, big, io.BytesIO(), expected_size=len(new))
    with pytest.raises(UnsupportedPatch):  # expected, but beyond one segment
        apply(old, big, io.BytesIO(), expected_size=300 << 20)
    with pytest.raises(HeaderMismatch):
        apply(old, p, io.BytesIO(), expected_sha256=hashlib.sha256(b"x").digest())


def test_overlong_varint_is_refused() -> None:
    old, new = _sparse_like(10)
    p, _ = _make(old, new)
    bad = p[:10] + b"\x80" * 10 + b"\x02" + p[11:]
    with pytest.raises(CorruptPatch, match="varint"):
        apply(old, bad, io.BytesIO())


def test_wrong_digests_in_the_header(tmp_path: Path) -> None:
    old, new = _sparse_like(11)
    p, _ = _make(old, new)
    other = hashlib.sha256(b"other").digest()
    wrong_old = _repack(p, old_sha256=other)
    with pytest.raises(WrongBaseImage):
        apply(old, wrong_old, io.BytesIO())
    (tmp_path / "old").write_bytes(old)
    with pytest.raises(WrongBaseImage):
        apply(tmp_path / "old", wrong_old, tmp_path / "out")
    wrong_new = _repack(p, new_sha256=other)
    with pytest.raises(OutputMismatch):
        apply(old, wrong_new, io.BytesIO())
    with pytest.raises(OutputMismatch):
        apply(tmp_path / "old", wrong_new, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(OutputMismatch):
        b"".join(iter_apply(old, wrong_new))


def test_wrong_stream_flag_is_refused() -> None:
    old, new = _sparse_like(12)
    p, _ = _make(old, new)
    fields, _ = _parse(p)
    assert fields.sections[1] > 0
    with pytest.raises(CorruptPatch):  # dense with runs sections
        apply(old, _repack(p, flags=fields.flags | compact.FLAG_DENSE), io.BytesIO())
    old2, new2 = _code_like(13, 4000)
    p2, _ = _make(old2, new2)
    f2, _ = _parse(p2)
    assert f2.flags & compact.FLAG_DENSE
    with pytest.raises(PatchError):  # a dense stream read as sparse
        apply(old2, _repack(p2, flags=f2.flags & ~compact.FLAG_DENSE), io.BytesIO())


def test_payload_framing_must_be_exact() -> None:
    import zstandard

    old, new = _sparse_like(14)
    p, _ = _make(old, new)
    fields, start = _parse(p)
    comp = p[start:-32]
    payload = compact.decompress_whole(comp, fields.payload_len, "payload")
    for data in (
        comp + b"\0",  # a byte after the last frame
        comp + comp[:3],  # a partial frame after it
        comp[:-1],  # the last frame cut short
        zstandard.ZstdCompressor().compress(payload),  # a frame with its magic
        comp[:1] + b"\x00" * 3,  # a frame of one empty block: too little payload
    ):
        with pytest.raises(CorruptPatch):
            apply(old, _repack(p, data=data, comp_len=len(data)), io.BytesIO())
    # two frames back to back make one payload
    cut = len(payload) // 2
    two = b"".join(
        zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters.from_level(
                3, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_content_size=0
            )
        ).compress(x)
        for x in (payload[:cut], payload[cut:])
    )
    assert apply(old, _repack(p, data=two, comp_len=len(two)), io.BytesIO()) is not None
    # a raw payload must be exactly the payload
    raw = _repack(p, data=payload, comp_len=len(payload), flags=compact.FLAG_RAW)
    out = io.BytesIO()
    apply(old, raw, out)
    assert out.getvalue() == new
    with pytest.raises(CorruptPatch):
        apply(old, _repack(p, data=payload + b"x", comp_len=len(payload) + 1, flags=4), out)


def test_max_patch_size_and_resume(tmp_path: Path) -> None:
    old, new = _sparse_like(15)
    p, _ = _make(old, new)
    with pytest.raises(PatchTooLarge):
        apply(old, p, io.BytesIO(), max_patch_size=len(p) - 1)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / ".out.bsipatch-partial").write_bytes(new)
    info = apply(tmp_path / "old", p, tmp_path / "out", resume=True)
    assert info.stats["resumed_segments"] == 1
    assert (tmp_path / "out").read_bytes() == new


def _dense_payload(old: bytes, add: list[tuple[int, bytes]]) -> tuple[bytes, int]:
    """A payload of ADD records (old offset, new bytes) with a dense difference stream."""
    ctrl = bytearray()
    prev = 0
    diffs = bytearray()
    out_len = 0
    for off, data in add:
        ctrl += compact.varint(len(data) << 2 | lib.BSI_OP_ADD)
        z = off - prev
        ctrl += compact.varint((z << 1) ^ (z >> 63) if z >= 0 else ((-z) << 1) - 1)
        prev = off + len(data)
        diffs += bytes((b - old[off + i]) & 0xFF for i, b in enumerate(data))
        out_len += len(data)
    head = struct.pack("<7Q", out_len, len(add), len(ctrl), 0, 0, 0, len(diffs))
    return head + bytes(ctrl) + bytes(diffs), out_len


def _feed(old: bytes, payload: bytes, out_len: int, mode: int, step: int) -> tuple[int, bytes]:
    st = ffi.new("bsi_patch_state *")
    cap = len(payload)
    scratch = ffi.new("uint8_t[]", max(cap, 1))
    out = bytearray(out_len + 1)
    ob = ffi.new("bsi_outbuf *")
    keep = ffi.from_buffer(out)
    ob.ptr, ob.size, ob.pos = keep, len(out), 0
    ib = ffi.new("bsi_inbuf *")
    assert lib.bsi_patch_init(st, out_len, len(old), cap) == 0
    assert lib.bsi_patch_set_mode(st, mode) == 0
    for i in range(0, len(payload), step):
        data = payload[i : i + step]
        kd = ffi.from_buffer(data)
        ib.ptr, ib.size, ib.pos = kd, len(data), 0
        rc = lib.bsi_patch_feed(st, ffi.from_buffer(old), len(old), scratch, cap, ib, ob)
        if rc < 0:
            return rc, b""
    return lib.bsi_patch_finish(st), bytes(out[: ob.pos])


@pytest.mark.parametrize("step", [1, 5, 4096])
def test_c_applier_dense_mode(step: int) -> None:
    old = os.urandom(5000)
    want = [(100, b"\x00\x01hello"), (50, old[50:60]), (4000, os.urandom(300))]
    payload, n = _dense_payload(old, want)
    rc, out = _feed(old, payload, n, lib.BSI_PATCH_DENSE, step)
    assert rc == 0 and out == b"".join(d for _, d in want)
    # the same bytes read as a sparse stream are refused (no runs)
    assert _feed(old, payload, n, lib.BSI_PATCH_SPARSE, step)[0] < 0
    # one difference byte short or long: refused
    head = list(struct.unpack_from("<7Q", payload))
    for delta in (-1, 1):
        h = head.copy()
        h[6] += delta
        body = payload[56:] + (b"\0" if delta > 0 else b"")
        bad = struct.pack("<7Q", *h) + (body if delta > 0 else body[:-1])
        assert _feed(old, bad, n, lib.BSI_PATCH_DENSE, step)[0] < 0
    # runs sections are not allowed in dense mode
    h = head.copy()
    h[3] = 1
    bad = struct.pack("<7Q", *h) + payload[56 : 56 + head[2]] + b"\x00" + payload[56 + head[2] :]
    assert _feed(old, bad, n, lib.BSI_PATCH_DENSE, step)[0] == lib.BSI_E_CORRUPT


def test_set_mode_is_checked() -> None:
    st = ffi.new("bsi_patch_state *")
    assert lib.bsi_patch_init(st, 10, 10, 100) == 0
    assert lib.bsi_patch_set_mode(st, 2) == lib.BSI_E_INVAL
    assert lib.bsi_patch_set_mode(ffi.NULL, 1) == lib.BSI_E_INVAL
    assert lib.bsi_patch_set_mode(st, lib.BSI_PATCH_DENSE) == 0


def test_stored_version_1_patches_still_apply(tmp_path: Path) -> None:
    import sys

    vectors = Path(__file__).parent / "vectors"
    sys.path.insert(0, str(vectors))
    try:
        from gen_patch_vectors import pair
    finally:
        sys.path.remove(str(vectors))
    old, new = pair()
    for name, n_segments in (
        ("patch-v1-one-segment.bsipatch", 1),
        ("patch-v1-four-segments.bsipatch", 4),
    ):
        p = (vectors / name).read_bytes()
        assert p[8:10] == b"\x01\x00"
        assert _apply_all_shapes(old, p, tmp_path) == [new] * 4
        info = read_patch_info(p)
        assert info.version == 1 and len(info.segments) == n_segments


def test_framed_patches_choose_the_stream_per_segment(tmp_path: Path) -> None:
    """Several segments (version 1 framing): each takes the smaller stream; dense
    segments are marked BSED under header flag bit 0, and apply in every shape."""
    from bsipatch.delta import patchformat as pf

    churn_old, churn_new = _code_like(16, 20_000)
    plain_old, plain_new = _sparse_like(17, 20_000)
    old, new = churn_old + plain_old, churn_new + plain_new
    p, info = _make(old, new, segment_size=8192)
    assert info.version == 1 and 0 < info.stats["dense_segments"] < len(info.segments)  # type: ignore[attr-defined]
    h = pf.Header.unpack(p[: pf.HEADER_SIZE])
    assert h.flags == pf.FLAG_SEGMENT_MODES
    assert p.count(pf.SEG_MAGIC_DENSE) >= info.stats["dense_segments"]  # type: ignore[attr-defined]
    assert _apply_all_shapes(old, p, tmp_path) == [new] * 4
    got = read_patch_info(p)
    assert got.stats["dense_segments"] == info.stats["dense_segments"]  # type: ignore[attr-defined]
    assert [s.dense for s in got.segments] == [s.dense for s in info.segments]  # type: ignore[attr-defined]
    # without the header flag a BSED marker is refused; unknown flags are unsupported
    for flags, error in ((0, CorruptPatch), (2, UnsupportedPatch)):
        hb = h._replace(flags=flags).pack()
        with pytest.raises(error):
            apply(old, hb + p[pf.HEADER_SIZE :], io.BytesIO())
