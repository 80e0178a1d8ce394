"""The update agent end to end: a real published repository, a real HTTP server on
127.0.0.1 (good and faulty), a real preboot volume. In every case the agent ends with a
clear error or a completed install, and the device stays on verified images."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from httpserver import Fault, serve

from bsipatch.agent.agent import Agent, AgentStore
from bsipatch.agent.status import device_report
from bsipatch.cli.demo_images import code_like as _code_like
from bsipatch.cli.demo_images import security_fix as _security_fix
from bsipatch.cli.main import main as cli_main
from bsipatch.device.preboot import Preboot
from bsipatch.errors import (
    BsipatchError,
    FetchError,
    PolicyDenied,
    PolicyError,
    RollbackAttack,
    StateError,
)
from bsipatch.trust import signers
from bsipatch.trust.manifest import Cve
from bsipatch.trust.publish import ComponentInput, build_release, withdraw
from bsipatch.trust.tufrepo import init_repository

# signing times follow the real clock: publishing refuses metadata that is already expired
NOW = datetime.now(timezone.utc).replace(microsecond=0)
LATER = NOW + timedelta(hours=1)
BUILD = "23B85"
ACTIVATION = {"webkit": "relaunch", "libsystem": "reboot"}
IMG_SIZE = 64 * 4096


def _image(files: dict[str, bytes]) -> bytes:
    data = b"".join(files[k] for k in sorted(files))
    return (data + bytes(IMG_SIZE))[:IMG_SIZE]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    """Images and repository snapshots: A = 26.1 (a); AB = + 26.1 (b); ABW = (b) withdrawn."""
    root = tmp_path_factory.mktemp("vendor")
    base_files = {
        "webkit": {"engine.so": _code_like(1, 150_000), "jsc.so": _code_like(2, 90_000)},
        "libsystem": {"libc.so": _code_like(3, 120_000), "libz.so": _code_like(4, 60_000)},
    }
    a_files = {n: _security_fix(f, 11) for n, f in base_files.items()}
    b_files = {"webkit": _security_fix(a_files["webkit"], 21), "libsystem": a_files["libsystem"]}
    images: dict[str, dict[str, Path]] = {}
    contents: dict[str, dict[str, bytes]] = {}
    for tag, tree in (("base", base_files), ("a", a_files), ("b", b_files)):
        images[tag], contents[tag] = {}, {}
        for name, files in tree.items():
            p = root / f"{name}-{tag}.img"
            contents[tag][name] = _image(files)
            p.write_bytes(contents[tag][name])
            images[tag][name] = p
    # an image set for another OS build (26.0) and the next OS version (26.2)
    for tag, seed in (("old", 50), ("new", 60)):
        images[tag], contents[tag] = {}, {}
        for name in ACTIVATION:
            p = root / f"{name}-{tag}.img"
            contents[tag][name] = _image({"x": _code_like(seed + len(name), IMG_SIZE)})
            p.write_bytes(contents[tag][name])
            images[tag][name] = p

    keys = signers.KeySet({r: [signers.generate("ed25519")] for r in signers.ROLES})
    repo = root / "repo"
    init_repository(repo, keys, now=NOW)

    def publish(release_id, os_version, builds, tag_from, tag_to, when, cves=()):
        return build_release(
            repo,
            release_id=release_id,
            os_version=os_version,
            builds=builds,
            supplemental_build=builds[0] + release_id[-2],
            components=[
                ComponentInput(n, ACTIVATION[n], images[tag_from][n], images[tag_to][n], cves)
                for n in ACTIVATION
            ],
            keys=keys,
            now=NOW,
            published=when,
        )

    publish("26.0 (a)", "26.0", ("22Z99",), "old", "base", NOW - timedelta(days=30))
    publish(
        "26.1 (a)", "26.1", (BUILD,), "base", "a", NOW,
        (Cve("CVE-2026-40001", "memory corruption in web content"),),
    )  # fmt: skip
    snap = {"A": root / "snap-A"}
    shutil.copytree(repo, snap["A"])
    publish("26.1 (b)", "26.1", (BUILD,), "base", "b", NOW + timedelta(minutes=5))
    snap["AB"] = root / "snap-AB"
    shutil.copytree(repo, snap["AB"])
    withdraw(repo, "26.1 (b)", keys, now=NOW + timedelta(minutes=10))
    snap["ABW"] = root / "snap-ABW"
    shutil.copytree(repo, snap["ABW"])
    return {
        "root": root,
        "keys": keys,
        "images": images,
        "contents": contents,
        "snap": snap,
        "root_json": (repo / "metadata" / "1.root.json").read_bytes(),
    }


@pytest.fixture
def device(tmp_path, vendor):
    return Preboot.create(
        tmp_path / "preboot",
        os_version="26.1",
        build=BUILD,
        images=dict(vendor["images"]["base"]),
        activation=dict(ACTIVATION),
    )


def _agent(device, vendor, url_or_dir, **kw):
    kw.setdefault("timeout", 0.5)
    kw.setdefault("retries", 3)
    return Agent(device, url_or_dir, now=LATER, trusted_root=vendor["root_json"], **kw)


def _assert_on(device, vendor, tag: str) -> None:
    """Every component image the device opens verifies and equals the ``tag`` image."""
    for name in ACTIVATION:
        with device.open_component(name) as r:
            data = r.read()
        if ACTIVATION[name] == "relaunch" or tag == "base":
            assert _sha(data) == _sha(vendor["contents"][tag][name]), (name, tag)


def _serve(vendor, snap):
    return serve(vendor["snap"][snap])


# --- check / run -----------------------------------------------------------------------------


def test_check_says_what_applies_and_why_not_for_the_rest(device, vendor):
    with _serve(vendor, "AB") as srv:
        decisions = {d.release_id: d for d in _agent(device, vendor, srv.url).check()}
    assert decisions["26.0 (a)"].code == "wrong_build"
    assert "23B85" in decisions["26.0 (a)"].reason
    assert decisions["26.1 (a)"].code == "superseded"
    assert decisions["26.1 (b)"].action == "install"
    _assert_on(device, vendor, "base")  # check changes nothing


def test_run_installs_over_http_streaming_into_apply(device, vendor):
    with _serve(vendor, "A") as srv:
        agent = _agent(device, vendor, srv.url)
        report = agent.run()
    inst = report["installed"]
    assert inst["release"] == "26.1 (a)"
    assert device.status()["active_release"] == "26.1 (a)"
    _assert_on(device, vendor, "a")
    # only the patches crossed the wire, far less than the images
    assert inst["downloaded_patch_bytes"] == inst["patch_bytes"]
    assert inst["downloaded_patch_bytes"] < inst["full_image_bytes"] / 4
    # no patch file was written to the device first
    assert not list(Path(device.path).rglob("*.bsipatch"))
    # a second run finds nothing to do
    with _serve(vendor, "A") as srv:
        again = _agent(device, vendor, srv.url).run()
    assert again["installed"] is None
    assert {d["release_id"]: d["code"] for d in again["check"]["decisions"]}["26.1 (a)"] == "active"


def test_local_directory_repository_works_the_same(device, vendor):
    report = _agent(device, vendor, vendor["snap"]["A"]).run()
    assert report["installed"]["release"] == "26.1 (a)"
    _assert_on(device, vendor, "a")


FAULTS = [
    # (fault, expected outcome: None = installs, else error class)
    (Fault("truncate", at=300, times=1), None),
    (Fault("truncate", at=300, times=2), None),
    (Fault("stall", at=300, seconds=3.0, times=1), None),
    (Fault("truncate_ignore_range", at=300, times=-1), None),
    (Fault("status", code=503, times=1), None),
    (Fault("corrupt", at=100, times=-1), BsipatchError),
    (Fault("extra", extra=4096, times=-1), BsipatchError),
    (Fault("extra_unannounced", extra=4096, times=-1), BsipatchError),
    (Fault("truncate", at=0, times=-1), FetchError),
    (Fault("stall", at=10, seconds=3.0, times=-1), FetchError),
    (Fault("status", code=500, times=-1), FetchError),
    (Fault("status", code=404, times=-1), FetchError),
]


@pytest.mark.parametrize("fault, expected", FAULTS, ids=lambda x: getattr(x, "kind", None))
def test_faulty_server_ends_in_install_or_clear_error(device, vendor, fault, expected):
    with _serve(vendor, "A") as srv:
        srv.fault = fault
        agent = _agent(device, vendor, srv.url, timeout=0.3, retries=2)
        if expected is None:
            report = agent.run()
            assert report["installed"]["release"] == "26.1 (a)"
            _assert_on(device, vendor, "a")
        else:
            with pytest.raises(expected) as info:
                agent.run()
            assert str(info.value)  # a clear message
            assert device.status()["active_release"] is None
            _assert_on(device, vendor, "base")
            last = device_report(device)["last_check"]
            assert last["ok"] is False and last["error"]
    # nothing half-installed is left behind
    assert not list(Path(device.path, "staging").iterdir())


def test_tampered_targets_metadata_is_refused_and_recorded(device, vendor):
    with _serve(vendor, "A") as srv:
        srv.fault = Fault("corrupt", suffix=".targets.json", at=200, times=-1)
        agent = _agent(device, vendor, srv.url)
        with pytest.raises(BsipatchError) as info:
            agent.run()
    _assert_on(device, vendor, "base")
    last = device_report(device)["last_check"]
    assert last["ok"] is False and last["error"] == str(info.value)
    assert "targets" in last["error"]


def test_patch_with_wrong_hash_is_refused_and_recorded(device, vendor):
    with _serve(vendor, "A") as srv:
        srv.fault = Fault("corrupt", at=100, times=-1)
        with pytest.raises(BsipatchError) as info:
            _agent(device, vendor, srv.url).run()
    _assert_on(device, vendor, "base")
    last = device_report(device)["last_check"]
    assert last["ok"] is False and str(info.value) in last["error"]


def test_older_catalog_after_newer_is_a_rollback_attack(device, vendor):
    with _serve(vendor, "AB") as srv:
        _agent(device, vendor, srv.url).check()
    with _serve(vendor, "A") as srv, pytest.raises(RollbackAttack):
        _agent(device, vendor, srv.url).check()


def test_agent_without_trusted_root_refuses(device, vendor):
    agent = Agent(device, vendor["snap"]["A"], now=LATER)
    with pytest.raises(StateError, match="trusted root"):
        agent.check()


# --- settings and policy ------------------------------------------------------------------


def test_auto_install_off_defers(device, vendor):
    agent = _agent(device, vendor, vendor["snap"]["A"])
    agent.set_auto_install(False)
    report = agent.run()
    assert report["installed"] is None
    d = {x["release_id"]: x for x in report["check"]["decisions"]}["26.1 (a)"]
    assert d["action"] == "defer" and "next OS update" in d["reason"]
    rep = device_report(device)
    assert [x["release_id"] for x in rep["deferred_releases"]] == ["26.1 (a)"]
    assert rep["auto_install"] == {
        "enabled": False,
        "decided_by": "user",
        "reason": "user setting auto-install = off",
    }
    _assert_on(device, vendor, "base")
    # turning it on installs, and the deferred list empties
    agent.set_auto_install(True)
    assert agent.run()["installed"]["release"] == "26.1 (a)"
    assert device_report(device)["deferred_releases"] == []


def test_policy_always_on_overrides_user_off(device, vendor):
    agent = _agent(device, vendor, vendor["snap"]["A"])
    agent.set_auto_install(False)
    agent.apply_policy(b'{"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOn"}}')
    assert agent.run()["installed"]["release"] == "26.1 (a)"
    assert device_report(device)["auto_install"]["decided_by"] == "policy"


def test_policy_always_off_overrides_user_on(device, vendor):
    agent = _agent(device, vendor, vendor["snap"]["A"])
    agent.apply_policy(b'{"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOff"}}')
    report = agent.run()
    assert report["installed"] is None
    rep = device_report(device)
    assert rep["auto_install"]["decided_by"] == "policy"
    assert rep["deferred_releases"][0]["release_id"] == "26.1 (a)"


def test_policy_disabling_security_releases_skips_them(device, vendor):
    agent = _agent(device, vendor, vendor["snap"]["A"])
    agent.apply_policy(b'{"RapidSecurityResponse": {"Enable": false}}')
    report = agent.run()
    d = {x["release_id"]: x for x in report["check"]["decisions"]}["26.1 (a)"]
    assert d["code"] == "policy" and "Enable" in d["reason"]
    assert report["installed"] is None


def test_pinned_release_installs_only_that_one(device, vendor):
    agent = _agent(device, vendor, vendor["snap"]["AB"])
    agent.apply_policy(b'{"PinnedRelease": "26.1 (a)"}')
    report = agent.run()
    assert report["installed"]["release"] == "26.1 (a)"
    d = {x["release_id"]: x for x in report["check"]["decisions"]}["26.1 (b)"]
    assert d["code"] == "policy" and "pinned" in d["reason"]


def test_invalid_policy_is_rejected_whole_and_old_one_stays(device, vendor):
    agent = _agent(device, vendor, vendor["snap"]["A"])
    agent.apply_policy(b'{"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOff"}}')
    with pytest.raises(PolicyError):
        agent.apply_policy(b'{"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOn"}, "X": 1}')
    assert AgentStore(device.path).policy().install_security_update == "AlwaysOff"


def test_policy_forbidding_rollback_blocks_uninstall(device, vendor):
    agent = _agent(device, vendor, vendor["snap"]["A"])
    agent.run()
    agent.apply_policy(b'{"RapidSecurityResponse": {"EnableRollback": false}}')
    with pytest.raises(PolicyDenied, match="EnableRollback"):
        agent.uninstall()
    assert device.status()["active_release"] == "26.1 (a)"
    assert cli_main(["uninstall", "--preboot", str(device.path)]) == PolicyDenied.exit_code


def test_cli_rollback_goes_back_one_release(device, vendor, capsys):
    _agent(device, vendor, vendor["snap"]["A"]).run()
    _agent(device, vendor, vendor["snap"]["AB"]).run()
    assert cli_main(["rollback", "--preboot", str(device.path)]) == 0
    assert "from 26.1 (b) to 26.1 (a)" in capsys.readouterr().out
    assert device.status()["active_release"] == "26.1 (a)"
    assert "26.1 (b)" in device_report(device)["removed_by_user"]


def test_user_uninstall_is_not_undone_automatically(device, vendor):
    agent = _agent(device, vendor, vendor["snap"]["A"])
    agent.run()
    agent.uninstall()
    report = agent.run()
    assert report["installed"] is None
    d = {x["release_id"]: x for x in report["check"]["decisions"]}["26.1 (a)"]
    assert d["code"] == "removed"
    _assert_on(device, vendor, "base")


def test_release_the_device_fell_back_from_is_not_reinstalled_automatically(device, vendor):
    from bsipatch.agent.status import device_report
    from bsipatch.device import health

    agent = _agent(device, vendor, vendor["snap"]["A"])
    agent.run()
    tentative = device.status()["health"]["tentative"]
    assert tentative["release"] == "26.1 (a)"
    name = tentative["components"][0]
    for _ in range(3):
        health.report(device, name, ok=False)
    assert device.status()["active_release"] is None
    report = agent.run()
    assert report["installed"] is None
    d = {x["release_id"]: x for x in report["check"]["decisions"]}["26.1 (a)"]
    assert d["code"] == "fallen_back" and d["action"] == "skip"
    _assert_on(device, vendor, "base")
    [fb] = device_report(device)["health"]["fallen_back"]
    assert fb["release"] == "26.1 (a)" and "failed to launch 3 times" in fb["reason"]


# --- withdrawal ---------------------------------------------------------------------------


def test_withdrawal_steps_back_to_previous_release(device, vendor):
    _agent(device, vendor, vendor["snap"]["A"]).run()
    _agent(device, vendor, vendor["snap"]["AB"]).run()
    assert device.status()["active_release"] == "26.1 (b)"
    with _serve(vendor, "ABW") as srv:
        report = _agent(device, vendor, srv.url).run()
    sb = report["step_back"]
    assert (sb["from"], sb["to"], sb["how"]) == ("26.1 (b)", "26.1 (a)", "rollback")
    assert report["downloaded"] < 20_000  # metadata only
    assert device.status()["active_release"] == "26.1 (a)"
    _assert_on(device, vendor, "a")


def test_withdrawal_installs_older_release_when_not_kept(device, vendor):
    _agent(device, vendor, vendor["snap"]["AB"]).run()  # (b) directly, (a) never installed
    report = _agent(device, vendor, vendor["snap"]["ABW"]).run()
    assert report["step_back"]["how"] == "install"
    assert device.status()["active_release"] == "26.1 (a)"
    _assert_on(device, vendor, "a")


def test_withdrawal_of_only_release_goes_back_to_base(device, vendor, tmp_path):
    _agent(device, vendor, vendor["snap"]["A"]).run()
    repo = tmp_path / "repo-aw"
    shutil.copytree(vendor["snap"]["A"], repo)
    withdraw(repo, "26.1 (a)", vendor["keys"], now=NOW + timedelta(minutes=1))
    report = _agent(device, vendor, repo).run()
    assert report["step_back"]["how"] == "uninstall"
    assert device.status()["active_release"] is None
    _assert_on(device, vendor, "base")


def test_withdrawal_with_auto_install_off_stays_and_says_so(device, vendor):
    _agent(device, vendor, vendor["snap"]["AB"]).run()
    agent = _agent(device, vendor, vendor["snap"]["ABW"])
    agent.set_auto_install(False)
    report = agent.run()
    assert report["step_back"] is None
    d = {x["release_id"]: x for x in report["check"]["decisions"]}["26.1 (b)"]
    assert d["code"] == "active_withdrawn" and "automatic install is off" in d["reason"]
    assert device.status()["active_release"] == "26.1 (b)"


# --- OS update and status -------------------------------------------------------------------


def test_os_update_retires_old_releases(device, vendor):
    _agent(device, vendor, vendor["snap"]["A"]).run()
    agent = _agent(device, vendor, vendor["snap"]["AB"])
    agent.set_auto_install(False)
    agent.check()  # (b) deferred
    agent.set_auto_install(True)
    out = agent.os_update(os_version="26.2", build="23C55", images=vendor["images"]["new"])
    assert "26.1 (a)" in out["retired"]
    assert out["deferred_cleared"] == ["26.1 (b)"]
    st = device.status()
    assert (st["os_version"], st["build"], st["active_release"]) == ("26.2", "23C55", None)
    _assert_on(device, vendor, "new")
    rep = device_report(device)
    assert rep["OSVersion"] == "26.2" and rep["deferred_releases"] == []
    assert "26.1 (a)" in rep["retired_releases"]
    decisions = agent.check()
    assert {d.code for d in decisions} == {"wrong_build"}


def test_status_report_has_every_field_mdm_needs(device, vendor):
    with _serve(vendor, "A") as srv:
        _agent(device, vendor, srv.url).run()
    rep = device_report(device, now=LATER)
    json.dumps(rep)  # JSON-ready
    assert rep["OSVersion"] == "26.1" and rep["BuildVersion"] == BUILD
    assert rep["SupplementalOSVersionExtra"] == "(a)"
    assert rep["SupplementalBuildVersion"] == "23B85a"
    assert rep["active_release"]["published"] == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert rep["active_release"]["cves"] == ["CVE-2026-40001"]
    for name in ACTIVATION:
        assert len(rep["components"][name]["root_hash"]) == 64
    assert [p["component"] for p in rep["pending_activations"]] == ["libsystem"]
    assert rep["auto_install"]["decided_by"] == "user"
    assert rep["policy"]["present"] is False
    assert rep["last_check"]["ok"] is True and rep["last_check"]["time"] == LATER.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert rep["deferred_releases"] == []


def test_failed_check_is_recorded_in_status(device, vendor):
    with _serve(vendor, "A") as srv:
        srv.fault = Fault("status", suffix="timestamp.json", code=500, times=-1)
        with pytest.raises(FetchError):
            _agent(device, vendor, srv.url, retries=1).check()
    last = device_report(device)["last_check"]
    assert last["ok"] is False and "500" in last["error"]


# --- CLI ----------------------------------------------------------------------------------


def test_cli_check_run_settings_policy_status(device, vendor, tmp_path, capsys):
    pb = str(device.path)
    root = tmp_path / "root.json"
    root.write_bytes(vendor["root_json"])
    with _serve(vendor, "A") as srv:
        repo = ["--preboot", pb, "--repo", srv.url]
        assert cli_main(["agent", "settings", "--preboot", pb, "--auto-install", "off"]) == 0
        assert "automatic install off" in capsys.readouterr().out
        assert cli_main(["agent", "check", *repo, "--root", str(root), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert {d["release_id"]: d["action"] for d in out["decisions"]}["26.1 (a)"] == "defer"
        policy = tmp_path / "policy.json"
        policy.write_text('{"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOn"}}')
        assert cli_main(["agent", "policy", "--preboot", pb, str(policy)]) == 0
        assert cli_main(["agent", "run", *repo]) == 0
        assert "installed 26.1 (a)" in capsys.readouterr().out
    assert cli_main(["agent", "status", "--preboot", pb, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["SupplementalOSVersionExtra"] == "(a)"
    assert rep["auto_install"]["decided_by"] == "policy"
    assert cli_main(["agent", "status", "--preboot", pb]) == 0
    assert "26.1 (a)" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text('{"AutomaticActions": {"InstallSecurityUpdate": "Maybe"}}')
    assert cli_main(["agent", "policy", "--preboot", pb, str(bad)]) == PolicyError.exit_code


def test_cli_os_update(device, vendor, capsys):
    args = ["os-update", "--preboot", str(device.path), "--os-version", "26.2", "--build", "23C55"]
    for name, p in vendor["images"]["new"].items():
        args += ["--image", f"{name}={p}"]
    assert cli_main(args) == 0
    assert "26.2 (23C55)" in capsys.readouterr().out
    assert device.status()["os_version"] == "26.2"


# --- trust root rotation and concurrency ------------------------------------------------------


def test_root_rotation_is_followed_and_old_online_key_refused(device, vendor, tmp_path):
    from bsipatch.errors import ThresholdError
    from bsipatch.trust.tufrepo import rotate_root

    repo = tmp_path / "repo-rot"
    shutil.copytree(vendor["snap"]["A"], repo)
    keys = vendor["keys"]
    new = signers.KeySet(
        {"root": keys.get("root"), "targets": [signers.generate()],
         "timestamp": [signers.generate("ecdsa-p256")]}
    )  # fmt: skip
    with serve(repo) as srv:
        _agent(device, vendor, srv.url).check()
        rotate_root(repo, keys, new, now=NOW)
        report = _agent(device, vendor, srv.url).run()
    assert report["installed"]["release"] == "26.1 (a)"
    state = AgentStore(device.path).state()
    assert state.versions["root"] == 2
    assert json.loads(state.metadata["root"])["signed"]["version"] == 2
    # a mirror still serving metadata signed by the revoked timestamp key is refused
    with _serve(vendor, "A") as srv, pytest.raises(ThresholdError, match="timestamp"):
        _agent(device, vendor, srv.url).check()


def test_second_agent_run_while_locked_is_refused(device, vendor):
    from bsipatch.device.preboot import Preboot
    from bsipatch.errors import LockedError

    other = Preboot(device.path)
    with other.lock(), pytest.raises(LockedError):
        _agent(device, vendor, vendor["snap"]["A"]).run()
    _assert_on(device, vendor, "base")


def test_status_helpers_and_human_report(device, vendor):
    from bsipatch.agent.status import extra_version, format_report

    assert extra_version("26.1 (a)") == "(a)"
    assert extra_version("26.1 (ab)") == "(ab)"
    assert extra_version(None) is None and extra_version("26.1") is None
    rep = device_report(device, now=LATER)
    assert rep["SupplementalOSVersionExtra"] is None and rep["last_check"] is None
    text = "\n".join(format_report(rep))
    assert "none (base images)" in text and "last check: never" in text


def test_run_over_https_with_pinned_ca(device, vendor, tmp_path):
    from httpserver import make_certificate

    cert, key = make_certificate(tmp_path)
    with serve(vendor["snap"]["A"], tls=(cert, key)) as srv:
        assert cli_main(
            ["agent", "run", "--preboot", str(device.path), "--repo", srv.url, "--cafile",
             str(cert), "--root", str(vendor["root"] / "repo" / "metadata" / "1.root.json"), "-q"]
        ) == 0  # fmt: skip
    assert device.status()["active_release"] == "26.1 (a)"
    _assert_on(device, vendor, "a")
