"""Inspecting a patch of either format: :func:`read_patch_info`.

Reads a bsipatch or BSDIFF40 patch once, sequentially, and summarises it; checks
what the format can check (segment digests, trailer) but decompresses nothing and
applies nothing. Sits above :mod:`.patchformat` and :mod:`.bsdiff40`, which do not
import each other.
"""

from __future__ import annotations

from bsipatch._io import Source, open_source, read_exact
from bsipatch.delta.bsdiff40 import read_info
from bsipatch.delta.patchformat import (
    BSDIFF40_MAGIC,
    MAGIC,
    PatchInfo,
    PatchReader,
    info_from_reader,
)
from bsipatch.errors import TruncatedPatch


def read_patch_info(patch: Source) -> PatchInfo:
    """Read a patch's header, segment table and op statistics (bsipatch or BSDIFF40).

    The whole patch is read once, sequentially; segment digests and the trailer are
    checked, but nothing is decompressed.

    Args:
        patch: path, bytes-like, or readable binary stream.

    Returns:
        The :class:`PatchInfo`.

    Raises:
        UnsupportedPatch, CorruptPatch, TruncatedPatch: as for apply.

    Example:
        >>> info = read_patch_info("update.bsipatch")  # doctest: +SKIP
        >>> info.new_size, len(info.segments)  # doctest: +SKIP
    """
    with open_source(patch) as f:
        magic = read_exact(f, 8)
        if magic == BSDIFF40_MAGIC:
            return read_info(f, prefix=magic)
        if len(magic) < 8 and MAGIC.startswith(magic):
            raise TruncatedPatch(f"patch is only {len(magic)} bytes long")
        reader = PatchReader(f, prefix=magic)
        for _ in reader:
            pass
        return info_from_reader(reader)
