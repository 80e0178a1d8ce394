"""The MDM server's HTTP interface (Starlette): device endpoints, admin API, fleet page.

Devices authenticate with ``Authorization: Bearer <device_id>.<secret>`` and reach only
their own declarations and status; admin endpoints take ``Authorization: Bearer
<admin token>`` or the session cookie set by ``/login``. Every refusal is a 4xx with a
JSON body ``{"error": CODE, "message": TEXT}`` and stores nothing. A status report's
response is sent only after the group committer has made it durable.

``PUT /mdm/status`` is the hot path (every device, after every event): it is served by
a plain ASGI function in front of Starlette (no routing, no request object), and its
secret is checked by the writer in the same transaction that stores the report, under
the device row's lock, so a replaced secret stops working at once and a report costs
no query of its own. The other device endpoints look the secret up on every request.
Storage is
:mod:`bsipatch.mdm.store`, queries :mod:`bsipatch.mdm.fleet`, HTML
:mod:`bsipatch.mdm.page`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bsipatch.errors import MdmError
from bsipatch.mdm import fleet, page
from bsipatch.mdm.groupcommit import GroupCommitter
from bsipatch.mdm.items import (
    MAX_BODY,
    ItemError,
    check_declaration,
    declarations_token,
    parse_report,
)
from bsipatch.mdm.store import Store

_COOKIE = "bsipatch_admin"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_STATUS_OK = {
    "applied": b'{"ok":true,"applied":true}',
    "duplicate": b'{"ok":true,"applied":false}',  # a resend: acknowledged, not applied again
}
PAGE_ROWS = 25  # rows per list on the fleet page (the JSON API gives 100)


class HttpError(Exception):
    """A refusal: status code, machine code and message for the JSON body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(exc: HttpError) -> JSONResponse:
    return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status)


def _error_body(exc: HttpError) -> bytes:
    doc = {"error": exc.code, "message": exc.message}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def bearer_device(auth: str) -> tuple[int, str]:
    """``Bearer <id>.<secret>`` -> (device id, SHA-256 hex of the secret).

    Raises:
        HttpError: 401 when the header is missing or not of that form.
    """
    scheme, _, cred = auth.partition(" ")
    dev_text, _, secret = cred.partition(".")
    if (
        scheme.lower() != "bearer"
        or not (dev_text.isascii() and dev_text.isdigit() and len(dev_text) <= 18)
        or not secret
    ):
        raise HttpError(401, "unauthenticated", "expected Authorization: Bearer <id>.<secret>")
    return int(dev_text), hashlib.sha256(secret.encode()).hexdigest()


def _check_length(declared: str | None, limit: int) -> None:
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HttpError(413, "too_large", f"body of {declared} bytes; limit {limit}")


async def _asgi_body(receive: Receive, declared: str | None, limit: int = MAX_BODY) -> bytes | None:
    """The request body from ASGI messages (None: the client went away)."""
    _check_length(declared, limit)
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "too_large", f"body over the limit of {limit} bytes")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def _body(request: Request, limit: int = MAX_BODY) -> bytes:
    _check_length(request.headers.get("content-length"), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "too_large", f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, "malformed", f"body is not valid JSON: {exc}") from exc


def _refuse(dev: int, outcome: str) -> None:
    """Raise the 401 for a refused device (no-op for any other outcome)."""
    if outcome == "unknown_device":
        raise HttpError(401, "unknown_device", f"no enrolled device {dev}")
    if outcome == "bad_secret":
        raise HttpError(401, "bad_secret", f"wrong secret for device {dev}")


