"""Seals: dm-verity compatible hash trees over images, built, verified and read through.

A seal is the root hash of a SHA-256 hash tree over an image's 4096-byte blocks,
with its salt and the exact image size (:class:`Seal`). This module streams images
in large chunks (memory stays bounded by ``threads * chunk_size`` plus the tree,
1/128 of the image), writes and reads hash files byte-compatible with
``veritysetup`` (format version 1, superblock included; see docs/seal-format.md),
verifies an image naming the first bad block, and offers a reader that checks
every block it returns (:class:`VerifiedReader`).

Unlike veritysetup, a partial last block is protected: it is hashed zero padded
and the exact size is bound into the :class:`Seal`. An empty image has no blocks;
its root hash is defined as ``sha256(salt)`` (veritysetup refuses empty images).

It does NOT decide whether a root hash is trusted: the root comes from signed
metadata (:mod:`bsipatch.trust.client`). The hashing itself runs in the native core
(:mod:`bsipatch.hashing`).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import hmac
import io
import os
import stat
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Union

import numpy as np

from bsipatch import hashing
from bsipatch._io import PathLike, atomic_write, is_pathlike, read_exact
from bsipatch.errors import SealFormatError, SealMismatch

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


# --- reading images ---------------------------------------------------------------------


class _Image:
    """One image source (path, file descriptor, memory or stream) read by offset."""

    def __init__(self, src: ImageSource) -> None:
        self._own: BinaryIO | None = None
        self.fd: int | None = None
        self.mem: memoryview | None = None
        self.stream: BinaryIO | None = None
        self.lock = threading.Lock()
        if is_pathlike(src):
            self._own = open(src, "rb")  # noqa: SIM115 - closed in close()
            self.fd = self._own.fileno()
        elif isinstance(src, (bytes, bytearray, memoryview)):
            self.mem = memoryview(src).cast("B")
        elif hasattr(src, "read"):
            fd = None
            try:
                fd = src.fileno()
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    fd = None
            except (AttributeError, OSError, io.UnsupportedOperation):
                fd = None
            if fd is not None:
                self.fd = fd
            else:
                self.stream = src
        else:
            raise TypeError(
                f"image must be a path, bytes-like or binary file, got {type(src).__name__}"
            )

    @property
    def size(self) -> int | None:
        """Size in bytes, or ``None`` for a stream that cannot seek."""
        if self.fd is not None:
            return os.fstat(self.fd).st_size
        if self.mem is not None:
            return self.mem.nbytes
        assert self.stream is not None
        try:
            pos = self.stream.tell()
            end = self.stream.seek(0, io.SEEK_END)
            self.stream.seek(pos)
            return end
        except (OSError, AttributeError, io.UnsupportedOperation):
            return None

    def pread(self, buf: memoryview, offset: int) -> int:
        """Fill ``buf`` from ``offset``; return the bytes read (fewer only at the end)."""
        want = len(buf)
        if self.mem is not None:
            got = max(0, min(want, self.mem.nbytes - offset))
            buf[:got] = self.mem[offset : offset + got]
            return got
        if self.fd is not None:
            done = 0
            while done < want:
                n = os.preadv(self.fd, [buf[done:]], offset + done)
                if n <= 0:
                    break
                done += n
            return done
        assert self.stream is not None
        with self.lock:
            self.stream.seek(offset)
            return _readinto_full(self.stream, buf)

    def data_ranges(self, size: int) -> list[tuple[int, int]] | None:
        """Data extents ``[(start, end), ...]`` of a sparse file, or ``None`` if unknown."""
        if self.fd is None or not hasattr(os, "SEEK_DATA"):
            return None
        ranges = []
        pos = 0
        try:
            while pos < size:
                try:
                    start = os.lseek(self.fd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: no more data
                    break
                end = min(os.lseek(self.fd, start, os.SEEK_HOLE), size)
                ranges.append((start, end))
                pos = end
        except OSError:
            return None
        return ranges

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
            self._own = None


def _readinto_full(f: BinaryIO, buf: memoryview) -> int:
    done = 0
    while done < len(buf):
        n = f.readinto(buf[done:])  # type: ignore[attr-defined]
        if not n:
            break
        done += n
    return done


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


def _zero_digest(salt: bytes, salt_after: bool) -> np.ndarray:
    digests = hashing.hash_blocks(bytes(BLOCK_SIZE), salt=salt, salt_after=salt_after, threads=1)
    zero: np.ndarray = digests[0]
    return zero


def _leaf_digests(
    img: _Image,
    salt: bytes,
    salt_after: bool,
    *,
    threads: int | None,
    progress: Progress | None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[np.ndarray, int]:
    """Digest of every data block (partial last block zero padded) and the image size."""
    chunk_size = max(BLOCK_SIZE, chunk_size // BLOCK_SIZE * BLOCK_SIZE)
    nthreads = hashing.resolve_threads(threads)
    size = img.size
    if size is None:
        return _leaf_digests_stream(img, salt, salt_after, nthreads, progress, chunk_size)
    nblocks = -(-size // BLOCK_SIZE)
    leaves = np.empty((nblocks, DIGEST_SIZE), dtype=np.uint8)
    if nblocks == 0:
        if progress:
            progress(0, 0)
        return leaves, 0
    if img.mem is not None:
        # In memory: hash whole blocks in place with native threads; pad the tail.
        whole = size // BLOCK_SIZE
        for a in range(0, whole, chunk_size // BLOCK_SIZE):
            b = min(whole, a + chunk_size // BLOCK_SIZE)
            hashing.hash_blocks(
                img.mem[a * BLOCK_SIZE : b * BLOCK_SIZE],
                salt=salt,
                salt_after=salt_after,
                threads=nthreads,
                out=leaves[a:b],
            )
            if progress:
                progress(b * BLOCK_SIZE, size)
        if whole < nblocks:
            tail = bytearray(BLOCK_SIZE)
            tail[: size - whole * BLOCK_SIZE] = img.mem[whole * BLOCK_SIZE :]
            hashing.hash_blocks(
                tail, salt=salt, salt_after=salt_after, threads=1, out=leaves[whole:]
            )
            if progress:
                progress(size, size)
        return leaves, size

    # A file: each worker thread preads whole chunks into its own buffer and hashes
    # them with one native thread, so reading overlaps hashing on the other cores.
    if img.fd is not None and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(img.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    ranges = img.data_ranges(size)
    zero = _zero_digest(salt, salt_after) if ranges is not None else None
    local = threading.local()
    nchunks = -(-size // chunk_size)

    range_ends = [e for _, e in ranges] if ranges is not None else []

    def in_hole(start: int, end: int) -> bool:
        """True when no data extent overlaps [start, end) (sorted extents, bisect)."""
        if ranges is None:
            return False
        i = bisect.bisect_right(range_ends, start)
        return i == len(ranges) or ranges[i][0] >= end

    def work(k: int) -> int:
        start = k * chunk_size
        end = min(size, start + chunk_size)
        first = start // BLOCK_SIZE
        count = -(-(end - start) // BLOCK_SIZE)
        if zero is not None and in_hole(start, end):
            leaves[first : first + count] = zero
            return end - start
        buf = getattr(local, "buf", None)
        if buf is None:
            # never larger than the (block-padded) image: small images stay cheap
            buf = local.buf = memoryview(bytearray(min(chunk_size, nblocks * BLOCK_SIZE)))
        got = img.pread(buf[: end - start], start)
        if got != end - start:
            raise SealMismatch(
                f"image shrank while reading: expected {size} bytes, ended at {start + got}",
                block=(start + got) // BLOCK_SIZE,
            )
        padded = count * BLOCK_SIZE
        if padded != got:
            buf[got:padded] = bytes(padded - got)
        hashing.hash_blocks(
            buf[:padded],
            salt=salt,
            salt_after=salt_after,
            threads=1,
            out=leaves[first : first + count],
        )
        return end - start

    done = 0
    if nthreads == 1 or nchunks == 1:
        for k in range(nchunks):
            done += work(k)
            if progress:
                progress(done, size)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(nthreads, nchunks)) as pool:
            for got in pool.map(work, range(nchunks)):
                done += got
                if progress:
                    progress(done, size)
    return leaves, size


def _leaf_digests_stream(
    img: _Image,
    salt: bytes,
    salt_after: bool,
    nthreads: int,
    progress: Progress | None,
    chunk_size: int,
) -> tuple[np.ndarray, int]:
    assert img.stream is not None
    parts = []
    buf = memoryview(bytearray(chunk_size))
    size = 0
    while True:
        got = _readinto_full(img.stream, buf)
        if got == 0:
            break
        size += got
        count = -(-got // BLOCK_SIZE)
        if count * BLOCK_SIZE != got:
            buf[got : count * BLOCK_SIZE] = bytes(count * BLOCK_SIZE - got)
        parts.append(
            hashing.hash_blocks(
                buf[: count * BLOCK_SIZE], salt=salt, salt_after=salt_after, threads=nthreads
            )
        )
        if progress:
            progress(size, size)
        if got < chunk_size:
            break
    if not parts:
        return np.empty((0, DIGEST_SIZE), dtype=np.uint8), 0
    return np.concatenate(parts), size


def _root_and_tree(
    leaves: np.ndarray, salt: bytes, salt_after: bool, threads: int | None
) -> tuple[bytes, np.ndarray]:
    if leaves.shape[0] == 0:
        # No blocks: the root of an empty image is sha256(salt) (hash type 1).
        return hashing.sha256(salt), np.empty(0, dtype=np.uint8)
    return hashing.verity_build(
        leaves, hash_block_size=BLOCK_SIZE, salt=salt, salt_after=salt_after, threads=threads
    )


# --- sealing ----------------------------------------------------------------------------


def seal_image(
    image: ImageSource,
    *,
    hash_file: PathLike | None = None,
    salt: bytes | str | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    hash_type: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Seal:
    """Build the hash tree of an image and return its :class:`Seal`.

    Args:
        image: a path, a bytes-like object, or a binary file (read from offset 0
            when it is a regular file, else from its current position to EOF).
        hash_file: when given, write the veritysetup-compatible superblock and tree
            there (crash-safely: temporary file, fsync, rename).
        salt: bytes or hex; ``None`` draws 32 random bytes. At most 256 bytes.
        threads: hashing threads; ``None`` means ``os.cpu_count()``.
        progress: ``callback(done_bytes, total_bytes)``.
        hash_type: 1 (dm-verity default, salt first) or 0 (salt last).
        chunk_size: bytes read per step and thread.

    Returns:
        The seal (root hash, salt, exact size).

    Raises:
        ValueError: bad salt or hash_type.
        OSError: the image cannot be read or the hash file written.

    Example:
        >>> s = seal_image(bytes(8192), salt=b"")
        >>> s.data_blocks
        2
    """
    if hash_type not in (0, 1):
        raise ValueError("hash_type must be 0 or 1")
    salt_b = _check_salt(salt)
    salt_after = hash_type == 0
    img = _Image(image)
    try:
        leaves, size = _leaf_digests(
            img, salt_b, salt_after, threads=threads, progress=progress, chunk_size=chunk_size
        )
    finally:
        img.close()
    root, tree = _root_and_tree(leaves, salt_b, salt_after, threads)
    seal = Seal(root_hash=root, salt=salt_b, data_size=size, hash_type=hash_type)
    if hash_file is not None:
        write_hash_file(hash_file, seal, tree)
    return seal


def write_hash_file(path: PathLike, seal: Seal, tree: np.ndarray) -> None:
    """Write superblock + tree as ``veritysetup format`` does (random UUID)."""
    geo = _Geometry.of(seal.data_blocks)
    if tree.size != geo.tree_blocks * BLOCK_SIZE:
        raise ValueError("tree does not match the seal's geometry")
    sb = Superblock(
        data_blocks=seal.data_blocks,
        salt=seal.salt,
        uuid=uuid.uuid4().bytes,
        hash_type=seal.hash_type,
    )
    header = sb.pack().ljust(geo.tree_start, b"\0")
    with atomic_write(path) as f:
        f.write(header)
        f.write(tree.data)


# --- verifying --------------------------------------------------------------------------


@dataclass
class _Expect:
    root: bytes
    salt: bytes | None
    size: int | None
    hash_type: int


def _expectation(root_or_seal: Seal | bytes | str, salt: bytes | str | None) -> _Expect:
    if isinstance(root_or_seal, Seal):
        s = root_or_seal
        if salt is not None and _check_salt(salt) != s.salt:
            raise SealFormatError("the salt given differs from the seal's salt")
        return _Expect(s.root_hash, s.salt, s.data_size, s.hash_type)
    root = root_or_seal
    if isinstance(root, str):
        try:
            root = bytes.fromhex(root)
        except ValueError as exc:
            raise SealFormatError(f"root hash is not valid hex: {exc}") from exc
    if not isinstance(root, (bytes, bytearray)) or len(root) != DIGEST_SIZE:
        raise SealFormatError("a root hash must be 32 bytes (64 hex digits)")
    return _Expect(bytes(root), None if salt is None else _check_salt(salt), None, 1)


@dataclass
class _LoadedTree:
    superblock: Superblock
    geometry: _Geometry
    tree: np.ndarray

    def leaves(self) -> np.ndarray:
        geo = self.geometry
        if not geo.levels:
            return np.empty((0, DIGEST_SIZE), dtype=np.uint8)
        off = geo.level_offset(0) * BLOCK_SIZE
        return self.tree[off : off + geo.data_blocks * DIGEST_SIZE].reshape(-1, DIGEST_SIZE)


def read_superblock(hash_file: PathLike) -> Superblock:
    """Read and check the superblock of a hash file.

    Raises:
        SealFormatError: the superblock is missing, damaged or unsupported.
    """
    with open(hash_file, "rb") as f:
        return Superblock.unpack(read_exact(f, SUPERBLOCK_SIZE))


def _load_tree(hash_file: PathLike, expect: _Expect, image_size: int) -> _LoadedTree:
    """Read the hash file, check its superblock against the expectation and sizes."""
    with open(hash_file, "rb") as f:
        sb = Superblock.unpack(read_exact(f, SUPERBLOCK_SIZE))
        if expect.salt is not None and not hmac.compare_digest(sb.salt, expect.salt):
            raise SealFormatError(
                f"wrong salt: the hash file's superblock has salt {sb.salt.hex() or '(empty)'}, "
                f"expected {expect.salt.hex() or '(empty)'}"
            )
        if expect.size is not None and sb.hash_type != expect.hash_type:
            raise SealFormatError(
                f"hash file has hash type {sb.hash_type}, the seal says {expect.hash_type}"
            )
        blocks = -(-image_size // BLOCK_SIZE)
        if sb.data_blocks != blocks:
            if sb.data_blocks == image_size // BLOCK_SIZE:
                raise SealFormatError(
                    f"the hash file covers only the {sb.data_blocks} whole blocks of this "
                    f"{image_size}-byte image (as veritysetup makes it): its last "
                    f"{image_size % BLOCK_SIZE} bytes would be unprotected; reseal with bsipatch"
                )
            raise SealFormatError(
                f"the hash file covers {sb.data_blocks} data blocks, the image has {blocks}"
            )
        geo = _Geometry.of(sb.data_blocks)
        f.seek(geo.tree_start)
        want = geo.tree_blocks * BLOCK_SIZE
        tree = np.frombuffer(bytearray(read_exact(f, want)), dtype=np.uint8)
        if tree.size != want:
            raise SealFormatError(
                f"hash file is truncated: {geo.tree_start + tree.size} bytes, the tree for "
                f"{sb.data_blocks} blocks needs {geo.tree_start + want}"
            )
    return _LoadedTree(sb, geo, tree)


def _first_mismatch(a: np.ndarray, b: np.ndarray) -> int | None:
    bad = np.flatnonzero(np.any(a != b, axis=1))
    return int(bad[0]) if bad.size else None


def _check_tree(lt: _LoadedTree, root: bytes, threads: int | None) -> None:
    """Check the stored tree from the root down; name the first bad hash block."""
    salt = lt.superblock.salt
    salt_after = lt.superblock.hash_type == 0
    geo = lt.geometry
    hbs = BLOCK_SIZE
    first_tree_block = geo.tree_start // hbs
    if not geo.levels:
        return  # 0 or 1 data block: the root is checked against the data directly
    top = len(geo.levels) - 1
    top_off = geo.level_offset(top) * hbs
    got = hashing.hash_blocks(
        lt.tree[top_off : top_off + hbs], salt=salt, salt_after=salt_after, threads=1
    )[0].tobytes()
    if not hmac.compare_digest(got, root):
        raise SealMismatch(
            f"root hash mismatch: the hash file's top block (hash block "
            f"{first_tree_block + geo.level_offset(top)}) hashes to {got.hex()}, expected "
            f"{root.hex()} (wrong root hash or salt, or a damaged hash file)",
            block=first_tree_block + geo.level_offset(top),
            area="root",
        )
    for level in range(top, 0, -1):
        parent_off = geo.level_offset(level) * hbs
        child_off = geo.level_offset(level - 1) * hbs
        nchild = geo.levels[level - 1]
        stored = lt.tree[parent_off : parent_off + nchild * DIGEST_SIZE].reshape(-1, DIGEST_SIZE)
        computed = hashing.hash_blocks(
            lt.tree[child_off : child_off + nchild * hbs],
            salt=salt,
            salt_after=salt_after,
            threads=threads,
        )
        bad = _first_mismatch(computed, stored)
        if bad is not None:
            block = first_tree_block + geo.level_offset(level - 1) + bad
            raise SealMismatch(
                f"hash file block {block} (tree level {level - 1}, entry {bad}) does not match "
                f"its digest in level {level}: the hash file is damaged",
                block=block,
                area="hash",
            )


def verify_image(
    image: ImageSource,
    root_hash_or_seal: Seal | bytes | str,
    *,
    salt: bytes | str | None = None,
    hash_file: PathLike | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> None:
    """Verify an image fully against a root hash or a :class:`Seal`.

    With ``hash_file`` the stored tree is checked from the root down and then every
    data block against it, so the error names the first bad block. Without it the
    tree is recomputed in memory and only the root can be compared.

    Args:
        image: path, bytes-like object or binary file.
        root_hash_or_seal: a :class:`Seal` (its size and salt are used) or a root hash
            (32 bytes or 64 hex digits).
        salt: salt (bytes or hex) when a bare root is given; with a hash file, the
            superblock's salt is used and a different ``salt`` is refused.
        hash_file: a veritysetup-compatible hash file to check against.
        threads: hashing threads; ``None`` means ``os.cpu_count()``.
        progress: ``callback(done_bytes, total_bytes)``.
        chunk_size: bytes read per step and thread.

    Raises:
        SealMismatch: a data block (``area="data"``, ``block`` = its index), a hash
            block (``area="hash"``, ``block`` = hash-file block index) or the root
            (``area="root"``) does not match; or the size differs from the seal's.
        SealFormatError: bad superblock, truncated hash file, wrong salt, bad root.

    Example:
        >>> s = seal_image(b"x" * 5000, salt=b"")
        >>> verify_image(b"x" * 5000, s)
    """
    expect = _expectation(root_hash_or_seal, salt)
    img = _Image(image)
    try:
        size = img.size
        if expect.size is not None and size is not None and size != expect.size:
            raise SealMismatch(
                f"image is {size} bytes, the seal says {expect.size}",
                block=min(size, expect.size) // BLOCK_SIZE,
                area="data",
            )
        if hash_file is not None:
            if size is None:
                raise ValueError("verifying against a hash file needs a seekable image")
            lt = _load_tree(hash_file, expect, size)
            _check_tree(lt, expect.root, threads)
            salt_b = lt.superblock.salt
            salt_after = lt.superblock.hash_type == 0
        else:
            if expect.salt is None:
                raise ValueError("a bare root hash needs salt= (or a hash file, or a Seal)")
            lt = None
            salt_b = expect.salt
            salt_after = expect.hash_type == 0
        leaves, got_size = _leaf_digests(
            img, salt_b, salt_after, threads=threads, progress=progress, chunk_size=chunk_size
        )
    finally:
        img.close()
    if expect.size is not None and got_size != expect.size:
        raise SealMismatch(
            f"image is {got_size} bytes, the seal says {expect.size}",
            block=min(got_size, expect.size) // BLOCK_SIZE,
        )
    if lt is not None and lt.geometry.levels:
        bad = _first_mismatch(leaves, lt.leaves())
        if bad is not None:
            raise SealMismatch(
                f"data block {bad} (bytes {bad * BLOCK_SIZE}.."
                f"{min(got_size, (bad + 1) * BLOCK_SIZE) - 1}) does not match the seal",
                block=bad,
                area="data",
            )
        return
    root, _tree = _root_and_tree(leaves, salt_b, salt_after, threads)
    if not hmac.compare_digest(root, expect.root):
        raise _root_mismatch(
            leaves.shape[0],
            f"the image hashes to {root.hex()}, expected "
            f"{expect.root.hex()} (image changed, or wrong root or salt)",
        )


def _root_mismatch(n_leaves: int, detail: str) -> SealMismatch:
    """The error for leaves whose root is not the seal's (one block: that block is bad)."""
    if n_leaves == 1:
        return SealMismatch("data block 0 does not match the root hash", block=0, area="data")
    return SealMismatch(f"root hash mismatch: {detail}", block=None, area="root")


