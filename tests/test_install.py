"""Install, activation, rollback, uninstall, boot, gc, os-update, bad input, and the CLI."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import crashhelper as ch

from bsipatch.cli.main import main as cli_main
from bsipatch.device import install as inst
from bsipatch.device.preboot import Preboot
from bsipatch.errors import (
    DiskFullError,
    LockedError,
    PatchError,
    PatchTooLarge,
    ReadOnlyError,
    RollbackFailed,
    SealMismatch,
    StateError,
    TargetMismatch,
    WrongBaseImage,
    WrongTarget,
)

A, B, C = "26.1 (a)", "26.1 (b)", "26.1 (c)"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return ch.make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def pb(world: dict, tmp_path: Path) -> Preboot:
    return ch.create_preboot(world, tmp_path / "preboot")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expect(world: dict, relaunch_from: str, reboot_from: str) -> dict[str, str]:
    """What a new open of each component should get."""
    out = {}
    for name, (act, _size) in ch.COMPONENTS.items():
        out[name] = world["sha256"][reboot_from if act == "reboot" else relaunch_from][name]
    return out


def manifest(world: dict, rid: str, **changes: object) -> object:
    return ch.load_manifest(world["releases"][rid] | changes)


def tree_listing(path: Path) -> dict[str, str]:
    """Every file below ``path`` with its digest (to show nothing changed)."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name not in ("journal", "lock"):
            out[str(p.relative_to(path))] = sha(p.read_bytes())
    return out


# --- activation -----------------------------------------------------------------------


def test_install_activates_relaunch_now_and_reboot_at_boot(pb: Preboot, world: dict) -> None:
    result = ch.install(world, pb, A)
    assert result["activated"] == ["webkit"] and result["pending"] == ["libsys"]
    assert ch.images_now(pb) == expect(world, A, "base")
    st = pb.status()
    assert st["active_release"] == A
    assert st["components"]["webkit"]["release"] == A
    assert st["components"]["libsys"]["pending"] is True
    assert st["pending"] == [{"component": "libsys", "release": A, "activation": "reboot"}]
    booted = inst.boot(pb)
    assert booted["activated"] == ["libsys"]
    assert ch.images_now(pb) == expect(world, A, A)
    assert pb.status()["pending"] == []
    assert [h["op"] for h in pb.status()["history"]] == ["create", "install", "boot"]


def test_patch_against_the_active_release_image(pb: Preboot, world: dict, tmp_path: Path) -> None:
    """A release whose patch was made against the active release's image (not the base)."""
    from bsipatch.delta.diff import diff

    ch.install(world, pb, A)
    a_img = Path(world["dir"]) / "releases" / "26.1-a" / "webkit.new.img"
    new = bytearray(a_img.read_bytes())
    new[5000:5100] = bytes(100)
    new_img = tmp_path / "webkit.d.img"
    new_img.write_bytes(new)
    patch = tmp_path / "webkit.bsipatch"
    diff(str(a_img), str(new_img), str(patch))
    d = json.loads(json.dumps(world["releases"][A]))
    d.update(release_id="26.1 (d)", sequence=4)
    d["components"] = [
        dict(
            d["components"][0],
            base=ch.seal_ref(a_img),
            target=ch.seal_ref(new_img),
            patch={
                "path": "webkit.bsipatch",
                "sha256": sha(patch.read_bytes()),
                "size": patch.stat().st_size,
            },
        )
    ]
    inst.install_release(pb, ch.load_manifest(d), inst.open_patch_in(tmp_path))
    assert sha(pb.component_path("webkit").read_bytes()) == sha(bytes(new))
    assert pb.status()["active_release"] == "26.1 (d)"
    assert inst.rollback(pb)["to"] == A


