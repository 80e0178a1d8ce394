"""Applying batches of validated status reports to the database, in one transaction.

:func:`apply_reports` is what the group committer (:mod:`bsipatch.mdm.groupcommit`)
runs for each batch. It locks the batch's device rows, checks each report's secret
against the stored hash under that lock (so a re-enrolment that replaced the secret
takes effect at once, whatever the HTTP layer cached), drops resent reports by
``ReportSequence``, and writes: the latest value of every item per device
(``devices.items``, a JSON map with the time each item was last reported) and the
columns derived from it for the fleet queries, the per-declaration status, one
``release_history`` row each time a device's release changes, and the per-day release
counts. PostgreSQL gets one statement per table for the whole batch (arrays through
``unnest``) and one round trip for all the writes (pipeline mode); SQLite gets
``executemany``. Validation is :mod:`bsipatch.mdm.items`'s job; HTTP is elsewhere.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Literal

from bsipatch._time import parse_epoch
from bsipatch.mdm.db import Database
from bsipatch.mdm.items import Report, release_label

#: What became of one report: stored, a resend (acknowledged, not applied again), or
#: refused (nothing stored).
ApplyResult = Literal["applied", "duplicate", "unknown_device", "bad_secret"]

# (SQLite statement run per row with ? placeholders, PostgreSQL statement run once with
#  one column array per %b placeholder: binary arrays, which psycopg dumps far faster)
_DEVICES = (
    "UPDATE devices SET last_seen = ?, report_seq = ?, items = ?, os_version = ?, build = ?, "
    "supplemental_build = ?, extra_version = ?, release_id = ?, install_state = ?, "
    "last_error = ?, failed_at = ?, deferred_release = ?, deferred_since = ? WHERE id = ?",
    "UPDATE devices AS d SET last_seen = v.s, report_seq = v.q, items = v.i, os_version = v.o, "
    "build = v.b, supplemental_build = v.sb, extra_version = v.e, release_id = v.r, "
    "install_state = v.st, last_error = v.le, failed_at = v.fa, deferred_release = v.dr, "
    "deferred_since = v.ds FROM unnest(%b::float8[], %b::bigint[], %b::text[], %b::text[], "
    "%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::float8[], "
    "%b::text[], %b::float8[], %b::bigint[]) AS v(s, q, i, o, b, sb, e, r, st, le, fa, dr, ds, id) "
    "WHERE d.id = v.id",
)
_HISTORY = (
    "INSERT INTO release_history (device_id, at, from_release, to_release, build, "
    "supplemental_build) VALUES (?, ?, ?, ?, ?, ?)",
    "INSERT INTO release_history (device_id, at, from_release, to_release, build, "
    "supplemental_build) SELECT * FROM unnest(%b::bigint[], %b::float8[], %b::text[], %b::text[], "
    "%b::text[], %b::text[])",
)
_DAILY = (
    "INSERT INTO release_daily (day, release_id, delta) VALUES (?, ?, ?) "
    "ON CONFLICT (day, release_id) DO UPDATE SET delta = release_daily.delta + excluded.delta",
    "INSERT INTO release_daily (day, release_id, delta) "
    "SELECT * FROM unnest(%b::int[], %b::text[], %b::bigint[]) "
    "ON CONFLICT (day, release_id) DO UPDATE SET delta = release_daily.delta + excluded.delta",
)
_DECLARATIONS = (
    "INSERT INTO declaration_status (device_id, identifier, active, valid, server_token, "
    "reasons, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "INSERT INTO declaration_status (device_id, identifier, active, valid, server_token, "
    "reasons, updated) SELECT * FROM unnest(%b::bigint[], %b::text[], %b::int[], %b::text[], "
    "%b::text[], %b::text[], %b::float8[])",
)


class _Batch:
    """What one batch changes, gathered before anything is written."""

    def __init__(self, state: dict[int, list[Any]]) -> None:
        self.state = state  # id -> [report_seq, items, release_id, secret_hash]
        self.touched: set[int] = set()
        self.history: list[tuple[Any, ...]] = []
        self.decl_rows: dict[int, list[tuple[Any, ...]]] = {}

    def apply(self, dev: int, secret_sha256: str, rep: Report, now: float) -> ApplyResult:
        st = self.state.get(dev)
        if st is None:
            return "unknown_device"
        if not hmac.compare_digest(st[3], secret_sha256):
            return "bad_secret"
        self.touched.add(dev)  # seen, even by a resend
        if rep.sequence is not None and rep.sequence <= st[0]:
            return "duplicate"
        if rep.sequence is not None:
            st[0] = rep.sequence
        items: dict[str, Any] = {} if rep.full else st[1]
        for name, value in rep.items.items():
            items[name] = {"value": value, "updated": now}
        st[1] = items
        release = _release_of(items)
        if release != st[2]:
            v = _values(items)
            when = rep.timestamp if rep.timestamp is not None else now
            self.history.append(
                (
                    dev,
                    when,
                    st[2],
                    release,
                    v.get("device.operating-system.build-version"),
                    v.get("device.operating-system.supplemental.build-version"),
                )
            )
            st[2] = release
        if "management.declarations" in rep.items or rep.full:
            self.decl_rows[dev] = _declaration_rows(
                dev, rep.items.get("management.declarations"), now
            )
        return "applied"

    def device_rows(self, now: float) -> list[tuple[Any, ...]]:
        rows = []
        for dev in sorted(self.touched):
            seq, items, release, _ = self.state[dev]
            v = _values(items)
            failure = v.get("softwareupdate.failure-reason") or {}
            pending = v.get("softwareupdate.pending-version") or {}
            install_state = v.get("softwareupdate.install-state")
            failed = install_state == "failed"
            rows.append(
                (
                    now,
                    seq,
                    json.dumps(items, sort_keys=True),
                    v.get("device.operating-system.version"),
                    v.get("device.operating-system.build-version"),
                    v.get("device.operating-system.supplemental.build-version"),
                    v.get("device.operating-system.supplemental.extra-version"),
                    release,
                    install_state,
                    failure.get("reason") if failed else None,
                    _ts(failure.get("timestamp")) if failed else None,
                    pending.get("release-id"),
                    _ts(pending.get("since")),
                    dev,
                )
            )
        return rows


def apply_reports(
    db: Database, batch: Sequence[tuple[int, str, Report]], now: float | None = None
) -> list[ApplyResult]:
    """Apply ``(device id, SHA-256 hex of the presented secret, report)`` triples in one
    transaction; return what became of each (in order)."""
    now = time.time() if now is None else now
    ids = sorted({dev for dev, _, _ in batch})
    with db.connect() as conn:
        b = _Batch(_lock(db, conn, ids))
        results = [b.apply(dev, secret, rep, now) for dev, secret, rep in batch]
        pg = db.dialect == "postgresql"
        with conn.pipeline() if pg else nullcontext():
            _write(db, conn, b, now)
    return results


def _lock(db: Database, conn: Any, ids: list[int]) -> dict[int, list[Any]]:
    """Lock and read the batch's device rows."""
    if db.dialect == "postgresql":
        cur = conn.execute(
            "SELECT id, report_seq, items, release_id, secret_hash FROM devices "
            "WHERE id = ANY(%b::bigint[]) FOR UPDATE",
            (ids,),
        )
    else:  # one writer at a time anyway; the batch is at most 256 ids
        cur = db.execute(
            conn,
            "SELECT id, report_seq, items, release_id, secret_hash FROM devices "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        )
    return {int(r[0]): [int(r[1]), json.loads(r[2]), r[3], str(r[4])] for r in cur.fetchall()}


