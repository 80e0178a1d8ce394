"""The vendor's TUF repository on disk: init, sign, publish targets, refresh, rotate root.

A plain directory any web server can serve::

    <repo>/metadata/<N>.root.json      every root version (devices walk them in order)
    <repo>/metadata/root.json          a copy of the newest root (to provision devices)
    <repo>/metadata/timestamp.json     the only file rewritten in place (last, atomically)
    <repo>/metadata/<N>.snapshot.json  consistent snapshots: every version keeps its name
    <repo>/metadata/<N>.targets.json
    <repo>/targets/<dir>/<sha256>.<name>   target files, prefixed by their hash

Metadata is built and signed with :mod:`tuf.api.metadata` and securesystemslib signers;
every signature set is checked against the root's threshold before it is written, so a
command given too few (or the wrong) keys fails before it changes anything. Writes are
atomic and ordered so that a device never sees a half-published state: target files,
then targets, then snapshot, then ``timestamp.json``. The publishers' lock is an
``flock`` on the repository directory itself: no lock file in the served tree.

What a release *means* (custom fields) is :mod:`bsipatch.trust.releases`; the release
pipeline is :mod:`bsipatch.trust.publish`. No device code runs this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import Key, Signer
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from bsipatch._io import PathLike, atomic_write
from bsipatch._time import format_time, to_utc, utc_now
from bsipatch.errors import ExpiredMetadata, FormatError, MetadataError, ThresholdError
from bsipatch.trust.signers import ONLINE_ROLES, ROLES, KeySet

__all__ = [
    "Expiry",
    "TufRepository",
    "init_repository",
    "refresh",
    "rotate_root",
]

_S = TypeVar("_S", Root, Timestamp, Snapshot, Targets)
_SERIALIZER = JSONSerializer(compact=True)
_ROOT_FILE = re.compile(r"^(\d+)\.root\.json$")


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid after it is signed.

    Defaults: timestamp 1 day, snapshot 7 days, targets 90 days, root 1 year.

    Raises:
        FormatError: a lifetime is not > 0.
    """

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        for role in ROLES:
            value = getattr(self, role)
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise FormatError(f"{role} expiry must be > 0, found {value}")

    @classmethod
    def days(cls, **days: float | None) -> Expiry:
        """From day counts; ``None`` keeps the default."""
        return cls(**{r: timedelta(days=d) for r, d in days.items() if d is not None})

    def of(self, role: str) -> timedelta:
        """The lifetime of ``role``."""
        return getattr(self, role)  # type: ignore[no-any-return]


def _check_not_expired(role: str, expires: datetime, clock: datetime) -> None:
    if expires <= clock:
        raise ExpiredMetadata(
            f"{role} would expire at {format_time(expires)}, which has already passed "
            f"(now {format_time(clock)}): refusing to publish metadata that is already "
            "expired (back-dated publication time?)"
        )


def sign_role(md: Metadata[Any], root: Root, role: str, signers: Sequence[Signer]) -> None:
    """Replace ``md``'s signatures by those of ``signers`` that ``root`` trusts for ``role``.

    Raises:
        ThresholdError: fewer than the role's threshold of trusted keys signed.
    """
    trusted = set(root.roles[role].keyids)
    md.signatures.clear()
    for s in signers:
        if s.public_key.keyid in trusted:
            md.sign(s, append=True)
    result = root.get_verification_result(role, md.signed_bytes, md.signatures)
    if not result.verified:
        raise ThresholdError(
            f"{role} metadata needs {result.threshold} signature(s) from the root's {role} "
            f"keys; the keys given provide {len(result.signed)}"
            + ("" if signers else f" (no {role} key given)")
        )


