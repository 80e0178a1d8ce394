"""Reading a vendor repository over HTTP(S): whole metadata files and resumable patch streams.

HTTP uses the standard library (``urllib.request`` over ``http.client``): the agent needs
one GET with a Range header, timeouts and TLS certificate checking, which the standard
library does, so the package gains no dependency. A dropped or stalled connection is
resumed with a ``Range:`` request (the reply must be ``206`` with a matching
``Content-Range``; a server that ignores Range has the bytes already consumed skipped
and checked identical, or fails clearly with ``on_ignored_range="fail"``). Loops are
bounded (retries, reconnects), every socket read has a timeout, and every file has a
deadline and a minimum average rate (:mod:`bsipatch.agent.limits`): a server that
stalls or trickles fails with :class:`~bsipatch.errors.DownloadTooSlow` within seconds.
Each retry can be reported through ``on_retry`` (the CLI prints a line per retry on a
terminal).

No trust decisions beyond size and digest bounds; nothing is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import ipaddress
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from bsipatch.agent.limits import DEFAULT_TIMEOUT, Budget, Limits, watched_handlers
from bsipatch.agent.streams import (
    CHUNK,
    DEFAULT_RETRIES,
    MAX_RECONNECTS,
    MIN_PROGRESS,
    USER_AGENT,
    FetchStats,
    PatchStream,
    Repository,
    check_relpath,
)
from bsipatch.errors import FetchError, PatchTooLarge

RetryHook = Callable[[str], None]

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


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
        budget: Budget,
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
        self._budget = budget
        if size > 0:
            self._connect()

    # connection handling -------------------------------------------------------------

    def _connect(self) -> None:
        headers = {}
        if self.pos > 0:
            headers["Range"] = f"bytes={self.pos}-"
        self._attempt_start = self.pos
        resp = self._repo._open(self._url, headers, self.relpath, self._budget)
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
        self._budget.check(self.pos, self.size)
        progressed = self.pos - self._attempt_start >= MIN_PROGRESS
        self._failures = 0 if progressed else self._failures + 1
        self._reconnects += 1
        if self._failures > self._repo.retries or self._reconnects > MAX_RECONNECTS:
            raise FetchError(
                f"{self._url}: download failed at byte {self.pos} of {self.size} after "
                f"{self._reconnects} attempt(s): {why}"
            )
        pause = min(1.0, self._repo.backoff * (2 ** max(0, self._failures - 1)))
        self._repo.report_retry(
            f"{self.relpath}: {why}; resuming at byte {self.pos} in {pause:.1f} s "
            f"(attempt {self._failures + 1} of {self._repo.retries + 1})"
        )
        self._budget.sleep(pause)
        self._budget.check(self.pos, self.size)
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
                self._budget.check(self.pos + len(data), self.size)
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
            self._budget.close()
        super().close()


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
        limits: deadline and minimum average rate of every file (``timeout`` wins
            over ``limits.timeout``); see :class:`bsipatch.agent.limits.Limits`.
        on_retry: called with one line of text before each retry or resume.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.1,
        cafile: str | os.PathLike[str] | None = None,
        limits: Limits | None = None,
        on_retry: RetryHook | None = None,
    ):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise FetchError(f"repository URL must be http(s)://host/..., got {base_url!r}")
        self.base_url = base_url.rstrip("/") + "/"
        self.location = base_url
        self.limits = dataclasses.replace(limits or Limits(), timeout=timeout)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.on_retry = on_retry
        self.stats = FetchStats()
        handlers: list[urllib.request.BaseHandler] = []
        if _is_loopback(parsed.hostname):
            handlers.append(urllib.request.ProxyHandler({}))  # never proxy 127.0.0.1
        context = None
        if cafile is not None:
            try:
                context = ssl.create_default_context(cafile=os.fspath(cafile))
            except (OSError, ssl.SSLError) as exc:
                raise FetchError(f"cannot load CA certificates from {cafile}: {exc}") from exc
        handlers.extend(watched_handlers(context))
        self._opener = urllib.request.build_opener(*handlers)

    def report_retry(self, line: str) -> None:
        """Pass one line about a retry to ``on_retry`` (if any)."""
        if self.on_retry is not None:
            self.on_retry(line)

    def url_for(self, relpath: str) -> str:
        """The absolute URL of a repository-relative path."""
        return self.base_url + urllib.parse.quote(check_relpath(relpath))

    def _open(
        self, url: str, headers: dict[str, str], relpath: str, budget: Budget
    ) -> http.client.HTTPResponse:
        req = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            url,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers},
        )
        self.stats.requests += 1
        try:
            with budget.watching():
                resp: http.client.HTTPResponse = self._opener.open(
                    req, timeout=budget.socket_timeout()
                )
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
            budget.check_deadline()
            raise _RetryableFetch(f"{url}: {type(exc).__name__}: {exc}") from None
        try:
            budget.check_deadline()  # headers cut short by the watchdog parse as complete
        except BaseException:
            resp.close()
            raise
        return resp

    def fetch_optional(self, relpath: str, *, max_size: int) -> bytes | None:
        url = self.url_for(relpath)
        budget = Budget(relpath, self.limits)
        try:
            return self._fetch_small(url, relpath, max_size, budget)
        finally:
            budget.close()

    def _fetch_small(self, url: str, relpath: str, max_size: int, budget: Budget) -> bytes | None:
        failures = 0
        while True:
            try:
                resp = self._open(url, {}, relpath, budget)
                try:
                    return self._read_small(resp, url, relpath, max_size, budget)
                finally:
                    resp.close()
            except FetchError as exc:
                if getattr(exc, "status", None) == 404:
                    return None
                if not getattr(exc, "retryable", False):
                    raise
                why = str(exc)
            budget.check(0, None)
            failures += 1
            if failures > self.retries:
                raise FetchError(f"{url}: failed after {failures} attempt(s): {why}")
            pause = min(1.0, self.backoff * (2 ** (failures - 1)))
            self.report_retry(
                f"{relpath}: {why}; retrying in {pause:.1f} s "
                f"(attempt {failures + 1} of {self.retries + 1})"
            )
            budget.sleep(pause)
            budget.check(0, None)

    def _read_small(
        self,
        resp: http.client.HTTPResponse,
        url: str,
        relpath: str,
        max_size: int,
        budget: Budget,
    ) -> bytes:
        if resp.status != 200:
            raise FetchError(f"{url}: HTTP {resp.status}; expected 200")
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > max_size:
            raise FetchError(f"{relpath}: server announces {length} bytes; limit {max_size}")
        chunks: list[bytes] = []
        got = 0
        total = int(length) if length and length.strip().isdigit() else None
        try:
            while got <= max_size:
                data = resp.read1(min(CHUNK, max_size + 1 - got))
                if not data:
                    break
                chunks.append(data)
                got += len(data)
                self.stats.add(relpath, len(data))
                if total is None or got < total:
                    budget.check(got, total)
        except (TimeoutError, OSError, http.client.HTTPException) as exc:
            budget.check(got, None)
            raise _RetryableFetch(f"{url}: {type(exc).__name__}: {exc}") from None
        if got > max_size:
            raise FetchError(f"{relpath}: larger than the {max_size}-byte limit")
        if length and length.strip().isdigit() and got != int(length):
            raise _RetryableFetch(f"{url}: connection closed after {got} of {length} bytes")
        return b"".join(chunks)

    def open_patch(
        self, relpath: str, *, size: int, sha256: bytes | str, on_ignored_range: str = "skip"
    ) -> PatchStream:
        budget = Budget(relpath, self.limits)
        try:
            return self._open_stream(relpath, size, sha256, on_ignored_range, budget)
        except BaseException:
            budget.close()
            raise

    def _open_stream(
        self, relpath: str, size: int, sha256: bytes | str, on_ignored_range: str, budget: Budget
    ) -> PatchStream:
        failures = 0
        while True:
            try:
                return _HttpPatchStream(
                    self, relpath, size, sha256, on_ignored_range=on_ignored_range, budget=budget
                )
            except FetchError as exc:
                if not getattr(exc, "retryable", False):
                    raise
                budget.check(0, size)
                failures += 1
                if failures > self.retries:
                    raise FetchError(
                        f"{relpath}: failed after {failures} attempt(s): {exc}"
                    ) from None
                pause = min(1.0, self.backoff * (2 ** (failures - 1)))
                self.report_retry(
                    f"{relpath}: {exc}; retrying in {pause:.1f} s "
                    f"(attempt {failures + 1} of {self.retries + 1})"
                )
                budget.sleep(pause)
                budget.check(0, size)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
