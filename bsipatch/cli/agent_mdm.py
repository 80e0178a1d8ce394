"""The agent commands' MDM hook: ``--mdm URL --enrolment FILE`` and ``agent sync``.

:func:`attach` adds the two options to an agent command and wraps its handler: before
it, declarations are synced (an unreachable server leaves the last policy in force);
after it (also when it failed), an incremental status report is queued and sent
(:mod:`bsipatch.agent.mdm_client`). Without ``--mdm``/``--enrolment`` the command runs
exactly as before. Decides nothing about installs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from bsipatch.cli._common import add_command, add_preboot_arg, emit, preboot_dir
from bsipatch.errors import FetchError

Handler = Callable[[argparse.Namespace], int]


def _add_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--mdm", metavar="URL", help="MDM server (default: the enrolment's server)")
    p.add_argument(
        "--enrolment",
        required=required,
        metavar="FILE",
        help="enrolment from `bsipatch mdm enroll`",
    )


def _client(args: argparse.Namespace) -> Any:
    if not getattr(args, "enrolment", None):
        return None
    from bsipatch.agent.mdm_client import MdmClient, load_enrolment

    return MdmClient(preboot_dir(args), load_enrolment(args.enrolment), args.mdm)


def _active(preboot: str) -> Any:
    from bsipatch.device.preboot import Preboot

    try:
        return Preboot(preboot).status().get("active_release")
    except Exception:
        return None


def _sync(client: Any) -> bool:
    try:
        return bool(client.sync())
    except FetchError as exc:
        print(f"bsipatch: MDM unreachable, keeping the last policy: {exc}", file=sys.stderr)
        return False


def _report(client: Any, event: str, detail: str = "") -> None:
    out = client.report(event, detail)
    if out["left"]:
        print(f"bsipatch: MDM unreachable: {out['left']} status report(s) queued", file=sys.stderr)


def attach(p: argparse.ArgumentParser, event: str) -> None:
    """Give command ``p`` the MDM options; report ``event`` after it runs.

    ``event`` "run" becomes "install" when the active release changed, else "check".
    """
    _add_args(p)
    inner: Handler = p.get_default("func")

    def wrapped(args: argparse.Namespace) -> int:
        client = _client(args)
        if client is None:
            return inner(args)
        if event in ("run", "check"):
            _sync(client)
        before = _active(args.preboot)
        try:
            rc = inner(args)
        except BaseException as exc:
            _report(client, "check" if event == "run" else event, f"failed: {exc}")
            raise
        name = event
        if event == "run":
            name = "install" if _active(args.preboot) != before else "check"
        _report(client, name)
        return rc

    p.set_defaults(func=wrapped)


def cmd_sync(args: argparse.Namespace) -> int:
    client = _client(args)
    changed = _sync(client)
    event = "policy" if changed else args.event
    _report(client, event)
    state = client.state()
    data = {
        "policy_changed": changed,
        "declarations": state["declarations"],
        "queued_reports": len(state["queue"]),
    }
    lines = [f"declarations: {len(state['declarations'])}, policy changed: {changed}"]
    for ident, st in sorted(state["declarations"].items()):
        lines.append(f"  {ident}: {st['valid']}{' (active)' if st['active'] else ''}")
    lines.append(f"status reports waiting: {len(state['queue'])}")
    emit(args, data, lines)
    return 0


def register_sync(asub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``agent sync``."""
    p = add_command(asub, "sync", "fetch MDM declarations, send status reports", cmd_sync)
    add_preboot_arg(p)
    _add_args(p, required=True)
    p.add_argument(
        "--event",
        choices=("sync", "boot"),
        default="sync",
        help="what the report says happened (run with --event boot at start-up)",
    )
