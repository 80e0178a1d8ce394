"""The executable transform's wire form and its use on the apply side.

A version 2 patch carries a transform (docs/patch-format.md, "Executable transform"):
regions of the old ELF file where references live and a map of where old addresses
went. This module packs and unpacks that table with every count and value checked,
reads and writes the patch's transform block, and runs the native transform
(csrc/bsi_exe.c) that rewrites the old file's references as predicted. Deciding
the regions and the map from two ELF files is the diff's job (exeplan.py); this
module is what an applier loads, so it imports nothing heavy (no ELF parsing, no
OpenSSL, no dataclasses). It does not search for differences or frame patches.
"""

from __future__ import annotations

import mmap
import os
import struct

from bsipatch._buffers import Buffer
from bsipatch._lite import suppress
from bsipatch._native import check, ffi, lib
from bsipatch.errors import CorruptPatch, TruncatedPatch
from bsipatch.hashing import Sha256

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any, NamedTuple
else:
    from bsipatch._lite import NamedTuple

#: Wire form version of the transform block.
TRANSFORM_VERSION = 1
#: Wire form version of a transform of several ELF files inside one image.
IMAGE_TRANSFORM_VERSION = 2
#: Most ELF files (groups) one image transform may carry.
MAX_GROUPS = 4096
#: Bound on the bytes the native transform scans: SCAN_PER_OLD x old size + SCAN_SLACK.
SCAN_PER_OLD = 2
SCAN_SLACK = 1 << 20
#: Largest packed transform block an applier accepts (bytes, before compression).
MAX_TRANSFORM_BYTES = 32 << 20
MAX_REGIONS = int(lib.BSI_EXE_MAX_REGIONS)
MAX_MAP = int(lib.BSI_EXE_MAX_MAP)


class Region(NamedTuple):
    """Where in the old file references of one kind are looked for."""

    off: int
    len: int
    va: int
    kind: int
    arg: int = 0


class NativeMap:
    """A transform's map as the native ``bsi_exe_map`` array an applier decoded, read as
    the tuple of ``(old_va, len, delta)`` entries that :class:`Transform` holds (equal
    to that tuple); :meth:`Transform.apply_to` hands the array to C as it is."""

    __slots__ = ("array", "n")
    __hash__ = None  # type: ignore[assignment]  # compared by value, like the tuple

    def __init__(self, n: int) -> None:
        self.array = ffi.new("bsi_exe_map[]", max(n, 1))
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(self.n)))
        if not -self.n <= i < self.n:
            raise IndexError("map index out of range")
        e = self.array[i % self.n]
        return (int(e.old_va), int(e.len), int(e.delta))

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return (self[i] for i in range(self.n))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (NativeMap, tuple, list)):
            return len(other) == self.n and all(a == b for a, b in zip(self, other, strict=False))
        return NotImplemented

    def __repr__(self) -> str:
        return repr(tuple(self))


