"""What a release is, as TUF targets metadata: release and patch targets with custom fields.

Every release is one target ``releases/<slug>.json`` whose ``custom.bsipatch`` holds the
release (id, OS version, builds, supplemental build, date, sequence, withdrawal, and per
component: activation, base seal, target seal or ``null`` for "back to base on purpose",
the patch targets that produce it, CVEs); the file itself is the same document, so a
stock TUF client can download it. Every patch is one target
``patches/<component>/<to-root16>/from-<from-root16>.bsipatch`` with its length and
SHA-256 (TUF's own fields) and ``custom.bsipatch`` naming the component and the seals it
goes from and to, so one component may have several patches (N->1: from the base and
from earlier releases' images). See docs/metadata.md.

Parsing here is strict (unknown or missing fields are :class:`FormatError`) and checks
that every patch a release names is a target of the same metadata with matching seals.
No signatures (TUF checks those), no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tuf.api.metadata import TargetFile, Targets

from bsipatch._time import format_time, parse_time
from bsipatch.errors import FormatError, WrongTarget
from bsipatch.trust.manifest import (
    ACTIVATIONS,
    ComponentRelease,
    Cve,
    PatchRef,
    ReleaseManifest,
    SealRef,
    check_build,
    check_builds,
    check_fields,
    get_int,
    get_list,
    get_str,
    release_slug,
)

__all__ = [
    "CUSTOM_KEY",
    "Catalog",
    "ComponentSpec",
    "PatchInfo",
    "Release",
    "Variant",
    "check_cumulative",
    "image_target_path",
    "patch_target_path",
    "release_target_path",
]

#: The key under ``custom`` that holds bsipatch's fields.
CUSTOM_KEY = "bsipatch"
_TARGETS_PREFIX = "targets/"


def release_target_path(release_id: str) -> str:
    """``releases/26.1-a.json`` for ``26.1 (a)``."""
    return f"releases/{release_slug(release_id)}.json"


def patch_target_path(component: str, from_seal: SealRef, to_seal: SealRef) -> str:
    """``patches/<component>/<to-root16>/from-<from-root16>.bsipatch``."""
    ComponentRelease(component, "reboot", from_seal, to_seal, PatchRef("x", "0" * 64, 1))
    return f"patches/{component}/{to_seal.root_hash[:16]}/from-{from_seal.root_hash[:16]}.bsipatch"


def image_target_path(os_version: str, build: str, component: str) -> str:
    """``images/<os_version>/<build>/<component>.img`` (only with ``--with-images``)."""
    check_build(build, "build")
    return f"images/{os_version}/{build}/{component}.img"


@dataclass(frozen=True)
class PatchInfo:
    """A patch target: which component, from which sealed image to which.

    Attributes:
        path: the target path (``patches/...``).
        component: component name.
        from_seal: the image the patch applies to.
        to_seal: the image it produces.
        length: exact size in bytes (TUF ``length``).
        sha256: hex SHA-256 (TUF ``hashes.sha256``).
        url_path: where the file is served, relative to the repository root
            (``targets/<dir>/<sha256>.<name>``).
    """

    path: str
    component: str
    from_seal: SealRef
    to_seal: SealRef
    length: int
    sha256: str
    url_path: str

    @staticmethod
    def custom(component: str, from_seal: SealRef, to_seal: SealRef) -> dict[str, Any]:
        """The ``custom`` field of a patch target."""
        return {
            CUSTOM_KEY: {
                "type": "patch",
                "component": component,
                "from": from_seal.to_dict(),
                "to": to_seal.to_dict(),
            }
        }

    @classmethod
    def from_target(cls, t: TargetFile) -> PatchInfo:
        """Strict parse of a patch target."""
        d = (t.custom or {}).get(CUSTOM_KEY)
        what = f"patch target {t.path}"
        check_fields(d, ("type", "component", "from", "to"), what)
        assert isinstance(d, dict)
        sha = t.hashes.get("sha256")
        if not isinstance(sha, str):
            raise FormatError(f"{what} has no sha256 hash")
        return cls(
            path=t.path,
            component=get_str(d, "component", what),
            from_seal=SealRef.from_dict(d["from"], f"{what}.from"),
            to_seal=SealRef.from_dict(d["to"], f"{what}.to"),
            length=t.length,
            sha256=sha,
            url_path=_TARGETS_PREFIX + t.get_prefixed_paths()[0],
        )


@dataclass(frozen=True)
class ComponentSpec:
    """One component of a release.

    Attributes:
        activation: ``relaunch`` or ``reboot``.
        base: seal of the OS build's base image of this component.
        target: seal of the image the release puts in place, or ``None`` when the
            release takes the component back to its base image on purpose.
        patches: patch target paths producing ``target`` (none when ``target`` is None).
        cves: CVEs the component's fix addresses.
    """

    activation: str
    base: SealRef
    target: SealRef | None
    patches: tuple[str, ...] = ()
    cves: tuple[Cve, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "activation": self.activation,
            "base": self.base.to_dict(),
            "target": None if self.target is None else self.target.to_dict(),
            "patches": list(self.patches),
            "cves": [c.to_dict() for c in self.cves],
        }

    @classmethod
    def from_dict(cls, d: Any, what: str) -> ComponentSpec:
        """Strict inverse of :meth:`to_dict`."""
        check_fields(d, ("activation", "base", "target", "patches", "cves"), what)
        act = get_str(d, "activation", what)
        if act not in ACTIVATIONS:
            raise FormatError(f"{what}: activation must be relaunch or reboot, found {act!r}")
        target = None if d["target"] is None else SealRef.from_dict(d["target"], f"{what}.target")
        patches = tuple(str(p) for p in get_list(d, "patches", what))
        if (target is None) != (not patches):
            raise FormatError(f"{what}: a changed component needs patches; back-to-base has none")
        return cls(
            activation=act,
            base=SealRef.from_dict(d["base"], f"{what}.base"),
            target=target,
            patches=patches,
            cves=tuple(Cve.from_dict(c, f"{what}.cves[]") for c in get_list(d, "cves", what)),
        )


@dataclass(frozen=True)
class Variant:
    """One device variant (base build) of a matrix release: its own images and patches.

    Attributes:
        supplemental_build: the build a device of this variant reports once installed.
        components: name -> :class:`ComponentSpec` for this build.
    """

    supplemental_build: str
    components: Mapping[str, ComponentSpec]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "supplemental_build": self.supplemental_build,
            "components": {n: c.to_dict() for n, c in sorted(self.components.items())},
        }

    @classmethod
    def from_dict(cls, d: Any, what: str) -> Variant:
        """Strict inverse of :meth:`to_dict`."""
        check_fields(d, ("supplemental_build", "components"), what)
        comps = d["components"]
        if not isinstance(comps, dict):
            raise FormatError(f"{what}: components must be an object")
        return cls(
            supplemental_build=check_build(d["supplemental_build"], f"{what}.supplemental_build"),
            components={
                str(n): ComponentSpec.from_dict(c, f"{what} component {n}")
                for n, c in comps.items()
            },
        )


@dataclass(frozen=True)
class Release:
    """A release as the targets role signed it.

    Attributes:
        release_id: ``26.1 (a)``.
        os_version: ``26.1``.
        builds: base OS builds it applies to.
        supplemental_build: the build a device reports once it is installed.
        published: publication time (``YYYY-MM-DDTHH:MM:SSZ``).
        sequence: release number in this repository (the device floor counts in it).
        withdrawn: the vendor withdrew it (signed by the targets role like the rest).
        components: name -> :class:`ComponentSpec` (empty for a matrix release).
        variants: build -> :class:`Variant` for a matrix release (one per device
            variant, every build listed); empty otherwise, and then omitted.
    """

    release_id: str
    os_version: str
    builds: tuple[str, ...]
    supplemental_build: str
    published: str
    sequence: int
    withdrawn: bool
    components: Mapping[str, ComponentSpec] = field(default_factory=dict)
    variants: Mapping[str, Variant] = field(default_factory=dict)

    _FIELDS = (
        "type", "release_id", "os_version", "builds", "supplemental_build",
        "published", "sequence", "withdrawn", "components",
    )  # fmt: skip

    def __post_init__(self) -> None:
        slug = release_slug(self.release_id)
        if not slug.startswith(f"{self.os_version}-") or slug.count("-") != 1:
            raise FormatError(f"release id {self.release_id!r} is not of OS {self.os_version!r}")
        object.__setattr__(self, "builds", check_builds(list(self.builds), "builds"))
        check_build(self.supplemental_build, "supplemental_build")
        parse_time(self.published, "published")
        if (
            isinstance(self.sequence, bool)
            or not isinstance(self.sequence, int)
            or self.sequence < 1
        ):
            raise FormatError(f"sequence must be an integer >= 1, found {self.sequence!r}")
        if self.variants:
            if self.components or set(self.variants) != set(self.builds):
                raise FormatError(
                    f"release {self.release_id}: a matrix release has one variant per build "
                    "and no components of its own"
                )
            views = [self.for_build(b) for b in self.builds]  # each changes something
            del views
        elif not any(c.target is not None for c in self.components.values()):
            raise FormatError(f"release {self.release_id} changes no component")

    def for_build(self, build: str) -> Release:
        """The release as a device of base build ``build`` sees it (a matrix release's
        variant for that build; any other release unchanged)."""
        v = self.variants.get(build)
        if v is None:
            return self
        return replace(
            self,
            builds=(build,),
            supplemental_build=v.supplemental_build,
            components=v.components,
            variants={},
        )

    def specs(self) -> list[tuple[str | None, str, ComponentSpec]]:
        """Every ``(build or None, name, spec)`` of the release, variants included."""
        out: list[tuple[str | None, str, ComponentSpec]] = [
            (None, n, c) for n, c in self.components.items()
        ]
        for b, v in self.variants.items():
            out += [(b, n, c) for n, c in v.components.items()]
        return out

    @property
    def extra_version(self) -> str:
        """``(a)``."""
        return self.release_id[len(self.os_version) + 1 :]

    @property
    def cves(self) -> tuple[str, ...]:
        """Every CVE id of every component, sorted."""
        return tuple(sorted({c.id for _b, _n, s in self.specs() for c in s.cves}))

    @property
    def changed(self) -> tuple[str, ...]:
        """Components the release puts a new image in place for."""
        return tuple(sorted({n for _b, n, c in self.specs() if c.target is not None}))

    def to_dict(self) -> dict[str, Any]:
        """The ``custom.bsipatch`` dict."""
        return {
            "type": "release",
            "release_id": self.release_id,
            "os_version": self.os_version,
            "builds": list(self.builds),
            "supplemental_build": self.supplemental_build,
            "published": self.published,
            "sequence": self.sequence,
            "withdrawn": self.withdrawn,
            "components": {n: c.to_dict() for n, c in sorted(self.components.items())},
            **(
                {"variants": {b: v.to_dict() for b, v in sorted(self.variants.items())}}
                if self.variants
                else {}
            ),
        }

    def document(self) -> bytes:
        """The release target's file content (the same dict, sorted compact JSON)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: Any) -> Release:
        """Strict inverse of :meth:`to_dict`."""
        what = "release"
        extra = ("variants",) if isinstance(d, dict) and "variants" in d else ()
        check_fields(d, (*cls._FIELDS, *extra), what)
        variants = d.get("variants", {})
        if not isinstance(variants, dict) or (extra and not variants):
            raise FormatError("release variants must be a non-empty object")
        if d["type"] != "release" or not isinstance(d["withdrawn"], bool):
            raise FormatError("release custom fields: bad type or withdrawn flag")
        comps = d["components"]
        if not isinstance(comps, dict):
            raise FormatError("release components must be an object")
        return cls(
            release_id=get_str(d, "release_id", what),
            os_version=get_str(d, "os_version", what),
            builds=check_builds(get_list(d, "builds", what), "builds"),
            supplemental_build=get_str(d, "supplemental_build", what),
            published=get_str(d, "published", what),
            sequence=get_int(d, "sequence", what, minimum=1),
            withdrawn=d["withdrawn"],
            components={
                str(n): ComponentSpec.from_dict(c, f"release {d['release_id']} component {n}")
                for n, c in comps.items()
            },
            variants={
                check_build(b, "variant build"): Variant.from_dict(v, f"release variant {b}")
                for b, v in variants.items()
            },
        )

    def withdraw(self) -> Release:
        """The same release, withdrawn."""
        return replace(self, withdrawn=True)


