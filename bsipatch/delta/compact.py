"""Version 3 patches: the compact framing of a patch whose output is one segment.

A patch that makes its whole output in one segment (most security fixes of single
files) does not need per-segment headers, a trailer or three digests: its framing is
varint fields, the old and new SHA-256 and ONE SHA-256 over everything before it,
checked before anything is decompressed (docs/patch-format.md, "Compact framing").
This module packs and parses that framing with every field bounded, walks the zstd
frames of the payload so that exactly complete frames are accepted, and feeds the
payload to the C applier in the layout it reads. It does not apply segments
(segment.py), choose a framing or a difference-stream mode (diff.py), or read
version 1 and 2 patches (patchformat.py).
"""

from __future__ import annotations

import struct

from bsipatch._native import ffi, lib
from bsipatch.delta import limits as pf
from bsipatch.errors import CorruptPatch, ImplausiblePatch, TruncatedPatch, UnsupportedPatch
from bsipatch.hashing import Sha256

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import NamedTuple
else:
    from bsipatch._lite import NamedTuple

VERSION_COMPACT = 3
#: Header flags (a varint after the version).
FLAG_TRANSFORM = 1  # an executable transform body comes before the payload
FLAG_DENSE = 2  # the difference stream is dense (every ADD byte has its difference byte)
FLAG_RAW = 4  # the payload is stored as it is, not zstd-compressed
KNOWN_FLAGS = FLAG_TRANSFORM | FLAG_DENSE | FLAG_RAW
DIGEST_SIZE = 32
#: The C applier's payload header: seven little-endian u64 (out_len, n_ops, ctrl_len,
#: runs_len, nruns_len, lit_len, diff_len); version 3 carries them in its header.
C_HEAD = struct.Struct("<7Q")
#: Decompressed bytes handed to the applier per call.
IN_CHUNK = 256 << 10


class Framing(NamedTuple):
    """How a version 3 segment's payload is read: the applier's header made from the
    patch header, whether the difference stream is dense, whether it is stored raw."""

    head: bytes
    dense: bool
    raw: bool


class Fields(NamedTuple):
    """The fields of a version 3 header, in wire order (docs/patch-format.md)."""

    flags: int
    old_size: int
    old_sha256: bytes
    new_size: int
    new_sha256: bytes
    n_ops: int
    kind_bytes: tuple[int, int, int, int]  # COPY, ADD, INSERT, ZERO (ZERO is implied)
    sections: tuple[int, int, int, int, int]  # ctrl, runs, nruns, lit, diff lengths
    comp_len: int
    xfm_raw_len: int = 0
    xfm_comp_len: int = 0

    @property
    def buffered(self) -> int:
        """Bytes of the sections the applier buffers (all but the differences)."""
        return sum(self.sections[:4])

    @property
    def payload_len(self) -> int:
        """Decompressed payload bytes: the five sections."""
        return sum(self.sections)

    def framing(self) -> Framing:
        """The :class:`Framing` of the patch's one segment."""
        head = C_HEAD.pack(self.new_size, self.n_ops, *self.sections)
        return Framing(head, bool(self.flags & FLAG_DENSE), bool(self.flags & FLAG_RAW))


