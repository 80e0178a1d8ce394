"""The parts every repository reader shares: counters, path checks, the checked patch stream.

:class:`PatchStream` is a forward-only, size-bounded, SHA-256-checked ``io.RawIOBase``
over one patch; :class:`Repository` is the interface the agent reads through
(:mod:`bsipatch.agent.download` for directories and the factory,
:mod:`bsipatch.agent.httprepo` for HTTP(S)). No network or file access here, no trust
decisions beyond the size and digest bounds the caller passes in.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from dataclasses import dataclass, field
from typing import Any

from bsipatch._version import __version__
from bsipatch.errors import FetchError, PatchTooLarge, TargetMismatch

DEFAULT_RETRIES = 4
MAX_RECONNECTS = 32
MIN_PROGRESS = 64 * 1024  # an attempt that delivers less counts as failed
CHUNK = 256 * 1024
USER_AGENT = f"bsipatch-agent/{__version__}"


@dataclass
class FetchStats:
    """Counters for what a repository cost to read.

    Attributes:
        requests: HTTP requests made (or files opened).
        bytes_received: bytes read from the network or disk, including any re-sent by a
            server that ignored Range.
        resumes: reconnections after a dropped or stalled transfer.
        files: relative path -> bytes received for it.
    """

    requests: int = 0
    bytes_received: int = 0
    resumes: int = 0
    files: dict[str, int] = field(default_factory=dict)

    def add(self, relpath: str, n: int) -> None:
        """Count ``n`` bytes received for ``relpath``."""
        self.bytes_received += n
        self.files[relpath] = self.files.get(relpath, 0) + n

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "requests": self.requests,
            "bytes_received": self.bytes_received,
            "resumes": self.resumes,
        }


def check_relpath(relpath: str) -> str:
    """Validate a repository-relative path from metadata: no absolute path, no ``..``.

    Raises:
        FetchError: the path could escape the repository.
    """
    if (
        not relpath
        or relpath.startswith("/")
        or "\\" in relpath
        or "\x00" in relpath
        or any(part in ("", ".", "..") for part in relpath.split("/"))
    ):
        raise FetchError(f"refusing repository path {relpath!r}: must be relative, without '..'")
    return relpath


def _hex(digest: bytes | str) -> str:
    return digest if isinstance(digest, str) else digest.hex()


class PatchStream(io.RawIOBase):
    """A forward-only, size-bounded, SHA-256-checked stream of one patch file.

    Subclasses provide :meth:`_read_raw`. The stream never returns more than
    ``size`` bytes, raises :class:`PatchTooLarge` when the source has more, and
    raises :class:`TargetMismatch` on the read that completes it if the SHA-256
    differs from ``sha256`` -- so a consumer such as :func:`bsipatch.delta.apply` fails
    before it can finish with bad bytes.

    Args:
        relpath: repository-relative path (for messages).
        size: the byte count the signed manifest declares.
        sha256: the digest the signed manifest declares (bytes or hex).
        stats: counters to update.
    """

    def __init__(self, relpath: str, size: int, sha256: bytes | str, stats: FetchStats):
        super().__init__()
        if size < 0:
            raise ValueError("size must be >= 0")
        self.relpath = relpath
        self.size = size
        self.expected_sha256 = _hex(sha256).lower()
        self.stats = stats
        self.pos = 0
        self._hasher = hashlib.sha256()
        self._verified = False

    # io.RawIOBase interface ------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed PatchStream")
        view = memoryview(b).cast("B")
        if self.pos >= self.size:
            self._finish()
            return 0
        want = min(len(view), self.size - self.pos)
        if want == 0:
            return 0
        data = self._read_raw(want)
        if not data:
            raise TargetMismatch(
                f"{self.relpath}: download ended after {self.pos} of the {self.size} bytes "
                "the signed manifest declares"
            )
        if len(data) > want:  # pragma: no cover - subclasses never return more
            raise PatchTooLarge(f"{self.relpath}: source returned more than requested")
        n = len(data)
        view[:n] = data
        self._hasher.update(data)
        self.pos += n
        if self.pos == self.size:
            self._finish()
        return n

    # completion ----------------------------------------------------------------------

    def _finish(self) -> None:
        if self._verified:
            return
        if self._has_extra():
            raise PatchTooLarge(
                f"{self.relpath}: the server sent more than the {self.size} bytes the "
                "signed manifest declares"
            )
        got = self._hasher.hexdigest()
        if not hmac.compare_digest(got, self.expected_sha256):
            raise TargetMismatch(
                f"{self.relpath}: SHA-256 of the downloaded patch is {got}, "
                f"the signed manifest declares {self.expected_sha256}"
            )
        self._verified = True

    def verify_complete(self) -> str:
        """Read whatever the consumer left unread, then check size and SHA-256.

        Returns:
            The hex SHA-256 of the whole patch.

        Raises:
            TargetMismatch, PatchTooLarge, FetchError: as for reading.
        """
        while self.pos < self.size:
            if not self.read(CHUNK):
                break
        self._finish()
        return self._hasher.hexdigest()

    @property
    def verified(self) -> bool:
        """True once all ``size`` bytes arrived and matched the declared SHA-256."""
        return self._verified

    # for subclasses ------------------------------------------------------------------

    def _read_raw(self, n: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _has_extra(self) -> bool:
        return False


class Repository:
    """A vendor repository: static files addressed by repository-relative paths.

    Attributes:
        location: the URL or directory, as given.
        stats: what reading it has cost so far.
    """

    location: str
    stats: FetchStats

    def fetch(self, relpath: str, *, max_size: int) -> bytes:
        """Read a whole (metadata) file of at most ``max_size`` bytes.

        Raises:
            FetchError: missing, unreachable, or larger than ``max_size``.
        """
        data = self.fetch_optional(relpath, max_size=max_size)
        if data is None:
            raise FetchError(f"{relpath}: not found in repository {self.location}")
        return data

    def fetch_optional(self, relpath: str, *, max_size: int) -> bytes | None:
        """Like :meth:`fetch`, but ``None`` when the file does not exist."""
        raise NotImplementedError

    def open_patch(
        self, relpath: str, *, size: int, sha256: bytes | str, on_ignored_range: str = "skip"
    ) -> PatchStream:
        """Open a patch as a bounded, digest-checked, forward-only stream.

        Args:
            relpath: path in the repository (from the signed manifest).
            size: declared size (signed manifest).
            sha256: declared SHA-256 (signed manifest), bytes or hex.
            on_ignored_range: HTTP only: ``"skip"`` re-read and check the consumed
                prefix when a server answers a Range request with the whole file, or
                ``"fail"``.

        Returns:
            A :class:`PatchStream`; close it when done (it is a context manager).

        Raises:
            FetchError, PatchTooLarge, TargetMismatch.
        """
        raise NotImplementedError
