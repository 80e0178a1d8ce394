"""The seal and the hash-file format: :class:`Seal`, the veritysetup superblock, tree geometry.

What a seal is (root hash, salt, exact size, block sizes; see docs/seal-format.md),
how the 512-byte superblock of a ``veritysetup`` hash file (format version 1) packs
and unpacks, where each tree level lives in a hash file, and salt checking. Pure
data and arithmetic: no hashing, no file reading beyond one superblock.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Union

from bsipatch import hashing
from bsipatch._io import PathLike, read_exact
from bsipatch._reprs import hex_repr
from bsipatch.errors import SealFormatError

BLOCK_SIZE = 4096


DIGEST_SIZE = 32


MAX_SALT = 256


SUPERBLOCK_SIZE = 512


SUPERBLOCK_MAGIC = b"verity\0\0"


SUPERBLOCK_VERSION = 1


# Per thread. Measured: 8 MiB buffers stay in the CPU caches between the copy from
# the page cache and the hashing; 32 MiB ones cost ~20% more CPU per GiB.
DEFAULT_CHUNK_SIZE = 8 << 20


_SB_FORMAT = "<8sII16s32sIIQH6s256s168s"


assert struct.calcsize(_SB_FORMAT) == SUPERBLOCK_SIZE


Progress = Callable[[int, int], None]


ImageSource = Union[PathLike, bytes, bytearray, memoryview, BinaryIO]  # noqa: UP007


# --- the seal ---------------------------------------------------------------------------


@hex_repr
@dataclass(frozen=True)
class Seal:
    """What an image must hash to: root hash, salt, exact size and tree geometry.

    Attributes:
        root_hash: the 32-byte root of the hash tree.
        salt: 0..256 bytes hashed in front of every block (hash type 1).
        data_size: the image size in bytes; a partial last block is hashed zero padded.
        data_block_size: bytes per data block (4096).
        hash_block_size: bytes per hash block (4096).
        hash_algorithm: ``"sha256"``.
        hash_type: 1 (salt before each block, the dm-verity default) or 0 (after).
    """

    root_hash: bytes
    salt: bytes
    data_size: int
    data_block_size: int = BLOCK_SIZE
    hash_block_size: int = BLOCK_SIZE
    hash_algorithm: str = "sha256"
    hash_type: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != DIGEST_SIZE:
            raise ValueError("root_hash must be 32 bytes")
        if not isinstance(self.salt, bytes) or len(self.salt) > MAX_SALT:
            raise ValueError(f"salt must be bytes of at most {MAX_SALT} bytes")
        if not isinstance(self.data_size, int) or self.data_size < 0:
            raise ValueError("data_size must be a non-negative integer")
        if self.data_block_size != BLOCK_SIZE or self.hash_block_size != BLOCK_SIZE:
            raise ValueError("only 4096-byte data and hash blocks are supported")
        if self.hash_algorithm != "sha256":
            raise ValueError("only sha256 is supported")
        if self.hash_type not in (0, 1):
            raise ValueError("hash_type must be 0 or 1")

    @property
    def data_blocks(self) -> int:
        """Number of data blocks, the partial last block included."""
        return -(-self.data_size // self.data_block_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: hex root and salt, sizes, algorithm (and hash_type when 0)."""
        d: dict[str, Any] = {
            "root_hash": self.root_hash.hex(),
            "salt": self.salt.hex(),
            "size": self.data_size,
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "hash_algorithm": self.hash_algorithm,
        }
        if self.hash_type != 1:
            d["hash_type"] = self.hash_type
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Seal:
        """Parse :meth:`to_dict` output.

        Raises:
            SealFormatError: a field is missing, mistyped or out of range.
        """
        try:
            if not isinstance(d, dict):
                raise TypeError("a seal must be a JSON object")
            root, salt, size = d["root_hash"], d["salt"], d["size"]
            if not isinstance(root, str) or not isinstance(salt, str):
                raise TypeError("root_hash and salt must be hex strings")
            if not isinstance(size, int) or isinstance(size, bool):
                raise TypeError("size must be an integer")
            return cls(
                root_hash=bytes.fromhex(root),
                salt=bytes.fromhex(salt),
                data_size=size,
                data_block_size=d.get("data_block_size", BLOCK_SIZE),
                hash_block_size=d.get("hash_block_size", BLOCK_SIZE),
                hash_algorithm=d.get("hash_algorithm", "sha256"),
                hash_type=d.get("hash_type", 1),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SealFormatError(f"invalid seal description: {exc}") from exc


# --- the superblock ---------------------------------------------------------------------


@hex_repr
@dataclass(frozen=True)
class Superblock:
    """The 512-byte veritysetup superblock at the start of a hash file (version 1)."""

    data_blocks: int
    salt: bytes
    uuid: bytes = b"\0" * 16
    hash_type: int = 1
    algorithm: str = "sha256"
    data_block_size: int = BLOCK_SIZE
    hash_block_size: int = BLOCK_SIZE
    version: int = SUPERBLOCK_VERSION

    def pack(self) -> bytes:
        """The 512 superblock bytes, little-endian, as veritysetup writes them."""
        return struct.pack(
            _SB_FORMAT,
            SUPERBLOCK_MAGIC,
            self.version,
            self.hash_type,
            self.uuid,
            self.algorithm.encode("ascii"),
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            len(self.salt),
            b"",
            self.salt,
            b"",
        )

    @classmethod
    def unpack(cls, raw: bytes) -> Superblock:
        """Parse and check a superblock.

        Raises:
            SealFormatError: too short, bad magic, unsupported version, algorithm,
                hash type or block sizes, or an oversized salt.
        """
        if len(raw) < SUPERBLOCK_SIZE:
            raise SealFormatError(
                f"hash file is truncated: {len(raw)} bytes, a superblock needs {SUPERBLOCK_SIZE}"
            )
        (magic, version, hash_type, uid, alg, dbs, hbs, blocks, salt_size, _pad1, salt, _pad2) = (
            struct.unpack(_SB_FORMAT, raw[:SUPERBLOCK_SIZE])
        )
        if magic != SUPERBLOCK_MAGIC:
            raise SealFormatError(
                f"not a verity hash file: magic {magic!r}, expected {SUPERBLOCK_MAGIC!r}"
            )
        if version != SUPERBLOCK_VERSION:
            raise SealFormatError(f"unsupported verity superblock version {version}, expected 1")
        if hash_type not in (0, 1):
            raise SealFormatError(f"unsupported verity hash type {hash_type}, expected 0 or 1")
        algorithm = alg.split(b"\0", 1)[0].decode("ascii", "replace")
        if algorithm.lower() != "sha256":
            raise SealFormatError(f"unsupported hash algorithm {algorithm!r}, expected 'sha256'")
        if dbs != BLOCK_SIZE or hbs != BLOCK_SIZE:
            raise SealFormatError(
                f"unsupported block sizes data={dbs} hash={hbs}, expected {BLOCK_SIZE}"
            )
        if salt_size > MAX_SALT:
            raise SealFormatError(f"superblock salt size {salt_size} exceeds {MAX_SALT}")
        return cls(
            data_blocks=blocks,
            salt=salt[:salt_size],
            uuid=uid,
            hash_type=hash_type,
            algorithm="sha256",
            data_block_size=dbs,
            hash_block_size=hbs,
            version=version,
        )


@dataclass(frozen=True)
class _Geometry:
    """Where each tree level lives in a hash file (in hash blocks, superblock first)."""

    data_blocks: int
    levels: tuple[int, ...]  # hash blocks per level, level 0 (data digests) first

    @classmethod
    def of(cls, data_blocks: int) -> _Geometry:
        return cls(data_blocks, tuple(hashing.verity_levels(data_blocks, BLOCK_SIZE)))

    @property
    def tree_blocks(self) -> int:
        return sum(self.levels)

    def level_offset(self, level: int) -> int:
        """Offset of ``level`` in hash blocks from the start of the tree (top level first)."""
        return sum(self.levels[level + 1 :])

    @property
    def tree_start(self) -> int:
        """Byte offset of the tree in the hash file: the superblock, padded to a block."""
        return -(-SUPERBLOCK_SIZE // BLOCK_SIZE) * BLOCK_SIZE


def _check_salt(salt: bytes | str | None) -> bytes:
    if salt is None:
        return os.urandom(32)
    if isinstance(salt, str):
        try:
            salt = bytes.fromhex(salt)
        except ValueError as exc:
            raise ValueError(f"salt is not valid hex: {exc}") from exc
    salt = bytes(salt)
    if len(salt) > MAX_SALT:
        raise ValueError(f"salt is {len(salt)} bytes, at most {MAX_SALT} allowed")
    return salt


def read_superblock(hash_file: PathLike) -> Superblock:
    """Read and check the superblock of a hash file.

    Raises:
        SealFormatError: the superblock is missing, damaged or unsupported.
    """
    with open(hash_file, "rb") as f:
        return Superblock.unpack(read_exact(f, SUPERBLOCK_SIZE))
