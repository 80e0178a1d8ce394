"""Run the MDM server: open the database, migrate it, serve HTTP with uvicorn.

Only process wiring; the endpoints are :mod:`bsipatch.mdm.app`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any

from bsipatch.errors import MdmError
from bsipatch.mdm.db import Database
from bsipatch.mdm.store import Store


def open_store(url: str, *, pool_size: int = 8) -> Store:
    """Open and migrate the database at ``url``; refuse a newer schema (MdmSchemaError)."""
    db = Database(url, pool_size=pool_size)
    try:
        db.migrate()
    except BaseException:
        db.close()
        raise
    return Store(db)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise MdmError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8600")
    return host.strip("[]") or "127.0.0.1", int(port)


_ENV_DB, _ENV_STALE = "BSIPATCH_MDM_SERVE_DB", "BSIPATCH_MDM_SERVE_STALE_DAYS"


def app_factory() -> Any:
    """One worker process's app (``--workers N``): its own pool and group committer."""
    from bsipatch.mdm.app import MdmApp

    store = open_store(os.environ[_ENV_DB])
    return MdmApp(store, stale_days=float(os.environ.get(_ENV_STALE, "7"))).app


def serve(
    url: str, listen: str = "127.0.0.1:8600", *, stale_days: float = 7, workers: int = 1
) -> None:
    """Serve until interrupted. Prints the admin token when the database had none."""
    import uvicorn

    host, port = parse_listen(listen)
    store = open_store(url)  # migrates once, before any worker starts
    if not store.db.query("SELECT 1 FROM meta WHERE key = 'admin_token_sha256'"):
        print(f"admin token (shown once): {store.new_admin_token()}", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING)
    print(f"bsipatch mdm serving {store.db.dialect} on http://{host}:{port}/", file=sys.stderr)
    sys.stderr.flush()
    opts: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "interface": "asgi3",  # MdmApp.app is a bound coroutine method, which "auto" misreads
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",  # not on Windows
        "http": "httptools",
        "proxy_headers": False,  # client addresses are never used: no per-request rewrite
        "server_header": False,
    }
    if workers > 1:
        store.db.close()
        os.environ[_ENV_DB], os.environ[_ENV_STALE] = url, str(stale_days)
        uvicorn.run("bsipatch.mdm.serve:app_factory", factory=True, workers=workers, **opts)
        return
    from bsipatch.mdm.app import MdmApp

    server = MdmApp(store, stale_days=stale_days)
    try:
        uvicorn.run(server.app, **opts)
    finally:
        store.db.close()
