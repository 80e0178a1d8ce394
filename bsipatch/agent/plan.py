"""The agent's planning: verified catalog + device state + policy -> decisions. Pure.

:func:`plan` says, for every release in the (TUF-verified) catalog, what the agent does
with it and why: wrong build, withdrawn, removed by the user, not newer than the active
release, below the device's floor, forbidden by policy, superseded, rejected (a patch for
another base, a component the device lacks), deferred (automatic install off), install,
or, when the active release is withdrawn, step back to the newest release that is not.
It does no I/O, reads no clock, and raises nothing for a bad release: the executor
(:mod:`bsipatch.agent.executor`) fetches, installs and records. Tested as a table
(tests/test_plan.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bsipatch.agent.policy import AutoInstallDecision, Policy
from bsipatch.errors import MetadataError
from bsipatch.trust.manifest import ReleaseManifest, SealRef
from bsipatch.trust.releases import Catalog, Release

__all__ = [
    "ACTIVE",
    "DEFER",
    "INSTALL",
    "SKIP",
    "STEP_BACK",
    "Decision",
    "DeviceView",
    "Plan",
    "StepBack",
    "plan",
]

INSTALL = "install"
DEFER = "defer"
SKIP = "skip"
ACTIVE = "active"
STEP_BACK = "step-back"


@dataclass
class Decision:
    """What the agent does with one release, and why.

    Attributes:
        release_id: e.g. ``"26.1 (a)"``.
        action: ``install``, ``defer``, ``skip``, ``active`` or ``step-back``.
        code: machine-readable reason: ``install``, ``deferred``, ``wrong_build``,
            ``withdrawn``, ``fallen_back``, ``removed``, ``not_newer``, ``below_floor``, ``policy``,
            ``superseded``, ``rejected``, ``active``, ``active_withdrawn``,
            ``step_back_target``.
        reason: one sentence for people.
        published: publication time.
        sequence: release sequence number.
        cves: CVE ids the release fixes.
    """

    release_id: str
    action: str
    code: str
    reason: str
    published: str = ""
    sequence: int = 0
    cves: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["cves"] = list(self.cves)
        return d


@dataclass(frozen=True)
class DeviceView:
    """What the planner needs to know about the device.

    Attributes:
        os_version, build: the installed OS.
        active_release: the active release id, or None (base images).
        installed: the activation chain, oldest first (the last one is active).
        components: the device's component names.
        floor: the release floor (highest sequence installed, see AgentState.sequence).
        removed: releases the user removed (not reinstalled automatically).
        fallen_back: releases the device fell back from by itself (health, issue 16).
    """

    os_version: str
    build: str
    active_release: str | None
    installed: tuple[str, ...]
    components: tuple[str, ...]
    floor: int = 0
    removed: tuple[str, ...] = ()
    fallen_back: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepBack:
    """Where to go from a withdrawn active release.

    Attributes:
        from_id: the withdrawn active release.
        to_id: the release to go to, or None for the base images.
        how: ``rollback`` (kept on the device), ``install`` or ``uninstall``.
        manifest: what to install when ``how`` is ``install``.
    """

    from_id: str
    to_id: str | None
    how: str
    manifest: ReleaseManifest | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``from``, ``to``, ``how``)."""
        return {"from": self.from_id, "to": self.to_id, "how": self.how}


@dataclass
class Plan:
    """The outcome of planning.

    Attributes:
        decisions: one per catalog release, in catalog order.
        install: the manifest to install, or None.
        install_release: its release, or None.
        step_back: the step back from a withdrawn active release, or None.
    """

    decisions: list[Decision] = field(default_factory=list)
    install: ReleaseManifest | None = None
    install_release: Release | None = None
    step_back: StepBack | None = None

    def summary(self) -> str:
        """One line: what the plan does."""
        if self.install is not None:
            return f"{self.install.release_id} applies"
        if self.step_back is not None:
            return f"{self.step_back.from_id} withdrawn; step back to " + (
                self.step_back.to_id or "the base images"
            )
        deferred = [d.release_id for d in self.decisions if d.action == DEFER]
        if deferred:
            return f"{', '.join(deferred)} deferred (automatic install off)"
        return "up to date"


