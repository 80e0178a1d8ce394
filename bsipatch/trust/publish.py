"""The vendor's release pipeline on a TUF repository: build, add, withdraw, list.

:func:`build_release` seals the base and new image of each component, makes the patches
and publishes them with the release as targets (:mod:`bsipatch.trust.releases`),
carrying forward the previous release's components that are not given (releases are
cumulative) and refusing one that would silently revert a component.
:func:`add_release` is the part after sealing and diffing: vendor pipelines that make
their own patches (several per component, from different source images) call it.
:func:`withdraw` marks a release withdrawn. All of them change the targets metadata,
so they need the targets role's (offline) keys; the snapshot and timestamp keys are
never enough. Devices never run this module.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuf.api.metadata import Targets

from bsipatch import _partial as partial
from bsipatch._io import PathLike
from bsipatch._time import format_time
from bsipatch.errors import FormatError, HeaderMismatch, MetadataError, WithdrawnRelease
from bsipatch.trust.manifest import ACTIVATIONS, Cve, SealRef
from bsipatch.trust.releases import (
    CUSTOM_KEY,
    Catalog,
    ComponentSpec,
    PatchInfo,
    Release,
    check_cumulative,
    image_target_path,
    patch_target_path,
    release_target_path,
)
from bsipatch.trust.signers import KeySet
from bsipatch.trust.tufrepo import Expiry, TufRepository, publish_targets

if TYPE_CHECKING:
    from bsipatch.seal.tree import Seal

__all__ = [
    "ComponentInput",
    "PatchInput",
    "add_release",
    "build_release",
    "load_catalog",
    "withdraw",
]

Log = Callable[[str], None]
StepProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ComponentInput:
    """One component to build a patch for.

    Attributes:
        name: component name.
        activation: ``relaunch`` or ``reboot``.
        base_image: the OS build's base image of the component.
        new_image: the fixed image.
        cves: the CVEs the fix addresses.
    """

    name: str
    activation: str
    base_image: PathLike
    new_image: PathLike
    cves: tuple[Cve, ...] = field(default=())


@dataclass(frozen=True)
class PatchInput:
    """A patch made elsewhere (vendor builds): file, component, and the images it joins.

    Attributes:
        component: component name.
        path: the patch file.
        from_seal: the image it applies to (the base image or an earlier release's):
            seal, size and SHA-256, which the patch header must declare as its old image.
        to_seal: the image it produces (seal, size and SHA-256, the header's new image).
    """

    component: str
    path: PathLike
    from_seal: SealRef
    to_seal: SealRef


def load_catalog(repo: TufRepository | PathLike) -> Catalog:
    """The repository's current releases, after checking targets against the root.

    Raises:
        SignatureError: the stored targets metadata is not signed by the root's targets keys.
    """
    from bsipatch.errors import SignatureError

    r = repo if isinstance(repo, TufRepository) else TufRepository(repo)
    root = r.root().signed
    targets = r.targets()
    result = root.get_verification_result("targets", targets.signed_bytes, targets.signatures)
    if not result.verified:
        raise SignatureError(f"{r.path}: targets metadata is not signed by the root's targets keys")
    return Catalog.from_targets(targets.signed)


def _release_base(catalog: Catalog, builds: Sequence[str]) -> Release | None:
    live = [r for r in catalog.releases if not r.withdrawn and set(r.builds) & set(builds)]
    return live[-1] if live else None


def _merge_components(
    prev: Release | None,
    given: Mapping[str, ComponentSpec],
    back_to_base: Sequence[str],
    carry_forward: bool,
) -> dict[str, ComponentSpec]:
    comps: dict[str, ComponentSpec] = {}
    if prev is not None and carry_forward:
        comps.update({n: c for n, c in prev.components.items() if c.target is not None})
    comps.update(given)
    for name in back_to_base:
        if name in given:
            raise FormatError(f"component {name} is given a new image and sent back to base")
        base = comps.get(name) or (prev.components.get(name) if prev else None)
        if base is None:
            raise FormatError(f"--back-to-base {name}: no earlier release changed {name}")
        comps[name] = ComponentSpec(base.activation, base.base, None, (), ())
    return comps


def _put_release(targets: Targets, repo: TufRepository, release: Release) -> None:
    tf = repo.add_target_bytes(
        release_target_path(release.release_id),
        release.document(),
        {CUSTOM_KEY: release.to_dict()},
    )
    targets.targets[tf.path] = tf


def _check_patch_header(name: str, p: PatchInput) -> None:
    """Refuse a patch whose header does not declare the images it is published for.

    Raises:
        HeaderMismatch: the header's old or new size or SHA-256 is not ``from_seal``'s
            or ``to_seal``'s (devices would refuse it; better to stop it here).
    """
    from bsipatch.delta.info import read_patch_info

    info = read_patch_info(p.path)
    for what, size, sha, ref in (
        ("old", info.old_size, info.old_sha256.hex(), p.from_seal),
        ("new", info.new_size, info.new_sha256.hex(), p.to_seal),
    ):
        if size != ref.size or sha != ref.sha256:
            raise HeaderMismatch(
                f"patch {p.path} of {name} declares a {size}-byte {what} image with SHA-256 "
                f"{sha}; the release would sign {ref.size} bytes with SHA-256 {ref.sha256}"
            )


def _add_patch_targets(
    r: TufRepository,
    targets: Targets,
    components: Mapping[str, ComponentSpec],
    by_comp: Mapping[str, Sequence[PatchInput]],
) -> dict[str, ComponentSpec]:
    """Store each component's patches as targets; the specs with their patch paths."""
    given: dict[str, ComponentSpec] = {}
    for name, spec in components.items():
        paths = []
        for p in by_comp.get(name, []):
            if p.to_seal != spec.target:
                raise FormatError(f"a patch of {name} does not produce its target image")
            _check_patch_header(name, p)
            rel = patch_target_path(name, p.from_seal, p.to_seal)
            tf = r.add_target_file(rel, p.path, PatchInfo.custom(name, p.from_seal, p.to_seal))
            targets.targets[rel] = tf
            paths.append(rel)
        if not paths:
            raise FormatError(f"component {name} has a new image but no patch")
        given[name] = ComponentSpec(
            spec.activation, spec.base, spec.target, tuple(paths), spec.cves
        )
    return given


def add_release(
    repo: TufRepository | PathLike,
    *,
    release_id: str,
    os_version: str,
    builds: Sequence[str],
    supplemental_build: str,
    components: Mapping[str, ComponentSpec],
    patches: Sequence[PatchInput],
    keys: KeySet,
    now: datetime,
    published: datetime | None = None,
    back_to_base: Sequence[str] = (),
    carry_forward: bool = True,
    images: Mapping[str, Mapping[str, PathLike]] | None = None,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] | None = None,
    log: Log | None = None,
) -> Release:
    """Publish a release whose patches already exist (one targets version, under the lock).

    Args:
        components: name -> spec of the components this release gives a new image;
            each spec's ``patches`` are filled in from ``patches`` (leave it empty).
        patches: the patch files, any number per component (N->1).
        back_to_base: components an earlier release changed that go back to base.
        carry_forward: keep the previous release's other components (default).
        images: build -> component -> base image file to publish (``--with-images``).

    Raises:
        MetadataError: the release id exists.
        HeaderMismatch: a patch's header does not declare its ``from_seal`` and
            ``to_seal`` images (size and SHA-256); nothing is published.
        WrongTarget: the release would silently revert a component (see
            :func:`bsipatch.trust.releases.check_cumulative`).
        ThresholdError: too few targets/snapshot/timestamp keys.
    """
    say = log or (lambda _m: None)
    r = repo if isinstance(repo, TufRepository) else TufRepository(repo)
    pub = format_time((published or now).astimezone(timezone.utc))
    by_comp: dict[str, list[PatchInput]] = {}
    for p in patches:
        by_comp.setdefault(p.component, []).append(p)

    def change(targets: Targets) -> Release:
        catalog = Catalog.from_targets(targets)
        if catalog.get(release_id) is not None:
            raise MetadataError(f"release {release_id} is already published")
        given = _add_patch_targets(r, targets, components, by_comp)
        prev = _release_base(catalog, builds)
        release = Release(
            release_id=release_id,
            os_version=os_version,
            builds=tuple(builds),
            supplemental_build=supplemental_build,
            published=pub,
            sequence=catalog.max_sequence + 1,
            withdrawn=False,
            components=_merge_components(prev, given, back_to_base, carry_forward),
        )
        check_cumulative(catalog.releases, release)
        for build, files in (images or {}).items():
            for comp, path in files.items():
                rel = image_target_path(os_version, build, comp)
                targets.targets[rel] = r.add_target_file(rel, path, {CUSTOM_KEY: {"type": "image"}})
        _put_release(targets, r, release)
        return release

    with r.lock():
        md, release = publish_targets(r, keys, change, now=now, expiry=expiry, clock=clock)
    say(f"targets version {md.signed.version}: added {release_id} (sequence {release.sequence})")
    return release  # type: ignore[no-any-return]


def _seal_pair(
    c: ComponentInput,
    salt: bytes,
    threads: int | None,
    progress: StepProgress | None,
) -> tuple[Seal, Seal]:
    from bsipatch.seal.tree import seal_image

    def step(label: str) -> Callable[[int, int], None] | None:
        return None if progress is None else (lambda d, t: progress(f"{c.name}: {label}", d, t))

    base = seal_image(c.base_image, salt=salt, threads=threads, progress=step("seal base"))
    new = seal_image(c.new_image, salt=salt, threads=threads, progress=step("seal new"))
    return base, new


def _make_patches(
    components: Sequence[ComponentInput],
    prev: Release | None,
    tmp: Path,
    threads: int | None,
    say: Log,
    progress: StepProgress | None,
) -> tuple[dict[str, ComponentSpec], list[PatchInput]]:
    """Seal each component's base and new image (lineage salt) and diff them into ``tmp``.

    The images' SHA-256 recorded with their seals are the ones the diff computed for
    the patch header (no extra read of either image).
    """
    from bsipatch.delta.diff import diff

    specs: dict[str, ComponentSpec] = {}
    patches: list[PatchInput] = []
    for c in components:
        old = prev.components.get(c.name) if prev else None
        salt = bytes.fromhex(old.base.salt) if old else secrets.token_bytes(32)
        say(f"{c.name}: sealing {c.base_image} and {c.new_image}")
        base_seal, target_seal = _seal_pair(c, salt, threads, progress)
        out = tmp / f"{c.name}.bsipatch"
        say(f"{c.name}: making patch")
        step = None if progress is None else (lambda d, t, n=c.name: progress(f"{n}: patch", d, t))
        with open(out, "wb") as f:
            info = diff(c.base_image, c.new_image, f, threads=threads, progress=step)
            f.flush()
            os.fsync(f.fileno())
        base = SealRef.from_seal(base_seal, info.old_sha256)
        target = SealRef.from_seal(target_seal, info.new_sha256)
        specs[c.name] = ComponentSpec(c.activation, base, target, (), tuple(c.cves))
        patches.append(PatchInput(c.name, out, base, target))
        say(f"{c.name}: patch {out.stat().st_size} bytes")
    return specs, patches


def build_release(
    repo: TufRepository | PathLike,
    *,
    release_id: str,
    os_version: str,
    builds: Sequence[str],
    supplemental_build: str,
    components: Sequence[ComponentInput],
    keys: KeySet,
    now: datetime,
    published: datetime | None = None,
    back_to_base: Sequence[str] = (),
    carry_forward: bool = True,
    with_images: bool = False,
    expiry: Expiry | None = None,
    threads: int | None = None,
    clock: Callable[[], datetime] | None = None,
    log: Log | None = None,
    progress: StepProgress | None = None,
) -> Release:
    """Seal, diff and publish a release (see the module docstring).

    Each component's base and new image are sealed with one salt (the salt of the
    component's base seal in earlier releases when there is one, else 32 random bytes:
    "lineage salt", see :mod:`bsipatch.seal.leafcache`) and one patch is made from the
    base image. Components not given are carried forward from the previous release.

    Raises:
        FormatError: bad names, activations or missing images.
        the errors of :func:`add_release`.
    """
    say = log or (lambda _m: None)
    r = repo if isinstance(repo, TufRepository) else TufRepository(repo)
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise FormatError("a component is listed twice")
    for c in components:
        if c.activation not in ACTIVATIONS:
            raise FormatError(f"component {c.name}: activation must be relaunch or reboot")
        for which, image in (("base", c.base_image), ("new", c.new_image)):
            if not Path(image).is_file():
                raise FormatError(f"component {c.name}: {which} image {image} is not a file")
    catalog = load_catalog(r)
    if catalog.get(release_id) is not None:
        raise MetadataError(f"release {release_id} is already published")
    prev = _release_base(catalog, builds)
    with tempfile.TemporaryDirectory(prefix="bsipatch-build-") as tmp:
        partial.add(tmp, tree=True)  # removed by the CLI should it abandon an interrupted build
        try:
            specs, patches = _make_patches(components, prev, Path(tmp), threads, say, progress)
            base = {c.name: c.base_image for c in components}
            images = {b: dict(base) for b in builds} if with_images else None
            return add_release(
                r,
                release_id=release_id,
                os_version=os_version,
                builds=builds,
                supplemental_build=supplemental_build,
                components=specs,
                patches=patches,
                keys=keys,
                now=now,
                published=published,
                back_to_base=back_to_base,
                carry_forward=carry_forward,
                images=images,
                expiry=expiry,
                clock=clock,
                log=log,
            )
        finally:
            partial.discard(tmp)


def withdraw(
    repo: TufRepository | PathLike,
    release_id: str,
    keys: KeySet,
    *,
    now: datetime,
    expiry: Expiry | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Release:
    """Mark a release withdrawn (a new targets version, signed by the targets role).

    Raises:
        MetadataError: no such release.
        WithdrawnRelease: already withdrawn.
        ThresholdError: too few targets keys (online keys cannot withdraw).
    """
    r = repo if isinstance(repo, TufRepository) else TufRepository(repo)

    def change(targets: Targets) -> Release:
        rel = Catalog.from_targets(targets).get(release_id)
        if rel is None:
            raise MetadataError(f"no release {release_id!r} is published")
        if rel.withdrawn:
            raise WithdrawnRelease(f"release {release_id} is already withdrawn")
        out = rel.withdraw()
        _put_release(targets, r, out)
        return out

    with r.lock():
        _md, release = publish_targets(r, keys, change, now=now, expiry=expiry, clock=clock)
    return release  # type: ignore[no-any-return]


def summary(release: Release) -> dict[str, Any]:
    """A JSON-ready summary of a release (for ``release show`` and ``catalog show``)."""
    return {
        "release_id": release.release_id,
        "os_version": release.os_version,
        "extra_version": release.extra_version,
        "builds": list(release.builds),
        "supplemental_build": release.supplemental_build,
        "published": release.published,
        "sequence": release.sequence,
        "withdrawn": release.withdrawn,
        "changed": list(release.changed),
        "back_to_base": sorted(n for n, c in release.components.items() if c.target is None),
        "cves": list(release.cves),
    }
