"""Slow retrieval: a server that stalls or trickles cannot hold a download for long.

A real HTTP server on 127.0.0.1 (tests/httpserver.py) sends bytes slowly enough that
every socket read finishes inside its timeout; the download's deadline and minimum
average rate (bsipatch.agent.limits) end it with DownloadTooSlow.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from httpserver import Fault, serve

from bsipatch.agent.download import HttpRepository
from bsipatch.agent.limits import Limits
from bsipatch.errors import DownloadTooSlow, FetchError

SIZE = 200_000
REL = "releases/r1/webkit.bsipatch"


@pytest.fixture
def served(tmp_path):
    data = os.urandom(SIZE)
    p = tmp_path / "repo" / "releases" / "r1"
    p.mkdir(parents=True)
    (p / "webkit.bsipatch").write_bytes(data)
    (tmp_path / "repo" / "catalog.json").write_bytes(b'{"signed": {"x": "' + b"a" * 400 + b'"}}')
    with serve(tmp_path / "repo") as srv:
        yield srv, data


def _drain(stream) -> bytes:
    out = bytearray()
    while True:
        b = stream.read(65536)
        if not b:
            return bytes(out)
        out += b


def test_trickled_patch_fails_on_minimum_rate(served):
    srv, data = served
    srv.fault = Fault("trickle", at=1000, rate=2.0, times=-1)
    repo = HttpRepository(srv.url, timeout=3.0, limits=Limits(grace=1.0, min_rate=1000.0))
    t0 = time.monotonic()
    with (
        pytest.raises(DownloadTooSlow, match=r"bytes/s; the minimum is 1000 bytes/s"),
        repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s,
    ):
        _drain(s)
    assert time.monotonic() - t0 < 10.0  # 1 s grace; slack for a loaded machine


def test_trickled_metadata_fails_with_default_limits_well_under_a_minute(served):
    # the measurement: 2 bytes/s with a 3 s timeout never ended (400 s and on)
    srv, _ = served
    srv.fault = Fault("trickle", suffix="catalog.json", at=0, rate=2.0, times=-1)
    repo = HttpRepository(srv.url, timeout=3.0)
    t0 = time.monotonic()
    with pytest.raises(DownloadTooSlow, match=r"catalog\.json"):
        repo.fetch("catalog.json", max_size=1 << 20)
    took = time.monotonic() - t0
    assert Limits().grace <= took < 30.0  # about 8-12 s (more on a loaded machine), not forever


def test_headers_trickled_within_each_timeout_end_at_the_deadline(served):
    srv, data = served
    srv.fault = Fault("trickle_headers", rate=40.0, times=-1)
    repo = HttpRepository(
        srv.url, timeout=1.0, retries=0, limits=Limits(deadline=1.5, min_rate=0.0)
    )
    t0 = time.monotonic()
    with pytest.raises(FetchError) as info:
        repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest())
    assert time.monotonic() - t0 < 8.0  # 1.5 s deadline; slack for a loaded machine
    assert "deadline" in str(info.value)
    assert isinstance(info.value, DownloadTooSlow)


def test_stalled_patch_ends_at_the_deadline_even_with_retries_left(served):
    srv, data = served
    srv.fault = Fault("stall", at=100, seconds=5.0, times=-1)
    repo = HttpRepository(
        srv.url, timeout=0.4, retries=50, backoff=0.01, limits=Limits(deadline=1.5, grace=60)
    )
    t0 = time.monotonic()
    with (
        pytest.raises(DownloadTooSlow, match="deadline"),
        repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s,
    ):
        _drain(s)
    assert time.monotonic() - t0 < 8.0  # 1.5 s deadline; slack for a loaded machine


def test_a_fast_download_is_not_affected(served):
    srv, data = served
    repo = HttpRepository(srv.url, limits=Limits(grace=0.0, min_rate=100_000.0, deadline=5))
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
        assert _drain(s) == data


def test_each_retry_is_reported_in_one_line(served):
    srv, data = served
    srv.fault = Fault("truncate", at=50_000, times=2)
    lines: list[str] = []
    repo = HttpRepository(srv.url, timeout=1.0, backoff=0.01, on_retry=lines.append)
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
        assert _drain(s) == data
    assert len(lines) == 2
    assert all("\n" not in ln and REL in ln for ln in lines)
    assert "resuming at byte 50000" in lines[0] and "resuming at byte 100000" in lines[1]

    srv.fault = Fault("status", suffix="catalog.json", code=503, times=2)
    lines.clear()
    assert repo.fetch("catalog.json", max_size=1 << 20).startswith(b'{"signed"')
    assert [ln.split(";")[0] for ln in lines] == [
        f"catalog.json: {srv.url}catalog.json: HTTP 503 Service Unavailable"
    ] * 2


@pytest.mark.parametrize(
    "kw", [{"timeout": 0}, {"deadline": -1}, {"min_rate": -5}, {"grace": float("nan")}]
)
def test_limits_are_validated(kw):
    with pytest.raises(ValueError):
        Limits(**kw)
