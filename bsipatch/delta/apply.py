"""Applying patches: stream a patch through the C applier into a verified output.

Three shapes over one engine (STYLE.md): :func:`apply` pumps a patch into an output
path or file, :func:`iter_apply` yields verified output chunks as fast as the
consumer pulls, and :class:`ApplyReader` is a file-like reader. The patch is read
strictly sequentially (a socket or HTTP response works); BSDIFF40 patches are
recognised by their magic and handed to bsdiff40.py. This module does the I/O,
the digests and the file policy (temp file, rename, resume); the per-byte work is
in csrc/bsi_patch.c. It does not make patches.

Resume: with ``resume=True`` the output is built in ``.<name>.bsipatch-partial``
beside ``out``. If an apply is cut short by a truncated patch stream, an I/O error
or an interrupt, that file is kept; the next ``apply(..., resume=True)`` re-reads
the patch from its start, and for every segment whose output range in the partial
file already hashes to the segment's SHA-256 it skips the decompression and the
writing. See docs/patch-format.md, "Resuming".
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import errno
import io
import mmap
import os
import stat
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import zstandard

from bsipatch._buffers import open_buffer, sha256_buffer, zero_digest
from bsipatch._io import fsync_dir, is_pathlike, open_private, open_source, read_exact
from bsipatch._native import error_name, ffi, lib
from bsipatch._threads import default_threads
from bsipatch.delta import patchformat as patchfmt

# hashlib and hmac (they load OpenSSL: several MB resident, ~3 ms) are imported
# inside the functions that use them, so that importing this module (as a diff-only
# process may) adds little to a diff's peak memory; the rest is loaded here so that
# the first apply does not pay for imports.
from bsipatch.delta.patchformat import PatchReader
from bsipatch.errors import (
    CorruptPatch,
    OutputMismatch,
    PatchTooLarge,
    TruncatedPatch,
    UnsupportedPatch,
    WrongBaseImage,
)

if TYPE_CHECKING:
    from bsipatch._buffers import Buffer
    from bsipatch._io import PathLike
    from bsipatch.delta.patchformat import Header, PatchInfo, SegmentHeader

    PatchSource = PathLike | bytes | bytearray | memoryview | BinaryIO
ProgressFn = Callable[[int, int], None]

OUT_CHUNK = 1 << 20
#: Output chunk when reported blocks are skipped: their pages are never touched, and
#: larger chunks mean fewer, larger copies.
SKIP_OUT_CHUNK = 8 << 20
IN_CHUNK = 256 << 10
PARTIAL_SUFFIX = ".bsipatch-partial"
#: Default parallel segments: each worker holds a zstd window and a segment.
MAX_DEFAULT_THREADS = 3
#: Drop the old image's mapped pages every DROP_EVERY output bytes when it is larger
#: than DROP_PAGES_ABOVE, so resident memory stays bounded whatever the image size.
DROP_PAGES_ABOVE = 32 << 20
DROP_EVERY = 8 << 20

_NATIVE_ERRORS = {
    lib.BSI_E_CORRUPT: CorruptPatch,
    lib.BSI_E_RANGE: CorruptPatch,
    lib.BSI_E_OVERFLOW: PatchTooLarge,
    lib.BSI_E_TRUNCATED: TruncatedPatch,
}


def _native_error(rc: int, seg: SegmentHeader) -> Exception:
    cls = _NATIVE_ERRORS.get(rc, CorruptPatch)
    return cls(f"segment {seg.index}: bad operations ({error_name(rc)})")


class _Old:
    """The old image: a buffer for the applier and a way to hash it cheaply."""

    def __init__(self, src: PathLike | Buffer) -> None:
        self._stack = ExitStack()
        self.path = src if is_pathlike(src) else None
        self.buf: Buffer = self._stack.enter_context(open_buffer(src))
        self.size = len(self.buf)
        self.ptr = ffi.from_buffer(self.buf) if self.size else ffi.NULL
        self._since_drop = 0

    def check(self, header: Header) -> None:
        """Raise WrongBaseImage unless size and SHA-256 match the patch header."""
        self.start_check(header)()

    def check_size(self, header: Header) -> None:
        """Raise WrongBaseImage unless the size matches the patch header."""
        if self.size != header.old_size:
            raise WrongBaseImage(
                f"old image is {self.size} bytes, the patch was made for {header.old_size} bytes"
            )

    def start_check(self, header: Header) -> Callable[[], None]:
        """Check the size now and start hashing on a thread; return the function that
        waits for the digest and raises WrongBaseImage when it differs."""
        import hmac

        self.check_size(header)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["digest"] = sha256_buffer(self.buf)
            except BaseException as exc:  # handed to the waiter
                result["error"] = exc

        t = threading.Thread(target=run, name="bsipatch-old-sha256", daemon=True)
        t.start()

        def wait() -> None:
            t.join()
            if "error" in result:
                raise result["error"]
            digest = result["digest"]
            if not hmac.compare_digest(digest, header.old_sha256):
                raise WrongBaseImage(
                    f"old image SHA-256 is {digest.hex()}, "
                    f"the patch was made for {header.old_sha256.hex()}"
                )

        return wait

    def note_output(self, n: int) -> None:
        """Count output bytes made; every DROP_EVERY of them, release the old image's pages."""
        self._since_drop += n
        if self._since_drop >= DROP_EVERY:
            self._since_drop = 0
            self.drop_pages()

    def drop_pages(self) -> None:
        """Let go of the mapped pages of a large old image (they are re-read on demand)."""
        if isinstance(self.buf, mmap.mmap) and self.size > DROP_PAGES_ABOVE:
            with contextlib.suppress(OSError, ValueError):
                self.buf.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.ptr = None
        self._stack.close()


