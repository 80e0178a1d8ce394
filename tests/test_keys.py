"""Keys: known answers (RFC 8032), key ids, PEM files with passphrases, no key material leaks."""

import hashlib
import os
import pickle
import stat
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from bsipatch.errors import FormatError, KeyFileError
from bsipatch.trust import canonical, keys

# RFC 8032, section 7.1, TEST 1 (empty message)
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC8032_SIG = (
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
    "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def rfc_key():
    return keys.PrivateKey(ed25519.Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET))


def test_ed25519_known_answer_rfc8032():
    k = rfc_key()
    assert keys.public_key_dict(k) == {
        "keytype": "ed25519",
        "scheme": "ed25519",
        "public": RFC8032_PUBLIC,
    }
    assert keys.sign(k, b"") == {"keyid": k.keyid, "sig": RFC8032_SIG}


def test_keyid_is_sha256_of_canonical_public_dict():
    k = rfc_key()
    text = ('{"keytype":"ed25519","public":"' + RFC8032_PUBLIC + '","scheme":"ed25519"}').encode()
    assert k.keyid == hashlib.sha256(text).hexdigest()
    assert keys.keyid(keys.public_key_dict(k)) == k.keyid
    # extra fields do not change the id
    assert keys.keyid({**keys.public_key_dict(k), "note": "x"}) == k.keyid


@pytest.mark.parametrize("kind", keys.KINDS)
def test_sign_verify_round_trip_and_tamper(kind):
    k = keys.generate(kind)
    pub = keys.public_key_dict(k)
    s = keys.sign(k, b"message")
    assert s["keyid"] == k.keyid == keys.keyid(pub)
    assert keys.verify(pub, bytes.fromhex(s["sig"]), b"message")
    assert not keys.verify(pub, bytes.fromhex(s["sig"]), b"messagE")
    other = keys.public_key_dict(keys.generate(kind))
    assert not keys.verify(other, bytes.fromhex(s["sig"]), b"message")
    assert keys.load_public(pub).keyid == k.keyid


def test_ecdsa_public_dict_is_uncompressed_p256_point():
    pub = keys.public_key_dict(keys.generate("ecdsa-p256"))
    assert pub["keytype"] == "ecdsa" and pub["scheme"] == "ecdsa-sha2-nistp256"
    assert len(pub["public"]) == 130 and pub["public"].startswith("04")


def test_unknown_kind_refused():
    with pytest.raises(ValueError):
        keys.generate("rsa")


@pytest.mark.parametrize(
    "pub",
    [
        {"keytype": "ed25519", "scheme": "ed25519"},
        {"keytype": "ed25519", "scheme": "ed25519", "public": "00" * 31},
        {"keytype": "ed25519", "scheme": "ed25519", "public": "ZZ" * 32},
        {"keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256", "public": "04" + "00" * 64},
        {"keytype": "rsa", "scheme": "rsassa-pss-sha256", "public": "00"},
        {"keytype": "ed25519", "scheme": "ecdsa-sha2-nistp256", "public": RFC8032_PUBLIC},
        {"keytype": "ed25519", "scheme": "ed25519", "public": RFC8032_PUBLIC, "x": 1},
    ],
)
def test_bad_public_key_dicts_refused(pub):
    with pytest.raises(FormatError):
        keys.load_public(pub)


@pytest.mark.parametrize("kind", keys.KINDS)
@pytest.mark.parametrize("passphrase", [None, "correct horse", b"\xffbytes"])
def test_save_load_round_trip(tmp_path, kind, passphrase):
    k = keys.generate(kind)
    path = tmp_path / "k.pem"
    keys.save_private(k, path, passphrase)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_bytes()
    if passphrase is None:
        assert text.startswith(b"-----BEGIN PRIVATE KEY-----")
    else:
        assert text.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    k2 = keys.load_private(path, passphrase)
    assert k2.keyid == k.keyid and k2.kind == kind
    # the loaded key signs verifiably
    s = keys.sign(k2, b"x")
    assert keys.verify(keys.public_key_dict(k), bytes.fromhex(s["sig"]), b"x")


def test_pem_is_pkcs8_readable_by_cryptography(tmp_path):
    k = keys.generate()
    keys.save_private(k, tmp_path / "k.pem")
    loaded = serialization.load_pem_private_key((tmp_path / "k.pem").read_bytes(), None)
    assert isinstance(loaded, ed25519.Ed25519PrivateKey)


