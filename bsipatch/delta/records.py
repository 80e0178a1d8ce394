"""The records that describe a patch: a segment's header and the whole patch's summary.

:class:`SegmentHeader` packs itself and its digest; :class:`PatchInfo` is what
``info`` and the appliers report (digests print as hex). Neither reads nor checks a
patch (patchformat.py, compact.py and bsdiff40.py do).
"""

from __future__ import annotations

import struct

from bsipatch.delta import compact
from bsipatch.hashing import Sha256

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from typing import Any

SEG_MAGIC = b"BSEG"
#: Marker of a segment whose difference stream is dense (only in patches whose header
#: has FLAG_SEGMENT_MODES; docs/patch-format.md).
SEG_MAGIC_DENSE = b"BSED"
SEG_FMT = "<4sIQIIII4I32s"  # up to (not including) the segment digest
KIND_NAMES = ("copy", "add", "insert", "zero")


def _sha256(*parts: bytes | memoryview) -> bytes:
    h = Sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def _show(value: object) -> str:
    """``repr`` with bytes (digests) as hex strings."""
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value).hex())
    return repr(value)


class SegmentHeader:
    """The fixed 112-byte header in front of each segment's zstd data (read-only)."""

    __slots__ = (
        "comp_len",
        "dense",
        "digest",
        "framing",
        "index",
        "kind_bytes",
        "n_ops",
        "out_len",
        "out_offset",
        "out_sha256",
        "payload_len",
    )

    def __init__(
        self,
        index: int,
        out_offset: int,
        out_len: int,
        payload_len: int,
        comp_len: int,
        n_ops: int,
        kind_bytes: tuple[int, int, int, int],
        out_sha256: bytes,
        digest: bytes = b"",
        framing: compact.Framing | None = None,
        dense: bool = False,
    ) -> None:
        #: the difference stream is dense (BSI_PATCH_DENSE), else sparse
        self.dense = dense
        #: version 3: how the payload is read (None: a version 1/2 payload with its header)
        self.framing = framing
        self.index = index
        self.out_offset = out_offset
        self.out_len = out_len
        self.payload_len = payload_len
        self.comp_len = comp_len
        self.n_ops = n_ops
        self.kind_bytes = kind_bytes
        self.out_sha256 = out_sha256
        self.digest = digest

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SegmentHeader) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            "SegmentHeader("
            + ", ".join(f"{k}={_show(getattr(self, k))}" for k in self.__slots__ if k != "framing")
            + ")"
        )

    def body(self) -> bytes:
        """The header bytes without the trailing digest."""
        return struct.pack(
            SEG_FMT,
            SEG_MAGIC_DENSE if self.dense else SEG_MAGIC,
            self.index,
            self.out_offset,
            self.out_len,
            self.payload_len,
            self.comp_len,
            self.n_ops,
            *self.kind_bytes,
            self.out_sha256,
        )

    @staticmethod
    def compute_digest(header_digest: bytes, body: bytes, comp: bytes | memoryview) -> bytes:
        """SHA-256 over the patch header digest, this header's body and the compressed bytes."""
        return _sha256(header_digest, body, comp)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "index": self.index,
            "out_offset": self.out_offset,
            "out_len": self.out_len,
            "payload_len": self.payload_len,
            "comp_len": self.comp_len,
            "n_ops": self.n_ops,
            "bytes": dict(zip(KIND_NAMES, self.kind_bytes, strict=True)),
            "out_sha256": self.out_sha256.hex(),
        }


class PatchInfo:
    """What a patch is: format, the images it connects, its segments and op statistics."""

    def __init__(
        self,
        format: str,
        version: int,
        old_size: int,
        old_sha256: bytes,
        new_size: int,
        new_sha256: bytes,
        patch_size: int | None,
        segments: list[SegmentHeader] | None = None,
        stats: dict[str, int | dict[str, int | str]] | None = None,
    ) -> None:
        self.format = format
        self.version = version
        self.old_size = old_size
        self.old_sha256 = old_sha256
        self.new_size = new_size
        self.new_sha256 = new_sha256
        self.patch_size = patch_size
        self.segments: list[SegmentHeader] = [] if segments is None else segments
        self.stats: dict[str, int | dict[str, int | str]] = {} if stats is None else stats

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_show(v)}" for k, v in vars(self).items())
        return f"PatchInfo({fields})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PatchInfo) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (digests as hex)."""
        return {
            "format": self.format,
            "version": self.version,
            "old_size": self.old_size,
            "old_sha256": self.old_sha256.hex(),
            "new_size": self.new_size,
            "new_sha256": self.new_sha256.hex(),
            "patch_size": self.patch_size,
            "segments": [s.to_dict() if hasattr(s, "to_dict") else s for s in self.segments],
            "stats": dict(self.stats),
        }