def _mk(r: Release, action: str, code: str, reason: str) -> Decision:
    return Decision(r.release_id, action, code, reason, r.published, r.sequence, r.cves)


def current_seals(catalog: Catalog, active: str | None) -> dict[str, SealRef]:
    """Component -> seal of the image the active release put in place (for patch choice)."""
    rel = catalog.get(active) if active else None
    if rel is None:
        return {}
    return {n: c.target for n, c in rel.components.items() if c.target is not None}


def manifest_for(
    catalog: Catalog, release: Release, device: DeviceView
) -> tuple[ReleaseManifest | None, str]:
    """The device-side manifest of ``release``, or None and why it cannot apply."""
    lacking = [n for n in release.changed if n not in device.components]
    if lacking:
        return None, (
            f"patches {', '.join(lacking)}, which this device does not have "
            f"(has {', '.join(sorted(device.components))})"
        )
    if device.os_version != release.os_version:
        return None, f"for OS {release.os_version}; this device runs {device.os_version}"
    try:
        return catalog.manifest(release, current_seals(catalog, device.active_release)), ""
    except MetadataError as exc:
        return None, str(exc)


def _classify(r: Release, device: DeviceView, active_seq: int, policy: Policy) -> Decision | None:
    """The decision for a release that cannot be a candidate, or None if it can."""
    if device.build not in r.builds:
        return _mk(
            r,
            SKIP,
            "wrong_build",
            f"for OS {r.os_version} build(s) {', '.join(r.builds)}; this device runs "
            f"{device.os_version} ({device.build})",
        )
    if r.release_id == device.active_release:
        if r.withdrawn:
            return _mk(r, ACTIVE, "active_withdrawn", "active, but withdrawn by the vendor")
        return _mk(r, ACTIVE, "active", "installed and active")
    if r.withdrawn:
        return _mk(r, SKIP, "withdrawn", "withdrawn by the vendor")
    if r.release_id in device.fallen_back:
        return _mk(
            r,
            SKIP,
            "fallen_back",
            "the device fell back from it by itself (not confirmed healthy); "
            "not reinstalled automatically",
        )
    if r.release_id in device.removed:
        return _mk(r, SKIP, "removed", "removed by the user; not reinstalled automatically")
    if r.sequence <= active_seq:
        return _mk(r, SKIP, "not_newer", f"older than the active release {device.active_release}")
    if r.sequence < device.floor:
        return _mk(
            r,
            SKIP,
            "below_floor",
            f"sequence {r.sequence} is below the device's floor {device.floor} "
            "(it had a newer release installed)",
        )
    ok, why = policy.allows_release(r.release_id)
    return None if ok else _mk(r, SKIP, "policy", why)


def plan(
    catalog: Catalog,
    device: DeviceView,
    *,
    policy: Policy,
    auto: AutoInstallDecision,
) -> Plan:
    """Decide what to do with every release of ``catalog`` (see the module docstring)."""
    catalog = catalog.for_device(device.build)  # matrix releases: this build's variant
    active = catalog.get(device.active_release) if device.active_release else None
    active_seq = active.sequence if active is not None else 0
    decisions: dict[str, Decision] = {}
    candidates: list[Release] = []
    for r in catalog.releases:
        d = _classify(r, device, active_seq, policy)
        if d is None:
            candidates.append(r)
        else:
            decisions[r.release_id] = d
    out = Plan()
    chosen: Release | None = None
    for r in sorted(candidates, key=lambda r: r.sequence, reverse=True):
        if chosen is not None:
            why = f"superseded by {chosen.release_id} (releases are cumulative)"
            decisions[r.release_id] = _mk(r, SKIP, "superseded", why)
            continue
        manifest, why = manifest_for(catalog, r, device)
        if manifest is None:
            decisions[r.release_id] = _mk(r, SKIP, "rejected", why)
            continue
        chosen = r
        if auto.enabled:
            out.install, out.install_release = manifest, r
            why = f"applies to {device.os_version} ({device.build}); installing ({auto.reason})"
            decisions[r.release_id] = _mk(r, INSTALL, "install", why)
        else:
            why = (
                f"applies, but automatic install is off ({auto.reason}); "
                "it arrives with the next OS update"
            )
            decisions[r.release_id] = _mk(r, DEFER, "deferred", why)
    if active is not None and active.withdrawn and chosen is None:
        if auto.enabled:
            out.step_back = _step_back(catalog, active, device, policy, decisions)
        else:
            decisions[active.release_id].reason = (
                "active, but withdrawn by the vendor; automatic install is off "
                f"({auto.reason}), so the device stays on it until it is uninstalled"
            )
    out.decisions = [decisions[r.release_id] for r in catalog.releases]
    return out