def _write(db: Database, conn: Any, b: _Batch, now: float) -> None:
    _many(db, conn, _DEVICES, b.device_rows(now))
    _many(db, conn, _HISTORY, b.history)
    _many(db, conn, _DAILY, daily_counts(b.history))
    if b.decl_rows:
        reset = sorted(b.decl_rows)
        if db.dialect == "postgresql":
            conn.execute(
                "DELETE FROM declaration_status WHERE device_id = ANY(%b::bigint[])", (reset,)
            )
        else:
            db.executemany(
                conn, "DELETE FROM declaration_status WHERE device_id = ?", [(d,) for d in reset]
            )
        _many(db, conn, _DECLARATIONS, [r for d in reset for r in b.decl_rows[d]])


def _many(db: Database, conn: Any, sql: tuple[str, str], rows: list[tuple[Any, ...]]) -> None:
    """One statement for all ``rows``: ``executemany`` on SQLite, one statement over
    column arrays (``unnest``) on PostgreSQL."""
    if not rows:
        return
    if db.dialect == "postgresql":
        conn.execute(sql[1], [list(col) for col in zip(*rows, strict=True)])
    else:
        db.executemany(conn, sql[0], rows)


def daily_counts(history: list[tuple[Any, ...]]) -> list[tuple[int, str, int]]:
    """Per-day release count changes of history rows, summed, in key order (so concurrent
    writers lock rows in the same order)."""
    sums: dict[tuple[int, str], int] = {}
    for _dev, at, old, new, _b, _s in history:
        day = int(at // 86400)
        for rel, d in ((old, -1), (new, 1)):
            if rel is not None:
                sums[(day, rel)] = sums.get((day, rel), 0) + d
    return [(day, rel, d) for (day, rel), d in sorted(sums.items()) if d]


def _values(items: dict[str, Any]) -> dict[str, Any]:
    return {k: v["value"] for k, v in items.items()}


def _release_of(items: dict[str, Any]) -> str | None:
    v = _values(items)
    return release_label(
        v.get("device.operating-system.version"),
        v.get("device.operating-system.supplemental.extra-version"),
    )


def _ts(text: Any) -> float | None:
    return parse_epoch(text) if isinstance(text, str) else None


def _declaration_rows(dev: int, value: Any, now: float) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    seen: set[str] = set()
    for kind in ("configurations", "activations", "assets", "management"):
        for r in (value or {}).get(kind, []):
            if r["identifier"] in seen:
                continue
            seen.add(r["identifier"])
            rows.append(
                (
                    dev,
                    r["identifier"],
                    int(r["active"]),
                    r["valid"],
                    r["server-token"],
                    json.dumps(r.get("reasons", [])),
                    now,
                )
            )
    return rows
