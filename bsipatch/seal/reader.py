"""Reading an image through its seal: every block returned has been checked.

:class:`VerifiedReader` (a seekable binary reader), :func:`open_verified` and
:func:`iter_verified`. With a hash file only the small tree is checked up front and
each block when read, as the kernel's dm-verity does; without one the leaves are
computed once. No writing, no trust decisions.
"""

from __future__ import annotations

import hmac
import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from bsipatch import hashing
from bsipatch._io import PathLike
from bsipatch.errors import SealMismatch
from bsipatch.seal.build import _Image, _leaf_digests, _root_and_tree
from bsipatch.seal.format import BLOCK_SIZE, DIGEST_SIZE, ImageSource, Seal
from bsipatch.seal.verify import (
    _check_tree,
    _expectation,
    _first_mismatch,
    _load_tree,
)

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
