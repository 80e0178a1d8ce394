"""TUF attacks tried against a device agent talking to a real HTTP server on 127.0.0.1.

Each test builds a genuine repository, lets the device trust it, then plays the
attacker: stolen online keys, a targets key below threshold, stale or replayed
metadata. The device must refuse with a typed error, stay on its verified images and
keep its fix; docs/security.md cites these tests row by row.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from httpserver import serve
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp
from tufworld import NOW, device, images, keyset, new_repo, publish

from bsipatch.agent.executor import Agent
from bsipatch.agent.status import device_report
from bsipatch.errors import (
    ExpiredMetadata,
    RollbackAttack,
    ThresholdError,
    WrongTarget,
)
from bsipatch.trust import signers
from bsipatch.trust.publish import withdraw
from bsipatch.trust.tufrepo import TufRepository, refresh, sign_role

LATER = NOW + timedelta(minutes=30)


@pytest.fixture
def world(tmp_path):
    """A repository with (a) published and a device that installed it over HTTP."""
    imgs = images(tmp_path)
    repo, keys = new_repo(tmp_path)
    publish(repo, keys, imgs, "a", "a")
    pb = device(tmp_path, imgs)
    root = (repo / "metadata" / "1.root.json").read_bytes()
    with serve(repo) as srv:
        Agent(pb, srv.url, now=LATER, trusted_root=root).run()
    assert pb.status()["active_release"] == "26.1 (a)"
    return {"repo": repo, "keys": keys, "imgs": imgs, "pb": pb, "tmp": tmp_path}


def _agent(w, url, minutes: float = 30) -> Agent:
    return Agent(w["pb"], url, now=NOW + timedelta(minutes=minutes), timeout=2, retries=1)


def _on(w, tag: str) -> bool:
    for name, p in w["imgs"][tag].items():
        with w["pb"].open_component(name) as f:
            if name == "webkit" and f.read() != p.read_bytes():
                return False
    return True


def _write(repo: Path, md: Metadata, name: str | None = None) -> None:
    TufRepository(repo).write_metadata(md, name)


def _forge_timestamp(repo: Path, root, ts_keys, snapshot_version: int) -> None:
    r = TufRepository(repo)
    old = r.timestamp().signed
    ts = Metadata(Timestamp(version=old.version + 1, expires=NOW + timedelta(days=1),
                            snapshot_meta=MetaFile(version=snapshot_version)))  # fmt: skip
    sign_role(ts, root, "timestamp", ts_keys)
    _write(repo, ts, "timestamp.json")


def _forge_snapshot(repo: Path, root, snap_keys, targets_version: int) -> int:
    r = TufRepository(repo)
    snap = Metadata(Snapshot(version=r.snapshot().signed.version + 1,
                             expires=NOW + timedelta(days=7),
                             meta={"targets.json": MetaFile(version=targets_version)}))  # fmt: skip
    sign_role(snap, root, "snapshot", snap_keys)
    _write(repo, snap)
    return snap.signed.version


def _mirror_after_withdrawal(w) -> Path:
    """The genuine repository after the vendor withdrew (a); returns the pre-withdrawal copy."""
    before = w["tmp"] / "before-withdrawal"
    shutil.copytree(w["repo"], before)
    withdraw(w["repo"], "26.1 (a)", w["keys"], now=NOW + timedelta(minutes=1))
    return before


# --- online keys cannot take a fix away -------------------------------------------------------


def test_compromised_timestamp_key_cannot_roll_back_or_withdraw(world):
    """With the timestamp key the attacker re-signs a timestamp naming an older snapshot."""
    w = world
    repo, keys = w["repo"], w["keys"]
    root = TufRepository(repo).root().signed
    _forge_timestamp(repo, root, keys.get("timestamp"), snapshot_version=1)
    with serve(repo) as srv, pytest.raises(RollbackAttack, match="snapshot version"):
        _agent(w, srv.url).run()
    assert w["pb"].status()["active_release"] == "26.1 (a)" and _on(w, "a")
    last = device_report(w["pb"])["last_check"]
    assert last["ok"] is False and "snapshot" in last["error"]


def test_compromised_snapshot_key_cannot_serve_older_targets(world):
    """With snapshot + timestamp keys the attacker lists the targets from before (a)."""
    w = world
    repo, keys = w["repo"], w["keys"]
    r = TufRepository(repo)
    root = r.root().signed
    snap_v = r.snapshot().signed.version
    snap = Metadata(Snapshot(version=snap_v + 1, expires=NOW + timedelta(days=7),
                             meta={"targets.json": MetaFile(version=1)}))  # fmt: skip
    sign_role(snap, root, "snapshot", keys.get("snapshot"))
    _write(repo, snap)
    _forge_timestamp(repo, root, keys.get("timestamp"), snapshot_version=snap_v + 1)
    with serve(repo) as srv, pytest.raises(RollbackAttack, match="targets"):
        _agent(w, srv.url).run()
    assert w["pb"].status()["active_release"] == "26.1 (a)" and _on(w, "a")


def test_online_keys_cannot_sign_a_withdrawal(world):
    """With every online key the attacker signs targets saying (a) is withdrawn."""
    w = world
    repo, keys = w["repo"], w["keys"]
    online = keys.only(signers.ONLINE_ROLES)
    forged = signers.KeySet({**online.signers, "targets": online.get("snapshot")})
    r = TufRepository(repo)
    root = r.root().signed
    targets = r.targets()
    rel = targets.signed.targets["releases/26.1-a.json"]
    rel.unrecognized_fields["custom"]["bsipatch"]["withdrawn"] = True
    targets.signed.version += 1
    targets.sign(forged.get("targets")[0])  # signed by a key the root does not trust for targets
    _write(repo, targets)
    snap_v = _forge_snapshot(repo, root, online.get("snapshot"), targets.signed.version)
    _forge_timestamp(repo, root, online.get("timestamp"), snapshot_version=snap_v)
    with serve(repo) as srv, pytest.raises(ThresholdError, match="targets"):
        _agent(w, srv.url).run()
    assert w["pb"].status()["active_release"] == "26.1 (a)" and _on(w, "a")


def test_compromised_targets_key_below_threshold_is_refused(tmp_path):
    """Targets threshold 2: one stolen targets key (plus online keys) withdraws nothing."""
    from bsipatch.trust.tufrepo import init_repository

    imgs = images(tmp_path)
    keys = keyset()
    keys.signers["targets"] = [signers.generate(), signers.generate("ecdsa-p256")]
    repo = tmp_path / "repo"
    init_repository(repo, keys, now=NOW, thresholds={"targets": 2})
    publish(repo, keys, imgs, "a", "a")
    pb = device(tmp_path, imgs)
    w = {"pb": pb, "imgs": imgs}
    root = (repo / "metadata" / "1.root.json").read_bytes()
    with serve(repo) as srv:
        Agent(pb, srv.url, now=LATER, trusted_root=root).run()
    stolen = signers.KeySet({**keys.only(signers.ONLINE_ROLES).signers,
                             "targets": keys.get("targets")[:1]})  # fmt: skip
    with pytest.raises(ThresholdError, match="targets"):
        withdraw(repo, "26.1 (a)", stolen, now=NOW)  # the publisher's own check
    # the attacker writes it anyway, signature by signature
    r = TufRepository(repo)
    targets = r.targets()
    targets.signed.targets["releases/26.1-a.json"].unrecognized_fields["custom"]["bsipatch"][
        "withdrawn"
    ] = True
    targets.signed.version += 1
    targets.signatures.clear()
    targets.sign(stolen.get("targets")[0])
    _write(repo, targets)
    rootmd = r.root().signed
    snap_v = _forge_snapshot(repo, rootmd, stolen.get("snapshot"), targets.signed.version)
    _forge_timestamp(repo, rootmd, stolen.get("timestamp"), snapshot_version=snap_v)
    with serve(repo) as srv, pytest.raises(ThresholdError, match="targets"):
        _agent(w, srv.url).run()
    assert pb.status()["active_release"] == "26.1 (a)" and _on(w, "a")


def test_genuine_withdrawal_by_targets_role_steps_back_below_the_floor(world):
    w = world
    _mirror_after_withdrawal(w)
    with serve(w["repo"]) as srv:
        report = _agent(w, srv.url, minutes=40).run()
    assert report["step_back"]["how"] == "uninstall" and _on(w, "base")
    state = Agent(w["pb"], None).store.state()
    assert state.sequence == 0 and state.overrides[-1]["kind"] == "withdrawal"


def test_replaying_the_pre_withdrawal_metadata_is_a_rollback(world):
    w = world
    before = _mirror_after_withdrawal(w)
    with serve(w["repo"]) as srv:
        _agent(w, srv.url, minutes=40).check()
    with serve(before) as srv, pytest.raises(RollbackAttack):
        _agent(w, srv.url, minutes=41).run()


# --- freeze -----------------------------------------------------------------------------------


def test_indefinite_freeze_is_noticed_and_online_refresh_ends_it(world):
    """A mirror replaying genuine metadata past its timestamp's expiry is refused; the vendor
    keeps devices fresh with `repo refresh` (online keys only) without shipping anything."""
    w = world
    with serve(w["repo"]) as srv:
        with pytest.raises(ExpiredMetadata, match="timestamp"):
            _agent(w, srv.url, minutes=2 * 24 * 60).check()
        refresh(w["repo"], w["keys"].only(signers.ONLINE_ROLES), now=NOW + timedelta(days=2))
        decisions = _agent(w, srv.url, minutes=2 * 24 * 60 + 1).check()
    assert [d.code for d in decisions] == ["active"]
    # six weeks of refreshes with online keys only: the device keeps checking fine
    with serve(w["repo"]) as srv:
        for day in range(3, 45, 6):
            refresh(w["repo"], w["keys"].only(signers.ONLINE_ROLES), now=NOW + timedelta(days=day))
            assert _agent(w, srv.url, minutes=day * 24 * 60 + 1).check()


# --- publisher omitting a component -----------------------------------------------------------


def test_publisher_omitting_a_component_is_refused_and_devices_keep_the_fix(world):
    w = world
    before = {p.name for p in (w["repo"] / "metadata").iterdir()}
    with pytest.raises(WrongTarget, match="leaves out libsys"):
        publish(w["repo"], w["keys"], w["imgs"], "b", "b", names=("webkit",),
                carry_forward=False, minutes=2)  # fmt: skip
    assert {p.name for p in (w["repo"] / "metadata").iterdir()} == before
    publish(w["repo"], w["keys"], w["imgs"], "b", "b", names=("webkit",), minutes=2)
    with serve(w["repo"]) as srv:
        report = _agent(w, srv.url, minutes=40).run()
    assert report["installed"]["release"] == "26.1 (b)"
    assert report["installed"]["changed"] == ["libsys", "webkit"]  # libsys carried forward


# --- manual install and the device floor -------------------------------------------------------


def test_manual_install_refuses_older_without_flag_and_records_it(world, capsys):
    from bsipatch.cli.main import main as cli_main

    w = world
    publish(w["repo"], w["keys"], w["imgs"], "b", "b", names=("webkit",), minutes=2)
    pre = ["--preboot", str(w["pb"].path)]
    with serve(w["repo"]) as srv:
        assert cli_main(["install", *pre, "--repo", srv.url, "26.1 (b)", "-q"]) == 0
        assert cli_main(["uninstall", *pre, "-q"]) == 0
        capsys.readouterr()
        rc = cli_main(["install", *pre, "--repo", srv.url, "26.1 (a)", "-q"])
        assert rc == RollbackAttack.exit_code
        assert "older than the device's floor 2" in capsys.readouterr().err
        assert w["pb"].status()["active_release"] is None
        # the release kept for rollback can be installed again at once (same as the floor)
        assert cli_main(["install", *pre, "--repo", srv.url, "26.1 (b)", "-q"]) == 0
        assert cli_main(["uninstall", *pre, "-q"]) == 0
        argv = ["install", *pre, "--repo", srv.url, "26.1 (a)", "--allow-older", "-q"]
        assert cli_main(argv) == 0
    state = Agent(w["pb"], None).store.state()
    assert w["pb"].status()["active_release"] == "26.1 (a)"
    assert state.sequence == 1 and state.overrides[-1]["kind"] == "forced_older"
    assert state.overrides[-1]["floor_was"] == 2
