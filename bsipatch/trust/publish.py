"""The vendor's release pipeline: keys on disk, repository init, build, withdraw, rotate.

:func:`init_repository` writes the first trust root and an empty catalog.
:func:`build_release` seals the base and new image of each component, makes the
patches, writes and signs the manifest (release role) and adds the release to the
catalog (catalog role, version + 1). :func:`withdraw` marks a release withdrawn,
:func:`rotate_root` publishes the next root (signed by the old and the new root
keys) and :func:`resign` re-signs manifests and catalog after a key rotation.

The repository's own signed files are checked with :mod:`bsipatch.trust.verify` before
they are extended, so a tampered catalog is not re-signed. Devices never run
this module; it decides nothing about what a device installs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from bsipatch._io import atomic_write
from bsipatch.errors import FormatError, KeyFileError, MetadataError, SignatureError, ThresholdError
from bsipatch.trust import canonical
from bsipatch.trust import keys as keymod
from bsipatch.trust.catalog import Catalog, CatalogEntry
from bsipatch.trust.keys import PrivateKey, PublicKey
from bsipatch.trust.manifest import (
    ACTIVATIONS,
    ComponentRelease,
    Cve,
    PatchRef,
    ReleaseManifest,
    SealRef,
    check_build,
    check_builds,
    format_time,
    release_slug,
)
from bsipatch.trust.repository import Repository, image_relpath, patch_relpath
from bsipatch.trust.verify import (
    MAX_CATALOG_SIZE,
    MAX_MANIFEST_SIZE,
    MAX_ROOT_SIZE,
    ROLES,
    Envelope,
    Root,
    Verifier,
    check_signatures,
    parse_envelope,
)

__all__ = [
    "ComponentInput",
    "add_os_images",
    "add_release",
    "build_release",
    "generate_keydir",
    "init_repository",
    "load_catalog",
    "load_keydir",
    "load_root",
    "resign",
    "rotate_root",
    "withdraw",
]

PathLike = str | os.PathLike[str]
KeyMap = Mapping[str, PrivateKey | Sequence[PrivateKey]]
Log = Callable[[str], None]
StepProgress = Callable[[str, int, int], None]

#: Default lifetimes (used by the CLI).
DEFAULT_ROOT_DAYS = 365
DEFAULT_CATALOG_DAYS = 30
DEFAULT_MANIFEST_DAYS = 180

_KEYFILE = re.compile(r"^(root|release|catalog)-(\d+)\.pem$")


@dataclass(frozen=True)
class ComponentInput:
    """One component to publish.

    Attributes:
        name: component name (also the patch and image file name).
        activation: ``"relaunch"`` or ``"reboot"``.
        base_image: path of the image devices have now.
        new_image: path of the fixed image.
        cves: the CVEs the fix addresses.
    """

    name: str
    activation: str
    base_image: PathLike
    new_image: PathLike
    cves: tuple[Cve, ...] = field(default=())


def _repo(repo: Repository | PathLike) -> Repository:
    return repo if isinstance(repo, Repository) else Repository(repo)


_F = TypeVar("_F", bound=Callable[..., Any])


def _exclusive(fn: _F) -> _F:
    """Run ``fn(repo, ...)`` holding the repository's publisher lock (one writer at a time)."""

    @functools.wraps(fn)
    def locked(repo: Repository | PathLike, *args: Any, **kwargs: Any) -> Any:
        r = _repo(repo)
        with r.lock():
            return fn(r, *args, **kwargs)

    return locked  # type: ignore[return-value]


def _role_keys(keys: KeyMap, role: str) -> list[PrivateKey]:
    value = keys.get(role)
    if value is None:
        return []
    if isinstance(value, PrivateKey):
        return [value]
    return list(value)


