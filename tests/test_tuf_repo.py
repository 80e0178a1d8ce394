"""The vendor's TUF repository: keys, layout, publishing rules, expiry, refresh, and a
stock python-tuf client (no bsipatch code) reading it over a real HTTP server."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from httpserver import serve
from securesystemslib.signer import Signer
from tufworld import ACTIVATION, BUILD, NOW, device, images, keyset, new_repo, publish

from bsipatch.cli.main import main as cli_main
from bsipatch.errors import ExpiredMetadata, FormatError, KeyFileError, ThresholdError, WrongTarget
from bsipatch.trust import signers, tufrepo
from bsipatch.trust.publish import PatchInput, add_release, load_catalog, withdraw
from bsipatch.trust.releases import ComponentSpec, patch_target_path
from bsipatch.trust.tufrepo import Expiry, TufRepository, refresh


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, scheme", [("ed25519", "ed25519"), ("ecdsa-p256", "ecdsa-sha2-nistp256")]
)
def test_keygen_makes_encrypted_keys_of_each_type(tmp_path, kind, scheme):
    made = signers.generate_keydir(tmp_path / "k", kind=kind, passphrase="s3cret")
    assert set(made) == set(signers.ROLES)
    pem = (tmp_path / "k" / "targets-1.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE((tmp_path / "k" / "targets-1.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    (s,) = signers.load_signers(tmp_path / "k", "targets", "s3cret")
    assert s.public_key.scheme == scheme and s.public_key.keyid == made["targets"][0]
    sig = s.sign(b"payload")
    s.public_key.verify_signature(sig, b"payload")  # raises if wrong
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        signers.load_signers(tmp_path / "k", "targets", "nope")
    with pytest.raises(KeyFileError, match="encrypted"):
        signers.load_signers(tmp_path / "k", "targets")


def test_keygen_refuses_a_directory_with_keys_unless_adding(tmp_path):
    signers.generate_keydir(tmp_path / "k")
    before = _tree(tmp_path / "k")
    with pytest.raises(KeyFileError, match="already holds"):
        signers.generate_keydir(tmp_path / "k")
    assert _tree(tmp_path / "k") == before
    made = signers.generate_keydir(tmp_path / "k", count={"targets": 1}, add=True)
    assert list(made) == ["targets"] and (tmp_path / "k" / "targets-2.pem").exists()
    assert len(signers.load_signers(tmp_path / "k", "targets")) == 2


def test_signer_uri_plugs_in_an_external_key(tmp_path):
    """A key named by a securesystemslib URI (here file2:, as an HSM/KMS URI would be)."""
    signers.generate_keydir(tmp_path / "k")
    pem = tmp_path / "k" / "timestamp-1.pem"
    outside = tmp_path / "elsewhere.pem"
    outside.write_bytes(pem.read_bytes())
    pem.unlink()
    (tmp_path / "k" / "timestamp-1.uri").write_text(f"file2:{outside}\n")
    (s,) = signers.load_signers(tmp_path / "k", "timestamp")
    assert isinstance(s, Signer) and type(s).__name__ == "CryptoSigner"
    (tmp_path / "k" / "timestamp-1.uri").write_text("nosuchscheme:x\n")
    with pytest.raises(KeyFileError, match="cannot load signer"):
        signers.load_signers(tmp_path / "k", "timestamp")


# --- layout and a stock client --------------------------------------------------------------


def test_stock_tuf_updater_refreshes_and_verifies_every_target_over_http(tmp_path):
    from tuf.ngclient import Updater

    imgs = images(tmp_path)
    repo, keys = new_repo(tmp_path)
    publish(repo, keys, imgs, "a", "a", with_images=True)
    publish(repo, keys, imgs, "b", "b", names=("webkit",), minutes=1)
    withdraw(repo, "26.1 (b)", keys, now=NOW + timedelta(minutes=2))
    targets = TufRepository(repo).targets().signed.targets
    assert {p.split("/")[0] for p in targets} == {"releases", "patches", "images"}
    with serve(repo) as srv:
        meta, dl = tmp_path / "client-meta", tmp_path / "client-dl"
        meta.mkdir()
        dl.mkdir()
        up = Updater(
            str(meta), srv.url + "metadata/", str(dl), srv.url + "targets/",
            bootstrap=(repo / "metadata" / "1.root.json").read_bytes(),
        )  # fmt: skip
        up.refresh()
        for path, expected in targets.items():
            info = up.get_targetinfo(path)
            assert info is not None and info.length == expected.length
            got = Path(up.download_target(info, str(dl / path.replace("/", "_"))))
            info.verify_length_and_hashes(got.read_bytes())
    # the release target's file is the same document as its custom field
    rel = json.loads((dl / "releases_26.1-b.json").read_bytes())
    assert rel["withdrawn"] is True and rel == targets["releases/26.1-b.json"].custom["bsipatch"]


def test_no_lock_file_and_no_base_images_unless_asked(tmp_path):
    imgs = images(tmp_path)
    repo, keys = new_repo(tmp_path)
    publish(repo, keys, imgs, "a", "a")
    files = sorted(_tree(repo))
    assert not [f for f in files if "lock" in f or f.startswith("images") or "/images/" in f]
    assert not [f for f in files if f.endswith(".img")]
    top = {f.split("/")[0] for f in files}
    assert top == {"metadata", "targets"}


# --- who may publish -------------------------------------------------------------------------


def test_online_keys_alone_cannot_publish_or_withdraw(tmp_path):
    imgs = images(tmp_path)
    repo, keys = new_repo(tmp_path)
    publish(repo, keys, imgs, "a", "a")
    online = keys.only(signers.ONLINE_ROLES)
    before = _tree(repo)
    with pytest.raises(ThresholdError, match="targets"):
        withdraw(repo, "26.1 (a)", online, now=NOW)
    with pytest.raises(ThresholdError, match="targets"):
        publish(repo, online, imgs, "b", "b")
    # a snapshot or timestamp key passed off as a targets key does not count either
    forged = signers.KeySet({"targets": online.get("snapshot") + online.get("timestamp"),
                             **online.signers})  # fmt: skip
    with pytest.raises(ThresholdError):
        withdraw(repo, "26.1 (a)", forged, now=NOW)
    assert _tree(repo) == before


def test_refresh_uses_online_keys_only_and_resigns_snapshot_when_needed(tmp_path):
    imgs = images(tmp_path)
    repo, keys = new_repo(tmp_path)
    publish(repo, keys, imgs, "a", "a")
    r = TufRepository(repo)
    targets_before = r.targets().to_bytes()
    online = keys.only(signers.ONLINE_ROLES)
    out = refresh(repo, online, now=NOW + timedelta(hours=20))
    assert out["snapshot_resigned"] is False and out["timestamp"] == 3
    out = refresh(repo, online, now=NOW + timedelta(days=6, hours=12))
    assert out["snapshot_resigned"] is True  # snapshot (7 d) would expire before timestamp
    assert r.targets().to_bytes() == targets_before
    assert r.timestamp().signed.expires == NOW + timedelta(days=7, hours=12)
    with pytest.raises(ThresholdError, match="timestamp"):
        refresh(repo, keys.only(("snapshot",)), now=NOW)


def test_expiry_defaults_validation_and_back_dated_publish(tmp_path):
    e = Expiry()
    assert (e.timestamp, e.snapshot, e.targets, e.root) == (
        timedelta(days=1), timedelta(days=7), timedelta(days=90), timedelta(days=365),
    )  # fmt: skip
    for bad in (0, -1):
        with pytest.raises(FormatError, match="> 0"):
            Expiry.days(timestamp=bad)
    imgs = images(tmp_path)
    repo, keys = new_repo(tmp_path)
    r = TufRepository(repo)
    assert r.root().signed.expires == NOW + timedelta(days=365)
    before = _tree(repo)
    with pytest.raises(ExpiredMetadata, match="already passed"):
        publish(repo, keys, imgs, "a", "a", minutes=-2 * 24 * 60)
    with pytest.raises(ExpiredMetadata):
        refresh(repo, keys, now=NOW - timedelta(days=3))
    assert _tree(repo) == before
    publish(repo, keys, imgs, "a", "a", expiry=Expiry.days(targets=30))
    assert r.targets().signed.expires == NOW + timedelta(days=30)


# --- releases are cumulative ------------------------------------------------------------------


def test_release_carries_forward_and_refuses_a_silent_revert(tmp_path):
    imgs = images(tmp_path)
    repo, keys = new_repo(tmp_path)
    a = publish(repo, keys, imgs, "a", "a")
    b = publish(repo, keys, imgs, "b", "b", names=("webkit",), minutes=1)
    assert b.changed == ("libsys", "webkit")
    assert b.components["libsys"] == a.components["libsys"]  # carried forward, same patch
    before = _tree(repo)
    with pytest.raises(WrongTarget, match=r"leaves out libsys \(changed by 26.1 \(a\)\)"):
        publish(repo, keys, imgs, "c", "b", names=("webkit",), carry_forward=False)
    assert _tree(repo) == before
    c = publish(repo, keys, imgs, "c", "b", names=("webkit",), back_to_base=("libsys",))
    assert c.components["libsys"].target is None and c.changed == ("webkit",)
    with pytest.raises(FormatError, match="no earlier release changed"):
        publish(repo, keys, imgs, "d", "b", names=("webkit",), back_to_base=("nosuch",))


def test_n_to_1_patches_per_component_from_different_sources(tmp_path):
    """A vendor pipeline publishes two patches for one component (from base, from (a))."""
    from bsipatch.delta.diff import diff
    from bsipatch.seal.tree import seal_image
    from bsipatch.trust.manifest import SealRef

    imgs = images(tmp_path)
    repo, keys = new_repo(tmp_path)
    a = publish(repo, keys, imgs, "a", "a")
    salt = bytes.fromhex(a.components["webkit"].base.salt)
    seal = {
        t: SealRef.from_seal(
            seal_image(imgs[t]["webkit"], salt=salt),
            hashlib.sha256(imgs[t]["webkit"].read_bytes()).digest(),
        )
        for t in ("base", "a", "b")
    }
    patches = []
    for src in ("base", "a"):
        out = tmp_path / f"webkit-{src}-b.bsipatch"
        with open(out, "wb") as f:
            diff(imgs[src]["webkit"], imgs["b"]["webkit"], f)
        patches.append(PatchInput("webkit", out, seal[src], seal["b"]))
    spec = ComponentSpec("relaunch", seal["base"], seal["b"])
    b = add_release(
        repo, release_id="26.1 (b)", os_version="26.1", builds=(BUILD,),
        supplemental_build=f"{BUILD}b", components={"webkit": spec}, patches=patches,
        keys=keys, now=NOW,
    )  # fmt: skip
    assert b.components["webkit"].patches == (
        patch_target_path("webkit", seal["base"], seal["b"]),
        patch_target_path("webkit", seal["a"], seal["b"]),
    )
    catalog = load_catalog(repo)
    from_base = catalog.manifest(b).component("webkit")
    from_a = catalog.manifest(b, {"webkit": seal["a"]}).component("webkit")
    assert from_base.base == seal["base"] and from_a.base == seal["a"]
    assert from_a.patch.path != from_base.patch.path
    # and a device on (a) installs (b) through the patch from (a)'s image
    from bsipatch.agent.executor import Agent

    pb = device(tmp_path, imgs)
    agent = Agent(pb, repo, trusted_root=(repo / "metadata" / "1.root.json").read_bytes())
    agent.install("26.1 (a)")
    report = agent.run()
    assert report["installed"]["release"] == "26.1 (b)"
    with pb.open_component("webkit") as f:
        assert f.read() == imgs["b"]["webkit"].read_bytes()


# --- the CLI ------------------------------------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_cli_keygen_init_build_refresh_withdraw_list(tmp_path, capsys):
    imgs = images(tmp_path)
    k, repo = str(tmp_path / "keys"), str(tmp_path / "repo")
    os.environ["H11T_PASS"] = "pw"
    try:
        pw = ["--passphrase-env", "H11T_PASS"]
        assert cli_main(["keygen", "--out", k, "--type", "ecdsa-p256", *pw, "-q"]) == 0
        assert cli_main(["keygen", "--out", k, "-q"]) == KeyFileError.exit_code
        assert cli_main(["repo", "init", repo, "--keys", k, *pw, "--timestamp-expires-days", "0"]) \
            == FormatError.exit_code  # fmt: skip
        assert (
            cli_main(["repo", "init", repo, "--keys", k, *pw, "--targets-expires-days", "30"]) == 0
        )
        comps = [
            f"--component={n}:{ACTIVATION[n]}:{imgs['base'][n]}:{imgs['a'][n]}" for n in ACTIVATION
        ]
        build = ["release", "build", repo, "--id", "26.1 (a)", "--os-version", "26.1",
                 "--build", BUILD, "--supplemental-build", f"{BUILD}a", *comps,
                 "--keys", k, *pw]  # fmt: skip
        assert cli_main([*build, "-q"]) == 0
        capsys.readouterr()
        assert cli_main(["repo", "refresh", repo, "--keys", k, *pw, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["timestamp"] == 3
        assert cli_main(["release", "withdraw", repo, "26.1 (a)", "--keys", k, *pw]) == 0
        capsys.readouterr()
        assert cli_main(["release", "list", repo, "--json"]) == 0
        listing = json.loads(capsys.readouterr().out)
        assert [r["withdrawn"] for r in listing["releases"]] == [True]
        assert cli_main(["release", "show", repo, "26.1 (a)"]) == 0
        shown = capsys.readouterr().out
        assert "WITHDRAWN" in shown
        webkit_a = imgs["a"]["webkit"].read_bytes()
        assert f"new image: {len(webkit_a)} bytes, SHA-256 {sha(webkit_a)}" in shown
    finally:
        del os.environ["H11T_PASS"]
    assert tufrepo.TufRepository(repo).root_versions() == [1]


def test_root_rotation_signs_everything_before_writing(tmp_path):
    from bsipatch.trust.tufrepo import rotate_root

    repo, keys = new_repo(tmp_path)
    before = _tree(repo)
    new_ts = signers.generate()
    # the new root names a new timestamp key, but its private half is not given
    with pytest.raises(ThresholdError, match="timestamp"):
        rotate_root(
            repo, keys, signers.KeySet({"root": keys.get("root")}), now=NOW,
            public_keys={"timestamp": [new_ts.public_key]},
        )  # fmt: skip
    assert _tree(repo) == before
    # without the old root keys the new root cannot be made either
    with pytest.raises(ThresholdError, match="root"):
        rotate_root(repo, keysets_without_root(keys), keyset(), now=NOW)
    assert _tree(repo) == before
    md = rotate_root(repo, keys, signers.KeySet({"root": keys.get("root"), "timestamp": [new_ts]}),
                     now=NOW)  # fmt: skip
    assert md.signed.version == 2 and TufRepository(repo).root_versions() == [1, 2]
    assert new_ts.public_key.keyid in md.signed.roles["timestamp"].keyids


def keysets_without_root(keys: signers.KeySet) -> signers.KeySet:
    return signers.KeySet({r: keys.get(r) for r in signers.ROLES if r != "root"})
