"""SHA-256 and salted block hashing on memory, through the native core.

This module is the Python face of ``csrc/bsi_sha256*.c``, ``csrc/bsi_blocks.c`` and
``csrc/bsi_verity.c``: one-shot SHA-256 (SHA-NI when the CPU has it, a portable
FIPS 180-4 implementation otherwise), many equal blocks hashed per call into a
numpy array without copies, over several threads, and the dm-verity tree levels.
It does NO file I/O and makes no trust decisions: :mod:`bsipatch.seal.tree` does.

The GIL is released during every native call (cffi does this), so Python threads
calling these functions run in parallel. Inputs must not change during a call.
"""

from __future__ import annotations

from bsipatch import _native
from bsipatch._native import ffi, lib
from bsipatch._threads import default_threads

# numpy is imported by the functions that return arrays: SHA-256 alone (the apply
# path) does not load it.
TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    import numpy as np

    from bsipatch._buffers import Buffer

    #: What the hashing functions read: bytes-likes, memory maps and numpy arrays.
    BytesLike: TypeAlias = Buffer | np.ndarray

DIGEST_SIZE = 32
MAX_LEVELS = 63

if _native.simd_env_disabled():
    lib.bsi_sha256_simd_enable(0)


def simd_available() -> bool:
    """True when this CPU has SHA-NI (and SSE4.1/SSSE3) so the fast path can run."""
    return bool(lib.bsi_sha256_simd_available())


def simd_active() -> bool:
    """True when SHA-256 currently runs on SHA-NI (available and not switched off)."""
    return bool(lib.bsi_sha256_simd_active())


def use_simd(enabled: bool) -> bool:
    """Switch the SHA-NI path on or off for the whole process (tests force each path).

    Args:
        enabled: ``False`` forces the portable code; ``True`` uses SHA-NI when available.

    Returns:
        Whether SHA-NI is in use after the call.
    """
    return bool(lib.bsi_sha256_simd_enable(1 if enabled else 0))


def implementation() -> str:
    """Name of the SHA-256 code in use: ``"sha-ni"`` or ``"portable"``."""
    name: str = ffi.string(lib.bsi_sha256_impl()).decode("ascii")
    return name


def resolve_threads(threads: int | None) -> int:
    """Threads to use for ``threads=`` (``None`` -> ``os.cpu_count()``, capped at 256).

    Raises:
        ValueError: ``threads`` is not a positive integer or ``None``.
    """
    if threads is None:
        return default_threads()
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return min(threads, 256)


def _buffer(data: Any, what: str) -> Any:
    """A cffi view of a contiguous bytes-like object (no copy)."""
    try:
        return ffi.from_buffer("uint8_t[]", data)
    except TypeError as exc:
        raise TypeError(f"{what} must be a contiguous bytes-like object: {exc}") from exc


def sha256(data: BytesLike) -> bytes:
    """SHA-256 digest of a bytes-like object.

    Args:
        data: bytes, bytearray, memoryview, numpy array, or any contiguous buffer.

    Returns:
        The 32-byte digest.

    Example:
        >>> sha256(b"abc").hex()[:16]
        'ba7816bf8f01cfea'
    """
    buf = _buffer(data, "data")
    out = ffi.new("uint8_t[32]")
    lib.bsi_sha256(buf, len(buf), out)
    return bytes(ffi.buffer(out))


class Sha256:
    """Streaming SHA-256 on the native core (hashlib-like: update, digest, copy).

    Example:
        >>> h = Sha256(); h.update(b"ab"); h.update(b"c"); h.hexdigest()[:8]
        'ba7816bf'
    """

    digest_size = DIGEST_SIZE
    block_size = 64
    name = "sha256"

    def __init__(self, data: Any = b"") -> None:
        self._ctx = ffi.new("bsi_sha256_ctx *")
        lib.bsi_sha256_init(self._ctx)
        if len(data):
            self.update(data)

    def update(self, data: Any) -> None:
        """Absorb more bytes (any contiguous bytes-like object)."""
        buf = _buffer(data, "data")
        lib.bsi_sha256_update(self._ctx, buf, len(buf))

    def copy(self) -> Sha256:
        """An independent copy of the current state."""
        other = Sha256()
        ffi.memmove(other._ctx, self._ctx, ffi.sizeof("bsi_sha256_ctx"))
        return other

    def digest(self) -> bytes:
        """The digest of everything absorbed so far (the object stays usable)."""
        ctx = ffi.new("bsi_sha256_ctx *")
        ffi.memmove(ctx, self._ctx, ffi.sizeof("bsi_sha256_ctx"))
        out = ffi.new("uint8_t[32]")
        lib.bsi_sha256_final(ctx, out)
        return bytes(ffi.buffer(out))

    def hexdigest(self) -> str:
        """:meth:`digest` as hex."""
        return self.digest().hex()


