"""The bsipatch patch format: byte layout of header, segment headers and trailer.

This module packs and parses the framing of versions 1 and 2 described in
docs/patch-format.md, checks every field (sizes, limits, digests) and reads a patch
of any version strictly sequentially from any binary stream (version 3's compact
framing is parsed by compact.py). It does not decompress or apply segments (see apply.py) and
does not search for differences (see diff.py).
"""

from __future__ import annotations

import struct

from bsipatch._io import read_exact
from bsipatch._native import ffi, lib
from bsipatch.delta import compact
from bsipatch.delta.limits import MAGIC as MAGIC
from bsipatch.delta.limits import MAX_BUFFERED as MAX_BUFFERED
from bsipatch.delta.limits import MAX_IMAGE_SIZE as MAX_IMAGE_SIZE
from bsipatch.delta.limits import MAX_PAYLOAD as MAX_PAYLOAD
from bsipatch.delta.limits import MAX_SEGMENT_SIZE as MAX_SEGMENT_SIZE
from bsipatch.delta.records import KIND_NAMES as KIND_NAMES
from bsipatch.delta.records import SEG_FMT as SEG_FMT
from bsipatch.delta.records import SEG_MAGIC as SEG_MAGIC
from bsipatch.delta.records import SEG_MAGIC_DENSE as SEG_MAGIC_DENSE
from bsipatch.delta.records import PatchInfo as PatchInfo
from bsipatch.delta.records import SegmentHeader as SegmentHeader
from bsipatch.errors import (
    CorruptPatch,
    HeaderMismatch,
    ImplausiblePatch,
    PatchTooLarge,
    TruncatedPatch,
    UnsupportedPatch,
)
from bsipatch.hashing import Sha256

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, BinaryIO, NamedTuple
else:
    from bsipatch._lite import NamedTuple

# Digests use the native SHA-256 (SHA-NI where the CPU has it) and a native
# constant-time comparison: applying a patch does not load OpenSSL (hashlib, hmac).


def _sha256(*parts: bytes | memoryview) -> bytes:
    h = Sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def same_digest(a: bytes, b: bytes) -> bool:
    """Compare two digests in constant time (csrc/bsi_core.c: bsi_ct_equal)."""
    if len(a) != len(b):
        return False
    return bool(lib.bsi_ct_equal(ffi.from_buffer(a), ffi.from_buffer(b), len(a))) if a else True


_same = same_digest


BSDIFF40_MAGIC = b"BSDIFF40"
VERSION = 1
#: Version of patches that carry a transform block after the header (docs/patch-format.md,
#: "Executable transform"); version 1 patches are written and read as before.
VERSION_TRANSFORM = 2
#: One-segment patches in the compact framing (compact.py; docs/patch-format.md,
#: "Compact framing").
VERSION_COMPACT = compact.VERSION_COMPACT
#: Versions with the 144-byte header (and segment headers and a trailer).
FRAMED_VERSIONS = (VERSION, VERSION_TRANSFORM)
#: Header flag of versions 1 and 2: segments may be marked SEG_MAGIC_DENSE (a dense
#: difference stream); without it every segment is BSEG (sparse).
FLAG_SEGMENT_MODES = 1
VERSIONS = (VERSION, VERSION_TRANSFORM, VERSION_COMPACT)

HEADER_FMT = "<8sHHIQ32sQ32sIIQ"  # up to (not including) the header digest
HEADER_SIZE = struct.calcsize(HEADER_FMT) + 32  # 144
SEG_SIZE = struct.calcsize(SEG_FMT) + 32  # 112
TRAILER_MAGIC = b"BEND"
TRAILER_FMT = "<4sIQ"
TRAILER_SIZE = struct.calcsize(TRAILER_FMT) + 32  # 48
PAYLOAD_HEADER_SIZE = 56  # seven little-endian u64 at the start of each decompressed payload

#: Default output bytes per segment: segments are cut earlier when their payload fills.
DEFAULT_SEGMENT_SIZE = 128 << 20
#: Section capacities of the writer: control, zero runs, non-zero runs, literals, diff.
CTRL_CAP = 1 << 20
RUNS_CAP = 1 << 20
LIT_CAP = 8 << 20
DIFF_CAP = 8 << 20


