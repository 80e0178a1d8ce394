"""Tentative activation: boot counting, health reports, confirmation and automatic fallback.

A release that :func:`bsipatch.device.install.install_release` activates is
*tentative* (``state.json`` ``"tentative"``) until :func:`confirm` makes it permanent.
Until then:

* ``reboot`` components: each :func:`bsipatch.device.ops.boot` counts a boot of it
  (:func:`count_boot`); once it has booted ``max_boots`` times (default 3) without a
  confirmation, the next boot falls back to the previous release (:func:`fall_back`).
* ``relaunch`` components: the launching application or its supervisor reports each
  launch (:func:`report`); ``max_failures`` consecutive failures (default 3) of a
  component the release changed fall back at once.
* The first verified open of each image the release wrote reads it back from disk
  and checks it against its seal (:func:`readback_check`, called by
  :meth:`bsipatch.device.preboot.Preboot.open_component`); :func:`confirm` does the
  same for every image not yet read back.

A fallback verifies the images it goes back to first (as ``rollback`` does), records
why in ``state.json`` (``"fallen_back"``, newest last) and the history, and is shown by
``status``; the agent does not reinstall a fallen-back release by itself. This module
decides nothing about trust and does not choose releases.
"""

from __future__ import annotations

from typing import Any

from bsipatch._io import os_error_to_staging
from bsipatch.device.preboot import Preboot, seal_from_record
from bsipatch.device.readback import forget_readbacks, readback_check, tentative
from bsipatch.device.txn import settle, switch, verified_previous
from bsipatch.errors import RollbackFailed, SealError

DEFAULT_MAX_BOOTS = 3
DEFAULT_MAX_FAILURES = 3
FALLBACK_LIMIT = 20

__all__ = [
    "DEFAULT_MAX_BOOTS",
    "DEFAULT_MAX_FAILURES",
    "confirm",
    "count_boot",
    "fall_back",
    "forget_readbacks",
    "readback_check",
    "report",
    "tentative",
    "tentative_record",
]


def tentative_record(
    pb: Preboot,
    slug: str,
    changed: dict[str, str],
    *,
    max_boots: int = DEFAULT_MAX_BOOTS,
    max_failures: int = DEFAULT_MAX_FAILURES,
) -> dict[str, Any]:
    """The ``"tentative"`` entry an install commits for release ``slug``.

    Args:
        pb: the preboot volume.
        slug: the release directory name.
        changed: component name -> activation, of the components the release changes.
        max_boots: boots allowed without confirmation (reboot components).
        max_failures: consecutive failed launches that fall back (relaunch components).
    """
    if max_boots < 1 or max_failures < 1:
        raise ValueError("max_boots and max_failures must be at least 1")
    return {
        "release": slug,
        "since": pb.clock(),
        "components": sorted(changed),
        "counts_boots": any(a == "reboot" for a in changed.values()),
        "boots": 0,
        "max_boots": max_boots,
        "failures": {},
        "max_failures": max_failures,
    }


def fall_back(pb: Preboot, reason: str) -> dict[str, Any]:
    """Leave the active (tentative) release for the previous one. Lock held.

    The images gone back to are verified first (the base images byte for byte).

    Returns:
        ``{"from": release id, "to": release id or None, "reason": reason}``.

    Raises:
        RollbackFailed: the previous images do not verify (nothing changes).
    """
    chain, from_id, to_id = verified_previous(
        pb,
        pb.read_state(),
        "no release is installed: nothing to fall back from",
        lambda frm, to, exc: f"cannot fall back from {frm} to {to or 'the base images'}: {exc}",
    )
    record = {"release": from_id, "slug": chain[-1], "to": to_id, "reason": reason}

    def note(s: dict[str, Any]) -> None:
        record["time"] = pb.clock()
        s["fallen_back"] = [*s.get("fallen_back", []), record][-FALLBACK_LIMIT:]

    settle(
        pb, "fallback", chain=chain[:-1], also=note, release=to_id, previous=from_id, reason=reason
    )
    # as rollback's gc does: what nothing refers to any more goes now, so an explicit
    # install of the same release later builds it afresh
    pb.sweep()
    forget_readbacks(pb.path, pb.read_state())
    return {"from": from_id, "to": to_id, "reason": reason}


