"""The device's side of the MDM server: sync declarations, queue and send status reports.

:class:`MdmClient` talks to ``bsipatch mdm serve`` with the standard library only (no
server dependency on the device). ``sync()`` fetches the declarations token and, when it
changed, the declarations whose ``ServerToken`` changed; a
``com.apple.configuration.softwareupdate.settings`` declaration is applied through
:class:`bsipatch.agent.policy.Policy` whole or not at all (a bad one keeps the previous
policy and is reported ``invalid`` in ``management.declarations``). ``report(event)``
builds an incremental status report from :func:`bsipatch.agent.status.device_report`,
appends it to a bounded on-device queue (``<preboot>/agent/mdm.json``, written
atomically) and sends what is queued, oldest first; a report leaves the queue only once
the server acknowledged it, and ``ReportSequence`` lets the server drop a resend. When
the server is unreachable the agent keeps its last policy and the queue waits. It
decides nothing about installs: that stays in the agent.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Any

from bsipatch._io import atomic_write
from bsipatch._time import now_text, utc_now
from bsipatch.agent.policy import DECLARATION_TYPE, Policy
from bsipatch.agent.state import AgentStore
from bsipatch.agent.status import device_report
from bsipatch.errors import FetchError, MdmError, PolicyError

MAX_QUEUE = 64
MAX_RESPONSE = 1024 * 1024
RELEASE_ITEMS = (
    "device.operating-system.version",
    "device.operating-system.build-version",
    "device.operating-system.supplemental.build-version",
    "device.operating-system.supplemental.extra-version",
)
_EVENT_STATE = {"install": "installed", "rollback": "rolled-back", "uninstall": "uninstalled"}


def load_enrolment(path: str | Path) -> dict[str, Any]:
    """Read an enrolment file written by ``bsipatch mdm enroll --out``."""
    try:
        doc = json.loads(Path(path).read_bytes())
        int(doc["device_id"])
        str(doc["secret"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MdmError(
            f"enrolment file {path}: {exc}; expected JSON with device_id, secret"
        ) from exc
    return dict(doc)


class MdmClient:
    """One device's MDM channel.

    Args:
        preboot: the device's preboot directory (``agent/`` holds policy and queue).
        enrolment: the enrolment document (:func:`load_enrolment`).
        server: the server URL; default the enrolment's ``server``.
        timeout: seconds per request.
    """

    def __init__(
        self,
        preboot: str | Path,
        enrolment: dict[str, Any],
        server: str | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.store = AgentStore(preboot)
        self.preboot = preboot
        url = server or enrolment.get("server")
        if not url:
            raise MdmError("no MDM server URL: give --mdm URL or put 'server' in the enrolment")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MdmError(f"MDM URL {url!r}: expected http(s)://HOST[:PORT]")
        self._parts = parts
        self._auth = f"Bearer {int(enrolment['device_id'])}.{enrolment['secret']}"
        self.timeout = timeout
        self._path = self.store.dir / "mdm.json"

    # --- state --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The stored channel state (token, declaration status, snapshot, queue)."""
        try:
            data = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            data = {}
        data.setdefault("declarations_token", None)
        data.setdefault("declarations", {})
        data.setdefault("snapshot", None)
        data.setdefault("seq", 0)
        data.setdefault("queue", [])
        data.setdefault("deferred_since", {})
        data.setdefault("failures", 0)
        return dict(data)

    def _save(self, state: dict[str, Any]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self._path) as f:
            f.write(json.dumps(state, sort_keys=True).encode())

    # --- HTTP ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        cls = (
            http.client.HTTPSConnection
            if self._parts.scheme == "https"
            else http.client.HTTPConnection
        )
        conn = cls(self._parts.hostname or "", self._parts.port, timeout=self.timeout)
        try:
            headers = {"Authorization": self._auth}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, self._parts.path.rstrip("/") + path, body, headers)
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE + 1)
        except OSError as exc:
            raise FetchError(f"MDM server {self._parts.netloc} unreachable: {exc}") from exc
        finally:
            conn.close()
        if len(data) > MAX_RESPONSE:
            raise MdmError(f"MDM response to {path} is over {MAX_RESPONSE} bytes")
        if resp.status >= 500:
            raise FetchError(f"MDM server answered {resp.status} to {path}")
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise MdmError(f"MDM response to {path} is not JSON") from exc
        if resp.status != 200:
            raise MdmError(f"MDM server refused {path}: {resp.status} {doc}")
        return doc

    # --- declarations -------------------------------------------------------------------------

    def sync(self) -> bool:
        """Fetch declarations if their token changed; return True when policy changed.

        Raises:
            FetchError: the server is unreachable (the last policy stays in force).
        """
        state = self.state()
        token = self._request("GET", "/mdm/tokens")["SyncTokens"]["DeclarationsToken"]
        if token == state["declarations_token"]:
            return False
        listing = self._request("GET", "/mdm/declaration-items")
        configs = listing["Declarations"]["Configurations"]
        known: dict[str, Any] = state["declarations"]
        status: dict[str, Any] = {}
        docs: dict[str, Any] = {}
        for c in configs:
            ident, stoken = c["Identifier"], c["ServerToken"]
            if ident in known and known[ident]["server-token"] == stoken:
                status[ident] = known[ident]
                continue
            quoted = urllib.parse.quote(ident, safe="")
            docs[ident] = self._request("GET", f"/mdm/declarations/configuration/{quoted}")
            status[ident] = {"server-token": stoken, "valid": "unknown", "active": False}
        changed = self._apply(docs, status)
        state = self.state()
        state["declarations"] = status
        state["declarations_token"] = listing["DeclarationsToken"]
        self._save(state)
        return changed

    def _apply(self, docs: dict[str, Any], status: dict[str, Any]) -> bool:
        """Validate new declarations and apply the one softwareupdate.settings policy."""
        settings = [i for i in status if i in docs or status[i].get("type") == DECLARATION_TYPE]
        changed = False
        for ident, doc in docs.items():
            st = status[ident]
            st["type"] = doc.get("Type")
            if doc.get("Type") != DECLARATION_TYPE:
                st.update(
                    valid="invalid",
                    active=False,
                    reasons=[
                        {
                            "code": "Error.UnknownType",
                            "description": f"declaration type {doc.get('Type')!r} "
                            "is not supported by this agent",
                        }
                    ],
                )
                continue
            try:
                Policy.from_json(doc)
            except PolicyError as exc:
                st.update(
                    valid="invalid",
                    active=False,
                    reasons=[{"code": "Error.ConfigurationInvalid", "description": str(exc)}],
                )
                continue
            others = [i for i in settings if i != ident and status[i].get("active")]
            if others:
                st.update(
                    valid="invalid",
                    active=False,
                    reasons=[
                        {
                            "code": "Error.Conflict",
                            "description": f"{others[0]} already sets the software-update policy",
                        }
                    ],
                )
                continue
            self.store.save_policy(json.dumps(doc).encode())
            st.update(valid="valid", active=True, reasons=[])
            changed = True
        # an invalid new version keeps the last valid policy; only a withdrawn declaration
        # (none of this type listed any more) clears it
        listed = any(s.get("type") == DECLARATION_TYPE for s in status.values())
        if not listed and self.store.policy().present:
            self.store.clear_policy()
            changed = True
        return changed

    # --- status reports ---------------------------------------------------------------------------

    def _items(self, event: str, detail: str, state: dict[str, Any]) -> dict[str, Any]:
        rep = device_report(_preboot(self.preboot))
        now = now_text()
        last = rep["last_check"] or {}
        failed = bool(last) and not last.get("ok", True)
        state["failures"] = (
            state["failures"] + 1
            if failed and event == "check"
            else (state["failures"] if failed else 0)
        )
        deferred = rep["deferred_releases"]
        since = {
            d["release_id"]: state["deferred_since"].get(d["release_id"], now) for d in deferred
        }
        state["deferred_since"] = since
        if failed:
            install_state = "failed"
        elif event in _EVENT_STATE:
            install_state = _EVENT_STATE[event]
        elif deferred:
            install_state = "deferred"
        else:
            install_state = "up-to-date" if last else "none"
        pending = None
        if deferred:
            d = deferred[0]
            pending = {
                "release-id": d["release_id"],
                "since": since[d["release_id"]],
                "reason": str(d.get("reason") or "")[:1024],
            }
        failure = None
        if failed:
            failure = {
                "count": max(1, state["failures"]),
                "reason": str(last.get("error") or "unknown")[:2048],
                "timestamp": last.get("time") or now,
            }
        decls = [
            {
                "identifier": i,
                "active": bool(s["active"]),
                "valid": s["valid"],
                "server-token": s["server-token"],
                "reasons": s.get("reasons", []),
            }
            for i, s in sorted(state["declarations"].items())
        ]
        return {
            "device.operating-system.version": rep["OSVersion"],
            "device.operating-system.build-version": rep["BuildVersion"],
            "device.operating-system.supplemental.build-version": rep["SupplementalBuildVersion"],
            "device.operating-system.supplemental.extra-version": rep["SupplementalOSVersionExtra"],
            "softwareupdate.install-state": install_state,
            "softwareupdate.failure-reason": failure,
            "softwareupdate.pending-version": pending,
            "management.declarations": {"configurations": decls},
            "bsipatch.agent.last-event": {"event": event, "time": now, "detail": detail[:1024]},
        }

    def report(self, event: str, detail: str = "") -> dict[str, Any]:
        """Queue an incremental report for ``event`` and send the queue.

        Returns:
            ``{"queued": N, "sent": M}`` (M < N when the server is unreachable).
        """
        state = self.state()
        items = self._items(event, detail, state)
        snapshot = state["snapshot"]
        full = snapshot is None
        changed = items if full else {k: v for k, v in items.items() if snapshot.get(k) != v}
        # milliseconds since the epoch, never below the last one: a device that lost its
        # queue state still sends sequences above what the server stored
        state["seq"] = max(state["seq"] + 1, int(utc_now().timestamp() * 1000))
        doc = {
            "StatusItems": _nest(changed),
            "FullReport": full,
            "ReportSequence": state["seq"],
            "Timestamp": now_text(),
        }
        state["snapshot"] = items
        state["queue"] = _bounded(state["queue"] + [{"items": changed, "doc": doc}])
        self._save(state)
        return self.flush()

    def flush(self) -> dict[str, Any]:
        """Send queued reports oldest first; stop at the first failure."""
        state = self.state()
        queued, sent = len(state["queue"]), 0
        while state["queue"]:
            head = state["queue"][0]
            try:
                self._request("PUT", "/mdm/status", json.dumps(head["doc"]).encode())
            except FetchError:
                break
            state["queue"].pop(0)
            sent += 1
            self._save(state)
        return {"queued": queued, "sent": sent, "left": len(state["queue"])}


def _preboot(path: str | Path) -> Any:
    from bsipatch.device.preboot import Preboot

    return Preboot(path)


def _nest(items: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in items.items():
        node = out
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _bounded(queue: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep at most MAX_QUEUE reports by merging neighbours, never two release changes."""
    while len(queue) > MAX_QUEUE:
        pick = 0
        for i in range(len(queue) - 1):
            a, b = queue[i]["items"], queue[i + 1]["items"]
            if not (any(k in a for k in RELEASE_ITEMS) and any(k in b for k in RELEASE_ITEMS)):
                pick = i
                break
        a, b = queue[pick], queue[pick + 1]
        items = {**a["items"], **b["items"]}
        doc = dict(b["doc"])
        doc["StatusItems"] = _nest(items)
        doc["FullReport"] = a["doc"]["FullReport"] or b["doc"]["FullReport"]
        if any(k in a["items"] for k in RELEASE_ITEMS):
            doc["Timestamp"] = a["doc"]["Timestamp"]  # when the release changed
        queue[pick : pick + 2] = [{"items": items, "doc": doc}]
    return queue