@dataclass(frozen=True)
class Catalog:
    """Every release and patch of one targets metadata, checked for consistency.

    Attributes:
        version: the targets metadata version.
        expires: its expiry (``YYYY-MM-DDTHH:MM:SSZ``).
        releases: ordered by sequence.
        patches: target path -> :class:`PatchInfo`.
    """

    version: int
    expires: str
    releases: tuple[Release, ...]
    patches: Mapping[str, PatchInfo]

    @classmethod
    def from_targets(cls, targets: Targets) -> Catalog:
        """Read the releases and patches out of (already verified) targets metadata.

        Raises:
            FormatError: a bsipatch target is malformed, a release names a patch that is
                not a target or whose seals do not match, or two releases share a sequence.
        """
        releases: list[Release] = []
        patches: dict[str, PatchInfo] = {}
        for path, t in targets.targets.items():
            kind = ((t.custom or {}).get(CUSTOM_KEY) or {}).get("type")
            if kind == "patch":
                patches[path] = PatchInfo.from_target(t)
            elif kind == "release":
                r = Release.from_dict(t.custom[CUSTOM_KEY])
                if path != release_target_path(r.release_id):
                    raise FormatError(f"release {r.release_id} is filed under {path}")
                releases.append(r)
        for r in releases:
            for _build, name, c in r.specs():
                for p in c.patches:
                    info = patches.get(p)
                    if info is None or info.component != name or info.to_seal != c.target:
                        raise FormatError(
                            f"release {r.release_id} component {name} names patch {p}, which "
                            "is not a patch target of that component producing its target seal"
                        )
        seqs = [r.sequence for r in releases]
        if len(set(seqs)) != len(seqs):
            raise FormatError("two releases share a sequence number")
        releases.sort(key=lambda r: r.sequence)
        expires = format_time(targets.expires)
        return cls(targets.version, expires, tuple(releases), patches)

    def for_device(self, build: str) -> Catalog:
        """The catalog as a device of base build ``build`` sees it (matrix releases reduced
        to that build's variant; see :meth:`Release.for_build`)."""
        return replace(self, releases=tuple(r.for_build(build) for r in self.releases))

    def patch_saving(self, release: Release, manifest: ReleaseManifest) -> dict[str, Any]:
        """Per component of ``manifest``: the patch chosen, and the base patch it replaces."""
        out: dict[str, Any] = {}
        for c in manifest.components:
            spec = release.components[c.name]
            base = [
                self.patches[p].length
                for p in spec.patches
                if self.patches[p].from_seal == spec.base
            ]
            base_size = base[0] if base else int(c.patch.size)
            out[c.name] = {
                "source": "base" if c.base == spec.base else "active image",
                "patch_bytes": int(c.patch.size),
                "base_patch_bytes": base_size,
                "saved_bytes": base_size - int(c.patch.size),
            }
        return out

    def get(self, release_id: str) -> Release | None:
        """The release with this id, or None."""
        return next((r for r in self.releases if r.release_id == release_id), None)

    def for_build(self, build: str) -> tuple[Release, ...]:
        """Releases for one base build, by sequence."""
        return tuple(r for r in self.releases if build in r.builds)

    def latest(self, build: str) -> Release | None:
        """The newest release for ``build`` that is not withdrawn."""
        live = [r for r in self.for_build(build) if not r.withdrawn]
        return live[-1] if live else None

    @property
    def max_sequence(self) -> int:
        """The highest sequence listed (0 when none)."""
        return max((r.sequence for r in self.releases), default=0)

    def manifest(
        self, release: Release, current: Mapping[str, SealRef] | None = None
    ) -> ReleaseManifest:
        """The device-side manifest of ``release``: one patch per changed component.

        For each changed component, the patch from the image the device has now
        (``current[name]``, e.g. the active release's image) is chosen when the release
        lists one, else the patch from the base image.

        Raises:
            WrongTarget: no patch of a component applies to the base image or ``current``.
        """
        comps = []
        for name in release.changed:
            spec = release.components[name]
            infos = [self.patches[p] for p in spec.patches]
            have = (current or {}).get(name)
            fits = [i for i in infos if have is not None and i.from_seal == have]
            pick = min(fits, key=lambda i: i.length) if fits else None  # smallest from current
            pick = pick or next((i for i in infos if i.from_seal == spec.base), None)
            if pick is None:
                raise WrongTarget(
                    f"release {release.release_id}: no patch of {name} applies to the base "
                    "image or the image the device has"
                )
            assert spec.target is not None
            comps.append(
                ComponentRelease(
                    name=name,
                    activation=spec.activation,
                    base=pick.from_seal,
                    target=spec.target,
                    patch=PatchRef(path=pick.url_path, sha256=pick.sha256, size=pick.length),
                    cves=spec.cves,
                )
            )
        return ReleaseManifest(
            release_id=release.release_id,
            os_version=release.os_version,
            builds=release.builds,
            supplemental_build=release.supplemental_build,
            published=release.published,
            sequence=release.sequence,
            expires=max(self.expires, _after(release.published)),
            components=tuple(comps),
        )


def _after(published: str) -> str:
    """One second after ``published`` (a manifest's expires must follow its date)."""
    from datetime import timedelta

    return format_time(parse_time(published) + timedelta(seconds=1))


def check_cumulative(earlier: Sequence[Release], new: Release) -> None:
    """Refuse a release that silently reverts a component an earlier release changed.

    For every build of ``new`` and every earlier non-withdrawn release of that build,
    every component that release changed must be in ``new``: with a new image, or with
    ``target`` None (back to base on purpose).

    Raises:
        WrongTarget: a component would silently go back to its base image.
    """
    missing: dict[str, str] = {}
    for r in earlier:
        if r.withdrawn:
            continue
        for build in set(r.builds) & set(new.builds):
            have = new.for_build(build).components
            for name in r.for_build(build).changed:
                if name not in have:
                    missing.setdefault(name, r.release_id)
    if missing:
        lst = ", ".join(f"{n} (changed by {rid})" for n, rid in sorted(missing.items()))
        raise WrongTarget(
            f"release {new.release_id} leaves out {lst}: devices would silently go back to the "
            "base image and lose those fixes; carry the component forward (the default), give "
            "it a new image, or send it back to base on purpose (--back-to-base NAME)"
        )
