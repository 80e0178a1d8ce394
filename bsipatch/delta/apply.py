"""Applying patches: stream a patch through the C applier into a verified output.

Three shapes over one engine (STYLE.md): :func:`apply` pumps a patch into an output
path or file, :func:`iter_apply` yields verified output chunks as fast as the
consumer pulls, and :class:`ApplyReader` is a file-like reader. The patch is read
strictly sequentially (a socket or HTTP response works); BSDIFF40 patches are
recognised by their magic and handed to bsdiff40.py. This module does the I/O,
the digests and the file policy (temp file, rename, resume); one segment's work is
in segment.py (and csrc/bsi_patch.c), applying with seal provenance in
provenance.py. It does not make patches.

Into a path, two threads share the work: this one decompresses and applies the
segments in order and writes the output, the other hashes the old image and the new
image's bytes from memory in the same order (nothing is read back), two SHA-256
streams at once (imagehash.py). The result is renamed into place only when both
digests match the patch header; the per-segment ``out_sha256`` is then not computed
(the whole image's digest covers every byte) but serves resume.

Resume: with ``resume=True`` the output is built in ``.<name>.bsipatch-partial``
beside ``out``. If an apply is cut short by a truncated patch stream, an I/O error
or an interrupt, that file is kept; the next ``apply(..., resume=True)`` re-reads
the patch from its start, and for every segment whose output range in the partial
file already hashes to the segment's SHA-256 it skips the decompression and the
writing. See docs/patch-format.md, "Resuming".
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, BinaryIO

from bsipatch._buffers import open_buffer
from bsipatch._io import fsync_dir, is_pathlike, open_private, open_source, read_exact
from bsipatch._native import ffi, lib
from bsipatch._threads import default_threads
from bsipatch.delta import patchformat as patchfmt
from bsipatch.delta.imagehash import CHUNK, RING, PairHasher
from bsipatch.delta.oldimage import OldImage, no_check, pwrite_all, write_all
from bsipatch.delta.patchformat import PatchReader, same_digest
from bsipatch.delta.segment import OUT_CHUNK, segment_chunks
from bsipatch.errors import OutputMismatch, TruncatedPatch, UnsupportedPatch
from bsipatch.hashing import Sha256

# SHA-256 is the native one (no OpenSSL); zstandard, numpy and concurrent.futures are
# imported where they are used: a process that applies an empty patch, or only diffs, does not
# pay for them. pathlib is not used either (os.path instead: its import is start-up time).

if TYPE_CHECKING:
    from bsipatch._buffers import Buffer
    from bsipatch._io import PathLike
    from bsipatch.delta.patchformat import PatchInfo, SegmentHeader
    from bsipatch.delta.provenance import Provenance as Provenance  # re-exported

    PatchSource = PathLike | bytes | bytearray | memoryview | BinaryIO
ProgressFn = Callable[[int, int], None]

PARTIAL_SUFFIX = ".bsipatch-partial"
#: Default parallel segments with provenance: each worker holds a zstd window and a
#: segment.
MAX_DEFAULT_THREADS = 3
#: Writing into a path, the output written so far is handed to the kernel's writeback
#: every this many bytes, so that the disk writes while the apply goes on and the fsync
#: before the rename finds little left to do.
WRITEBACK_EVERY = 16 << 20


def __getattr__(name: str) -> Any:
    # Provenance lives in provenance.py (numpy, dataclasses); still importable from here
    if name == "Provenance":
        from bsipatch.delta.provenance import Provenance

        return Provenance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _resumed(fd: int, seg: SegmentHeader, existing: int, out: PairHasher) -> bool:
    """True when the partial file already holds the segment's verified output; then its
    bytes are in the new image's digest too."""

    off, end = seg.out_offset, seg.out_offset + seg.out_len
    if not existing or end > existing:
        return False
    out.sync()
    h = Sha256()
    trial = out.h.copy() if out.h is not None else None
    while off < end:
        data = os.pread(fd, min(OUT_CHUNK, end - off), off)
        if not data:
            return False
        h.update(data)
        if trial is not None:
            trial.update(data)
        off += len(data)
    if not same_digest(h.digest(), seg.out_sha256):
        return False
    out.h = trial
    return True


def _start_writeback(fd: int, start: int, end: int) -> None:
    """Start writing output bytes [start, end) to disk now, without waiting (Linux starts
    the writeback of dirty pages on POSIX_FADV_DONTNEED and drops the clean ones: the
    output is hashed from memory, never read back). Best effort: durability still comes
    from the fsync before the rename."""
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


