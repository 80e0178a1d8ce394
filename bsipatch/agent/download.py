"""Reading a vendor repository, over HTTP(S) or from a local directory, behind one interface.

Two kinds of reads:

* :meth:`Repository.fetch` -- a small metadata file (root, catalog, manifest), read
  whole and bounded by a size limit.
* :meth:`Repository.open_patch` -- a patch, as a forward-only stream
  (:class:`PatchStream`, an ``io.RawIOBase``) that can be handed straight to
  :func:`bsipatch.delta.apply`: nothing is written to disk first. The stream is bounded by
  the size the signed manifest declares (a byte more is
  :class:`~bsipatch.errors.PatchTooLarge`), computes SHA-256 while the bytes pass, and
  checks it against the manifest when the last byte arrives
  (:class:`~bsipatch.errors.TargetMismatch`).

This module holds the directory reader and :func:`open_repository`, and re-exports the
shared parts (:mod:`bsipatch.agent.streams`) and the HTTP reader
(:mod:`bsipatch.agent.httprepo`: Range resume, deadlines and a minimum rate per file,
:mod:`bsipatch.agent.limits`).

No trust decisions beyond size and digest bounds the caller passes in (signatures
are python-tuf's job, see :mod:`bsipatch.trust.client`); nothing is written.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from pathlib import Path

from bsipatch.agent.httprepo import HttpRepository, RetryHook
from bsipatch.agent.limits import DEFAULT_TIMEOUT, Limits
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
from bsipatch.errors import FetchError, PatchTooLarge, TargetMismatch

__all__ = [
    "CHUNK",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "MAX_RECONNECTS",
    "MIN_PROGRESS",
    "USER_AGENT",
    "DirectoryRepository",
    "FetchStats",
    "HttpRepository",
    "Limits",
    "PatchStream",
    "Repository",
    "check_relpath",
    "open_repository",
]


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


def open_repository(
    location: str | os.PathLike[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
    backoff: float = 0.1,
    cafile: str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
    on_retry: RetryHook | None = None,
) -> Repository:
    """A :class:`Repository` for an ``http(s)://`` URL or a local directory.

    Args:
        location: URL or directory path.
        timeout: HTTP only: seconds per connect or read before a stall counts as failure.
        retries: HTTP only: consecutive failures allowed before :class:`FetchError`.
        backoff: HTTP only: first pause between attempts in seconds.
        cafile: HTTPS only: CA certificates (PEM) to trust instead of the system's.
        limits: HTTP only: deadline and minimum average rate per file.
        on_retry: HTTP only: called with a line of text before each retry.

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
            text,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            cafile=cafile,
            limits=limits,
            on_retry=on_retry,
        )
    if scheme == "file":
        return DirectoryRepository(urllib.request.url2pathname(urllib.parse.urlsplit(text).path))
    if scheme and len(scheme) > 1:
        raise FetchError(f"unsupported repository URL scheme {scheme!r} in {text!r}")
    return DirectoryRepository(text)
