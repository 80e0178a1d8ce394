"""What the MDM server stores: enrolments, declarations and sets, and device status.

Operations on a :class:`~bsipatch.mdm.db.Database`, each in one transaction. Status
reports are applied in batches (:meth:`Store.apply_reports`, called by the group
committer in :mod:`bsipatch.mdm.groupcommit`): the latest value of every item per
device (``devices.items``, a JSON map with the time each item was last reported),
columns derived from it for the fleet queries, the per-declaration status, and one
``release_history`` row each time a device's release changes. Validation of the
documents is :mod:`bsipatch.mdm.items`'s job; fleet queries are in
:mod:`bsipatch.mdm.fleet`; HTTP is elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from bsipatch._time import parse_epoch
from bsipatch.errors import MdmError
from bsipatch.mdm.db import Database
from bsipatch.mdm.items import Report, declarations_token, release_label, server_token

_NAME_LIMIT = 128


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_name(name: str, what: str) -> str:
    if not name or len(name) > _NAME_LIMIT or not name.isprintable() or "/" in name:
        raise MdmError(f"{what} {name!r}: expected 1-{_NAME_LIMIT} printable characters, no '/'")
    return name


@dataclass(frozen=True)
class Enrolment:
    """What a device needs to talk to the server (saved as its enrolment file)."""

    device_id: int
    name: str
    secret: str

    def to_dict(self, server: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "name": self.name,
            "secret": self.secret,
        }
        if server:
            out["server"] = server
        return out


class Store:
    """The server's data operations over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- admin and enrolment --------------------------------------------------------------

    def new_admin_token(self) -> str:
        """Create (or replace) the admin token; only its hash is stored."""
        token = "adm_" + secrets.token_urlsafe(32)
        with self.db.connect() as conn:
            self.db.execute(
                conn,
                "INSERT INTO meta (key, value) VALUES ('admin_token_sha256', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (_hash(token),),
            )
        return token

    def check_admin(self, token: str) -> bool:
        """Whether ``token`` is the admin token."""
        rows = self.db.query("SELECT value FROM meta WHERE key = 'admin_token_sha256'")
        return bool(rows) and hmac.compare_digest(rows[0][0], _hash(token))

    def enroll(self, name: str, sets: list[str] | None = None) -> Enrolment:
        """Enrol a new device (or give an existing one a new secret) in ``sets``."""
        _check_name(name, "device name")
        secret = secrets.token_urlsafe(32)
        with self.db.connect() as conn:
            row = self.db.execute(conn, "SELECT id FROM devices WHERE name = ?", (name,)).fetchone()
            if row is None:
                self.db.execute(
                    conn,
                    "INSERT INTO devices (name, secret_hash, enrolled) VALUES (?, ?, ?)",
                    (name, _hash(secret), time.time()),
                )
                row = self.db.execute(
                    conn, "SELECT id FROM devices WHERE name = ?", (name,)
                ).fetchone()
            else:
                self.db.execute(
                    conn, "UPDATE devices SET secret_hash = ? WHERE id = ?", (_hash(secret), row[0])
                )
            for s in sets or []:
                self.db.execute(
                    conn,
                    "INSERT INTO device_sets (device_id, set_name) VALUES (?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (row[0], _check_name(s, "set name")),
                )
        return Enrolment(int(row[0]), name, secret)

    def secret_hash(self, device_id: int) -> str | None:
        """The stored secret hash of a device, None when it is not enrolled."""
        rows = self.db.query("SELECT secret_hash FROM devices WHERE id = ?", (device_id,))
        return str(rows[0][0]) if rows else None

    def device_id(self, name: str) -> int | None:
        rows = self.db.query("SELECT id FROM devices WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else None

    # --- declarations and sets ---------------------------------------------------------------

    def put_declaration(self, dtype: str, identifier: str, payload: dict[str, Any]) -> str:
        """Create or update a declaration; return its server token (unchanged content keeps
        the token and the update time)."""
        _check_name(identifier, "declaration identifier")
        token = server_token(dtype, identifier, payload)
        body = json.dumps(payload, sort_keys=True)
        with self.db.connect() as conn:
            self.db.execute(
                conn,
                "INSERT INTO declarations (identifier, type, payload, server_token, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (identifier) DO UPDATE SET "
                "type = excluded.type, payload = excluded.payload, "
                "server_token = excluded.server_token, updated = excluded.updated "
                "WHERE declarations.server_token <> excluded.server_token",
                (identifier, dtype, body, token, time.time()),
            )
        return token

    def assign(self, set_name: str, *, declarations: list[str], devices: list[str]) -> None:
        """Add declarations and devices (by name) to a set."""
        _check_name(set_name, "set name")
        with self.db.connect() as conn:
            for ident in declarations:
                if not self.db.execute(
                    conn, "SELECT 1 FROM declarations WHERE identifier = ?", (ident,)
                ).fetchone():
                    raise MdmError(f"no declaration {ident!r}")
                self.db.execute(
                    conn,
                    "INSERT INTO set_declarations (set_name, identifier) VALUES (?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (set_name, ident),
                )
            for name in devices:
                row = self.db.execute(
                    conn, "SELECT id FROM devices WHERE name = ?", (name,)
                ).fetchone()
                if row is None:
                    raise MdmError(f"no enrolled device {name!r}")
                self.db.execute(
                    conn,
                    "INSERT INTO device_sets (device_id, set_name) VALUES (?, ?) "
                    "ON CONFLICT DO NOTHING",
                    (row[0], set_name),
                )

    def device_declarations(self, device_id: int) -> list[tuple[str, str, str]]:
        """(identifier, type, server token) of every declaration assigned to a device."""
        rows = self.db.query(
            "SELECT DISTINCT d.identifier, d.type, d.server_token FROM declarations d "
            "JOIN set_declarations sd ON sd.identifier = d.identifier "
            "JOIN device_sets ds ON ds.set_name = sd.set_name WHERE ds.device_id = ? "
            "ORDER BY d.identifier",
            (device_id,),
        )
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def sync_token(self, device_id: int) -> str:
        """The device's ``DeclarationsToken``."""
        return declarations_token([(i, t) for i, _, t in self.device_declarations(device_id)])

    def declaration_for(self, device_id: int, identifier: str) -> dict[str, Any] | None:
        """The full declaration if it is assigned to the device, else None."""
        rows = self.db.query(
            "SELECT d.type, d.payload, d.server_token FROM declarations d "
            "JOIN set_declarations sd ON sd.identifier = d.identifier "
            "JOIN device_sets ds ON ds.set_name = sd.set_name "
            "WHERE ds.device_id = ? AND d.identifier = ?",
            (device_id, identifier),
        )
        if not rows:
            return None
        dtype, payload, token = rows[0]
        return {
            "Type": dtype,
            "Identifier": identifier,
            "ServerToken": token,
            "Payload": json.loads(payload),
        }

    def withdraw(self, release_id: str, *, undo: bool = False) -> None:
        """Mark a release withdrawn by the vendor (or not any more)."""
        with self.db.connect() as conn:
            if undo:
                self.db.execute(conn, "DELETE FROM withdrawn WHERE release_id = ?", (release_id,))
            else:
                self.db.execute(
                    conn,
                    "INSERT INTO withdrawn (release_id, at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (release_id, time.time()),
                )

    # --- status ------------------------------------------------------------------------------

    def apply_reports(
        self, batch: list[tuple[int, Report]], now: float | None = None
    ) -> list[bool]:
        """Apply validated reports in one transaction; return, per report, whether it was
        applied (False: a duplicate by ``ReportSequence``)."""
        now = time.time() if now is None else now
        ids = sorted({dev for dev, _ in batch})
        with self.db.connect() as conn:
            marks = ",".join("?" * len(ids))
            sql = f"SELECT id, report_seq, items, release_id FROM devices WHERE id IN ({marks})"  # noqa: S608
            if self.db.dialect == "postgresql":
                sql += " FOR UPDATE"
            rows = self.db.execute(conn, sql, ids).fetchall()
            state = {int(r[0]): [int(r[1]), json.loads(r[2]), r[3]] for r in rows}
            applied: list[bool] = []
            history: list[tuple[Any, ...]] = []
            decl_rows: list[tuple[Any, ...]] = []
            decl_reset: set[int] = set()
            for dev, rep in batch:
                st = state.get(dev)
                if st is None or (rep.sequence is not None and rep.sequence <= st[0]):
                    applied.append(False)
                    continue
                applied.append(True)
                if rep.sequence is not None:
                    st[0] = rep.sequence
                items: dict[str, Any] = {} if rep.full else st[1]
                for name, value in rep.items.items():
                    items[name] = {"value": value, "updated": now}
                st[1] = items
                when = rep.timestamp if rep.timestamp is not None else now
                release = _release_of(items)
                if release != st[2]:
                    v = _values(items)
                    history.append(
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
                    decl_reset.add(dev)
                    decl_rows = [r for r in decl_rows if r[0] != dev]
                    decl_rows += _declaration_rows(
                        dev, rep.items.get("management.declarations"), now
                    )
            self._write_devices(conn, state, {d for d, _ in batch}, now)
            self.db.executemany(
                conn,
                "INSERT INTO release_history (device_id, at, from_release, to_release, build, "
                "supplemental_build) VALUES (?, ?, ?, ?, ?, ?)",
                history,
            )
            self.db.executemany(
                conn,
                "INSERT INTO release_daily (day, release_id, delta) VALUES (?, ?, ?) "
                "ON CONFLICT (day, release_id) DO UPDATE SET "
                "delta = release_daily.delta + excluded.delta",
                _daily(history),
            )
            self.db.executemany(
                conn,
                "DELETE FROM declaration_status WHERE device_id = ?",
                [(d,) for d in decl_reset],
            )
            self.db.executemany(
                conn,
                "INSERT INTO declaration_status (device_id, identifier, active, valid, "
                "server_token, reasons, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                decl_rows,
            )
        return applied

    def _write_devices(
        self, conn: Any, state: dict[int, list[Any]], ids: set[int], now: float
    ) -> None:
        rows = []
        for dev in sorted(ids & set(state)):
            seq, items, release = state[dev]
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
        self.db.executemany(
            conn,
            "UPDATE devices SET last_seen = ?, report_seq = ?, items = ?, os_version = ?, "
            "build = ?, supplemental_build = ?, extra_version = ?, release_id = ?, "
            "install_state = ?, last_error = ?, failed_at = ?, deferred_release = ?, "
            "deferred_since = ? WHERE id = ?",
            rows,
        )


def _daily(history: list[tuple[Any, ...]]) -> list[tuple[int, str, int]]:
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


def check_enrolment(doc: Any) -> Enrolment:
    """Validate an enrolment file's content (the device side reads it)."""
    if not isinstance(doc, dict):
        raise MdmError("enrolment file must hold a JSON object")
    try:
        return Enrolment(int(doc["device_id"]), str(doc["name"]), str(doc["secret"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise MdmError(
            f"enrolment file lacks or mistypes {exc}; expected device_id, name, secret"
        ) from exc
