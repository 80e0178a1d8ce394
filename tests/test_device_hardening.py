"""Device hardening: no preboot lock while downloading, reinstall after rollback/uninstall,
stray temp files and dead work directories removed at recovery.

Real preboot volumes, real patches, a real HTTP server on 127.0.0.1 that trickles, and
real child processes killed mid-write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import crashhelper as ch
import pytest
from httpserver import Fault
from test_agent import _agent, _assert_on, _serve, device, vendor  # noqa: F401 - fixtures

from bsipatch.agent.agent import Agent
from bsipatch.agent.limits import Limits
from bsipatch.cli.main import main as cli_main
from bsipatch.device import install as inst
from bsipatch.device.pending import PENDING, PendingDir
from bsipatch.errors import DownloadTooSlow, LockedError, StateError


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return ch.make_world(tmp_path_factory.mktemp("world"))


# --- no preboot lock while downloading --------------------------------------------------


def test_rollback_boot_and_status_work_while_a_download_trickles(device, vendor):  # noqa: F811
    _agent(device, vendor, vendor["snap"]["A"]).run()
    _agent(device, vendor, vendor["snap"]["AB"]).run()
    inst.rollback(device)  # back to (a), not recorded as a user removal: the agent wants (b)
    inst.boot(device)  # (b) leaves the volume: the agent must download it again
    with _serve(vendor, "AB") as srv:
        srv.fault = Fault("trickle", at=0, rate=200.0, times=-1)
        agent = _agent(
            device, vendor, srv.url, timeout=1.0, limits=Limits(deadline=4.0, min_rate=1.0)
        )
        errors: list[BaseException] = []

        def run() -> None:
            try:
                agent.run()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        try:
            for _ in range(200):
                if srv.requests_for(".bsipatch"):
                    break
                time.sleep(0.02)
            assert srv.requests_for(".bsipatch"), "the agent never started the download"
            time.sleep(0.3)
            assert t.is_alive()
            # the preboot lock is free: the user's rollback, boot and status all work now
            out = Agent(device, None).rollback()
            assert (out["from"], out["to"]) == ("26.1 (a)", None)
            inst.boot(device)
            assert device.status()["active_release"] is None
            with pytest.raises(LockedError, match="another agent run"):
                _agent(device, vendor, vendor["snap"]["AB"]).run()
        finally:
            t.join(timeout=30)
    assert len(errors) == 1 and isinstance(errors[0], DownloadTooSlow), errors
    _assert_on(device, vendor, "base")
    device.recover()
    assert list((device.path / PENDING).iterdir()) == []
    assert Agent(device, None).store.state().last_result["ok"] is False


# --- dead work directories, stray temp files ----------------------------------------------


_HOLD = """
import sys, time
from pathlib import Path
from bsipatch.device.pending import PendingDir
w = PendingDir(Path(sys.argv[1]))
(w.path / "webkit.img").write_bytes(b"half")
print(w.path, flush=True)
time.sleep(60)
"""


def test_recovery_keeps_a_live_work_directory_and_removes_a_dead_one(world, tmp_path):
    pb = ch.create_preboot(world, tmp_path / "pb")
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(pb.path)], stdout=subprocess.PIPE, text=True
    )
    try:
        work = Path(child.stdout.readline().strip())
        assert work.is_dir()
        pb.recover()
        assert work.is_dir()  # its owner is alive
        inst.boot(pb)
        assert (work / "webkit.img").read_bytes() == b"half"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    pb.recover()
    assert not work.exists()
    assert list((pb.path / PENDING).iterdir()) == []


def test_a_work_directory_of_this_process_is_removed_when_done(tmp_path):
    with PendingDir(tmp_path) as w:
        (w.path / "x").write_bytes(b"1")
        assert w.lock_path.exists()
    assert not w.path.exists() and not w.lock_path.exists()


_KILL_IN_WRITE = """
import os, sys
from bsipatch._io import atomic_write
cm = atomic_write(sys.argv[1])
f = cm.__enter__()
f.write(b'{"half": ')
f.flush()
os._exit(9)  # killed before the rename
"""


@pytest.mark.parametrize("command", [["boot"], ["recover"]])
def test_recovery_removes_temp_files_of_a_killed_atomic_write(world, tmp_path, command):
    pb = ch.create_preboot(world, tmp_path / "pb")
    before = pb.state_path.read_bytes()
    for name in ("state.json", "verified.json"):
        r = subprocess.run([sys.executable, "-c", _KILL_IN_WRITE, str(pb.path / name)])
        assert r.returncode == 9
    temps = sorted(p.name for p in pb.path.glob(".*.tmp"))
    assert len(temps) == 2 and temps[0].startswith(".state.json.")
    assert cli_main([*command, "--preboot", str(pb.path)]) == 0
    assert list(pb.path.glob(".*.tmp")) == []
    assert pb.state_path.read_bytes() == before or pb.read_state()["chain"] == []


# --- reinstall after rollback / uninstall ----------------------------------------------------


@pytest.mark.parametrize("how", ["rollback", "uninstall"])
def test_release_removed_by_user_installs_again_at_once(world, tmp_path, how):
    pb = ch.create_preboot(world, tmp_path / "pb")
    ch.install(world, pb, "26.1 (a)")
    inst.boot(pb)  # the system now runs (a): its directory stays until the next boot
    want = ch.images_now(pb)
    getattr(inst, how)(pb)
    assert pb.status()["active_release"] is None
    assert [p.name for p in pb.releases_dir.iterdir()] == ["26.1-a"]  # kept, booted
    out = ch.install(world, pb, "26.1 (a)")
    assert out["release"] == "26.1 (a)" and out.get("reactivated") is True
    assert pb.status()["active_release"] == "26.1 (a)"
    assert ch.images_now(pb) == want
    with pytest.raises(StateError, match="already installed \\(active\\)"):
        ch.install(world, pb, "26.1 (a)")
    pb.recover()
    assert pb.read_state()["chain"] == [out["slug"]]


def test_kept_release_that_no_longer_verifies_is_not_reactivated(world, tmp_path):
    pb = ch.create_preboot(world, tmp_path / "pb")
    out = ch.install(world, pb, "26.1 (a)")
    inst.boot(pb)
    inst.rollback(pb)
    img = next((pb.releases_dir / out["slug"]).glob("*.img"))
    img.chmod(0o644)
    data = bytearray(img.read_bytes())
    data[100] ^= 1
    img.write_bytes(bytes(data))
    with pytest.raises(StateError, match="does not verify"):
        ch.install(world, pb, "26.1 (a)")
    assert pb.status()["active_release"] is None


def test_install_after_reboot_downloads_again(world, tmp_path):
    pb = ch.create_preboot(world, tmp_path / "pb")
    ch.install(world, pb, "26.1 (a)")
    inst.uninstall(pb)
    inst.boot(pb)
    out = ch.install(world, pb, "26.1 (a)")
    assert "reactivated" not in out
    assert pb.status()["active_release"] == "26.1 (a)"
    assert os.listdir(pb.path / PENDING) == []


# --- one rollback, one uninstall, one os-update; --preboot everywhere ----------------------


def test_top_level_rollback_honours_policy_and_keeps_agent_records(
    device,  # noqa: F811
    vendor,  # noqa: F811
    capsys,
):
    from bsipatch.errors import PolicyDenied

    _agent(device, vendor, vendor["snap"]["A"]).run()
    _agent(device, vendor, vendor["snap"]["AB"]).run()
    inst.boot(device)  # the system runs (b): its directory stays after a rollback
    agent = Agent(device, None)
    agent.apply_policy(b'{"RapidSecurityResponse": {"EnableRollback": false}}')
    for cmd in ("rollback", "uninstall"):
        assert cli_main([cmd, "--preboot", str(device.path)]) == PolicyDenied.exit_code
        assert "EnableRollback" in capsys.readouterr().err
    assert device.status()["active_release"] == "26.1 (b)"
    agent.store.clear_policy()
    assert cli_main(["rollback", "--preboot", str(device.path)]) == 0
    assert device.status()["active_release"] == "26.1 (a)"
    assert agent.store.state().removed == ["26.1 (b)"]
    # the agent does not reinstall it, and does not fail with "already installed" either
    for _ in range(2):
        report = _agent(device, vendor, vendor["snap"]["AB"]).run()
        d = {x["release_id"]: x for x in report["check"]["decisions"]}["26.1 (b)"]
        assert report["installed"] is None and d["code"] == "removed"
    # asked for again, it installs at once (kept on the volume: reactivated)
    argv = ["agent", "run", "--preboot", str(device.path), "--repo", str(vendor["snap"]["AB"])]
    assert cli_main([*argv, "--reinstall", "26.1 (b)", "--json"]) == 0
    assert device.status()["active_release"] == "26.1 (b)"
    assert agent.store.state().removed == []


def test_every_device_command_takes_preboot_from_the_environment(
    device,  # noqa: F811
    vendor,  # noqa: F811
    monkeypatch,
    capsys,
    tmp_path,
):
    import json

    monkeypatch.setenv("BSIPATCH_PREBOOT", str(device.path))  # read when the parser is built
    root = tmp_path / "root.json"
    root.write_bytes(vendor["root_json"])
    for argv in (
        ["status"],
        ["agent", "status"],
        ["agent", "settings"],
        ["agent", "policy"],
        ["agent", "check", "--repo", str(vendor["snap"]["A"]), "--root", str(root)],
        ["agent", "run", "--repo", str(vendor["snap"]["A"])],
        ["uninstall"],
        ["boot"],
        ["gc"],
        ["recover"],
    ):
        assert cli_main([*argv, "--json"]) == 0, argv
        json.loads(capsys.readouterr().out)
    monkeypatch.delenv("BSIPATCH_PREBOOT")
    assert cli_main(["agent", "status"]) == StateError.exit_code
    assert "--preboot DIR or set $BSIPATCH_PREBOOT" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["agent", "rollback"], ["agent", "uninstall"], ["preboot", "os-update"]]
)
def test_one_spelling_of_each_device_command(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main([*argv, "--preboot", "/nonexistent"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_os_update_keeps_activation_unless_given_and_clears_agent_records(
    device,  # noqa: F811
    vendor,  # noqa: F811
):
    _agent(device, vendor, vendor["snap"]["A"]).run()
    new = vendor["images"]["new"]
    argv = ["os-update", "--preboot", str(device.path), "--os-version", "26.2", "--build", "23C55"]
    images = [f"--image=webkit={new['webkit']}:reboot", f"--image=libsystem={new['libsystem']}"]
    assert cli_main([*argv, *images]) == 0
    st = device.status()
    assert (st["os_version"], st["active_release"]) == ("26.2", None)
    assert device.components() == {"webkit": "reboot", "libsystem": "reboot"}
    assert Agent(device, None).store.state().retired == ["26.1 (a)"]


# --- a line per retry on a terminal ---------------------------------------------------------


def _stderr_through_a_terminal(argv: list[str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; return (exit code, what it printed)."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bsipatch.cli.main", *argv],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            timeout=120,
        )
    finally:
        os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed and drained
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.returncode, out.decode(errors="replace")


def test_agent_prints_a_line_per_retry_on_a_terminal(device, vendor, tmp_path):  # noqa: F811
    root = tmp_path / "root.json"
    root.write_bytes(vendor["root_json"])
    with _serve(vendor, "A") as srv:
        srv.fault = Fault("status", suffix="timestamp.json", code=503, times=2)
        argv = ["agent", "check", "--preboot", str(device.path), "--repo", srv.url]
        code, err = _stderr_through_a_terminal([*argv, "--root", str(root)])
        assert code == 0, err
        lines = [ln for ln in err.splitlines() if "retrying" in ln]
        assert len(lines) == 2, err
        assert all(ln.startswith("bsipatch: metadata/timestamp.json:") for ln in lines)
        assert "HTTP 503" in lines[0] and "(attempt 2 of 5)" in lines[0]
        srv.fault = Fault("status", suffix="timestamp.json", code=503, times=2)
        code, err = _stderr_through_a_terminal([*argv, "--quiet"])
        assert code == 0 and "retrying" not in err


def test_agent_run_removes_its_own_stray_temp_files(device, vendor):  # noqa: F811
    agent = _agent(device, vendor, vendor["snap"]["A"])
    agent.store.dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-c", _KILL_IN_WRITE, str(agent.store.dir / "state.json")])
    assert r.returncode == 9
    (stray,) = agent.store.dir.glob(".state.json.*.tmp")
    fresh = agent.store.dir / ".settings.json.fresh.tmp"  # a live writer's: too new to take
    fresh.write_bytes(b"{")
    old = time.time() - 3600
    os.utime(stray, (old, old))
    agent.run()
    assert not stray.exists() and fresh.exists()
