"""The preboot directory: creation, layout, lock, journal, readers, recovery, status."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import crashhelper as ch

from bsipatch._crashpoints import crashpoint
from bsipatch.device.journal import Journal
from bsipatch.device.preboot import Preboot, release_slug
from bsipatch.errors import LockedError, SealMismatch, StateError


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return ch.make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def pb(world: dict, tmp_path: Path) -> Preboot:
    return ch.create_preboot(world, tmp_path / "preboot")


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_create_copies_base_images_read_only_and_byte_identical(pb: Preboot, world: dict) -> None:
    base = pb.path / "base" / "26.1-23B85"
    for name, src in world["images"].items():
        img = base / f"{name}.img"
        assert sha(img) == sha(Path(src))
        assert stat.S_IMODE(img.stat().st_mode) == 0o444
        record = json.loads((base / f"{name}.seal.json").read_text())
        assert record["sha256"] == sha(img)
        assert record["seal"]["size"] == img.stat().st_size
        assert pb.component_path(name) == img
    assert stat.S_IMODE(base.stat().st_mode) == 0o555
    pb.verify_selection("base/26.1-23B85", None, exact=True)


def test_create_refuses_non_empty_dir_and_bad_activation(world: dict, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StateError):
        ch.create_preboot(world, tmp_path / "full")
    with pytest.raises(ValueError, match="activation"):
        Preboot.create(
            tmp_path / "bad",
            os_version="26.1",
            build="23B85",
            images={"webkit": world["images"]["webkit"]},
            activation={"webkit": "sometimes"},
        )
    with pytest.raises(ValueError, match="component name"):
        Preboot.create(
            tmp_path / "bad2",
            os_version="26.1",
            build="23B85",
            images={"../evil": world["images"]["webkit"]},
            activation={"../evil": "relaunch"},
        )


def test_failed_create_leaves_an_empty_dir_and_can_be_retried(world: dict, tmp_path: Path) -> None:
    from bsipatch.errors import StagingError

    images = dict(world["images"], safari=str(tmp_path / "missing.img"))
    with pytest.raises(StagingError):
        Preboot.create(
            tmp_path / "pb",
            os_version="26.1",
            build="23B85",
            images=images,
            activation=world["activation"],
        )
    assert list((tmp_path / "pb").iterdir()) == []
    ch.create_preboot(world, tmp_path / "pb")


def test_not_a_preboot_dir_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="not a bsipatch preboot"):
        Preboot(tmp_path)


def test_status_of_fresh_device(pb: Preboot) -> None:
    st = pb.status()
    assert st["os_version"] == "26.1" and st["build"] == "23B85"
    assert st["active_release"] is None and st["pending"] == []
    assert set(st["components"]) == {"webkit", "libsys", "safari"}
    assert st["components"]["libsys"]["activation"] == "reboot"
    assert st["history"][0]["op"] == "create"
    json.dumps(st)  # serialisable


def test_second_lock_holder_gets_locked_error(pb: Preboot) -> None:
    other = Preboot(pb.path)
    with pb.lock():
        with pytest.raises(LockedError), other.lock():
            pass
        with pb.lock():  # re-entrant for the holder
            pass
    with other.lock():
        pass


def test_lock_held_by_another_process(pb: Preboot) -> None:
    code = (
        "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR);"
        "fcntl.flock(fd,fcntl.LOCK_EX);print('locked',flush=True);time.sleep(30)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(pb.path / "lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError), pb.lock():
            pass
        # readers never block on the writer
        assert pb.status()["active_release"] is None
        assert pb.component_path("webkit").exists()
    finally:
        child.kill()
        child.wait()
    with pb.lock():
        pass


def test_journal_pending_end_and_compact(tmp_path: Path) -> None:
    j = Journal.create(tmp_path / "journal")
    a = j.begin("install", release="x")
    b = j.begin("rollback")
    j.note(a, "staged")
    j.end(b)
    pending = j.pending()
    assert [p["tx"] for p in pending] == [a]
    assert pending[0]["notes"] == ["staged"] and pending[0]["data"] == {"release": "x"}
    with pytest.raises(RuntimeError):
        j.compact()
    j.end(a)
    j.compact()
    assert (tmp_path / "journal").stat().st_size == 0


def test_journal_ignores_damaged_record_and_everything_after(tmp_path: Path) -> None:
    j = Journal.create(tmp_path / "journal")
    a = j.begin("install")
    data = bytearray((tmp_path / "journal").read_bytes())
    data[20] ^= 1  # flip a bit in the first record
    (tmp_path / "journal").write_bytes(bytes(data))
    j.end(a)
    assert j.pending() == []
    assert j.records()[0]["phase"] == "end"


def test_crashpoint_traces_and_kills(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    code = (
        "from bsipatch._crashpoints import crashpoint\n"
        "crashpoint('a'); crashpoint('b'); crashpoint('b'); print('survived')\n"
    )
    env = dict(os.environ, BSIPATCH_CRASH_TRACE=str(trace), BSIPATCH_CRASH_AT="b#2")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == -9 and "survived" not in r.stdout
    assert trace.read_text().split() == ["a#1", "b#1", "b#2"]
    crashpoint("in-test-process-no-env")  # without the env variables: nothing happens


def test_recover_removes_leftovers_but_keeps_referenced(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, "26.1 (a)")
    (pb.staging_dir / "junk").mkdir()
    (pb.staging_dir / "junk" / "x.img").write_bytes(b"x")
    (pb.releases_dir / "orphan").mkdir()
    (pb.trash_dir / "old").mkdir()
    assert pb.recover() == []
    assert [p.name for p in pb.releases_dir.iterdir()] == ["26.1-a"]
    assert list(pb.staging_dir.iterdir()) == [] and list(pb.trash_dir.iterdir()) == []


def test_open_component_reads_verified_image(pb: Preboot, world: dict) -> None:
    with pb.open_component("webkit") as f:
        data = f.read()
    assert hashlib.sha256(data).hexdigest() == world["sha256"]["base"]["webkit"]


def test_verify_selection_detects_damaged_base(pb: Preboot) -> None:
    img = pb.path / "base" / "26.1-23B85" / "safari.img"
    img.chmod(0o644)
    with open(img, "r+b") as f:
        f.seek(5000)
        b = f.read(1)
        f.seek(5000)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(SealMismatch):
        pb.verify_selection("base/26.1-23B85", None)


def test_release_slug() -> None:
    assert release_slug("26.1 (a)") == "26.1-a"
    assert release_slug("26.1 (b)") == "26.1-b"
    with pytest.raises(ValueError):
        release_slug("..")
    with pytest.raises(ValueError):
        release_slug("()")


def test_history_records_times(world: dict, tmp_path: Path) -> None:
    clock = iter(f"2026-11-28T00:00:{i:02d}Z" for i in range(60))
    pb = Preboot.create(
        tmp_path / "pb",
        os_version=world["os_version"],
        build=world["build"],
        images=world["images"],
        activation=world["activation"],
        clock=lambda: next(clock),
    )
    ch.install(world, pb, "26.1 (a)")
    hist = pb.status()["history"]
    assert [h["op"] for h in hist] == ["create", "install"]
    assert hist[0]["time"] < hist[1]["time"]
    assert time.strptime(hist[1]["time"], "%Y-%m-%dT%H:%M:%SZ")
