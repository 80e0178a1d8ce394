"""Killing the MDM server mid-load loses no acknowledged report (real server process)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import pytest

pytest.importorskip("starlette")

from mdmserver import free_port, start_server

from bsipatch.mdm.items import nest
from bsipatch.mdm.serve import open_store


def body(seq: int) -> bytes:
    extra = "(a)" if seq % 2 else None
    items = {
        "device.operating-system.version": "26.1",
        "device.operating-system.build-version": "23B85",
        "device.operating-system.supplemental.extra-version": extra,
    }
    return json.dumps({"StatusItems": nest(items), "ReportSequence": seq}).encode()


def device_loop(port: int, auth: str, acked: list[int], stop: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seq = 0
    while not stop.is_set():
        seq += 1
        try:
            conn.request(
                "PUT",
                "/mdm/status",
                body(seq),
                {"Authorization": auth, "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            return
        if resp.status != 200 or not json.loads(data)["applied"]:
            return
        acked.append(seq)


def test_kill_mid_load_loses_no_acknowledged_report(mdm_db_url):
    store = open_store(mdm_db_url)
    devices = [store.enroll(f"dev{i}") for i in range(16)]
    store.db.close()
    port = free_port()
    proc = start_server(mdm_db_url, port)
    acked: list[list[int]] = [[] for _ in devices]
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=device_loop, args=(port, f"Bearer {d.device_id}.{d.secret}", acked[i], stop)
        )
        for i, d in enumerate(devices)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while sum(map(len, acked)) < 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in flight
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert sum(map(len, acked)) >= 200

    store = open_store(mdm_db_url)
    try:
        for d, acks in zip(devices, acked, strict=True):
            (seq,) = store.db.query("SELECT report_seq FROM devices WHERE id = ?", (d.device_id,))[
                0
            ]
            changes = store.db.query(
                "SELECT COUNT(*) FROM release_history WHERE device_id = ?", (d.device_id,)
            )[0][0]
            # every report alternates the release: one history row per applied report
            assert seq >= (max(acks) if acks else 0)
            assert changes == seq
    finally:
        store.db.close()
    # the server comes back on the same database and accepts the next report
    proc = start_server(mdm_db_url, port)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        d = devices[0]
        conn.request(
            "PUT", "/mdm/status", body(10**6), {"Authorization": f"Bearer {d.device_id}.{d.secret}"}
        )
        assert conn.getresponse().status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
