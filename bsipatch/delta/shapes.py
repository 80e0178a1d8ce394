"""The pull-driven shapes of applying: :func:`iter_apply` and :class:`ApplyReader`.

Both produce the new image only as fast as the consumer takes it, holding back the
last chunk until everything verified (STYLE.md, "Streaming API"); both are
re-exported by apply.py. The engine is segment.py's; this module does not write
files (apply.py does).
"""

from __future__ import annotations

import io
from contextlib import ExitStack

from bsipatch._buffers import open_buffer
from bsipatch.delta import patchformat as patchfmt
from bsipatch.delta.oldimage import OldImage
from bsipatch.delta.patchformat import PatchReader, same_digest
from bsipatch.delta.segment import OUT_CHUNK, segment_chunks
from bsipatch.delta.source import open_patch
from bsipatch.errors import OutputMismatch
from bsipatch.hashing import Sha256

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from bsipatch._buffers import Buffer
    from bsipatch._io import PathLike
    from bsipatch.delta.source import PatchSource


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
        f, magic = open_patch(stack, patch)
        if magic == patchfmt.BSDIFF40_MAGIC:
            from bsipatch.delta.bsdiff40 import iter_bsdiff40, read_patch_bytes

            data = read_patch_bytes(f, prefix=magic)
            old_buf = stack.enter_context(open_buffer(old))
            for piece in iter_bsdiff40(old_buf, data):
                for i in range(0, len(piece), chunk_size):
                    yield piece[i : i + chunk_size]
            return
        reader = PatchReader(f, prefix=magic)
        reader.load_transform()
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
            whole = seg.out_len == reader.header.new_size  # verified as the image, below
            for chunk in segment_chunks(o, reader.header, seg, comp, verify=not whole):
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
