"""The everyday library functions ``bsipatch.diff`` and ``bsipatch.apply``.

Each has two shapes over one engine (:mod:`bsipatch.delta`): bytes in, bytes out
for inputs that fit in memory (``diff(old, new) -> bytes``, ``apply(old, patch) ->
bytes``), and with a third argument (a path, written atomically, or a writable
binary file) a streaming form that returns the patch's :class:`PatchInfo`. Every
check stays on here: an old image that is not the patch's base and an output that
does not match the patch's digests are errors. Switching checks off is for callers
that verify by other means and lives in :mod:`bsipatch.hazmat`. No logic of its own
beyond choosing the shape.
"""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Callable
from typing import BinaryIO, overload

from bsipatch.delta import apply as _apply_engine
from bsipatch.delta import diff as _diff_engine
from bsipatch.delta.patchformat import PatchInfo

#: An image: a path, or its contents as a bytes-like object.
Image = str | os.PathLike[str] | bytes | bytearray | memoryview | mmap.mmap
#: A patch to read: a path, its contents, or a readable binary stream.
PatchInput = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO
#: Where to write: a path (replaced atomically) or a writable binary file.
Output = str | os.PathLike[str] | BinaryIO
#: ``progress(done, total)``.
Progress = Callable[[int, int], None]

DEFAULT_LEVEL = _diff_engine.DEFAULT_LEVEL


@overload
def diff(
    old: Image,
    new: Image,
    patch: None = None,
    *,
    format: str = "bsipatch",
    level: int = DEFAULT_LEVEL,
    threads: int | None = None,
    segment_size: int | None = None,
    progress: Progress | None = None,
    exe: bool = True,
) -> bytes: ...


@overload
def diff(
    old: Image,
    new: Image,
    patch: Output,
    *,
    format: str = "bsipatch",
    level: int = DEFAULT_LEVEL,
    threads: int | None = None,
    segment_size: int | None = None,
    progress: Progress | None = None,
    exe: bool = True,
) -> PatchInfo: ...


def diff(
    old: Image,
    new: Image,
    patch: Output | None = None,
    *,
    format: str = "bsipatch",
    level: int = DEFAULT_LEVEL,
    threads: int | None = None,
    segment_size: int | None = None,
    progress: Progress | None = None,
    exe: bool = True,
) -> bytes | PatchInfo:
    """Make a patch that turns ``old`` into ``new``.

    Args:
        old: the old image: a path or bytes-like.
        new: the new image: a path or bytes-like.
        patch: where to write the patch (a path, replaced atomically, or a writable
            binary file); omitted, the patch is returned as bytes.
        format: ``"bsipatch"`` (segmented, zstd, SHA-256 checked) or ``"bsdiff40"``.
        level: zstd level, 1..22.
        threads: threads for indexing, search and compression (default: all CPUs).
        segment_size: largest output bytes per segment (4096..256 MiB, default 64 MiB).
        progress: ``(done, total)`` callback.
        exe: for two ELF files, a reference-aware (version 2) patch; False: version 1.

    Returns:
        The patch (bytes) without ``patch``; else the written patch's :class:`PatchInfo`.

    Raises:
        ValueError: unknown format or an option out of range.

    Example:
        >>> import bsipatch
        >>> p = bsipatch.diff(b"hello world" * 100, b"hello there" * 100)
        >>> bsipatch.apply(b"hello world" * 100, p) == b"hello there" * 100
        True
    """
    buf = io.BytesIO()
    info = _diff_engine.diff(
        old,
        new,
        buf if patch is None else patch,
        format=format,
        level=level,
        threads=threads,
        segment_size=segment_size,
        progress=progress,
        exe=exe,
    )
    return buf.getvalue() if patch is None else info


@overload
def apply(
    old: Image,
    patch: PatchInput,
    out: None = None,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
    max_patch_size: int | None = None,
) -> bytes: ...


@overload
def apply(
    old: Image,
    patch: PatchInput,
    out: Output,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    max_patch_size: int | None = None,
) -> PatchInfo: ...


def apply(
    old: Image,
    patch: PatchInput,
    out: Output | None = None,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    max_patch_size: int | None = None,
) -> bytes | PatchInfo:
    """Apply ``patch`` (bsipatch or BSDIFF40) to ``old``.

    The old image's size and SHA-256 are checked against the patch before anything
    is kept, and every segment and the whole result against the patch's digests (a
    BSDIFF40 patch carries no digests: only its structure and sizes are checked).
    With a path ``out`` the result is renamed into place only once it checked out.

    Args:
        old: the image the patch was made for: a path or bytes-like.
        patch: the patch: a path, bytes-like, or a readable binary stream.
        out: where to write the new image (a path or a writable binary file);
            omitted, the new image is returned as bytes.
        threads: segments applied at once (path outputs; default up to 3).
        progress: ``(done, total)`` callback over output bytes.
        resume: continue an interrupted apply from its verified segments (path ``out``).
        max_patch_size: refuse a patch longer than this many bytes.

    Returns:
        The new image (bytes) without ``out``; else the patch's :class:`PatchInfo`.

    Raises:
        WrongBaseImage, CorruptPatch, TruncatedPatch, PatchTooLarge, UnsupportedPatch,
        OutputMismatch: see :mod:`bsipatch.errors`.
    """
    if out is not None:
        return _apply_engine.apply(
            old,
            patch,
            out,
            threads=threads,
            progress=progress,
            resume=resume,
            max_patch_size=max_patch_size,
        )
    if resume:
        raise ValueError("resume needs an output path")
    buf = io.BytesIO()
    _apply_engine.apply(
        old, patch, buf, threads=threads, progress=progress, max_patch_size=max_patch_size
    )
    return buf.getvalue()


__all__ = ["Image", "Output", "PatchInput", "Progress", "apply", "diff"]