def _signers(root: Root, role: str, given: Iterable[PrivateKey], what: str) -> list[PrivateKey]:
    """The given keys the root trusts for ``role``; at least its threshold of them."""
    trusted = set(root.roles[role].keyids)
    chosen = {k.keyid: k for k in given if k.keyid in trusted}
    need = root.roles[role].threshold
    if len(chosen) < need:
        raise ThresholdError(
            f"signing the {what} needs {need} key(s) of role {role} trusted by root version "
            f"{root.version}; {len(chosen)} given"
        )
    return list(chosen.values())


def _step(progress: StepProgress | None, label: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None

    def callback(done: int, total: int) -> None:
        progress(label, done, total)

    return callback


def _sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


# --- key directories -------------------------------------------------------------------


def generate_keydir(
    directory: PathLike,
    *,
    kind: str = "ed25519",
    roles: Sequence[str] = ROLES,
    count: int = 1,
    passphrase: str | bytes | None = None,
) -> list[tuple[str, Path, str]]:
    """Generate ``count`` new keys for each role into ``directory``.

    Files are ``<role>-<n>.pem`` (PKCS#8, mode 0600, encrypted with ``passphrase``)
    and ``<role>-<n>.pub.json`` (the public key dict); ``n`` continues after the
    highest existing number, so existing keys are never overwritten.

    Returns:
        ``(role, pem path, keyid)`` for each new key.
    """
    if count < 1:
        raise ValueError("count must be >= 1")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    out = []
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        used = [
            int(m.group(2))
            for p in d.iterdir()
            if (m := _KEYFILE.match(p.name)) and m.group(1) == role
        ]
        n = max(used, default=0)
        for _ in range(count):
            n += 1
            key = keymod.generate(kind)
            pem = d / f"{role}-{n}.pem"
            keymod.save_private(key, pem, passphrase)
            with atomic_write(d / f"{role}-{n}.pub.json") as f:
                f.write(canonical.encode(keymod.public_key_dict(key)) + b"\n")
            out.append((role, pem, key.keyid))
    return out


def load_keydir(
    directory: PathLike, passphrase: str | bytes | None = None, *, roles: Sequence[str] = ROLES
) -> dict[str, list[PrivateKey]]:
    """Load the ``<role>-<n>.pem`` keys of a key directory.

    Returns:
        role -> keys (roles without key files map to an empty list).

    Raises:
        KeyFileError: the directory is missing, or a key cannot be loaded.
    """
    d = Path(directory)
    if not d.is_dir():
        raise KeyFileError(f"key directory {d} does not exist")
    out: dict[str, list[PrivateKey]] = {r: [] for r in roles}
    for p in sorted(d.iterdir(), key=lambda p: p.name):
        m = _KEYFILE.match(p.name)
        if m and m.group(1) in out:
            out[m.group(1)].append(keymod.load_private(p, passphrase))
    return out


# --- reading the repository's own metadata -----------------------------------------------


def load_root(repo: Repository | PathLike) -> Root:
    """The repository's current root, checked to be signed at its own threshold."""
    r = _repo(repo)
    v = Verifier(r.read_root(), now=datetime.now(timezone.utc), allow_expired_root=True)
    return v.root


def load_catalog(repo: Repository | PathLike, root: Root | None = None) -> Catalog:
    """The repository's catalog, checked to be signed by the root's catalog role.

    Expiry and version are not checked (the vendor is about to replace it).
    """
    r = _repo(repo)
    root = root or load_root(r)
    env = parse_envelope(r.read_catalog(), max_size=MAX_CATALOG_SIZE, what="catalog")
    check_signatures(root, "catalog", env, "repository catalog")
    return Catalog.from_dict(env.signed)


def _write_catalog(r: Repository, root: Root, catalog: Catalog, keys: KeyMap) -> None:
    signers = _signers(root, "catalog", _role_keys(keys, "catalog"), "catalog")
    r.write_catalog(keymod.sign_envelope(catalog.to_dict(), signers))


# --- operations ------------------------------------------------------------------------------


def init_repository(
    repo: Repository | PathLike,
    keys: KeyMap,
    *,
    now: datetime,
    root_expires: datetime | None = None,
    catalog_expires: datetime | None = None,
    thresholds: Mapping[str, int] | None = None,
    public_keys: Mapping[str, Sequence[PublicKey]] | None = None,
) -> Root:
    """Create a repository: ``root.json`` (version 1) and an empty ``catalog.json``.

    Args:
        repo: the repository directory (created if needed; must not hold a root).
        keys: role -> private key(s). The root is signed by the root keys (at least
            its threshold); the empty catalog by the catalog keys.
        now: the current time.
        root_expires: default ``now`` + 365 days.
        catalog_expires: default ``now`` + 30 days.
        thresholds: role -> threshold (default 1).
        public_keys: extra role -> public keys to trust (keys held elsewhere).

    Returns:
        The root.

    Raises:
        MetadataError: the repository already has a root.
        ThresholdError: fewer private keys than a role's threshold.
    """
    r = _repo(repo)
    if (r.path / "root.json").exists():
        raise MetadataError(f"{r.path} already holds a repository (root.json exists)")
    role_keys: dict[str, list[PrivateKey | PublicKey]] = {}
    for role in ROLES:
        role_keys[role] = [*_role_keys(keys, role), *(public_keys or {}).get(role, ())]
        if not role_keys[role]:
            raise KeyFileError(f"no key for role {role}")
    root = Root.build(
        role_keys,
        version=1,
        expires=root_expires or now + timedelta(days=DEFAULT_ROOT_DAYS),
        thresholds=thresholds,
    )
    signers = _signers(root, "root", _role_keys(keys, "root"), "root")
    r.path.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(
        version=1,
        expires=format_time(catalog_expires or now + timedelta(days=DEFAULT_CATALOG_DAYS)),
    )
    catalog_signers = _signers(root, "catalog", _role_keys(keys, "catalog"), "catalog")
    r.write_root(1, keymod.sign_envelope(root.to_dict(), signers))
    r.write_catalog(keymod.sign_envelope(catalog.to_dict(), catalog_signers))
    return root


@_exclusive
def add_os_images(
    repo: Repository | PathLike, os_version: str, build: str, images: Mapping[str, PathLike]
) -> dict[str, str]:
    """Copy full base images of an OS build into ``images/<os_version>/<build>/``.

    Existing files are left alone. Returns component -> relative path.
    """
    r = _repo(repo)
    out = {}
    for name, src in images.items():
        rel = image_relpath(os_version, build, name)
        dest = r.resolve(rel)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fin, atomic_write(dest) as fout:
                os.fchmod(fout.fileno(), 0o644)
                shutil.copyfileobj(fin, fout, 1 << 20)
        out[name] = rel
    return out


@_exclusive
def build_release(
    repo: Repository | PathLike,
    *,
    release_id: str,
    os_version: str,
    builds: Sequence[str],
    supplemental_build: str,
    components: Sequence[ComponentInput],
    keys: KeyMap,
    published: datetime,
    expires: datetime,
    catalog_expires: datetime | None = None,
    store_base_images: bool = True,
    threads: int | None = None,
    log: Log | None = None,
    progress: StepProgress | None = None,
) -> ReleaseManifest:
    """Publish a release: seals, patches, signed manifest, catalog version + 1.

    For each component the base image is sealed (:func:`bsipatch.seal.tree.seal_image`,
    random salt) and the new image with the SAME salt ("lineage salt": a block the new
    image copies from the base keeps its dm-verity leaf, so a device checks the new
    image's seal by hashing only the blocks the patch changed; see
    :mod:`bsipatch.seal.leafcache`), and a patch is made
    (:func:`bsipatch.delta.diff.diff`) into ``releases/<slug>/<name>.bsipatch``. The
    manifest gets the next sequence number, is signed by the release role, and the
    catalog (re-signed by the catalog role) lists it. The catalog is written last:
    until then devices do not see the release, and a failed run can simply be
    repeated.

    Args:
        repo: the repository.
        release_id: ``"26.1 (a)"``.
        os_version: ``"26.1"``.
        builds: the base OS builds it applies to.
        supplemental_build: e.g. ``"23B85a"``.
        components: what to patch.
        keys: role -> private key(s); needs release and catalog keys.
        published: publication time.
        expires: manifest expiry.
        catalog_expires: catalog expiry (default ``published`` + 30 days).
        store_base_images: also copy base images to ``images/<os>/<build>/``.
        threads: worker threads for sealing and diffing.
        log: called with one line per step.
        progress: called as ``progress(step, done, total)`` while sealing and
            diffing (``step`` is e.g. ``"webkit: patch"``).

    Returns:
        The manifest.

    Raises:
        MetadataError: the release id is already in the catalog.
        FormatError: invalid ids, names, activations or CVEs; an image is missing.
        ThresholdError: not enough trusted keys for the release or catalog role.
    """
    from bsipatch.delta.diff import diff  # lazy: loads the native core
    from bsipatch.seal.tree import seal_image

    say = log or (lambda _msg: None)
    r = _repo(repo)
    _check_release_fields(release_id, os_version, builds, supplemental_build, published, expires)
    root = load_root(r)
    catalog = load_catalog(r, root)
    if catalog.get(release_id) is not None:
        raise MetadataError(f"release {release_id} is already in the catalog")
    _signers(root, "release", _role_keys(keys, "release"), "manifest")  # fail before work
    _signers(root, "catalog", _role_keys(keys, "catalog"), "catalog")
    if not components:
        raise FormatError("a release needs at least one component")
    for c in components:
        if c.activation not in ACTIVATIONS:
            raise FormatError(f"component {c.name}: activation must be relaunch or reboot")
        patch_relpath(release_id, c.name)  # validates the name
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise FormatError("a component is listed twice")
    for c in components:
        for which, image in (("base", c.base_image), ("new", c.new_image)):
            if not Path(image).is_file():
                raise FormatError(f"component {c.name}: {which} image {image} is not a file")

    releases: list[ComponentRelease] = []
    for c in components:
        rel = patch_relpath(release_id, c.name)
        say(f"{c.name}: sealing base image {c.base_image}")
        base_seal = seal_image(
            c.base_image, threads=threads, progress=_step(progress, f"{c.name}: seal base")
        )
        say(f"{c.name}: sealing new image {c.new_image}")
        target_seal = seal_image(
            c.new_image,
            salt=base_seal.salt,
            threads=threads,
            progress=_step(progress, f"{c.name}: seal new"),
        )
        dest = r.resolve(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        say(f"{c.name}: making patch {rel}")
        with atomic_write(dest) as f:
            os.fchmod(f.fileno(), 0o644)
            diff(
                c.base_image,
                c.new_image,
                f,
                threads=threads,
                progress=_step(progress, f"{c.name}: patch"),
            )
        size, digest = _sha256_file(dest)
        releases.append(
            ComponentRelease(
                name=c.name,
                activation=c.activation,
                base=SealRef.from_seal(base_seal),
                target=SealRef.from_seal(target_seal),
                patch=PatchRef(path=rel, sha256=digest, size=size),
                cves=tuple(c.cves),
            )
        )
        say(f"{c.name}: patch {size} bytes, sha256 {digest[:16]}...")

    if store_base_images:
        for build in builds:
            add_os_images(r, os_version, build, {c.name: c.base_image for c in components})
    return add_release(
        r,
        release_id=release_id,
        os_version=os_version,
        builds=builds,
        supplemental_build=supplemental_build,
        components=releases,
        keys=keys,
        published=published,
        expires=expires,
        catalog_expires=catalog_expires,
        log=log,
    )


def _check_release_fields(
    release_id: str,
    os_version: str,
    builds: Sequence[str],
    supplemental_build: str,
    published: datetime,
    expires: datetime,
) -> None:
    """Refuse bad release fields before any expensive work (same rules as the manifest)."""
    slug = release_slug(release_id)
    if not slug.startswith(f"{os_version}-") or slug.count("-") != 1:
        raise FormatError(f"release id {release_id!r} does not belong to OS version {os_version!r}")
    check_builds(list(builds), "builds")
    check_build(supplemental_build, "supplemental_build")
    if format_time(expires) <= format_time(published):
        raise FormatError("expires must be after published")


@_exclusive
def add_release(
    repo: Repository | PathLike,
    *,
    release_id: str,
    os_version: str,
    builds: Sequence[str],
    supplemental_build: str,
    components: Sequence[ComponentRelease],
    keys: KeyMap,
    published: datetime,
    expires: datetime,
    catalog_expires: datetime | None = None,
    log: Log | None = None,
    supplemental_builds: Mapping[str, str] | None = None,
) -> ReleaseManifest:
    """Sign and list a release whose components (seals, patch files) already exist.

    The manifest gets the next sequence number and is signed by the release role;
    the catalog gets version + 1 and is signed by the catalog role, and is written
    last. :func:`build_release` calls this after making seals and patches, and
    :mod:`bsipatch.vendor.build` after a matrix build (per-build components,
    ``supplemental_builds`` per device variant).

    Returns:
        The manifest.

    Raises:
        MetadataError: the release id is already in the catalog.
        FormatError: invalid fields.
        ThresholdError: not enough trusted release or catalog keys.
    """
    say = log or (lambda _msg: None)
    r = _repo(repo)
    root = load_root(r)
    catalog = load_catalog(r, root)
    if catalog.get(release_id) is not None:
        raise MetadataError(f"release {release_id} is already in the catalog")
    release_signers = _signers(root, "release", _role_keys(keys, "release"), "manifest")
    manifest = ReleaseManifest(
        release_id=release_id,
        os_version=os_version,
        builds=tuple(builds),
        supplemental_build=supplemental_build,
        published=format_time(published),
        sequence=catalog.max_sequence + 1,
        expires=format_time(expires),
        components=tuple(components),
        supplemental_builds=dict(supplemental_builds or {}),
    )
    data = keymod.sign_envelope(manifest.to_dict(), release_signers)
    mpath = r.write_manifest(release_id, data)
    entry = CatalogEntry.for_manifest(
        manifest,
        manifest_path=mpath,
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        manifest_size=len(data),
    )
    new_catalog = catalog.with_entries(
        [*catalog.releases, entry],
        version=catalog.version + 1,
        expires=format_time(catalog_expires or published + timedelta(days=DEFAULT_CATALOG_DAYS)),
    )
    _write_catalog(r, root, new_catalog, keys)
    say(f"catalog version {new_catalog.version}: added {release_id} (sequence {manifest.sequence})")
    return manifest


@_exclusive
def withdraw(
    repo: Repository | PathLike,
    release_id: str,
    keys: KeyMap,
    now: datetime,
    *,
    catalog_expires: datetime | None = None,
) -> Catalog:
    """Mark a release withdrawn in a new catalog version (signed by the catalog role).

    Returns:
        The new catalog.

    Raises:
        MetadataError: the catalog does not list the release, or it is already withdrawn.
    """
    r = _repo(repo)
    root = load_root(r)
    catalog = load_catalog(r, root)
    entry = catalog.get(release_id)
    if entry is None:
        raise MetadataError(f"the catalog does not list release {release_id!r}")
    if entry.withdrawn:
        raise MetadataError(f"release {release_id} is already withdrawn")
    entries = [replace(e, withdrawn=True) if e is entry else e for e in catalog.releases]
    new = catalog.with_entries(
        entries,
        version=catalog.version + 1,
        expires=format_time(catalog_expires or now + timedelta(days=DEFAULT_CATALOG_DAYS)),
    )
    _write_catalog(r, root, new, keys)
    return new


@_exclusive
def rotate_root(
    repo: Repository | PathLike,
    *,
    old_root_keys: Sequence[PrivateKey],
    new_keys: Mapping[str, Sequence[PrivateKey | PublicKey]],
    now: datetime,
    expires: datetime | None = None,
    thresholds: Mapping[str, int] | None = None,
) -> Root:
    """Publish root version N+1: ``roots/<N+1>.root.json`` and ``root.json``.

    It is signed by a threshold of the current root's root keys
    (``old_root_keys``) and by a threshold of its own root keys (the private keys
    among ``new_keys["root"]``). A key left out of ``new_keys`` is revoked. After
    rotating the release or catalog keys, call :func:`resign`.

    Returns:
        The new root.

    Raises:
        ThresholdError: not enough old or new root keys to sign.
    """
    r = _repo(repo)
    old = load_root(r)
    new = Root.build(
        new_keys,
        version=old.version + 1,
        expires=expires or now + timedelta(days=DEFAULT_ROOT_DAYS),
        thresholds=thresholds,
    )
    old_signers = _signers(old, "root", old_root_keys, "new root (old root keys)")
    new_private = [k for k in new_keys.get("root", ()) if isinstance(k, PrivateKey)]
    new_signers = _signers(new, "root", new_private, "new root (its own keys)")
    r.write_root(new.version, keymod.sign_envelope(new.to_dict(), [*old_signers, *new_signers]))
    return new


def _check_catalog_any_root(r: Repository, current: Root, env: Envelope) -> None:
    """Demand the catalog is signed by the catalog role of the current or an earlier root."""
    try:
        check_signatures(current, "catalog", env, "repository catalog")
        return
    except SignatureError as first:
        error = first
    for n in sorted(r.root_versions(), reverse=True):
        if n >= current.version:
            continue
        older = parse_envelope(r.read_root(n), max_size=MAX_ROOT_SIZE, what=f"root {n}")
        try:
            check_signatures(Root.from_dict(older.signed), "catalog", env, "repository catalog")
            return
        except SignatureError:
            continue
    raise error


@_exclusive
def resign(
    repo: Repository | PathLike,
    keys: KeyMap,
    now: datetime,
    *,
    catalog_expires: datetime | None = None,
) -> Catalog:
    """Re-sign every manifest (release role) and the catalog (catalog role, version + 1)
    with keys trusted by the current root, e.g. after :func:`rotate_root` revoked a key.

    The current catalog must be signed by the catalog role of the current root or
    of an earlier one in ``roots/`` (its keys may just have been revoked), so a
    catalog an outsider planted is not re-signed. The manifests' contents are kept
    and re-signed; their new digests go into the new catalog.

    Returns:
        The new catalog.
    """
    r = _repo(repo)
    root = load_root(r)
    env = parse_envelope(r.read_catalog(), max_size=MAX_CATALOG_SIZE, what="catalog")
    _check_catalog_any_root(r, root, env)
    catalog = Catalog.from_dict(env.signed)
    release_signers = _signers(root, "release", _role_keys(keys, "release"), "manifests")
    entries = []
    for e in catalog.releases:
        old_data = r.read(e.manifest_path, max_size=MAX_MANIFEST_SIZE)
        if hashlib.sha256(old_data).hexdigest() != e.manifest_sha256:
            raise MetadataError(f"manifest of {e.release_id} does not match the catalog")
        menv = parse_envelope(old_data, max_size=MAX_MANIFEST_SIZE, what="manifest")
        manifest = ReleaseManifest.from_dict(menv.signed)
        data = keymod.sign_envelope(manifest.to_dict(), release_signers)
        r.write(e.manifest_path, data)
        entries.append(
            replace(e, manifest_sha256=hashlib.sha256(data).hexdigest(), manifest_size=len(data))
        )
    new = catalog.with_entries(
        entries,
        version=catalog.version + 1,
        expires=format_time(catalog_expires or now + timedelta(days=DEFAULT_CATALOG_DAYS)),
    )
    _write_catalog(r, root, new, keys)
    return new
