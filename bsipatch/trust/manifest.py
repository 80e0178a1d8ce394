"""Release manifests: what one security release changes, as strict dataclasses.

A manifest names a release (``26.1 (a)``), the OS version and base builds it
applies to, when it was published, its monotonic sequence number and expiry, and
for each component: the activation (``relaunch``/``reboot``), the seal, size and
SHA-256 of the image it patches and of the image it produces, the patch file's path,
size and SHA-256, and the CVEs it fixes. ``from_dict``/``to_dict`` are strict: unknown,
missing or mistyped fields raise :class:`~bsipatch.errors.FormatError`.

Also the small shared helpers for field checks (``format_time``/``parse_time`` are
re-exported from :mod:`bsipatch._time`, where they live). No
signatures and no I/O here (TUF verifies; see :mod:`bsipatch.trust.client`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bsipatch._time import format_time, parse_time
from bsipatch.errors import FormatError, WrongTarget

if TYPE_CHECKING:
    from bsipatch.seal.tree import Seal

__all__ = [
    "ACTIVATIONS",
    "SPEC_VERSION",
    "ComponentRelease",
    "Cve",
    "PatchRef",
    "ReleaseManifest",
    "SealRef",
    "format_time",
    "parse_time",
    "release_slug",
]

#: Version of the metadata format (``spec_version`` in every signed document).
SPEC_VERSION = 1
#: Allowed ``activation`` values.
ACTIVATIONS = ("relaunch", "reboot")

_HEX = re.compile(r"^[0-9a-f]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BUILD = re.compile(r"^[A-Za-z0-9]{1,32}$")
_OS_VERSION = re.compile(r"^\d{1,4}(\.\d{1,4}){0,3}$")
_RELEASE_ID = re.compile(r"^(\d{1,4}(?:\.\d{1,4}){0,3}) \(([a-z]{1,3})\)$")
_CVE = re.compile(r"^CVE-\d{4}-\d{4,9}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_DESCRIPTION = 1000
MAX_SALT = 256


# --- helpers shared by manifest and catalog --------------------------------------------


def release_slug(release_id: str) -> str:
    """The directory name of a release: ``"26.1 (a)"`` -> ``"26.1-a"``.

    Raises:
        FormatError: ``release_id`` is not of the form ``<os version> (<letters>)``.
    """
    m = _RELEASE_ID.match(release_id) if isinstance(release_id, str) else None
    if not m:
        raise FormatError(f"release id must look like '26.1 (a)', found {release_id!r}")
    return f"{m.group(1)}-{m.group(2)}"


def check_fields(d: Any, required: Iterable[str], what: str) -> None:
    """Demand ``d`` is a dict with exactly the ``required`` keys.

    Raises:
        FormatError: not a dict, or a missing or unknown key.
    """
    if not isinstance(d, Mapping):
        raise FormatError(f"{what} must be a JSON object, found {type(d).__name__}")
    req = set(required)
    missing = sorted(req - set(d))
    unknown = sorted(set(d) - req)
    if missing:
        raise FormatError(f"{what} lacks field(s) {', '.join(missing)}")
    if unknown:
        raise FormatError(f"{what} has unknown field(s) {', '.join(unknown)}")


def get_str(
    d: Mapping[str, Any], key: str, what: str, pattern: re.Pattern[str] | None = None
) -> str:
    """``d[key]`` as a ``str`` (matching ``pattern`` if given), else FormatError."""
    value = d[key]
    if not isinstance(value, str):
        raise FormatError(f"{what}.{key} must be a string, found {type(value).__name__}")
    if pattern is not None and not pattern.match(value):
        raise FormatError(f"{what}.{key} has an invalid value {value!r}")
    return value


def get_int(d: Mapping[str, Any], key: str, what: str, minimum: int = 0) -> int:
    """``d[key]`` as an ``int`` (not ``bool``) ``>= minimum``, else FormatError."""
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{what}.{key} must be an integer, found {type(value).__name__}")
    if value < minimum:
        raise FormatError(f"{what}.{key} must be >= {minimum}, found {value}")
    return value


def get_list(d: Mapping[str, Any], key: str, what: str) -> list[Any]:
    """``d[key]`` as a ``list``, else FormatError."""
    value = d[key]
    if not isinstance(value, list):
        raise FormatError(f"{what}.{key} must be a list, found {type(value).__name__}")
    return value


def check_hex(
    value: str, what: str, *, length: int | None = None, max_bytes: int | None = None
) -> None:
    """Demand lowercase even-length hex (of ``length`` bytes / at most ``max_bytes``)."""
    if not _HEX.match(value) or len(value) % 2:
        raise FormatError(f"{what} must be lowercase hex, found {value[:80]!r}")
    if length is not None and len(value) != 2 * length:
        raise FormatError(f"{what} must be {length} bytes, found {len(value) // 2}")
    if max_bytes is not None and len(value) > 2 * max_bytes:
        raise FormatError(f"{what} must be at most {max_bytes} bytes, found {len(value) // 2}")


def check_build(build: Any, what: str) -> str:
    """Demand an OS build string such as ``23B85``."""
    if not isinstance(build, str) or not _BUILD.match(build):
        raise FormatError(f"{what} must be an OS build like '23B85', found {build!r}")
    return build


def check_builds(values: Any, what: str) -> tuple[str, ...]:
    """A non-empty list of distinct builds, as a tuple."""
    if not isinstance(values, (list, tuple)) or not values:
        raise FormatError(f"{what} must be a non-empty list of OS builds")
    out = tuple(check_build(b, what) for b in values)
    if len(set(out)) != len(out):
        raise FormatError(f"{what} lists a build twice")
    return out


def check_release_path(path: Any, what: str) -> str:
    """Demand a safe relative path: ``/``-separated parts of ``[A-Za-z0-9._-]``, no ``..``."""
    if not isinstance(path, str) or not path or len(path) > 1024:
        raise FormatError(f"{what} must be a non-empty relative path")
    parts = path.split("/")
    if any(not _PATH_PART.match(p) for p in parts):
        raise FormatError(f"{what} {path!r} is not a safe relative path")
    return path


# --- the dataclasses ---------------------------------------------------------------------


@dataclass(frozen=True)
class SealRef:
    """A sealed image as the metadata records it: its seal, size and whole-image SHA-256.

    The seal is what the device verifies the image with; ``sha256`` and ``size`` are
    what a patch header declares for the image it starts from or produces, so the
    header is checked against them before it is used (:func:`bsipatch.delta.apply.apply`'s
    ``expected_*`` keywords).

    Attributes:
        root_hash: hex of the 32-byte dm-verity root hash.
        salt: hex of the salt (0..256 bytes).
        size: exact image size in bytes.
        sha256: hex SHA-256 of the whole image.
    """

    root_hash: str
    salt: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        check_hex(self.root_hash, "seal root_hash", length=32)
        check_hex(self.salt, "seal salt", max_bytes=MAX_SALT)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise FormatError(f"seal size must be a non-negative integer, found {self.size!r}")
        if not isinstance(self.sha256, str):
            raise FormatError(f"image sha256 must be a hex string, found {self.sha256!r}")
        check_hex(self.sha256, "image sha256", length=32)

    @classmethod
    def from_seal(cls, seal: Seal, sha256: bytes | str) -> SealRef:
        """Record a :class:`bsipatch.seal.tree.Seal` (only 4096/4096/sha256 seals fit) and
        the image's SHA-256 (e.g. the one :func:`bsipatch.delta.diff.diff` computed for
        the patch header)."""
        if (seal.data_block_size, seal.hash_block_size, seal.hash_algorithm) != (
            4096,
            4096,
            "sha256",
        ):
            raise ValueError("manifests record only 4096-byte-block SHA-256 seals")
        digest = sha256.hex() if isinstance(sha256, (bytes, bytearray)) else sha256
        return cls(
            root_hash=seal.root_hash.hex(),
            salt=seal.salt.hex(),
            size=seal.data_size,
            sha256=digest,
        )

    def to_seal(self) -> Seal:
        """The :class:`bsipatch.seal.tree.Seal` this reference describes."""
        from bsipatch.seal.tree import Seal  # lazy: the seal module loads the native core

        return Seal(
            root_hash=bytes.fromhex(self.root_hash),
            salt=bytes.fromhex(self.salt),
            data_size=self.size,
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"root_hash", "salt", "size", "sha256"}``."""
        return {
            "root_hash": self.root_hash,
            "salt": self.salt,
            "size": self.size,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, d: Any, what: str = "seal") -> SealRef:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            FormatError: missing (metadata without the image's ``sha256`` included),
                unknown or mistyped fields.
        """
        check_fields(d, ("root_hash", "salt", "size", "sha256"), what)
        return cls(
            root_hash=get_str(d, "root_hash", what),
            salt=get_str(d, "salt", what),
            size=get_int(d, "size", what),
            sha256=get_str(d, "sha256", what),
        )


@dataclass(frozen=True)
class PatchRef:
    """The patch file of one component.

    Attributes:
        path: relative to the repository root, e.g. ``releases/26.1-a/webkit.bsipatch``.
        sha256: hex SHA-256 of the whole patch file.
        size: exact patch file size in bytes.
    """

    path: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        check_release_path(self.path, "patch path")
        check_hex(self.sha256, "patch sha256", length=32)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise FormatError(f"patch size must be a positive integer, found {self.size!r}")

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "sha256", "size"}``."""
        return {"path": self.path, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, d: Any, what: str = "patch") -> PatchRef:
        """Strict inverse of :meth:`to_dict`."""
        check_fields(d, ("path", "sha256", "size"), what)
        return cls(
            path=get_str(d, "path", what),
            sha256=get_str(d, "sha256", what),
            size=get_int(d, "size", what),
        )


@dataclass(frozen=True)
class Cve:
    """A vulnerability the release fixes.

    Attributes:
        id: ``CVE-YYYY-NNNN...``.
        description: short text (at most 1000 characters).
    """

    id: str
    description: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _CVE.match(self.id):
            raise FormatError(f"CVE id must look like CVE-2026-12345, found {self.id!r}")
        if not isinstance(self.description, str) or len(self.description) > MAX_DESCRIPTION:
            raise FormatError(f"{self.id}: description must be a string of <= 1000 characters")

    def to_dict(self) -> dict[str, Any]:
        """``{"id", "description"}``."""
        return {"id": self.id, "description": self.description}

    @classmethod
    def from_dict(cls, d: Any, what: str = "cve") -> Cve:
        """Strict inverse of :meth:`to_dict`."""
        check_fields(d, ("id", "description"), what)
        return cls(id=get_str(d, "id", what), description=get_str(d, "description", what))


@dataclass(frozen=True)
class ComponentRelease:
    """One patched component of a release.

    Attributes:
        name: component name (``[A-Za-z0-9][A-Za-z0-9._-]*``, at most 64 characters).
        activation: ``"relaunch"`` (app-like, on next launch) or ``"reboot"``.
        base: the image the patch applies to (seal, size, SHA-256).
        target: the image the patch produces (seal, size, SHA-256).
        patch: the patch file.
        cves: the CVEs this component's fix addresses.
    """

    name: str
    activation: str
    base: SealRef
    target: SealRef
    patch: PatchRef
    cves: tuple[Cve, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise FormatError(f"component name {self.name!r} is not a valid name")
        if self.activation not in ACTIVATIONS:
            raise FormatError(
                f"component {self.name}: activation must be relaunch or reboot, "
                f"found {self.activation!r}"
            )
        object.__setattr__(self, "cves", tuple(self.cves))
        ids = [c.id for c in self.cves]
        if len(set(ids)) != len(ids):
            raise FormatError(f"component {self.name}: a CVE is listed twice")

    def to_dict(self) -> dict[str, Any]:
        """The component as a JSON-ready dict."""
        return {
            "name": self.name,
            "activation": self.activation,
            "base": self.base.to_dict(),
            "target": self.target.to_dict(),
            "patch": self.patch.to_dict(),
            "cves": [c.to_dict() for c in self.cves],
        }

    @classmethod
    def from_dict(cls, d: Any, what: str = "component") -> ComponentRelease:
        """Strict inverse of :meth:`to_dict`."""
        check_fields(d, ("name", "activation", "base", "target", "patch", "cves"), what)
        name = get_str(d, "name", what)
        what = f"component {name}"
        return cls(
            name=name,
            activation=get_str(d, "activation", what),
            base=SealRef.from_dict(d["base"], f"{what}.base"),
            target=SealRef.from_dict(d["target"], f"{what}.target"),
            patch=PatchRef.from_dict(d["patch"], f"{what}.patch"),
            cves=tuple(Cve.from_dict(c, f"{what}.cves[]") for c in get_list(d, "cves", what)),
        )


@dataclass(frozen=True)
class ReleaseManifest:
    """A signed release (the ``signed`` part of ``releases/<slug>/manifest.json``).

    Attributes:
        release_id: ``"<os_version> (<letters>)"``, e.g. ``"26.1 (a)"``.
        os_version: ``"26.1"``.
        builds: base OS builds this release applies to, e.g. ``("23B85",)``.
        supplemental_build: the build a device reports once it is installed (``"23B85a"``).
        published: ISO-8601 UTC publication time.
        sequence: monotonic release number in this repository (>= 1); devices refuse
            to go below the highest one they installed.
        expires: ISO-8601 UTC expiry; expired manifests are refused.
        components: the patched components (at least one, distinct names).
    """

    release_id: str
    os_version: str
    builds: tuple[str, ...]
    supplemental_build: str
    published: str
    sequence: int
    expires: str
    components: tuple[ComponentRelease, ...]

    _FIELDS = (
        "_type",
        "spec_version",
        "release_id",
        "os_version",
        "builds",
        "supplemental_build",
        "published",
        "sequence",
        "expires",
        "components",
    )

    def __post_init__(self) -> None:
        slug = release_slug(self.release_id)
        if not isinstance(self.os_version, str) or not _OS_VERSION.match(self.os_version):
            raise FormatError(f"os_version must look like '26.1', found {self.os_version!r}")
        if not slug.startswith(self.os_version + "-") or slug.count("-") != 1:
            raise FormatError(
                f"release id {self.release_id!r} does not belong to OS version {self.os_version}"
            )
        object.__setattr__(self, "builds", check_builds(self.builds, "builds"))
        check_build(self.supplemental_build, "supplemental_build")
        published = parse_time(self.published, "published")
        expires = parse_time(self.expires, "expires")
        if expires <= published:
            raise FormatError("expires must be after published")
        if (
            isinstance(self.sequence, bool)
            or not isinstance(self.sequence, int)
            or self.sequence < 1
        ):
            raise FormatError(f"sequence must be an integer >= 1, found {self.sequence!r}")
        object.__setattr__(self, "components", tuple(self.components))
        if not self.components:
            raise FormatError("a release must patch at least one component")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise FormatError("a component is listed twice")

    @property
    def extra_version(self) -> str:
        """The rapid-release suffix, e.g. ``"(a)"``."""
        return self.release_id[len(self.os_version) + 1 :]

    @property
    def slug(self) -> str:
        """Directory name of the release, e.g. ``"26.1-a"``."""
        return release_slug(self.release_id)

    @property
    def published_at(self) -> datetime:
        """``published`` as an aware datetime."""
        return parse_time(self.published)

    @property
    def expires_at(self) -> datetime:
        """``expires`` as an aware datetime."""
        return parse_time(self.expires)

    @property
    def cves(self) -> tuple[str, ...]:
        """Every CVE id fixed by any component, sorted, without duplicates."""
        return tuple(sorted({c.id for comp in self.components for c in comp.cves}))

    def component(self, name: str) -> ComponentRelease:
        """The component called ``name``.

        Raises:
            WrongTarget: this release does not patch ``name``.
        """
        for comp in self.components:
            if comp.name == name:
                return comp
        raise WrongTarget(
            f"release {self.release_id} has no component {name!r} "
            f"(it patches {', '.join(c.name for c in self.components)})"
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``signed`` dict, with ``"_type": "release"``."""
        return {
            "_type": "release",
            "spec_version": SPEC_VERSION,
            "release_id": self.release_id,
            "os_version": self.os_version,
            "builds": list(self.builds),
            "supplemental_build": self.supplemental_build,
            "published": self.published,
            "sequence": self.sequence,
            "expires": self.expires,
            "components": [c.to_dict() for c in self.components],
        }

    @classmethod
    def from_dict(cls, d: Any) -> ReleaseManifest:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            FormatError: wrong ``_type`` or ``spec_version``; missing, unknown or
                mistyped fields; invalid values.
        """
        what = "release manifest"
        check_fields(d, cls._FIELDS, what)
        if d["_type"] != "release":
            raise FormatError(f"expected _type 'release', found {d['_type']!r}")
        if d["spec_version"] != SPEC_VERSION or isinstance(d["spec_version"], bool):
            raise FormatError(f"unsupported spec_version {d['spec_version']!r}")
        return cls(
            release_id=get_str(d, "release_id", what),
            os_version=get_str(d, "os_version", what),
            builds=check_builds(get_list(d, "builds", what), "builds"),
            supplemental_build=get_str(d, "supplemental_build", what),
            published=get_str(d, "published", what),
            sequence=get_int(d, "sequence", what, minimum=1),
            expires=get_str(d, "expires", what),
            components=tuple(
                ComponentRelease.from_dict(c) for c in get_list(d, "components", what)
            ),
        )