class Transform(NamedTuple):
    """The regions of the old file and the old-to-new address map."""

    regions: tuple[Region, ...]
    #: (old_va, len, delta), sorted, disjoint: a tuple, or the applier's NativeMap
    map: tuple[tuple[int, int, int], ...] | NativeMap

    def pack(self) -> bytes:
        """The transform block's uncompressed body (docs/patch-format.md)."""
        out = bytearray(struct.pack("<III", TRANSFORM_VERSION, len(self.regions), len(self.map)))
        for r in self.regions:
            out += b"".join(_varint(v) for v in (r.kind, r.arg, r.off, r.len, r.va))
        prev_end = prev_delta = 0
        for va, n, delta in self.map:
            out += _varint(va - prev_end) + _varint(n) + _varint(_zigzag(delta - prev_delta))
            prev_end, prev_delta = va + n, delta
        return bytes(out)

    @classmethod
    def unpack(cls, data: bytes, old_size: int) -> Transform:
        """Parse and check a version 1 transform body against an old image of ``old_size`` bytes.

        Raises:
            CorruptPatch: a count, region or map entry out of range, or bytes left over.
        """
        _check_body_size(data)
        version, nreg, nmap = struct.unpack_from("<III", data)
        if version != TRANSFORM_VERSION:
            raise CorruptPatch(f"transform version {version}, expected {TRANSFORM_VERSION}")
        t, pos = _unpack_group(data, 12, nreg, nmap)
        if pos != len(data):
            raise CorruptPatch(f"transform block has {len(data) - pos} bytes after its map")
        t.check(old_size)
        _check_scanned([t], old_size)
        return t

    def check(self, old_size: int) -> None:
        """The native checks: regions inside the old image, map sorted and disjoint.

        Raises:
            CorruptPatch: they fail.
        """
        rc = lib.bsi_exe_check(old_size, *self._native()[:4])
        if rc < 0:
            raise CorruptPatch(
                "transform regions or map do not fit the old image "
                f"({ffi.string(lib.bsi_error_name(rc)).decode()})"
            )

    def _native(self) -> tuple[Any, int, Any, int]:
        regs = ffi.new("bsi_exe_region[]", max(len(self.regions), 1))
        for i, r in enumerate(self.regions):
            regs[i].off, regs[i].len, regs[i].va, regs[i].kind, regs[i].arg = (
                r.off,
                r.len,
                r.va,
                r.kind,
                r.arg,
            )
        if isinstance(self.map, NativeMap):
            return regs, len(self.regions), self.map.array, len(self.map)
        m = ffi.new("bsi_exe_map[]", max(len(self.map), 1))
        for i, (va, n, delta) in enumerate(self.map):
            m[i].old_va, m[i].len, m[i].delta = va, n, delta
        return regs, len(self.regions), m, len(self.map)

    def apply_to(self, buf: Any, index: Any = None) -> dict[str, int]:
        """Rewrite the references in ``buf`` (a writable copy of the old image) in place.

        ``index``: the native transform's workspace (:func:`new_index`), made if None."""
        regs, nreg, m, nmap = self._native()
        stats = ffi.new("uint64_t[]", int(lib.BSI_EXE_KINDS))
        n = len(buf)
        check(
            lib.bsi_exe_transform_indexed(
                ffi.from_buffer(buf) if n else ffi.NULL,
                n,
                regs,
                nreg,
                m,
                nmap,
                stats,
                new_index() if index is None else index,
            ),
            "exe transform",
        )
        names = (
            "rewritten",
            "x86_branch",
            "x86_riprel",
            "a64_branch",
            "a64_adrp",
            "table",
            "unwind",
            "pointer",
        )
        return {k: int(stats[i]) for i, k in enumerate(names)}


def new_index() -> Any:
    """Workspace of the native transform: its index of the map by address (256 KiB)."""
    return ffi.new("uint32_t[]", int(lib.BSI_EXE_INDEX_LEN))


def _same_digest(a: bytes, b: bytes) -> bool:
    """Constant-time digest comparison (native, as patchformat.same_digest)."""
    return len(a) == len(b) == 32 and bool(
        lib.bsi_ct_equal(ffi.from_buffer(a), ffi.from_buffer(b), 32)
    )


