"""The MDM server against real SQLite and a real PostgreSQL cluster (same tests for both)."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("starlette")
from starlette.testclient import TestClient

from bsipatch.cli.main import main as cli
from bsipatch.errors import MdmSchemaError
from bsipatch.mdm import fleet
from bsipatch.mdm.app import MdmApp
from bsipatch.mdm.db import SCHEMA_VERSION, Database
from bsipatch.mdm.items import nest
from bsipatch.mdm.serve import open_store

SETTINGS = "com.apple.configuration.softwareupdate.settings"


def report(items, *, full=False, seq=None, ts=None):
    doc = {"StatusItems": nest(items), "FullReport": full}
    if seq is not None:
        doc["ReportSequence"] = seq
    if ts is not None:
        doc["Timestamp"] = ts
    return doc


def base_items(extra=None, build="23B85", supp=None, state="up-to-date"):
    return {
        "device.operating-system.version": "26.1",
        "device.operating-system.build-version": build,
        "device.operating-system.supplemental.build-version": supp,
        "device.operating-system.supplemental.extra-version": extra,
        "softwareupdate.install-state": state,
        "softwareupdate.failure-reason": None,
        "softwareupdate.pending-version": None,
    }


@pytest.fixture
def server(mdm_db_url):
    store = open_store(mdm_db_url)
    app = MdmApp(store)
    token = store.new_admin_token()
    with TestClient(app.app) as client:
        client.admin = {"Authorization": f"Bearer {token}"}
        client.store = store
        client.token = token
        yield client
    store.db.close()


def enrol(client, name, sets=("all",)):
    r = client.post(
        "/admin/enrollments", json={"name": name, "sets": list(sets)}, headers=client.admin
    )
    assert r.status_code == 201, r.text
    e = r.json()
    return {"Authorization": f"Bearer {e['device_id']}.{e['secret']}"}


def put(client, dev, body):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.put("/mdm/status", content=data, headers=dev)


def device_row(client, name):
    return client.store.db.query(
        "SELECT items, last_seen, release_id, report_seq FROM devices WHERE name = ?", (name,)
    )[0]


def test_auth_refusals_are_json_4xx(server):
    dev = enrol(server, "mac1")
    ok = report(base_items())
    for headers, code in [
        ({}, "unauthenticated"),
        ({"Authorization": "Bearer 999.nope"}, "unknown_device"),
        ({"Authorization": dev["Authorization"][:-3] + "xyz"}, "bad_secret"),
    ]:
        r = put(server, headers, ok)
        assert r.status_code == 401 and r.json()["error"] == code
    assert server.get("/admin/fleet").status_code == 401
    assert (
        server.get("/admin/fleet", headers={"Authorization": "Bearer adm_wrong"}).status_code == 401
    )
    assert server.post("/admin/enrollments", json={"name": "x"}, headers=dev).status_code == 401
    items, seen, _, _ = device_row(server, "mac1")
    assert json.loads(items) == {} and seen is None


def test_a_replaced_secret_stops_working_at_once(server):
    # `bsipatch mdm enroll NAME` again (straight into the database, as the CLI does)
    # gives a new secret; the server must refuse the old one from the next report on,
    # whatever it had seen before, and store nothing from it.
    old = enrol(server, "mac1")
    assert put(server, old, report(base_items(), seq=1)).json() == {"ok": True, "applied": True}
    assert server.get("/mdm/tokens", headers=old).status_code == 200
    new_secret = server.store.enroll("mac1").secret
    dev_id = old["Authorization"].split()[1].split(".")[0]
    new = {"Authorization": f"Bearer {dev_id}.{new_secret}"}
    for path in ("/mdm/tokens", "/mdm/declaration-items"):
        r = server.get(path, headers=old)
        assert r.status_code == 401 and r.json()["error"] == "bad_secret"
    r = put(server, old, report(base_items(build="EVIL1"), seq=2))
    assert r.status_code == 401 and r.json()["error"] == "bad_secret"
    items, _, _, seq = device_row(server, "mac1")
    assert (
        seq == 1 and json.loads(items)["device.operating-system.build-version"]["value"] == "23B85"
    )
    assert put(server, new, report(base_items(build="23B86"), seq=3)).json()["applied"] is True
    assert device_row(server, "mac1")[3] == 3
    # malformed credentials never reach the database; other methods are refused
    for auth in (b"Bearer \xb2.x", b"Bearer " + b"1" * 30 + b".x", b"Basic 1.x", b"Bearer 1."):
        r = put(server, {"Authorization": auth}, report(base_items()))
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated", auth
    r = server.get("/mdm/status", headers=new)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    "body,code,status",
    [
        (b"{" * 10, "bad_report", 400),
        (b"x" * (64 * 1024 + 1), "too_large", 413),
        (json.dumps({"StatusItems": {"device": {"battery": 3}}}), "bad_report", 400),
        (json.dumps(report({"softwareupdate.install-state": 7})), "bad_report", 400),
        (json.dumps(report({"softwareupdate.install-state": "exploded"})), "bad_report", 400),
        (json.dumps({"StatusItems": {}, "Extra": 1}), "bad_report", 400),
        (json.dumps(report(base_items(), seq=-1)), "bad_report", 400),
        # a time of the right shape that is no real date (was a 500 before bsipatch._time)
        (json.dumps(report(base_items(), ts="2026-13-45T10:00:00Z")), "bad_report", 400),
        (
            json.dumps(
                report(
                    {
                        **base_items(),
                        "softwareupdate.failure-reason": {
                            "count": 1,
                            "reason": "x",
                            "timestamp": "2026-02-30T00:00:00Z",
                        },
                    }
                )
            ),
            "bad_report",
            400,
        ),
        (
            json.dumps(
                report({**base_items(), "management.declarations": {"configurations": [{}]}})
            ),
            "bad_report",
            400,
        ),
    ],
)
def test_bad_reports_store_nothing(server, body, code, status):
    dev = enrol(server, "mac1")
    r = put(server, dev, body)
    assert r.status_code == status and r.json()["error"] == code, r.text
    assert r.json()["message"]
    items, seen, rel, _ = device_row(server, "mac1")
    assert (json.loads(items), seen, rel) == ({}, None, None)
    assert server.store.db.query("SELECT COUNT(*) FROM release_history")[0][0] == 0


def test_declarations_tokens_change_exactly_with_content(server):
    a, b = enrol(server, "mac-a", ["pilot"]), enrol(server, "mac-b", ["other"])
    payload = {"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOn"}}
    r = server.put(
        "/admin/declarations/su", json={"Type": SETTINGS, "Payload": payload}, headers=server.admin
    )
    t1 = r.json()["ServerToken"]
    server.put("/admin/sets/pilot", json={"declarations": ["su"]}, headers=server.admin)
    tok1 = server.get("/mdm/tokens", headers=a).json()["SyncTokens"]["DeclarationsToken"]
    items = server.get("/mdm/declaration-items", headers=a).json()
    assert items["DeclarationsToken"] == tok1
    assert items["Declarations"]["Configurations"] == [{"Identifier": "su", "ServerToken": t1}]
    doc = server.get("/mdm/declarations/configuration/su", headers=a).json()
    assert doc == {"Type": SETTINGS, "Identifier": "su", "ServerToken": t1, "Payload": payload}
    # the other device can neither list nor read it
    assert (
        server.get("/mdm/declaration-items", headers=b).json()["Declarations"]["Configurations"]
        == []
    )
    assert server.get("/mdm/declarations/configuration/su", headers=b).status_code == 404
    # same content again: same tokens; new content: both change
    r = server.put(
        "/admin/declarations/su", json={"Type": SETTINGS, "Payload": payload}, headers=server.admin
    )
    assert r.json()["ServerToken"] == t1
    assert server.get("/mdm/tokens", headers=a).json()["SyncTokens"]["DeclarationsToken"] == tok1
    payload2 = {"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOff"}}
    r = server.put(
        "/admin/declarations/su", json={"Type": SETTINGS, "Payload": payload2}, headers=server.admin
    )
    assert r.json()["ServerToken"] != t1
    assert server.get("/mdm/tokens", headers=a).json()["SyncTokens"]["DeclarationsToken"] != tok1
    bad = server.put(
        "/admin/declarations/x", json={"Type": SETTINGS, "Payload": []}, headers=server.admin
    )
    assert bad.status_code == 400 and bad.json()["error"] == "bad_declaration"


def test_full_and_incremental_reports_and_history(server):
    dev = enrol(server, "mac1")
    assert put(
        server, dev, report(base_items(), full=True, seq=1, ts="2026-11-01T00:00:00Z")
    ).json() == {
        "ok": True,
        "applied": True,
    }
    # incremental: only the named items change
    inc = {
        "device.operating-system.supplemental.extra-version": "(a)",
        "device.operating-system.supplemental.build-version": "23B85a",
        "softwareupdate.install-state": "installed",
    }
    assert put(server, dev, report(inc, seq=2, ts="2026-11-02T00:00:00Z")).json()["applied"]
    # a resent report (same sequence) is acknowledged, not applied again
    assert (
        put(server, dev, report(inc, seq=2, ts="2026-11-02T00:00:00Z")).json()["applied"] is False
    )
    decl = {
        "configurations": [
            {
                "identifier": "su",
                "active": False,
                "valid": "invalid",
                "server-token": "abc",
                "reasons": [{"code": "Error.Policy", "description": "unknown key"}],
            }
        ]
    }
    put(server, dev, report({"management.declarations": decl}, seq=3))
    put(
        server,
        dev,
        report(
            {
                "softwareupdate.install-state": "rolled-back",
                "device.operating-system.supplemental.extra-version": None,
                "device.operating-system.supplemental.build-version": None,
            },
            seq=4,
            ts="2026-11-03T00:00:00Z",
        ),
    )
    h = fleet.device_history(server.store.db, "mac1")
    assert [(x["at"], x["from"], x["to"]) for x in h["history"]] == [
        ("2026-11-01T00:00:00Z", None, "26.1"),
        ("2026-11-02T00:00:00Z", "26.1", "26.1 (a)"),
        ("2026-11-03T00:00:00Z", "26.1 (a)", "26.1"),
    ]
    assert h["items"]["device.operating-system.build-version"]["value"] == "23B85"
    assert h["items"]["softwareupdate.install-state"]["value"] == "rolled-back"
    assert h["declarations"][0]["valid"] == "invalid"
    assert h["declarations"][0]["reasons"][0]["description"] == "unknown key"
    # a full report drops items it does not name
    put(server, dev, report({"softwareupdate.install-state": "none"}, full=True, seq=5))
    h = fleet.device_history(server.store.db, "mac1")
    assert list(h["items"]) == ["softwareupdate.install-state"] and h["declarations"] == []
    assert server.get("/admin/devices/mac1", headers=server.admin).json()["name"] == "mac1"


def test_fleet_queries(server, tmp_path):
    now = time.time()
    devs = {n: enrol(server, n) for n in ("a1", "a2", "b1", "c1", "d1")}
    put(server, devs["a1"], report(base_items("(a)", supp="23B85a", state="installed")))
    put(server, devs["a2"], report(base_items("(a)", supp="23B85a", state="installed")))
    put(
        server,
        devs["b1"],
        report(
            {
                **base_items(state="deferred"),
                "softwareupdate.pending-version": {
                    "release-id": "26.1 (a)",
                    "since": "2026-11-20T00:00:00Z",
                },
            }
        ),
    )
    put(
        server,
        devs["c1"],
        report(
            {
                **base_items(state="failed"),
                "softwareupdate.failure-reason": {
                    "count": 2,
                    "reason": "disk full",
                    "timestamp": "2026-11-21T00:00:00Z",
                },
            }
        ),
    )
    server.put("/admin/withdrawn/26.1 (a)", headers=server.admin)
    data = server.get("/admin/fleet?stale_days=1", headers=server.admin).json()
    assert data["devices"] == 5
    by = {(r["build"], r["supplemental_build"]): r["devices"] for r in data["builds"]}
    assert by == {("23B85", "23B85a"): 2, ("23B85", None): 2, (None, None): 1}
    assert data["withdrawn"]["count"] == 2 and {
        d["name"] for d in data["withdrawn"]["devices"]
    } == {"a1", "a2"}
    assert data["deferred"]["devices"][0]["name"] == "b1"
    assert data["deferred"]["devices"][0]["days"] == pytest.approx(
        (now - 1795132800) / 86400, abs=0.2
    )
    assert data["failed"]["devices"] == [
        {"name": "c1", "release_id": "26.1", "error": "disk full", "at": "2026-11-21T00:00:00Z"}
    ]
    assert [d["name"] for d in data["not_seen"]["devices"]] == ["d1"]
    assert data["chart"]["series"]["26.1 (a)"][-1] == 2
    # the CLI reads the same database
    url = server.store.db.url
    out = tmp_path / "fleet.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli(["mdm", "fleet", "--db", url, "--json"]) == 0
    assert json.loads(buf.getvalue())["withdrawn"]["count"] == 2
    out.write_text(buf.getvalue())


def test_refuses_newer_schema(mdm_db_url):
    store = open_store(mdm_db_url)
    with store.db.connect() as conn:
        store.db.execute(
            conn,
            "UPDATE meta SET value = ? WHERE key = 'schema_version'",
            (str(SCHEMA_VERSION + 1),),
        )
    store.db.close()
    with pytest.raises(MdmSchemaError, match=r"knows up to"):
        open_store(mdm_db_url)
    db = Database(mdm_db_url)
    assert db.schema_version() == SCHEMA_VERSION + 1
    db.close()
    assert cli(["mdm", "fleet", "--db", mdm_db_url]) == 12


def test_migration_1_to_2_backfills_daily_release_counts(mdm_db_url):
    db = Database(mdm_db_url)
    assert db.migrate(target=1) == 1
    day = 20_000 * 86400.0
    with db.connect() as conn:
        db.execute(conn, "INSERT INTO devices (name, secret_hash, enrolled) VALUES ('m', 'x', 0)")
        dev = db.execute(conn, "SELECT id FROM devices").fetchone()[0]
        for at, old, new in [(day + 5, None, "26.1"), (day + 86400 * 2, "26.1", "26.1 (a)")]:
            db.execute(
                conn,
                "INSERT INTO release_history (device_id, at, from_release, to_release) "
                "VALUES (?, ?, ?, ?)",
                (dev, at, old, new),
            )
    db.close()
    store = open_store(mdm_db_url)  # migrates 1 -> 2
    try:
        assert store.db.schema_version() == SCHEMA_VERSION >= 2
        chart = fleet.release_chart(store.db)
        assert chart["series"] == {"26.1": [1, 1, 0], "26.1 (a)": [0, 0, 1]}
        assert chart["times"][-1] == "2024-10-07T00:00:00Z"  # end of the last day
    finally:
        store.db.close()