class MdmApp:
    """The server: one store, one group committer, the Starlette app in :attr:`app`."""

    def __init__(self, store: Store, *, stale_days: float = 7) -> None:
        self.store = store
        self.stale_days = stale_days
        self.committer = GroupCommitter(store)
        routes = [
            Route("/healthz", self.healthz),
            Route("/mdm/tokens", self.tokens),
            Route("/mdm/declaration-items", self.declaration_items),
            Route("/mdm/declarations/{kind}/{identifier:path}", self.declaration),
            Route("/admin/enrollments", self.enroll, methods=["POST"]),
            Route("/admin/declarations/{identifier:path}", self.put_declaration, methods=["PUT"]),
            Route("/admin/sets/{name}", self.put_set, methods=["PUT"]),
            Route("/admin/withdrawn/{release:path}", self.withdrawn, methods=["PUT", "DELETE"]),
            Route("/admin/fleet", self.fleet_json),
            Route("/admin/devices/{name:path}", self.device_json),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/", self.fleet_page),
            Route("/devices/{name:path}", self.device_page),
        ]
        self.starlette = Starlette(routes=routes, lifespan=self._lifespan)
        self.starlette.add_exception_handler(HttpError, self._handle)  # type: ignore[arg-type]

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application: the status hot path, else Starlette's routes."""
        if scope["type"] == "http" and scope["path"] == "/mdm/status":
            await self.status(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)

    def close(self) -> None:
        """Commit what is queued and stop the writer thread."""
        self.committer.close()

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        self.close()

    async def _handle(self, request: Request, exc: HttpError) -> Response:
        return _error(exc)

    # --- authentication -----------------------------------------------------------------

    async def _device(self, request: Request) -> int:
        dev, digest = bearer_device(request.headers.get("authorization", ""))
        stored = await run_in_threadpool(self.store.secret_hash, dev)
        _refuse(dev, "unknown_device" if stored is None else "ok")
        if not hmac.compare_digest(str(stored), digest):
            _refuse(dev, "bad_secret")
        return dev

    async def _admin(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            token = request.cookies.get(_COOKIE, "")
        if not token or not await run_in_threadpool(self.store.check_admin, token):
            raise HttpError(401, "not_admin", "admin endpoints need the admin token")

    # --- device endpoints -------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True, **self.committer.stats()})

    async def tokens(self, request: Request) -> Response:
        dev = await self._device(request)
        token = await run_in_threadpool(self.store.sync_token, dev)
        return JSONResponse({"SyncTokens": {"DeclarationsToken": token}})

    async def declaration_items(self, request: Request) -> Response:
        dev = await self._device(request)
        decls = await run_in_threadpool(self.store.device_declarations, dev)
        configs = [{"Identifier": i, "ServerToken": t} for i, _, t in decls]
        token = declarations_token([(i, t) for i, _, t in decls])
        return JSONResponse(
            {
                "Declarations": {
                    "Activations": [],
                    "Assets": [],
                    "Configurations": configs,
                    "Management": [],
                },
                "DeclarationsToken": token,
            }
        )

    async def declaration(self, request: Request) -> Response:
        dev = await self._device(request)
        kind = request.path_params["kind"]
        ident = request.path_params["identifier"]
        if kind != "configuration":
            raise HttpError(404, "not_found", f"no declaration kind {kind!r}")
        doc = await run_in_threadpool(self.store.declaration_for, dev, ident)
        if doc is None:
            raise HttpError(404, "not_found", f"no declaration {ident!r} for this device")
        return JSONResponse(doc)

    async def status(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``PUT /mdm/status`` as plain ASGI: answered once the report is durable."""
        status = 200
        try:
            if scope["method"] not in ("PUT", "POST"):
                raise HttpError(405, "method_not_allowed", "use PUT (or POST)")
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            dev, digest = bearer_device(headers.get("authorization", ""))
            body = await _asgi_body(receive, headers.get("content-length"))
            if body is None:
                return
            try:
                report = parse_report(body)
            except ItemError as exc:
                raise HttpError(400, "bad_report", str(exc)) from exc
            result = await self.committer.submit(dev, digest, report)
            _refuse(dev, result)
            payload = _STATUS_OK[result]
        except HttpError as exc:
            status, payload = exc.status, _error_body(exc)
        except Exception as exc:  # storing failed: logged by the committer
            status = 500
            payload = _error_body(HttpError(500, "internal", str(exc)))
        headers_out = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers_out})
        await send({"type": "http.response.body", "body": payload})

    # --- admin API ------------------------------------------------------------------------------

    async def enroll(self, request: Request) -> Response:
        await self._admin(request)
        doc = _json(await _body(request))
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise HttpError(400, "malformed", 'expected {"name": NAME, "sets": [...]}')
        sets = doc.get("sets", [])
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            raise HttpError(400, "malformed", "sets must be a list of names")
        try:
            enrolment = await run_in_threadpool(self.store.enroll, doc["name"], sets)
        except MdmError as exc:
            raise HttpError(400, "bad_name", str(exc)) from exc
        return JSONResponse(enrolment.to_dict(str(request.base_url).rstrip("/")), status_code=201)

    async def put_declaration(self, request: Request) -> Response:
        await self._admin(request)
        ident = request.path_params["identifier"]
        doc = _json(await _body(request))
        try:
            dtype, payload = check_declaration(doc)
        except ItemError as exc:
            raise HttpError(400, "bad_declaration", str(exc)) from exc
        try:
            token = await run_in_threadpool(self.store.put_declaration, dtype, ident, payload)
        except MdmError as exc:
            raise HttpError(400, "bad_declaration", str(exc)) from exc
        return JSONResponse({"Identifier": ident, "ServerToken": token})

    async def put_set(self, request: Request) -> Response:
        await self._admin(request)
        doc = _json(await _body(request))
        if not isinstance(doc, dict):
            raise HttpError(400, "malformed", 'expected {"declarations": [...], "devices": [...]}')
        decls, devs = doc.get("declarations", []), doc.get("devices", [])
        for v in (decls, devs):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise HttpError(400, "malformed", "declarations and devices must be name lists")
        try:
            await run_in_threadpool(
                lambda: self.store.assign(
                    request.path_params["name"], declarations=decls, devices=devs
                )
            )
        except MdmError as exc:
            raise HttpError(400, "bad_set", str(exc)) from exc
        return JSONResponse({"ok": True})

    async def withdrawn(self, request: Request) -> Response:
        await self._admin(request)
        release = request.path_params["release"]
        undo = request.method == "DELETE"
        await run_in_threadpool(lambda: self.store.withdraw(release, undo=undo))
        return JSONResponse({"release_id": release, "withdrawn": not undo})

    def _days(self, request: Request) -> float:
        text = request.query_params.get("stale_days", str(self.stale_days))
        try:
            return float(text)
        except ValueError as exc:
            raise HttpError(400, "malformed", f"stale_days must be a number, got {text!r}") from exc

    async def fleet_json(self, request: Request) -> Response:
        await self._admin(request)
        days = self._days(request)
        data = await run_in_threadpool(lambda: fleet.overview(self.store.db, stale_days=days))
        return JSONResponse(data)

    async def device_json(self, request: Request) -> Response:
        await self._admin(request)
        data = await run_in_threadpool(
            fleet.device_history, self.store.db, request.path_params["name"]
        )
        if data is None:
            raise HttpError(404, "not_found", "no such device")
        return JSONResponse(data)

    # --- web page ---------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return HTMLResponse(page.login_page())
        form = parse_qs((await _body(request, 4096)).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        if not await run_in_threadpool(self.store.check_admin, token):
            return HTMLResponse(page.login_page("wrong admin token"), status_code=401)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(_COOKIE, token, httponly=True, samesite="strict")
        return resp

    async def _page_admin(self, request: Request) -> Response | None:
        try:
            await self._admin(request)
        except HttpError:
            return RedirectResponse("/login", status_code=303)
        return None

    async def fleet_page(self, request: Request) -> Response:
        if (redirect := await self._page_admin(request)) is not None:
            return redirect
        days = self._days(request)
        data = await run_in_threadpool(
            lambda: fleet.overview(self.store.db, stale_days=days, limit=PAGE_ROWS)
        )
        return HTMLResponse(page.fleet_page(data))

    async def device_page(self, request: Request) -> Response:
        if (redirect := await self._page_admin(request)) is not None:
            return redirect
        data = await run_in_threadpool(
            fleet.device_history, self.store.db, request.path_params["name"]
        )
        if data is None:
            return HTMLResponse(page.not_found(request.path_params["name"]), status_code=404)
        return HTMLResponse(page.device_page(data))
