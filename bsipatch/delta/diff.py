"""Making patches: compute the operations from old to new and write them as a patch.

The pipeline: the ops from search.py (block pre-pass, suffix arrays, search; old
and new hashed meanwhile on a side thread) -> segment encoding (C) -> zstd
compression of the segments, each in up to two frames, on threads -> the bsipatch
stream (or BSDIFF40 via bsdiff40.py). One progress bar covers both halves.
This module does the orchestration and the file I/O; it does not apply patches.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from bsipatch._buffers import (
    Buffer,
    open_buffer,
)
from bsipatch._io import is_pathlike
from bsipatch._threads import default_threads
from bsipatch.delta.search import (
    COST_INDEX,
    COST_SCAN,
    COST_WRITE,
    Meter,
    compute_ops,
)
from bsipatch.delta.writer import DEFAULT_LEVEL as DEFAULT_LEVEL
from bsipatch.delta.writer import DEFAULT_SEGMENT_SIZE as DEFAULT_SEGMENT_SIZE
from bsipatch.delta.writer import MAX_SEGMENT_SIZE as MAX_SEGMENT_SIZE
from bsipatch.delta.writer import iter_segments as iter_segments
from bsipatch.delta.writer import native_sha256, write_bsipatch
from bsipatch.delta.writer import zstd_params as zstd_params

# zstandard, the patch framing and the temp-file helpers are imported where they are
# used, after the suffix-array phase: that phase is the diff's memory peak, and these
# modules add several MB of resident memory.
if TYPE_CHECKING:
    from concurrent.futures import Future

    from bsipatch._io import PathLike
    from bsipatch.delta.patchformat import PatchInfo
    from bsipatch.delta.search import Ops

ProgressFn = Callable[[int, int], None]


#: Inputs larger than this (old + new) are hashed while the pre-pass runs.
EARLY_HASH_ABOVE = 64 << 20
#: New files up to this size get both patches, with and without the executable
#: transform, and keep the smaller (measured on the libssl3 3.0.20 -> 3.0.22 update:
#: the transform costs more than it saves on afalg.so and padlock.so, 22-27 KB).
TRY_PLAIN_BELOW = 2 << 20
#: ... and only when the patch with the transform is at most this long: the block
#: (100 B to 1.4 KB compressed on that update) outweighs its savings only on small
#: patches (afalg.so: 162 B without, ~300 B with; libssl.so.3: 14,341 B with,
#: 28,738 B without), and writing both costs a second compression.
TRY_PLAIN_PATCH_BELOW = 8 << 10


def diff(
    old: PathLike | Buffer,
    new: PathLike | Buffer,
    patch: PathLike | BinaryIO,
    *,
    format: str = "bsipatch",
    level: int = DEFAULT_LEVEL,
    threads: int | None = None,
    segment_size: int | None = None,
    progress: ProgressFn | None = None,
    exe: bool = True,
    compact: bool = True,
) -> PatchInfo:
    """Make a patch that turns ``old`` into ``new``.

    Args:
        old: the old image: path or bytes-like.
        new: the new image: path or bytes-like.
        patch: output path (written atomically) or writable binary file.
        format: ``"bsipatch"`` (default) or ``"bsdiff40"`` (classic bsdiff).
        level: zstd compression level for bsipatch (1..22, default 18).
        threads: threads for suffix sorting, search and compression (default: all
            CPUs); the patch's bytes do not depend on it.
        segment_size: largest output bytes per segment (default 128 MiB, at most 256 MiB);
            a segment also ends when its literal or difference section reaches 8 MiB.
        progress: ``(done, total)`` callback.
        exe: for two ELF files (x86-64 or AArch64), make a reference-aware patch
            (docs/patch-format.md "Executable transform"); False: never. For files up
            to TRY_PLAIN_BELOW bytes whose patch is small (TRY_PLAIN_PATCH_BELOW) the
            patch without the transform is made too, and the smaller one kept.
        compact: a patch whose output is one segment is written in the compact
            framing (version 3, "Compact framing"); False: always versions 1/2.

    Returns:
        The :class:`PatchInfo` of the written patch.

    Raises:
        ValueError: unknown format or out-of-range option.

    Example:
        >>> import bsipatch
        >>> info = bsipatch.diff("old.img", "new.img", "update.bsipatch")  # doctest: +SKIP
    """
    seg = _checked_options(format, level, segment_size)
    nthreads = threads or default_threads()
    with ExitStack() as stack:
        old_buf = stack.enter_context(open_buffer(old))
        new_buf = stack.enter_context(open_buffer(new))
        # one bar over everything: pre-pass, suffix sort, search, then writing
        n_new = len(new_buf)
        meter = Meter(
            progress,
            n_new,
            len(old_buf) * COST_INDEX + n_new * COST_SCAN + n_new * COST_WRITE,
        )
        early = _start_hashing(stack, old_buf, new_buf) if format == "bsipatch" else None
        found = _search(old_buf, new_buf, exe and format == "bsipatch", nthreads, meter, old)
        from bsipatch._io import atomic_write

        out: BinaryIO = stack.enter_context(atomic_write(patch)) if is_pathlike(patch) else patch
        if format == "bsdiff40":
            from bsipatch.delta.bsdiff40 import write_bsdiff40

            info = write_bsdiff40(old_buf, new_buf, found.ops, out)
        else:
            assert early is not None
            opts = _Options(level, nthreads, seg, *early.result(), compact)

            def on_write(done: int, total: int) -> None:
                meter.add(done * COST_WRITE)

            info = _write_found(found, new_buf, out, opts, on_write)
        meter.finish()
        return info


class _Found(NamedTuple):
    """What the search found: the ops against ``base`` (the old image, or the predicted
    old image of a transform ``block``), and the plain ops against the old image
    ``old`` when a transform's first alignment made them."""

    old: Buffer
    base: Buffer
    ops: Ops
    block: bytes | None
    plain: Ops | None


