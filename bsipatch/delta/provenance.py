"""Applying into a fresh file while learning the new image's dm-verity leaves.

:func:`apply_with_provenance` applies a patch's segments (in parallel) into a fresh
output file and fills :class:`Provenance` with the new image's leaves: blocks the C
applier reports as copied whole from an aligned old block reuse the old leaf, zero
blocks the zero leaf, the rest are hashed from memory as they are made. With
``verify_new=False`` copied blocks are cloned or copied file to file (:class:`_Copier`)
and zero blocks never written. This module does not check the old image, read the
patch framing or rename the output (apply.py does).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import errno
import mmap
import os
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bsipatch._native import lib
from bsipatch.delta.oldimage import OldImage, pwrite_all
from bsipatch.delta.segment import OUT_CHUNK, segment_chunks
from bsipatch.errors import OutputMismatch

ProgressFn = Callable[[int, int], None]

if TYPE_CHECKING:
    from bsipatch._io import PathLike
    from bsipatch.delta.patchformat import Header, PatchReader, SegmentHeader


def pipeline(
    reader: PatchReader,
    threads: int,
    start: Callable[[cf.ThreadPoolExecutor, SegmentHeader, bytes], cf.Future[None] | None],
    finish: Callable[[SegmentHeader, cf.Future[None] | None], None],
) -> None:
    """Segments in order: ``start`` each (a future, or None when nothing is to do), at
    most ``threads`` in flight, ``finish`` each in patch order; cancel the rest on error."""
    pending: collections.deque[tuple[SegmentHeader, cf.Future[None] | None]] = collections.deque()
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            for seg, comp in reader:
                pending.append((seg, start(pool, seg, comp)))
                while len(pending) > threads:
                    finish(*pending.popleft())
            while pending:
                finish(*pending.popleft())
        finally:
            for _, fut in pending:
                if fut is not None:
                    fut.cancel()


BLOCK = 4096
#: ``FICLONERANGE`` = _IOW(0x94, 13, struct file_clone_range): share extents (reflink).
FICLONERANGE = 0x4020940D
_NO_CLONE = {
    errno.EOPNOTSUPP,
    errno.ENOTTY,
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EBADF,
    errno.EPERM,
    errno.ETXTBSY,
}
_NO_COPY_RANGE = {
    errno.EXDEV,
    errno.ENOSYS,
    errno.EINVAL,
    errno.EOPNOTSUPP,
    errno.EBADF,
    errno.ETXTBSY,
}
_NO_DIRECT = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EFAULT}
#: Bytes per O_DIRECT write (the old image's pages are released after each).
DIRECT_CHUNK = 8 << 20
#: How copied runs may be written, in order of preference (see :class:`_Copier`).
COPY_METHODS = ("reflink", "direct", "copy_file_range", "pwrite")


@dataclasses.dataclass
class Provenance:
    """Ask :func:`apply` for the new image's dm-verity leaves, reusing the old image's.

    The C applier reports, for every 4096-byte output block, whether one COPY operation
    made it from one whole, 4096-aligned old block ``k`` (then its leaf, with the same
    salt, is ``old_leaves[k]``) or one ZERO operation made it (the leaf of a zero block);
    only the other blocks are hashed, from memory, as they are produced. With
    ``verify_new=False`` the copied and zero blocks are not even produced: copied runs
    go from the old file to the new one by ``FICLONERANGE`` (a reflink: no data
    written) where the file system can, else ``copy_file_range`` (an in-kernel copy),
    else ``pwrite`` from the mapped old image; zero blocks stay holes (or unwritten
    extents) of the fresh output.

    The leaves are only as good as ``old_leaves``: the caller must have them from a
    trusted source (computed from the old image while verifying it against a seal, or
    checked against that seal's root), and the old image must be the one they describe.
    The caller then builds the tree over :attr:`leaves` and compares its root with the
    target seal (:func:`bsipatch.seal.tree.seal_from_leaves`).

    Attributes:
        old_leaves: ``(ceil(old_size / 4096), 32)`` uint8 leaves of the old image.
        salt: the salt of those leaves; the new leaves use it too.
        salt_after: dm-verity hash type 0 (salt after the block) when true.
        methods: how copied runs may be written, tried in this order (``"reflink"``,
            ``"direct"``, ``"copy_file_range"``; ``"pwrite"`` is always the last resort).
        leaves: set by :func:`apply`: the new image's leaves.
        copied_blocks, zero_blocks, hashed_blocks: how each new block's leaf was made.
        copy_method: how copied runs were written: ``"reflink"``, ``"direct"``,
            ``"copy_file_range"``, ``"pwrite"`` (several joined by ``+``), or ``""`` when
            nothing was copied.
    """

    old_leaves: Any
    salt: bytes
    salt_after: bool = False
    methods: tuple[str, ...] = COPY_METHODS
    leaves: Any = None
    copied_blocks: int = 0
    zero_blocks: int = 0
    hashed_blocks: int = 0
    copy_method: str = ""


class _Copier:
    """Copies whole-block runs from the old file to the output, by the first method the
    file system accepts, in the order of ``methods``:

    ``reflink``: ``FICLONERANGE``, the blocks are shared (btrfs, XFS): nothing written.
    ``direct``: ``pwrite`` on an ``O_DIRECT`` descriptor of the output straight from the
        mapped old image: the kernel sends the old image's cached pages to the disk, no
        copy in memory and no page cache for the new image.
    ``copy_file_range``: an in-kernel copy through the page cache.
    ``pwrite``: plain writes from the mapped old image.

    A method the file system refuses (EOPNOTSUPP, EINVAL, EXDEV...) is dropped and the
    next one is used; a real I/O error (ENOSPC, EIO) is raised.
    """

    def __init__(
        self,
        old: OldImage,
        src_fd: int,
        dst_fd: int,
        dst_path: PathLike | None,
        methods: tuple[str, ...],
    ) -> None:
        self.old = old
        self.src = src_fd
        self.dst = dst_fd
        mapped = isinstance(old.buf, mmap.mmap)
        self.ok = {
            "reflink": "reflink" in methods and src_fd >= 0,
            "direct": "direct" in methods
            and mapped
            and dst_path is not None
            and hasattr(os, "O_DIRECT"),
            "copy_file_range": "copy_file_range" in methods
            and src_fd >= 0
            and hasattr(os, "copy_file_range"),
        }
        self.dst_path = dst_path
        self.direct_fd = -1
        self.lock = threading.Lock()
        self.clone_lock = threading.Lock()
        self.used: set[str] = set()

    def close(self) -> None:
        if self.direct_fd >= 0:
            os.close(self.direct_fd)
            self.direct_fd = -1

    def probe_clone(self, size: int) -> bool:
        """Try one reflink of block 0 into the (empty, truncated) output, then undo it."""
        if not self.ok["reflink"] or size < BLOCK or self.old.size < BLOCK:
            self.ok["reflink"] = False
            return False
        try:
            self._clone(0, 0, BLOCK)
        except OSError as exc:
            if exc.errno not in _NO_CLONE:
                raise
            self.ok["reflink"] = False
            return False
        os.ftruncate(self.dst, 0)
        os.ftruncate(self.dst, size)
        return True

    def _clone(self, src_off: int, dst_off: int, n: int) -> None:
        import fcntl

        fcntl.ioctl(self.dst, FICLONERANGE, struct.pack("qQQQ", self.src, src_off, n, dst_off))

    def _direct_fd(self) -> int:
        with self.lock:
            if self.direct_fd < 0:
                self.direct_fd = os.open(self.dst_path, os.O_WRONLY | os.O_DIRECT)  # type: ignore[arg-type]
            return self.direct_fd

    def _direct(self, src_off: int, dst_off: int, n: int) -> int:
        """Write as much as O_DIRECT takes; return the bytes done (0: refused at once)."""
        buf = self.old.buf
        view = memoryview(buf)
        done = 0
        try:
            fd = self._direct_fd()
            while done < n:
                k = min(n - done, DIRECT_CHUNK)
                w = os.pwrite(fd, view[src_off + done : src_off + done + k], dst_off + done)
                if w <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device (short write)")
                # the pages were only lent to the disk: keep resident memory bounded
                with contextlib.suppress(OSError, ValueError):
                    buf.madvise(mmap.MADV_DONTNEED, src_off + done, k)  # type: ignore[union-attr]
                done += w
        except OSError as exc:
            if done or exc.errno not in _NO_DIRECT:
                raise
            self.ok["direct"] = False
        finally:
            view.release()
        return done

    def join_runs(self) -> bool:
        """Whether copy runs should be joined over made blocks (not for reflinks: a
        block written over a shared extent costs a copy-on-write instead)."""
        return not self.ok["reflink"]

    def copy(self, src_off: int, dst_off: int, n: int) -> None:
        if self.ok["reflink"]:
            try:
                # one at a time: clones of one file serialise on its inode lock in the
                # kernel anyway, where waiters spin (measured on XFS: ~4% of the install)
                with self.clone_lock:
                    self._clone(src_off, dst_off, n)
                self.used.add("reflink")
                return
            except OSError as exc:
                if exc.errno not in _NO_CLONE:
                    raise
                self.ok["reflink"] = False
        if n and self.ok["direct"]:
            k = self._direct(src_off, dst_off, n)
            if k:
                self.used.add("direct")
            src_off, dst_off, n = src_off + k, dst_off + k, n - k
        while n and self.ok["copy_file_range"]:
            try:
                k = os.copy_file_range(self.src, self.dst, n, src_off, dst_off)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                self.ok["copy_file_range"] = False
                break
            if k <= 0:
                raise OSError(errno.EIO, f"old image ended at offset {src_off} while copying")
            self.used.add("copy_file_range")
            src_off, dst_off, n = src_off + k, dst_off + k, n - k
        while n:
            k = min(n, OUT_CHUNK)
            pwrite_all(self.dst, memoryview(self.old.buf)[src_off : src_off + k], dst_off)
            self.used.add("pwrite")
            src_off, dst_off, n = src_off + k, dst_off + k, n - k


def _runs(idx: Any) -> list[tuple[int, int]]:
    """Consecutive runs ``[(start, end), ...]`` of a sorted integer array."""
    import numpy as np

    if not len(idx):
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = idx[np.concatenate(([0], breaks))]
    ends = idx[np.concatenate((breaks - 1, [len(idx) - 1]))] + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _hash_back(fd: int, off: int, end: int, h: Any) -> None:
    """Feed ``fd[off:end)`` as written into ``h``; a short file is an OutputMismatch."""
    while off < end:
        data = os.pread(fd, min(OUT_CHUNK, end - off), off)
        if not data:
            raise OutputMismatch(f"output file is short at offset {off}")
        h.update(data)
        off += len(data)


def _reserve(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of the fresh file now, so a full disk shows before any work."""
    with contextlib.suppress(AttributeError):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


class _ProvApply:
    """The state of one apply with provenance: leaves, blocks to hash later, counts."""

    def __init__(
        self, old: OldImage, header: Header, fd: int, prov: Provenance, verify_new: bool, path: Any
    ) -> None:
        import numpy as np

        from bsipatch import hashing

        self.np, self.hashing = np, hashing
        self.old, self.header, self.fd, self.prov = old, header, fd, prov
        self.nblocks = -(-header.new_size // BLOCK)
        self.old_leaves = np.ascontiguousarray(prov.old_leaves, dtype=np.uint8)
        if self.old_leaves.shape != (-(-old.size // BLOCK), 32):
            raise ValueError(
                f"old_leaves has shape {self.old_leaves.shape}, the old image has "
                f"{-(-old.size // BLOCK)} blocks"
            )
        self.leaves = np.empty((self.nblocks, 32), dtype=np.uint8)
        self.need_hash = np.zeros(self.nblocks, dtype=bool)
        self.zero_leaf = hashing.hash_blocks(
            bytes(BLOCK), salt=prov.salt, salt_after=prov.salt_after, threads=1
        )[0]
        self.verify_new = verify_new
        self.skip = not verify_new
        self.src_fd = -1
        if old.path is not None:
            with contextlib.suppress(OSError):
                self.src_fd = os.open(old.path, os.O_RDONLY)
        self.copier = _Copier(old, self.src_fd, fd, path, prov.methods)
        self.counts = {"copied": 0, "zero": 0, "hashed": 0}
        self.lock = threading.Lock()
        if self.skip and header.new_size and not self.copier.probe_clone(header.new_size):
            _reserve(fd, header.new_size)  # no reflinks

    def close(self) -> None:
        self.copier.close()
        if self.src_fd >= 0:
            os.close(self.src_fd)
            self.src_fd = -1

    def copy_chunk(self, part: Any, first: int) -> None:
        """Write the copied blocks among image blocks ``first + i`` (``part`` = their
        provenance) from the old file. Runs at one distance from their old blocks are
        joined across blocks the applier made (written after this, over the copy):
        fewer, larger copies when each one costs a system call and an extent update.
        Zero blocks are never covered (they stay holes)."""
        np = self.np
        idx = np.flatnonzero(part >= lib.BSI_PROV_COPY)
        if not len(idx):
            return
        srcb = part[idx].astype(np.int64) - lib.BSI_PROV_COPY
        delta = srcb - idx
        brk = np.diff(delta) != 0
        if self.copier.join_runs():
            zc = np.cumsum(part == lib.BSI_PROV_ZERO)
            brk |= zc[idx[1:]] != zc[idx[:-1]]  # a zero block in the gap
        else:
            brk |= np.diff(idx) != 1
        cut = np.flatnonzero(brk) + 1
        starts = np.concatenate(([0], cut)).tolist()
        ends = np.concatenate((cut, [len(idx)])).tolist()
        for a, b in zip(starts, ends, strict=True):
            lo, hi = int(idx[a]), int(idx[b - 1]) + 1
            self.copier.copy((lo + int(delta[a])) * BLOCK, (first + lo) * BLOCK, (hi - lo) * BLOCK)

    def chunk(self, chunk: memoryview, c0: int, pv: Any, gb0: int) -> int:
        """Write (as needed) and hash the blocks the applier made in one output chunk at
        image offset ``c0``; mark blocks cut by its edges for later; return blocks hashed."""
        fd, skip, n = self.fd, self.skip, len(chunk)
        first, last = -(-c0 // BLOCK), (c0 + n) // BLOCK  # whole blocks in the chunk
        if not skip:
            pwrite_all(fd, chunk, c0)
        if first > last:  # the chunk lies inside one block
            self.need_hash[last] = True
            if skip:
                pwrite_all(fd, chunk, c0)
            return 0
        head, tail = first * BLOCK - c0, c0 + n - last * BLOCK
        if head:  # a block begun in the previous chunk or segment: hashed at the end
            self.need_hash[first - 1] = True
            if skip:
                pwrite_all(fd, chunk[:head], c0)
        if tail:
            self.need_hash[last] = True
            if skip:
                pwrite_all(fd, chunk[n - tail :], last * BLOCK)
        part = pv[first - gb0 : last - gb0]
        if skip:
            self.copy_chunk(part, first)  # before the made blocks: a copy may cover them
        hashed = 0
        for a, b in _runs(self.np.flatnonzero(part == lib.BSI_PROV_NONE)):
            piece = chunk[head + a * BLOCK : head + b * BLOCK]
            if skip:
                pwrite_all(fd, piece, (first + a) * BLOCK)
            self.hashing.hash_blocks(
                piece,
                salt=self.prov.salt,
                salt_after=self.prov.salt_after,
                threads=1,
                out=self.leaves[first + a : first + b],
            )
            hashed += b - a
        return hashed

    def work(self, seg: SegmentHeader, comp: bytes) -> None:
        """Apply one segment (on a pool thread) and set the leaves it reports."""
        np = self.np
        gb0 = seg.out_offset // BLOCK  # image block of prov entry 0
        pv = np.zeros((seg.out_offset % BLOCK + seg.out_len) // BLOCK, dtype=np.uint64)
        hashed = 0
        c0 = seg.out_offset  # image offset of the chunk
        chunks = segment_chunks(
            self.old, self.header, seg, comp, verify=self.verify_new, prov=pv, skip=self.skip
        )
        for chunk in chunks:
            hashed += self.chunk(chunk, c0, pv, gb0)
            c0 += len(chunk)
        zeros = np.flatnonzero(pv == lib.BSI_PROV_ZERO)
        self.leaves[gb0 + zeros] = self.zero_leaf
        copies = np.flatnonzero(pv >= lib.BSI_PROV_COPY)
        src = (pv[copies] - lib.BSI_PROV_COPY).astype(np.int64)
        self.leaves[gb0 + copies] = self.old_leaves[src]
        with self.lock:
            self.counts["copied"] += len(copies)
            self.counts["zero"] += len(zeros)
            self.counts["hashed"] += hashed

    def hash_cut_blocks(self) -> None:
        """Hash the blocks no segment could hash alone, read back from the file."""
        for a, b in _runs(self.np.flatnonzero(self.need_hash)):
            start, end = a * BLOCK, min(b * BLOCK, self.header.new_size)
            buf = bytearray((b - a) * BLOCK)
            mv = memoryview(buf)
            got = 0
            while start + got < end:
                k = os.preadv(self.fd, [mv[got : end - start]], start + got)
                if k <= 0:
                    raise OutputMismatch(f"output file is short at offset {start + got}")
                got += k
            self.hashing.hash_blocks(
                buf,
                salt=self.prov.salt,
                salt_after=self.prov.salt_after,
                threads=1,
                out=self.leaves[a:b],
            )
            self.counts["hashed"] += b - a

    def result(self) -> dict[str, Any]:
        """Fill the :class:`Provenance` and return the apply statistics."""
        prov, counts = self.prov, self.counts
        if sum(counts.values()) != self.nblocks:  # pragma: no cover
            # every block is exactly one of the three; anything else would leave a leaf unset
            raise RuntimeError(f"provenance covers {counts} of {self.nblocks} blocks")
        prov.leaves = self.leaves
        prov.copied_blocks = counts["copied"]
        prov.zero_blocks = counts["zero"]
        prov.hashed_blocks = counts["hashed"]
        prov.copy_method = "+".join(m for m in COPY_METHODS if m in self.copier.used)
        return {
            "provenance": {
                "copied_blocks": prov.copied_blocks,
                "zero_blocks": prov.zero_blocks,
                "hashed_blocks": prov.hashed_blocks,
                "copy_method": prov.copy_method,
            }
        }


def apply_with_provenance(
    old: OldImage,
    reader: PatchReader,
    fd: int,
    prov: Provenance,
    *,
    threads: int,
    verify_new: bool,
    progress: ProgressFn | None,
    path: PathLike | None = None,
) -> dict[str, Any]:
    """Apply all segments into the fresh file ``fd`` (at ``path``) and fill ``prov.leaves``.

    Per segment (in parallel): the applier reports each whole block's provenance;
    blocks it made are written and hashed from memory; copied runs are cloned or
    copied from the old file after the segment verified its statistics; zero blocks
    are left as they are (the file is fresh). Blocks straddling a segment edge and a
    partial last block are read back and hashed at the end. With ``verify_new`` the
    segment and image SHA-256 are checked as well (every byte is then produced).
    """
    import hashlib
    import hmac

    header = reader.header
    state = _ProvApply(old, header, fd, prov, verify_new, path)
    overall = hashlib.sha256() if verify_new else None
    whole: list[bytes] = []

    def finish_one(seg: SegmentHeader, fut: cf.Future[None] | None) -> None:
        assert fut is not None  # every segment is submitted
        fut.result()
        off, end = seg.out_offset, seg.out_offset + seg.out_len
        if overall is not None:
            if off == 0 and end == header.new_size:
                whole.append(seg.out_sha256)
            else:
                _hash_back(fd, off, end, overall)
        old.drop_pages()
        if progress:
            progress(end, header.new_size)

    try:
        pipeline(
            reader, threads, lambda pool, seg, comp: pool.submit(state.work, seg, comp), finish_one
        )
    finally:
        state.close()
    if overall is not None:
        digest = whole[0] if whole else overall.digest()
        if not hmac.compare_digest(digest, header.new_sha256):
            raise OutputMismatch(
                f"output SHA-256 is {digest.hex()}, the patch header declares "
                f"{header.new_sha256.hex()}"
            )
    state.hash_cut_blocks()
    return state.result()