def _apply_to_fd(
    old: OldImage,
    reader: PatchReader,
    fd: int,
    *,
    existing: int,
    progress: ProgressFn | None,
    verify_new: bool = True,
) -> dict[str, Any]:
    """Apply all segments in order into file ``fd``, hashing the output on a second
    thread; return statistics. ``existing``: bytes of an earlier partial output.

    With ``verify_new=False`` the image's SHA-256 is not computed (the caller
    verifies the output, e.g. against a seal)."""

    header = reader.header
    # the thread hashing the old image (if it is checked) hashes the output too
    own = old.hasher is None
    out = PairHasher(None, ring=RING, chunk=CHUNK) if old.hasher is None else old.hasher
    if verify_new:
        out.hash_new()
    resumed = 0
    flushed = 0  # output bytes [0, flushed) handed to writeback
    try:
        for seg, comp in reader:
            if _resumed(fd, seg, existing, out):
                resumed += 1
            else:
                pos = seg.out_offset
                for chunk in segment_chunks(
                    old, header, seg, comp, verify=False, buffers=out.buffer
                ):
                    # a fresh file region is a hole already: leave zero chunks unwritten
                    if pos < existing or not lib.bsi_all_zero(ffi.from_buffer(chunk), len(chunk)):
                        pwrite_all(fd, chunk, pos)
                    pos += len(chunk)
                    out.put(chunk)
                    if pos - flushed >= WRITEBACK_EVERY:
                        _start_writeback(fd, flushed, pos)
                        flushed = pos
            old.drop_pages()
            if progress:
                progress(seg.out_offset + seg.out_len, header.new_size)
        if flushed < header.new_size:  # the rest goes to disk while the hashes finish
            _start_writeback(fd, flushed, header.new_size)
    finally:
        try:
            out.finish_new()
        finally:
            if own:
                out.shutdown()
    if out.h is not None:
        digest = out.h.digest()
        if not same_digest(digest, header.new_sha256):
            raise OutputMismatch(
                f"output SHA-256 is {digest.hex()}, the patch header declares "
                f"{header.new_sha256.hex()}"
            )
    return {"resumed_segments": resumed}


def _temp_file(directory: str, name: str) -> tuple[int, str]:
    """A new, empty temporary file beside the output (mode 0666 less the umask)."""
    from bsipatch._io import new_file_mode

    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.bsipatch-tmp")  # noqa: PTH118
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        os.fchmod(fd, new_file_mode())
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))


def _apply_to_path(
    old: OldImage,
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

    target = os.fspath(out)
    directory, name = os.path.split(target)
    directory = directory or "."
    header = reader.header
    if resume:
        tmp = os.path.join(directory, f".{name}{PARTIAL_SUFFIX}")  # noqa: PTH118
        fd = open_private(tmp, os.O_RDWR | os.O_CREAT, 0o644)
    else:
        fd, tmp = _temp_file(directory, name)
    keep = False
    try:
        existing = os.fstat(fd).st_size if resume else 0
        if existing > header.new_size:
            os.ftruncate(fd, header.new_size)
            existing = header.new_size
        os.ftruncate(fd, header.new_size)
        try:
            if provenance is not None:
                from bsipatch.delta.provenance import apply_with_provenance

                stats = apply_with_provenance(
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
        os.replace(tmp, target)  # noqa: PTH105
        fsync_dir(directory)
        return stats
    finally:
        if fd >= 0:
            os.close(fd)
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # noqa: PTH108


def _apply_to_stream(
    old: OldImage, reader: PatchReader, out: BinaryIO, progress: ProgressFn | None
) -> dict[str, Any]:

    header = reader.header
    overall = Sha256()
    done = 0
    for seg, comp in reader:
        # bytes leave the process as they are made: each segment is verified on its own
        for chunk in segment_chunks(old, header, seg, comp):
            overall.update(chunk)
            write_all(out, chunk)
        done += seg.out_len
        old.drop_pages()
        if progress:
            progress(done, header.new_size)
    if not same_digest(overall.digest(), header.new_sha256):
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
        o = OldImage(old)
        stack.callback(o.close)
        later = provenance if o.use_transform(reader) else None
        if later is not None:  # copies come from the predicted old: hash the output instead
            provenance = None
        if is_pathlike(out):
            # the old image is hashed while segments are applied into the temporary
            # file; nothing is renamed into place unless its digest matches
            if verify_old:
                base_ok = o.start_check(reader.header)
            else:
                o.check_size(reader.header)
                base_ok = no_check
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
        if later is not None:
            from bsipatch.seal.tree import image_leaves

            later.leaves = image_leaves(out, later.salt, salt_after=later.salt_after)
            later.hashed_blocks = len(later.leaves)
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
        o = OldImage(old)
        stack.callback(o.close)
        o.use_transform(reader)
        o.check(reader.header)
        overall = Sha256()
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
        if not same_digest(overall.digest(), reader.header.new_sha256):
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