def update_two(a: Sha256, data_a: Any, b: Sha256, data_b: Any) -> None:
    """``a.update(data_a); b.update(data_b)`` for two inputs of equal length, run as two
    interleaved SHA-NI streams on this thread (about 1.7x the throughput of two updates;
    the same digests either way).

    Raises:
        ValueError: the lengths differ.
    """
    pa, pb = _buffer(data_a, "data_a"), _buffer(data_b, "data_b")
    if len(pa) != len(pb):
        raise ValueError(f"update_two needs equal lengths, got {len(pa)} and {len(pb)}")
    lib.bsi_sha256_update_x2(a._ctx, pa, b._ctx, pb, len(pa))


def hash_blocks(
    data: BytesLike,
    *,
    block_size: int = 4096,
    salt: bytes = b"",
    salt_after: bool = False,
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Hash equal blocks: ``sha256(salt || block)`` each (dm-verity hash type 1).

    Args:
        data: contiguous bytes-like object whose length is a multiple of ``block_size``.
        block_size: bytes per block.
        salt: salt hashed before each block (or after it with ``salt_after=True``,
            dm-verity hash type 0).
        threads: threads to use; ``None`` means ``os.cpu_count()``.
        out: optional C-contiguous uint8 array of shape ``(n, 32)`` to fill.

    Returns:
        uint8 array of shape ``(n, 32)``: row ``i`` is the digest of block ``i``.

    Raises:
        ValueError: the length is not a multiple of ``block_size``, or ``out`` has
            the wrong shape.

    Example:
        >>> hash_blocks(bytes(8192)).shape
        (2, 32)
    """
    import numpy as np

    if not isinstance(block_size, int) or not 0 < block_size < 2**31:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    buf = _buffer(data, "data")
    size = len(buf)
    if size % block_size:
        raise ValueError(f"data length {size} is not a multiple of block_size {block_size}")
    n = size // block_size
    if out is None:
        out = np.empty((n, DIGEST_SIZE), dtype=np.uint8)
    elif (
        out.dtype != np.uint8
        or out.shape != (n, DIGEST_SIZE)
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise ValueError(f"out must be a writable C-contiguous uint8 array of shape ({n}, 32)")
    salt = bytes(salt)
    if n:
        rc = lib.bsi_hash_blocks(
            buf,
            n,
            block_size,
            salt,
            len(salt),
            1 if salt_after else 0,
            ffi.from_buffer("uint8_t[]", out),
            resolve_threads(threads),
        )
        _native.check(rc, "bsi_hash_blocks")
    return out


def verity_levels(data_blocks: int, hash_block_size: int = 4096) -> list[int]:
    """Hash blocks of each dm-verity tree level, level 0 (data digests) first.

    Args:
        data_blocks: number of data blocks.
        hash_block_size: bytes per hash block (a power of two >= 64).

    Returns:
        One count per level; empty when ``data_blocks <= 1`` (the root is then the
        digest of the only data block, as veritysetup does it).
    """
    if data_blocks < 0:
        raise ValueError("data_blocks must be >= 0")
    counts = ffi.new("uint64_t[]", MAX_LEVELS)
    levels = _native.check(
        lib.bsi_verity_levels(data_blocks, hash_block_size, counts), "bsi_verity_levels"
    )
    return [int(counts[i]) for i in range(levels)]


def verity_build(
    leaves: np.ndarray,
    *,
    hash_block_size: int = 4096,
    salt: bytes = b"",
    salt_after: bool = False,
    threads: int | None = None,
) -> tuple[bytes, np.ndarray]:
    """Build the dm-verity hash tree over data-block digests.

    Args:
        leaves: uint8 array ``(n, 32)`` of data-block digests, ``n >= 1``.
        hash_block_size: bytes per hash block.
        salt: the salt (as in :func:`hash_blocks`).
        salt_after: dm-verity hash type 0 when true.
        threads: threads for hashing the upper levels.

    Returns:
        ``(root_hash, tree)`` with ``tree`` a uint8 array laid out as on disk after
        the superblock: top level first, level 0 last, each level zero padded.
    """
    import numpy as np

    leaves = np.ascontiguousarray(leaves, dtype=np.uint8)
    n = leaves.shape[0]
    if leaves.ndim != 2 or leaves.shape[1] != DIGEST_SIZE or n < 1:
        raise ValueError("leaves must have shape (n, 32) with n >= 1")
    tree_blocks = sum(verity_levels(n, hash_block_size))
    tree = np.empty(tree_blocks * hash_block_size, dtype=np.uint8)
    root = ffi.new("uint8_t[32]")
    salt = bytes(salt)
    rc = lib.bsi_verity_build(
        ffi.from_buffer("uint8_t[]", tree),
        tree.size,
        ffi.from_buffer("uint8_t[]", leaves),
        n,
        hash_block_size,
        salt,
        len(salt),
        1 if salt_after else 0,
        root,
        resolve_threads(threads),
    )
    _native.check(rc, "bsi_verity_build")
    return bytes(ffi.buffer(root)), tree


__all__ = [
    "DIGEST_SIZE",
    "Sha256",
    "default_threads",
    "hash_blocks",
    "implementation",
    "resolve_threads",
    "sha256",
    "simd_active",
    "simd_available",
    "update_two",
    "use_simd",
    "verity_build",
    "verity_levels",
]