def test_wrong_or_missing_passphrase_is_keyfileerror(tmp_path):
    path = tmp_path / "k.pem"
    keys.save_private(keys.generate(), path, "right")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        keys.load_private(path, "wrong")
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        keys.load_private(path)
    plain = tmp_path / "p.pem"
    keys.save_private(keys.generate(), plain)
    with pytest.raises(KeyFileError, match="not encrypted"):
        keys.load_private(plain, "x")


def test_bad_pem_missing_file_and_rsa_refused(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64!!\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFileError):
        keys.load_private(bad)
    with pytest.raises(KeyFileError, match="cannot read"):
        keys.load_private(tmp_path / "absent.pem")
    r = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = r.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "rsa.pem").write_bytes(pem)
    with pytest.raises(KeyFileError, match="expected Ed25519 or ECDSA P-256"):
        keys.load_private(tmp_path / "rsa.pem")


def test_error_messages_never_contain_key_material(tmp_path):
    path = tmp_path / "k.pem"
    keys.save_private(keys.generate(), path, "right")
    pem = path.read_text()
    body = "".join(pem.splitlines()[1:-1])
    with pytest.raises(KeyFileError) as info:
        keys.load_private(path, "wrong")
    assert body[:20] not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_repr_and_str_hide_key_material():
    k = rfc_key()
    text = repr(k) + str(k) + repr(k.public)
    assert RFC8032_SECRET.hex() not in text
    assert k.keyid[:16] in repr(k)


def test_private_key_cannot_be_pickled():
    with pytest.raises(TypeError):
        pickle.dumps(keys.generate())


def test_empty_passphrase_refused(tmp_path):
    with pytest.raises(ValueError):
        keys.save_private(keys.generate(), tmp_path / "k.pem", "")


def test_sign_envelope_canonical_sorted_and_deduplicated():
    a, b = keys.generate(), keys.generate("ecdsa-p256")
    data = keys.sign_envelope({"_type": "x", "n": 1}, [b, a, b])
    doc = canonical.decode(data, canonical=True)
    ids = [s["keyid"] for s in doc["signatures"]]
    assert ids == sorted({a.keyid, b.keyid})
    body = canonical.encode(doc["signed"])
    for s, k in zip(doc["signatures"], sorted([a, b], key=lambda k: k.keyid), strict=False):
        assert keys.verify(keys.public_key_dict(k), bytes.fromhex(s["sig"]), body)


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "bsipatch", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_cli_keygen_prints_no_key_material(tmp_path):
    out = run_cli("keygen", "--out", str(tmp_path / "k"), "--count", "2")
    assert out.returncode == 0, out.stderr
    out2 = run_cli(
        "keygen", "--out", str(tmp_path / "k"), "--role", "release", "--type", "ecdsa-p256",
        "--passphrase-env", "BSI_TEST_PW", "--json", env={"BSI_TEST_PW": "pw"},
    )  # fmt: skip
    assert out2.returncode == 0, out2.stderr
    text = out.stdout + out.stderr + out2.stdout + out2.stderr
    assert "PRIVATE KEY" not in text and "BEGIN" not in text
    pems = sorted(p.name for p in (tmp_path / "k").glob("*.pem"))
    assert pems == [
        "catalog-1.pem", "catalog-2.pem", "release-1.pem", "release-2.pem", "release-3.pem",
        "root-1.pem", "root-2.pem",
    ]  # fmt: skip
    for p in (tmp_path / "k").glob("*.pem"):
        body = "".join(p.read_text().splitlines()[1:-1])
        assert body[:24] not in text
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    # the encrypted key needs the passphrase
    with pytest.raises(KeyFileError):
        keys.load_private(tmp_path / "k" / "release-3.pem")
    assert keys.load_private(tmp_path / "k" / "release-3.pem", "pw").kind == "ecdsa-p256"


def test_cli_missing_passphrase_variable_is_a_clean_error(tmp_path):
    out = run_cli("keygen", "--out", str(tmp_path / "k"), "--passphrase-env", "BSI_UNSET_VAR_X")
    assert out.returncode == 5
    assert "BSI_UNSET_VAR_X" in out.stderr and "Traceback" not in out.stderr
