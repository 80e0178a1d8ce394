"""The device-management status report: one JSON document saying what a device runs.

Built from the preboot state (:meth:`bsipatch.device.preboot.Preboot.status`) and the agent's
stored state, settings and policy. Field names follow what an MDM administrator knows
from Apple's DeviceInformation query where one exists (``OSVersion``, ``BuildVersion``,
``SupplementalOSVersionExtra`` = ``"(a)"``, ``SupplementalBuildVersion`` =
``"23B85a"``), inside a plain, documented structure. Reads only; decides nothing and
writes nothing.
"""

from __future__ import annotations

import re
from typing import Any

from bsipatch._time import format_time, utc_now
from bsipatch.agent.agent import AgentStore
from bsipatch.agent.policy import decide_auto_install
from bsipatch.errors import BsipatchError

REPORT_FORMAT = 1
_EXTRA = re.compile(r"\(([a-z]{1,3})\)\s*$")


def extra_version(release_id: str | None) -> str | None:
    """``"26.1 (a)"`` -> ``"(a)"``; None for None or an id without one."""
    if not release_id:
        return None
    m = _EXTRA.search(release_id)
    return f"({m.group(1)})" if m else None


def _release_details(preboot: Any, store: AgentStore, release_id: str | None) -> dict[str, Any]:
    """Supplemental build, date, sequence, CVEs of an installed release (None fields if unknown)."""
    details: dict[str, Any] = {
        "supplemental_build": None,
        "published": None,
        "sequence": None,
        "cves": [],
    }
    if release_id is None:
        return details
    # what the agent recorded when it installed the release
    recorded = store.state().installed.get(release_id, {})
    for key in details:
        if recorded.get(key) is not None:
            details[key] = recorded[key]
    # what the preboot volume recorded (covers releases installed without the agent)
    try:
        from bsipatch.trust.manifest import release_slug

        info = preboot.release_info(release_slug(release_id))
    except (OSError, ValueError, KeyError, BsipatchError):  # an older record only loses detail
        info = {}
    for key in ("supplemental_build", "published", "sequence"):
        if details[key] is None and info.get(key) is not None:
            details[key] = info[key]
    if not details["cves"]:
        cves: set[str] = set()
        for comp in (info.get("components") or {}).values():
            cves.update(comp.get("cves") or [])
        details["cves"] = sorted(cves)
    return details


def device_report(preboot: Any, *, now: Any = None) -> dict[str, Any]:
    """The MDM status document of a device.

    Args:
        preboot: a :class:`bsipatch.device.preboot.Preboot`.
        now: the report time (datetime); ``None`` reads the clock.

    Returns:
        A JSON-ready dict::

            {"format": 1, "generated": "2026-11-28T10:00:00Z",
             "OSVersion": "26.1", "BuildVersion": "23B85",
             "SupplementalOSVersionExtra": "(a)" | None,
             "SupplementalBuildVersion": "23B85a" | None,
             "active_release": {"release_id", "extra_version", "supplemental_build",
                                "published", "sequence", "cves"} | None,
             "installed_releases": [...], "previous_release": ...,
             "components": {name: {"activation", "root_hash", "release", "pending"}},
             "pending_activations": [{"component", "release", "activation"}],
             "deferred_releases": [{"release_id", "published", "reason", "cves"}],
             "auto_install": {"enabled", "decided_by": "policy"|"user", "reason"},
             "user_settings": {"auto_install": bool}, "policy": {... Apple-style keys},
             "trust": {"catalog_version", "release_sequence"},
             "last_check": {"time", "ok", "summary", "error"} | None, "health": {...},
             "retired_releases": [...], "removed_by_user": [...]}

    Example:
        >>> device_report(Preboot("/preboot"))["SupplementalOSVersionExtra"]  # doctest: +SKIP
        '(a)'
    """
    store = AgentStore(preboot.path)
    st = preboot.status()
    agent_state = store.state()
    settings = store.settings()
    policy = store.policy()
    active_id = st.get("active_release")
    details = _release_details(preboot, store, active_id)
    active = None
    if active_id is not None:
        active = {"release_id": active_id, "extra_version": extra_version(active_id), **details}
    components = {
        name: {
            "activation": c.get("activation"),
            "root_hash": c.get("root_hash"),
            "release": c.get("release"),
            "pending": bool(c.get("pending")),
        }
        for name, c in sorted((st.get("components") or {}).items())
    }
    last = None
    if agent_state.last_check is not None:
        last = {"time": agent_state.last_check, **(agent_state.last_result or {})}
    return {
        "format": REPORT_FORMAT,
        "generated": format_time(now if now is not None else utc_now()),
        "OSVersion": st.get("os_version"),
        "BuildVersion": st.get("build"),
        "SupplementalOSVersionExtra": extra_version(active_id),
        "SupplementalBuildVersion": details["supplemental_build"],
        "active_release": active,
        "installed_releases": list(st.get("installed_releases") or []),
        "previous_release": st.get("previous_release"),
        "components": components,
        "pending_activations": list(st.get("pending") or []),
        "deferred_releases": list(agent_state.deferred),
        "auto_install": decide_auto_install(policy, settings.auto_install).to_dict(),
        "user_settings": {"auto_install": settings.auto_install},
        "policy": policy.to_dict(),
        "trust": {
            "metadata_versions": dict(agent_state.versions),
            "catalog_version": agent_state.versions.get("targets", 0),
            "release_sequence": agent_state.sequence,
            "floor_release": agent_state.floor_release,
            "overrides": list(agent_state.overrides),
        },
        "last_check": last,
        "retired_releases": list(agent_state.retired),
        "removed_by_user": list(agent_state.removed),
        "health": st.get("health") or {"tentative": None, "fallen_back": []},  # see device.report
    }


def format_report(report: dict[str, Any]) -> list[str]:
    """The report as short lines for people (the CLI's non-JSON output)."""
    lines = [f"OS {report['OSVersion']} ({report['BuildVersion']})"]
    active = report["active_release"]
    if active:
        lines.append(
            f"security release {active['release_id']}  build {active['supplemental_build']}  "
            f"published {active['published']}"
        )
        if active["cves"]:
            lines.append(f"  fixes {', '.join(active['cves'])}")
    else:
        lines.append("security release: none (base images)")
    for name, c in report["components"].items():
        pending = "  (pending restart)" if c["pending"] else ""
        root = (c["root_hash"] or "?")[:16]
        lines.append(f"  {name:<12} {c['activation']:<8} root {root}...{pending}")
    auto = report["auto_install"]
    state = "on" if auto["enabled"] else "off"
    lines.append(f"automatic install: {state} (decided by {auto['decided_by']}: {auto['reason']})")
    for d in report["deferred_releases"]:
        lines.append(f"deferred: {d['release_id']} ({d['reason']})")
    last = report["last_check"]
    if last:
        outcome = "ok" if last.get("ok") else f"FAILED: {last.get('error')}"
        lines.append(f"last check {last['time']}: {last.get('summary')} -- {outcome}")
    else:
        lines.append("last check: never")
    return lines
