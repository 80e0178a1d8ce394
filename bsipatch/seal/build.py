"""Building seals: leaf digests of an image, the hash tree above them, hash files.

Streams an image (a path, bytes or a file) in large chunks on several threads
(memory bounded by ``threads * chunk_size`` plus the tree, 1/128 of the image),
skips file holes (their leaves are the zero block's digest), and writes hash files
byte-compatible with ``veritysetup``. An empty image has no blocks; its root hash is
``sha256(salt)``. It decides nothing about trust and verifies nothing.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import io
import os
import stat
import threading
import uuid
from typing import BinaryIO

import numpy as np

from bsipatch import hashing
from bsipatch._io import PathLike, atomic_write, is_pathlike
from bsipatch.errors import SealMismatch
from bsipatch.seal.format import (
    BLOCK_SIZE,
    DEFAULT_CHUNK_SIZE,
    DIGEST_SIZE,
    ImageSource,
    Progress,
    Seal,
    Superblock,
    _check_salt,
    _Geometry,
)

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
        _hash_memory(img.mem, leaves, salt, salt_after, nthreads, progress, chunk_size)
    else:
        _hash_file(img, leaves, salt, salt_after, nthreads, progress, chunk_size)
    return leaves, size


def _hash_memory(
    mem: memoryview,
    leaves: np.ndarray,
    salt: bytes,
    salt_after: bool,
    nthreads: int,
    progress: Progress | None,
    chunk_size: int,
) -> None:
    """Fill ``leaves`` from an image in memory: whole blocks hashed in place, tail padded."""
    size = len(mem)
    nblocks = len(leaves)
    whole = size // BLOCK_SIZE
    for a in range(0, whole, chunk_size // BLOCK_SIZE):
        b = min(whole, a + chunk_size // BLOCK_SIZE)
        hashing.hash_blocks(
            mem[a * BLOCK_SIZE : b * BLOCK_SIZE],
            salt=salt,
            salt_after=salt_after,
            threads=nthreads,
            out=leaves[a:b],
        )
        if progress:
            progress(b * BLOCK_SIZE, size)
    if whole < nblocks:
        tail = bytearray(BLOCK_SIZE)
        tail[: size - whole * BLOCK_SIZE] = mem[whole * BLOCK_SIZE :]
        hashing.hash_blocks(tail, salt=salt, salt_after=salt_after, threads=1, out=leaves[whole:])
        if progress:
            progress(size, size)


def _hash_file(
    img: _Image,
    leaves: np.ndarray,
    salt: bytes,
    salt_after: bool,
    nthreads: int,
    progress: Progress | None,
    chunk_size: int,
) -> None:
    """Fill ``leaves`` from a file: threads pread whole chunks and hash them, holes skipped.

    Each worker thread reads into its own buffer and hashes with one native thread, so
    reading overlaps hashing on the other cores; a chunk inside a file hole gets the
    zero block's digest without being read.
    """
    assert img.size is not None
    size = img.size
    nblocks = len(leaves)
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
