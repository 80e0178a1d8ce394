"""Activating a staged release: checks under the lock, the move into place, the commit.

:func:`activate` takes the preboot lock, moves the images staged by
:func:`bsipatch.device.install.install_release` under the journal into
``releases/<slug>``, hard-links the unchanged components and commits the release as
the tentative active one (:mod:`bsipatch.device.health`) in one atomic state switch.
:func:`reactivate` does the same for a release kept on the volume. No patching and
no trust decisions here.
"""

from __future__ import annotations

from typing import Any

from bsipatch._crashpoints import crashpoint
from bsipatch._io import atomic_write, fsync_dir, os_error_to_staging
from bsipatch.device import health
from bsipatch.device.ops import gc
from bsipatch.device.pending import PendingDir
from bsipatch.device.preboot import Preboot, json_bytes, release_slug, write_durable
from bsipatch.device.txn import abort, now_entry, switch
from bsipatch.errors import BsipatchError, SealError, StateError, WrongTarget


def check_applicable(pb: Preboot, state: dict[str, Any], manifest: Any) -> dict[str, str]:
    comps = pb.components(state)
    osv, build = state["os"]["version"], state["os"]["build"]
    if manifest.os_version != osv or build not in tuple(manifest.builds):
        raise WrongTarget(
            f"release {manifest.release_id} is for {manifest.os_version} builds "
            f"{', '.join(manifest.builds)}; this device runs {osv} {build}"
        )
    names = [c.name for c in manifest.components]
    if len(set(names)) != len(names):
        raise WrongTarget(f"release {manifest.release_id} lists a component twice: {names}")
    for c in manifest.components:
        if c.name not in comps:
            raise WrongTarget(
                f"release {manifest.release_id} patches {c.name!r}, which this device "
                f"does not have (has {', '.join(sorted(comps))})"
            )
    if not names:
        raise WrongTarget(f"release {manifest.release_id} changes no component")
    return comps


def refuse_active(state: dict[str, Any], slug: str, release_id: str) -> None:
    if slug in state["chain"]:
        raise StateError(
            f"release {release_id} is already installed "
            f"({'active' if state['chain'][-1:] == [slug] else 'kept for rollback'})"
        )


def _release_info(pb: Preboot, state: dict[str, Any], manifest: Any) -> dict[str, Any]:
    comps = pb.components(state)
    changed = {c.name for c in manifest.components}
    return {
        "release_id": manifest.release_id,
        "os_version": manifest.os_version,
        "builds": list(manifest.builds),
        "supplemental_build": getattr(manifest, "supplemental_build", None),
        "published": getattr(manifest, "published", None),
        "sequence": getattr(manifest, "sequence", None),
        "installed": pb.clock(),
        "base": state["os"]["base"],
        "components": {
            name: {
                "activation": comps[name],
                "changed": name in changed,
                **(
                    {
                        "cves": [c.id for c in manifest.component(name).cves],
                        "patch_sha256": manifest.component(name).patch.sha256,
                        "patch_size": int(manifest.component(name).patch.size),
                    }
                    if name in changed
                    else {}
                ),
            }
            for name in sorted(comps)
        },
    }


def activate(
    pb: Preboot,
    manifest: Any,
    staged_base: str,
    work: PendingDir,
    cache: dict[str, list[str]],
    verification: dict[str, Any],
    limits: dict[str, int],
) -> dict[str, Any]:
    """Take the lock, move the staged images under the journal, commit the switch."""
    with pb.lock():
        pb.recover()
        state = pb.read_state()
        comps = check_applicable(pb, state, manifest)
        slug = release_slug(manifest.release_id)
        refuse_active(state, slug, manifest.release_id)
        if state["os"]["base"] != staged_base or (pb.releases_dir / slug).exists():
            raise StateError(
                f"the device changed while {manifest.release_id} was being staged "
                "(an OS update or another install); nothing was changed, try again"
            )
        try:
            tx = pb.journal.begin("install", release=slug)
        except OSError as exc:
            raise os_error_to_staging(exc, f"installing {manifest.release_id}") from exc
        stage = pb.staging_dir / tx
        changed = {c.name for c in manifest.components}
        try:
            work.take(stage)
            fsync_dir(pb.staging_dir)
            base_dir = pb.path / state["os"]["base"]
            for name in sorted(set(comps) - changed):
                (stage / f"{name}.img").hardlink_to(base_dir / f"{name}.img")
                (stage / f"{name}.seal.json").hardlink_to(base_dir / f"{name}.seal.json")
            crashpoint("install.linked")
            write_durable(stage / "release.json", json_bytes(_release_info(pb, state, manifest)))
            fsync_dir(stage)
            crashpoint("install.staged")
            with atomic_write(pb.path / "verified.json") as f:
                f.write(json_bytes(cache))
            stage.rename(pb.releases_dir / slug)
            crashpoint("install.renamed")
            fsync_dir(pb.releases_dir)
            fsync_dir(pb.staging_dir)
            crashpoint("install.moved")
            _commit_install(pb, state, manifest, slug, tx, limits)
        except BaseException as exc:
            abort(pb)
            if isinstance(exc, OSError) and not isinstance(exc, BsipatchError):
                raise os_error_to_staging(exc, f"installing {manifest.release_id}") from exc
            raise
        pb.journal.compact()
        gc(pb)
    return _install_report(manifest, slug, comps, verification)


