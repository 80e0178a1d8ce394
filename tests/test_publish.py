"""The publisher: init, release, withdraw, rotate + re-sign, and the CLI, each checked by
verifying the repository's bytes the way a device does (bsipatch.trust.verify.Verifier).

The end-to-end tests (real seals and real patches) need bsipatch.seal.tree and
bsipatch.delta.diff and are skipped until those modules exist.
"""

import hashlib
import json
import os
import random
from datetime import datetime, timedelta, timezone

import pytest

from bsipatch.cli.main import main
from bsipatch.errors import (
    FormatError,
    KeyFileError,
    MetadataError,
    SignatureError,
    ThresholdError,
    WithdrawnRelease,
)
from bsipatch.trust import keys, publish
from bsipatch.trust.manifest import ComponentRelease, Cve, PatchRef, SealRef
from bsipatch.trust.repository import Repository, patch_relpath
from bsipatch.trust.verify import Verifier

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
NOW_TEXT = "2026-11-28T12:00:00Z"


def h(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def keyset():
    return {r: [keys.generate()] for r in ("root", "release", "catalog")}


def fake_components(release_id: str, names=("webkit", "libsystem")):
    """Components with made-up seals; the patch files are written into the repo."""
    out = []
    for n in names:
        out.append(
            ComponentRelease(
                name=n,
                activation="relaunch" if n == "webkit" else "reboot",
                base=SealRef(h("base" + n), h("salt"), 40960),
                target=SealRef(h(release_id + n), h("salt2"), 40960),
                patch=PatchRef(patch_relpath(release_id, n), h(release_id + n + "p"), 100),
                cves=(Cve("CVE-2026-20001", f"bug in {n}"),),
            )
        )
    return out


def add(repo, ks, release_id="26.1 (a)", builds=("23B85",), names=("webkit", "libsystem")):
    return publish.add_release(
        repo,
        release_id=release_id,
        os_version=release_id.split(" ")[0],
        builds=builds,
        supplemental_build=builds[0] + "a",
        components=fake_components(release_id, names),
        keys=ks,
        published=NOW,
        expires=NOW + timedelta(days=90),
    )


@pytest.fixture
def repo(tmp_path):
    ks = keyset()
    path = tmp_path / "repo"
    publish.init_repository(path, ks, now=NOW)
    return Repository(path), ks


def device_view(r: Repository, now=NOW, root_bytes=None):
    v = Verifier(root_bytes or r.read_root(1), now=now)
    for n in r.root_versions():
        if n > v.root.version:
            v.update_root(r.read_root(n))
    return v, v.verify_catalog(r.read_catalog())


# --- init -----------------------------------------------------------------------------------


def test_init_writes_self_signed_root_and_empty_signed_catalog(repo):
    r, ks = repo
    assert r.read_root() == r.read_root(1)
    v, cat = device_view(r)
    assert v.root.version == 1 and cat.version == 1 and cat.releases == ()
    assert v.root.roles["release"].keyids == (ks["release"][0].keyid,)
    for rel in ("root.json", "roots/1.root.json", "catalog.json"):
        assert oct((r.path / rel).stat().st_mode & 0o777) == "0o644"


def test_init_refuses_an_existing_repository(repo):
    r, ks = repo
    with pytest.raises(MetadataError, match="already"):
        publish.init_repository(r.path, ks, now=NOW)


def test_init_needs_threshold_many_keys(tmp_path):
    ks = keyset()
    with pytest.raises(FormatError, match="threshold 2"):  # 2 of 1 key: unsatisfiable
        publish.init_repository(tmp_path / "r", ks, now=NOW, thresholds={"root": 2})
    offline = keys.generate().public  # a second root key held elsewhere
    with pytest.raises(ThresholdError):  # trusted, but only one private key to sign with
        publish.init_repository(
            tmp_path / "r", ks, now=NOW, thresholds={"root": 2}, public_keys={"root": [offline]}
        )
    assert not (tmp_path / "r" / "root.json").exists()
    extra = keys.generate()
    root = publish.init_repository(
        tmp_path / "r2",
        {**ks, "release": [*ks["release"], extra]},
        now=NOW,
        thresholds={"release": 2},
    )
    assert root.roles["release"].threshold == 2


# --- releases -------------------------------------------------------------------------------


def test_added_release_verifies_on_a_device(repo):
    r, ks = repo
    m = add(r, ks)
    v, cat = device_view(r)
    assert cat.version == 2
    e = cat.latest("23B85")
    assert e.release_id == "26.1 (a)" and e.components == ("webkit", "libsystem")
    assert e.cves == ("CVE-2026-20001",)
    got = v.verify_manifest(r.read(e.manifest_path), e, device_build="23B85")
    assert got == m and got.sequence == 1


def test_sequences_increase_and_catalog_keeps_history(repo):
    r, ks = repo
    add(r, ks, "26.1 (a)")
    add(r, ks, "26.1 (b)", names=("webkit",))
    add(r, ks, "26.2 (a)", builds=("23C10",))
    _, cat = device_view(r)
    assert cat.version == 4
    assert [(e.release_id, e.sequence) for e in cat.releases] == [
        ("26.1 (a)", 1),
        ("26.1 (b)", 2),
        ("26.2 (a)", 3),
    ]
    assert cat.latest("23B85").release_id == "26.1 (b)"


def test_same_release_id_twice_refused(repo):
    r, ks = repo
    add(r, ks)
    with pytest.raises(MetadataError, match="already in the catalog"):
        add(r, ks)


def test_publishing_with_untrusted_release_key_refused(repo):
    r, ks = repo
    with pytest.raises(ThresholdError):
        add(r, {**ks, "release": [keys.generate()]})


def test_tampered_catalog_is_not_extended(repo):
    """The publisher checks its own catalog before re-signing it."""
    r, ks = repo
    add(r, ks)
    doc = json.loads(r.read_catalog())
    doc["signed"]["releases"][0]["withdrawn"] = True
    r.write("catalog.json", json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())
    with pytest.raises(SignatureError):
        add(r, ks, "26.1 (b)")
    with pytest.raises(SignatureError):
        publish.withdraw(r.path, "26.1 (a)", ks, NOW)


def test_withdraw_marks_release_and_device_refuses_it(repo):
    r, ks = repo
    add(r, ks, "26.1 (a)")
    add(r, ks, "26.1 (b)")
    cat = publish.withdraw(r.path, "26.1 (b)", ks, NOW)
    assert cat.version == 4
    v, dcat = device_view(r)
    assert dcat.latest("23B85").release_id == "26.1 (a)"
    e = dcat.entry("26.1 (b)")
    with pytest.raises(WithdrawnRelease):
        v.verify_manifest(r.read(e.manifest_path), e, device_build="23B85")
    with pytest.raises(MetadataError, match="already withdrawn"):
        publish.withdraw(r.path, "26.1 (b)", ks, NOW)
    with pytest.raises(MetadataError, match="does not list"):
        publish.withdraw(r.path, "26.9 (z)", ks, NOW)


def test_rotate_release_key_and_resign_device_follows(repo):
    """Release key compromised: rotate it out, re-sign; old signatures stop counting."""
    r, ks = repo
    add(r, ks)
    old_manifest = r.read("releases/26.1-a/manifest.json")
    old_root = r.read_root(1)
    new_ks = {**ks, "release": [keys.generate()]}
    root2 = publish.rotate_root(r.path, old_root_keys=ks["root"], new_keys=new_ks, now=NOW)
    assert root2.version == 2 and r.root_versions() == [1, 2]
    cat = publish.resign(r.path, new_ks, NOW)
    assert cat.version == 3
    v, dcat = device_view(r, root_bytes=old_root)  # a device that only knew root 1
    assert v.root.version == 2 and v.rotated_roles == {"release"}
    e = dcat.entry("26.1 (a)")
    assert v.verify_manifest(r.read(e.manifest_path), e, device_build="23B85").sequence == 1
    # the manifest signed by the revoked key no longer verifies, even if listed
    from dataclasses import replace

    forged_entry = replace(
        e,
        manifest_sha256=hashlib.sha256(old_manifest).hexdigest(),
        manifest_size=len(old_manifest),
    )
    with pytest.raises(SignatureError):
        v.verify_manifest(old_manifest, forged_entry, device_build="23B85")


def test_rotate_root_keys_needs_old_and_new_threshold(repo):
    r, ks = repo
    new_root = [keys.generate()]
    with pytest.raises(ThresholdError, match="old root keys"):
        publish.rotate_root(
            r.path, old_root_keys=new_root, new_keys={**ks, "root": new_root}, now=NOW
        )
    pub_only = {**ks, "root": [new_root[0].public]}
    with pytest.raises(ThresholdError, match="its own keys"):
        publish.rotate_root(r.path, old_root_keys=ks["root"], new_keys=pub_only, now=NOW)
    publish.rotate_root(
        r.path, old_root_keys=ks["root"], new_keys={**ks, "root": new_root}, now=NOW
    )
    v, _ = device_view(r)
    assert v.root.version == 2 and v.rotated_roles == {"root"}


def test_keydir_generate_and_load(tmp_path):
    made = publish.generate_keydir(tmp_path / "k", count=2, passphrase="pw")
    assert len(made) == 6
    loaded = publish.load_keydir(tmp_path / "k", "pw")
    assert {r: [k.keyid for k in v] for r, v in loaded.items()} == {
        r: [kid for rr, _, kid in made if rr == r] for r in ("root", "release", "catalog")
    }
    with pytest.raises(KeyFileError):
        publish.load_keydir(tmp_path / "k", "wrong")
    with pytest.raises(KeyFileError):
        publish.load_keydir(tmp_path / "absent")
    more = publish.generate_keydir(tmp_path / "k", roles=("release",))
    assert more[0][1].name == "release-3.pem"


# --- CLI ------------------------------------------------------------------------------------


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "PRIVATE KEY" not in out.out + out.err
    return code, out.out, out.err


def test_cli_repo_init_withdraw_catalog_show(tmp_path, capsys):
    kd, rd = tmp_path / "keys", tmp_path / "repo"
    assert cli(capsys, "keygen", "--out", kd)[0] == 0
    code, out, err = cli(capsys, "repo", "init", rd, "--keys", kd, "--now", NOW_TEXT)
    assert code == 0, err
    ks = publish.load_keydir(kd)
    add(Repository(rd), ks, "26.1 (a)")
    add(Repository(rd), ks, "26.1 (b)", names=("webkit",))
    code, out, err = cli(capsys, "release", "withdraw", rd, "26.1 (b)", "--keys", kd,
                         "--now", NOW_TEXT)  # fmt: skip
    assert code == 0, err and "catalog version 4" in out
    code, out, err = cli(capsys, "catalog", "show", rd, "--now", NOW_TEXT)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("catalog version 4")
    assert "26.1 (b)" in lines[1] and "WITHDRAWN" in lines[1]  # newest first
    assert "webkit (relaunch)" in out and "CVE-2026-20001: bug in libsystem" in out
    code, out, _ = cli(capsys, "catalog", "show", rd, "--json", "--now", NOW_TEXT)
    doc = json.loads(out)
    assert [e["release_id"] for e in doc["releases"]] == ["26.1 (b)", "26.1 (a)"]
    assert doc["releases"][0]["withdrawn"] is True
    assert doc["releases"][1]["component_details"][1]["cves"][0]["id"] == "CVE-2026-20001"
    code, out, _ = cli(capsys, "release", "show", rd, "26.1 (a)", "--json")
    assert json.loads(out)["release_id"] == "26.1 (a)"
    # withdrawing again is a clean error with the metadata exit code
    code, _, err = cli(capsys, "release", "withdraw", rd, "26.1 (b)", "--keys", kd)
    assert code == 5 and "already withdrawn" in err and "Traceback" not in err


def test_cli_catalog_show_detects_tampering(tmp_path, capsys):
    kd, rd = tmp_path / "keys", tmp_path / "repo"
    cli(capsys, "keygen", "--out", kd)
    cli(capsys, "repo", "init", rd, "--keys", kd)
    add(Repository(rd), publish.load_keydir(kd))
    m = rd / "releases/26.1-a/manifest.json"
    m.write_bytes(m.read_bytes().replace(b"bug in webkit", b"bug in webkiT"))
    code, _, err = cli(capsys, "catalog", "show", rd)
    assert code == 5 and "does not match" in err


def test_cli_rotate_with_resign_and_pinned_root(tmp_path, capsys):
    kd, kd2, rd = tmp_path / "keys", tmp_path / "keys2", tmp_path / "repo"
    cli(capsys, "keygen", "--out", kd, "--passphrase-env", "BSI_PW")  # unset: fails cleanly
    os.environ["BSI_PW"] = "s3cret"
    try:
        assert cli(capsys, "keygen", "--out", kd, "--passphrase-env", "BSI_PW")[0] == 0
        cli(capsys, "keygen", "--out", kd2)
        assert cli(capsys, "repo", "init", rd, "--keys", kd, "--passphrase-env", "BSI_PW")[0] == 0
        add(Repository(rd), publish.load_keydir(kd, "s3cret"))
        pinned = tmp_path / "root1.json"
        pinned.write_bytes((rd / "root.json").read_bytes())
        code, out, err = cli(capsys, "repo", "rotate", rd, "--keys", kd, "--passphrase-env",
                             "BSI_PW", "--new-keys", kd2, "--resign")  # fmt: skip
        assert code == 0, err
        assert "root version 2" in out and "catalog version 3" in out
    finally:
        del os.environ["BSI_PW"]
    code, out, err = cli(capsys, "catalog", "show", rd, "--root", pinned, "--json")
    assert code == 0, err
    assert json.loads(out)["root_version"] == 2


def test_cli_bad_component_spec_is_a_clean_error(tmp_path, capsys):
    kd, rd = tmp_path / "keys", tmp_path / "repo"
    cli(capsys, "keygen", "--out", kd)
    cli(capsys, "repo", "init", rd, "--keys", kd)
    for spec in ("webkit:relaunch:a", "webkit:logout:a:b", "webkit:reboot:/nonexistent:/x"):
        code, _, err = cli(capsys, "release", "build", rd, "--id", "26.1 (a)", "--os-version",
                           "26.1", "--build", "23B85", "--supplemental-build", "23B85a",
                           "--component", spec, "--keys", kd)  # fmt: skip
        assert code == 5, err
        assert err.startswith("bsipatch: error:")


def test_parse_component_with_cves(tmp_path):
    from bsipatch.cli.release import parse_component

    (tmp_path / "a.img").write_bytes(b"a")
    (tmp_path / "b.img").write_bytes(b"b")
    c = parse_component(
        f"webkit:relaunch:{tmp_path}/a.img:{tmp_path}/b.img:"
        "CVE-2026-1111=heap overflow, in parser,CVE-2026-2222=use: after free"
    )
    assert c.name == "webkit" and c.activation == "relaunch"
    assert c.cves == (
        Cve("CVE-2026-1111", "heap overflow, in parser"),
        Cve("CVE-2026-2222", "use: after free"),
    )
    with pytest.raises(FormatError):
        parse_component(f"webkit:relaunch:{tmp_path}/a.img:{tmp_path}/b.img:CVE-2026-1")


# --- end to end with real seals and patches ---------------------------------------------------


def make_images(tmp_path, name: str, size: int, seed: int):
    rnd = random.Random(seed)
    base = bytearray(rnd.randbytes(size))
    new = bytearray(base)
    for _ in range(20):  # a few small edits, like a security fix
        at = rnd.randrange(0, size - 64)
        new[at : at + 16] = rnd.randbytes(16)
    new += rnd.randbytes(777)  # and growth by a non-block-multiple
    bp, np_ = tmp_path / f"{name}.base.img", tmp_path / f"{name}.new.img"
    bp.write_bytes(bytes(base))
    np_.write_bytes(bytes(new))
    return bp, np_


@pytest.fixture
def real_modules():
    seal = pytest.importorskip("bsipatch.seal.tree")
    pytest.importorskip("bsipatch.delta.diff")
    apply = pytest.importorskip("bsipatch.delta.apply")
    return seal, apply


def test_publish_then_verify_multi_component_round_trip(tmp_path, repo, real_modules):
    seal, apply = real_modules
    r, ks = repo
    specs = {
        "webkit": ("relaunch", 300_000),
        "libsystem": ("reboot", 4096 * 50),
        "dyld": ("reboot", 9999),
    }
    inputs = []
    for i, (name, (activation, size)) in enumerate(specs.items()):
        bp, np_ = make_images(tmp_path, name, size, seed=i)
        cves = (Cve(f"CVE-2026-{3000 + i}", f"fix {name}"),)
        inputs.append(publish.ComponentInput(name, activation, bp, np_, cves))
    m = publish.build_release(
        r.path,
        release_id="26.1 (a)",
        os_version="26.1",
        builds=["23B85", "23B86"],
        supplemental_build="23B85a",
        components=inputs,
        keys=ks,
        published=NOW,
        expires=NOW + timedelta(days=90),
    )
    # the device's view: a root it trusts, then only bytes from the repository
    v, cat = device_view(r, now=NOW + timedelta(days=1))
    e = cat.latest("23B86")
    got = v.verify_manifest(r.read(e.manifest_path), e, device_build="23B86",
                            device_components=set(specs))  # fmt: skip
    assert got == m and got.sequence == 1
    assert [c.name for c in got.components] == list(specs)
    for c, inp in zip(got.components, inputs, strict=True):
        patch_bytes = r.read(c.patch.path)
        v.check_patch(c, len(patch_bytes), hashlib.sha256(patch_bytes).digest())
        # the seals in the manifest describe the real images
        seal.verify_image(str(inp.base_image), c.base.to_seal())
        seal.verify_image(str(inp.new_image), c.target.to_seal())
        assert c.base.size == os.path.getsize(inp.base_image)
        # lineage salt: the new image is sealed with its base's salt, so a device can
        # reuse the base's leaves; each component has its own (random) salt
        assert c.target.salt == c.base.salt and len(bytes.fromhex(c.base.salt)) == 32
        # the patch turns the base image into exactly the new image
        out = tmp_path / f"{c.name}.out"
        apply.apply(str(inp.base_image), patch_bytes, str(out))
        assert out.read_bytes() == inp.new_image.read_bytes()
        assert (
            r.path / f"images/26.1/23B85/{c.name}.img"
        ).read_bytes() == inp.base_image.read_bytes()
    assert len({c.base.salt for c in got.components}) == len(specs)
    # a swapped patch (another component's) is refused
    wk, ls = got.component("webkit"), got.component("libsystem")
    other = r.read(ls.patch.path)
    with pytest.raises(Exception) as info:
        v.check_patch(wk, len(other), hashlib.sha256(other).digest())
    assert type(info.value).__name__ == "TargetMismatch"


WEBKIT_CVES = "CVE-2026-1111=heap overflow, in parser,CVE-2026-2222=uaf"


def test_cli_release_build_round_trip(tmp_path, capsys, real_modules):
    kd, rd = tmp_path / "keys", tmp_path / "repo"
    cli(capsys, "keygen", "--out", kd, "--type", "ecdsa-p256")
    cli(capsys, "repo", "init", rd, "--keys", kd, "--now", NOW_TEXT)
    wb, wn = make_images(tmp_path, "webkit", 100_000, 1)
    lb, ln = make_images(tmp_path, "libsystem", 50_000, 2)
    code, out, err = cli(
        capsys, "release", "build", rd, "--id", "26.1 (a)", "--os-version", "26.1",
        "--build", "23B85", "--supplemental-build", "23B85a",
        "--component", f"webkit:relaunch:{wb}:{wn}:" + WEBKIT_CVES,
        "--component", f"libsystem:reboot:{lb}:{ln}",
        "--cve", "libsystem:CVE-2026-3333=integer overflow",
        "--keys", kd, "--published", NOW_TEXT, "--expires-days", "30", "--json",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert doc["sequence"] == 1
    webkit = doc["components"][0]
    assert [c["id"] for c in webkit["cves"]] == ["CVE-2026-1111", "CVE-2026-2222"]
    assert webkit["cves"][0]["description"] == "heap overflow, in parser"
    assert doc["components"][1]["cves"][0]["id"] == "CVE-2026-3333"
    v, cat = device_view(Repository(rd), now=NOW + timedelta(days=1))
    e = cat.entry("26.1 (a)")
    m = v.verify_manifest((rd / e.manifest_path).read_bytes(), e, device_build="23B85")
    assert m.expires == "2026-12-28T12:00:00Z"
    code, out, err = cli(capsys, "catalog", "show", rd, "--now", NOW_TEXT)
    assert "CVE-2026-1111: heap overflow, in parser" in out


@pytest.mark.parametrize("group", ["repo", "release", "catalog"])
def test_cli_group_without_action_prints_its_help(capsys, group):
    assert main([group]) == 2
    assert f"usage: bsipatch {group}" in capsys.readouterr().err


def test_resign_refuses_a_catalog_no_root_ever_trusted(repo):
    r, ks = repo
    add(r, ks)
    planted = keys.sign_envelope(publish.load_catalog(r).to_dict(), [keys.generate()])
    r.write("catalog.json", planted)
    with pytest.raises(SignatureError):
        publish.resign(r.path, ks, NOW)


# --- one publisher at a time ----------------------------------------------------------------


def _publish_in_child(path, ks, release_id, go=None):
    if go is not None:
        go.wait(30)
    add(Repository(path), ks, release_id, names=("webkit",))


def test_publisher_waits_for_the_repository_lock(repo):
    import multiprocessing

    r, ks = repo
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    # forked before the lock is taken: a fork would inherit the locked descriptor
    child = ctx.Process(target=_publish_in_child, args=(r.path, ks, "26.1 (a)", go))
    child.start()
    try:
        with r.lock():
            go.set()
            child.join(1.0)
            assert child.is_alive()  # blocked on the lock, catalog untouched
            assert device_view(r)[1].version == 1
            with r.lock():  # re-entrant in the holder
                pass
        child.join(30)
    finally:
        child.kill()
    assert child.exitcode == 0
    assert device_view(r)[1].latest("23B85").release_id == "26.1 (a)"


def test_concurrent_publishers_lose_no_release(repo):
    import multiprocessing

    r, ks = repo
    ctx = multiprocessing.get_context("fork")
    ids = [f"26.1 ({c})" for c in "abcdef"]
    children = [ctx.Process(target=_publish_in_child, args=(r.path, ks, i)) for i in ids]
    for c in children:
        c.start()
    for c in children:
        c.join(60)
        assert c.exitcode == 0
    _, cat = device_view(r)
    assert cat.version == 1 + len(ids)
    assert sorted(e.release_id for e in cat.releases) == ids
    assert sorted(e.sequence for e in cat.releases) == list(range(1, len(ids) + 1))


def test_build_release_with_a_missing_image_is_a_typed_error(tmp_path, repo):
    r, ks = repo
    base = tmp_path / "base.img"
    base.write_bytes(b"x" * 4096)
    with pytest.raises(FormatError, match=r"new image .* is not a file"):
        publish.build_release(
            r.path,
            release_id="26.1 (a)",
            os_version="26.1",
            builds=["23B85"],
            supplemental_build="23B85a",
            components=[publish.ComponentInput("webkit", "relaunch", base, tmp_path / "nope")],
            keys=ks,
            published=NOW,
            expires=NOW + timedelta(days=90),
        )
    assert device_view(r)[1].version == 1