def count_boot(pb: Preboot, state: dict[str, Any]) -> tuple[dict[str, Any] | None, int | None]:
    """At boot: fall back when the tentative release used up its boots. Lock held.

    Returns:
        ``(fallback, boots)``: the :func:`fall_back` result (or None), and the boot count
        to commit for the tentative release (or None when nothing is counted).
    """
    t = tentative(state)
    if t is None or not t.get("counts_boots"):
        return None, None
    boots, limit = int(t.get("boots", 0)), int(t.get("max_boots", DEFAULT_MAX_BOOTS))
    if boots < limit:
        return None, boots + 1
    reason = f"booted {boots} times without a health confirmation (limit {limit})"
    try:
        return fall_back(pb, reason), None
    except RollbackFailed:
        return None, boots + 1  # nothing verified to go back to: keep running it


def report(pb: Preboot, component: str, ok: bool) -> dict[str, Any]:
    """Record one launch of ``component``; fall back after too many consecutive failures.

    Only launches of components the tentative release changed count; a success resets
    the count. Nothing is written when nothing changes.

    Returns:
        ``{"component", "ok", "tentative": release id or None, "failures": int,
        "fallback": {...} or None}``.

    Raises:
        KeyError: no such component.
        LockedError, StagingError, RollbackFailed: as for rollback.
    """
    with pb.lock():
        try:
            pb.recover_locked()
        except OSError as exc:
            raise os_error_to_staging(exc, f"recovering {pb.path}") from exc
        state = pb.read_state()
        comps = pb.components(state)
        if component not in comps:
            raise KeyError(f"no component {component!r} (have {', '.join(sorted(comps))})")
        t = tentative(state)
        out: dict[str, Any] = {
            "component": component,
            "ok": ok,
            "tentative": pb.release_id_of(t["release"]) if t else None,
            "failures": 0,
            "fallback": None,
        }
        if t is None or component not in t.get("components", []):
            return out
        before = int(t.get("failures", {}).get(component, 0))
        failures = 0 if ok else before + 1
        out["failures"] = failures
        limit = int(t.get("max_failures", DEFAULT_MAX_FAILURES))
        if failures >= limit:
            reason = f"{component} failed to launch {failures} times in a row (limit {limit})"
            out["fallback"] = fall_back(pb, reason)
        elif failures != before:

            def mutate(s: dict[str, Any]) -> dict[str, Any]:
                s["tentative"] = {**t, "failures": {**t.get("failures", {}), component: failures}}
                return s

            switch(pb, "health", mutate)
        return out


def confirm(pb: Preboot) -> dict[str, Any]:
    """Make the tentative active release permanent (after reading its images back).

    Every image the release wrote that no open has read back yet is read from disk and
    checked against its seal first; if one does not match, the device falls back.

    Returns:
        ``{"confirmed": release id or None, "fallback": {...} or None}``.

    Raises:
        LockedError, StagingError, RollbackFailed: as for rollback.
    """
    with pb.lock():
        try:
            pb.recover_locked()
        except OSError as exc:
            raise os_error_to_staging(exc, f"recovering {pb.path}") from exc
        state = pb.read_state()
        t = tentative(state)
        if t is None:
            return {"confirmed": None, "fallback": None}
        directory = pb.releases_dir / t["release"]
        for name in t.get("components", []):
            try:
                seal = seal_from_record(pb.seal_record(directory, name))
                readback_check(pb.path, state, directory, name, seal, force=True)
            except SealError as exc:
                reason = f"{name} read back from disk does not match its seal: {exc}"
                return {"confirmed": None, "fallback": fall_back(pb, reason)}
        release_id = pb.release_id_of(t["release"])

        settle(pb, "confirm", release=release_id)
        forget_readbacks(pb.path, pb.read_state())
        return {"confirmed": release_id, "fallback": None}
