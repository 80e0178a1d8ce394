"""What the MDM server stores: enrolments, declarations and sets, and device status.

Operations on a :class:`~bsipatch.mdm.db.Database`, each in one transaction. Status
reports are applied in batches (:meth:`Store.apply_reports`, called by the group
committer in :mod:`bsipatch.mdm.groupcommit`; the writing is
:mod:`bsipatch.mdm.reports`). Validation of the
documents is :mod:`bsipatch.mdm.items`'s job; fleet queries are in
:mod:`bsipatch.mdm.fleet`; HTTP is elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bsipatch.errors import MdmError
from bsipatch.mdm.db import Database
from bsipatch.mdm.items import Report, declarations_token, server_token
from bsipatch.mdm.reports import ApplyResult, apply_reports

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
        self, batch: Sequence[tuple[int, str, Report]], now: float | None = None
    ) -> list[ApplyResult]:
        """Apply ``(device id, SHA-256 hex of the presented secret, report)`` triples in one
        transaction; see :func:`bsipatch.mdm.reports.apply_reports`."""
        return apply_reports(self.db, batch, now)


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
