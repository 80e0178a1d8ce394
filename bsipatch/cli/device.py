"""CLI commands of the device side: preboot init, os-update, install, status, rollback,
uninstall, boot, gc, recover.

Every device command takes ``--preboot DIR`` (default ``$BSIPATCH_PREBOOT``; the
agent's commands too). ``rollback`` and ``uninstall`` go through the agent
(:class:`bsipatch.agent.agent.Agent`), so they honour the device-management policy
(``EnableRollback``) and the agent records what the user removed; ``os-update`` does
too, so the agent's deferred releases are cleared.

Thin: parse arguments, call :mod:`bsipatch.device.preboot` / :mod:`bsipatch.device.install`, print.
``install RELEASE_ID --repo R`` refreshes the device's trusted TUF metadata (the agent's)
and installs that release only if the targets role lists it, it is not withdrawn and
it is not below the device's floor (``--allow-older`` overrides that, recorded);
``--unverified`` installs a manifest file the caller built and trusts itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bsipatch.cli._common import (
    add_command,
    add_preboot_arg,
    emit,
    preboot_dir,
    progress_enabled,
)
from bsipatch.cli.progress import Progress


def _preboot(args: argparse.Namespace) -> Any:
    from bsipatch.device.preboot import Preboot

    return Preboot(preboot_dir(args))


def _parse_images(
    specs: list[str], *, optional_activation: bool = False
) -> tuple[dict[str, str], dict[str, str]]:
    images: dict[str, str] = {}
    activation: dict[str, str] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        path, sep2, act = rest.rpartition(":")
        if optional_activation and act not in ("relaunch", "reboot"):
            path, sep2, act = rest, ":", ""
        if not sep or not sep2 or not name or not path:
            raise SystemExit(
                f"bsipatch: error: bad --image {spec!r}: expected NAME=PATH:relaunch|reboot"
            )
        images[name] = path
        if act:
            activation[name] = act
    return images, activation


def _status_lines(st: dict[str, Any]) -> list[str]:
    lines = [
        f"preboot:   {st['preboot']}",
        f"OS:        {st['os_version']} ({st['build']})",
        f"active:    {st['active_release'] or 'none (base images)'}",
        f"previous:  {st['previous_release'] or 'none (base images)'}",
        "components:",
    ]
    for name, c in sorted(st["components"].items()):
        rel = c["release"] or "base"
        extra = f"  -> {c['pending_release'] or 'base'} at next boot" if c["pending"] else ""
        lines.append(f"  {name:<16} {c['activation']:<9} {rel}{extra}")
    health = st.get("health") or {}
    t = health.get("tentative")
    if t:
        boots = f", booted {t['boots']}/{t['max_boots']}" if t["counts_boots"] else ""
        fails = ", ".join(f"{c} {n}/{t['max_failures']}" for c, n in t["failures"].items() if n)
        lines.append(
            f"tentative: {t['release']} awaits health confirmation{boots}"
            + (f"; failed launches: {fails}" if fails else "")
        )
    for f in health.get("fallen_back", [])[-3:]:
        lines.append(
            f"fell back: from {f['release']} to {f['to'] or 'the base images'} "
            f"at {f['time']}: {f['reason']}"
        )
    if st["recovery_needed"]:
        lines.append("an interrupted operation will be recovered at the next change or boot")
    if st["history"]:
        lines.append("history:")
        for h in st["history"][-10:]:
            what = h.get("release") or h.get("os_version") or ""
            lines.append(f"  {h['time']}  {h['op']:<10} {what or ''}".rstrip())
    return lines


def _cmd_init(args: argparse.Namespace) -> int:
    from bsipatch.device.preboot import Preboot

    images, activation = _parse_images(args.image or [])
    with Progress("copying base images", enabled=progress_enabled(args)) as bar:
        pb = Preboot.create(
            args.dir,
            os_version=args.os_version,
            build=args.build,
            images=images,
            activation=activation,
            progress=bar.callback,
        )
    st = pb.status()
    emit(args, st, [f"created {args.dir}: {args.os_version} ({args.build}), {len(images)} images"])
    return 0


def _cmd_os_update(args: argparse.Namespace) -> int:
    from bsipatch.agent.agent import Agent

    images, activation = _parse_images(args.image or [], optional_activation=True)
    for spec in args.activation or []:
        name, sep, act = spec.partition("=")
        if not sep or not name or act not in ("relaunch", "reboot"):
            raise SystemExit(
                f"bsipatch: error: bad --activation {spec!r}: expected NAME=relaunch|reboot"
            )
        activation[name] = act
    with Progress("installing OS images", enabled=progress_enabled(args)) as bar:
        agent = Agent(preboot_dir(args), None, progress=bar.callback)
        if set(activation) != set(images):  # unspecified: keep the current activation
            current = agent.preboot.components()
            activation = {n: activation.get(n) or current.get(n, "reboot") for n in images}
        result = agent.os_update(
            os_version=args.os_version, build=args.build, images=images, activation=activation
        )
    retired = ", ".join(r for r in result["retired"] if r) or "none"
    emit(args, result, [f"now {args.os_version} ({args.build}); retired releases: {retired}"])
    return 0


def _install_trusted(args: argparse.Namespace, pb: Any) -> int:
    """Install a release id checked against the device's trusted TUF metadata and floor."""
    from bsipatch.agent.executor import Agent
    from bsipatch.errors import StateError

    if not args.repo:
        raise StateError("give --repo URL|DIR (or --unverified MANIFEST_JSON --patches DIR)")
    root = Path(args.root).read_bytes() if args.root else None
    with Progress(f"installing {args.release}", enabled=progress_enabled(args)) as bar:
        agent = Agent(pb, args.repo, trusted_root=root, progress=bar.callback)
        result = agent.install(args.release, allow_older=args.allow_older)
    lines = [f"installed {result['release']}: {', '.join(result['changed'])}"]
    if args.allow_older:
        lines.append("  (older than the device's floor: recorded in the agent's state)")
    emit(args, result, lines)
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    from bsipatch.device.install import install_release, load_manifest, open_patch_in

    pb = _preboot(args)
    if not args.unverified:
        return _install_trusted(args, pb)
    data = Path(args.release).read_bytes()
    manifest = load_manifest(data)
    patches = args.patches or str(Path(args.release).parent)
    with Progress(f"installing {manifest.release_id}", enabled=progress_enabled(args)) as bar:
        result = install_release(pb, manifest, open_patch_in(patches), progress=bar.callback)
    from bsipatch.agent.agent import AgentStore

    AgentStore(pb.path).forget_removal(manifest.release_id)  # asked for again: allowed
    lines = [f"installed {result['release']}: {', '.join(result['changed'])}"]
    if result["activated"]:
        lines.append(f"active now (reopen the app): {', '.join(result['activated'])}")
    if result["pending"]:
        lines.append(f"active after restart: {', '.join(result['pending'])}")
    emit(args, result, lines)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = _preboot(args).status()
    emit(args, st, _status_lines(st))
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from bsipatch.agent.agent import Agent

    r = Agent(preboot_dir(args), None).rollback()  # policy checked, removal recorded
    emit(args, r, [f"rolled back from {r['from']} to {r['to'] or 'the base images'}"])
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from bsipatch.agent.agent import Agent

    r = Agent(preboot_dir(args), None).uninstall()  # policy checked, removals recorded
    removed = ", ".join(x for x in r["removed"] if x) or "nothing"
    emit(args, r, [f"back to the base images; removed {removed}"])
    return 0


