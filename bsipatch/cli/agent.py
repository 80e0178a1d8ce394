"""CLI commands of the update agent: ``bsipatch agent check|run|settings|policy|status``.

``rollback``, ``uninstall`` and ``os-update`` are device commands
(:mod:`bsipatch.cli.device`) that go through the agent, so there is one of each.

Thin: parse arguments, call :mod:`bsipatch.agent.agent` / :mod:`bsipatch.agent.status`, print.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bsipatch.cli import agent_mdm
from bsipatch.cli._common import (
    add_command,
    add_preboot_arg,
    emit,
    preboot_dir,
    progress_enabled,
)
from bsipatch.cli.progress import Progress
from bsipatch.errors import PolicyError


def _add_device_args(p: argparse.ArgumentParser, *, repo: bool) -> None:
    add_preboot_arg(p)
    if repo:
        p.add_argument(
            "--repo", required=True, metavar="URL|DIR", help="vendor repository (http(s) or dir)"
        )
        p.add_argument(
            "--root",
            metavar="FILE",
            help="vendor root.json to trust on first use (stored in the preboot's agent/ dir)",
        )
        _add_limit_args(p)
        p.add_argument(
            "--cafile", metavar="PEM", help="CA certificates to trust for https (default: system)"
        )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _add_limit_args(p: argparse.ArgumentParser) -> None:
    from bsipatch.agent.limits import DEFAULT_DEADLINE, DEFAULT_MIN_RATE, DEFAULT_TIMEOUT

    p.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT,
        help=f"seconds before a stalled connect or read retries (default {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument("--retries", type=int, default=4, help="retries per file")
    p.add_argument(
        "--deadline",
        type=_positive,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help=f"seconds one file may take in all (default {DEFAULT_DEADLINE:g})",
    )
    p.add_argument(
        "--min-rate",
        type=_positive,
        default=DEFAULT_MIN_RATE,
        metavar="BYTES_PER_S",
        help="slowest average rate accepted after the first seconds of a file "
        f"(default {DEFAULT_MIN_RATE:g})",
    )


def _retry_printer(args: argparse.Namespace) -> Any:
    """One line per retry on stderr, when stderr is a terminal and not ``--quiet``."""
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        return None

    def show(line: str) -> None:
        print(f"bsipatch: {line}", file=sys.stderr, flush=True)

    return show


def _agent(args: argparse.Namespace, progress: Any = None) -> Any:
    from bsipatch.agent.agent import Agent
    from bsipatch.agent.limits import Limits

    root = Path(args.root).read_bytes() if getattr(args, "root", None) else None
    return Agent(
        preboot_dir(args),
        args.repo,
        trusted_root=root,
        timeout=args.timeout,
        retries=args.retries,
        progress=progress,
        cafile=args.cafile,
        limits=Limits(timeout=args.timeout, deadline=args.deadline, min_rate=args.min_rate),
        on_retry=_retry_printer(args),
    )


def _decision_lines(check: dict[str, Any]) -> list[str]:
    lines = [
        f"device: OS {check['os_version']} ({check['build']}), active release: "
        f"{check['active_release'] or 'none (base images)'}; catalog version "
        f"{check['catalog_version']}",
        f"automatic install: {'on' if check['auto_install']['enabled'] else 'off'} "
        f"({check['auto_install']['reason']})",
    ]
    if not check["decisions"]:
        lines.append("the catalog lists no releases")
    for d in check["decisions"]:
        lines.append(f"  {d['release_id']:<12} {d['action']:<9} {d['reason']}")
    return lines


def cmd_check(args: argparse.Namespace) -> int:
    agent = _agent(args)
    agent.check()
    data = agent.last_check.to_dict()
    emit(args, data, _decision_lines(data))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    with Progress("installing", enabled=progress_enabled(args)) as bar:
        agent = _agent(args, bar.callback)
        for release_id in args.reinstall or []:
            agent.store.forget_removal(release_id)
        report = agent.run()
    lines = _decision_lines(report["check"])
    inst = report["installed"]
    if inst:
        lines.append(
            f"installed {inst['release']}: downloaded {inst['downloaded_patch_bytes']:,} bytes "
            f"of patches for {inst['full_image_bytes']:,} bytes of images"
        )
        if inst.get("activated"):
            lines.append(f"  active for new launches: {', '.join(inst['activated'])}")
        if inst.get("pending"):
            lines.append(f"  active after restart: {', '.join(inst['pending'])}")
    sb = report["step_back"]
    if sb:
        lines.append(
            f"stepped back from withdrawn {sb['from']} to {sb['to'] or 'the base images'} "
            f"({sb['how']})"
        )
    if not inst and not sb:
        lines.append("nothing to install")
    emit(args, report, lines)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from bsipatch.agent.agent import AgentStore
    from bsipatch.agent.policy import decide_auto_install
    from bsipatch.device.preboot import Preboot

    store = AgentStore(Preboot(preboot_dir(args)).path)
    if args.auto_install is not None:
        from bsipatch.agent.agent import Settings

        store.save_settings(Settings(auto_install=args.auto_install == "on"))
    settings = store.settings()
    decision = decide_auto_install(store.policy(), settings.auto_install)
    data = {"auto_install": settings.auto_install, "effective": decision.to_dict()}
    emit(
        args,
        data,
        [
            f"user setting: automatic install {'on' if settings.auto_install else 'off'}",
            f"effective: {'on' if decision.enabled else 'off'} ({decision.reason})",
        ],
    )
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    from bsipatch.agent.agent import AgentStore
    from bsipatch.device.preboot import Preboot

    store = AgentStore(Preboot(preboot_dir(args)).path)
    if args.clear:
        store.clear_policy()
    elif args.file:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise PolicyError(f"cannot read policy {args.file}: {exc.strerror or exc}") from exc
        store.save_policy(data)
    policy = store.policy()
    d = policy.to_dict()
    p = d["Payload"]
    emit(
        args,
        d,
        [
            f"policy {'applied' if policy.present else 'none (user settings decide)'}",
            f"  RapidSecurityResponse.Enable = {p['RapidSecurityResponse']['Enable']}",
            f"  RapidSecurityResponse.EnableRollback = "
            f"{p['RapidSecurityResponse']['EnableRollback']}",
            f"  AutomaticActions.InstallSecurityUpdate = "
            f"{p['AutomaticActions']['InstallSecurityUpdate']}",
            f"  PinnedRelease = {p.get('PinnedRelease')}",
        ],
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from bsipatch.agent.status import device_report, format_report
    from bsipatch.device.preboot import Preboot

    report = device_report(Preboot(preboot_dir(args)))
    emit(args, report, format_report(report))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``agent ...``."""
    agent = sub.add_parser(
        "agent",
        help="update agent: check, install, settings, MDM policy, status",
        description="The on-device update agent.",
    )

    def _agent_help(_args: argparse.Namespace) -> int:
        agent.print_help()
        return 2

    agent.set_defaults(func=_agent_help)
    asub = agent.add_subparsers(dest="agent_command", metavar="ACTION")

    p = add_command(asub, "check", "what applies now, and why not for the rest", cmd_check)
    _add_device_args(p, repo=True)
    agent_mdm.attach(p, "check")
    p = add_command(asub, "run", "install what applies (or step back from a withdrawal)", cmd_run)
    _add_device_args(p, repo=True)
    p.add_argument(
        "--reinstall",
        action="append",
        metavar="RELEASE_ID",
        help="a release you removed (rollback/uninstall) that may be installed again; repeatable",
    )
    agent_mdm.attach(p, "run")
    agent_mdm.register_sync(asub)

    p = add_command(asub, "settings", "show or set the automatic-install switch", cmd_settings)
    _add_device_args(p, repo=False)
    p.add_argument("--auto-install", choices=("on", "off"), help="the user's switch")

    p = add_command(asub, "policy", "apply (or show) a device-management policy", cmd_policy)
    _add_device_args(p, repo=False)
    p.add_argument("file", nargs="?", metavar="FILE.json", help="policy document to apply")
    p.add_argument("--clear", action="store_true", help="remove the policy")
    agent_mdm.attach(p, "policy")

    p = add_command(asub, "status", "the MDM status report", cmd_status)
    _add_device_args(p, repo=False)