def _no_check() -> None:
    """The old image was verified by the caller (``verify_old=False``)."""


def is_zero_segment(seg: SegmentHeader) -> bool:
    """True when the segment declares only ZERO output and the digest of zeros.

    run_segment confirms the first part from the applier's own counts, so such a
    segment's output is zeros by construction and its digest need not be computed.
    """
    import hmac

    return seg.kind_bytes[3] == seg.out_len and hmac.compare_digest(
        seg.out_sha256, zero_digest(seg.out_len)
    )


def segment_chunks(
    old: _Old,
    header: Header,
    seg: SegmentHeader,
    comp: bytes,
    *,
    verify: bool = True,
    prov: Any = None,
    skip: bool = False,
) -> Iterator[memoryview]:
    """Decompress one verified segment and apply it, yielding its output in order.

    Each yielded view is valid until the next one is requested. Every view but the
    last is ``min(OUT_CHUNK, out_len)`` bytes (``SKIP_OUT_CHUNK`` with ``skip``), so
    views start at multiples of that into the segment. The generator raises after the
    last chunk when the segment does not verify.

    Args:
        verify: check the output against the segment's ``out_sha256`` (the operation
            statistics are always checked). ``False`` when the caller verifies the
            output another way (a seal built from provenance).
        prov: a zeroed ``numpy.uint64`` array of ``(phase + out_len) // 4096`` entries
            that the applier fills with the provenance of the whole image blocks the
            segment makes, entry ``j`` for image block ``out_offset // 4096 + j``, with
            ``phase = out_offset % 4096`` (BSI_PROV_* in csrc/bsi_decls_delta.h: a block
            copied whole from an aligned old block, or made of zeros by one op). A
            reported block lies inside one yielded chunk; its entry is final then.
        skip: do not produce the bytes of blocks reported in ``prov`` (their place in
            the yielded view holds stale bytes); needs ``prov`` and ``verify=False``.

    Raises:
        CorruptPatch, TruncatedPatch, PatchTooLarge: bad payload (a wrong segment
        output digest is a CorruptPatch).
    """
    import hashlib
    import hmac

    if skip and (prov is None or verify):
        raise ValueError("skip needs prov and verify=False")
    zero_seg = is_zero_segment(seg) or not verify
    pprov = ffi.cast("uint64_t *", prov.ctypes.data) if prov is not None else ffi.NULL
    nprov = 0 if prov is None else len(prov)
    flags = lib.BSI_PATCH_SKIP_REPORTED if skip else 0
    st = ffi.new("bsi_patch_state *")
    cap = 0
    scratch = bytearray()
    pscratch: Any = ffi.NULL
    # lazily zeroed pages: what the applier skips (reported blocks) is never touched
    out = mmap.mmap(-1, min(SKIP_OUT_CHUNK if skip else OUT_CHUNK, seg.out_len))
    pout = ffi.from_buffer(out)
    outmv = memoryview(out)
    ob = ffi.new("bsi_outbuf *")
    ob.ptr, ob.size, ob.pos = pout, len(out), 0
    ib = ffi.new("bsi_inbuf *")
    h = hashlib.sha256()
    total = 0

    def start(head: bytes) -> None:
        # size the section buffer from the payload's own (untrusted, checked) lengths
        nonlocal cap, scratch, pscratch
        ctrl_len, runs_len, nruns_len, lit_len = struct.unpack_from("<4Q", head, 16)
        need = ctrl_len + runs_len + nruns_len + lit_len
        if need > header.max_buffered or need > seg.payload_len:
            raise PatchTooLarge(
                f"segment {seg.index}: needs {need} buffered bytes, the header allows "
                f"{header.max_buffered}"
            )
        cap = need
        scratch = bytearray(cap)
        pscratch = ffi.from_buffer(scratch) if cap else ffi.NULL
        lib.bsi_patch_init(st, seg.out_len, old.size, cap)
        if prov is not None:
            lib.bsi_patch_set_phase(st, seg.out_offset % BLOCK)

    def flush() -> Iterator[memoryview]:
        if ob.pos:
            chunk = outmv[: ob.pos]
            if not zero_seg:
                h.update(chunk)
            yield chunk
            old.note_output(ob.pos)
            ob.pos = 0

    def pump(data: bytes) -> Iterator[memoryview]:
        keep = ffi.from_buffer(data) if data else ffi.NULL
        ib.ptr, ib.size, ib.pos = keep, len(data), 0
        while True:
            rc = lib.bsi_patch_feed_prov(
                st, old.ptr, old.size, pscratch, cap, ib, ob, pprov, nprov, flags
            )
            if rc < 0:
                raise _native_error(rc, seg)
            if ob.pos == ob.size:
                yield from flush()
            if rc == 0:
                break
        if ib.pos != ib.size:  # pragma: no cover - the C side reports this as an error
            raise CorruptPatch(f"segment {seg.index}: unused payload bytes")

    try:
        dctx = zstandard.ZstdDecompressor()
        with dctx.stream_reader(comp, read_size=IN_CHUNK, read_across_frames=False) as r:
            head = b""
            while len(head) < patchfmt.PAYLOAD_HEADER_SIZE:
                more = r.read(patchfmt.PAYLOAD_HEADER_SIZE - len(head))
                if not more:
                    raise CorruptPatch(f"segment {seg.index}: payload shorter than its header")
                head += more
            start(head)
            total = len(head)
            yield from pump(head)
            while True:
                data = r.read(IN_CHUNK)
                if not data:
                    break
                total += len(data)
                if total > seg.payload_len:
                    raise CorruptPatch(f"segment {seg.index}: payload longer than declared")
                yield from pump(data)
    except zstandard.ZstdError as exc:
        raise CorruptPatch(f"segment {seg.index}: zstd: {exc}") from exc
    yield from pump(b"")
    yield from flush()
    if total != seg.payload_len:
        raise CorruptPatch(
            f"segment {seg.index}: payload is {total} bytes, declared {seg.payload_len}"
        )
    rc = lib.bsi_patch_finish(st)
    if rc < 0:
        raise _native_error(rc, seg)
    if tuple(st.kind_bytes) != seg.kind_bytes:
        raise CorruptPatch(f"segment {seg.index}: operations differ from its statistics")
    if not zero_seg and not hmac.compare_digest(h.digest(), seg.out_sha256):
        raise CorruptPatch(f"segment {seg.index}: output SHA-256 mismatch")