def _step_back(
    catalog: Catalog,
    active: Release,
    device: DeviceView,
    policy: Policy,
    decisions: dict[str, Decision],
) -> StepBack:
    """The newest older release that is not withdrawn (kept, or installable), else base.

    Going below the floor is allowed here only because the targets role (offline key)
    signed the withdrawal of the active release.
    """
    previous = device.installed[-2] if len(device.installed) > 1 else None
    older = [
        r
        for r in reversed(catalog.for_build(device.build))
        if r.sequence < active.sequence
        and not r.withdrawn
        and policy.allows_release(r.release_id)[0]
    ]
    step = StepBack(active.release_id, None, "uninstall")
    base_device = DeviceView(
        device.os_version, device.build, None, (), device.components, 0, device.removed
    )
    for r in older:
        if r.release_id == previous:
            step = StepBack(active.release_id, r.release_id, "rollback")
            break
        if r.release_id in device.installed:
            continue  # deeper in the chain; reached by rollbacks, not reinstall
        manifest, why = manifest_for(catalog, r, base_device)
        if manifest is None:
            decisions[r.release_id].reason += f"; cannot step back to it: {why}"
            continue
        step = StepBack(active.release_id, r.release_id, "install", manifest)
        break
    target = step.to_id or "the base images"
    decisions[active.release_id] = _mk(
        active,
        STEP_BACK,
        "active_withdrawn",
        f"withdrawn by the vendor (signed by the targets role); stepping back to {target} "
        f"({step.how})",
    )
    if step.to_id is not None:
        d = decisions[step.to_id]
        d.action, d.code = STEP_BACK, "step_back_target"
        d.reason = "newest release that is not withdrawn; the device steps back to it"
    return step


def floor_after_step_back(catalog: Catalog, step: StepBack) -> int:
    """The release floor after ``step``: the target's sequence, or 0 for the base images."""
    if step.to_id is None:
        return 0
    r = catalog.get(step.to_id)
    return r.sequence if r is not None else 0


def check_manual(
    catalog: Catalog, release_id: str, device: DeviceView, allow_older: bool
) -> tuple[Release, ReleaseManifest]:
    """Check a manual install of ``release_id`` against the catalog and the floor.

    Raises:
        MetadataError subclasses: unknown, withdrawn, wrong build, not applicable, or
            older than the floor without ``allow_older``.
    """
    from bsipatch.errors import RollbackAttack, WithdrawnRelease, WrongTarget

    catalog = catalog.for_device(device.build)
    r = catalog.get(release_id)
    if r is None:
        raise WrongTarget(f"the trusted metadata lists no release {release_id!r}")
    if r.withdrawn:
        raise WithdrawnRelease(f"release {release_id} was withdrawn by the vendor")
    if device.build not in r.builds:
        raise WrongTarget(
            f"release {release_id} is for builds {', '.join(r.builds)}, not to this device's "
            f"build {device.build}"
        )
    if r.sequence < device.floor and not allow_older:
        raise RollbackAttack(
            f"release {release_id} (sequence {r.sequence}) is older than the device's floor "
            f"{device.floor}: pass --allow-older to install it anyway (recorded)"
        )
    manifest, why = manifest_for(catalog, r, device)
    if manifest is None:
        raise WrongTarget(f"release {release_id}: {why}")
    return r, manifest