def _search(
    old: Buffer, new: Buffer, exe: bool, threads: int, meter: Meter, src: PathLike | Buffer
) -> _Found:
    """The ops (and transform) of the patch; ``src``: the old image as given (a path
    lets an image transform map the old file privately)."""
    # with a transform the first alignment of the whole files (plain ops against the
    # real old image) is kept: a small file's patch may be smaller without the transform
    first: list[Ops] = []

    def align(o: Buffer, n: Buffer) -> Ops:
        ops = compute_ops(o, n, threads=threads)
        if o is old and n is new:
            first.append(ops)
        return ops

    prep = None
    if exe:
        from bsipatch.delta.exeplan import prepare

        prep = prepare(old, new, align)
        if prep is None:  # an image: its ELF files, if any moved code
            from bsipatch.delta.exeimage import prepare_image

            prep = prepare_image(old, new, align, path=src if is_pathlike(src) else None)
    base = prep.predicted if prep is not None else old
    hints = prep.hints if prep is not None else None
    restore = prep.restore if prep is not None else None
    ops = compute_ops(base, new, threads=threads, meter=meter, hints=hints, restore=restore)
    block = prep.block if prep is not None else None
    return _Found(old, base, ops, block, first[0] if prep is not None and first else None)


def _write_found(
    found: _Found, new: Buffer, out: BinaryIO, opts: _Options, progress: ProgressFn
) -> PatchInfo:
    """Write the patch; for a small file with a transform, the smaller of the patches
    with and without it."""
    if found.block is None or found.plain is None or len(new) > TRY_PLAIN_BELOW:
        return _write(found.base, new, found.ops, out, opts, found.block, progress)
    return _smaller_of(
        (found.base, found.ops, found.block), (found.old, found.plain, None), new, out, opts,
        progress,
    )  # fmt: skip


class _Options(NamedTuple):
    level: int
    threads: int
    segment_size: int
    old_sha256: bytes
    new_sha256: bytes
    compact: bool


def _checked_options(format: str, level: int, segment_size: int | None) -> int:
    """Check diff()'s options; return the segment size to use."""
    if format not in ("bsipatch", "bsdiff40"):
        raise ValueError(f"format must be 'bsipatch' or 'bsdiff40', not {format!r}")
    if not 1 <= level <= 22:
        raise ValueError(f"level must be in 1..22, not {level}")
    seg = segment_size or DEFAULT_SEGMENT_SIZE
    if not 4096 <= seg <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment_size must be in 4096..{MAX_SEGMENT_SIZE}, not {seg}")
    return seg


def _start_hashing(stack: ExitStack, old: Buffer, new: Buffer) -> Future[tuple[bytes, bytes]]:
    """Hash old and new on a side thread while the (single-threaded) pre-pass runs.
    Large images: both at once with plain reads that skip holes (pairhash.py). Small
    files: the native
    SHA-256 over the maps the pre-pass reads anyway (no OpenSSL pages at the
    suffix-sort peak)."""
    hasher = stack.enter_context(cf.ThreadPoolExecutor(max_workers=1))
    if len(old) + len(new) > EARLY_HASH_ABOVE:
        from bsipatch.delta.pairhash import sha256_pair

        return hasher.submit(sha256_pair, old, new)
    return hasher.submit(lambda: (native_sha256(old), native_sha256(new)))


def _write(
    old: Buffer,
    new: Buffer,
    ops: Ops,
    out: BinaryIO,
    opts: _Options,
    transform: bytes | None,
    progress: ProgressFn | None,
) -> PatchInfo:
    return write_bsipatch(
        old,
        new,
        ops,
        out,
        level=opts.level,
        threads=opts.threads,
        segment_size=opts.segment_size,
        old_sha256=opts.old_sha256,
        new_sha256=opts.new_sha256,
        progress=progress,
        transform=transform,
        compact=opts.compact,
    )


def _smaller_of(
    a: tuple[Buffer, Ops, bytes | None],
    b: tuple[Buffer, Ops, bytes | None],
    new: Buffer,
    out: BinaryIO,
    opts: _Options,
    progress: ProgressFn,
) -> PatchInfo:
    """Write the patch with the transform ``a`` in memory; when it is small
    (TRY_PLAIN_PATCH_BELOW), also the one without ``b``, and keep the smaller (on some
    small files the transform block costs more than it saves). Each is
    ``(old or predicted old, ops, transform)``."""
    import io

    made: list[tuple[io.BytesIO, PatchInfo]] = []
    for i, (old, ops, transform) in enumerate((a, b)):
        if i and len(made[0][0].getbuffer()) > TRY_PLAIN_PATCH_BELOW:
            break
        buf = io.BytesIO()
        made.append((buf, _write(old, new, ops, buf, opts, transform, None if i else progress)))
    buf, info = min(made, key=lambda m: len(m[0].getbuffer()))
    out.write(buf.getbuffer())
    return info
