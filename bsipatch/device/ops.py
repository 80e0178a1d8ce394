"""Rollback, uninstall, boot, garbage collection and OS updates on a preboot volume.

Each operation holds the preboot lock, runs recovery first, verifies what it goes
back to, and commits with one atomic replacement of ``state.json``
(:func:`bsipatch.device.txn.switch`). ``boot`` also counts boots of a tentative release
and falls back from it (:mod:`bsipatch.device.health`). Installing is
:mod:`bsipatch.device.install`; this module does not apply patches or decide trust.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from bsipatch._crashpoints import crashpoint
from bsipatch._io import PathLike, os_error_to_staging
from bsipatch.device import health
from bsipatch.device.preboot import Preboot, build_base, remove_stray_temps
from bsipatch.device.txn import abort, now_entry, settle, switch, verified_previous
from bsipatch.errors import BsipatchError, RollbackFailed, SealError

__all__ = ["boot", "gc", "os_update", "rollback", "uninstall"]

Progress = Any


def rollback(preboot: Preboot) -> dict[str, Any]:
    """Go back to the release that was active before the current one (or the base).

    The images of the release rolled back to are verified against their seals first.

    Returns:
        ``{"from": release id, "to": release id or None (base images)}``.

    Raises:
        StateError: no release is installed.
        RollbackFailed: the earlier images do not verify (the device stays as it is).
        LockedError, StagingError: as for install.
    """
    pb = preboot
    with pb.lock():
        pb.recover()
        chain, from_id, to_id = verified_previous(
            pb,
            pb.read_state(),
            "no release is installed: nothing to roll back",
            lambda frm, to, exc: (
                f"cannot roll back to {to or 'the base images'}: {exc}; staying on {frm}"
            ),
        )

        settle(pb, "rollback", chain=chain[:-1], release=to_id, previous=from_id)
        gc(pb)
        return {"from": from_id, "to": to_id}


def uninstall(preboot: Preboot) -> dict[str, Any]:
    """Return to the base images of the installed OS version and remove every release.

    The base images are checked byte for byte (seal and the SHA-256 recorded when they
    were installed) before anything changes. ``reboot`` components keep running the
    booted release until the next :func:`boot`.

    Returns:
        ``{"removed": [release ids], "previous": release id or None}``.

    Raises:
        RollbackFailed: a base image does not verify (the device stays as it is).
        LockedError, StagingError: as for install.
    """
    pb = preboot
    with pb.lock():
        pb.recover()
        state = pb.read_state()
        chain = state["chain"]
        removed = [pb.release_id_of(s) for s in chain]
        previous = pb.release_id_of(chain[-1]) if chain else None
        try:
            pb.verify_selection(state["os"]["base"], None, exact=True)
        except (SealError, OSError, BsipatchError) as exc:
            raise RollbackFailed(
                f"cannot uninstall: base images do not verify: {exc}; staying on "
                f"{previous or 'the base images'}"
            ) from exc
        if chain:
            settle(pb, "uninstall", chain=[], previous=previous, removed=removed)
        gc(pb)
        return {"removed": removed, "previous": previous}


def boot(preboot: Preboot) -> dict[str, Any]:
    """What the device does at start: recover, count or fall back, activate, gc.

    A tentative release that changes a ``reboot`` component has its boots counted; once
    it has booted ``max_boots`` times without :func:`bsipatch.device.health.confirm`,
    this boot falls back to the previous release (verified first) and records why.
    Then pending ``reboot`` components are activated.

    Returns:
        ``{"recovered": [...], "activated": [component names], "release": id or None,
        "fallback": {"from", "to", "reason"} or None, "tentative": {"release", "boots",
        "max_boots"} or None}``.

    Raises:
        LockedError, StagingError: as for install.
    """
    pb = preboot
    with pb.lock():
        recovered = pb.recover()
        fallback, boots = health.count_boot(pb, pb.read_state())
        state = pb.read_state()
        active = state["chain"][-1] if state["chain"] else None
        wanted = {"base": state["os"]["base"], "release": active}
        activated = [p["component"] for p in pb.status()["pending"]]
        if state["booted"] != wanted or boots is not None:

            def mutate(s: dict[str, Any]) -> dict[str, Any]:
                entry: dict[str, Any] = {
                    "release": pb.release_id_of(active),
                    "activated": activated,
                }
                if boots is not None:
                    s["tentative"] = {**s["tentative"], "boots": boots}
                    entry["tentative_boot"] = boots
                s["booted"] = wanted
                s["history"] = [*s.get("history", []), now_entry(pb, "boot", **entry)]
                return s

            switch(pb, "boot", mutate)
        gc(pb)
        # nothing runs before boot: the agent's interrupted atomic writes can go too
        remove_stray_temps(pb.path / "agent")
        t = health.tentative(pb.read_state())
        return {
            "recovered": recovered,
            "activated": activated,
            "release": pb.release_id_of(active),
            "fallback": fallback,
            "tentative": None
            if t is None
            else {
                "release": pb.release_id_of(active),
                "boots": t["boots"],
                "max_boots": t["max_boots"],
            },
        }


def gc(preboot: Preboot) -> dict[str, Any]:
    """Keep the base images, the active and the previous release (and the booted one).

    Older entries of the rollback chain are dropped (one atomic state switch), then
    every release or base directory nothing refers to is removed. Readers that have
    an image open keep reading it (the inode lives until they close it).

    Returns:
        ``{"removed": [relative paths]}``.

    Raises:
        LockedError, StagingError: as for install.
    """
    pb = preboot
    with pb.lock():
        try:
            state = pb.read_state()
            if len(state["chain"]) > 2:
                keep = state["chain"][-2:]

                def mutate(s: dict[str, Any]) -> dict[str, Any]:
                    s["chain"] = keep
                    return s

                state = switch(pb, "gc", mutate)
            removed = pb.sweep(state)
        except OSError as exc:
            raise os_error_to_staging(exc, f"collecting garbage in {pb.path}") from exc
        from bsipatch.seal import leafcache

        with contextlib.suppress(OSError):  # entries of removed images: only a cache
            leafcache.prune(pb.path)
        health.forget_readbacks(pb.path, pb.read_state())
        return {"removed": removed}


def os_update(
    preboot: Preboot,
    *,
    os_version: str,
    build: str,
    images: Mapping[str, PathLike],
    activation: dict[str, str],
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Install the base images of a new OS version and retire every installed release.

    The new base is built in staging, sealed, renamed into ``base/`` and made current in
    one atomic state switch. Releases of the old OS are removed; the old base stays
    while a ``reboot`` component still runs from it (until the next :func:`boot`).

    Returns:
        ``{"os_version", "build", "retired": [release ids]}``.

    Raises:
        StateError: that OS version and build is already installed.
        ValueError: bad component names or activation values.
        LockedError, StagingError: as for install.
    """
    pb = preboot
    with pb.lock():
        pb.recover()
        state = pb.read_state()
        retired = [pb.release_id_of(s) for s in state["chain"]]
        try:
            tx = pb.journal.begin("os_update", os_version=os_version, build=build)
        except OSError as exc:
            raise os_error_to_staging(exc, "os update") from exc
        try:
            base_rel = build_base(
                pb.path, "staging", tx, os_version, build, images, activation, progress
            )
            new_state = dict(state)
            new_state["os"] = {"version": os_version, "build": build, "base": base_rel}
            new_state["chain"] = []
            new_state["tentative"] = None
            new_state["last_tx"] = tx
            new_state["history"] = [
                *state.get("history", []),
                now_entry(pb, "os_update", os_version=os_version, build=build, retired=retired),
            ]
            pb.write_state(new_state)
            crashpoint("os_update.committed")
            pb.journal.end(tx)
        except BaseException as exc:
            abort(pb)
            if isinstance(exc, OSError) and not isinstance(exc, BsipatchError):
                raise os_error_to_staging(exc, "os update") from exc
            raise
        pb.journal.compact()
        gc(pb)
        return {"os_version": os_version, "build": build, "retired": retired}