def _commit_install(
    pb: Preboot,
    state: dict[str, Any],
    manifest: Any,
    slug: str,
    tx: str,
    limits: dict[str, int],
) -> None:
    changed = {c.name for c in manifest.components}
    new_state = _on_trial(pb, dict(state), manifest, slug, limits)
    new_state["chain"] = [*state["chain"], slug]
    new_state["last_tx"] = tx
    new_state["history"] = [
        *state.get("history", []),
        now_entry(
            pb,
            "install",
            release=manifest.release_id,
            previous=pb.release_id_of(state["chain"][-1]) if state["chain"] else None,
            components=sorted(changed),
        ),
    ]
    pb.write_state(new_state)
    crashpoint("install.committed")
    pb.journal.end(tx)
    crashpoint("install.ended")


def _on_trial(
    pb: Preboot, state: dict[str, Any], manifest: Any, slug: str, limits: dict[str, int]
) -> dict[str, Any]:
    """``state`` with ``slug`` tentative; an explicit install lifts a fallback's block."""
    comps = pb.components(state)
    changed = {c.name: comps[c.name] for c in manifest.components}
    state["tentative"] = health.tentative_record(pb, slug, changed, **limits)
    state["fallen_back"] = [f for f in state.get("fallen_back", []) if f.get("slug") != slug]
    return state


def _install_report(
    manifest: Any, slug: str, comps: dict[str, str], verification: dict[str, Any]
) -> dict[str, Any]:
    changed = {c.name for c in manifest.components}
    return {
        "release": manifest.release_id,
        "slug": slug,
        "changed": sorted(changed),
        "activated": sorted(n for n in changed if comps[n] == "relaunch"),
        "pending": sorted(n for n in changed if comps[n] == "reboot"),
        "bytes_written": sum(int(c.target.size) for c in manifest.components),
        "patch_bytes": sum(int(c.patch.size) for c in manifest.components),
        "verification": verification,
        "tentative": True,
    }


def reactivate(pb: Preboot, manifest: Any, slug: str, limits: dict[str, int]) -> dict[str, Any]:
    """Make a release kept on the volume (after rollback/uninstall) active again.

    Its images are checked against their seals and its record against the manifest
    (same base, same patches) before the one atomic state switch.
    """
    with pb.lock():
        pb.recover()
        state = pb.read_state()
        comps = check_applicable(pb, state, manifest)
        refuse_active(state, slug, manifest.release_id)
        try:
            info = pb.release_info(slug)
            same = info.get("base") == state["os"]["base"] and all(
                info["components"].get(c.name, {}).get("patch_sha256") == c.patch.sha256
                for c in manifest.components
            )
            if same:
                pb.verify_selection(state["os"]["base"], slug)
        except (SealError, OSError, BsipatchError, KeyError, TypeError) as exc:
            raise StateError(
                f"release {manifest.release_id} kept on the volume does not verify: {exc}; "
                "boot the device first, then install it again"
            ) from exc
        if not same:
            raise StateError(
                f"release {manifest.release_id} kept on the volume differs from this manifest; "
                "boot the device first, then install it again"
            )
        changed = {c.name for c in manifest.components}

        def mutate(s: dict[str, Any]) -> dict[str, Any]:
            s = _on_trial(pb, s, manifest, slug, limits)
            s["chain"] = [*s["chain"], slug]
            s["history"] = [
                *s.get("history", []),
                now_entry(
                    pb,
                    "install",
                    release=manifest.release_id,
                    previous=pb.release_id_of(s["chain"][-2]) if len(s["chain"]) > 1 else None,
                    components=sorted(changed),
                    reactivated=True,
                ),
            ]
            return s

        switch(pb, "install", mutate)
        gc(pb)
    out = _install_report(manifest, slug, comps, {})
    out["reactivated"] = True
    out["verification"] = {c.name: {"seal_check": "full"} for c in manifest.components}
    return out
