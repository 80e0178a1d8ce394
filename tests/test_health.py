"""Tentative activation: boot counting, launch reports, confirmation, automatic fallback.

Uses the crash tests' small world (tests/crashhelper.py): release 26.1 (a) changes
webkit (relaunch) and libsys (reboot); 26.1 (b) changes webkit, libsys and safari.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import crashhelper as ch

from bsipatch.cli.main import main as cli_main
from bsipatch.device import health
from bsipatch.device import install as inst
from bsipatch.device.fscheck import check_filesystem, mount_type
from bsipatch.device.preboot import Preboot
from bsipatch.errors import SealMismatch, UnsupportedFilesystem


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return ch.make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def pb(world: dict[str, Any], tmp_path: Path) -> Preboot:
    return ch.create_preboot(world, tmp_path / "pb")


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = cli_main(list(argv))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
            out.write(str(exc.code))
    return rc, out.getvalue()


def images(world: dict[str, Any], pb: Preboot) -> str | None:
    """Which release's images (or "base") every component opens now, each verified."""
    got = {}
    for name in pb.components():
        with pb.open_component(name) as r:
            import hashlib

            got[name] = hashlib.sha256(r.read()).hexdigest()
    for rid, table in world["sha256"].items():
        if table == got:
            return str(rid)
    return None


def test_install_is_tentative_and_boots_are_counted(world: dict[str, Any], pb: Preboot) -> None:
    r = ch.install(world, pb, "26.1 (a)")
    assert r["tentative"] is True
    t = pb.status()["health"]["tentative"]
    assert t["release"] == "26.1 (a)" and t["counts_boots"] is True
    assert (t["boots"], t["max_boots"], t["max_failures"]) == (0, 3, 3)
    for n in (1, 2, 3):
        b = inst.boot(pb)
        assert b["fallback"] is None
        assert b["tentative"] == {"release": "26.1 (a)", "boots": n, "max_boots": 3}
        assert pb.status()["health"]["tentative"]["boots"] == n
        assert images(world, pb) == "26.1 (a)"


def test_unconfirmed_release_falls_back_at_the_boot_after_the_limit(
    world: dict[str, Any], pb: Preboot
) -> None:
    ch.install(world, pb, "26.1 (a)")
    inst.boot(pb)
    assert health.confirm(pb)["confirmed"] == "26.1 (a)"
    ch.install(world, pb, "26.1 (b)")
    for _ in range(3):
        assert inst.boot(pb)["fallback"] is None
        assert images(world, pb) == "26.1 (b)"
    b = inst.boot(pb)  # the 4th boot: three boots went unconfirmed
    assert b["fallback"]["from"] == "26.1 (b)" and b["fallback"]["to"] == "26.1 (a)"
    assert "booted 3 times without a health confirmation" in b["fallback"]["reason"]
    assert b["release"] == "26.1 (a)" and b["tentative"] is None
    assert images(world, pb) == "26.1 (a)"  # reboot components too: boot re-activated them
    st = pb.status()
    assert st["active_release"] == "26.1 (a)" and st["health"]["tentative"] is None
    [fb] = st["health"]["fallen_back"]
    assert (fb["release"], fb["to"]) == ("26.1 (b)", "26.1 (a)") and fb["time"]
    assert st["history"][-2]["op"] == "fallback"
    assert not (pb.releases_dir / "26.1-b").exists()  # collected: nothing refers to it


def test_confirmed_release_stays_however_often_it_boots(world: dict[str, Any], pb: Preboot) -> None:
    ch.install(world, pb, "26.1 (a)")
    inst.boot(pb)
    rc, out = cli("health", "confirm", "--preboot", str(pb.path))
    assert rc == 0 and "confirmed 26.1 (a)" in out
    for _ in range(6):
        assert inst.boot(pb)["fallback"] is None
    assert pb.status()["health"] == {"tentative": None, "fallen_back": []}
    assert [h["op"] for h in pb.status()["history"]].count("confirm") == 1
    assert cli("health", "confirm", "--preboot", str(pb.path))[1].strip() == "nothing to confirm"


def test_failed_launches_fall_back_and_successes_reset_the_count(
    world: dict[str, Any], pb: Preboot
) -> None:
    ch.install(world, pb, "26.1 (a)")
    p = str(pb.path)
    assert cli("health", "report", "--preboot", p, "--component", "webkit", "--failed")[0] == 0
    assert cli("health", "report", "--preboot", p, "--component", "webkit", "--failed")[0] == 0
    assert pb.status()["health"]["tentative"]["failures"] == {"webkit": 2}
    rc, out = cli("health", "report", "--preboot", p, "--component", "webkit", "--ok")
    assert rc == 0 and "0 consecutive" in out
    assert pb.status()["health"]["tentative"]["failures"] == {"webkit": 0}
    # safari is not changed by 26.1 (a): its failures are not the release's
    for _ in range(4):
        assert health.report(pb, "safari", ok=False)["failures"] == 0
    for n in (1, 2):
        assert health.report(pb, "webkit", ok=False)["failures"] == n
    rc, out = cli("health", "report", "--preboot", p, "--component", "webkit", "--failed", "--json")
    r = json.loads(out)
    assert rc == 0 and r["fallback"]["from"] == "26.1 (a)" and r["fallback"]["to"] is None
    assert "webkit failed to launch 3 times in a row" in r["fallback"]["reason"]
    st = pb.status()
    assert st["active_release"] is None and st["health"]["fallen_back"][0]["release"] == "26.1 (a)"
    inst.boot(pb)
    assert images(world, pb) == "base"
    rc, out = cli("status", "--preboot", p)
    assert "fell back: from 26.1 (a) to the base images" in out
    assert cli("health", "report", "--preboot", p, "--component", "nope", "--ok")[0] != 0