def _cmd_boot(args: argparse.Namespace) -> int:
    from bsipatch.device.install import boot

    r = boot(_preboot(args))
    lines = [f"recovered: {x['op']} {x['outcome']}" for x in r["recovered"]]
    if r.get("fallback"):
        fb = r["fallback"]
        lines.append(
            f"fell back from {fb['from']} to {fb['to'] or 'the base images'}: {fb['reason']}"
        )
    lines.append(
        f"booted {r['release'] or 'base images'}"
        + (f"; activated {', '.join(r['activated'])}" if r["activated"] else "")
    )
    if r.get("tentative"):
        t = r["tentative"]
        lines.append(
            f"{t['release']} is tentative: boot {t['boots']} of {t['max_boots']} "
            "before an automatic fallback (bsipatch health confirm makes it permanent)"
        )
    emit(args, r, lines)
    return 0


def _cmd_health_confirm(args: argparse.Namespace) -> int:
    from bsipatch.device.health import confirm

    r = confirm(_preboot(args))
    if r["fallback"]:
        fb = r["fallback"]
        msg = f"not confirmed: fell back from {fb['from']} to {fb['to'] or 'the base images'}"
        emit(args, r, [f"{msg}: {fb['reason']}"])
        return 8
    emit(args, r, [f"confirmed {r['confirmed']}" if r["confirmed"] else "nothing to confirm"])
    return 0


