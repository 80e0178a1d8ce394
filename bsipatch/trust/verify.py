"""Every trust decision about signed metadata, on bytes, with ``now`` passed in.

:class:`Verifier` holds one trusted root and answers: is this root rotation
genuine, is this catalog genuine and current, is this manifest the one the
catalog lists and does it apply to this device, does this patch have the size
and digest the manifest declares. It refuses with one typed error per outcome
(:mod:`bsipatch.errors`): ``FormatError``, ``SignatureError``/``ThresholdError``,
``ExpiredMetadata``, ``RollbackAttack``, ``WrongTarget``, ``TargetMismatch``,
``WithdrawnRelease``.

It does no I/O, reads no clock and keeps no state besides the trusted root: the
caller fetches bytes (bounded by the ``MAX_*`` sizes here and the sizes the
metadata declares), passes the time, and stores the rollback floors
(``min_version``, ``min_sequence``) it has seen. Signing is :mod:`bsipatch.trust.keys`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bsipatch.errors import (
    ExpiredMetadata,
    FormatError,
    MetadataError,
    RollbackAttack,
    SignatureError,
    TargetMismatch,
    ThresholdError,
    WithdrawnRelease,
    WrongTarget,
)
from bsipatch.trust import canonical, keys
from bsipatch.trust.catalog import Catalog, CatalogEntry
from bsipatch.trust.keys import PublicKey
from bsipatch.trust.manifest import (
    SPEC_VERSION,
    ComponentRelease,
    ReleaseManifest,
    SealRef,
    check_fields,
    check_hex,
    format_time,
    get_int,
    get_list,
    get_str,
    parse_time,
)

__all__ = [
    "MAX_CATALOG_SIZE",
    "MAX_MANIFEST_SIZE",
    "MAX_ROOT_SIZE",
    "ROLES",
    "Envelope",
    "Role",
    "Root",
    "Verifier",
    "check_image",
    "check_patch",
    "check_signatures",
    "parse_envelope",
]

#: The roles a root names, each with its keys and threshold.
ROLES = ("root", "release", "catalog")
#: Largest root file accepted (fetchers should stop reading here).
MAX_ROOT_SIZE = 512 * 1024
#: Largest catalog file accepted.
MAX_CATALOG_SIZE = 16 * 1024 * 1024
#: Largest manifest file accepted (the catalog also bounds each one exactly).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
#: Longest signature accepted, in bytes (DER ECDSA P-256 is at most 72).
MAX_SIG_BYTES = 512
#: Most signatures accepted on one document (bounds the verification work).
MAX_SIGNATURES = 64

AnyKey = keys.PrivateKey | PublicKey


@dataclass(frozen=True)
class Role:
    """A role's trusted key ids and how many of them must sign.

    Attributes:
        keyids: distinct key ids, each present in the root's ``keys``.
        threshold: signatures needed, ``1 <= threshold <= len(keyids)``.
    """

    keyids: tuple[str, ...]
    threshold: int

    def to_dict(self) -> dict[str, Any]:
        """``{"keyids": [...], "threshold": n}``."""
        return {"keyids": list(self.keyids), "threshold": self.threshold}


@dataclass(frozen=True)
class Root:
    """The trust root: keys, the roles with thresholds, a version and an expiry.

    Attributes:
        version: 1 for the first root, +1 with every rotation.
        expires: ISO-8601 UTC expiry.
        keys: key id -> public key dict ``{"keytype","scheme","public"}``.
        roles: ``"root"``, ``"release"``, ``"catalog"`` -> :class:`Role`.
    """

    version: int
    expires: str
    keys: Mapping[str, Mapping[str, str]]
    roles: Mapping[str, Role]
    _public: Mapping[str, PublicKey] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise FormatError(f"root version must be an integer >= 1, found {self.version!r}")
        parse_time(self.expires, "root expires")
        if not isinstance(self.keys, Mapping):
            raise FormatError("root keys must be an object")
        public: dict[str, PublicKey] = {}
        for kid, pub in self.keys.items():
            pk = keys.load_public(pub)
            if pk.keyid != kid:
                raise FormatError(f"root lists key {kid[:16]}... under the wrong key id")
            public[kid] = pk
        if not isinstance(self.roles, Mapping) or set(self.roles) != set(ROLES):
            raise FormatError(f"root roles must be exactly {', '.join(ROLES)}")
        for name, role in self.roles.items():
            if len(set(role.keyids)) != len(role.keyids):
                raise FormatError(f"role {name} lists a key twice")
            for kid in role.keyids:
                if kid not in public:
                    raise FormatError(f"role {name} names key {kid[:16]}... that the root lacks")
            if (
                isinstance(role.threshold, bool)
                or not isinstance(role.threshold, int)
                or not 1 <= role.threshold <= len(role.keyids)
            ):
                raise FormatError(
                    f"role {name}: threshold {role.threshold!r} is not between 1 and "
                    f"its {len(role.keyids)} key(s)"
                )
        object.__setattr__(self, "keys", {k: dict(v) for k, v in self.keys.items()})
        object.__setattr__(self, "roles", dict(self.roles))
        object.__setattr__(self, "_public", public)

    @property
    def expires_at(self) -> datetime:
        """``expires`` as an aware datetime."""
        return parse_time(self.expires)

    def public_key(self, keyid: str) -> PublicKey:
        """The public key with id ``keyid`` (``KeyError`` if absent)."""
        return self._public[keyid]

    @classmethod
    def build(
        cls,
        role_keys: Mapping[str, Sequence[AnyKey]],
        *,
        version: int,
        expires: datetime | str,
        thresholds: Mapping[str, int] | None = None,
    ) -> Root:
        """Make a root from the keys of each role.

        Args:
            role_keys: role -> keys (private or public) trusted for it.
            version: the root version.
            expires: expiry.
            thresholds: role -> threshold (default 1 for each role).

        Raises:
            FormatError: a role without keys, a bad threshold.
        """
        thresholds = dict(thresholds or {})
        all_keys: dict[str, dict[str, str]] = {}
        roles: dict[str, Role] = {}
        for name in ROLES:
            ks = list(role_keys.get(name, ()))
            ids: list[str] = []
            for k in ks:
                pub = keys.public_key_dict(k)
                all_keys[k.keyid] = pub
                if k.keyid not in ids:
                    ids.append(k.keyid)
            roles[name] = Role(keyids=tuple(sorted(ids)), threshold=thresholds.get(name, 1))
        extra = set(thresholds) - set(ROLES)
        if extra or set(role_keys) - set(ROLES):
            raise FormatError(
                f"unknown role(s) {', '.join(sorted(extra | (set(role_keys) - set(ROLES))))}"
            )
        exp = expires if isinstance(expires, str) else format_time(expires)
        return cls(version=version, expires=exp, keys=all_keys, roles=roles)

    def to_dict(self) -> dict[str, Any]:
        """The ``signed`` dict, with ``"_type": "root"``."""
        return {
            "_type": "root",
            "spec_version": SPEC_VERSION,
            "version": self.version,
            "expires": self.expires,
            "keys": {k: dict(v) for k, v in self.keys.items()},
            "roles": {name: role.to_dict() for name, role in self.roles.items()},
        }

    @classmethod
    def from_dict(cls, d: Any) -> Root:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            FormatError: wrong ``_type``/``spec_version``, missing, unknown or mistyped
                fields, a key under the wrong id, a role naming an absent key, a bad
                threshold.
        """
        what = "root"
        check_fields(d, ("_type", "spec_version", "version", "expires", "keys", "roles"), what)
        if d["_type"] != "root":
            raise FormatError(f"expected _type 'root', found {d['_type']!r}")
        if d["spec_version"] != SPEC_VERSION or isinstance(d["spec_version"], bool):
            raise FormatError(f"unsupported spec_version {d['spec_version']!r}")
        if not isinstance(d["keys"], Mapping) or not isinstance(d["roles"], Mapping):
            raise FormatError("root keys and roles must be objects")
        roles: dict[str, Role] = {}
        for name, r in d["roles"].items():
            rw = f"role {name}"
            check_fields(r, ("keyids", "threshold"), rw)
            kids = get_list(r, "keyids", rw)
            for kid in kids:
                if not isinstance(kid, str):
                    raise FormatError(f"{rw}: key ids must be strings")
                check_hex(kid, f"{rw} key id", length=32)
            roles[name] = Role(keyids=tuple(kids), threshold=get_int(r, "threshold", rw, 1))
        return cls(
            version=get_int(d, "version", what, minimum=1),
            expires=get_str(d, "expires", what),
            keys=d["keys"],
            roles=roles,
        )


