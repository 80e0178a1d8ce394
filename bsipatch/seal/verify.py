"""Verifying images and leaf digests against a seal, naming the first bad block.

With a hash file the stored tree is checked from the root down, then every data
block; without one the leaves are recomputed. Also checks a list of leaf digests
(the installer's fast path) against a seal. Raises :class:`SealMismatch`; it does
not decide whether a root hash is trusted (that is :mod:`bsipatch.trust`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import numpy as np

from bsipatch import hashing
from bsipatch._io import PathLike, read_exact
from bsipatch.errors import SealFormatError, SealMismatch
from bsipatch.seal.build import _Image, _leaf_digests, _root_and_tree, root_from_leaves
from bsipatch.seal.format import (
    BLOCK_SIZE,
    DEFAULT_CHUNK_SIZE,
    DIGEST_SIZE,
    SUPERBLOCK_SIZE,
    ImageSource,
    Progress,
    Seal,
    Superblock,
    _check_salt,
    _Geometry,
)

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
    _compare_leaves(leaves, got_size, expect, lt, salt_b, salt_after, threads)


def _compare_leaves(
    leaves: np.ndarray,
    got_size: int,
    expect: _Expect,
    lt: _LoadedTree | None,
    salt: bytes,
    salt_after: bool,
    threads: int | None,
) -> None:
    """Check an image's leaves against the stored tree's (naming the first bad block)
    or, without a hash file, their root against the expected root."""
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
    root, _tree = _root_and_tree(leaves, salt, salt_after, threads)
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
