"""Reading a vendor repository, over HTTP(S) or from a local directory, behind one interface.

Two kinds of reads:

* :meth:`Repository.fetch` -- a small metadata file (root, catalog, manifest), read
  whole and bounded by a size limit.
* :meth:`Repository.open_patch` -- a patch, as a forward-only stream
  (:class:`PatchStream`, an ``io.RawIOBase``) that can be handed straight to
  :func:`bsipatch.delta.apply`: nothing is written to disk first. The stream is bounded by the
  size the signed manifest declares (a byte more is :class:`~bsipatch.errors.PatchTooLarge`),
  computes SHA-256 while the bytes pass, and checks it against the manifest when the
  last byte arrives (:class:`~bsipatch.errors.TargetMismatch`). Over HTTP a dropped or
  stalled connection is resumed with a ``Range:`` request (the reply must be ``206``
  with a matching ``Content-Range``; a server that ignores Range has the bytes already
  consumed skipped and checked identical, or fails clearly with ``on_ignored_range="fail"``).

HTTP uses the standard library (``urllib.request`` over ``http.client``): the agent needs
one GET with a Range header, timeouts and TLS certificate checking, which the standard
library does, so the package gains no dependency. Loops are bounded (retries,
reconnects) and every socket read has a timeout.

This module does no trust decisions beyond size and digest bounds the caller passes in
(signatures are python-tuf's job, see :mod:`bsipatch.trust.client`) and writes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import io
import ipaddress
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bsipatch._version import __version__
from bsipatch.errors import FetchError, PatchTooLarge, TargetMismatch

DEFAULT_TIMEOUT = 15.0
DEFAULT_RETRIES = 4
MAX_RECONNECTS = 32
MIN_PROGRESS = 64 * 1024  # an attempt that delivers less counts as failed
CHUNK = 256 * 1024
USER_AGENT = f"bsipatch-agent/{__version__}"

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


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


class _FilePatchStream(PatchStream):
    """A patch read from a local repository directory."""

    def __init__(self, path: Path, relpath: str, size: int, sha256: bytes | str, stats: FetchStats):
        super().__init__(relpath, size, sha256, stats)
        try:
            self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        except FileNotFoundError as exc:
            raise FetchError(f"{relpath}: not found in repository {path.parent}") from exc
        except OSError as exc:
            raise FetchError(f"{relpath}: cannot open: {exc.strerror or exc}") from exc
        stats.requests += 1
        actual = os.fstat(self._f.fileno()).st_size
        if actual > size:
            self._f.close()
            raise PatchTooLarge(
                f"{relpath}: file is {actual} bytes, the signed manifest declares {size}"
            )
        if actual < size:
            self._f.close()
            raise TargetMismatch(
                f"{relpath}: file is {actual} bytes, the signed manifest declares {size}"
            )

    def _read_raw(self, n: int) -> bytes:
        data = self._f.read(n)
        self.stats.add(self.relpath, len(data))
        return data

    def _has_extra(self) -> bool:
        return bool(self._f.read(1))

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class _HttpPatchStream(PatchStream):
    """A patch read over HTTP with Range resume."""

    def __init__(
        self,
        repo: HttpRepository,
        relpath: str,
        size: int,
        sha256: bytes | str,
        *,
        on_ignored_range: str,
    ):
        super().__init__(relpath, size, sha256, repo.stats)
        if on_ignored_range not in ("skip", "fail"):
            raise ValueError("on_ignored_range must be 'skip' or 'fail'")
        self._repo = repo
        self._url = repo.url_for(relpath)
        self._on_ignored_range = on_ignored_range
        self._resp: http.client.HTTPResponse | None = None
        self._reconnects = 0
        self._failures = 0  # consecutive attempts without real progress
        self._attempt_start = 0  # self.pos when the current connection was opened
        self._last_error = ""
        if size > 0:
            self._connect()

    # connection handling -------------------------------------------------------------

    def _connect(self) -> None:
        headers = {}
        if self.pos > 0:
            headers["Range"] = f"bytes={self.pos}-"
        self._attempt_start = self.pos
        resp = self._repo._open(self._url, headers, self.relpath)
        try:
            self._accept(resp)
        except BaseException:
            resp.close()
            raise
        self._resp = resp

    def _accept(self, resp: http.client.HTTPResponse) -> None:
        length = resp.headers.get("Content-Length")
        length_n = int(length) if length and length.strip().isdigit() else None
        if self.pos == 0:
            if resp.status != 200:
                raise FetchError(f"{self._url}: HTTP {resp.status} to a plain GET; expected 200")
            if length_n is not None and length_n > self.size:
                raise PatchTooLarge(
                    f"{self.relpath}: the server announces {length_n} bytes, the signed "
                    f"manifest declares {self.size}"
                )
            return
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            if not m:
                raise FetchError(
                    f"{self._url}: 206 reply without a valid Content-Range "
                    f"({resp.headers.get('Content-Range')!r})"
                )
            start, end, total = int(m.group(1)), int(m.group(2)), m.group(3)
            if start != self.pos:
                raise FetchError(
                    f"{self._url}: asked to resume at byte {self.pos}, server sent from {start}"
                )
            if (total != "*" and int(total) > self.size) or end >= self.size:
                raise PatchTooLarge(
                    f"{self.relpath}: the server's Content-Range {m.group(0)!r} goes past the "
                    f"{self.size} bytes the signed manifest declares"
                )
            return
        if resp.status == 200:
            if self._on_ignored_range == "fail":
                raise FetchError(
                    f"{self._url}: the server ignored the Range request (HTTP 200 instead "
                    f"of 206) while resuming at byte {self.pos}"
                )
            if length_n is not None and length_n > self.size:
                raise PatchTooLarge(
                    f"{self.relpath}: the server announces {length_n} bytes, the signed "
                    f"manifest declares {self.size}"
                )
            self._skip_prefix(resp)
            return
        raise FetchError(f"{self._url}: HTTP {resp.status} to a Range request; expected 206")

    def _skip_prefix(self, resp: http.client.HTTPResponse) -> None:
        """The server resent from byte 0: read the bytes we had, check they are the same."""
        h = hashlib.sha256()
        remaining = self.pos
        while remaining:
            data = resp.read(min(CHUNK, remaining))
            if not data:
                raise OSError(f"connection dropped while skipping {self.pos} resent bytes")
            self.stats.add(self.relpath, len(data))
            h.update(data)
            remaining -= len(data)
        if not hmac.compare_digest(h.digest(), self._hasher.copy().digest()):
            raise FetchError(
                f"{self._url}: the file changed on the server during the download "
                "(the resent first bytes differ)"
            )

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def _retry(self, why: str) -> None:
        """Account for a failed read and reconnect, or raise FetchError when out of budget.

        An attempt that delivered at least MIN_PROGRESS bytes resets the failure count,
        so a flaky link still finishes a large file; a server that sends a trickle and
        then stalls or drops runs out of retries quickly.
        """
        self._drop()
        self._last_error = why
        progressed = self.pos - self._attempt_start >= MIN_PROGRESS
        self._failures = 0 if progressed else self._failures + 1
        self._reconnects += 1
        if self._failures > self._repo.retries or self._reconnects > MAX_RECONNECTS:
            raise FetchError(
                f"{self._url}: download failed at byte {self.pos} of {self.size} after "
                f"{self._reconnects} attempt(s): {why}"
            )
        time.sleep(min(1.0, self._repo.backoff * (2 ** max(0, self._failures - 1))))
        self.stats.resumes += 1

    def _read_raw(self, n: int) -> bytes:
        start = self.pos
        while True:
            try:
                if self._resp is None:
                    self._connect()
                assert self._resp is not None
                data = self._resp.read1(n)
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                why = (
                    "stalled (no data within the timeout)"
                    if isinstance(exc, TimeoutError)
                    else f"{type(exc).__name__}: {exc}"
                )
                self._retry(why)
                continue
            except FetchError as exc:
                if getattr(exc, "retryable", False):
                    self._retry(str(exc))
                    continue
                raise
            if data:
                self.stats.add(self.relpath, len(data))
                return data
            # EOF before the declared size: the connection dropped (http.client returns
            # b"" instead of raising when a Content-Length body ends early).
            self._retry(f"connection closed at byte {start}")

    def _has_extra(self) -> bool:
        if self._resp is None:
            return False
        try:
            extra = self._resp.read(1)
        except (OSError, http.client.HTTPException):
            extra = b""
        finally:
            self._drop()
        return bool(extra)

    def close(self) -> None:
        if not self.closed:
            self._drop()
        super().close()


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


class DirectoryRepository(Repository):
    """A repository in a local directory (a mounted volume, or a test fixture)."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.location = str(root)
        self.stats = FetchStats()
        if not self.root.is_dir():
            raise FetchError(f"repository directory {self.root} does not exist")

    def _path(self, relpath: str) -> Path:
        return self.root.joinpath(*check_relpath(relpath).split("/"))

    def fetch_optional(self, relpath: str, *, max_size: int) -> bytes | None:
        path = self._path(relpath)
        self.stats.requests += 1
        try:
            with open(path, "rb") as f:
                data = f.read(max_size + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FetchError(f"{relpath}: cannot read: {exc.strerror or exc}") from exc
        self.stats.add(relpath, len(data))
        if len(data) > max_size:
            raise FetchError(f"{relpath}: larger than the {max_size}-byte limit")
        return data

    def open_patch(
        self, relpath: str, *, size: int, sha256: bytes | str, on_ignored_range: str = "skip"
    ) -> PatchStream:
        return _FilePatchStream(self._path(relpath), relpath, size, sha256, self.stats)


class _RetryableFetch(FetchError):
    """A transient HTTP failure (5xx, connection refused) worth retrying."""

    retryable = True


class HttpRepository(Repository):
    """A repository served over HTTP(S).

    Args:
        base_url: ``http://`` or ``https://`` URL of the repository root.
        timeout: seconds a connect or a single socket read may take (stall detection).
        retries: consecutive failed attempts allowed per file before giving up.
        backoff: first pause between attempts, doubled each time (capped at 1 s).
        cafile: PEM file of the certificate authorities to trust for ``https://``
            instead of the system's (a vendor pinning its own CA); certificates and
            host names are always checked.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.1,
        cafile: str | os.PathLike[str] | None = None,
    ):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise FetchError(f"repository URL must be http(s)://host/..., got {base_url!r}")
        self.base_url = base_url.rstrip("/") + "/"
        self.location = base_url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.stats = FetchStats()
        handlers: list[urllib.request.BaseHandler] = []
        if _is_loopback(parsed.hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # never proxy 127.0.0.1
        if cafile is not None:
            try:
                context = ssl.create_default_context(cafile=os.fspath(cafile))
            except (OSError, ssl.SSLError) as exc:
                raise FetchError(f"cannot load CA certificates from {cafile}: {exc}") from exc
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def url_for(self, relpath: str) -> str:
        """The absolute URL of a repository-relative path."""
        return self.base_url + urllib.parse.quote(check_relpath(relpath))

    def _open(self, url: str, headers: dict[str, str], relpath: str) -> http.client.HTTPResponse:
        req = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            url,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers},
        )
        self.stats.requests += 1
        try:
            resp: http.client.HTTPResponse = self._opener.open(req, timeout=self.timeout)
            return resp
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404:
                err: FetchError = FetchError(f"{url}: HTTP 404 Not Found")
                err.status = 404  # type: ignore[attr-defined]
                raise err from None
            if exc.code >= 500 or exc.code == 429:
                raise _RetryableFetch(f"{url}: HTTP {exc.code} {exc.reason}") from None
            raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise FetchError(
                    f"{url}: TLS certificate not trusted: {exc.reason.verify_message}"
                ) from None
            raise _RetryableFetch(f"{url}: {exc.reason}") from None
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise _RetryableFetch(f"{url}: {type(exc).__name__}: {exc}") from None

    def fetch_optional(self, relpath: str, *, max_size: int) -> bytes | None:
        url = self.url_for(relpath)
        failures = 0
        while True:
            try:
                resp = self._open(url, {}, relpath)
                try:
                    return self._read_small(resp, url, relpath, max_size)
                finally:
                    resp.close()
            except FetchError as exc:
                if getattr(exc, "status", None) == 404:
                    return None
                if not getattr(exc, "retryable", False):
                    raise
                why = str(exc)
            failures += 1
            if failures > self.retries:
                raise FetchError(f"{url}: failed after {failures} attempt(s): {why}")
            time.sleep(min(1.0, self.backoff * (2 ** (failures - 1))))

    def _read_small(
        self, resp: http.client.HTTPResponse, url: str, relpath: str, max_size: int
    ) -> bytes:
        if resp.status != 200:
            raise FetchError(f"{url}: HTTP {resp.status}; expected 200")
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > max_size:
            raise FetchError(f"{relpath}: server announces {length} bytes; limit {max_size}")
        chunks: list[bytes] = []
        got = 0
        try:
            while got <= max_size:
                data = resp.read(min(CHUNK, max_size + 1 - got))
                if not data:
                    break
                chunks.append(data)
                got += len(data)
                self.stats.add(relpath, len(data))
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            raise _RetryableFetch(f"{url}: {type(exc).__name__}: {exc}") from None
        if got > max_size:
            raise FetchError(f"{relpath}: larger than the {max_size}-byte limit")
        if length and length.strip().isdigit() and got != int(length):
            raise _RetryableFetch(f"{url}: connection closed after {got} of {length} bytes")
        return b"".join(chunks)

    def open_patch(
        self, relpath: str, *, size: int, sha256: bytes | str, on_ignored_range: str = "skip"
    ) -> PatchStream:
        failures = 0
        while True:
            try:
                return _HttpPatchStream(
                    self, relpath, size, sha256, on_ignored_range=on_ignored_range
                )
            except FetchError as exc:
                if not getattr(exc, "retryable", False):
                    raise
                failures += 1
                if failures > self.retries:
                    raise FetchError(
                        f"{relpath}: failed after {failures} attempt(s): {exc}"
                    ) from None
                time.sleep(min(1.0, self.backoff * (2 ** (failures - 1))))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_repository(
    location: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 0.1,
    cafile: str | os.PathLike[str] | None = None,
) -> Repository:
    """A :class:`Repository` for an ``http(s)://`` URL or a local directory.

    Args:
        location: URL or directory path.
        timeout: HTTP only: seconds per connect or read before a stall counts as failure.
        retries: HTTP only: consecutive failures allowed before :class:`FetchError`.
        backoff: HTTP only: first pause between attempts in seconds.
        cafile: HTTPS only: CA certificates (PEM) to trust instead of the system's.

    Returns:
        The repository.

    Raises:
        FetchError: an unsupported URL scheme or a missing directory.

    Example:
        >>> repo = open_repository("https://updates.example.com/bsi/")  # doctest: +SKIP
        >>> catalog_bytes = repo.fetch("catalog.json", max_size=1 << 22)  # doctest: +SKIP
    """
    text = os.fspath(location)
    scheme = urllib.parse.urlsplit(text).scheme
    if scheme in ("http", "https"):
        return HttpRepository(
            text, timeout=timeout, retries=retries, backoff=backoff, cafile=cafile
        )
    if scheme == "file":
        return DirectoryRepository(urllib.request.url2pathname(urllib.parse.urlsplit(text).path))
    if scheme and len(scheme) > 1:
        raise FetchError(f"unsupported repository URL scheme {scheme!r} in {text!r}")
    return DirectoryRepository(text)
