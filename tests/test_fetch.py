"""Repository reads over a real HTTP server on 127.0.0.1 and from a directory.

Each fault mode of tests/httpserver.py either is survived (resume, skip) with the exact
bytes delivered, or ends in a clear, typed error -- never in wrong bytes.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from httpserver import Fault, serve

from bsipatch.agent.download import (
    DirectoryRepository,
    HttpRepository,
    PatchStream,
    check_relpath,
    open_repository,
)
from bsipatch.errors import FetchError, PatchTooLarge, TargetMismatch

SIZE = 300_000
REL = "releases/26.1-a/webkit.bsipatch"


@pytest.fixture
def repo_dir(tmp_path):
    data = os.urandom(SIZE)
    p = tmp_path / "repo" / "releases" / "26.1-a"
    p.mkdir(parents=True)
    (p / "webkit.bsipatch").write_bytes(data)
    (tmp_path / "repo" / "catalog.json").write_bytes(b'{"signed": {}}')
    return tmp_path / "repo", data


@pytest.fixture
def server(repo_dir):
    with serve(repo_dir[0]) as srv:
        yield srv


def _read_all(stream: PatchStream, chunk: int = 8192) -> bytes:
    out = bytearray()
    for _ in range(10_000):
        b = stream.read(chunk)
        if not b:
            break
        out += b
    return bytes(out)


def _read_exact(stream: PatchStream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = stream.read(n - len(out))
        assert b
        out += b
    return bytes(out)


def _http(server, **kw) -> HttpRepository:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.01)
    return HttpRepository(server.url, **kw)


def test_plain_download_is_exact_and_verified(server, repo_dir):
    _, data = repo_dir
    repo = _http(server)
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
        assert not s.seekable() and s.readable()
        assert _read_all(s) == data
        assert s.verified
    assert repo.stats.bytes_received == SIZE
    assert repo.stats.resumes == 0


def test_truncated_response_resumes_with_range(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("truncate", at=100_000, times=2)
    repo = _http(server)
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).hexdigest()) as s:
        assert _read_all(s) == data
    reqs = server.requests_for(".bsipatch")
    assert [r.range for r in reqs] == [None, "bytes=100000-", "bytes=200000-"]
    assert [r.status for r in reqs] == [200, 206, 206]
    assert repo.stats.resumes == 2
    assert repo.stats.bytes_received == SIZE  # nothing downloaded twice


def test_stall_times_out_and_resumes(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("stall", at=50_000, seconds=3.0, times=1)
    repo = _http(server, timeout=0.3)
    t0 = time.monotonic()
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
        assert _read_all(s) == data
    assert time.monotonic() - t0 < 2.5
    assert server.requests_for(".bsipatch")[1].range == "bytes=50000-"


def test_server_that_always_stalls_gives_fetch_error(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("stall", at=10, seconds=3.0, times=-1)
    repo = _http(server, timeout=0.2, retries=2)
    with (
        pytest.raises(FetchError, match="stalled"),
        repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s,
    ):
        _read_all(s)


def test_always_truncating_server_gives_fetch_error(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("truncate", at=0, times=-1)
    repo = _http(server, retries=2)
    with (
        pytest.raises(FetchError, match="attempt"),
        repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s,
    ):
        _read_all(s)
    assert len(server.requests_for(".bsipatch")) <= 4  # bounded


def test_corrupted_bytes_fail_digest_on_last_read(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("corrupt", at=12345, times=1)
    repo = _http(server)
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
        with pytest.raises(TargetMismatch, match="SHA-256"):
            _read_all(s)
        assert not s.verified


def test_ignored_range_skips_consumed_prefix(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("truncate", at=70_000, times=1)
    repo = _http(server)
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
        first = _read_exact(s, 70_000)
        server.fault = Fault("ignore_range", times=-1)
        rest = _read_all(s)
    assert first + rest == data
    assert server.requests_for(".bsipatch")[-1].status == 200
    assert repo.stats.bytes_received == SIZE + 70_000  # the prefix came twice


def test_ignored_range_can_fail_clearly(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("truncate", at=70_000, times=1)
    repo = _http(server)
    s = repo.open_patch(
        REL, size=SIZE, sha256=hashlib.sha256(data).digest(), on_ignored_range="fail"
    )
    with s:
        _read_exact(s, 70_000)
        server.fault = Fault("ignore_range", times=-1)
        with pytest.raises(FetchError, match="ignored the Range"):
            _read_all(s)


def test_changed_file_detected_when_range_ignored(server, repo_dir):
    root, data = repo_dir
    server.fault = Fault("truncate", at=70_000, times=1)
    repo = _http(server)
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
        _read_exact(s, 70_000)
        (root / REL).write_bytes(os.urandom(SIZE))
        server.fault = Fault("ignore_range", times=-1)
        with pytest.raises(FetchError, match="changed"):
            _read_all(s)


def test_announced_extra_bytes_refused_before_reading(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("extra", extra=5000, times=-1)
    repo = _http(server)
    with pytest.raises(PatchTooLarge, match="announces"):
        repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest())


def test_unannounced_extra_bytes_refused_at_end(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("extra_unannounced", extra=5000, times=-1)
    repo = _http(server)
    with (
        repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s,
        pytest.raises(PatchTooLarge, match="more than"),
    ):
        _read_all(s)
    # never more than the declared size was handed to the consumer
    assert repo.stats.files[REL] <= SIZE + 1


def test_server_errors_are_retried_then_reported(server, repo_dir):
    _, data = repo_dir
    server.fault = Fault("status", code=503, times=1)
    repo = _http(server)
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
        assert _read_all(s) == data
    server.fault = Fault("status", code=503, times=-1)
    with pytest.raises(FetchError, match="503"):
        repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest())


def test_missing_file_is_not_retried(server):
    repo = _http(server)
    assert repo.fetch_optional("roots/9.root.json", max_size=1000) is None
    with pytest.raises(FetchError, match="404"):
        repo.open_patch("releases/none.bsipatch", size=1, sha256=b"\0" * 32)
    assert len(server.requests_for("none.bsipatch")) == 1


def test_metadata_fetch_is_bounded(server):
    repo = _http(server)
    assert repo.fetch("catalog.json", max_size=100) == b'{"signed": {}}'
    with pytest.raises(FetchError, match="limit"):
        repo.fetch("catalog.json", max_size=5)


def test_truncated_metadata_is_retried(server):
    server.fault = Fault("truncate", suffix="catalog.json", at=3, times=1)
    repo = _http(server)
    assert repo.fetch("catalog.json", max_size=100) == b'{"signed": {}}'


def test_unreachable_server_is_a_fetch_error():
    repo = HttpRepository("http://127.0.0.1:9/", timeout=0.3, retries=1, backoff=0.01)
    with pytest.raises(FetchError):
        repo.fetch("catalog.json", max_size=100)


def test_directory_repository_same_interface(repo_dir):
    root, data = repo_dir
    repo = open_repository(root)
    assert isinstance(repo, DirectoryRepository)
    with repo.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
        assert _read_all(s, 65536) == data
    with pytest.raises(PatchTooLarge):
        repo.open_patch(REL, size=SIZE - 1, sha256=hashlib.sha256(data).digest())
    with pytest.raises(TargetMismatch):
        repo.open_patch(REL, size=SIZE + 1, sha256=hashlib.sha256(data).digest())
    with pytest.raises(FetchError, match="not found"):
        repo.fetch("nothing.json", max_size=10)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../b", "a//b", "a\\b", ""])
def test_paths_escaping_the_repository_are_refused(bad):
    with pytest.raises(FetchError, match="refusing"):
        check_relpath(bad)


def test_unsupported_scheme_refused():
    with pytest.raises(FetchError, match="scheme"):
        open_repository("ftp://example.com/repo")


def test_stream_feeds_apply_directly_across_a_dropped_connection(tmp_path):
    """The patch goes from the socket into bsipatch.delta.apply with no file in between, and a
    drop in the middle is resumed with Range without apply noticing."""
    from bsipatch.cli.demo_images import code_like as _code_like
    from bsipatch.cli.demo_images import security_fix as _security_fix
    from bsipatch.delta.apply import apply
    from bsipatch.delta.diff import diff

    old = _code_like(7, 400_000)
    new = _security_fix({"x": old}, 3)["x"]
    repo = tmp_path / "r"
    repo.mkdir()
    diff(old, new, str(repo / "p.bsipatch"))
    patch = (repo / "p.bsipatch").read_bytes()
    with serve(repo) as srv:
        srv.fault = Fault("truncate", at=len(patch) // 2, times=1)
        http = HttpRepository(srv.url, timeout=1.0, retries=2, backoff=0.01)
        with http.open_patch(
            "p.bsipatch", size=len(patch), sha256=hashlib.sha256(patch).digest()
        ) as stream:
            apply(old, stream, str(tmp_path / "out.img"))
            assert stream.verified
        assert [e.range for e in srv.requests_for("p.bsipatch")][1].startswith("bytes=")
    assert (tmp_path / "out.img").read_bytes() == new


def test_https_checks_the_certificate_and_accepts_a_pinned_ca(repo_dir, tmp_path):
    from httpserver import make_certificate

    root, data = repo_dir
    cert, key = make_certificate(tmp_path)
    with serve(root, tls=(cert, key)) as srv:
        assert srv.url.startswith("https://")
        untrusted = HttpRepository(srv.url, timeout=2, retries=3, backoff=0.01)
        with pytest.raises(FetchError, match="certificate"):
            untrusted.fetch("catalog.json", max_size=100)
        assert untrusted.stats.requests == 1  # not retried
        pinned = open_repository(srv.url, timeout=2, cafile=cert)
        with pinned.open_patch(REL, size=SIZE, sha256=hashlib.sha256(data).digest()) as s:
            assert _read_all(s) == data
    with pytest.raises(FetchError, match="CA certificates"):
        HttpRepository("https://127.0.0.1:1/", cafile=tmp_path / "missing.pem")