def varint(v: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def comp_bound(n: int) -> int:
    """Largest compressed form of ``n`` payload bytes a patch may carry."""
    return n + (n >> 7) + (1 << 17)


def pack_header(f: Fields) -> bytes:
    """The header bytes (magic through the last length field); data and digest follow."""
    parts = [pf.MAGIC, struct.pack("<H", VERSION_COMPACT), varint(f.flags), varint(f.old_size)]
    parts += [f.old_sha256, varint(f.new_size), f.new_sha256, varint(f.n_ops)]
    parts += [varint(v) for v in (*f.kind_bytes[:3], *f.sections, f.comp_len)]
    if f.flags & FLAG_TRANSFORM:
        parts += [varint(f.xfm_raw_len), varint(f.xfm_comp_len)]
    return b"".join(parts)


class _Read:
    """Reads fields through ``read(n)`` (fewer bytes at end of stream), hashing them."""

    def __init__(self, read: Callable[[int], bytes], prefix: bytes) -> None:
        self._read = read
        self.h = Sha256()
        self.h.update(prefix)

    def exact(self, n: int, what: str) -> bytes:
        data = self._read(n)
        if len(data) < n:
            raise TruncatedPatch(f"patch ended inside its {what}")
        self.h.update(data)
        return data

    def varint(self, what: str) -> int:
        v = 0
        for shift in range(0, 70, 7):
            b = self.exact(1, "header")[0]
            if shift == 63 and b > 1:
                break
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
        raise CorruptPatch(f"patch header: {what} is not a varint below 2^64")


def read_fields(read: Callable[[int], bytes], prefix: bytes) -> tuple[Fields, Sha256]:
    """Read and bound a version 3 header after its 10-byte ``prefix`` (magic, version).

    Returns the fields and the running SHA-256 of the bytes read (the patch digest
    continues over the data). Nothing is allocated from a field before it is bounded
    (the one-segment output limit is checked by :func:`read_body`, after the caller
    checked the claims).

    Raises:
        TruncatedPatch, CorruptPatch, UnsupportedPatch, ImplausiblePatch.
    """
    r = _Read(read, prefix)
    flags = r.varint("flags")
    if flags & ~KNOWN_FLAGS:
        raise UnsupportedPatch(f"unknown patch header flags {flags:#x}")
    old_size = r.varint("old size")
    old_sha = r.exact(32, "header")
    new_size = r.varint("new size")
    new_sha = r.exact(32, "header")
    n_ops = r.varint("operation count")
    kinds3 = [r.varint("operation bytes") for _ in range(3)]
    sections = tuple(r.varint("section length") for _ in range(5))
    comp_len = r.varint("payload length")
    xfm = (0, 0)
    if flags & FLAG_TRANSFORM:
        xfm = (r.varint("transform length"), r.varint("transform length"))
    zero = new_size - sum(kinds3)
    f = Fields(
        flags,
        old_size,
        old_sha,
        new_size,
        new_sha,
        n_ops,
        (kinds3[0], kinds3[1], kinds3[2], zero),
        sections,  # type: ignore[arg-type]
        comp_len,
        *xfm,
    )
    check_fields(f)
    return f, r.h


def check_fields(f: Fields) -> None:
    """Bound every field of a version 3 header (limits: patchformat's)."""
    for what, n in (("old", f.old_size), ("new", f.new_size)):
        if n > pf.MAX_IMAGE_SIZE:
            raise ImplausiblePatch(
                f"patch header claims a {n}-byte {what} image; this applier accepts at most "
                f"{pf.MAX_IMAGE_SIZE} bytes"
            )
    if f.buffered > pf.MAX_BUFFERED or f.payload_len > pf.MAX_PAYLOAD:
        raise UnsupportedPatch(
            f"patch needs {f.buffered} buffered bytes and a {f.payload_len}-byte payload, "
            f"limits {pf.MAX_BUFFERED} and {pf.MAX_PAYLOAD}"
        )
    ctrl, runs, nruns, lit, dif = f.sections
    copy, add, insert, zero = f.kind_bytes
    if zero < 0 or not 0 < f.n_ops <= min(f.new_size, ctrl):
        raise CorruptPatch(
            f"patch header: {f.n_ops} operations making {copy}/{add}/{insert} bytes in "
            f"{ctrl} control bytes, output {f.new_size} bytes"
        )
    if lit != insert or dif > add or (f.flags & FLAG_DENSE and (runs or nruns or dif != add)):
        raise CorruptPatch(
            f"patch header: sections {f.sections} do not fit {add} ADD and {insert} INSERT "
            f"bytes{' (dense)' if f.flags & FLAG_DENSE else ''}"
        )
    raw = bool(f.flags & FLAG_RAW)
    if (raw and f.comp_len != f.payload_len) or not 0 < f.comp_len <= comp_bound(f.payload_len):
        raise CorruptPatch(
            f"patch header: payload of {f.comp_len} bytes for {f.payload_len} "
            f"{'stored' if raw else 'decompressed'} bytes"
        )
    if f.flags & FLAG_TRANSFORM:
        from bsipatch.delta.exe import MAX_TRANSFORM_BYTES

        if not 12 <= f.xfm_raw_len <= MAX_TRANSFORM_BYTES or not (
            0 < f.xfm_comp_len <= comp_bound(f.xfm_raw_len)
        ):
            raise CorruptPatch(
                f"transform lengths {f.xfm_raw_len} / {f.xfm_comp_len} out of range "
                f"(body 12..{MAX_TRANSFORM_BYTES})"
            )


def check_frames(comp: bytes | memoryview, what: str) -> None:
    """Require ``comp`` to be complete magicless zstd frames, back to back, and nothing
    else (no dictionary, no reserved bits, no byte after the last frame).

    Raises:
        CorruptPatch: anything else.
    """
    data = memoryview(comp)
    n, pos = len(data), 0
    if n == 0:
        raise CorruptPatch(f"{what}: no zstd frame")
    while pos < n:
        fhd = data[pos]
        if fhd & 0x0B:  # reserved bit, dictionary ID
            raise CorruptPatch(f"{what}: zstd frame descriptor {fhd:#x} not accepted")
        single = fhd >> 5 & 1
        pos += 1 + (1 - single) + (single, 2, 4, 8)[fhd >> 6]
        last = 0
        while not last:
            if pos + 3 > n:
                raise CorruptPatch(f"{what}: zstd data ends inside a frame")
            bh = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            last, btype, bsize = bh & 1, bh >> 1 & 3, bh >> 3
            if btype == 3:
                raise CorruptPatch(f"{what}: reserved zstd block type")
            pos += 3 + (1 if btype == 1 else bsize)
        pos += 4 if fhd & 0x04 else 0
        if pos > n:
            raise CorruptPatch(f"{what}: zstd data ends inside a frame")


def decompress_whole(comp: bytes, size: int, what: str) -> bytes:
    """Decompress magicless frames that must make exactly ``size`` bytes (bounded)."""
    from bsipatch._zstd import zstd

    zstandard = zstd()

    check_frames(comp, what)
    dctx = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    try:
        with dctx.stream_reader(comp, read_across_frames=True) as r:
            data: bytes = r.read(size + 1)
            while len(data) <= size:
                more = r.read(size + 1 - len(data))
                if not more:
                    break
                data += more
    except zstandard.ZstdError as exc:
        raise CorruptPatch(f"{what}: zstd: {exc}") from None
    if len(data) != size:
        raise CorruptPatch(f"{what}: {len(data)} bytes decompressed, expected {size}")
    return data


def payload_pieces(framing: Framing, comp: bytes, payload_len: int) -> Iterator[bytes]:
    """The applier's input for a version 3 segment: its header, then the payload in
    pieces of at most IN_CHUNK bytes (decompressed exactly to ``payload_len`` bytes).

    Raises:
        CorruptPatch: bad zstd data, or a payload longer or shorter than declared.
    """
    yield framing.head
    if framing.raw:
        view = memoryview(comp)
        for i in range(0, len(view), IN_CHUNK):
            yield bytes(view[i : i + IN_CHUNK])
        return
    from bsipatch._zstd import zstd

    zstandard = zstd()

    check_frames(comp, "payload")
    total = 0
    dctx = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
    try:
        with dctx.stream_reader(comp, read_size=IN_CHUNK, read_across_frames=True) as r:
            while True:
                data = r.read(IN_CHUNK)
                if not data:
                    break
                total += len(data)
                if total > payload_len:
                    raise CorruptPatch("payload longer than declared")
                yield data
    except zstandard.ZstdError as exc:
        raise CorruptPatch(f"payload: zstd: {exc}") from exc
    if total != payload_len:
        raise CorruptPatch(f"payload is {total} bytes, declared {payload_len}")


def read_body(
    read: Callable[[int], bytes], f: Fields, h: Sha256, at_eof: Callable[[], bool]
) -> tuple[bytes | None, bytes, bytes]:
    """Read the data after a version 3 header and check the patch digest over all of it
    before anything is decompressed; then the end of stream, then the transform.

    Returns:
        (transform body or None, the payload as stored, the patch digest).

    Raises:
        TruncatedPatch, CorruptPatch (digest, trailing bytes, transform data).
    """
    # checked here, after the caller bound the header's claims to what it expects (a
    # claim that differs from a signed target is reported as that)
    if not 0 < f.new_size <= pf.MAX_SEGMENT_SIZE:
        raise UnsupportedPatch(
            f"one-segment patch of {f.new_size} output bytes; this applier accepts "
            f"1..{pf.MAX_SEGMENT_SIZE}"
        )
    r = _Read(read, b"")
    r.h = h
    xfm = r.exact(f.xfm_comp_len, "transform") if f.flags & FLAG_TRANSFORM else b""
    comp = r.exact(f.comp_len, "payload")
    want = read(DIGEST_SIZE)
    if len(want) < DIGEST_SIZE:
        raise TruncatedPatch("patch ended inside its digest")
    digest = h.digest()
    if not lib.bsi_ct_equal(ffi.from_buffer(digest), ffi.from_buffer(want), DIGEST_SIZE):
        raise CorruptPatch("patch digest mismatch (patch damaged)")
    if not at_eof():
        raise CorruptPatch("unexpected data after the patch digest")
    body = decompress_whole(xfm, f.xfm_raw_len, "transform") if xfm else None
    return body, comp, digest
