"""The old image of an apply: its buffer, its checks, its pages; and output writes.

:class:`OldImage` maps (or wraps) the old image for the C applier, checks its size
and SHA-256 against a patch header (hashing on a thread, imagehash.py), and lets
go of its mapped pages now and then so resident memory stays bounded.
:func:`pwrite_all` and :func:`write_all` write output without ever passing a short
write silently. Nothing here reads patches or applies segments.
"""

from __future__ import annotations

import errno
import mmap
import os

from bsipatch._buffers import open_buffer
from bsipatch._io import is_pathlike
from bsipatch._lite import suppress
from bsipatch._native import ffi
from bsipatch.delta.patchformat import same_digest
from bsipatch.errors import WrongBaseImage

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO

    from bsipatch._buffers import Buffer
    from bsipatch._io import PathLike
    from bsipatch.delta.exewindow import WindowedOld
    from bsipatch.delta.imagehash import InlineHasher, PairHasher
    from bsipatch.delta.patchformat import Header, PatchReader

#: Drop the old image's mapped pages every DROP_EVERY output bytes when it is larger
#: than DROP_PAGES_ABOVE, so resident memory stays bounded whatever the image size.
DROP_PAGES_ABOVE = 32 << 20
DROP_EVERY = 16 << 20
#: An old file at least this large with a transform is read through windows
#: (exewindow.py): memory bounded by the window cache, not by the file's code size.
WINDOWED_ABOVE = 32 << 20
#: ... unless the transform's regions would make fewer private pages than this (an
#: image with a few small libraries in it): then the private copy, which is cheaper.
PRIVATE_BELOW = 24 << 20


class OldImage:
    """The old image: a buffer for the applier and a way to hash it cheaply."""

    def __init__(self, src: PathLike | Buffer) -> None:
        self.path = src if is_pathlike(src) else None
        self._opened = open_buffer(src)
        self.buf: Buffer = self._opened.__enter__()
        self.size = len(self.buf)
        self.ptr = ffi.from_buffer(self.buf) if self.size else ffi.NULL
        self.predicted: Buffer | None = None  # version 2: the old image, references predicted
        #: or, for a large old file, the predicted image in windows (exewindow.py)
        self.windowed: WindowedOld | None = None
        self.source: Any = None  # its native bsi_exe_source, which the applier reads
        self.source_lock: Any = None  # held while C uses the source (it has one scratch)
        self._since_drop = 0
        #: the thread hashing the old image (start_check), or None
        self.hasher: PairHasher | InlineHasher | None = None

    def use_transform(self, reader: PatchReader, scratch_dir: str | None = None) -> bool:
        """For a version 2 patch: apply segments against the old image with its references
        predicted by the patch's transform (exe.py); the old image itself is still what is
        hashed. Returns whether there was a transform.

        A large old file's predicted image is kept out of anonymous memory: in an
        unlinked temporary file in ``scratch_dir`` (the output's directory) when given
        and there is room, else read through windows transformed on demand (slower);
        exewindow.py. A small one, or one whose transform rewrites few pages
        (:func:`exewindow.private_bytes`), is a private copy-on-write map of the file."""
        self.check_size(reader.header)
        body = reader.load_transform()
        if body is None:
            return False
        from bsipatch.delta import exe

        t = exe.unpack_any(body, self.size)
        if self.path is not None and self.size >= WINDOWED_ABOVE:
            from bsipatch.delta import exewindow

            # few pages rewritten: the private copy below is cheaper
            if exewindow.private_bytes(t) >= PRIVATE_BELOW:
                if scratch_dir is not None:
                    self.predicted = exewindow.file_predicted_old(
                        self.buf, t, self.path, scratch_dir
                    )
                if self.predicted is None:
                    self.windowed = exewindow.windowed_old(self.buf, t, self.path)
                if self.windowed is not None:
                    import threading

                    self.source = self.windowed.source
                    self.source_lock = threading.Lock()
                    return True
        if self.predicted is None:
            self.predicted, _ = exe.predicted_old(self.buf, t, self.path)
        self.ptr = ffi.from_buffer(self.predicted) if self.size else ffi.NULL
        return True

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
        """Check the size now and start hashing on a thread (:attr:`hasher`, which an apply
        into a path also gives its output to: imagehash.py); return the function that
        waits for the digest and raises WrongBaseImage when it differs."""

        from bsipatch.delta.imagehash import OldStream, new_hasher

        self.check_size(header)
        stream = OldStream(self.buf, DROP_PAGES_ABOVE)
        hasher = new_hasher(stream, header.old_size + header.new_size)
        self.hasher = hasher

        def wait() -> None:
            digest = hasher.old_digest()
            if not same_digest(digest, header.old_sha256):
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
            with suppress(OSError, ValueError):
                self.buf.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        if self.hasher is not None:  # an interrupted apply: the hash is not waited for
            self.hasher.shutdown()
        self.ptr = self.source = None
        if self.windowed is not None:
            self.windowed.close()
        if isinstance(self.predicted, mmap.mmap):
            with suppress(BufferError, ValueError):
                self.predicted.close()
        self._opened.__exit__(None, None, None)


def no_check() -> None:
    """The old image was verified by the caller (``verify_old=False``)."""


def pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    """pwrite everything or raise: a short write (a full disk) must never pass silently."""
    while len(data):
        n = os.pwrite(fd, data, pos)
        if n <= 0:
            raise OSError(errno.ENOSPC, "No space left on device (short write)")
        data = data[n:]
        pos += n


def write_all(out: BinaryIO, data: memoryview) -> None:
    """Write everything to a caller's stream, also when it is a raw (short-writing) one."""
    while len(data):
        n = out.write(data)
        if n is None:  # a non-blocking raw stream that cannot take data now
            raise OSError(errno.EAGAIN, "output stream would block")
        if n <= 0:
            raise OSError(errno.EIO, "output stream accepted no bytes")
        data = data[n:]
