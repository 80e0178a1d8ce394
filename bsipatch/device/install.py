"""Install, roll back, uninstall, boot and garbage-collect releases on a preboot volume.

Every operation holds the preboot lock, runs recovery first, writes its intent to the
journal, prepares everything it needs under names nothing refers to (fsynced), and then
commits with ONE atomic replacement of ``state.json``. A crash before that replacement
leaves the previous state (recovery removes the leftovers); a crash after it leaves the
new state (recovery finishes the clean-up).

install streams each component's patch through :func:`bsipatch.delta.apply.apply` into a
staging directory, binds the patch header to the manifest (its old and new image sizes and
SHA-256 must be the signed ones, checked before anything is sized or allocated), checks the
patch bytes against the manifest (size, SHA-256) and the produced image against the
manifest's target seal (:func:`bsipatch.seal.tree.verify_image`), and only then renames
the staging directory into ``releases/`` and switches state.

This module does not decide whether a release is genuine, current or allowed (that is
:mod:`bsipatch.trust.client` and the agent's policy): it is handed a verified
:class:`~bsipatch.trust.manifest.ReleaseManifest`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from bsipatch._crashpoints import crashpoint
from bsipatch._io import PathLike, os_error_to_staging
from bsipatch.device import health
from bsipatch.device.activate import activate, check_applicable, reactivate, refuse_active
from bsipatch.device.ops import boot, gc, os_update, rollback, uninstall
from bsipatch.device.pending import PendingDir
from bsipatch.device.preboot import (
    Preboot,
    fsync_file,
    json_bytes,
    release_slug,
    seal_record_dict,
    write_durable,
)
from bsipatch.errors import (
    BsipatchError,
    DiskFullError,
    PatchTooLarge,
    SealError,
    StateError,
    TargetMismatch,
    WrongBaseImage,
    WrongTarget,
)

__all__ = [
    "boot",
    "gc",
    "install_release",
    "load_manifest",
    "open_patch_in",
    "os_update",
    "rollback",
    "uninstall",
]

Progress = Callable[[int, int], None]


class _CheckedPatch(io.RawIOBase):
    """A reader over a patch stream that counts and hashes what passes through it.

    Refuses (PatchTooLarge) to deliver more bytes than the manifest declares, so an
    endless stream cannot fill the disk or run forever.
    """

    def __init__(self, raw: BinaryIO, limit: int, name: str) -> None:
        super().__init__()
        self.raw = raw
        self.limit = limit
        self.name_ = name
        self.size = 0
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        want = min(len(view), self.limit - self.size + 1)
        if want <= 0:
            want = 1
        data = self.raw.read(want)
        if not data:
            return 0
        n = len(data)
        self.size += n
        if self.size > self.limit:
            raise PatchTooLarge(
                f"patch of {self.name_} is longer than the {self.limit} bytes the manifest declares"
            )
        view[:n] = data
        self.hash.update(data)
        return n

    def drain(self) -> None:
        """Read to the end of the stream (bounded by the limit)."""
        while self.read(1 << 16):
            pass


def _verified_key(pb: Preboot, image: Path) -> str:
    st = image.stat()
    return f"{image.relative_to(pb.path)}@{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def _ref_key(ref: Any) -> str:
    return f"{ref.root_hash.lower()}:{ref.salt.lower()}:{int(ref.size)}"


def _load_verified(pb: Preboot) -> dict[str, list[str]]:
    try:
        data = json.loads((pb.path / "verified.json").read_bytes())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _lineage(comp: Any) -> bool:
    """True when the manifest seals base and target with one salt (see leafcache)."""
    return str(comp.base.salt).lower() == str(comp.target.salt).lower()


def _find_source(
    pb: Preboot, state: dict[str, Any], comp: Any, cache: dict[str, list[str]]
) -> tuple[Path, Any, bool]:
    """The installed image of ``comp.name`` that matches the manifest's base seal.

    Returns ``(image, leaves, verified_now)``. For a lineage-salt component ``leaves``
    are the image's trusted leaves under the base seal (from :mod:`bsipatch.seal.leafcache`,
    else computed while verifying the image, then stored); otherwise ``None``.
    ``verified_now`` is false when only ``verified.json`` vouched for the image.
    """
    from bsipatch.seal import leafcache
    from bsipatch.seal.tree import verified_leaves, verify_image

    want_leaves = _lineage(comp)

    candidates: list[Path] = [pb.path / state["os"]["base"] / f"{comp.name}.img"]
    if state["chain"]:
        candidates.append(pb.releases_dir / state["chain"][-1] / f"{comp.name}.img")
    seen: set[int] = set()
    base_seal = comp.base.to_seal()
    for image in candidates:
        try:
            st = image.stat()
        except FileNotFoundError:
            continue
        if st.st_ino in seen:
            continue
        seen.add(st.st_ino)
        if st.st_size != int(comp.base.size):
            continue
        key = _verified_key(pb, image)
        if want_leaves:
            leaves = leafcache.load(pb.path, image, base_seal)
            if leaves is not None:
                return image, leaves, True
            ident = leafcache.identity(image)
            try:
                leaves = verified_leaves(image, base_seal)
            except SealError:
                continue
            if _ref_key(comp.base) not in cache.get(key, []):
                cache.setdefault(key, []).append(_ref_key(comp.base))
            leafcache.store(pb.path, image, base_seal, leaves, ident)
            return image, leaves, True
        if _ref_key(comp.base) in cache.get(key, []):
            return image, None, False
        try:
            verify_image(image, base_seal)
        except SealError:
            continue
        cache.setdefault(key, []).append(_ref_key(comp.base))
        return image, None, True
    raise WrongBaseImage(
        f"no installed image of {comp.name} matches the patch's base seal "
        f"(root {comp.base.root_hash[:16]}..., {comp.base.size} bytes): "
        "the patch is for another base"
    )


def _check_space(pb: Preboot, needed: int) -> None:
    """Refuse up front (DiskFullError) when the volume cannot hold the new images."""
    try:
        st = os.statvfs(pb.path)
    except OSError as exc:
        raise os_error_to_staging(exc, f"checking free space on {pb.path}") from exc
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise DiskFullError(
            f"{pb.path}: no space left for the new images: they need {needed} bytes, "
            f"{free} bytes are free"
        )


def _signed_images(comp: Any) -> dict[str, Any]:
    """The sizes and SHA-256 the patch header must declare: the signed source image (the
    one :func:`_find_source` verified against the same signed seal) and the signed target.

    Raises:
        FormatError: the manifest lacks an image's SHA-256 (the check is never skipped).
    """
    from bsipatch.errors import FormatError

    want = {}
    for key, ref in (("old", comp.base), ("new", comp.target)):
        sha = getattr(ref, "sha256", None)
        if not isinstance(sha, str) or len(sha) != 64:
            raise FormatError(
                f"manifest of {comp.name} gives no SHA-256 of its {key} image, found {sha!r}; "
                "the patch header cannot be bound to it"
            )
        want[key] = (int(ref.size), sha)
    return {
        "expected_old_size": want["old"][0],
        "expected_old_sha256": want["old"][1],
        "expected_size": want["new"][0],
        "expected_sha256": want["new"][1],
    }


def _stage_component(
    pb: Preboot,
    state: dict[str, Any],
    comp: Any,
    stage: Path,
    open_patch: Callable[[Any], BinaryIO],
    cache: dict[str, list[str]],
    progress: Progress | None,
) -> dict[str, Any]:
    """Patch one component into ``stage`` and verify it; return how it was verified."""
    from bsipatch.delta.apply import Provenance, apply
    from bsipatch.seal.tree import check_leaves, verify_image

    source, leaves, verified_now = _find_source(pb, state, comp, cache)
    seal = comp.target.to_seal()
    prov = Provenance(leaves, salt=seal.salt) if leaves is not None else None
    out = stage / f"{comp.name}.img"
    raw = open_patch(comp)
    try:
        reader = _CheckedPatch(raw, int(comp.patch.size), comp.name)
        # the result is checked against the target seal below, and the source against
        # the base seal (now, or through the leaf cache): the patch's whole-image digests
        # would only repeat that. A source that only verified.json vouches for is still
        # hashed, so a base changed since reads as WrongBaseImage, as it always did.
        apply(
            source,
            cast(BinaryIO, reader),
            out,
            max_patch_size=int(comp.patch.size),
            progress=progress,
            verify_old=not verified_now,
            verify_new=False,
            provenance=prov,
            **_signed_images(comp),  # the header is bound to them before anything is sized
        )
        reader.drain()
    finally:
        close = getattr(raw, "close", None)
        if close is not None:
            close()
    if reader.size != int(comp.patch.size) or not hmac.compare_digest(
        reader.hash.hexdigest(), comp.patch.sha256.lower()
    ):
        raise TargetMismatch(
            f"patch of {comp.name}: got {reader.size} bytes with SHA-256 "
            f"{reader.hash.hexdigest()}, manifest says {comp.patch.size} bytes with "
            f"{comp.patch.sha256}"
        )
    out.chmod(0o444)
    fsync_file(out)
    crashpoint("install.applied")
    if prov is not None:
        # copied blocks' leaves are the verified base's, the others were hashed as made
        check_leaves(prov.leaves, seal)
        how: dict[str, Any] = {
            "seal_check": "leaves",
            "copied_blocks": prov.copied_blocks,
            "zero_blocks": prov.zero_blocks,
            "hashed_blocks": prov.hashed_blocks,
            "copy_method": prov.copy_method,
        }
    else:
        verify_image(out, seal)
        how = {"seal_check": "full"}
    write_durable(stage / f"{comp.name}.seal.json", json_bytes(seal_record_dict(seal)))
    crashpoint("install.component-staged")
    return how


def install_release(
    preboot: Preboot,
    manifest: Any,
    open_patch: Callable[[Any], BinaryIO],
    *,
    progress: Progress | None = None,
    max_boots: int = health.DEFAULT_MAX_BOOTS,
    max_failures: int = health.DEFAULT_MAX_FAILURES,
) -> dict[str, Any]:
    """Install and activate a release atomically (tentatively: see :mod:`.health`).

    Every component the manifest lists is patched from the installed image matching
    its base seal into a private work directory (:mod:`bsipatch.device.pending`),
    WITHOUT the preboot lock, so a slow download never blocks rollback, boot or
    uninstall; the lock is taken only to activate. Header, patch stream and produced image
    are checked against the manifest (signed images, patch size/SHA-256, target seal).
    Components the manifest does not list are hard-linked from the base images.
    Only when every component verified is the release renamed into place and made
    active in one atomic state switch: ``relaunch`` components at once, ``reboot``
    components at the next :func:`boot`. It stays *tentative* until
    :func:`bsipatch.device.health.confirm`: after ``max_boots`` unconfirmed boots, or
    ``max_failures`` consecutive failed launches of a component it changed, the
    device falls back by itself. Then :func:`gc` runs.

    Args:
        preboot: the device's preboot volume.
        manifest: a verified :class:`bsipatch.trust.manifest.ReleaseManifest`.
        open_patch: returns a readable binary stream (need not be seekable) of the
            patch of a :class:`~bsipatch.trust.manifest.ComponentRelease`; it is closed here.
        progress: ``(done, total)`` output-bytes callback.
        max_boots, max_failures: the trial's limits (recorded in ``state.json``).

    Returns:
        ``{"release", "slug", "changed", "activated", "pending", "bytes_written",
        "patch_bytes", "verification", "tentative"}``; ``verification`` says per changed
        component how the target seal was checked: ``{"seal_check": "full"}`` or
        ``{"seal_check": "leaves", "copied_blocks", ...}`` (:mod:`bsipatch.seal.leafcache`).

    Raises:
        LockedError: another process is changing the volume.
        WrongTarget: the release is for another OS build or unknown components.
        WrongBaseImage: no installed image matches a component's base seal.
        PatchError: the patch is corrupt, truncated or too large.
        HeaderMismatch: the header's old/new image is not the signed one (nothing sized).
        TargetMismatch: patch bytes differ from the manifest's size/SHA-256.
        SealMismatch: a produced image fails its target seal.
        StateError: the release is already installed and active, or the device
            changed OS while the release was being staged.
        StagingError: disk full, read-only volume or another I/O error.

    A release that ``rollback`` or ``uninstall`` left on the volume (kept for the
    running system until the next boot) is activated again after its images verify,
    without downloading anything.

    In every error case the active release is unchanged and no staged file is kept.
    """
    pb = preboot
    limits = {"max_boots": max_boots, "max_failures": max_failures}
    health.tentative_record(pb, "", {}, **limits)  # refuse bad limits before any work
    state = pb.read_state()
    check_applicable(pb, state, manifest)
    slug = release_slug(manifest.release_id)
    refuse_active(state, slug, manifest.release_id)
    if (pb.releases_dir / slug).is_dir():
        return reactivate(pb, manifest, slug, limits)
    total = sum(int(c.target.size) for c in manifest.components)
    _check_space(pb, total)
    try:
        work = PendingDir(pb.path)
    except OSError as exc:
        raise os_error_to_staging(exc, f"installing {manifest.release_id}") from exc
    with work:
        crashpoint("install.staging-created")
        try:
            cache, verification = _stage_all(pb, state, manifest, work.path, open_patch, progress)
        except OSError as exc:
            if isinstance(exc, BsipatchError):
                raise
            raise os_error_to_staging(exc, f"installing {manifest.release_id}") from exc
        return activate(pb, manifest, state["os"]["base"], work, cache, verification, limits)


def _stage_all(
    pb: Preboot,
    state: dict[str, Any],
    manifest: Any,
    stage: Path,
    open_patch: Callable[[Any], BinaryIO],
    progress: Progress | None,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Patch and verify every changed component into ``stage`` (no lock held)."""
    total = sum(int(c.target.size) for c in manifest.components)
    done_before = 0

    def comp_progress(done: int, _total: int) -> None:
        if progress is not None:
            progress(done_before + done, total)

    cache = _load_verified(pb)
    verification = {}
    for comp in manifest.components:
        verification[comp.name] = _stage_component(
            pb, state, comp, stage, open_patch, cache, comp_progress
        )
        done_before += int(comp.target.size)
    return cache, verification


