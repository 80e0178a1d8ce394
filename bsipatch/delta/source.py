"""Where an apply's bytes come from and go to: the patch source and the temporary output.

Opens a patch (path, bytes or stream) and reads its magic, says how long it is when
that is known without reading it, and creates the temporary output file beside the
target. It does not parse patches (patchformat.py) or apply them (apply.py).
"""

from __future__ import annotations

import errno
import io
import os
import stat

from bsipatch._io import open_source, read_exact
from bsipatch.delta import patchformat as patchfmt
from bsipatch.errors import TruncatedPatch, UnsupportedPatch

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from contextlib import ExitStack
    from typing import BinaryIO

    from bsipatch._io import PathLike

    PatchSource = PathLike | bytes | bytearray | memoryview | BinaryIO


def patch_length(patch: PatchSource, f: BinaryIO, max_patch_size: int | None) -> int | None:
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


def open_patch(stack: ExitStack, patch: PatchSource) -> tuple[BinaryIO, bytes]:
    """The patch opened on ``stack`` and its first 8 bytes (:func:`read_magic`)."""
    f = stack.enter_context(open_source(patch))
    return f, read_magic(f)


def read_magic(f: BinaryIO) -> bytes:
    """The first 8 bytes of a patch (its magic); a shorter or unknown start refused."""
    magic = read_exact(f, 8)
    if len(magic) < 8:
        if patchfmt.MAGIC.startswith(magic) or patchfmt.BSDIFF40_MAGIC.startswith(magic):
            raise TruncatedPatch(f"patch is only {len(magic)} bytes long")
        raise UnsupportedPatch(f"not a patch: starts with {magic!r}")
    return magic


def temp_file(directory: str, name: str) -> tuple[int, str]:
    """A new, empty temporary file beside the output (mode 0666 less the umask), listed
    in :mod:`bsipatch._partial` until the caller discards it."""
    from bsipatch import _partial as partial
    from bsipatch._io import new_file_mode

    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{os.urandom(6).hex()}.bsipatch-tmp")  # noqa: PTH118
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
        partial.add(tmp)  # the caller discards it once renamed or removed
        os.fchmod(fd, new_file_mode())
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(directory))
