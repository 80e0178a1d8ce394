"""Fleet queries: which release every device runs, and who needs attention.

Read-only SQL over the tables :mod:`bsipatch.mdm.store` writes, returning JSON-ready
dicts (times as ``2026-11-28T10:00:00Z`` strings). Lists are capped at ``limit`` rows
with the full count beside them, so a query costs about the same at 100 or 100,000
devices. Used by the CLI (``bsipatch mdm fleet``), the HTTP API and the web page; it
renders nothing itself.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bsipatch._time import epoch_to_text
from bsipatch.mdm.db import Database


def builds(db: Database) -> list[dict[str, Any]]:
    """Devices per OS build x supplemental build (and the release they make)."""
    rows = db.query(
        "SELECT build, supplemental_build, release_id, COUNT(*) FROM devices "
        "GROUP BY build, supplemental_build, release_id ORDER BY COUNT(*) DESC, build"
    )
    return [
        {"build": b, "supplemental_build": s, "release_id": r, "devices": int(n)}
        for b, s, r, n in rows
    ]


def _count(db: Database, where: str, params: tuple[Any, ...] = ()) -> int:
    return int(db.query(f"SELECT COUNT(*) FROM devices d WHERE {where}", params)[0][0])  # noqa: S608


def withdrawn(db: Database, limit: int = 100) -> dict[str, Any]:
    """Devices whose active release the vendor withdrew."""
    where = "d.release_id IN (SELECT release_id FROM withdrawn)"
    rows = db.query(
        f"SELECT d.name, d.release_id, d.last_seen FROM devices d WHERE {where} "  # noqa: S608
        "ORDER BY d.release_id, d.id LIMIT ?",
        (limit,),
    )
    releases = [r[0] for r in db.query("SELECT release_id FROM withdrawn ORDER BY release_id")]
    return {
        "releases": releases,
        "count": _count(db, where),
        "devices": [
            {"name": n, "release_id": r, "last_seen": epoch_to_text(s)} for n, r, s in rows
        ],
    }


def deferred(db: Database, limit: int = 100, now: float | None = None) -> dict[str, Any]:
    """Devices holding a deferred release, longest-deferred first, with for how long."""
    now = time.time() if now is None else now
    where = "d.deferred_release IS NOT NULL"
    rows = db.query(
        f"SELECT d.name, d.release_id, d.deferred_release, d.deferred_since FROM devices d "  # noqa: S608
        f"WHERE {where} ORDER BY d.deferred_since LIMIT ?",
        (limit,),
    )
    out = []
    for name, rel, pending, since in rows:
        days = None if since is None else round((now - float(since)) / 86400, 1)
        out.append(
            {
                "name": name,
                "release_id": rel,
                "deferred_release": pending,
                "since": epoch_to_text(since),
                "days": days,
            }
        )
    return {"count": _count(db, where), "devices": out}


def failed(db: Database, limit: int = 100) -> dict[str, Any]:
    """Devices whose last install failed, newest failure first, with the error."""
    where = "d.install_state = 'failed'"
    rows = db.query(
        f"SELECT d.name, d.release_id, d.last_error, d.failed_at FROM devices d "  # noqa: S608
        f"WHERE {where} ORDER BY d.failed_at DESC LIMIT ?",
        (limit,),
    )
    return {
        "count": _count(db, where),
        "devices": [
            {"name": n, "release_id": r, "error": e, "at": epoch_to_text(a)} for n, r, e, a in rows
        ],
    }


def not_seen(
    db: Database, days: float, limit: int = 100, now: float | None = None
) -> dict[str, Any]:
    """Devices that have not reported for ``days`` days (or never)."""
    now = time.time() if now is None else now
    cutoff = now - days * 86400
    where = "(d.last_seen IS NULL OR d.last_seen < ?)"
    rows = db.query(
        f"SELECT d.name, d.release_id, d.last_seen FROM devices d WHERE {where} "  # noqa: S608
        "ORDER BY d.last_seen LIMIT ?",
        (cutoff, limit),
    )
    return {
        "days": days,
        "count": _count(db, where, (cutoff,)),
        "devices": [
            {"name": n, "release_id": r, "last_seen": epoch_to_text(s)} for n, r, s in rows
        ],
    }


def release_chart(db: Database, max_points: int = 60) -> dict[str, Any]:
    """Devices on each release at the end of each day (from ``release_daily``), thinned to
    at most ``max_points`` points (the last day is always kept)."""
    rows = db.query("SELECT day, release_id, delta FROM release_daily ORDER BY day")
    if not rows:
        return {"times": [], "series": {}}
    first, last = int(rows[0][0]), int(rows[-1][0])
    days = last - first + 1
    deltas: dict[str, list[int]] = {}
    for day, rel, d in rows:
        deltas.setdefault(str(rel), [0] * days)[int(day) - first] += int(d)
    step = max(1, -(-days // max_points))
    keep = list(range(days - 1, -1, -step))[::-1]
    series: dict[str, list[int]] = {}
    for rel, ds in sorted(deltas.items()):
        total, acc = 0, []
        for d in ds:
            total += d
            acc.append(total)
        series[rel] = [acc[i] for i in keep]
    times = [epoch_to_text((first + i + 1) * 86400.0) for i in keep]
    return {"times": times, "series": series}


def overview(db: Database, *, stale_days: float = 7, limit: int = 100) -> dict[str, Any]:
    """Everything the fleet page shows, in one dict."""
    return {
        "devices": int(db.query("SELECT COUNT(*) FROM devices")[0][0]),
        "builds": builds(db),
        "withdrawn": withdrawn(db, limit),
        "deferred": deferred(db, limit),
        "failed": failed(db, limit),
        "not_seen": not_seen(db, stale_days, limit),
        "chart": release_chart(db),
    }


def device_history(db: Database, name: str) -> dict[str, Any] | None:
    """One device: its latest items, declaration status and release history."""
    rows = db.query(
        "SELECT id, enrolled, last_seen, items, release_id, install_state, last_error, "
        "deferred_release, deferred_since FROM devices WHERE name = ?",
        (name,),
    )
    if not rows:
        return None
    dev, enrolled, seen, items, rel, state, err, pending, since = rows[0]
    history = db.query(
        "SELECT at, from_release, to_release, build, supplemental_build FROM release_history "
        "WHERE device_id = ? ORDER BY at, id",
        (dev,),
    )
    decl = db.query(
        "SELECT identifier, active, valid, server_token, reasons, updated "
        "FROM declaration_status WHERE device_id = ? ORDER BY identifier",
        (dev,),
    )
    return {
        "name": name,
        "enrolled": epoch_to_text(enrolled),
        "last_seen": epoch_to_text(seen),
        "release_id": rel,
        "install_state": state,
        "last_error": err,
        "deferred_release": pending,
        "deferred_since": epoch_to_text(since),
        "items": {
            k: {"value": v["value"], "updated": epoch_to_text(v["updated"])}
            for k, v in sorted(json.loads(items).items())
        },
        "declarations": [
            {
                "identifier": i,
                "active": bool(a),
                "valid": v,
                "server_token": t,
                "reasons": json.loads(r),
                "updated": epoch_to_text(u),
            }
            for i, a, v, t, r, u in decl
        ],
        "history": [
            {"at": epoch_to_text(a), "from": f, "to": t, "build": b, "supplemental_build": s}
            for a, f, t, b, s in history
        ],
    }