# --- leaves ---------------------------------------------------------------------------


def image_leaves(
    image: ImageSource,
    salt: bytes,
    *,
    salt_after: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """The dm-verity leaves (data-block digests) of an image: ``(blocks, 32)`` uint8.

    Nothing is checked: see :func:`verified_leaves` for leaves that can be trusted.
    """
    img = _Image(image)
    try:
        leaves, _size = _leaf_digests(
            img, bytes(salt), salt_after, threads=threads, progress=progress
        )
    finally:
        img.close()
    return leaves


def root_from_leaves(leaves: np.ndarray, seal: Seal, *, threads: int | None = None) -> bytes:
    """The root hash that ``leaves`` give with the salt and hash type of ``seal``."""
    root, _tree = _root_and_tree(
        np.ascontiguousarray(leaves, dtype=np.uint8), seal.salt, seal.hash_type == 0, threads
    )
    return root


def check_leaves(leaves: np.ndarray, seal: Seal, *, threads: int | None = None) -> None:
    """Check leaves against a seal: their count must fit its size and their root be its root.

    This is the whole-image check of :func:`verify_image` for a caller that knows the
    leaves of the image (e.g. :class:`bsipatch.delta.apply.Provenance`) and only builds the
    tree over them: 1/128 of the hashing.

    Raises:
        SealMismatch: wrong number of leaves, or a different root.
    """
    if (
        leaves.ndim != 2
        or leaves.shape[1:] != (DIGEST_SIZE,)
        or leaves.shape[0] != seal.data_blocks
    ):
        raise SealMismatch(
            f"{leaves.shape[0] if leaves.ndim == 2 else '?'} leaves for a seal of "
            f"{seal.data_blocks} data blocks",
            area="data",
        )
    root = root_from_leaves(leaves, seal, threads=threads)
    if not hmac.compare_digest(root, seal.root_hash):
        raise _root_mismatch(
            leaves.shape[0],
            f"the image's leaves give {root.hex()}, expected {seal.root_hash.hex()}",
        )


def verified_leaves(
    image: ImageSource,
    seal: Seal,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Hash an image, check it against ``seal`` (as :func:`verify_image` without a hash
    file does) and return its leaves, which are then as trustworthy as the seal.

    Raises:
        SealMismatch: the image differs from the sealed one (size or content).
    """
    img = _Image(image)
    try:
        size = img.size
        if size is not None and size != seal.data_size:
            raise SealMismatch(
                f"image is {size} bytes, the seal says {seal.data_size}",
                block=min(size, seal.data_size) // BLOCK_SIZE,
                area="data",
            )
        leaves, got = _leaf_digests(
            img, seal.salt, seal.hash_type == 0, threads=threads, progress=progress
        )
    finally:
        img.close()
    if got != seal.data_size:
        raise SealMismatch(
            f"image is {got} bytes, the seal says {seal.data_size}",
            block=min(got, seal.data_size) // BLOCK_SIZE,
        )
    check_leaves(leaves, seal, threads=threads)
    return leaves


# --- reading through a seal -------------------------------------------------------------


class VerifiedReader(io.RawIOBase):
    """A seekable, read-only file over an image that checks each block it returns.

    Every 4096-byte block is hashed and compared with the seal's tree whenever it
    is read from the image (its first read, and again on later reads, as the image
    may change underneath); only the last verified run of blocks is kept in memory,
    so small sequential reads are served from already-checked bytes. A bad block
    raises :class:`SealMismatch` naming it, and no byte of it is returned. Build
    one with :func:`open_verified`; it is not thread-safe.
    """

    MAX_READ = 8 << 20

    def __init__(
        self, img: _Image, leaves: np.ndarray, size: int, salt: bytes, salt_after: bool
    ) -> None:
        super().__init__()
        self._img = img
        self._leaves = leaves
        self._size = size
        self._salt = salt
        self._salt_after = salt_after
        self._pos = 0
        self.blocks_checked = 0
        # the last verified run of blocks, kept in memory: small sequential reads are
        # served from it (already checked bytes), never re-read from the image
        self._cache_first = 0
        self._cache: memoryview | None = None

    @property
    def size(self) -> int:
        """The image size in bytes."""
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def readinto(self, b: Any) -> int:
        self._checkClosed()
        out = memoryview(b).cast("B")
        if self._pos >= self._size or len(out) == 0:
            return 0
        n = min(len(out), self._size - self._pos, self.MAX_READ)
        cache = self._cache
        if cache is not None:
            start = self._pos - self._cache_first * BLOCK_SIZE
            if start >= 0 and start + n <= len(cache):
                out[:n] = cache[start : start + n]
                self._pos += n
                return n
        first = self._pos // BLOCK_SIZE
        last = (self._pos + n - 1) // BLOCK_SIZE
        count = last - first + 1
        buf = memoryview(bytearray(count * BLOCK_SIZE))
        want = min(count * BLOCK_SIZE, self._size - first * BLOCK_SIZE)
        got = self._img.pread(buf[:want], first * BLOCK_SIZE)
        if got != want:
            raise SealMismatch(
                f"image is truncated: data block {first + got // BLOCK_SIZE} is missing",
                block=first + got // BLOCK_SIZE,
            )
        digests = hashing.hash_blocks(
            buf, salt=self._salt, salt_after=self._salt_after, threads=None if count >= 256 else 1
        )
        bad = _first_mismatch(digests, self._leaves[first : last + 1])
        self.blocks_checked += count
        if bad is not None:
            block = first + bad
            raise SealMismatch(f"data block {block} does not match the seal", block=block)
        self._cache_first, self._cache = first, buf[:want]
        skip = self._pos - first * BLOCK_SIZE
        out[:n] = buf[skip : skip + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        chunks = []
        while True:
            data = self.read(self.MAX_READ)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        if not self.closed:
            self._img.close()
        super().close()


def open_verified(
    image: ImageSource,
    seal_or_root: Seal | bytes | str,
    *,
    hash_file: PathLike | None = None,
    salt: bytes | str | None = None,
    threads: int | None = None,
) -> VerifiedReader:
    """Open an image for reading with every block checked against its seal.

    With ``hash_file`` only the (small) tree is checked up front, and each data
    block is checked when it is read, as the kernel's dm-verity does. Without it
    the leaf digests are computed from the image once (a full pass) and the root
    compared before the reader is returned.

    Args:
        image: path, bytes-like object or seekable binary file.
        seal_or_root: a :class:`Seal`, or a root hash (then ``salt`` or ``hash_file``).
        hash_file: veritysetup-compatible hash file.
        salt: salt for a bare root hash without a hash file.
        threads: hashing threads for the up-front checks.

    Returns:
        A :class:`VerifiedReader` (use it in ``with``).

    Raises:
        SealMismatch, SealFormatError: as :func:`verify_image` for the up-front checks.

    Example:
        >>> s = seal_image(b"abc", salt=b"")
        >>> with open_verified(b"abc", s) as r:
        ...     r.read()
        b'abc'
    """
    expect = _expectation(seal_or_root, salt)
    img = _Image(image)
    try:
        size = img.size
        if size is None:
            raise ValueError("open_verified needs a seekable image")
        if expect.size is not None and size != expect.size:
            raise SealMismatch(
                f"image is {size} bytes, the seal says {expect.size}",
                block=min(size, expect.size) // BLOCK_SIZE,
            )
        if hash_file is not None:
            lt = _load_tree(hash_file, expect, size)
            salt_b, salt_after = lt.superblock.salt, lt.superblock.hash_type == 0
            if lt.geometry.levels:
                _check_tree(lt, expect.root, threads)
                leaves = lt.leaves()
            else:
                # 0 or 1 block: the root is the digest of the only block (or of the salt).
                leaves = np.frombuffer(expect.root, dtype=np.uint8).reshape(1, DIGEST_SIZE)
                if size == 0:
                    if not hmac.compare_digest(hashing.sha256(salt_b), expect.root):
                        raise SealMismatch("root hash mismatch for an empty image", area="root")
                    leaves = leaves[:0]
        else:
            if expect.salt is None:
                raise ValueError("a bare root hash needs salt= (or a hash file, or a Seal)")
            salt_b, salt_after = expect.salt, expect.hash_type == 0
            leaves, _ = _leaf_digests(img, salt_b, salt_after, threads=threads, progress=None)
            root, _tree = _root_and_tree(leaves, salt_b, salt_after, threads)
            if not hmac.compare_digest(root, expect.root):
                raise SealMismatch(
                    f"root hash mismatch: the image hashes to {root.hex()}, expected "
                    f"{expect.root.hex()}",
                    area="root",
                )
    except BaseException:
        img.close()
        raise
    return VerifiedReader(img, np.array(leaves), size, salt_b, salt_after)


def iter_verified(
    image: ImageSource,
    seal_or_root: Seal | bytes | str,
    *,
    hash_file: PathLike | None = None,
    salt: bytes | str | None = None,
    chunk_size: int = 1 << 20,
) -> Iterator[bytes]:
    """Yield the image in verified chunks (the iterator shape of :func:`open_verified`)."""
    with open_verified(image, seal_or_root, hash_file=hash_file, salt=salt) as r:
        while True:
            data = r.read(chunk_size)
            if not data:
                return
            yield data


__all__ = [
    "BLOCK_SIZE",
    "Seal",
    "Superblock",
    "VerifiedReader",
    "check_leaves",
    "image_leaves",
    "iter_verified",
    "open_verified",
    "read_superblock",
    "root_from_leaves",
    "seal_image",
    "verified_leaves",
    "verify_image",
    "write_hash_file",
]