def _zigzag(v: int) -> int:
    return (v << 1) ^ (v >> 63) if v >= 0 else ((-v) << 1) - 1


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _get_varint(data: bytes, pos: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CorruptPatch("transform block: varint runs past its end")
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if v >= 1 << 64:
                raise CorruptPatch("transform block: varint above 2**64")
            return v, pos


def _check_body_size(data: bytes) -> None:
    if len(data) < 12 or len(data) > MAX_TRANSFORM_BYTES:
        raise CorruptPatch(
            f"transform block of {len(data)} bytes, expected 12..{MAX_TRANSFORM_BYTES}"
        )


def _unpack_group(data: bytes, pos: int, nreg: int, nmap: int) -> tuple[Transform, int]:
    """One group's regions and map from ``data[pos:]`` (counts already read)."""
    if nreg > MAX_REGIONS or nmap > MAX_MAP or pos + 5 * nreg + 3 * nmap > len(data):
        raise CorruptPatch(
            f"transform declares {nreg} regions and {nmap} map entries in {len(data)} bytes "
            f"(limits {MAX_REGIONS}, {MAX_MAP})"
        )
    regions = []
    for _ in range(nreg):
        kind, pos = _get_varint(data, pos)
        arg, pos = _get_varint(data, pos)
        off, pos = _get_varint(data, pos)
        n, pos = _get_varint(data, pos)
        va, pos = _get_varint(data, pos)
        if kind > 0xFFFF or arg > 0xFFFFFFFF:
            raise CorruptPatch(f"transform region kind {kind} / argument {arg} out of range")
        regions.append(Region(off, n, va, kind, arg))
    # the map (up to a million entries) is decoded natively, straight into the array the
    # transform reads (NativeMap): in Python this was most of a large apply's set-up
    entries = NativeMap(nmap)
    where = ffi.new("uint64_t *", pos)
    rc = lib.bsi_exe_unpack_map(ffi.from_buffer(data), len(data), where, entries.array, nmap)
    if rc == lib.BSI_E_TRUNCATED:
        raise CorruptPatch(
            f"transform block: a varint of the map entry at byte {where[0]} runs past its "
            "end or above 2**64"
        )
    if rc < 0:
        raise CorruptPatch(f"transform map entry at byte {where[0]} out of range")
    return Transform(tuple(regions), entries), int(where[0])


def _check_scanned(groups: Iterable[Transform], old_size: int) -> None:
    """Bound the native transform's work: the regions it scans (every kind but LOAD) may
    cover at most ``SCAN_PER_OLD`` times the old image plus ``SCAN_SLACK`` bytes in all
    (a real plan scans each section once; a hostile one could repeat a large region)."""
    scanned = sum(r.len for g in groups for r in g.regions if r.kind != lib.BSI_EXE_LOAD)
    limit = SCAN_PER_OLD * old_size + SCAN_SLACK
    if scanned > limit:
        raise CorruptPatch(
            f"transform regions cover {scanned} bytes, more than {limit} for a "
            f"{old_size}-byte old image"
        )


class ImageTransform(NamedTuple):
    """Transforms of several ELF files inside one image (body version 2), one group each.

    Each group is a :class:`Transform` whose regions are image offsets of one ELF file
    and whose map is in that file's own addresses; the groups run one after another.
    """

    groups: tuple[Transform, ...]

    def pack(self) -> bytes:
        """The transform block's uncompressed body (docs/patch-format.md)."""
        out = bytearray(struct.pack("<II", IMAGE_TRANSFORM_VERSION, len(self.groups)))
        for g in self.groups:
            out += struct.pack("<II", len(g.regions), len(g.map)) + g.pack()[12:]
        return bytes(out)

    @classmethod
    def unpack(cls, data: bytes, old_size: int) -> ImageTransform:
        """Parse and check a version 2 body against an old image of ``old_size`` bytes.

        Raises:
            CorruptPatch: a count, region or map entry out of range, or bytes left over.
        """
        _check_body_size(data)
        version, ngroups = struct.unpack_from("<II", data)
        if version != IMAGE_TRANSFORM_VERSION:
            raise CorruptPatch(f"transform version {version}, expected {IMAGE_TRANSFORM_VERSION}")
        if not 0 < ngroups <= MAX_GROUPS or 8 + 8 * ngroups > len(data):
            raise CorruptPatch(f"transform declares {ngroups} groups (limit {MAX_GROUPS})")
        groups, pos, total_map = [], 8, 0
        for _ in range(ngroups):
            if pos + 8 > len(data):
                raise CorruptPatch("transform block ends inside a group header")
            nreg, nmap = struct.unpack_from("<II", data, pos)
            total_map += nmap
            if total_map > MAX_MAP:
                raise CorruptPatch(f"transform declares over {MAX_MAP} map entries in all")
            g, pos = _unpack_group(data, pos + 8, nreg, nmap)
            g.check(old_size)
            groups.append(g)
        if pos != len(data):
            raise CorruptPatch(f"transform block has {len(data) - pos} bytes after its groups")
        _check_scanned(groups, old_size)
        return cls(tuple(groups))

    def apply_to(self, buf: Any) -> dict[str, int]:
        """Rewrite the references of every group in ``buf`` (a writable copy of the old image)."""
        total: dict[str, int] = {}
        index = new_index()
        for g in self.groups:
            for k, v in g.apply_to(buf, index).items():
                total[k] = total.get(k, 0) + v
        total["groups"] = len(self.groups)
        return total


def unpack_any(data: bytes, old_size: int) -> Transform | ImageTransform:
    """Parse a transform body of either version (1: one ELF file; 2: ELF files in an image)."""
    _check_body_size(data)
    (version,) = struct.unpack_from("<I", data)
    if version == IMAGE_TRANSFORM_VERSION:
        return ImageTransform.unpack(data, old_size)
    return Transform.unpack(data, old_size)


class _PrivateMap(mmap.mmap):
    """A private copy-on-write map of the old file: the pages the transform rewrote
    exist only here, so nothing may drop them (``_buffers.drop_pages`` checks)."""

    keep_pages = True


def predicted_old(
    old: Buffer, t: Transform | ImageTransform, path: str | os.PathLike[str] | None = None
) -> tuple[Buffer, dict[str, int]]:
    """A private copy of ``old`` with its references rewritten by ``t``, and the counts.

    Given the old image's ``path``, the file is mapped again copy-on-write, so only the
    pages the transform rewrites take memory of their own; otherwise ``old`` is copied.
    """
    if len(old) == 0:
        return b"", {}
    copy: mmap.mmap | None = None
    if path is not None:
        with suppress(OSError, ValueError), open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == len(old):
                copy = _PrivateMap(
                    f.fileno(),
                    len(old),
                    flags=mmap.MAP_PRIVATE,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                )
    if copy is None:
        copy = _PrivateMap(-1, len(old), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if len(old) >= 2 << 20 and hasattr(mmap, "MADV_HUGEPAGE"):
            with suppress(OSError):  # fewer page faults for the copy
                copy.madvise(mmap.MADV_HUGEPAGE)
        copy[:] = memoryview(old)[: len(old)]
    return copy, t.apply_to(copy)


# ---- the transform block of a version-2 patch (docs/patch-format.md) -------------------

BLOCK_MAGIC = b"BXFM"
BLOCK_KIND_ELF = 1
BLOCK_HEAD = struct.Struct("<4sIII")


def _block_digest(header_digest: bytes, head: bytes, comp: bytes) -> bytes:
    h = Sha256(header_digest)
    h.update(head)
    h.update(comp)
    return h.digest()


def pack_block(header_digest: bytes, body: bytes, level: int = 19) -> tuple[bytes, bytes]:
    """The transform block (bytes to write) and its digest, for a patch header digest."""
    import zstandard

    comp = zstandard.ZstdCompressor(level=level).compress(body)
    head = BLOCK_HEAD.pack(BLOCK_MAGIC, BLOCK_KIND_ELF, len(body), len(comp))
    d = _block_digest(header_digest, head, comp)
    return head + comp + d, d


def read_block(read: Callable[[int], bytes], header_digest: bytes) -> tuple[bytes, bytes]:
    """Read a transform block with ``read(n)``; return its body and digest.

    Raises:
        TruncatedPatch: the stream ends inside the block.
        CorruptPatch: bad marker, kind, lengths, digest or compressed data.
    """
    from bsipatch._zstd import zstd

    zstandard = zstd()

    head = read(BLOCK_HEAD.size)
    if len(head) < BLOCK_HEAD.size:
        raise TruncatedPatch("patch ended inside its transform block")
    magic, kind, raw_len, comp_len = BLOCK_HEAD.unpack(head)
    if magic != BLOCK_MAGIC or kind != BLOCK_KIND_ELF:
        raise CorruptPatch(
            f"transform block: marker {magic!r} kind {kind}, "
            f"expected {BLOCK_MAGIC!r} kind {BLOCK_KIND_ELF}"
        )
    if not 12 <= raw_len <= MAX_TRANSFORM_BYTES or not 0 < comp_len <= raw_len + (raw_len >> 7) + (
        1 << 17
    ):
        raise CorruptPatch(
            f"transform block: lengths {raw_len} / {comp_len} out of range "
            f"(body 12..{MAX_TRANSFORM_BYTES})"
        )
    comp = read(comp_len)
    digest = read(32)
    if len(comp) < comp_len or len(digest) < 32:
        raise TruncatedPatch("patch ended inside its transform block")
    if not _same_digest(_block_digest(header_digest, head, comp), digest):
        raise CorruptPatch("transform block digest mismatch")
    try:
        dctx = zstandard.ZstdDecompressor()
        if zstandard.frame_content_size(comp) != raw_len:
            raise CorruptPatch(f"transform block: frame declares another size than {raw_len}")
        body = dctx.decompress(comp, max_output_size=raw_len)
    except zstandard.ZstdError as exc:
        raise CorruptPatch(f"transform block: bad compressed data ({exc})") from None
    if len(body) != raw_len:
        raise CorruptPatch(f"transform block: {len(body)} bytes decompressed, expected {raw_len}")
    return body, digest