def test_explicit_install_after_a_fallback_is_allowed(world: dict[str, Any], pb: Preboot) -> None:
    ch.install(world, pb, "26.1 (a)")
    for _ in range(3):
        health.report(pb, "libsys", ok=False)
    assert pb.status()["health"]["fallen_back"][0]["release"] == "26.1 (a)"
    ch.install(world, pb, "26.1 (a)")
    st = pb.status()
    assert st["active_release"] == "26.1 (a)" and st["health"]["fallen_back"] == []
    assert st["health"]["tentative"]["release"] == "26.1 (a)"


def test_rollback_and_uninstall_end_the_trial(world: dict[str, Any], pb: Preboot) -> None:
    ch.install(world, pb, "26.1 (a)")
    inst.rollback(pb)
    assert pb.status()["health"]["tentative"] is None
    for _ in range(5):
        assert inst.boot(pb)["fallback"] is None
    assert images(world, pb) == "base"


def test_first_open_of_a_new_image_reads_it_back_from_disk(
    world: dict[str, Any], pb: Preboot
) -> None:
    ch.install(world, pb, "26.1 (a)")
    marker = pb.path / "health" / "26.1-a.webkit.read-back"
    assert not marker.exists()
    with pb.open_component("webkit") as r:
        r.read(10)
    assert marker.exists()  # read back once; later opens only check what they read
    # bytes changed on disk behind the install (what a lost write would do): the next
    # first open sees it before returning a reader
    marker.unlink()
    image = pb.releases_dir / "26.1-a" / "webkit.img"
    os.chmod(image, 0o644)
    with open(image, "r+b") as f:
        f.seek(150 * 1024)
        f.write(b"\xff" * 16)
    with pytest.raises(SealMismatch):
        pb.open_component("webkit")
    # confirm reads every new image back and falls back instead of confirming
    r = health.confirm(pb)
    assert r["confirmed"] is None and r["fallback"]["to"] is None
    assert "webkit" in r["fallback"]["reason"]
    assert images(world, pb) in ("base", None) and pb.status()["active_release"] is None


def test_confirmed_release_opens_without_read_back(world: dict[str, Any], pb: Preboot) -> None:
    ch.install(world, pb, "26.1 (a)")
    health.confirm(pb)
    with pb.open_component("webkit") as r:
        r.read(10)
    assert not (pb.path / "health" / "26.1-a.webkit.read-back").exists()


def test_limits_are_recorded_and_checked(world: dict[str, Any], pb: Preboot) -> None:
    manifest = ch.load_manifest(world["releases"]["26.1 (a)"])
    inst.install_release(pb, manifest, inst.open_patch_in(world["dir"]), max_boots=1)
    assert inst.boot(pb)["fallback"] is None
    assert inst.boot(pb)["fallback"]["from"] == "26.1 (a)"
    with pytest.raises(ValueError):
        health.tentative_record(pb, "x", {"webkit": "relaunch"}, max_boots=0)


# --- file-system requirements ---------------------------------------------------------------


def test_supported_file_systems_pass_the_probe(tmp_path: Path) -> None:
    for d in (tmp_path, Path("/dev/shm")):
        if not os.access(d, os.W_OK):
            continue
        real = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", "--target", str(d)],
            capture_output=True,
            text=True,
        ).stdout.split()[-1]  # stacked mounts: the last one is the one in use
        assert check_filesystem(d) == real == mount_type(d)
        assert [p for p in d.iterdir() if p.name.startswith(".bsipatch-fscheck-")] == []


VFAT_MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "98 22 8:17 / /media/usb rw,nosuid,nodev,relatime shared:52 - vfat /dev/sdb1 "
    "rw,fmask=0022,dmask=0022,codepage=437,iocharset=ascii,shortname=mixed,errors=remount-ro\n"
    "99 22 0:52 / /srv/nfs rw,relatime shared:53 - nfs4 host:/export rw,vers=4.2\n"
)


def test_vfat_and_nfs_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(VFAT_MOUNTINFO)
    assert mount_type("/media/usb/preboot", mountinfo=info) == "vfat"
    assert mount_type("/srv/nfs", mountinfo=info) == "nfs4"
    assert mount_type("/home/x", mountinfo=info) == "ext4"
    with pytest.raises(UnsupportedFilesystem, match=r"on vfat: no hard links.*needs atomic"):
        check_filesystem("/media/usb/preboot", mountinfo=info)
    with pytest.raises(UnsupportedFilesystem, match="on nfs4"):
        check_filesystem("/srv/nfs/x", mountinfo=info)