def test_unchanged_components_are_hard_linked(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    base = pb.path / "base" / "26.1-23B85"
    rel = pb.releases_dir / "26.1-a"
    assert (rel / "safari.img").stat().st_ino == (base / "safari.img").stat().st_ino
    assert (rel / "webkit.img").stat().st_ino != (base / "webkit.img").stat().st_ino
    assert (rel / "webkit.img").stat().st_mode & 0o222 == 0  # read-only


def test_open_reader_keeps_old_image_across_install_gc_and_uninstall(
    pb: Preboot, world: dict
) -> None:
    old = pb.open_component("webkit")
    first = old.read(4096)
    ch.install(world, pb, A)
    ch.install(world, pb, B)
    ch.install(world, pb, C)  # gc drops (a)
    inst.uninstall(pb)  # and removes every release
    with pb.open_component("webkit") as new:
        assert sha(new.read()) == world["sha256"]["base"]["webkit"]
    old.seek(0)
    assert old.read(4096) == first
    old.seek(0)
    assert sha(old.read()) == world["sha256"]["base"]["webkit"]
    old.close()


def test_reader_opened_on_a_release_survives_its_removal(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    reader = pb.open_component("webkit")
    inst.uninstall(pb)
    assert not (pb.releases_dir / "26.1-a").exists()
    assert sha(reader.read()) == world["sha256"][A]["webkit"]
    reader.close()
    assert sha(pb.component_path("webkit").read_bytes()) == world["sha256"]["base"]["webkit"]


def test_readers_during_changes_always_get_a_whole_sealed_image(pb: Preboot, world: dict) -> None:
    """Readers run while installs, rollbacks, uninstalls and gc change the directory."""
    import threading

    valid = {world["sha256"][r]["webkit"] for r in ("base", A, B, C)}
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                with pb.open_component("webkit") as f:  # checked against its seal
                    digest = sha(f.read())
                assert digest in valid
                seen.add(digest)
                assert pb.status()["os_version"] == "26.1"
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            ch.install(world, pb, A)
            ch.install(world, pb, B)
            ch.install(world, pb, C)
            inst.rollback(pb)
            inst.uninstall(pb)
            inst.boot(pb)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert len(seen) >= 2


# --- rollback, uninstall, gc ----------------------------------------------------------------


def test_rollback_goes_to_previous_then_base(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    inst.boot(pb)
    ch.install(world, pb, B)
    assert ch.images_now(pb) == expect(world, B, A)
    assert inst.rollback(pb) == {"from": B, "to": A}
    assert ch.images_now(pb) == expect(world, A, A)
    assert inst.rollback(pb) == {"from": A, "to": None}
    assert pb.status()["pending"] == [
        {"component": "libsys", "release": None, "activation": "reboot"}
    ]
    inst.boot(pb)
    assert ch.images_now(pb) == world["sha256"]["base"]
    with pytest.raises(StateError, match="nothing to roll back"):
        inst.rollback(pb)
    assert [p.name for p in pb.releases_dir.iterdir()] == []


def test_rollback_refuses_when_previous_images_are_damaged(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    ch.install(world, pb, B)
    img = pb.releases_dir / "26.1-a" / "webkit.img"
    img.chmod(0o644)
    data = bytearray(img.read_bytes())
    data[100] ^= 1
    img.write_bytes(data)
    before = ch.images_now(pb)
    with pytest.raises(RollbackFailed, match=r"staying on 26\.1 \(b\)"):
        inst.rollback(pb)
    assert ch.images_now(pb) == before and pb.status()["active_release"] == B


def test_uninstall_returns_exactly_to_base_images(pb: Preboot, world: dict) -> None:
    listing = tree_listing(pb.path / "base")
    ch.install(world, pb, A)
    inst.boot(pb)
    ch.install(world, pb, B)
    result = inst.uninstall(pb)
    assert result["removed"] == [A, B]
    inst.boot(pb)
    assert ch.images_now(pb) == world["sha256"]["base"]
    assert list(pb.releases_dir.iterdir()) == []
    assert tree_listing(pb.path / "base") == listing  # byte-identical, never modified
    st = pb.status()
    assert st["active_release"] is None and st["pending"] == []
    assert [h["op"] for h in st["history"]][-2:] == ["uninstall", "boot"]


def test_uninstall_refuses_when_base_is_damaged(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    img = pb.path / "base" / "26.1-23B85" / "safari.img"
    img.chmod(0o644)
    with open(img, "r+b") as f:
        f.write(b"\0")
    with pytest.raises(RollbackFailed):
        inst.uninstall(pb)
    assert pb.status()["active_release"] == A


def test_gc_keeps_base_active_and_previous(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    inst.boot(pb)
    ch.install(world, pb, B)
    inst.boot(pb)
    ch.install(world, pb, C)  # install runs gc: (a) is neither active nor previous
    assert sorted(p.name for p in pb.releases_dir.iterdir()) == ["26.1-b", "26.1-c"]
    st = pb.status()
    assert st["active_release"] == C and st["previous_release"] == B
    assert (pb.path / "base" / "26.1-23B85").is_dir()
    assert inst.gc(pb) == {"removed": []}
    # rollback still possible to the previous release, then to the base images
    assert inst.rollback(pb)["to"] == B
    assert inst.rollback(pb)["to"] is None


def test_gc_keeps_booted_release_until_next_boot(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    inst.boot(pb)  # libsys now runs from (a)
    inst.uninstall(pb)
    assert [p.name for p in pb.releases_dir.iterdir()] == ["26.1-a"]
    assert sha(pb.component_path("libsys").read_bytes()) == world["sha256"][A]["libsys"]
    inst.boot(pb)
    assert list(pb.releases_dir.iterdir()) == []


def test_os_update_retires_releases(pb: Preboot, world: dict, tmp_path: Path) -> None:
    ch.install(world, pb, A)
    inst.boot(pb)
    new_images = {}
    for name, src in world["images"].items():
        p = tmp_path / f"new-{name}.img"
        p.write_bytes(Path(src).read_bytes()[::-1])
        new_images[name] = str(p)
    result = inst.os_update(
        pb, os_version="26.2", build="23C10", images=new_images, activation=world["activation"]
    )
    assert result["retired"] == [A]
    st = pb.status()
    assert st["os_version"] == "26.2" and st["active_release"] is None
    assert sha(pb.component_path("webkit").read_bytes()) == sha(
        Path(new_images["webkit"]).read_bytes()
    )
    assert st["components"]["libsys"]["pending"] is True
    inst.boot(pb)
    assert [p.name for p in (pb.path / "base").iterdir()] == ["26.2-23C10"]
    assert list(pb.releases_dir.iterdir()) == []
    with pytest.raises(WrongTarget):  # releases for 26.1 no longer apply
        ch.install(world, pb, A)


# --- bad input: each leaves the active release untouched -------------------------------


@contextlib.contextmanager
def untouched(pb: Preboot) -> Iterator[None]:
    state = pb.state_path.read_bytes()
    images = ch.images_now(pb)
    releases = sorted(p.name for p in pb.releases_dir.iterdir())
    yield
    assert pb.state_path.read_bytes() == state
    assert ch.images_now(pb) == images
    assert sorted(p.name for p in pb.releases_dir.iterdir()) == releases
    assert list(pb.staging_dir.iterdir()) == []
    assert pb.journal.pending() == []


def test_staged_image_failing_its_seal_is_refused(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    rel = json.loads(json.dumps(world["releases"][B]))
    target = rel["components"][1]["target"]
    target["root_hash"] = "00" * 32
    with untouched(pb), pytest.raises(SealMismatch):
        inst.install_release(pb, ch.load_manifest(rel), inst.open_patch_in(world["dir"]))


def test_patch_differing_from_manifest_digest_is_refused(pb: Preboot, world: dict) -> None:
    rel = json.loads(json.dumps(world["releases"][A]))
    rel["components"][0]["patch"]["sha256"] = "11" * 32
    with untouched(pb), pytest.raises(TargetMismatch):
        inst.install_release(pb, ch.load_manifest(rel), inst.open_patch_in(world["dir"]))


def test_endless_patch_stream_is_cut_off(pb: Preboot, world: dict) -> None:
    patches = inst.open_patch_in(world["dir"])

    def endless(comp: object) -> io.BufferedReader:
        data = patches(comp).read()
        return io.BufferedReader(io.BytesIO(data + b"\0" * (1 << 20)))  # type: ignore[arg-type]

    with untouched(pb), pytest.raises(PatchError) as info:
        inst.install_release(pb, manifest(world, A), endless)
    assert isinstance(info.value, (PatchTooLarge, TargetMismatch)) or "long" in str(info.value)


def test_patch_for_another_base_is_refused(pb: Preboot, world: dict, tmp_path: Path) -> None:
    # a different device whose webkit differs: the release's patches do not fit it
    images = dict(world["images"])
    other = tmp_path / "other-webkit.img"
    other.write_bytes(Path(images["webkit"]).read_bytes()[::-1])
    images["webkit"] = str(other)
    dev = Preboot.create(
        tmp_path / "other",
        os_version="26.1",
        build="23B85",
        images=images,
        activation=world["activation"],
    )
    with untouched(dev), pytest.raises(WrongBaseImage, match="another base"):
        ch.install(world, dev, A)


def test_release_for_another_build_is_refused(pb: Preboot, world: dict) -> None:
    with untouched(pb), pytest.raises(WrongTarget, match="23B85"):
        inst.install_release(
            pb, manifest(world, A, builds=["22A1"]), inst.open_patch_in(world["dir"])
        )


def test_installing_twice_is_a_state_error(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    with untouched(pb), pytest.raises(StateError, match="already installed"):
        ch.install(world, pb, A)


def test_second_concurrent_installer_gets_locked_error(pb: Preboot, world: dict) -> None:
    code = (
        "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR);"
        "fcntl.flock(fd,fcntl.LOCK_EX);print('locked',flush=True);time.sleep(30)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(pb.path / "lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with untouched(pb):
            for op in (
                lambda: ch.install(world, pb, A),
                lambda: inst.rollback(pb),
                lambda: inst.uninstall(pb),
                lambda: inst.boot(pb),
            ):
                with pytest.raises(LockedError):
                    op()
    finally:
        holder.kill()
        holder.wait()
    ch.install(world, pb, A)


def test_concurrent_installers_in_two_processes(pb: Preboot, world: dict) -> None:
    """Two real installer processes at once: one wins, the other exits with LockedError."""
    world_json = str(Path(world["dir"]) / "world.json")
    helper = str(Path(__file__).parent / "crashhelper.py")
    procs = [
        subprocess.Popen(
            [sys.executable, helper, "install", str(pb.path), world_json, A],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] != 0
    err = next(e for rc, e in results if rc != 0)
    assert "LockedError" in err or "already installed" in err
    assert ch.images_now(pb) == expect(world, A, "base")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` at ``path``; yields False when mounting is impossible."""
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if r.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_is_a_typed_error_and_leaves_state(world: dict, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with small_tmpfs(mnt, "560k") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here; see the injected-ENOSPC test")
        pb = ch.create_preboot(world, mnt / "preboot")  # ~330 KiB of base images
        with untouched(pb), pytest.raises(DiskFullError, match="no space"):
            ch.install(world, pb, B)  # needs another ~330 KiB
        assert pb.status()["active_release"] is None


def test_disk_filling_up_during_install_is_a_typed_error(world: dict, tmp_path: Path) -> None:
    """Space passes the up-front check, then something else fills the disk mid-apply."""
    mnt = tmp_path / "mnt"
    with small_tmpfs(mnt, "1m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here")
        pb = ch.create_preboot(world, mnt / "preboot")
        patches = inst.open_patch_in(world["dir"])

        def fill_then_open(comp: object) -> object:
            free = shutil.disk_usage(mnt).free
            with open(mnt / "filler", "ab") as f:
                f.write(b"\xff" * max(0, free - 40 * 1024))
            return patches(comp)

        with untouched(pb), pytest.raises((DiskFullError, PatchError)) as info:
            inst.install_release(pb, manifest(world, A), fill_then_open)
        # a short write must never pass as success; DiskFullError is the precise answer
        # (bsipatch.delta.apply currently reports a short pwrite as OutputMismatch)
        assert isinstance(info.value, (DiskFullError, PatchError))
        (mnt / "filler").unlink()
        ch.install(world, pb, A)  # and it works once there is room again


def test_injected_enospc_is_a_typed_error(
    pb: Preboot, world: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bsipatch.device.install as install_mod

    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(install_mod, "write_durable", full)
    with untouched(pb), pytest.raises(DiskFullError):
        ch.install(world, pb, A)


def test_read_only_preboot_is_a_typed_error(world: dict, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    with small_tmpfs(mnt, "4m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here")
        pb = ch.create_preboot(world, mnt / "preboot")
        ch.install(world, pb, A)
        before = ch.images_now(pb)
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot remount read-only here")
        try:
            for op in (
                lambda: ch.install(world, pb, B),
                lambda: inst.rollback(pb),
                lambda: inst.uninstall(pb),
            ):
                with pytest.raises(ReadOnlyError):
                    op()
            assert ch.images_now(pb) == before  # readers still work
            assert pb.status()["active_release"] == A
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=False)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_init_install_status_boot_rollback_uninstall(
    world: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pre = str(tmp_path / "pb")
    images = [f"--image={n}={p}:{world['activation'][n]}" for n, p in world["images"].items()]
    assert (
        cli_main(["preboot", "init", pre, "--os-version", "26.1", "--build", "23B85", *images]) == 0
    )
    mfile = tmp_path / "manifest.json"
    mfile.write_text(json.dumps({"signed": world["releases"][A], "signatures": []}))
    capsys.readouterr()
    install = ["install", "--preboot", pre, str(mfile), "--patches", world["dir"], "--json"]
    assert cli_main(install) == StateError.exit_code  # no --repo, no --unverified
    assert "--repo" in capsys.readouterr().err
    assert cli_main([*install, "--unverified"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["release"] == A and out["pending"] == ["libsys"]
    assert cli_main(["status", "--preboot", pre]) == 0
    text = capsys.readouterr().out
    assert "26.1 (a)" in text and "at next boot" in text
    assert cli_main(["boot", "--preboot", pre, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["activated"] == ["libsys"]
    assert cli_main(["status", "--preboot", pre, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["pending"] == [] and st["active_release"] == A
    assert cli_main(["rollback", "--preboot", pre]) == 0
    assert cli_main(["rollback", "--preboot", pre]) == StateError.exit_code
    assert "nothing to roll back" in capsys.readouterr().err
    assert cli_main(["uninstall", "--preboot", pre]) == 0
    assert cli_main(["gc", "--preboot", pre]) == 0
    assert cli_main(["recover", "--preboot", pre]) == 0


def test_cli_os_update_and_preboot_env(
    world: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pb = ch.create_preboot(world, tmp_path / "pb")
    ch.install(world, pb, A)
    monkeypatch.setenv("BSIPATCH_PREBOOT", str(pb.path))
    images = [f"--image={n}={p}:{world['activation'][n]}" for n, p in world["images"].items()]
    args = ["os-update", "--os-version", "26.2", "--build", "23C10", *images]
    # the env default is read when the parser is built
    assert cli_main([*args, "--preboot", str(pb.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["retired"] == [A] and out["os_version"] == "26.2"
    assert cli_main(["status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["os_version"] == "26.2" and st["active_release"] is None
    assert cli_main(
        ["preboot", "init", str(pb.path), "--os-version", "1", "--build", "B", *images]
    ) == (StateError.exit_code)
    assert "not empty" in capsys.readouterr().err


def test_cli_locked_preboot_exit_code(
    world: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pb = ch.create_preboot(world, tmp_path / "pb")
    mfile = tmp_path / "m.json"
    mfile.write_text(json.dumps(world["releases"][A]))
    with Preboot(pb.path).lock():
        argv = ["install", "--preboot", str(pb.path), str(mfile), "--patches", world["dir"]]
        rc = cli_main([*argv, "--unverified"])
    assert rc == LockedError.exit_code
    assert "locked" in capsys.readouterr().err


def test_load_manifest_accepts_envelope_and_bare(world: dict) -> None:
    bare = world["releases"][A]
    m1 = inst.load_manifest(json.dumps(bare).encode())
    m2 = inst.load_manifest({"signed": bare, "signatures": []})
    assert m1.release_id == m2.release_id == A
    assert [c.name for c in m1.components] == ["webkit", "libsys"]
    assert dataclasses.is_dataclass(m1)


def test_preboot_copy_tool_keeps_hard_links(pb: Preboot, world: dict, tmp_path: Path) -> None:
    """Sanity check of the crash tests' assumption that ``cp -a`` keeps the layout."""
    ch.install(world, pb, A)
    dst = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(pb.path), str(dst)], check=True)
    rel = dst / "releases" / "26.1-a"
    assert (rel / "safari.img").stat().st_ino == (
        dst / "base" / "26.1-23B85" / "safari.img"
    ).stat().st_ino
    shutil.rmtree(dst)


# --- lineage salt: base leaves cached, tampering caught ------------------------------------


@pytest.fixture
def base_hashing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the images install hashes in full to verify them (and learn their leaves)."""
    import bsipatch.seal.tree as seal_mod

    calls: list[str] = []
    real = seal_mod.verified_leaves

    def counting(image: object, seal: object, **kw: object) -> object:
        calls.append(Path(str(image)).name)
        return real(image, seal, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(seal_mod, "verified_leaves", counting)
    return calls


def _cache_entries(pb: Preboot) -> list[Path]:
    d = pb.path / "cache" / "leaves"
    return sorted(d.glob("*.leaves")) if d.is_dir() else []


def _tamper(path: Path, offset: int, keep_mtime: bool = True) -> None:
    """Change one byte of an installed image as an attacker would: mtime put back."""
    import os

    st = path.stat()
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))
    path.chmod(0o444)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_later_installs_take_base_leaves_from_the_cache(
    pb: Preboot, world: dict, base_hashing: list[str]
) -> None:
    ch.install(world, pb, A)
    assert sorted(base_hashing) == ["libsys.img", "webkit.img"]  # verified once, leaves kept
    assert len(_cache_entries(pb)) == 2
    inst.uninstall(pb)
    base_hashing.clear()
    ch.install(world, pb, A)
    assert base_hashing == []  # both bases came from the cache
    assert ch.images_now(pb) == expect(world, A, "base")
    inst.boot(pb)
    ch.install(world, pb, B)  # safari is new: hashed once; webkit from the cache
    assert base_hashing == ["safari.img"]
    assert ch.images_now(pb) == expect(world, B, A)


@pytest.mark.parametrize("keep_mtime", [True, False])
def test_tampered_base_is_refused_although_its_leaves_are_cached(
    pb: Preboot, world: dict, keep_mtime: bool
) -> None:
    ch.install(world, pb, A)
    inst.boot(pb)
    assert len(_cache_entries(pb)) == 2
    _tamper(pb.path / "base" / "26.1-23B85" / "webkit.img", 5000, keep_mtime)
    with untouched(pb), pytest.raises(WrongBaseImage):
        ch.install(world, pb, B)  # webkit's patch is against the (now changed) base
    assert pb.status()["active_release"] == A


def test_damaged_leaf_cache_is_not_trusted(
    pb: Preboot, world: dict, base_hashing: list[str]
) -> None:
    ch.install(world, pb, A)
    inst.uninstall(pb)
    for entry in _cache_entries(pb):  # one leaf changed: the tree no longer gives the root
        data = bytearray(entry.read_bytes())
        data[-1] ^= 1
        entry.write_bytes(bytes(data))
    base_hashing.clear()
    ch.install(world, pb, A)
    assert sorted(base_hashing) == ["libsys.img", "webkit.img"]  # rehashed, not trusted
    assert ch.images_now(pb) == expect(world, A, "base")


def test_tampered_base_with_a_matching_forged_leaf_cache_is_refused(
    pb: Preboot, world: dict
) -> None:
    """The attacker changes the base AND rewrites the cache entry to fit it (leaves of the
    changed image, its new identity): the leaves no longer build the signed base root."""
    from bsipatch.seal import leafcache
    from bsipatch.seal.tree import image_leaves

    ch.install(world, pb, A)
    inst.boot(pb)
    img = pb.path / "base" / "26.1-23B85" / "webkit.img"
    _tamper(img, 9000)
    comp = manifest(world, B).component("webkit")  # type: ignore[attr-defined]
    seal = comp.base.to_seal()
    forged = image_leaves(img, seal.salt)
    entry = leafcache._entry(pb.path, str(img.relative_to(pb.path)), seal)
    head = {
        "format": 1,
        "image": str(img.relative_to(pb.path)),
        "seal": leafcache._seal_dict(seal),
        "identity": leafcache.identity(img),
    }
    entry.write_bytes(json.dumps(head, sort_keys=True).encode() + b"\n" + forged.tobytes())
    assert leafcache.load(pb.path, img, seal) is None
    with untouched(pb), pytest.raises(WrongBaseImage):
        ch.install(world, pb, B)
    assert pb.status()["active_release"] == A


def test_release_sealed_with_a_new_salt_is_verified_in_full(
    pb: Preboot, world: dict, base_hashing: list[str]
) -> None:
    """Base and target seals with different salts: no leaves to reuse, the produced image
    is hashed against the target seal as before."""
    rel = json.loads(json.dumps(world["releases"][A]))
    for c in rel["components"]:
        new_img = Path(world["dir"]) / "releases" / "26.1-a" / f"{c['name']}.new.img"
        from bsipatch.seal.tree import seal_image

        s = seal_image(new_img, salt=b"another salt")
        c["target"] = {**c["target"], "root_hash": s.root_hash.hex(), "salt": s.salt.hex()}
    inst.install_release(pb, ch.load_manifest(rel), inst.open_patch_in(world["dir"]))
    assert base_hashing == [] and _cache_entries(pb) == []
    assert ch.images_now(pb) == expect(world, A, "base")
    bad = json.loads(json.dumps(rel))
    bad["release_id"] = "26.1 (z)"
    bad["components"][0]["target"]["root_hash"] = "00" * 32
    with untouched(pb), pytest.raises(SealMismatch):
        inst.install_release(pb, ch.load_manifest(bad), inst.open_patch_in(world["dir"]))


def test_new_salt_release_still_catches_a_base_changed_behind_verified_json(
    pb: Preboot, world: dict
) -> None:
    """verified.json (inode, mtime, size) vouches for the base; the apply still hashes it."""
    from bsipatch.seal.tree import seal_image

    rel = json.loads(json.dumps(world["releases"][A]))
    for c in rel["components"]:
        new_img = Path(world["dir"]) / "releases" / "26.1-a" / f"{c['name']}.new.img"
        s = seal_image(new_img, salt=b"another salt")
        c["target"] = {**c["target"], "root_hash": s.root_hash.hex(), "salt": s.salt.hex()}
    inst.install_release(pb, ch.load_manifest(rel), inst.open_patch_in(world["dir"]))
    inst.uninstall(pb)
    inst.boot(pb)
    _tamper(pb.path / "base" / "26.1-23B85" / "webkit.img", 7000)  # mtime put back
    with untouched(pb), pytest.raises(WrongBaseImage):
        inst.install_release(pb, ch.load_manifest(rel), inst.open_patch_in(world["dir"]))


def test_leaf_cache_entries_of_removed_images_are_pruned(pb: Preboot, world: dict) -> None:
    ch.install(world, pb, A)
    inst.boot(pb)
    (pb.path / "cache" / "leaves" / ".junk.tmp").write_bytes(b"x")
    inst.os_update(
        pb,
        os_version="26.2",
        build="23C10",
        images=world["images"],
        activation=world["activation"],
    )
    assert len(_cache_entries(pb)) == 2  # the old base is still booted
    inst.boot(pb)  # its gc removes the old base, and with it the cache entries
    assert list((pb.path / "cache" / "leaves").iterdir()) == []
