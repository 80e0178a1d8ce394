"""DDM status items and declarations: validate what devices send, derive the sync tokens.

Pure functions (no I/O, no database): the server calls :func:`parse_report` on every
status report before anything is stored, and :func:`server_token` /
:func:`declarations_token` whenever it lists declarations. Storage and HTTP live in
:mod:`bsipatch.mdm.store` and :mod:`bsipatch.mdm.app`.

A status report follows Apple's declarative device management layout: ``StatusItems``
nests the dotted item names (``{"device": {"operating-system": {"build-version": ...}}}``),
``FullReport`` says whether the items not named are gone. bsipatch adds two optional
top-level keys: ``ReportSequence`` (a per-device counter: a report whose sequence is not
above the last stored one is acknowledged but not applied again) and ``Timestamp``
(when the device produced the report; release changes are recorded at that time).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bsipatch._time import parse_epoch
from bsipatch.errors import FormatError

MAX_BODY = 64 * 1024
MAX_DECLARATIONS = 64

INSTALL_STATES = (
    "none",
    "up-to-date",
    "deferred",
    "downloading",
    "installing",
    "installed",
    "rolled-back",
    "uninstalled",
    "failed",
)
EVENTS = ("check", "install", "rollback", "uninstall", "boot", "policy", "sync")
VALID_VALUES = ("valid", "invalid", "unknown")

_REPORT_KEYS = {"StatusItems", "Errors", "FullReport", "ReportSequence", "Timestamp"}


class ItemError(ValueError):
    """A status report or declaration is malformed; the message says what and where."""


def _str(v: Any, where: str, *, nullable: bool = False, limit: int = 256) -> Any:
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        kind = "a string or null" if nullable else "a string"
        raise ItemError(f"{where} must be {kind}, got {type(v).__name__}")
    if len(v) > limit:
        raise ItemError(f"{where} is {len(v)} characters; limit {limit}")
    return v


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 2**62:
        raise ItemError(f"{where} must be a non-negative integer, got {v!r}")
    return v


def _time(v: Any, where: str) -> float:
    s = _str(v, where, limit=40)
    try:
        return parse_epoch(s, where)
    except FormatError as exc:
        raise ItemError(f"{where} must be a UTC time like 2026-11-28T10:00:00Z, got {s!r}") from exc


def _obj(v: Any, where: str, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ItemError(f"{where} must be an object, got {type(v).__name__}")
    missing = sorted(required - set(v))
    unknown = sorted(set(v) - required - optional)
    if missing:
        raise ItemError(f"{where} lacks key(s) {', '.join(missing)}")
    if unknown:
        raise ItemError(f"{where} has unknown key(s) {', '.join(unknown)}")
    return v


def _enum(values: tuple[str, ...]) -> Callable[[Any, str], Any]:
    def check(v: Any, where: str) -> Any:
        if v not in values:
            raise ItemError(f"{where} must be one of {', '.join(values)}, got {v!r}")
        return v

    return check


def _failure(v: Any, where: str) -> Any:
    if v is None:
        return None
    _obj(v, where, {"count", "reason", "timestamp"}, set())
    _int(v["count"], where + ".count")
    _str(v["reason"], where + ".reason", limit=2048)
    _time(v["timestamp"], where + ".timestamp")
    return v


def _pending(v: Any, where: str) -> Any:
    if v is None:
        return None
    _obj(v, where, {"release-id", "since"}, {"reason"})
    _str(v["release-id"], where + ".release-id")
    _time(v["since"], where + ".since")
    _str(v.get("reason", ""), where + ".reason", limit=1024)
    return v


def _event(v: Any, where: str) -> Any:
    _obj(v, where, {"event", "time"}, {"detail"})
    _enum(EVENTS)(v["event"], where + ".event")
    _time(v["time"], where + ".time")
    _str(v.get("detail", ""), where + ".detail", limit=1024)
    return v


def _declarations(v: Any, where: str) -> Any:
    kinds = {"activations", "configurations", "assets", "management"}
    _obj(v, where, set(), kinds)
    for kind in kinds & set(v):
        rows = v[kind]
        if not isinstance(rows, list) or len(rows) > MAX_DECLARATIONS:
            raise ItemError(f"{where}.{kind} must be a list of at most {MAX_DECLARATIONS}")
        for i, row in enumerate(rows):
            w = f"{where}.{kind}[{i}]"
            _obj(row, w, {"identifier", "active", "valid", "server-token"}, {"reasons"})
            _str(row["identifier"], w + ".identifier")
            if not isinstance(row["active"], bool):
                raise ItemError(f"{w}.active must be true or false, got {row['active']!r}")
            _enum(VALID_VALUES)(row["valid"], w + ".valid")
            _str(row["server-token"], w + ".server-token")
            reasons = row.get("reasons", [])
            if not isinstance(reasons, list) or len(reasons) > 16:
                raise ItemError(f"{w}.reasons must be a list of at most 16")
            for j, r in enumerate(reasons):
                _obj(r, f"{w}.reasons[{j}]", {"code"}, {"description", "details"})
                _str(r["code"], f"{w}.reasons[{j}].code")
                _str(r.get("description", ""), f"{w}.reasons[{j}].description", limit=2048)
    return v


def _opt_str(v: Any, where: str) -> Any:
    return _str(v, where, nullable=True)


#: every status item the server accepts, with its validator
ITEMS: dict[str, Callable[[Any, str], Any]] = {
    "device.operating-system.version": _str,
    "device.operating-system.build-version": _str,
    "device.operating-system.supplemental.build-version": _opt_str,
    "device.operating-system.supplemental.extra-version": _opt_str,
    "softwareupdate.install-state": _enum(INSTALL_STATES),
    "softwareupdate.failure-reason": _failure,
    "softwareupdate.pending-version": _pending,
    "management.declarations": _declarations,
    "bsipatch.agent.last-event": _event,
}
_PREFIXES = {name.rsplit(".", i)[0] for name in ITEMS for i in range(1, name.count(".") + 1)}


@dataclass(frozen=True)
class Report:
    """A validated status report: flat item names to values."""

    items: dict[str, Any]
    full: bool
    sequence: int | None
    timestamp: float | None
    errors: list[Any]


def _flatten(obj: Any, path: str, out: dict[str, Any]) -> None:
    if path in ITEMS:
        out[path] = ITEMS[path](obj, path)
        return
    if path and path not in _PREFIXES:
        raise ItemError(f"unknown status item {path!r}")
    if not isinstance(obj, dict):
        raise ItemError(f"{path or 'StatusItems'} must be an object, got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not key or "." in key:
            raise ItemError(f"bad status item name {key!r} under {path or 'StatusItems'}")
        _flatten(value, f"{path}.{key}" if path else key, out)


def parse_report(body: bytes) -> Report:
    """Validate a status report body whole; raise :class:`ItemError` on the first problem.

    Example:
        >>> parse_report(b'{"StatusItems": {"softwareupdate": {"install-state": "none"}}}').items
        {'softwareupdate.install-state': 'none'}
    """
    if len(body) > MAX_BODY:
        raise ItemError(f"report is {len(body)} bytes; limit {MAX_BODY}")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ItemError(f"report is not valid JSON: {exc}") from exc
    _obj(doc, "report", {"StatusItems"}, _REPORT_KEYS - {"StatusItems"})
    items: dict[str, Any] = {}
    _flatten(doc["StatusItems"], "", items)
    full = doc.get("FullReport", False)
    if not isinstance(full, bool):
        raise ItemError(f"FullReport must be true or false, got {full!r}")
    seq = doc.get("ReportSequence")
    if seq is not None:
        _int(seq, "ReportSequence")
    ts = doc.get("Timestamp")
    stamp = _time(ts, "Timestamp") if ts is not None else None
    errors = doc.get("Errors", [])
    if not isinstance(errors, list) or len(errors) > 64:
        raise ItemError("Errors must be a list of at most 64")
    return Report(items, full, seq, stamp, errors)


def nest(items: dict[str, Any]) -> dict[str, Any]:
    """Flat item names back into the nested ``StatusItems`` layout."""
    out: dict[str, Any] = {}
    for name, value in items.items():
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def canonical(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def server_token(dtype: str, identifier: str, payload: dict[str, Any]) -> str:
    """The ``ServerToken`` of a declaration: a digest of its content, so it changes exactly
    when the content does."""
    doc = {"Type": dtype, "Identifier": identifier, "Payload": payload}
    return hashlib.sha256(canonical(doc)).hexdigest()[:32]


def declarations_token(pairs: list[tuple[str, str]]) -> str:
    """The ``DeclarationsToken`` over a device's (identifier, server token) pairs."""
    text = "\n".join(f"{i}\t{t}" for i, t in sorted(pairs))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def release_label(os_version: Any, extra: Any) -> str | None:
    """``("26.1", "(a)")`` -> ``"26.1 (a)"``; ``("26.1", None)`` -> ``"26.1"``."""
    if not os_version:
        return None
    return f"{os_version} {extra}" if extra else str(os_version)


def check_declaration(doc: Any) -> tuple[str, dict[str, Any]]:
    """Validate an administrator's declaration ``{"Type": ..., "Payload": {...}}``.

    Only the envelope is checked: the device judges the payload and reports it valid or
    invalid in ``management.declarations`` (DDM semantics).
    """
    if not isinstance(doc, dict):
        raise ItemError(f"declaration must be an object, got {type(doc).__name__}")
    _obj(doc, "declaration", {"Type", "Payload"}, {"Identifier", "ServerToken"})
    dtype = _str(doc["Type"], "Type")
    if not re.match(r"^com\.[a-z0-9.-]+$", dtype):
        raise ItemError(f"Type must look like com.apple.configuration.x, got {dtype!r}")
    payload = doc["Payload"]
    if not isinstance(payload, dict):
        raise ItemError(f"Payload must be an object, got {type(payload).__name__}")
    if len(canonical(payload)) > MAX_BODY:
        raise ItemError(f"Payload is over {MAX_BODY} bytes")
    return str(dtype), payload
