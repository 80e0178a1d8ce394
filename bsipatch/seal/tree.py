"""Seals: dm-verity compatible hash trees over images, built, verified and read through.

A seal is the root hash of a SHA-256 hash tree over an image's 4096-byte blocks,
with its salt and the exact image size (:class:`Seal`). Unlike veritysetup, a
partial last block is protected: it is hashed zero padded and the exact size is
bound into the seal. This module is the seal layer's public face; the work is in

- :mod:`bsipatch.seal.format`: the :class:`Seal`, the veritysetup superblock, geometry;
- :mod:`bsipatch.seal.build`: leaf digests, the tree, hash files (:func:`seal_image`);
- :mod:`bsipatch.seal.verify`: :func:`verify_image`, :func:`check_leaves`;
- :mod:`bsipatch.seal.reader`: :class:`VerifiedReader`, :func:`open_verified`.

It does NOT decide whether a root hash is trusted: the root comes from signed
metadata (:mod:`bsipatch.trust.client`). The hashing itself runs in the native core
(:mod:`bsipatch.hashing`).
"""

from __future__ import annotations

from bsipatch.seal.build import image_leaves, root_from_leaves, seal_image, write_hash_file
from bsipatch.seal.format import (
    BLOCK_SIZE,
    DEFAULT_CHUNK_SIZE,
    DIGEST_SIZE,
    MAX_SALT,
    SUPERBLOCK_MAGIC,
    SUPERBLOCK_SIZE,
    SUPERBLOCK_VERSION,
    ImageSource,
    Progress,
    Seal,
    Superblock,
    read_superblock,
)
from bsipatch.seal.reader import VerifiedReader, iter_verified, open_verified
from bsipatch.seal.verify import check_leaves, verified_leaves, verify_image

__all__ = [
    "BLOCK_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "DIGEST_SIZE",
    "MAX_SALT",
    "SUPERBLOCK_MAGIC",
    "SUPERBLOCK_SIZE",
    "SUPERBLOCK_VERSION",
    "ImageSource",
    "Progress",
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
