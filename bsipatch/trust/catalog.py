"""The dated catalog: every release of a repository, by date, with withdrawals.

The catalog (the ``signed`` part of ``catalog.json``, signed by the catalog role) is
versioned and expiring. Each entry names a release, the OS builds it applies to, its
publication date and sequence number, where its manifest lives and the manifest's
exact size and SHA-256 (so a manifest cannot be swapped or grown), whether the
vendor withdrew it, and the components and CVEs it covers (for display).
``from_dict``/``to_dict`` are strict. No signatures and no I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from bsipatch.errors import FormatError
from bsipatch.trust.manifest import (
    _CVE,
    _NAME,
    SPEC_VERSION,
    ReleaseManifest,
    check_builds,
    check_fields,
    check_hex,
    check_release_path,
    get_int,
    get_list,
    get_str,
    parse_time,
    release_slug,
)

__all__ = ["Catalog", "CatalogEntry"]


def _str_tuple(values: Any, what: str, pattern: Any) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)):
        raise FormatError(f"{what} must be a list")
    out = tuple(values)
    for v in out:
        if not isinstance(v, str) or not pattern.match(v):
            raise FormatError(f"{what} has an invalid value {v!r}")
    if len(set(out)) != len(out):
        raise FormatError(f"{what} lists a value twice")
    return out


@dataclass(frozen=True)
class CatalogEntry:
    """One release as the catalog lists it.

    Attributes:
        release_id: ``"26.1 (a)"``.
        os_version: ``"26.1"``.
        builds: the base OS builds the release applies to.
        published: ISO-8601 UTC publication time.
        sequence: the release's monotonic sequence number (unique in the catalog).
        manifest_path: path of the signed manifest, relative to the repository root.
        manifest_sha256: hex SHA-256 of the manifest file's bytes.
        manifest_size: exact size of the manifest file.
        withdrawn: the vendor withdrew this release.
        components: names of the components it patches.
        cves: CVE ids it fixes.
    """

    release_id: str
    os_version: str
    builds: tuple[str, ...]
    published: str
    sequence: int
    manifest_path: str
    manifest_sha256: str
    manifest_size: int
    withdrawn: bool
    components: tuple[str, ...]
    cves: tuple[str, ...]

    _FIELDS = (
        "release_id",
        "os_version",
        "builds",
        "published",
        "sequence",
        "manifest_path",
        "manifest_sha256",
        "manifest_size",
        "withdrawn",
        "components",
        "cves",
    )

    def __post_init__(self) -> None:
        release_slug(self.release_id)
        if not isinstance(self.os_version, str) or not self.release_id.startswith(
            self.os_version + " ("
        ):
            raise FormatError(
                f"catalog entry {self.release_id!r} does not match os_version {self.os_version!r}"
            )
        object.__setattr__(self, "builds", check_builds(self.builds, "catalog entry builds"))
        parse_time(self.published, "catalog entry published")
        if (
            isinstance(self.sequence, bool)
            or not isinstance(self.sequence, int)
            or self.sequence < 1
        ):
            raise FormatError(f"catalog entry sequence must be >= 1, found {self.sequence!r}")
        check_release_path(self.manifest_path, "manifest_path")
        if not isinstance(self.manifest_sha256, str):
            raise FormatError("manifest_sha256 must be a string")
        check_hex(self.manifest_sha256, "manifest_sha256", length=32)
        if (
            isinstance(self.manifest_size, bool)
            or not isinstance(self.manifest_size, int)
            or self.manifest_size < 1
        ):
            raise FormatError(
                f"manifest_size must be a positive integer, found {self.manifest_size!r}"
            )
        if not isinstance(self.withdrawn, bool):
            raise FormatError("withdrawn must be true or false")
        object.__setattr__(
            self, "components", _str_tuple(self.components, "catalog entry components", _NAME)
        )
        object.__setattr__(self, "cves", _str_tuple(self.cves, "catalog entry cves", _CVE))

    @property
    def slug(self) -> str:
        """Directory name of the release, e.g. ``"26.1-a"``."""
        return release_slug(self.release_id)

    @classmethod
    def for_manifest(
        cls,
        manifest: ReleaseManifest,
        *,
        manifest_path: str,
        manifest_sha256: str,
        manifest_size: int,
    ) -> CatalogEntry:
        """The entry that lists ``manifest`` (stored at ``manifest_path``)."""
        return cls(
            release_id=manifest.release_id,
            os_version=manifest.os_version,
            builds=manifest.builds,
            published=manifest.published,
            sequence=manifest.sequence,
            manifest_path=manifest_path,
            manifest_sha256=manifest_sha256,
            manifest_size=manifest_size,
            withdrawn=False,
            components=tuple(dict.fromkeys(c.name for c in manifest.components)),
            cves=manifest.cves,
        )

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict."""
        return {
            "release_id": self.release_id,
            "os_version": self.os_version,
            "builds": list(self.builds),
            "published": self.published,
            "sequence": self.sequence,
            "manifest_path": self.manifest_path,
            "manifest_sha256": self.manifest_sha256,
            "manifest_size": self.manifest_size,
            "withdrawn": self.withdrawn,
            "components": list(self.components),
            "cves": list(self.cves),
        }

    @classmethod
    def from_dict(cls, d: Any) -> CatalogEntry:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            FormatError: missing, unknown or mistyped fields, invalid values.
        """
        what = "catalog entry"
        check_fields(d, cls._FIELDS, what)
        return cls(
            release_id=get_str(d, "release_id", what),
            os_version=get_str(d, "os_version", what),
            builds=tuple(get_list(d, "builds", what)),
            published=get_str(d, "published", what),
            sequence=get_int(d, "sequence", what, minimum=1),
            manifest_path=get_str(d, "manifest_path", what),
            manifest_sha256=get_str(d, "manifest_sha256", what),
            manifest_size=get_int(d, "manifest_size", what, minimum=1),
            withdrawn=d["withdrawn"],
            components=tuple(get_list(d, "components", what)),
            cves=tuple(get_list(d, "cves", what)),
        )


def _order(e: CatalogEntry) -> tuple[str, int]:
    return (e.published, e.sequence)


@dataclass(frozen=True)
class Catalog:
    """The repository's list of releases (the ``signed`` part of ``catalog.json``).

    Attributes:
        version: increases by one with every catalog the vendor signs; devices
            refuse a version below the highest they have seen.
        expires: ISO-8601 UTC expiry; an expired catalog is refused (freeze attack).
        releases: entries ordered by publication date, then sequence.
    """

    version: int
    expires: str
    releases: tuple[CatalogEntry, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise FormatError(f"catalog version must be an integer >= 1, found {self.version!r}")
        parse_time(self.expires, "catalog expires")
        releases = tuple(sorted(self.releases, key=_order))
        ids = [e.release_id for e in releases]
        if len(set(ids)) != len(ids):
            raise FormatError("the catalog lists a release twice")
        seqs = [e.sequence for e in releases]
        if len(set(seqs)) != len(seqs):
            raise FormatError("two catalog entries share a sequence number")
        object.__setattr__(self, "releases", releases)

    def for_build(self, build: str) -> tuple[CatalogEntry, ...]:
        """The entries that apply to OS build ``build``, oldest first (withdrawn included)."""
        return tuple(e for e in self.releases if build in e.builds)

    def latest(self, build: str, include_withdrawn: bool = False) -> CatalogEntry | None:
        """The entry with the highest sequence for ``build`` (skipping withdrawn ones
        unless ``include_withdrawn``), or ``None``."""
        best: CatalogEntry | None = None
        for e in self.for_build(build):
            if e.withdrawn and not include_withdrawn:
                continue
            if best is None or e.sequence > best.sequence:
                best = e
        return best

    def get(self, release_id: str) -> CatalogEntry | None:
        """The entry for ``release_id``, or ``None``."""
        for e in self.releases:
            if e.release_id == release_id:
                return e
        return None

    def entry(self, release_id: str) -> CatalogEntry:
        """The entry for ``release_id``.

        Raises:
            KeyError: the catalog does not list it.
        """
        e = self.get(release_id)
        if e is None:
            raise KeyError(f"the catalog does not list release {release_id!r}")
        return e

    @property
    def max_sequence(self) -> int:
        """The highest sequence number listed (0 when empty)."""
        return max((e.sequence for e in self.releases), default=0)

    def with_entries(
        self, entries: Iterable[CatalogEntry], *, version: int, expires: str
    ) -> Catalog:
        """A new catalog with ``entries`` instead of the current ones."""
        return replace(self, version=version, expires=expires, releases=tuple(entries))

    def to_dict(self) -> dict[str, Any]:
        """The ``signed`` dict, with ``"_type": "catalog"``."""
        return {
            "_type": "catalog",
            "spec_version": SPEC_VERSION,
            "version": self.version,
            "expires": self.expires,
            "releases": [e.to_dict() for e in self.releases],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Catalog:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            FormatError: wrong ``_type``/``spec_version``, missing, unknown or mistyped
                fields, duplicate releases or sequence numbers.
        """
        what = "catalog"
        check_fields(d, ("_type", "spec_version", "version", "expires", "releases"), what)
        if d["_type"] != "catalog":
            raise FormatError(f"expected _type 'catalog', found {d['_type']!r}")
        if d["spec_version"] != SPEC_VERSION or isinstance(d["spec_version"], bool):
            raise FormatError(f"unsupported spec_version {d['spec_version']!r}")
        return cls(
            version=get_int(d, "version", what, minimum=1),
            expires=get_str(d, "expires", what),
            releases=tuple(CatalogEntry.from_dict(e) for e in get_list(d, "releases", what)),
        )
