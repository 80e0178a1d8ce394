"""The fleet page in a real browser: Debian's Chromium driven by Selenium (no download)."""

from __future__ import annotations

import http.client
import json
import os
import shutil

import pytest

pytest.importorskip("starlette")
webdriver = pytest.importorskip("selenium.webdriver")

from mdmserver import free_port, start_server  # noqa: E402

from bsipatch.mdm.items import nest  # noqa: E402
from bsipatch.mdm.serve import open_store  # noqa: E402


def chromium():
    binary = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        msg = "chromium/chromedriver not found (Debian packages chromium chromium-driver)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + ": CI must install them")
        pytest.skip(msg)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a browser
    opts = Options()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def send(port, dev, items, seq, ts):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    doc = {"StatusItems": nest(items), "ReportSequence": seq, "Timestamp": ts}
    conn.request(
        "PUT",
        "/mdm/status",
        json.dumps(doc),
        {"Authorization": f"Bearer {dev.device_id}.{dev.secret}"},
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()


def os_items(extra=None, supp=None, state="up-to-date"):
    return {
        "device.operating-system.version": "26.1",
        "device.operating-system.build-version": "23B85",
        "device.operating-system.supplemental.build-version": supp,
        "device.operating-system.supplemental.extra-version": extra,
        "softwareupdate.install-state": state,
    }


def test_fleet_page_shows_what_devices_reported(tmp_path):
    url = f"sqlite:///{tmp_path / 'mdm.sqlite3'}"
    store = open_store(url)
    token = store.new_admin_token()
    a1, b1, c1 = (store.enroll(n) for n in ("mac-a1", "mac-b1", "mac-c1"))
    store.withdraw("26.1 (a)")
    store.db.close()
    port = free_port()
    proc = start_server(url, port)
    browser = None
    try:
        send(port, a1, os_items(), 1, "2026-11-01T00:00:00Z")
        send(port, a1, os_items("(a)", "23B85a", "installed"), 2, "2026-11-05T00:00:00Z")
        send(
            port,
            b1,
            {
                **os_items(state="deferred"),
                "softwareupdate.pending-version": {
                    "release-id": "26.1 (a)",
                    "since": "2026-11-06T00:00:00Z",
                },
            },
            1,
            "2026-11-02T00:00:00Z",
        )
        send(
            port,
            c1,
            {
                **os_items(state="failed"),
                "softwareupdate.failure-reason": {
                    "count": 1,
                    "reason": "disk full",
                    "timestamp": "2026-11-07T00:00:00Z",
                },
            },
            1,
            "2026-11-03T00:00:00Z",
        )
        browser = chromium()
        browser.implicitly_wait(5)
        base = f"http://127.0.0.1:{port}"
        browser.get(base + "/")
        assert browser.current_url.endswith("/login")  # no admin cookie yet
        browser.find_element("id", "token").send_keys(token)
        browser.find_element("id", "signin").click()
        assert browser.find_element("id", "total").text == "3"
        builds = browser.find_element("id", "builds").text
        assert "23B85a" in builds and "26.1 (a)" in builds
        assert "mac-a1" in browser.find_element("id", "withdrawn").text
        deferred = browser.find_element("id", "deferred").text
        assert "mac-b1" in deferred and "26.1 (a)" in deferred
        assert "disk full" in browser.find_element("id", "failed").text
        lines = browser.find_elements("css selector", "#chart polyline.series")
        assert {e.get_attribute("data-release") for e in lines} == {"26.1", "26.1 (a)"}
        assert "26.1 (a) (1)" in browser.find_element("id", "legend").text
        browser.save_screenshot(str(tmp_path / "fleet.png"))
        browser.find_element("link text", "mac-a1").click()
        assert browser.find_element("id", "device").text == "mac-a1"
        history = browser.find_element("id", "history").text
        assert "2026-11-05T00:00:00Z" in history and "26.1 (a)" in history
    finally:
        if browser is not None:
            browser.quit()
        proc.terminate()
        proc.wait(timeout=20)
