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

import contextlib
import mmap
import os
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from bsipatch._buffers import Buffer
from bsipatch._native import check, ffi, lib
from bsipatch.errors import CorruptPatch, TruncatedPatch
from bsipatch.hashing import Sha256

#: Wire form version of the transform block.
TRANSFORM_VERSION = 1
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


class Transform(NamedTuple):
    """The regions of the old file and the old-to-new address map."""

    regions: tuple[Region, ...]
    map: tuple[tuple[int, int, int], ...]  # (old_va, len, delta), sorted, disjoint

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
        """Parse and check a transform body against an old image of ``old_size`` bytes.

        Raises:
            CorruptPatch: a count, region or map entry out of range, or bytes left over.
        """
        if len(data) < 12 or len(data) > MAX_TRANSFORM_BYTES:
            raise CorruptPatch(
                f"transform block of {len(data)} bytes, expected 12..{MAX_TRANSFORM_BYTES}"
            )
        version, nreg, nmap = struct.unpack_from("<III", data)
        if version != TRANSFORM_VERSION:
            raise CorruptPatch(f"transform version {version}, expected {TRANSFORM_VERSION}")
        if nreg > MAX_REGIONS or nmap > MAX_MAP or 12 + 5 * nreg + 3 * nmap > len(data):
            raise CorruptPatch(
                f"transform declares {nreg} regions and {nmap} map entries in {len(data)} bytes "
                f"(limits {MAX_REGIONS}, {MAX_MAP})"
            )
        pos = 12
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
        entries = []
        prev_end = prev_delta = 0
        for _ in range(nmap):
            gap, pos = _get_varint(data, pos)
            n, pos = _get_varint(data, pos)
            zz, pos = _get_varint(data, pos)
            va = prev_end + gap
            delta = prev_delta + ((zz >> 1) ^ -(zz & 1))
            if n == 0 or va + n >= 1 << 64 or not -(1 << 63) <= delta < 1 << 63:
                raise CorruptPatch(f"transform map entry ({va}, {n}, {delta}) out of range")
            entries.append((va, n, delta))
            prev_end, prev_delta = va + n, delta
        if pos != len(data):
            raise CorruptPatch(f"transform block has {len(data) - pos} bytes after its map")
        t = cls(tuple(regions), tuple(entries))
        rc = lib.bsi_exe_check(old_size, *t._native()[:4])
        if rc < 0:
            raise CorruptPatch(
                "transform regions or map do not fit the old image "
                f"({ffi.string(lib.bsi_error_name(rc)).decode()})"
            )
        return t

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
        m = ffi.new("bsi_exe_map[]", max(len(self.map), 1))
        for i, (va, n, delta) in enumerate(self.map):
            m[i].old_va, m[i].len, m[i].delta = va, n, delta
        return regs, len(self.regions), m, len(self.map)

    def apply_to(self, buf: Any) -> dict[str, int]:
        """Rewrite the references in ``buf`` (a writable copy of the old image) in place."""
        regs, nreg, m, nmap = self._native()
        stats = ffi.new("uint64_t[]", int(lib.BSI_EXE_KINDS))
        n = len(buf)
        check(
            lib.bsi_exe_transform(
                ffi.from_buffer(buf) if n else ffi.NULL, n, regs, nreg, m, nmap, stats
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


def predicted_old(
    old: Buffer, t: Transform, path: str | os.PathLike[str] | None = None
) -> tuple[Buffer, dict[str, int]]:
    """A private copy of ``old`` with its references rewritten by ``t``, and the counts.

    Given the old image's ``path``, the file is mapped again copy-on-write, so only the
    pages the transform rewrites take memory of their own; otherwise ``old`` is copied.
    """
    if len(old) == 0:
        return b"", {}
    copy: mmap.mmap | None = None
    if path is not None:
        with contextlib.suppress(OSError, ValueError), open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == len(old):
                copy = mmap.mmap(
                    f.fileno(),
                    len(old),
                    flags=mmap.MAP_PRIVATE,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                )
    if copy is None:
        copy = mmap.mmap(-1, len(old))
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
    import zstandard

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
