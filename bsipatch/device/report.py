"""The ``status`` report of a preboot volume: OS, releases, components, pending, health.

Reads ``state.json`` and the release descriptions of a
:class:`bsipatch.device.preboot.Preboot` (no lock, never blocks on a writer); changes
nothing.
"""

from __future__ import annotations

from typing import Any

from bsipatch.device.readback import tentative


def health_status(pb: Any, state: dict[str, Any]) -> dict[str, Any]:
    """``{"tentative": {...} | None, "fallen_back": [...]}`` (see :mod:`bsipatch.device.health`).

    ``tentative`` describes the active release while it awaits confirmation: ``release``,
    ``since``, ``boots``/``max_boots``, ``failures`` (per component)/``max_failures``.
    ``fallen_back`` lists the automatic fallbacks, newest last: ``release`` (left),
    ``to``, ``reason``, ``time``; the agent does not reinstall those by itself.
    """
    t = tentative(state)
    tent = None
    if t is not None:
        tent = {
            "release": pb.release_id_of(t["release"]),
            "since": t.get("since"),
            "components": list(t.get("components", [])),
            "boots": int(t.get("boots", 0)),
            "max_boots": int(t.get("max_boots", 0)),
            "counts_boots": bool(t.get("counts_boots")),
            "failures": dict(t.get("failures", {})),
            "max_failures": int(t.get("max_failures", 0)),
        }
    fallen = [
        {k: f.get(k) for k in ("release", "to", "reason", "time")}
        for f in state.get("fallen_back", [])
    ]
    return {"tentative": tent, "fallen_back": fallen}


def status(pb: Any) -> dict[str, Any]:
    """What the device runs: OS, active release per component, pending, history.

    Returns:
        A JSON-serialisable dict::

            {"preboot": str, "os_version": str, "build": str,
             "active_release": "26.1 (a)" | None, "previous_release": ... | None,
             "booted_release": ... | None, "installed_releases": [...],
             "components": {name: {"activation", "release", "image", "root_hash",
                                   "pending": bool, "pending_release"}},
             "pending": [{"component", "release", "activation"}],
             "recovery_needed": bool, "history": [...],
             "health": {"tentative": {...} | None, "fallen_back": [...]}}
    """
    state = pb.read_state()
    chain = state["chain"]
    active = chain[-1] if chain else None
    active_dir = pb.selection_dir(state["os"]["base"], active)
    comps = pb.components(state)
    changed = set()
    if active is not None:
        try:
            info = pb.release_info(active)
            changed = {n for n, c in info["components"].items() if c.get("changed")}
        except (OSError, ValueError, KeyError):
            pass
    out_components: dict[str, Any] = {}
    pending = []
    for name, activation in sorted(comps.items()):
        try:
            directory = pb._component_dir(state, name)
            root = pb.seal_record(directory, name)["seal"]["root_hash"]
            new_root = pb.seal_record(active_dir, name)["seal"]["root_hash"]
        except (OSError, ValueError, KeyError):
            directory, root, new_root = active_dir, None, None
        is_pending = activation == "reboot" and root != new_root
        in_use_release = state["booted"]["release"] if is_pending else active
        entry = {
            "activation": activation,
            "release": pb.release_id_of(in_use_release)
            if (name in changed or is_pending)
            else None,
            "image": str(directory / f"{name}.img"),
            "root_hash": root,
            "pending": is_pending,
            "pending_release": pb.release_id_of(active) if is_pending else None,
        }
        if is_pending:
            pending.append(
                {
                    "component": name,
                    "release": pb.release_id_of(active),
                    "activation": activation,
                }
            )
        out_components[name] = entry
    return {
        "preboot": str(pb.path),
        "os_version": state["os"]["version"],
        "build": state["os"]["build"],
        "active_release": pb.release_id_of(active),
        "previous_release": pb.release_id_of(chain[-2]) if len(chain) > 1 else None,
        "booted_release": pb.release_id_of(state["booted"]["release"]),
        "installed_releases": [pb.release_id_of(s) for s in chain],
        "components": out_components,
        "pending": pending,
        "recovery_needed": bool(pb.journal.pending()),
        "history": list(state.get("history", [])),
        "health": health_status(pb, state),
    }