def run_segment(
    old: _Old,
    header: Header,
    seg: SegmentHeader,
    comp: bytes,
    sink: Callable[[memoryview], None],
    *,
    verify: bool = True,
) -> None:
    """Apply one verified segment, passing its output to ``sink`` in order (see
    :func:`segment_chunks`)."""
    for chunk in segment_chunks(old, header, seg, comp, verify=verify):
        sink(chunk)


def _patch_length(patch: PatchSource, f: BinaryIO, max_patch_size: int | None) -> int | None:
    """The patch's length when it can be known without reading it (else the bound)."""
    if isinstance(patch, (bytes, bytearray, memoryview)):
        return memoryview(patch).nbytes
    try:
        st = os.fstat(f.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return max_patch_size
    if not stat.S_ISREG(st.st_mode):
        return max_patch_size
    return st.st_size if max_patch_size is None else min(st.st_size, max_patch_size)


def _open_patch(stack: ExitStack, patch: PatchSource) -> tuple[BinaryIO, bytes]:

    f = stack.enter_context(open_source(patch))
    magic = read_exact(f, 8)
    if len(magic) < 8:
        if patchfmt.MAGIC.startswith(magic) or patchfmt.BSDIFF40_MAGIC.startswith(magic):
            raise TruncatedPatch(f"patch is only {len(magic)} bytes long")
        raise UnsupportedPatch(f"not a patch: starts with {magic!r}")
    return f, magic


def _pipeline(
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


def _hash_back(fd: int, off: int, end: int, h: Any) -> None:
    """Feed ``fd[off:end)`` as written into ``h``; a short file is an OutputMismatch."""
    while off < end:
        data = os.pread(fd, min(OUT_CHUNK, end - off), off)
        if not data:
            raise OutputMismatch(f"output file is short at offset {off}")
        h.update(data)
        off += len(data)


def _apply_to_fd(
    old: _Old,
    reader: PatchReader,
    fd: int,
    *,
    threads: int,
    existing: int,
    progress: ProgressFn | None,
    verify_new: bool = True,
) -> dict[str, Any]:
    """Apply all segments into file ``fd`` (in parallel); return statistics.

    With ``verify_new=False`` neither the segments' nor the image's SHA-256 is
    computed (the caller verifies the output, e.g. against a seal)."""
    import hashlib
    import hmac

    header = reader.header
    zero = memoryview(bytes(OUT_CHUNK))
    overall = hashlib.sha256()
    resumed = 0
    done = 0

    zero_bytes = bytes(OUT_CHUNK)

    def work(seg: SegmentHeader, comp: bytes) -> None:
        pos = seg.out_offset

        def sink(chunk: memoryview) -> None:
            nonlocal pos
            # a fresh file region is a hole already: leave zero chunks unwritten
            if not (pos >= existing and len(chunk) == OUT_CHUNK and chunk == zero_bytes):
                _pwrite_all(fd, chunk, pos)
            pos += len(chunk)

        run_segment(old, header, seg, comp, sink, verify=verify_new)

    def hash_range(seg: SegmentHeader) -> bytes:
        h = hashlib.sha256()
        off, end = seg.out_offset, seg.out_offset + seg.out_len
        while off < end:
            data = os.pread(fd, min(OUT_CHUNK, end - off), off)
            if not data:
                break
            h.update(data)
            off += len(data)
        return h.digest()

    whole: list[bytes] = []  # set when one verified segment is the whole image

    def start(pool: cf.ThreadPoolExecutor, seg: SegmentHeader, comp: bytes) -> Any:
        nonlocal resumed
        if (
            existing
            and seg.out_offset + seg.out_len <= existing
            and hmac.compare_digest(hash_range(seg), seg.out_sha256)
        ):
            resumed += 1
            return None
        return pool.submit(work, seg, comp)

    def finish_one(seg: SegmentHeader, fut: cf.Future[None] | None) -> None:
        nonlocal done
        if fut is not None:
            fut.result()
        off, end = seg.out_offset, seg.out_offset + seg.out_len
        if not verify_new:
            off = end
        elif off == 0 and end == header.new_size:
            # its output hashed to out_sha256 (or is zeros by construction): that is
            # the whole image's digest, no need to read it back
            whole.append(seg.out_sha256)
            off = end
        if fut is not None and is_zero_segment(seg):
            while off < end:  # written as zeros (or left a hole): no need to read it back
                k = min(OUT_CHUNK, end - off)
                overall.update(zero[:k])
                off += k
        _hash_back(fd, off, end, overall)
        done = end
        old.drop_pages()
        if progress:
            progress(done, header.new_size)

    _pipeline(reader, threads, start, finish_one)
    if header.new_size == 0:
        done = 0
    if not verify_new:
        return {"resumed_segments": resumed}
    digest = whole[0] if whole else overall.digest()
    if not hmac.compare_digest(digest, header.new_sha256):
        raise OutputMismatch(
            f"output SHA-256 is {digest.hex()}, the patch header declares {header.new_sha256.hex()}"
        )
    return {"resumed_segments": resumed}


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
        old: _Old,
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
            _pwrite_all(self.dst, memoryview(self.old.buf)[src_off : src_off + k], dst_off)
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


def _apply_prov_to_fd(
    old: _Old,
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

    import numpy as np

    from bsipatch import hashing

    header = reader.header
    nblocks = -(-header.new_size // BLOCK)
    old_leaves = np.ascontiguousarray(prov.old_leaves, dtype=np.uint8)
    if old_leaves.shape != (-(-old.size // BLOCK), 32):
        raise ValueError(
            f"old_leaves has shape {old_leaves.shape}, the old image has "
            f"{-(-old.size // BLOCK)} blocks"
        )
    leaves = np.empty((nblocks, 32), dtype=np.uint8)
    need_hash = np.zeros(nblocks, dtype=bool)
    zero_leaf = hashing.hash_blocks(
        bytes(BLOCK), salt=prov.salt, salt_after=prov.salt_after, threads=1
    )[0]
    skip = not verify_new
    src_fd = -1
    if old.path is not None:
        with contextlib.suppress(OSError):
            src_fd = os.open(old.path, os.O_RDONLY)
    copier = _Copier(old, src_fd, fd, path, prov.methods)
    counts = {"copied": 0, "zero": 0, "hashed": 0}
    lock = threading.Lock()
    if skip and header.new_size and not copier.probe_clone(header.new_size):
        # no reflinks: reserve the space now, so a full disk shows before any work
        with contextlib.suppress(AttributeError):
            try:
                os.posix_fallocate(fd, 0, header.new_size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise

    def copy_chunk(part: Any, first: int) -> None:
        """Write the copied blocks among image blocks ``first + i`` (``part`` = their
        provenance) from the old file. Runs at one distance from their old blocks are
        joined across blocks the applier made (written after this, over the copy):
        fewer, larger copies when each one costs a system call and an extent update.
        Zero blocks are never covered (they stay holes)."""
        idx = np.flatnonzero(part >= lib.BSI_PROV_COPY)
        if not len(idx):
            return
        srcb = part[idx].astype(np.int64) - lib.BSI_PROV_COPY
        delta = srcb - idx
        brk = np.diff(delta) != 0
        if copier.join_runs():
            zc = np.cumsum(part == lib.BSI_PROV_ZERO)
            brk |= zc[idx[1:]] != zc[idx[:-1]]  # a zero block in the gap
        else:
            brk |= np.diff(idx) != 1
        cut = np.flatnonzero(brk) + 1
        starts = np.concatenate(([0], cut)).tolist()
        ends = np.concatenate((cut, [len(idx)])).tolist()
        for a, b in zip(starts, ends, strict=True):
            lo, hi = int(idx[a]), int(idx[b - 1]) + 1
            copier.copy((lo + int(delta[a])) * BLOCK, (first + lo) * BLOCK, (hi - lo) * BLOCK)

    def work(seg: SegmentHeader, comp: bytes) -> None:
        salt, after = prov.salt, prov.salt_after
        gb0 = seg.out_offset // BLOCK  # image block of prov entry 0
        pv = np.zeros((seg.out_offset % BLOCK + seg.out_len) // BLOCK, dtype=np.uint64)
        hashed = 0
        c0 = seg.out_offset  # image offset of the chunk
        for chunk in segment_chunks(old, header, seg, comp, verify=verify_new, prov=pv, skip=skip):
            n = len(chunk)
            first, last = -(-c0 // BLOCK), (c0 + n) // BLOCK  # whole blocks in the chunk
            if not skip:
                _pwrite_all(fd, chunk, c0)
            if first > last:  # the chunk lies inside one block
                need_hash[last] = True
                if skip:
                    _pwrite_all(fd, chunk, c0)
                c0 += n
                continue
            head, tail = first * BLOCK - c0, c0 + n - last * BLOCK
            if head:  # a block begun in the previous chunk or segment: hashed at the end
                need_hash[first - 1] = True
                if skip:
                    _pwrite_all(fd, chunk[:head], c0)
            if tail:
                need_hash[last] = True
                if skip:
                    _pwrite_all(fd, chunk[n - tail :], last * BLOCK)
            part = pv[first - gb0 : last - gb0]
            if skip:
                copy_chunk(part, first)  # before the made blocks: a copy may cover them
            made = np.flatnonzero(part == lib.BSI_PROV_NONE)
            for a, b in _runs(made):
                piece = chunk[head + a * BLOCK : head + b * BLOCK]
                if skip:
                    _pwrite_all(fd, piece, (first + a) * BLOCK)
                hashing.hash_blocks(
                    piece, salt=salt, salt_after=after, threads=1, out=leaves[first + a : first + b]
                )
                hashed += b - a
            c0 += n
        zeros = np.flatnonzero(pv == lib.BSI_PROV_ZERO)
        leaves[gb0 + zeros] = zero_leaf
        copies = np.flatnonzero(pv >= lib.BSI_PROV_COPY)
        src = (pv[copies] - lib.BSI_PROV_COPY).astype(np.int64)
        leaves[gb0 + copies] = old_leaves[src]
        with lock:
            counts["copied"] += len(copies)
            counts["zero"] += len(zeros)
            counts["hashed"] += hashed

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
        _pipeline(reader, threads, lambda pool, seg, comp: pool.submit(work, seg, comp), finish_one)
    finally:
        copier.close()
        if src_fd >= 0:
            os.close(src_fd)
    if overall is not None:
        digest = whole[0] if whole else overall.digest()
        if not hmac.compare_digest(digest, header.new_sha256):
            raise OutputMismatch(
                f"output SHA-256 is {digest.hex()}, the patch header declares "
                f"{header.new_sha256.hex()}"
            )
    # blocks no segment could hash alone: read them back
    for a, b in _runs(np.flatnonzero(need_hash)):
        start, end = a * BLOCK, min(b * BLOCK, header.new_size)
        buf = bytearray((b - a) * BLOCK)
        mv = memoryview(buf)
        got = 0
        while start + got < end:
            k = os.preadv(fd, [mv[got : end - start]], start + got)
            if k <= 0:
                raise OutputMismatch(f"output file is short at offset {start + got}")
            got += k
        hashing.hash_blocks(
            buf, salt=prov.salt, salt_after=prov.salt_after, threads=1, out=leaves[a:b]
        )
        counts["hashed"] += b - a
    if counts["copied"] + counts["zero"] + counts["hashed"] != nblocks:  # pragma: no cover
        # every block is exactly one of the three; anything else would leave a leaf unset
        raise RuntimeError(f"provenance covers {counts} of {nblocks} blocks")
    prov.leaves = leaves
    prov.copied_blocks = counts["copied"]
    prov.zero_blocks = counts["zero"]
    prov.hashed_blocks = counts["hashed"]
    prov.copy_method = "+".join(m for m in COPY_METHODS if m in copier.used)
    return {
        "provenance": {
            "copied_blocks": prov.copied_blocks,
            "zero_blocks": prov.zero_blocks,
            "hashed_blocks": prov.hashed_blocks,
            "copy_method": prov.copy_method,
        }
    }


def _pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    """pwrite everything or raise: a short write (a full disk) must never pass silently."""
    while len(data):
        n = os.pwrite(fd, data, pos)
        if n <= 0:
            raise OSError(errno.ENOSPC, "No space left on device (short write)")
        data = data[n:]
        pos += n


def _write_all(out: BinaryIO, data: memoryview) -> None:
    """Write everything to a caller's stream, also when it is a raw (short-writing) one."""
    while len(data):
        n = out.write(data)
        if n is None:  # a non-blocking raw stream that cannot take data now
            raise OSError(errno.EAGAIN, "output stream would block")
        if n <= 0:
            raise OSError(errno.EIO, "output stream accepted no bytes")
        data = data[n:]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_to_path(
    old: _Old,
    reader: PatchReader,
    out: PathLike,
    *,
    threads: int,
    resume: bool,
    progress: ProgressFn | None,
    base_ok: Callable[[], None],
    verify_new: bool = True,
    provenance: Provenance | None = None,
) -> dict[str, Any]:

    target = Path(out)
    directory = target.parent if str(target.parent) else Path()
    header = reader.header
    if resume:
        tmp = directory / f".{target.name}{PARTIAL_SUFFIX}"
        fd = open_private(tmp, os.O_RDWR | os.O_CREAT, 0o644)
    else:
        fd, name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".bsipatch-tmp", dir=directory
        )
        tmp = Path(name)
        os.fchmod(fd, 0o666 & ~_umask())
    keep = False
    try:
        existing = os.fstat(fd).st_size if resume else 0
        if existing > header.new_size:
            os.ftruncate(fd, header.new_size)
            existing = header.new_size
        os.ftruncate(fd, header.new_size)
        try:
            if provenance is not None:
                stats = _apply_prov_to_fd(
                    old,
                    reader,
                    fd,
                    provenance,
                    threads=threads,
                    verify_new=verify_new,
                    progress=progress,
                    path=tmp,
                )
            else:
                stats = _apply_to_fd(
                    old,
                    reader,
                    fd,
                    threads=threads,
                    existing=existing,
                    progress=progress,
                    verify_new=verify_new,
                )
        except KeyboardInterrupt:
            keep = resume
            raise
        except BaseException as exc:
            base_ok()  # a wrong base image explains any error: report that instead
            keep = resume and isinstance(exc, (TruncatedPatch, OSError))
            raise
        base_ok()
        from bsipatch._crashpoints import crashpoint

        crashpoint("apply.written")
        os.fsync(fd)
        os.close(fd)
        fd = -1
        Path(tmp).replace(target)
        fsync_dir(directory)
        return stats
    finally:
        if fd >= 0:
            os.close(fd)
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                Path(tmp).unlink()


def _apply_to_stream(
    old: _Old, reader: PatchReader, out: BinaryIO, progress: ProgressFn | None
) -> dict[str, Any]:
    import hashlib
    import hmac

    header = reader.header
    overall = hashlib.sha256()
    done = 0

    def sink(chunk: memoryview) -> None:
        overall.update(chunk)
        _write_all(out, chunk)

    for seg, comp in reader:
        run_segment(old, header, seg, comp, sink)
        done += seg.out_len
        old.drop_pages()
        if progress:
            progress(done, header.new_size)
    if not hmac.compare_digest(overall.digest(), header.new_sha256):
        raise OutputMismatch("output SHA-256 does not match the patch header")
    return {}


def apply(
    old: PathLike | Buffer,
    patch: PatchSource,
    out: PathLike | BinaryIO,
    *,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    resume: bool = False,
    max_patch_size: int | None = None,
    verify_old: bool = True,
    verify_new: bool = True,
    provenance: Provenance | None = None,
    expected_size: int | None = None,
    expected_sha256: bytes | str | None = None,
) -> PatchInfo:
    """Apply ``patch`` to ``old`` and write the new image to ``out``.

    The old image's size and SHA-256 are checked against the patch header before
    anything is kept. With a path ``out``, the result goes to a temporary file in
    the same directory (the old image is hashed meanwhile) and is renamed into place
    only when the old image's and the result's SHA-256 match the header (a wrong old
    image raises WrongBaseImage); on any error no output file is left behind (see the
    module docstring for
    ``resume``). With a file object ``out``, bytes are written as segments verify and
    an error is raised at the first mismatch.

    Args:
        old: the old image: path or bytes-like.
        patch: path, bytes-like, or any readable binary stream (need not be seekable).
        out: output path, or writable binary file.
        threads: segments applied in parallel (default: the CPUs, at most 3, which keeps
            memory under 64 MiB; path outputs only).
        progress: ``(done, total)`` callback over output bytes.
        resume: continue from verified segments of an earlier interrupted apply.
        max_patch_size: refuse a patch longer than this (e.g. the manifest's size).
        verify_old: check the old image's SHA-256 against the patch header. Pass
            ``False`` only when the caller verified the old image itself (against a
            seal); its size is always checked.
        verify_new: check every segment's and the whole output's SHA-256. Pass
            ``False`` only when the caller verifies the output itself (against a seal,
            e.g. with ``provenance``); the patch's own structure, segment and trailer
            digests are always checked.
        provenance: a :class:`Provenance` to fill with the new image's dm-verity
            leaves (path outputs only, not with ``resume``). With ``verify_new=False``
            copied blocks are cloned or copied file to file and zero blocks not written.
        expected_size: the size the new image must have (e.g. the signed target's).
            The header must declare exactly this before anything is sized. Without
            it, a header claiming output out of proportion to the old image and the
            patch is refused (:data:`bsipatch.delta.patchformat.CLAIM_PER_PATCH_BYTE`).
        expected_sha256: the SHA-256 the header must declare for the new image.

    Returns:
        The :class:`PatchInfo` of the applied patch.

    Raises:
        CorruptPatch, TruncatedPatch, PatchTooLarge, UnsupportedPatch, WrongBaseImage,
        OutputMismatch; ImplausiblePatch, HeaderMismatch (the header's claims, before
        anything is allocated).

    Example:
        >>> import bsipatch
        >>> bsipatch.apply("old.img", "update.bsipatch", "new.img")  # doctest: +SKIP
    """

    if provenance is not None and (resume or not is_pathlike(out)):
        raise ValueError("provenance needs a path output and no resume")
    with ExitStack() as stack:
        f, magic = _open_patch(stack, patch)
        if magic == patchfmt.BSDIFF40_MAGIC:
            from bsipatch.delta.bsdiff40 import apply_bsdiff40

            info = apply_bsdiff40(
                old, f, out, prefix=magic, progress=progress, max_patch_size=max_patch_size
            )
            if provenance is not None:  # no operations to learn from: hash the output
                from bsipatch.seal.tree import image_leaves

                provenance.leaves = image_leaves(
                    out,
                    provenance.salt,
                    salt_after=provenance.salt_after,
                )
                provenance.hashed_blocks = len(provenance.leaves)
            return info
        reader = PatchReader(f, prefix=magic, max_patch_size=max_patch_size)
        patchfmt.check_claims(
            reader.header,
            patch_size=_patch_length(patch, f, max_patch_size),
            expected_size=expected_size,
            expected_sha256=expected_sha256,
        )
        o = _Old(old)
        stack.callback(o.close)
        if is_pathlike(out):
            # the old image is hashed while segments are applied into the temporary
            # file; nothing is renamed into place unless its digest matches
            if verify_old:
                base_ok = o.start_check(reader.header)
            else:
                o.check_size(reader.header)
                base_ok = _no_check
            nthreads = threads or min(default_threads(), MAX_DEFAULT_THREADS)
            extra = _apply_to_path(
                o,
                reader,
                out,
                threads=nthreads,
                resume=resume,
                progress=progress,
                base_ok=base_ok,
                verify_new=verify_new,
                provenance=provenance,
            )
        else:
            if verify_old:
                o.check(reader.header)
            else:
                o.check_size(reader.header)
            extra = _apply_to_stream(o, reader, out, progress)
        return patchfmt.info_from_reader(reader, extra)


def iter_apply(
    old: PathLike | Buffer, patch: PatchSource, *, chunk_size: int = OUT_CHUNK
) -> Iterator[bytes]:
    """Yield the new image in chunks, as fast as the consumer pulls them.

    Memory stays bounded (about one output chunk). Bytes inside a segment are yielded
    as they are produced; the last chunk of each segment is held back until that
    segment's SHA-256 verified, and the image's last chunk until the trailer and the
    whole image's SHA-256 check out, so a consumer never receives a complete
    unverified image: on any mismatch the iteration raises instead.

    Args:
        old: the old image: path or bytes-like.
        patch: path, bytes-like or readable binary stream (bsipatch format).
        chunk_size: largest chunk yielded.

    Yields:
        Chunks of the new image, in order.

    Raises:
        As :func:`apply`.
    """
    import hashlib
    import hmac

    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    with ExitStack() as stack:
        f, magic = _open_patch(stack, patch)
        if magic == patchfmt.BSDIFF40_MAGIC:
            from bsipatch.delta.bsdiff40 import iter_bsdiff40, read_patch_bytes

            data = read_patch_bytes(f, prefix=magic)
            old_buf = stack.enter_context(open_buffer(old))
            for piece in iter_bsdiff40(old_buf, data):
                for i in range(0, len(piece), chunk_size):
                    yield piece[i : i + chunk_size]
            return
        reader = PatchReader(f, prefix=magic)
        o = _Old(old)
        stack.callback(o.close)
        o.check(reader.header)
        overall = hashlib.sha256()
        # One chunk is always held back: a segment's last chunk is released only after
        # the segment verified (the next chunk exists only then), and the image's last
        # chunk only after the trailer and the whole image's SHA-256 check out.
        held: bytes | None = None
        for seg, comp in reader:
            for chunk in segment_chunks(o, reader.header, seg, comp):
                overall.update(chunk)
                if held is not None:
                    yield from _pieces(held, chunk_size)
                held = bytes(chunk)
            o.drop_pages()
        if not hmac.compare_digest(overall.digest(), reader.header.new_sha256):
            raise OutputMismatch("output SHA-256 does not match the patch header")
        if held is not None:
            yield from _pieces(held, chunk_size)


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    if len(data) <= size:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


class ApplyReader(io.RawIOBase):
    """A read-only file object producing the new image from ``old`` and ``patch``.

    Example:
        >>> with ApplyReader("old.img", "update.bsipatch") as r:  # doctest: +SKIP
        ...     first = r.read(4096)
    """

    def __init__(
        self, old: PathLike | Buffer, patch: PatchSource, *, chunk_size: int = OUT_CHUNK
    ) -> None:
        super().__init__()
        self._it = iter_apply(old, patch, chunk_size=chunk_size)
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        while self._pos >= len(self._buf):
            try:
                self._buf = next(self._it)
            except StopIteration:
                return 0
            self._pos = 0
        n = min(len(mv), len(self._buf) - self._pos)
        mv[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._it.close()  # type: ignore[attr-defined]
        super().close()