#: Without an expected output size from the caller, a header may claim at most
#: ``CLAIM_SLACK + CLAIM_PER_OLD * old_size + CLAIM_PER_PATCH_BYTE * patch_size`` bytes
#: of output: enough for any patch made by ``bsipatch diff`` between images of similar
#: size, far too little for "16 GiB of zeros in a 10 KB patch".
CLAIM_SLACK = 64 << 20
CLAIM_PER_OLD = 2
CLAIM_PER_PATCH_BYTE = 1024


class Header(NamedTuple):
    """The fixed 144-byte patch header."""

    version: int
    segment_size: int
    old_size: int
    old_sha256: bytes
    new_size: int
    new_sha256: bytes
    max_buffered: int
    max_payload: int = MAX_PAYLOAD
    digest: bytes = b""
    flags: int = 0

    def pack(self) -> bytes:
        """The header bytes, digest included."""
        body = struct.pack(
            HEADER_FMT,
            MAGIC,
            self.version,
            self.flags,
            self.segment_size,
            self.old_size,
            self.old_sha256,
            self.new_size,
            self.new_sha256,
            self.max_buffered,
            self.max_payload,
            0,
        )
        return body + _sha256(body)

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Parse and check a header.

        Raises:
            UnsupportedPatch: wrong magic or version, or limits beyond this applier.
            TruncatedPatch: fewer than 144 bytes.
            CorruptPatch: the header digest or a field is wrong.
        """
        if len(data) >= 8 and data[:8] != MAGIC:
            raise UnsupportedPatch(f"not a bsipatch patch: magic {data[:8]!r}, expected {MAGIC!r}")
        if len(data) < HEADER_SIZE:
            raise TruncatedPatch(f"patch header is {len(data)} bytes, expected {HEADER_SIZE}")
        body, digest = data[: HEADER_SIZE - 32], data[HEADER_SIZE - 32 : HEADER_SIZE]
        (
            _,
            version,
            flags,
            seg_size,
            old_size,
            old_sha,
            new_size,
            new_sha,
            max_buf,
            max_pay,
            _r2,
        ) = struct.unpack(HEADER_FMT, body)
        if version not in FRAMED_VERSIONS:
            raise UnsupportedPatch(
                f"patch format version {version}, this bsipatch reads "
                f"{', '.join(map(str, VERSIONS))}"
            )
        if not _same(_sha256(body), digest):
            raise CorruptPatch("patch header digest mismatch")
        for what, n in (("old", old_size), ("new", new_size)):
            if n > MAX_IMAGE_SIZE:
                raise ImplausiblePatch(
                    f"patch header claims a {n}-byte {what} image; this applier accepts at "
                    f"most {MAX_IMAGE_SIZE} bytes"
                )
        if flags & ~FLAG_SEGMENT_MODES or _r2 != 0:
            raise UnsupportedPatch(f"unknown patch header flags {flags:#x}")
        if not 0 < seg_size <= MAX_SEGMENT_SIZE:
            raise UnsupportedPatch(
                f"segment size {seg_size} outside 1..{MAX_SEGMENT_SIZE} supported by this applier"
            )
        if not PAYLOAD_HEADER_SIZE <= max_pay <= MAX_PAYLOAD:
            raise UnsupportedPatch(
                f"patch declares segment payloads up to {max_pay} bytes, this applier accepts "
                f"{PAYLOAD_HEADER_SIZE}..{MAX_PAYLOAD}"
            )
        if max_buf > min(MAX_BUFFERED, max_pay):
            raise UnsupportedPatch(
                f"patch needs {max_buf} buffered bytes per segment, "
                f"limit {min(MAX_BUFFERED, max_pay)}"
            )
        return cls(
            version, seg_size, old_size, old_sha, new_size, new_sha, max_buf, max_pay, digest, flags
        )


def check_claims(
    header: Header,
    *,
    patch_size: int | None,
    expected_size: int | None = None,
    expected_sha256: bytes | str | None = None,
    expected_old_size: int | None = None,
    expected_old_sha256: bytes | str | None = None,
) -> None:
    """Bind the header's claims to what the caller expects, before any use.

    With ``expected_size`` (e.g. the signed target's size) the header's new size and
    (if given) SHA-256 must equal it. Without it the claim is bounded by the old size
    and the patch size (``CLAIM_*``; ``patch_size`` ``None`` counts as 0).
    ``expected_old_size`` / ``expected_old_sha256`` (the signed source image's) bind
    the header's old image the same way.

    Raises:
        HeaderMismatch: the header differs from an expected size or digest.
        ImplausiblePatch: no expected size, and the claim is out of proportion.
    """
    if expected_old_size is not None and header.old_size != expected_old_size:
        raise HeaderMismatch(
            f"patch header declares a {header.old_size}-byte old image, expected "
            f"{expected_old_size} bytes (the signed source image)"
        )
    if expected_old_sha256 is not None:
        _check_claimed_digest(header.old_sha256, expected_old_sha256, "old image")
    if expected_size is not None:
        if header.new_size != expected_size:
            raise HeaderMismatch(
                f"patch header declares a {header.new_size}-byte output, expected "
                f"{expected_size} bytes (the signed target)"
            )
    else:
        limit = CLAIM_SLACK + CLAIM_PER_OLD * header.old_size
        limit += CLAIM_PER_PATCH_BYTE * (patch_size or 0)
        if header.new_size > limit:
            raise ImplausiblePatch(
                f"patch header claims a {header.new_size}-byte output from "
                f"{'a ' + str(patch_size) + '-byte patch' if patch_size else 'a patch'} and a "
                f"{header.old_size}-byte old image (at most {limit} accepted without an "
                "expected size; pass expected_size / --expected-size to allow more)"
            )
    if expected_sha256 is not None:
        _check_claimed_digest(header.new_sha256, expected_sha256, "output")


def _check_claimed_digest(found: bytes, expected: bytes | str, what: str) -> None:
    want = bytes.fromhex(expected) if isinstance(expected, str) else bytes(expected)
    if not _same(found, want):
        raise HeaderMismatch(
            f"patch header declares {what} SHA-256 {found.hex()}, expected {want.hex()}"
        )


def payload_limit(header: Header) -> int:
    """Largest decompressed payload a segment of this patch may declare."""
    return header.max_payload


def comp_limit(header: Header) -> int:
    """Largest compressed segment this patch may carry (zstd's worst-case bound)."""
    n = payload_limit(header)
    return n + (n >> 7) + (1 << 17)


def parse_segment_header(data: bytes, header: Header, index: int, out_offset: int) -> SegmentHeader:
    """Parse and range-check a segment header (its digest is checked with the payload).

    Raises:
        CorruptPatch: a field is out of range or out of sequence.
        PatchTooLarge: the segment declares more output than the header allows.
    """
    body = data[: SEG_SIZE - 32]
    (magic, idx, off, out_len, payload_len, comp_len, n_ops, b0, b1, b2, b3, out_sha) = (
        struct.unpack(SEG_FMT, body)
    )
    dense = magic == SEG_MAGIC_DENSE and bool(header.flags & FLAG_SEGMENT_MODES)
    if magic != SEG_MAGIC and not dense:
        raise CorruptPatch(f"segment {index}: bad marker {magic!r}, expected {SEG_MAGIC!r}")
    if idx != index or off != out_offset:
        raise CorruptPatch(
            f"segment {index}: says index {idx} at output offset {off}, "
            f"expected {index} at {out_offset}"
        )
    if out_len == 0 or out_len > header.segment_size:
        raise CorruptPatch(
            f"segment {index}: output length {out_len} outside 1..{header.segment_size}"
        )
    if off + out_len > header.new_size:
        raise PatchTooLarge(
            f"segment {index} ends at {off + out_len}, "
            f"beyond the declared new size {header.new_size}"
        )
    if payload_len > payload_limit(header) or payload_len < PAYLOAD_HEADER_SIZE:
        raise CorruptPatch(f"segment {index}: payload length {payload_len} out of range")
    if comp_len > comp_limit(header) or comp_len == 0:
        raise CorruptPatch(f"segment {index}: compressed length {comp_len} out of range")
    if b0 + b1 + b2 + b3 != out_len:
        raise CorruptPatch(f"segment {index}: op statistics do not add up to its length")
    return SegmentHeader(
        idx,
        off,
        out_len,
        payload_len,
        comp_len,
        n_ops,
        (b0, b1, b2, b3),
        out_sha,
        data[SEG_SIZE - 32 : SEG_SIZE],
        dense=dense,
    )


def trailer_digest(header_digest: bytes, seg_digests: list[bytes], body: bytes) -> bytes:
    """SHA-256 chaining the header, every segment digest in order, and the trailer body."""
    return _sha256(header_digest, *seg_digests, body)


def pack_trailer(header: Header, seg_digests: list[bytes], chain: tuple[bytes, ...] = ()) -> bytes:
    """The 48-byte trailer; ``chain``: the transform block's digest, chained first."""
    body = struct.pack(TRAILER_FMT, TRAILER_MAGIC, len(seg_digests), header.new_size)
    return body + trailer_digest(header.digest, [*chain, *seg_digests], body)


class _CountingReader:
    """Reads exactly from a stream, counting bytes and enforcing ``limit``."""

    def __init__(self, f: BinaryIO, limit: int | None, already: int = 0) -> None:
        self.f = f
        self.limit = limit
        self.count = already

    def read(self, n: int) -> bytes:
        if self.limit is not None and self.count + n > self.limit:
            raise PatchTooLarge(f"patch is larger than the allowed {self.limit} bytes")
        data = read_exact(self.f, n)
        self.count += len(data)
        return data

    def at_eof(self) -> bool:
        extra = self.f.read(1)
        return not extra


class PatchReader:
    """Sequential reader of a bsipatch stream: header, then verified segments, then trailer.

    The stream is never seeked. Each segment's compressed bytes are returned only
    after its digest (bound to the header) checks out; the trailer must chain all of
    them and be followed by end of stream.

    Args:
        f: binary stream positioned at the start of the patch (or after ``prefix``).
        prefix: bytes already read from the stream (e.g. the magic, when sniffing).
        max_patch_size: refuse patches longer than this many bytes.
    """

    def __init__(self, f: BinaryIO, *, prefix: bytes = b"", max_patch_size: int | None = None):
        self._r = _CountingReader(f, max_patch_size, len(prefix))
        data = prefix + self._r.read(max(0, 10 - len(prefix)))
        self._compact: tuple[compact.Fields, Any] | None = None
        if data[:8] == MAGIC and data[8:10] == struct.pack("<H", VERSION_COMPACT):
            fields, h = compact.read_fields(self._r.read, data[:10])
            self._compact = (fields, h)
            self.header = Header(
                VERSION_COMPACT,
                fields.new_size,
                fields.old_size,
                fields.old_sha256,
                fields.new_size,
                fields.new_sha256,
                fields.buffered,
                fields.payload_len,
            )
        else:
            self.header = Header.unpack(data + self._r.read(HEADER_SIZE - len(data)))
        #: versions 2 and 3: the transform block's body (checked against its digest, not
        #: parsed), read by :meth:`load_transform` (after the caller checked the claims)
        self.transform: bytes | None = None
        self._chain: tuple[bytes, ...] = ()
        self.seg_digests: list[bytes] = []
        self.segments: list[SegmentHeader] = []
        self.done = False

    @property
    def bytes_read(self) -> int:
        """Patch bytes consumed so far."""
        return self._r.count

    def load_transform(self) -> bytes | None:
        """Read a version 2 patch's transform block (once); its body, or None for version 1.

        Version 3: reads the whole patch and checks its digest and end (once)."""
        if self._compact is not None and not self._chain:
            fields, h = self._compact
            self.transform, comp, digest = compact.read_body(
                self._r.read, fields, h, self._r.at_eof
            )
            self._chain = (digest,)
            seg = SegmentHeader(
                0,
                0,
                fields.new_size,
                fields.payload_len,
                fields.comp_len,
                fields.n_ops,
                fields.kind_bytes,
                fields.new_sha256,
                digest,
                fields.framing(),
                bool(fields.flags & compact.FLAG_DENSE),
            )
            self._one = (seg, comp)
        elif self.header.version == VERSION_TRANSFORM and not self._chain:
            from bsipatch.delta.exe import read_block

            self.transform, digest = read_block(self._r.read, self.header.digest)
            self._chain = (digest,)
        return self.transform

    def __iter__(self) -> Iterator[tuple[SegmentHeader, bytes]]:
        self.load_transform()
        if self._compact is not None:  # version 3: one segment, everything checked
            seg, comp = self._one
            self.seg_digests.append(seg.digest)
            self.segments.append(seg)
            yield seg, comp
            self.done = True
            return
        h = self.header
        out_offset = 0
        while True:
            marker = self._r.read(4)
            if len(marker) < 4:
                raise TruncatedPatch(
                    f"patch ended after {self._r.count} bytes and "
                    f"{out_offset} of {h.new_size} output bytes"
                )
            if marker == TRAILER_MAGIC:
                self._finish(marker, out_offset)
                return
            rest = self._r.read(SEG_SIZE - 4)
            if len(rest) < SEG_SIZE - 4:
                raise TruncatedPatch(f"patch ended inside segment header {len(self.segments)}")
            seg = parse_segment_header(marker + rest, h, len(self.segments), out_offset)
            comp = self._r.read(seg.comp_len)
            if len(comp) < seg.comp_len:
                raise TruncatedPatch(
                    f"patch ended inside segment {seg.index} ({len(comp)} of {seg.comp_len} bytes)"
                )
            digest = SegmentHeader.compute_digest(h.digest, seg.body(), comp)
            if not _same(digest, seg.digest):
                raise CorruptPatch(f"segment {seg.index}: digest mismatch (patch damaged)")
            self.seg_digests.append(digest)
            self.segments.append(seg)
            out_offset += seg.out_len
            yield seg, comp

    def _finish(self, marker: bytes, out_offset: int) -> None:
        h = self.header
        rest = self._r.read(TRAILER_SIZE - 4)
        if len(rest) < TRAILER_SIZE - 4:
            raise TruncatedPatch("patch ended inside its trailer")
        data = marker + rest
        body = data[: TRAILER_SIZE - 32]
        _, nseg, new_size = struct.unpack(TRAILER_FMT, body)
        if nseg != len(self.seg_digests) or new_size != h.new_size:
            raise CorruptPatch(
                f"trailer declares {nseg} segments / {new_size} bytes, "
                f"read {len(self.seg_digests)} / {h.new_size}"
            )
        chained = [*self._chain, *self.seg_digests]
        if not _same(trailer_digest(h.digest, chained, body), data[TRAILER_SIZE - 32 :]):
            raise CorruptPatch("trailer digest mismatch")
        if out_offset != h.new_size:
            raise TruncatedPatch(
                f"segments produce {out_offset} bytes, header declares {h.new_size}"
            )
        if not self._r.at_eof():
            raise CorruptPatch("unexpected data after the patch trailer")
        self.done = True


def info_from_reader(reader: PatchReader, extra: dict[str, Any] | None = None) -> PatchInfo:
    """Summarise a fully read :class:`PatchReader`."""
    h = reader.header
    kinds = [0, 0, 0, 0]
    n_ops = 0
    for s in reader.segments:
        n_ops += s.n_ops
        for i in range(4):
            kinds[i] += s.kind_bytes[i]
    stats: dict[str, Any] = {
        "segment_size": h.segment_size,
        "n_segments": len(reader.segments),
        "n_ops": n_ops,
        **{f"{k}_bytes": v for k, v in zip(KIND_NAMES, kinds, strict=True)},
        "compressed_bytes": sum(s.comp_len for s in reader.segments),
    }
    stats["dense_segments"] = sum(s.dense for s in reader.segments)
    if reader.transform is not None:
        stats["transform_bytes"] = len(reader.transform)
    if extra:
        stats.update(extra)
    return PatchInfo(
        "bsipatch",
        h.version,
        h.old_size,
        h.old_sha256,
        h.new_size,
        h.new_sha256,
        reader.bytes_read,
        list(reader.segments),
        stats,
    )