def _cmd_health_report(args: argparse.Namespace) -> int:
    from bsipatch.device.health import report

    try:
        r = report(_preboot(args), args.component, ok=args.ok)
    except KeyError as exc:
        raise SystemExit(f"bsipatch: error: {exc.args[0]}") from exc
    if r["fallback"]:
        fb = r["fallback"]
        line = f"fell back from {fb['from']} to {fb['to'] or 'the base images'}: {fb['reason']}"
    elif r["tentative"] is None:
        line = "recorded nothing: no release awaits confirmation"
    else:
        line = f"{args.component}: {r['failures']} consecutive failed launches of {r['tentative']}"
    emit(args, r, [line])
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from bsipatch.device.install import gc

    r = gc(_preboot(args))
    emit(args, r, [f"removed {len(r['removed'])} directories"])
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    r = _preboot(args).recover()
    emit(args, {"recovered": r}, [f"{x['op']}: {x['outcome']}" for x in r] or ["nothing to do"])
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's subcommands to the CLI."""
    p = add_command(sub, "preboot", "create or update a preboot directory", None)
    psub = p.add_subparsers(dest="preboot_command", metavar="ACTION", required=True)
    init = add_command(psub, "init", "create a preboot directory with base images", _cmd_init)
    init.add_argument("dir", metavar="DIR", help="the preboot directory to create")
    upd = add_command(sub, "os-update", "install a new OS version's base images", _cmd_os_update)
    add_preboot_arg(upd)
    for q in (init, upd):
        q.add_argument("--os-version", required=True, help="e.g. 26.2")
        q.add_argument("--build", required=True, help="e.g. 23C55")
        q.add_argument(
            "--image",
            action="append",
            required=True,
            metavar="NAME=PATH:ACTIVATION" if q is init else "NAME=PATH[:ACTIVATION]",
            help="a base image and its activation (relaunch or reboot); repeatable"
            + ("" if q is init else "; the activation defaults to the current one"),
        )
    upd.add_argument(
        "--activation",
        action="append",
        metavar="NAME=relaunch|reboot",
        help="activation of a component (alternative to the :ACTIVATION suffix)",
    )

    p = add_command(
        sub, "install", "install a release, checked against the trusted metadata", _cmd_install
    )
    add_preboot_arg(p)
    p.add_argument(
        "release", metavar="RELEASE_ID", help='e.g. "26.1 (a)" (a file with --unverified)'
    )
    p.add_argument("--repo", metavar="URL|DIR", help="the vendor's TUF repository")
    p.add_argument(
        "--root", metavar="ROOT_JSON", help="vendor root metadata to trust if none is trusted yet"
    )
    p.add_argument(
        "--allow-older",
        action="store_true",
        help="install a release older than the device's floor (recorded)",
    )
    p.add_argument(
        "--patches", metavar="DIR", help="with --unverified: directory holding the patches"
    )
    p.add_argument(
        "--unverified",
        action="store_true",
        help="RELEASE_ID is a manifest JSON file you made and trust; no signature check",
    )
    for name, helptext, func in (
        (
            "status",
            "show the OS version, active release per component, pending, history",
            _cmd_status,
        ),
        (
            "rollback",
            "go back to the previously active release (if device management allows)",
            _cmd_rollback,
        ),
        (
            "uninstall",
            "go back to the OS version's base images, removing releases (if allowed)",
            _cmd_uninstall,
        ),
        ("boot", "start-up: recover, fall back if unconfirmed, activate pending", _cmd_boot),
        ("gc", "remove releases other than the active and previous one", _cmd_gc),
        ("recover", "finish or undo an interrupted operation", _cmd_recover),
    ):
        q = add_command(sub, name, helptext, func)
        add_preboot_arg(q)
        if name in ("rollback", "uninstall"):
            from bsipatch.cli import agent_mdm

            agent_mdm.attach(q, name)
    _register_health(sub)


def _register_health(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``bsipatch health confirm | report``."""
    p = add_command(sub, "health", "confirm a new release or report launches", None)
    hsub = p.add_subparsers(dest="health_command", metavar="ACTION", required=True)
    add_preboot_arg(
        add_command(
            hsub,
            "confirm",
            "the system is healthy: make the tentative release permanent",
            _cmd_health_confirm,
        )
    )
    rep = add_command(
        hsub, "report", "report one launch of a component (failures fall back)", _cmd_health_report
    )
    add_preboot_arg(rep)
    rep.add_argument("--component", required=True, metavar="NAME")
    outcome = rep.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--ok", dest="ok", action="store_true", help="it launched")
    outcome.add_argument("--failed", dest="ok", action="store_false", help="it failed to launch")