class TufRepository:
    """A TUF repository directory (see the module docstring for the layout).

    Args:
        path: the repository directory (the directory a web server serves).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.metadata_dir = self.path / "metadata"
        self.targets_dir = self.path / "targets"

    def __repr__(self) -> str:
        return f"TufRepository({str(self.path)!r})"

    @contextlib.contextmanager
    def lock(self) -> Iterator[TufRepository]:
        """Hold the publishers' exclusive lock (``flock`` on the directory; no file)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)

    # reading -----------------------------------------------------------------------------

    def _read(self, name: str, kind: type[_S]) -> Metadata[Any]:
        path = self.metadata_dir / name
        try:
            md: Metadata[Any] = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError as exc:
            raise MetadataError(f"{path} does not exist: is {self.path} a repository?") from exc
        except (OSError, RepositoryError, ValueError) as exc:
            raise MetadataError(f"{path} is not valid TUF metadata: {exc}") from exc
        if not isinstance(md.signed, kind):
            raise MetadataError(f"{path} holds {md.signed.type} metadata, not {kind.type}")
        return md

    def root_versions(self) -> list[int]:
        """The root versions present, ascending."""
        if not self.metadata_dir.is_dir():
            return []
        found = (_ROOT_FILE.match(p.name) for p in self.metadata_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def root(self, version: int | None = None) -> Metadata[Root]:
        """Root ``version`` (default: the newest)."""
        if version is None:
            versions = self.root_versions()
            if not versions:
                raise MetadataError(f"{self.metadata_dir}: no root metadata")
            version = versions[-1]
        return self._read(f"{version}.root.json", Root)

    def timestamp(self) -> Metadata[Timestamp]:
        """The current timestamp."""
        return self._read("timestamp.json", Timestamp)

    def snapshot(self) -> Metadata[Snapshot]:
        """The snapshot the current timestamp names."""
        v = self.timestamp().signed.snapshot_meta.version
        return self._read(f"{v}.snapshot.json", Snapshot)

    def targets(self) -> Metadata[Targets]:
        """The targets metadata the current snapshot names."""
        v = self.snapshot().signed.meta["targets.json"].version
        return self._read(f"{v}.targets.json", Targets)

    def target_path(self, target: TargetFile) -> Path:
        """Where a target file is stored (hash-prefixed name)."""
        return self.targets_dir / target.get_prefixed_paths()[0]

    def metadata_bytes(self) -> int:
        """Total size of the current top-level metadata files (for reports)."""
        ts = self.timestamp()
        snap_v = ts.signed.snapshot_meta.version
        targ_v = self.snapshot().signed.meta["targets.json"].version
        names = ["timestamp.json", f"{snap_v}.snapshot.json", f"{targ_v}.targets.json"]
        return sum((self.metadata_dir / n).stat().st_size for n in names)

    # writing -----------------------------------------------------------------------------

    def write_metadata(self, md: Metadata[Any], name: str | None = None) -> Path:
        """Write ``md`` atomically as ``name`` (default ``<version>.<role>.json``)."""
        if name is None:
            name = f"{md.signed.version}.{md.signed.type}.json"
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        path = self.metadata_dir / name
        with atomic_write(path) as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(md.to_bytes(_SERIALIZER))
        return path

    def add_target_bytes(self, relpath: str, data: bytes, custom: Any = None) -> TargetFile:
        """Store ``data`` as target ``relpath`` (hash-prefixed) and describe it."""
        target = TargetFile.from_data(relpath, data, ["sha256"])
        if custom is not None:
            target.unrecognized_fields["custom"] = custom
        dest = self.target_path(target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            with atomic_write(dest) as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(data)
        return target

    def add_target_file(self, relpath: str, source: PathLike, custom: Any = None) -> TargetFile:
        """Store the file ``source`` as target ``relpath`` (hash-prefixed) and describe it."""
        target = TargetFile.from_file(relpath, str(source), ["sha256"])
        if custom is not None:
            target.unrecognized_fields["custom"] = custom
        dest = self.target_path(target)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            with atomic_write(dest) as f, open(source, "rb") as src:
                os.fchmod(f.fileno(), 0o644)
                while chunk := src.read(1 << 20):
                    f.write(chunk)
        return target


def _key_dicts(keys: KeySet, public: Mapping[str, Sequence[Key]] | None) -> dict[str, list[Key]]:
    out: dict[str, list[Key]] = {}
    for role in ROLES:
        found: dict[str, Key] = {s.public_key.keyid: s.public_key for s in keys.get(role)}
        for k in (public or {}).get(role, []):
            found.setdefault(k.keyid, k)
        out[role] = list(found.values())
    return out


def _new_root(
    role_keys: Mapping[str, Sequence[Key]],
    thresholds: Mapping[str, int],
    version: int,
    expires: datetime,
) -> Root:
    root = Root(version=version, expires=expires, consistent_snapshot=True)
    root.roles = {}
    for role in ROLES:
        keys = role_keys.get(role, [])
        if not keys:
            raise ThresholdError(f"no {role} key given: every TUF role needs at least one key")
        threshold = thresholds.get(role, 1)
        if not 1 <= threshold <= len(keys):
            raise FormatError(f"{role} threshold {threshold} must be between 1 and {len(keys)}")
        root.roles[role] = Role([], threshold)
        for k in keys:
            root.add_key(k, role)
    return root


def _sign_online(
    root: Root,
    keys: KeySet,
    now: datetime,
    expiry: Expiry,
    targets_version: int,
    snapshot_version: int,
    timestamp_version: int,
) -> tuple[Metadata[Snapshot], Metadata[Timestamp]]:
    snap = Metadata(
        Snapshot(
            version=snapshot_version,
            expires=now + expiry.snapshot,
            meta={"targets.json": MetaFile(version=targets_version)},
        )
    )
    sign_role(snap, root, "snapshot", keys.get("snapshot"))
    ts = Metadata(
        Timestamp(
            version=timestamp_version,
            expires=now + expiry.timestamp,
            snapshot_meta=MetaFile(version=snapshot_version),
        )
    )
    sign_role(ts, root, "timestamp", keys.get("timestamp"))
    return snap, ts


def _write_online(repo: TufRepository, root: Root, keys: KeySet, *args: Any) -> None:
    """Sign snapshot and timestamp (see :func:`_sign_online`), then write them, timestamp last."""
    snap, ts = _sign_online(root, keys, *args)
    repo.write_metadata(snap)
    repo.write_metadata(ts, "timestamp.json")


def init_repository(
    path: PathLike,
    keys: KeySet,
    *,
    now: datetime,
    expiry: Expiry | None = None,
    thresholds: Mapping[str, int] | None = None,
    public_keys: Mapping[str, Sequence[Key]] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Metadata[Root]:
    """Create a repository: root v1, empty targets, snapshot and timestamp.

    Args:
        path: the new repository directory (must not hold metadata yet).
        keys: signers of every role (their public keys go into the root).
        now: signing time (expiries count from it).
        expiry: lifetimes (default :class:`Expiry`).
        thresholds: role -> threshold (default 1).
        public_keys: extra public keys per role whose private half is elsewhere.
        clock: the real clock, to refuse already-expired metadata (default: system UTC).

    Raises:
        MetadataError: the directory already holds a repository.
        ThresholdError: too few keys for a role's threshold.
        ExpiredMetadata: ``now`` is so far back that the timestamp would already be expired.
    """
    exp = expiry or Expiry()
    now = to_utc(now)
    real = to_utc((clock or utc_now)())
    for role in ROLES:
        _check_not_expired(role, now + exp.of(role), real)
    repo = TufRepository(path)
    with repo.lock():
        if repo.root_versions():
            raise MetadataError(f"{repo.path} already holds a TUF repository")
        root = _new_root(_key_dicts(keys, public_keys), thresholds or {}, 1, now + exp.root)
        root_md = Metadata(root)
        sign_role(root_md, root, "root", keys.get("root"))
        targets = Metadata(Targets(version=1, expires=now + exp.targets))
        sign_role(targets, root, "targets", keys.get("targets"))
        _write_online(repo, root, keys, now, exp, 1, 1, 1)  # signs before writing below
        repo.write_metadata(targets)
        repo.write_metadata(root_md)
        repo.write_metadata(root_md, "root.json")
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
    return root_md


def publish_targets(
    repo: TufRepository,
    keys: KeySet,
    change: Callable[[Targets], Any],
    *,
    now: datetime,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] | None = None,
) -> tuple[Metadata[Targets], Any]:
    """Change the targets metadata with ``change`` and publish it (targets, snapshot, timestamp).

    Needs the targets role's keys (offline) and the online snapshot and timestamp keys.
    The caller holds :meth:`TufRepository.lock`. ``change`` gets the current
    :class:`Targets` (a copy) and may raise to abort; its return value is passed back.

    Raises:
        ThresholdError: too few targets (or snapshot/timestamp) keys; checked before
            ``change`` runs and again before anything is written.
        ExpiredMetadata: the new metadata would already be expired (back-dated ``now``).
    """
    exp = expiry or Expiry()
    now = to_utc(now)
    real = to_utc((clock or utc_now)())
    for role in ("targets", "snapshot", "timestamp"):
        _check_not_expired(role, now + exp.of(role), real)
    root = repo.root().signed
    for role in ("targets", "snapshot", "timestamp"):
        trusted = set(root.roles[role].keyids)
        have = sum(1 for s in keys.get(role) if s.public_key.keyid in trusted)
        if have < root.roles[role].threshold:
            raise ThresholdError(
                f"publishing needs {root.roles[role].threshold} {role} key(s) the root trusts; "
                f"{have} given"
                + (" (the targets keys are the offline ones)" if role == "targets" else "")
            )
    targets = repo.targets()
    ts = repo.timestamp().signed
    snap = repo.snapshot().signed
    result = change(targets.signed)
    targets.signed.version += 1
    targets.signed.expires = now + exp.targets
    sign_role(targets, root, "targets", keys.get("targets"))
    repo.write_metadata(targets)
    _write_online(
        repo, root, keys, now, exp, targets.signed.version, snap.version + 1, ts.version + 1
    )
    return targets, result


def refresh(
    path: PathLike,
    keys: KeySet,
    *,
    now: datetime,
    expiry: Expiry | None = None,
    force_snapshot: bool = False,
    clock: Callable[[], datetime] | None = None,
) -> dict[str, Any]:
    """Re-sign the timestamp (and the snapshot when it expires sooner) with online keys only.

    The snapshot is re-signed when it would expire before the new timestamp does (or
    ``force_snapshot``). Targets and root are never touched, so no offline key is needed.

    Returns:
        ``{"timestamp": version, "timestamp_expires", "snapshot": version,
        "snapshot_resigned": bool, "targets_expires"}``.

    Raises:
        ThresholdError: too few timestamp (or snapshot, when needed) keys.
    """
    exp = expiry or Expiry()
    now = to_utc(now)
    real = to_utc((clock or utc_now)())
    _check_not_expired("timestamp", now + exp.timestamp, real)
    repo = TufRepository(path)
    with repo.lock():
        root = repo.root().signed
        ts_md = repo.timestamp()
        snap_md = repo.snapshot()
        targets = repo.targets().signed
        new_ts_expires = now + exp.timestamp
        resign = force_snapshot or snap_md.signed.expires <= new_ts_expires
        if resign:
            _check_not_expired("snapshot", now + exp.snapshot, real)
            snap = snap_md.signed
            snap.version += 1
            snap.expires = now + exp.snapshot
            sign_role(snap_md, root, "snapshot", keys.get("snapshot"))
        ts = ts_md.signed
        ts.version += 1
        ts.expires = new_ts_expires
        ts.snapshot_meta = MetaFile(version=snap_md.signed.version)
        sign_role(ts_md, root, "timestamp", keys.get("timestamp"))
        if resign:
            repo.write_metadata(snap_md)
        repo.write_metadata(ts_md, "timestamp.json")
    return {
        "timestamp": ts.version,
        "timestamp_expires": format_time(ts.expires),
        "snapshot": snap_md.signed.version,
        "snapshot_resigned": resign,
        "targets_expires": format_time(targets.expires),
    }


def rotate_root(
    path: PathLike,
    old_keys: KeySet,
    new_keys: KeySet,
    *,
    now: datetime,
    expiry: Expiry | None = None,
    thresholds: Mapping[str, int] | None = None,
    public_keys: Mapping[str, Sequence[Key]] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Metadata[Root]:
    """Publish root N+1 naming ``new_keys``' public keys, signed by old and new root keys.

    When the online (timestamp/snapshot) keys change, snapshot and timestamp are re-signed
    with the new ones in the same run; when the targets keys change, targets is
    re-signed too (``new_keys`` must then hold the new targets keys). The devices'
    floors for a rotated role are dropped by TUF itself: old metadata signed by a
    revoked key no longer verifies.

    Raises:
        ThresholdError: fewer than the threshold of old or of new root keys.
    """
    exp = expiry or Expiry()
    now = to_utc(now)
    real = to_utc((clock or utc_now)())
    _check_not_expired("root", now + exp.root, real)
    repo = TufRepository(path)
    with repo.lock():
        old = repo.root()
        role_keys = _key_dicts(new_keys, public_keys)
        for role in ROLES:  # roles not given keep their keys
            if not role_keys[role]:
                role_keys[role] = [old.signed.get_key(k) for k in old.signed.roles[role].keyids]
        given = thresholds or {}
        thr = {
            r: given.get(r, min(old.signed.roles[r].threshold, len(role_keys[r]))) for r in ROLES
        }
        new_root = _new_root(role_keys, thr, old.signed.version + 1, now + exp.root)
        md = Metadata(new_root)
        sign_role(md, new_root, "root", new_keys.get("root"))
        new_sigs = dict(md.signatures)
        sign_role(md, old.signed, "root", old_keys.get("root"))
        md.signatures.update(new_sigs)
        changed = {
            r for r in ROLES if set(new_root.roles[r].keyids) != set(old.signed.roles[r].keyids)
        }
        targets = repo.targets()
        if "targets" in changed:
            targets.signed.version += 1
            targets.signed.expires = now + exp.targets
            sign_role(targets, new_root, "targets", new_keys.get("targets"))
        online = KeySet({r: new_keys.get(r) or old_keys.get(r) for r in ONLINE_ROLES})
        ts_v, snap_v = repo.timestamp().signed.version, repo.snapshot().signed.version
        # everything is signed (and each threshold checked) before anything is written
        snap, ts = _sign_online(
            new_root, online, now, exp, targets.signed.version, snap_v + 1, ts_v + 1
        )
        repo.write_metadata(md)
        repo.write_metadata(md, "root.json")
        if "targets" in changed:
            repo.write_metadata(targets)
        repo.write_metadata(snap)
        repo.write_metadata(ts, "timestamp.json")
    return md
