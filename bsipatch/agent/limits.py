"""Time limits of one download: a deadline, a minimum average rate, and a socket watchdog.

A server that stalls or trickles (2 bytes/s keeps every socket read within its
timeout forever) must not hold a device's update agent for long. Each file the agent
reads gets a :class:`Budget` made from :class:`Limits`:

* ``timeout`` -- one connect or one socket read may take this long (a stall);
* ``min_rate`` -- after ``grace`` seconds, the average rate since the file's first
  request (over every attempt and reconnect) must be at least this many bytes/s;
* ``deadline`` -- the whole file, every attempt and pause included, must arrive within
  this many seconds.

A :class:`Watchdog` thread shuts the file's sockets down when the deadline passes, so
even a read blocked inside ``http.client`` (headers sent one byte at a time) ends on
time. :func:`watched_handlers` gives ``urllib`` handlers whose connections register
their sockets with the watchdog of the download running in the calling thread.

This module makes no trust decisions and reads or writes no files.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bsipatch.errors import DownloadTooSlow

DEFAULT_TIMEOUT = 10.0
DEFAULT_MIN_RATE = 2048.0
DEFAULT_GRACE = 8.0
DEFAULT_DEADLINE = 300.0


@dataclass(frozen=True)
class Limits:
    """How long one file's download may take.

    Attributes:
        timeout: seconds one connect or socket read may block.
        min_rate: bytes/s the average must reach once ``grace`` seconds have passed.
        grace: seconds at the start of a file during which the rate is not checked.
        deadline: seconds the whole file (all attempts and pauses) may take.

    With the defaults a stalled or trickling server fails in about ``grace`` to
    ``grace + timeout`` seconds (8-18 s); a 300 s deadline bounds any file.
    """

    timeout: float = DEFAULT_TIMEOUT
    min_rate: float = DEFAULT_MIN_RATE
    grace: float = DEFAULT_GRACE
    deadline: float = DEFAULT_DEADLINE

    def __post_init__(self) -> None:
        for name in ("timeout", "deadline"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.min_rate >= 0 or not self.grace >= 0:
            raise ValueError("min_rate and grace must be >= 0")


class Watchdog:
    """Shuts down the registered sockets when ``seconds`` have passed (one timer thread)."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Register ``sock``; shut it down at once if the deadline already passed."""
        with self._lock:
            self._socks = [s for s in self._socks if s.fileno() != -1]
            self._socks.append(sock)
            if self.fired:
                _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for s in self._socks:
                _shutdown(s)

    def cancel(self) -> None:
        """Stop the timer (the download ended)."""
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Budget:
    """The clock of one file's download: checks the deadline and the average rate.

    Args:
        what: the file, for messages.
        limits: the limits to enforce.
    """

    def __init__(self, what: str, limits: Limits) -> None:
        self.what = what
        self.limits = limits
        self.start = time.monotonic()
        self.watchdog = Watchdog(limits.deadline)

    def elapsed(self) -> float:
        """Seconds since the first request for this file."""
        return time.monotonic() - self.start

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.limits.deadline - self.elapsed()

    def check(self, received: int, total: int | None) -> None:
        """Raise :class:`DownloadTooSlow` if the deadline passed or the rate is too low.

        Args:
            received: bytes of this file received so far (all attempts).
            total: the file's size when known, for the message.
        """
        t = self.elapsed()
        of = f" of {total}" if total is not None else ""
        if t >= self.limits.deadline or self.watchdog.fired:
            raise DownloadTooSlow(
                f"{self.what}: not complete after the {self.limits.deadline:g} s deadline "
                f"({received}{of} bytes in {t:.1f} s)"
            )
        if t > self.limits.grace and received < self.limits.min_rate * t:
            raise DownloadTooSlow(
                f"{self.what}: {received}{of} bytes in {t:.1f} s, an average of "
                f"{received / t:.0f} bytes/s; the minimum is {self.limits.min_rate:g} bytes/s"
            )

    def check_deadline(self) -> None:
        """Raise :class:`DownloadTooSlow` if the deadline passed (the rate is not checked)."""
        if self.elapsed() >= self.limits.deadline or self.watchdog.fired:
            raise DownloadTooSlow(
                f"{self.what}: no complete reply within the {self.limits.deadline:g} s deadline"
            )

    def sleep(self, seconds: float) -> None:
        """Pause between attempts, never past the deadline."""
        time.sleep(max(0.0, min(seconds, self.remaining())))

    def socket_timeout(self) -> float:
        """The timeout for the next connect: the stall timeout, capped by the deadline."""
        return max(0.05, min(self.limits.timeout, self.remaining()))

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Register sockets opened in this thread while the block runs."""
        prev = getattr(_TLS, "watchdog", None)
        _TLS.watchdog = self.watchdog
        try:
            yield
        finally:
            _TLS.watchdog = prev

    def close(self) -> None:
        """Stop the watchdog timer."""
        self.watchdog.cancel()


_TLS = threading.local()


def _register(sock: Any) -> None:
    wd = getattr(_TLS, "watchdog", None)
    if wd is not None and isinstance(sock, socket.socket):
        wd.watch(sock)


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _register(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _register(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__(context=context)
        self._bsi_context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, context=self._bsi_context)


def watched_handlers(context: ssl.SSLContext | None) -> list[urllib.request.BaseHandler]:
    """HTTP and HTTPS handlers whose sockets the current download's watchdog can close."""
    return [_HTTPHandler(), _HTTPSHandler(context)]


__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_GRACE",
    "DEFAULT_MIN_RATE",
    "DEFAULT_TIMEOUT",
    "Budget",
    "Limits",
    "Watchdog",
    "watched_handlers",
]
