"""CLI commands of the device-management server: ``bsipatch mdm ...``.

Thin: parse arguments, call :mod:`bsipatch.mdm` (imported inside each command, so the
device-side CLI never loads the server's dependencies), print. Every command except
``serve`` works on the database directly (``--db``, default ``$BSIPATCH_MDM_DB`` or
``mdm.sqlite3``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bsipatch.cli._common import add_command, emit
from bsipatch.errors import MdmError


def _store(args: argparse.Namespace) -> Any:
    from bsipatch.mdm.serve import open_store

    return open_store(args.db, pool_size=2)


def cmd_serve(args: argparse.Namespace) -> int:
    from bsipatch.mdm.serve import serve

    serve(args.db, args.listen, stale_days=args.stale_days, workers=args.workers)
    return 0


def cmd_admin_token(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        token = store.new_admin_token()
    finally:
        store.db.close()
    emit(args, {"admin_token": token}, token)
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        enrolment = store.enroll(args.name, args.set or [])
    finally:
        store.db.close()
    doc = enrolment.to_dict(args.server)
    text = json.dumps(doc, indent=2) + "\n"
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        emit(
            args,
            {"device_id": enrolment.device_id, "file": args.out},
            f"enrolled {args.name} (device {enrolment.device_id}); secret in {args.out}",
        )
    else:
        print(text, end="")
    return 0


def cmd_declare(args: argparse.Namespace) -> int:
    from bsipatch.mdm.items import ItemError, check_declaration

    try:
        dtype, payload = check_declaration(json.loads(Path(args.file).read_bytes()))
    except (ItemError, ValueError) as exc:
        raise MdmError(f"{args.file}: {exc}") from exc
    store = _store(args)
    try:
        token = store.put_declaration(dtype, args.identifier, payload)
        if args.set:
            store.assign(args.set, declarations=[args.identifier], devices=[])
    finally:
        store.db.close()
    emit(
        args,
        {"Identifier": args.identifier, "ServerToken": token},
        f"{args.identifier}: ServerToken {token}",
    )
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.assign(args.set, declarations=args.declaration or [], devices=args.device or [])
    finally:
        store.db.close()
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        store.withdraw(args.release, undo=args.undo)
    finally:
        store.db.close()
    return 0


def _fleet_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{data['devices']} devices", "OS build / supplemental build / release: devices"]
    for r in data["builds"]:
        lines.append(
            f"  {r['build']}  {r['supplemental_build'] or '-'}  "
            f"{r['release_id'] or '-'}: {r['devices']}"
        )
    sections = (
        ("withdrawn", "on a withdrawn release", lambda d: d["release_id"]),
        ("deferred", "deferred", lambda d: f"{d['deferred_release']} for {d['days']} days"),
        ("failed", "failed installs", lambda d: f"{d['error']} at {d['at']}"),
        (
            "not_seen",
            f"not seen for {data['not_seen']['days']} days",
            lambda d: f"last seen {d['last_seen'] or 'never'}",
        ),
    )
    for key, title, fmt in sections:
        lines.append(f"{title}: {data[key]['count']}")
        for d in data[key]["devices"]:
            lines.append(f"  {d['name']}: {fmt(d)}")
    return lines


def _history_lines(d: dict[str, Any]) -> list[str]:
    lines = [
        f"{d['name']}: {d['release_id'] or '-'} ({d['install_state'] or '-'}), "
        f"last seen {d['last_seen'] or 'never'}"
    ]
    for h in d["history"]:
        lines.append(f"  {h['at']}  {h['from'] or '-'} -> {h['to'] or '-'}")
    for x in d["declarations"]:
        lines.append(f"  declaration {x['identifier']}: {x['valid']}, active={x['active']}")
    return lines


def cmd_fleet(args: argparse.Namespace) -> int:
    from bsipatch.mdm import fleet

    store = _store(args)
    try:
        if args.device:
            data = fleet.device_history(store.db, args.device)
            if data is None:
                raise MdmError(f"no enrolled device {args.device!r}")
            emit(args, data, _history_lines(data))
        else:
            data = fleet.overview(store.db, stale_days=args.stale_days, limit=args.limit)
            emit(args, data, _fleet_lines(data))
    finally:
        store.db.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bsipatch mdm ...``."""
    mdm = sub.add_parser("mdm", help="device-management server: declarations, status, fleet")
    msub = mdm.add_subparsers(dest="mdm_command", metavar="COMMAND", required=True)
    default_db = os.environ.get("BSIPATCH_MDM_DB", "mdm.sqlite3")

    def cmd(name: str, text: str, func: Any) -> argparse.ArgumentParser:
        p = add_command(msub, name, text, func)
        p.add_argument(
            "--db",
            default=default_db,
            metavar="URL",
            help="sqlite:///PATH, a file path, or postgresql://... (default %(default)s)",
        )
        return p

    p = cmd("serve", "serve the MDM HTTP API and the fleet page", cmd_serve)
    p.add_argument("--listen", default="127.0.0.1:8600", metavar="HOST:PORT")
    p.add_argument("--stale-days", type=float, default=7.0, help="'not seen' threshold")
    p.add_argument("--workers", type=int, default=1, help="server processes (PostgreSQL)")
    cmd("admin-token", "create a new admin token (replaces the old one)", cmd_admin_token)
    p = cmd("enroll", "enrol a device and print its enrolment (secret) as JSON", cmd_enroll)
    p.add_argument("--name", required=True)
    p.add_argument("--set", action="append", metavar="SET", help="put the device in SET")
    p.add_argument("--server", metavar="URL", help="server URL to record in the enrolment")
    p.add_argument("--out", metavar="FILE", help="write the enrolment here (mode 0600)")
    p = cmd("declare", "create or update a declaration from a JSON file", cmd_declare)
    p.add_argument("--identifier", required=True)
    p.add_argument("--set", metavar="SET", help="also assign it to SET")
    p.add_argument("file", metavar="FILE.json", help='{"Type": ..., "Payload": {...}}')
    p = cmd("assign", "add declarations and devices to a set", cmd_assign)
    p.add_argument("--set", required=True)
    p.add_argument("--declaration", action="append", metavar="ID")
    p.add_argument("--device", action="append", metavar="NAME")
    p = cmd("withdraw", "mark a release as withdrawn by the vendor", cmd_withdraw)
    p.add_argument("release", metavar="RELEASE_ID", help='e.g. "26.1 (a)"')
    p.add_argument("--undo", action="store_true", help="no longer withdrawn")
    p = cmd("fleet", "fleet view: builds, withdrawn, deferred, failed, not seen", cmd_fleet)
    p.add_argument("--stale-days", type=float, default=7.0)
    p.add_argument("--limit", type=int, default=100, help="rows per list")
    p.add_argument("--device", metavar="NAME", help="one device's history instead")
