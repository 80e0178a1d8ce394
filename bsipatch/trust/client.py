"""The device's TUF client: refresh trusted metadata with python-tuf's TrustedMetadataSet.

:func:`refresh` runs TUF's client workflow (spec section 5.3-5.6, the steps of
``tuf.ngclient.Updater.refresh``) with every trust decision made by
``tuf.ngclient``'s :class:`TrustedMetadataSet`: root rotation (each version signed by
the old and the new root's threshold), version floors of timestamp, snapshot and
targets, expiry, thresholds, and snapshot/targets consistency. What differs from
``Updater`` is where bytes come from and go to: the device's previously trusted
metadata is passed in (it lives in the agent's single state file, written atomically
with the release floors), bytes are fetched through a callback (the agent's bounded,
deadline-limited downloader) and ``now`` is injected. Nothing is written here.

tuf's exceptions are mapped to bsipatch's error tree (:class:`ExpiredMetadata`,
:class:`RollbackAttack`, :class:`ThresholdError`...), keeping tuf's message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tuf.api import exceptions as tufex
from tuf.api.metadata import Root, Snapshot, Targets, Timestamp
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
from tuf.ngclient.config import EnvelopeType, UpdaterConfig

from bsipatch.errors import (
    ExpiredMetadata,
    FetchError,
    FormatError,
    MetadataError,
    RollbackAttack,
    SignatureError,
    ThresholdError,
)
from bsipatch.trust.releases import Catalog

__all__ = [
    "LIMITS",
    "Fetch",
    "RefreshResult",
    "StoredMetadata",
    "check_root",
    "map_tuf_error",
    "refresh",
]

#: Size limits for metadata whose length the repository does not announce (tuf's defaults).
LIMITS = UpdaterConfig()

#: ``fetch(relpath, max_size) -> bytes``, or ``None`` when the file does not exist (404).
Fetch = Callable[[str, int], "bytes | None"]


@dataclass
class StoredMetadata:
    """The metadata a device trusts (raw bytes as the repository served them).

    Attributes:
        root: the newest trusted root.
        timestamp, snapshot, targets: the last trusted versions, or None.
    """

    root: bytes
    timestamp: bytes | None = None
    snapshot: bytes | None = None
    targets: bytes | None = None


@dataclass
class RefreshResult:
    """What a refresh found.

    Attributes:
        stored: the metadata to store (only if the caller accepts the whole check).
        catalog: the releases and patches of the verified targets metadata.
        root_version, timestamp_version, snapshot_version, targets_version: versions.
        rotated: root versions newly trusted in this refresh.
        fetched: relative paths downloaded.
    """

    stored: StoredMetadata
    catalog: Catalog
    root_version: int
    timestamp_version: int
    snapshot_version: int
    targets_version: int
    rotated: list[int] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)


def map_tuf_error(exc: Exception, what: str) -> MetadataError:
    """The bsipatch error for a tuf exception (message kept)."""
    msg = f"{what}: {exc}" if str(exc) else f"{what}: {type(exc).__name__}"
    if isinstance(exc, tufex.ExpiredMetadataError):
        return ExpiredMetadata(msg)
    if isinstance(exc, tufex.BadVersionNumberError):
        return RollbackAttack(msg)
    if isinstance(exc, tufex.UnsignedMetadataError):
        return ThresholdError(msg)
    if isinstance(exc, tufex.LengthOrHashMismatchError):
        return SignatureError(msg)
    if isinstance(exc, (tufex.RepositoryError, ValueError, KeyError, TypeError)):
        return FormatError(msg)
    return MetadataError(msg)


def _get(fetch: Fetch, relpath: str, max_size: int, fetched: list[str]) -> bytes:
    data = fetch(relpath, max_size)
    if data is None:
        raise FetchError(f"{relpath}: not found on the repository")
    fetched.append(relpath)
    return data


def _roots(
    tms: TrustedMetadataSet, fetch: Fetch, fetched: list[str]
) -> tuple[list[int], bytes | None]:
    rotated: list[int] = []
    last: bytes | None = None
    for _ in range(LIMITS.max_root_rotations):
        nxt = tms.root.version + 1
        data = fetch(f"metadata/{nxt}.root.json", LIMITS.root_max_length)
        if data is None:
            break
        fetched.append(f"metadata/{nxt}.root.json")
        try:
            tms.update_root(data)
        except (tufex.RepositoryError, ValueError) as exc:
            raise map_tuf_error(exc, f"root version {nxt}") from exc
        rotated.append(nxt)
        last = data
    return rotated, last


def _timestamp(
    tms: TrustedMetadataSet, stored: StoredMetadata, fetch: Fetch, fetched: list[str]
) -> bytes:
    kept = stored.timestamp
    if kept is not None:
        # TUF: a stored timestamp may be expired (still kept as the floor) or signed
        # by rotated-out keys (then dropped)
        with contextlib.suppress(tufex.RepositoryError):
            tms.update_timestamp(kept)
        if Timestamp.type not in tms:
            kept = None
    data = _get(fetch, "metadata/timestamp.json", LIMITS.timestamp_max_length, fetched)
    try:
        tms.update_timestamp(data)
    except tufex.EqualVersionNumberError:
        assert kept is not None
        return kept
    except (tufex.RepositoryError, ValueError) as exc:
        raise map_tuf_error(exc, "timestamp") from exc
    return data


def _snapshot(
    tms: TrustedMetadataSet, stored: StoredMetadata, fetch: Fetch, fetched: list[str]
) -> bytes:
    if stored.snapshot is not None:
        try:
            tms.update_snapshot(stored.snapshot, trusted=True)
            return stored.snapshot
        except tufex.RepositoryError:
            pass  # not valid as final: fetch the one the new timestamp names
    meta = tms.timestamp.snapshot_meta
    length = meta.length or LIMITS.snapshot_max_length
    data = _get(fetch, f"metadata/{meta.version}.snapshot.json", length, fetched)
    try:
        tms.update_snapshot(data)
    except (tufex.RepositoryError, ValueError) as exc:
        raise map_tuf_error(exc, "snapshot") from exc
    return data


def _targets(
    tms: TrustedMetadataSet, stored: StoredMetadata, fetch: Fetch, fetched: list[str]
) -> bytes:
    if stored.targets is not None:
        try:
            tms.update_targets(stored.targets)
            return stored.targets
        except tufex.RepositoryError:
            pass
    meta = tms.snapshot.meta.get("targets.json")
    if meta is None:
        raise FormatError("snapshot does not list targets.json")
    length = meta.length or LIMITS.targets_max_length
    data = _get(fetch, f"metadata/{meta.version}.targets.json", length, fetched)
    try:
        tms.update_targets(data)
    except (tufex.RepositoryError, ValueError) as exc:
        raise map_tuf_error(exc, "targets") from exc
    return data


def refresh(stored: StoredMetadata, fetch: Fetch, *, now: datetime) -> RefreshResult:
    """Run TUF's client workflow from ``stored`` and return what to trust now.

    Args:
        stored: the device's trusted metadata.
        fetch: downloads one file (``None`` on 404).
        now: the current time (expiry is checked against it).

    Raises:
        MetadataError: a rotation, timestamp, snapshot or targets fails TUF's checks
            (its subclass says which: expired, rollback, threshold, format).
        FetchError: a file cannot be downloaded.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    try:
        tms = TrustedMetadataSet(stored.root, EnvelopeType.METADATA)
    except (tufex.RepositoryError, ValueError) as exc:
        raise map_tuf_error(exc, "the device's trusted root") from exc
    tms.reference_time = now.astimezone(timezone.utc)
    fetched: list[str] = []
    rotated, new_root = _roots(tms, fetch, fetched)
    root_bytes = new_root if new_root is not None else stored.root
    # After a rotation the stored timestamp/snapshot/targets are re-checked under the new
    # root: metadata signed only by rotated-out keys stops counting, which drops the floor
    # a stolen key could have raised (TUF's fast-forward recovery).
    ts = _timestamp(tms, stored, fetch, fetched)
    snap = _snapshot(tms, stored, fetch, fetched)
    targ = _targets(tms, stored, fetch, fetched)
    catalog = Catalog.from_targets(tms.targets)
    root: Root = tms.root
    snapshot: Snapshot = tms.snapshot
    targets: Targets = tms.targets
    return RefreshResult(
        stored=StoredMetadata(root_bytes, ts, snap, targ),
        catalog=catalog,
        root_version=root.version,
        timestamp_version=tms.timestamp.version,
        snapshot_version=snapshot.version,
        targets_version=targets.version,
        rotated=rotated,
        fetched=fetched,
    )


def check_root(data: bytes) -> int:
    """Check that ``data`` is TUF root metadata signed by a threshold of its own root keys.

    Returns:
        Its version.

    Raises:
        MetadataError: it is not (the subclass says why).
    """
    try:
        return int(TrustedMetadataSet(data, EnvelopeType.METADATA).root.version)
    except (tufex.RepositoryError, ValueError) as exc:
        raise map_tuf_error(exc, "root metadata") from exc
