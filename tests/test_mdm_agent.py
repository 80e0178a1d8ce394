"""The agent and the MDM server together: real server process, real preboot, real repository.

The agent syncs declarations (applying policy through the existing policy code),
reports after every action, queues reports while the server is down and delivers them
once it is back, without losing or duplicating a release change.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette")

from mdmserver import free_port, start_server
from test_agent import _serve, device, vendor  # noqa: F401  (fixtures)

from bsipatch.agent.agent import AgentStore
from bsipatch.agent.mdm_client import MAX_QUEUE, _bounded
from bsipatch.cli.main import main as cli
from bsipatch.mdm import fleet
from bsipatch.mdm.serve import open_store

SETTINGS = "com.apple.configuration.softwareupdate.settings"


def history(url, name):
    store = open_store(url)
    try:
        return fleet.device_history(store.db, name)
    finally:
        store.db.close()


def test_agent_syncs_reports_and_catches_up_after_outage(device, vendor, mdm_db_url, tmp_path):  # noqa: F811
    store = open_store(mdm_db_url)
    enrolment = store.enroll("mac1", ["fleet"])
    store.put_declaration(
        SETTINGS, "su", {"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOn"}}
    )
    store.assign("fleet", declarations=["su"], devices=[])
    store.db.close()
    port = free_port()
    enr = tmp_path / "enrolment.json"
    enr.write_text(json.dumps(enrolment.to_dict(f"http://127.0.0.1:{port}")))
    root = tmp_path / "root.json"
    root.write_bytes(vendor["root_json"])
    pb = str(device.path)
    mdm = ["--enrolment", str(enr)]
    server = start_server(mdm_db_url, port)
    truth = []  # the device's active release after each action
    try:
        assert cli(["agent", "settings", "--preboot", pb, "--auto-install", "off"]) == 0
        assert cli(["agent", "sync", "--preboot", pb, *mdm, "--event", "boot", "-q"]) == 0
        assert AgentStore(pb).policy().install_security_update == "AlwaysOn"
        truth.append("26.1")
        with _serve(vendor, "A") as srv:
            repo = ["--preboot", pb, "--repo", srv.url, "--root", str(root), "-q"]
            assert cli(["agent", "run", *repo, *mdm]) == 0  # policy AlwaysOn beats user "off"
            truth.append("26.1 (a)")
            h = history(mdm_db_url, "mac1")
            assert [x["to"] for x in h["history"]] == truth
            assert h["items"]["bsipatch.agent.last-event"]["value"]["event"] == "install"
            assert h["declarations"][0]["valid"] == "valid" and h["declarations"][0]["active"]

            # a bad declaration is rejected whole and reported invalid; policy stays
            store = open_store(mdm_db_url)
            store.put_declaration(
                SETTINGS, "su", {"AutomaticActions": {"InstallSecurityUpdate": "Maybe"}}
            )
            store.db.close()
            assert cli(["agent", "sync", "--preboot", pb, *mdm, "-q"]) == 0
            assert AgentStore(pb).policy().install_security_update == "AlwaysOn"
            decl = history(mdm_db_url, "mac1")["declarations"][0]
            assert decl["valid"] == "invalid" and not decl["active"]
            assert "Maybe" in decl["reasons"][0]["description"]

            # the server goes away: the agent keeps working, reports wait on the device
            server.kill()
            server.wait()
            assert cli(["rollback", "--preboot", pb, *mdm]) == 0
            truth.append("26.1")
            assert cli(["agent", "run", *repo, *mdm]) == 0  # last policy still in force
            truth.append(device.status()["active_release"] or "26.1")
            queued = json.loads((device.path / "agent" / "mdm.json").read_text())["queue"]
            assert len(queued) == 2

        server = start_server(mdm_db_url, port)
        assert cli(["agent", "sync", "--preboot", pb, *mdm, "-q"]) == 0
        state = json.loads((device.path / "agent" / "mdm.json").read_text())
        assert state["queue"] == []
        h = history(mdm_db_url, "mac1")
        changes = [t for i, t in enumerate(truth) if i == 0 or t != truth[i - 1]]
        assert [x["to"] for x in h["history"]] == changes  # none lost, none twice
        assert h["items"]["bsipatch.agent.last-event"]["value"]["event"] == "sync"
    finally:
        server.kill()
        server.wait()


def test_queue_stays_bounded_and_keeps_every_release_change():
    queue = []
    releases = []
    for i in range(3 * MAX_QUEUE):
        items = {"softwareupdate.install-state": "up-to-date", "bsipatch.agent.last-event": i}
        if i % 5 == 0:
            rel = f"(x{i})"
            items["device.operating-system.supplemental.extra-version"] = rel
            releases.append(rel)
        doc = {
            "StatusItems": {},
            "FullReport": i == 0,
            "ReportSequence": i + 1,
            "Timestamp": f"t{i}",
        }
        queue = _bounded([*queue, {"items": items, "doc": doc}])
    assert len(queue) == MAX_QUEUE
    kept = [q["items"].get("device.operating-system.supplemental.extra-version") for q in queue]
    assert [k for k in kept if k] == releases[-len([k for k in kept if k]) :]
    assert len([k for k in kept if k]) == len(releases)  # 39 changes fit in 64 slots
    assert queue[0]["doc"]["FullReport"] is True
    assert all(set(q["items"]) >= {"bsipatch.agent.last-event"} for q in queue)
    assert queue[-1]["doc"]["ReportSequence"] == 3 * MAX_QUEUE
    seqs = [q["doc"]["ReportSequence"] for q in queue]
    assert seqs == sorted(seqs)