# --- helpers for the CLI and tests -------------------------------------------------------


def load_manifest(data: bytes | dict[str, Any]) -> Any:
    """Parse a release manifest (a signed envelope or its ``signed`` part) WITHOUT trust checks.

    For the low-level ``bsipatch install`` command and tests: the agent verifies
    TUF metadata with :mod:`bsipatch.trust.client` instead.

    Raises:
        FormatError: not a manifest.
    """
    from bsipatch.errors import FormatError
    from bsipatch.trust import manifest as m

    try:
        obj = json.loads(data) if isinstance(data, (bytes, bytearray, str)) else data
        if isinstance(obj, dict) and "signed" in obj:
            obj = obj["signed"]
        return m.ReleaseManifest.from_dict(obj)
    except (ValueError, TypeError) as exc:  # not JSON at all (FormatError passes through)
        raise FormatError(f"not a release manifest: {exc}") from exc


def open_patch_in(directory: PathLike) -> Callable[[Any], BinaryIO]:
    """An ``open_patch`` for :func:`install_release` that reads patches from a directory.

    The patch of a component is ``directory / component.patch.path`` (the repository
    layout) or, if that does not exist, ``directory / basename(path)``.
    """
    root = Path(directory)

    def _open(comp: Any) -> BinaryIO:
        rel = Path(comp.patch.path)
        if rel.is_absolute() or ".." in rel.parts:
            raise WrongTarget(f"patch path {comp.patch.path!r} leaves the patch directory")
        for candidate in (root / rel, root / rel.name):
            if candidate.is_file():
                return open(candidate, "rb")
        raise StateError(f"patch of {comp.name} not found: looked for {root / rel}")

    return _open