@dataclass(frozen=True)
class Envelope:
    """A parsed signed envelope ``{"signed": ..., "signatures": [...]}``.

    Attributes:
        signed: the signed dict.
        signed_bytes: its canonical encoding (the bytes every signature covers).
        signatures: ``(keyid, signature bytes)`` pairs in file order.
    """

    signed: dict[str, Any]
    signed_bytes: bytes
    signatures: tuple[tuple[str, bytes], ...]

    @property
    def type(self) -> Any:
        """The ``_type`` field of the signed dict (``None`` if absent)."""
        return self.signed.get("_type")


def parse_envelope(data: bytes, *, max_size: int, what: str) -> Envelope:
    """Parse a canonical-JSON envelope without trusting anything in it yet.

    Args:
        data: the file's bytes.
        max_size: refuse larger inputs (endless-data attack).
        what: name for messages (``"catalog"``...).

    Raises:
        FormatError: too large, not canonical JSON, not an envelope, malformed
            signature entries.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise FormatError(f"{what} is {len(data)} bytes, more than the {max_size}-byte limit")
    doc = canonical.decode(data, canonical=True)
    check_fields(doc, ("signed", "signatures"), f"{what} envelope")
    signed = doc["signed"]
    if not isinstance(signed, dict):
        raise FormatError(f"{what}: 'signed' must be an object")
    sigs = doc["signatures"]
    if not isinstance(sigs, list):
        raise FormatError(f"{what}: 'signatures' must be a list")
    if len(sigs) > MAX_SIGNATURES:
        raise FormatError(f"{what} carries {len(sigs)} signatures; at most {MAX_SIGNATURES}")
    parsed: list[tuple[str, bytes]] = []
    for s in sigs:
        check_fields(s, ("keyid", "sig"), f"{what} signature")
        kid = get_str(s, "keyid", "signature")
        sig = get_str(s, "sig", "signature")
        check_hex(kid, "signature keyid", length=32)
        check_hex(sig, "signature", max_bytes=MAX_SIG_BYTES)
        parsed.append((kid, bytes.fromhex(sig)))
    return Envelope(signed=signed, signed_bytes=canonical.encode(signed), signatures=tuple(parsed))


def check_signatures(root: Root, role: str, env: Envelope, what: str) -> frozenset[str]:
    """Demand a threshold of ``role``'s keys in ``root`` signed ``env.signed_bytes``.

    Each key counts once however often it signs; signatures by keys the role does
    not trust (unknown, revoked, another role's) count for nothing.

    Returns:
        The key ids whose signatures verified.

    Raises:
        SignatureError: no signatures, or none valid from a trusted key (the message
            says whether they were from unknown keys or over different bytes).
        ThresholdError: some valid, but fewer than the role's threshold.
    """
    r = root.roles[role]
    trusted = set(r.keyids)
    valid: set[str] = set()
    unknown = 0
    bad = 0
    for kid, sig in env.signatures:
        if kid not in trusted:
            unknown += 1
            continue
        if kid in valid:
            continue
        if root.public_key(kid).verify(sig, env.signed_bytes):
            valid.add(kid)
        else:
            bad += 1
    if len(valid) >= r.threshold:
        return frozenset(valid)
    if not env.signatures:
        raise SignatureError(f"{what} is unsigned; role {role} needs {r.threshold} signature(s)")
    if not valid:
        reasons = []
        if bad:
            reasons.append(f"{bad} signature(s) by trusted keys do not verify over these bytes")
        if unknown:
            reasons.append(f"{unknown} signature(s) by keys not trusted for role {role}")
        raise SignatureError(f"{what} has no valid signature: {'; '.join(reasons)}")
    raise ThresholdError(
        f"{what} has {len(valid)} valid signature(s) from role {role}'s keys; "
        f"its threshold is {r.threshold}"
    )


def _check_type(env: Envelope, expected: str, what: str) -> None:
    if env.type != expected:
        raise FormatError(f"{what}: expected _type {expected!r}, found {env.type!r}")


def _check_fresh(expires: str, now: datetime, what: str) -> None:
    when = parse_time(expires, f"{what} expires")
    if now >= when:
        raise ExpiredMetadata(f"{what} expired at {expires} (now {format_time(now)})")


def _check_now(now: datetime) -> datetime:
    if not isinstance(now, datetime):
        raise TypeError("now must be a datetime")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now


def _digest_matches(expected_hex: str, actual: bytes) -> bool:
    return hmac.compare_digest(bytes.fromhex(expected_hex), actual)


def check_patch(component: ComponentRelease, size: int, sha256: bytes) -> None:
    """Demand a downloaded patch has the size and SHA-256 the manifest declares.

    Args:
        component: the manifest's component.
        size: bytes received.
        sha256: their SHA-256 (32 bytes).

    Raises:
        TargetMismatch: size or digest differs (endless data, substitution).
    """
    want = component.patch
    if size != want.size:
        raise TargetMismatch(
            f"patch for {component.name} is {size} bytes; the manifest says {want.size}"
        )
    if not _digest_matches(want.sha256, bytes(sha256)):
        raise TargetMismatch(
            f"patch for {component.name} has SHA-256 {bytes(sha256).hex()}; "
            f"the manifest says {want.sha256}"
        )


def check_image(ref: SealRef, size: int, root_hash: bytes, what: str = "image") -> None:
    """Demand an image's size and seal root hash equal the manifest's seal reference.

    Raises:
        TargetMismatch: size or root hash differs.
    """
    if size != ref.size:
        raise TargetMismatch(f"{what} is {size} bytes; the manifest says {ref.size}")
    if not _digest_matches(ref.root_hash, bytes(root_hash)):
        raise TargetMismatch(
            f"{what} has root hash {bytes(root_hash).hex()}; the manifest says {ref.root_hash}"
        )


class Verifier:
    """The one place that decides whether metadata is genuine, current and applicable.

    Pure: it takes bytes and a time, never opens files, reads the clock or
    touches the network.

    Args:
        trusted_root_bytes: the root the device trusts (shipped with it, or the
            last one it accepted). It must be signed by a threshold of its own
            root keys.
        now: the current time (timezone-aware).
        allow_expired_root: accept an expired trusted root so that
            :meth:`update_root` can move on to a newer one; catalogs and manifests
            are still refused while the current root is expired.

    Raises:
        FormatError: the root is malformed.
        SignatureError: the root is not signed at threshold by its own root keys.
        ExpiredMetadata: the root expired (unless ``allow_expired_root``).

    Example:
        >>> v = Verifier(root_bytes, now=datetime.now(timezone.utc))  # doctest: +SKIP
        >>> catalog = v.verify_catalog(catalog_bytes, min_version=seen)  # doctest: +SKIP
        >>> entry = catalog.latest("23B85")  # doctest: +SKIP
        >>> m = v.verify_manifest(manifest_bytes, entry, device_build="23B85")  # doctest: +SKIP
    """

    check_patch = staticmethod(check_patch)
    check_image = staticmethod(check_image)

    def __init__(
        self, trusted_root_bytes: bytes, now: datetime, *, allow_expired_root: bool = False
    ) -> None:
        self.now = _check_now(now)
        env = parse_envelope(trusted_root_bytes, max_size=MAX_ROOT_SIZE, what="trusted root")
        _check_type(env, "root", "trusted root")
        root = Root.from_dict(env.signed)
        check_signatures(root, "root", env, "trusted root")
        if not allow_expired_root:
            _check_fresh(root.expires, self.now, f"trusted root version {root.version}")
        self._root = root
        self._initial = root

    @property
    def root(self) -> Root:
        """The currently trusted root."""
        return self._root

    @property
    def rotated_roles(self) -> frozenset[str]:
        """Roles whose keys or threshold changed through :meth:`update_root` calls.

        After the catalog role's keys rotate (e.g. after a compromise), a caller
        should reset its catalog ``min_version`` floor, and after the release
        role's keys rotate its ``min_sequence`` floor: a compromised key could have
        signed a huge version number (fast-forward attack).
        """
        changed = set()
        for name in ROLES:
            if self._initial.roles[name] != self._root.roles[name]:
                changed.add(name)
        return frozenset(changed)

    def update_root(self, new_root_bytes: bytes) -> Root:
        """Rotate to the next root (version = current + 1).

        The new root must be signed by a threshold of the current root's root
        keys AND by a threshold of its own root keys. Its expiry is not checked
        here (an intermediate root in a chain may have expired); catalogs and
        manifests are refused while the final root is expired.

        Returns:
            The new trusted root.

        Raises:
            FormatError: malformed, or ``_type`` is not ``root``.
            SignatureError / ThresholdError: not signed at both thresholds.
            RollbackAttack: its version is not newer than the current one.
            MetadataError: its version skips one (fetch the intermediate roots first).
        """
        old = self._root
        env = parse_envelope(new_root_bytes, max_size=MAX_ROOT_SIZE, what="new root")
        check_signatures(old, "root", env, f"new root (keys of root version {old.version})")
        _check_type(env, "root", "new root")
        new = Root.from_dict(env.signed)
        check_signatures(new, "root", env, f"new root version {new.version} (its own keys)")
        if new.version <= old.version:
            raise RollbackAttack(
                f"new root has version {new.version}; version {old.version} is already trusted"
            )
        if new.version != old.version + 1:
            raise MetadataError(
                f"new root has version {new.version}; expected {old.version + 1} "
                "(apply each intermediate root in order)"
            )
        self._root = new
        return new

    def _check_root_fresh(self) -> None:
        _check_fresh(self._root.expires, self.now, f"trusted root version {self._root.version}")

    def _open_signed(self, data: bytes, role: str, max_size: int, what: str) -> Any:
        """The ``signed`` part of an envelope that a threshold of ``role`` signed, whose
        ``_type`` is ``role``, under a trusted root that has not expired."""
        self._check_root_fresh()
        env = parse_envelope(data, max_size=max_size, what=what)
        check_signatures(self._root, role, env, what)
        _check_type(env, role, what)
        return env.signed

    def verify_catalog(self, catalog_bytes: bytes, *, min_version: int = 0) -> Catalog:
        """Verify a catalog: signed by the catalog role, current, not rolled back.

        Args:
            catalog_bytes: the bytes of ``catalog.json``.
            min_version: the highest catalog version already trusted; lower is refused.

        Returns:
            The catalog.

        Raises:
            ExpiredMetadata: the trusted root or the catalog expired.
            FormatError / SignatureError / ThresholdError: not genuine.
            RollbackAttack: ``version < min_version``.
        """
        signed = self._open_signed(catalog_bytes, "catalog", MAX_CATALOG_SIZE, "catalog")
        catalog = Catalog.from_dict(signed)
        _check_fresh(catalog.expires, self.now, f"catalog version {catalog.version}")
        if catalog.version < min_version:
            raise RollbackAttack(
                f"catalog version {catalog.version} is older than version {min_version} "
                "already trusted"
            )
        return catalog

    def verify_manifest(
        self,
        manifest_bytes: bytes,
        entry: CatalogEntry,
        *,
        device_build: str,
        min_sequence: int = 0,
        device_components: Iterable[str] | None = None,
    ) -> ReleaseManifest:
        """Verify a release manifest against its catalog entry and this device.

        Args:
            manifest_bytes: the bytes of the manifest file.
            entry: the entry of a catalog verified by this verifier.
            device_build: the device's base OS build.
            min_sequence: the highest release sequence already installed; lower is
                refused.
            device_components: the components the device has; a release that
                patches any other is refused (``None``: not checked).

        Returns:
            The manifest.

        Raises:
            TargetMismatch: size or SHA-256 differs from the catalog entry.
            FormatError / SignatureError / ThresholdError: not genuine.
            WrongTarget: the manifest is not the release the entry names, is for
                another OS build, or patches a component the device lacks.
            ExpiredMetadata: the trusted root or the manifest expired.
            RollbackAttack: ``sequence < min_sequence``.
            WithdrawnRelease: the vendor withdrew the release.
        """
        self._check_root_fresh()
        if len(manifest_bytes) != entry.manifest_size:
            raise TargetMismatch(
                f"manifest of {entry.release_id} is {len(manifest_bytes)} bytes; "
                f"the catalog says {entry.manifest_size}"
            )
        actual = hashlib.sha256(manifest_bytes).digest()
        if not _digest_matches(entry.manifest_sha256, actual):
            raise TargetMismatch(
                f"manifest of {entry.release_id} has SHA-256 {actual.hex()}; "
                f"the catalog says {entry.manifest_sha256}"
            )
        m = self.verify_signed_manifest(
            manifest_bytes,
            device_build=device_build,
            min_sequence=min_sequence,
            device_components=device_components,
        )
        if m.release_id != entry.release_id:
            raise WrongTarget(
                f"manifest is for release {m.release_id}; the catalog entry is {entry.release_id}"
            )
        for name, ours, theirs in (
            ("os_version", m.os_version, entry.os_version),
            ("builds", m.builds, entry.builds),
            ("sequence", m.sequence, entry.sequence),
            ("published", m.published, entry.published),
        ):
            if ours != theirs:
                raise WrongTarget(
                    f"manifest of {m.release_id} has {name} {ours!r}; the catalog says {theirs!r}"
                )
        if entry.withdrawn:
            raise WithdrawnRelease(f"release {m.release_id} was withdrawn by the vendor")
        return m

    def verify_signed_manifest(
        self,
        manifest_bytes: bytes,
        *,
        device_build: str,
        min_sequence: int = 0,
        device_components: Iterable[str] | None = None,
    ) -> ReleaseManifest:
        """Verify a manifest on its own: signatures, type, expiry, build, components, sequence.

        :meth:`verify_manifest` does this after matching the catalog entry; on its
        own (``bsipatch install --root``, a manifest file handed over by hand) it
        cannot see withdrawal or a newer release, which only the catalog knows.

        Raises:
            FormatError / SignatureError / ThresholdError: not genuine.
            ExpiredMetadata: the trusted root or the manifest expired.
            WrongTarget: for another OS build, or patches a component the device lacks.
            RollbackAttack: ``sequence < min_sequence``.
        """
        signed = self._open_signed(manifest_bytes, "release", MAX_MANIFEST_SIZE, "manifest")
        m = ReleaseManifest.from_dict(signed)
        _check_fresh(m.expires, self.now, f"manifest of {m.release_id}")
        if device_build not in m.builds:
            raise WrongTarget(
                f"release {m.release_id} applies to build(s) {', '.join(m.builds)}, "
                f"not to this device's build {device_build}"
            )
        if device_components is not None:
            have = set(device_components)
            foreign = [c.name for c in m.components if c.name not in have]
            if foreign:
                raise WrongTarget(
                    f"release {m.release_id} patches component(s) {', '.join(foreign)} "
                    "that this device does not have"
                )
        if m.sequence < min_sequence:
            raise RollbackAttack(
                f"release {m.release_id} has sequence {m.sequence}; sequence {min_sequence} "
                "is already installed"
            )
        return m
