"""Applying patches: stream a patch through the C applier into a verified output.

Three shapes over one engine (STYLE.md): :func:`apply` pumps a patch into an output
path or file, :func:`iter_apply` yields verified output chunks as fast as the
consumer pulls, and :class:`ApplyReader` is a file-like reader (both in shapes.py,
re-exported here). The patch is read
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

import os

from bsipatch import _partial as partial
from bsipatch._io import fsync_dir, is_pathlike, open_private, open_source
from bsipatch._lite import suppress
from bsipatch._native import ffi, lib
from bsipatch._threads import default_threads
from bsipatch.delta import patchformat as patchfmt
from bsipatch.delta.imagehash import new_hasher
from bsipatch.delta.oldimage import OldImage, no_check, pwrite_all, write_all
from bsipatch.delta.patchformat import PatchReader, same_digest
from bsipatch.delta.segment import OUT_CHUNK, segment_chunks
from bsipatch.delta.source import patch_length, read_magic, temp_file
from bsipatch.errors import HeaderMismatch, OutputMismatch, TruncatedPatch
from bsipatch.hashing import Sha256

# SHA-256 is the native one (no OpenSSL); zstandard, numpy and concurrent.futures are
# imported where they are used: a process that applies an empty patch, or only diffs, does not
# pay for them. pathlib is not used either (os.path instead: its import is start-up time).

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO, NamedTuple

    from bsipatch._buffers import Buffer
    from bsipatch._io import PathLike
    from bsipatch.delta.imagehash import InlineHasher, PairHasher
    from bsipatch.delta.patchformat import PatchInfo, SegmentHeader
    from bsipatch.delta.provenance import Provenance as Provenance  # re-exported
    from bsipatch.delta.shapes import ApplyReader as ApplyReader  # re-exported
    from bsipatch.delta.shapes import iter_apply as iter_apply  # re-exported

    Hasher = PairHasher | InlineHasher

    PatchSource = PathLike | bytes | bytearray | memoryview | BinaryIO
    ProgressFn = Callable[[int, int], None]
else:
    from bsipatch._lite import NamedTuple

PARTIAL_SUFFIX = ".bsipatch-partial"
#: Default parallel segments with provenance: each worker holds a zstd window and a
#: segment.
MAX_DEFAULT_THREADS = 3
#: Writing into a path, the output written so far is handed to the kernel's writeback
#: every this many bytes (a quarter of a smaller output, at least WRITEBACK_MIN), so
#: that the disk writes while the apply goes on and the fsync before the rename finds
#: little left to do.
WRITEBACK_EVERY = 16 << 20
WRITEBACK_MIN = 1 << 20


def __getattr__(name: str) -> Any:
    # Provenance lives in provenance.py (numpy, dataclasses), the reader shapes in
    # shapes.py (loaded on use: the CLI's apply does not need them); importable from here
    if name == "Provenance":
        from bsipatch.delta.provenance import Provenance

        return Provenance
    if name in ("ApplyReader", "iter_apply"):
        from bsipatch.delta import shapes

        return getattr(shapes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _resumed(fd: int, seg: SegmentHeader, existing: int, out: Hasher) -> bool:
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
    with suppress(OSError, AttributeError):
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
    every = max(WRITEBACK_MIN, min(WRITEBACK_EVERY, header.new_size // 4))
    # the thread hashing the old image (if it is checked) hashes the output too
    own = old.hasher is None
    out = new_hasher(None, header.new_size) if old.hasher is None else old.hasher
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
                    if pos - flushed >= every:
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
        fd, tmp = temp_file(directory, name)
    keep = False
    try:
        existing = min(os.fstat(fd).st_size if resume else 0, header.new_size)
        os.ftruncate(fd, header.new_size)  # a longer partial file is cut to size
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
            with suppress(FileNotFoundError):
                os.unlink(tmp)  # noqa: PTH108
        partial.discard(tmp)


def _apply_to_stream(
    old: OldImage, reader: PatchReader, out: BinaryIO, progress: ProgressFn | None
) -> dict[str, Any]:

    header = reader.header
    overall = Sha256()
    done = 0
    for seg, comp in reader:
        # bytes leave the process as they are made: each segment is verified on its own
        # (one that is the whole image by the image's digest, checked at the same point)
        whole = seg.out_len == header.new_size
        for chunk in segment_chunks(old, header, seg, comp, verify=not whole):
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
    expected_old_size: int | None = None,
    expected_old_sha256: bytes | str | None = None,
) -> PatchInfo:
    """Apply ``patch`` to ``old`` and write the new image to ``out``.

    The old image's size and SHA-256 are checked against the patch header before
    anything is kept. With a path ``out``, the result goes to a temporary file beside
    it (the old image is hashed meanwhile), renamed into place only when the old
    image's and the result's SHA-256 match the header (else WrongBaseImage or
    OutputMismatch, and no output file is left; ``resume``: module docstring). With a
    file object ``out``, bytes are written as segments verify and an error is raised
    at the first mismatch. Examples: :func:`bsipatch.apply`.

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
        expected_old_size, expected_old_sha256: the size and SHA-256 the header must
            declare for the old image (e.g. the signed source image's), checked with
            the new image's before anything is allocated. A BSDIFF40 patch declares no
            digests: it is refused when either expected SHA-256 is given.

    Returns:
        The :class:`PatchInfo` of the applied patch.

    Raises:
        CorruptPatch, TruncatedPatch, PatchTooLarge, UnsupportedPatch, WrongBaseImage,
        OutputMismatch; ImplausiblePatch, HeaderMismatch (the header's claims, before
        anything is allocated).
    """
    how = _How.checked(out, threads, progress, resume, verify_old, verify_new, provenance)
    with open_source(patch) as f:
        magic = read_magic(f)
        if magic == patchfmt.BSDIFF40_MAGIC:
            digests = expected_sha256 is not None or expected_old_sha256 is not None
            return _apply_bsdiff40(old, f, magic, out, how, max_patch_size, digests)
        reader = PatchReader(f, prefix=magic, max_patch_size=max_patch_size)
        patchfmt.check_claims(
            reader.header,
            patch_size=patch_length(patch, f, max_patch_size),
            expected_size=expected_size,
            expected_sha256=expected_sha256,
            expected_old_size=expected_old_size,
            expected_old_sha256=expected_old_sha256,
        )
        return patchfmt.info_from_reader(reader, _apply_opened(old, reader, out, how))


class _How(NamedTuple):
    """apply()'s options for the work after the header (see its arguments)."""

    threads: int | None
    progress: ProgressFn | None
    resume: bool
    verify_old: bool
    verify_new: bool
    provenance: Provenance | None

    @classmethod
    def checked(cls, out: PathLike | BinaryIO, *args: Any) -> _How:
        """The options, refused when they do not go together."""
        how = cls(*args)
        if how.provenance is not None and (how.resume or not is_pathlike(out)):
            raise ValueError("provenance needs a path output and no resume")
        return how


def _apply_opened(
    old: PathLike | Buffer,
    reader: PatchReader,
    out: PathLike | BinaryIO,
    how: _How,
) -> dict[str, Any]:
    """apply() once the header's claims are checked: the transform, the old image's
    check and the segments, into a path or a stream."""
    # the transform block (version 2) or the whole patch (version 3) and its digest
    # first: a damaged patch is reported as that, not as a wrong old image
    reader.load_transform()
    o = OldImage(old)
    try:
        return _apply_old_opened(o, reader, out, how)
    finally:
        o.close()


def _apply_old_opened(
    o: OldImage, reader: PatchReader, out: PathLike | BinaryIO, how: _How
) -> dict[str, Any]:
    """_apply_opened with the old image open: into a path (hashed as it goes) or a stream."""
    provenance = how.provenance
    # a large old image's predicted form goes in a temporary file beside the output
    scratch = (os.path.split(os.fsdecode(out))[0] or ".") if is_pathlike(out) else None
    later = provenance if o.use_transform(reader, scratch) else None
    if later is not None:  # copies come from the predicted old: hash the output instead
        provenance = None
    if is_pathlike(out):
        # the old image is hashed while segments are applied into the temporary
        # file; nothing is renamed into place unless its digest matches
        if how.verify_old:
            base_ok = o.start_check(reader.header)
        else:
            o.check_size(reader.header)
            base_ok = no_check
        nthreads = how.threads or min(default_threads(), MAX_DEFAULT_THREADS)
        extra = _apply_to_path(
            o,
            reader,
            out,
            threads=nthreads,
            resume=how.resume,
            progress=how.progress,
            base_ok=base_ok,
            verify_new=how.verify_new,
            provenance=provenance,
        )
    else:
        (o.check if how.verify_old else o.check_size)(reader.header)
        extra = _apply_to_stream(o, reader, out, how.progress)
    if later is not None:
        _hash_leaves(later, out)
    return extra


def _apply_bsdiff40(
    old: PathLike | Buffer,
    f: BinaryIO,
    magic: bytes,
    out: PathLike | BinaryIO,
    how: _How,
    max_patch_size: int | None,
    digests_expected: bool,
) -> PatchInfo:
    """apply() of a BSDIFF40 patch (no digests, no operations to learn provenance from);
    refused when the caller expects the header to declare image digests."""
    from bsipatch.delta.bsdiff40 import apply_bsdiff40

    if digests_expected:
        raise HeaderMismatch(
            "a BSDIFF40 patch declares no image digests; expected a bsipatch patch "
            "whose header declares the signed images' SHA-256"
        )

    info = apply_bsdiff40(
        old, f, out, prefix=magic, progress=how.progress, max_patch_size=max_patch_size
    )
    if how.provenance is not None:  # no operations to learn from: hash the output
        _hash_leaves(how.provenance, out)
    return info


def _hash_leaves(provenance: Provenance, out: PathLike | BinaryIO) -> None:
    """Fill ``provenance`` by hashing every block of the written output."""
    from bsipatch.seal.tree import image_leaves

    provenance.leaves = image_leaves(out, provenance.salt, salt_after=provenance.salt_after)
    provenance.hashed_blocks = len(provenance.leaves)
