"""The verifier: every attack of the TUF threat model tried against it and refused.

Manifests and catalogs are built directly here (no seal or diff needed), signed
with real keys; each test changes one thing and expects one typed error.
"""

import hashlib
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsipatch.errors import (
    ExpiredMetadata,
    FormatError,
    MetadataError,
    RollbackAttack,
    SignatureError,
    TargetMismatch,
    ThresholdError,
    WithdrawnRelease,
    WrongTarget,
)
from bsipatch.trust import canonical, keys
from bsipatch.trust.catalog import Catalog, CatalogEntry
from bsipatch.trust.manifest import (
    ComponentRelease,
    Cve,
    PatchRef,
    ReleaseManifest,
    SealRef,
    format_time,
)
from bsipatch.trust.repository import manifest_relpath, patch_relpath
from bsipatch.trust.verify import MAX_CATALOG_SIZE, ROLES, Root, Verifier, check_image, check_patch

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)


def sealref(tag: str, size: int = 4096 * 10) -> SealRef:
    return SealRef(
        root_hash=hashlib.sha256(tag.encode()).hexdigest(),
        salt=hashlib.sha256(b"salt" + tag.encode()).hexdigest(),
        size=size,
    )


def component(release_id: str, name: str, activation: str = "reboot") -> ComponentRelease:
    body = f"{release_id}/{name}".encode()
    return ComponentRelease(
        name=name,
        activation=activation,
        base=sealref(f"base-{name}"),
        target=sealref(f"target-{release_id}-{name}"),
        patch=PatchRef(
            path=patch_relpath(release_id, name),
            sha256=hashlib.sha256(body).hexdigest(),
            size=len(body),
        ),
        cves=(Cve(id="CVE-2026-10001", description=f"memory corruption in {name}"),),
    )


class World:
    """A vendor: keys per role, a root, and helpers to sign manifests and catalogs."""

    def __init__(self, thresholds=None, counts=None, kinds=None):
        counts = counts or {"root": 3, "release": 2, "catalog": 2}
        kinds = kinds or {"root": "ed25519", "release": "ecdsa-p256", "catalog": "ed25519"}
        self.keys = {r: [keys.generate(kinds[r]) for _ in range(counts[r])] for r in ROLES}
        self.thresholds = thresholds or {"root": 2, "release": 1, "catalog": 1}
        self.root = Root.build(
            self.keys, version=1, expires=NOW + timedelta(days=365), thresholds=self.thresholds
        )
        self.root_bytes = keys.sign_envelope(self.root.to_dict(), self.keys["root"])

    def verifier(self, now=NOW, **kw) -> Verifier:
        return Verifier(self.root_bytes, now=now, **kw)

    def manifest(self, release_id="26.1 (a)", sequence=1, builds=("23B85",),
                 names=("webkit", "libsystem"), expires_days=30, published=NOW):  # fmt: skip
        os_version = release_id.split(" ")[0]
        return ReleaseManifest(
            release_id=release_id,
            os_version=os_version,
            builds=builds,
            supplemental_build=builds[0] + release_id[-2],
            published=format_time(published - timedelta(days=1)),
            sequence=sequence,
            expires=format_time(published + timedelta(days=expires_days)),
            components=tuple(
                component(release_id, n, "relaunch" if n == "webkit" else "reboot") for n in names
            ),
        )

    def sign(self, signed: dict, role: str, signers=None) -> bytes:
        return keys.sign_envelope(signed, signers if signers is not None else self.keys[role])

    def entry(self, m: ReleaseManifest, data: bytes, **changes) -> CatalogEntry:
        e = CatalogEntry.for_manifest(
            m,
            manifest_path=manifest_relpath(m.release_id),
            manifest_sha256=hashlib.sha256(data).hexdigest(),
            manifest_size=len(data),
        )
        return replace(e, **changes)

    def catalog(self, entries=(), version=1, expires_days=7) -> Catalog:
        return Catalog(
            version=version,
            expires=format_time(NOW + timedelta(days=expires_days)),
            releases=tuple(entries),
        )

    def release(self, **kw):
        """A signed manifest, its entry, and the signed catalog listing it."""
        m = self.manifest(**kw)
        data = self.sign(m.to_dict(), "release")
        e = self.entry(m, data)
        cat_bytes = self.sign(self.catalog([e]).to_dict(), "catalog")
        return m, data, e, cat_bytes


@pytest.fixture(scope="module")
def world():
    return World()


def envelope_with(data: bytes, *, signed=None, signatures=None) -> bytes:
    doc = canonical.decode(data)
    if signed is not None:
        doc["signed"] = signed
    if signatures is not None:
        doc["signatures"] = signatures
    return canonical.encode(doc)


# --- the genuine path -----------------------------------------------------------------------


def test_genuine_catalog_and_manifest_verify(world):
    m, data, e, cat_bytes = world.release()
    v = world.verifier()
    cat = v.verify_catalog(cat_bytes, min_version=1)
    assert cat.entry("26.1 (a)") == e
    got = v.verify_manifest(
        data, cat.latest("23B85"), device_build="23B85", min_sequence=1,
        device_components={"webkit", "libsystem", "other"},
    )  # fmt: skip
    assert got == m
    assert got.component("webkit").activation == "relaunch"
    assert got.extra_version == "(a)"


def test_trusted_root_must_be_self_signed_at_threshold(world):
    one = keys.sign_envelope(world.root.to_dict(), world.keys["root"][:1])
    with pytest.raises(ThresholdError, match="1 valid signature"):
        Verifier(one, now=NOW)
    unsigned = envelope_with(world.root_bytes, signatures=[])
    with pytest.raises(SignatureError, match="unsigned"):
        Verifier(unsigned, now=NOW)


def test_naive_now_is_misuse(world):
    with pytest.raises(ValueError):
        world.verifier(now=datetime(2026, 11, 28))


# --- arbitrary installation: unsigned, wrong keys, bad signatures -------------------------------


def test_unsigned_catalog_refused(world):
    _, _, _, cat_bytes = world.release()
    with pytest.raises(SignatureError, match="unsigned") as info:
        world.verifier().verify_catalog(envelope_with(cat_bytes, signatures=[]))
    assert type(info.value) is SignatureError


def test_unsigned_manifest_refused(world):
    m = world.manifest()
    data = envelope_with(world.sign(m.to_dict(), "release"), signatures=[])
    e = world.entry(m, data)
    with pytest.raises(SignatureError, match="unsigned"):
        world.verifier().verify_manifest(data, e, device_build="23B85")


def test_catalog_signed_by_unknown_key_refused(world):
    stranger = keys.generate()
    cat_bytes = world.sign(world.catalog().to_dict(), "catalog", [stranger])
    with pytest.raises(SignatureError, match="not trusted for role catalog") as info:
        world.verifier().verify_catalog(cat_bytes)
    assert type(info.value) is SignatureError


def test_manifest_signed_by_another_roles_key_refused(world):
    """A catalog (or root) key cannot sign a release: roles are separate."""
    m = world.manifest()
    data = world.sign(m.to_dict(), "release", world.keys["catalog"] + world.keys["root"])
    with pytest.raises(SignatureError, match="not trusted for role release"):
        world.verifier().verify_manifest(data, world.entry(m, data), device_build="23B85")


def test_signature_over_different_bytes_refused(world):
    """A genuine signature lifted from another catalog does not verify over this one."""
    genuine = canonical.decode(world.sign(world.catalog(version=1).to_dict(), "catalog"))
    forged = envelope_with(
        world.sign(world.catalog(version=9).to_dict(), "catalog"),
        signatures=genuine["signatures"],
    )
    with pytest.raises(SignatureError, match="do not verify"):
        world.verifier().verify_catalog(forged)


def test_tampered_signed_field_refused(world):
    m, data, _e, _ = world.release()
    doc = canonical.decode(data)
    doc["signed"]["builds"] = ["23B85", "99Z99"]
    tampered = canonical.encode(doc)
    e2 = world.entry(m, tampered)  # even with a catalog entry that matches the bytes
    with pytest.raises(SignatureError, match="do not verify"):
        world.verifier().verify_manifest(tampered, e2, device_build="99Z99")


def test_garbage_signature_refused(world):
    _, _, _, cat_bytes = world.release()
    kid = world.keys["catalog"][0].keyid
    bad = envelope_with(cat_bytes, signatures=[{"keyid": kid, "sig": "00" * 64}])
    with pytest.raises(SignatureError):
        world.verifier().verify_catalog(bad)
    for sigs in (
        [{"keyid": kid}],
        [{"keyid": kid, "sig": "zz"}],
        ["x"],
        [{"keyid": "ab", "sig": "00"}],
    ):
        with pytest.raises(FormatError):
            world.verifier().verify_catalog(envelope_with(cat_bytes, signatures=sigs))


def test_too_many_signatures_refused_before_verifying(world):
    _, _, _, cat_bytes = world.release()
    sig = canonical.decode(cat_bytes)["signatures"][0]
    with pytest.raises(FormatError, match="at most 64"):
        world.verifier().verify_catalog(envelope_with(cat_bytes, signatures=[sig] * 65))


def test_non_canonical_envelope_refused(world):
    _, _, _, cat_bytes = world.release()
    import json

    pretty = json.dumps(canonical.decode(cat_bytes), indent=1).encode()
    with pytest.raises(FormatError, match="canonical"):
        world.verifier().verify_catalog(pretty)


@pytest.mark.parametrize(
    "doc",
    [{"signed": {}}, {"signatures": []}, {"signed": [], "signatures": []}, [], "x"],
)
def test_not_an_envelope_refused(world, doc):
    with pytest.raises(FormatError):
        world.verifier().verify_catalog(canonical.encode(doc))


# --- thresholds ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world2():
    """Catalog and release roles need 2 signatures each."""
    return World(thresholds={"root": 2, "release": 2, "catalog": 2},
                 counts={"root": 3, "release": 3, "catalog": 3})  # fmt: skip


def test_below_threshold_catalog_refused(world2):
    cat = world2.catalog().to_dict()
    one = world2.sign(cat, "catalog", world2.keys["catalog"][:1])
    with pytest.raises(ThresholdError, match="threshold is 2"):
        world2.verifier().verify_catalog(one)
    two = world2.sign(cat, "catalog", world2.keys["catalog"][1:])
    assert world2.verifier().verify_catalog(two).version == 1


def test_below_threshold_manifest_refused(world2):
    m = world2.manifest()
    data = world2.sign(m.to_dict(), "release", world2.keys["release"][:1])
    with pytest.raises(ThresholdError):
        world2.verifier().verify_manifest(data, world2.entry(m, data), device_build="23B85")


def test_duplicate_signatures_from_one_key_count_once(world2):
    cat = world2.catalog().to_dict()
    one = canonical.decode(world2.sign(cat, "catalog", world2.keys["catalog"][:1]))
    sig = one["signatures"][0]
    doubled = envelope_with(canonical.encode(one), signatures=[sig, sig, dict(sig)])
    with pytest.raises(ThresholdError, match="1 valid signature"):
        world2.verifier().verify_catalog(doubled)


def test_unknown_key_does_not_help_reach_threshold(world2):
    cat = world2.catalog().to_dict()
    data = world2.sign(cat, "catalog", [world2.keys["catalog"][0], keys.generate()])
    with pytest.raises(ThresholdError):
        world2.verifier().verify_catalog(data)


def test_mixed_key_types_count_toward_threshold():
    w = World(thresholds={"root": 1, "release": 2, "catalog": 1},
              counts={"root": 1, "release": 2, "catalog": 1})  # fmt: skip
    w.keys["release"][1] = keys.generate("ed25519")  # one ECDSA, one Ed25519
    w.root = Root.build(w.keys, version=1, expires=NOW + timedelta(days=9), thresholds=w.thresholds)
    w.root_bytes = keys.sign_envelope(w.root.to_dict(), w.keys["root"])
    m, data, _e, cat_bytes = w.release()
    v = w.verifier()
    assert v.verify_manifest(data, v.verify_catalog(cat_bytes).entry(m.release_id),
                             device_build="23B85") == m  # fmt: skip


# --- freeze: expiry ------------------------------------------------------------------------


def test_expired_catalog_refused(world):
    cat_bytes = world.sign(world.catalog(expires_days=7).to_dict(), "catalog")
    v = world.verifier(now=NOW + timedelta(days=7))  # exactly at expiry: expired
    with pytest.raises(ExpiredMetadata, match="catalog version 1 expired"):
        v.verify_catalog(cat_bytes)
    ok = world.verifier(now=NOW + timedelta(days=7) - timedelta(seconds=1))
    assert ok.verify_catalog(cat_bytes).version == 1


def test_expired_manifest_refused(world):
    _m, data, e, _ = world.release(expires_days=30)
    v = world.verifier(now=NOW + timedelta(days=31))
    with pytest.raises(ExpiredMetadata, match=r"manifest of 26.1 \(a\) expired"):
        v.verify_manifest(data, e, device_build="23B85")


def test_expired_trusted_root_refused(world):
    with pytest.raises(ExpiredMetadata, match="trusted root"):
        world.verifier(now=NOW + timedelta(days=366))
    # allowed for rotation only: catalogs are still refused under an expired root
    v = world.verifier(now=NOW + timedelta(days=366), allow_expired_root=True)
    _, _, _, cat_bytes = world.release()
    with pytest.raises(ExpiredMetadata, match="trusted root"):
        v.verify_catalog(cat_bytes)


# --- rollback -----------------------------------------------------------------------------------


def test_catalog_rollback_refused(world):
    old = world.sign(world.catalog(version=4).to_dict(), "catalog")
    v = world.verifier()
    with pytest.raises(RollbackAttack, match="version 4 is older than version 5"):
        v.verify_catalog(old, min_version=5)
    assert v.verify_catalog(old, min_version=4).version == 4  # same version: fine


def test_manifest_rollback_refused(world):
    m, data, e, _ = world.release(sequence=3)
    v = world.verifier()
    with pytest.raises(RollbackAttack, match="sequence 3"):
        v.verify_manifest(data, e, device_build="23B85", min_sequence=4)
    assert v.verify_manifest(data, e, device_build="23B85", min_sequence=3) == m


# --- mix-and-match, wrong software ------------------------------------------------------------


def test_release_for_another_build_refused(world):
    m, data, e, _ = world.release(builds=("23B85", "23B86"))
    v = world.verifier()
    assert v.verify_manifest(data, e, device_build="23B86") == m
    with pytest.raises(WrongTarget, match="not to this device's build 23C55"):
        v.verify_manifest(data, e, device_build="23C55")


def test_release_patching_a_component_the_device_lacks_refused(world):
    _m, data, e, _ = world.release(names=("webkit", "mediaserver"))
    with pytest.raises(WrongTarget, match="mediaserver"):
        world.verifier().verify_manifest(
            data, e, device_build="23B85", device_components={"webkit", "libsystem"}
        )


def test_component_lookup_of_absent_component_is_wrongtarget(world):
    with pytest.raises(WrongTarget):
        world.manifest().component("kernel")


def test_manifest_of_another_release_behind_genuine_entry_refused(world):
    """A catalog entry for (a) that points at (b)'s genuine manifest bytes."""
    mb = world.manifest(release_id="26.1 (b)", sequence=2)
    data_b = world.sign(mb.to_dict(), "release")
    ma = world.manifest(release_id="26.1 (a)", sequence=2)
    entry_a = replace(world.entry(ma, data_b), manifest_path=manifest_relpath("26.1 (a)"))
    with pytest.raises(WrongTarget, match=r"for release 26.1 \(b\)"):
        world.verifier().verify_manifest(data_b, entry_a, device_build="23B85")


@pytest.mark.parametrize(
    "change",
    [{"sequence": 7}, {"builds": ("23B85", "23B99")}, {"published": "2020-01-01T00:00:00Z"}],
)
def test_manifest_disagreeing_with_its_catalog_entry_refused(world, change):
    _m, data, e, _ = world.release()
    with pytest.raises(WrongTarget, match="the catalog says"):
        world.verifier().verify_manifest(data, replace(e, **change), device_build="23B85")


def test_wrong_type_field_refused():
    """One key trusted for both roles: a manifest presented as the catalog is refused."""
    w = World(counts={"root": 1, "release": 1, "catalog": 1},
              thresholds={"root": 1, "release": 1, "catalog": 1})  # fmt: skip
    shared = keys.generate()
    w.keys["release"] = w.keys["catalog"] = [shared]
    w.root = Root.build(w.keys, version=1, expires=NOW + timedelta(days=9))
    w.root_bytes = keys.sign_envelope(w.root.to_dict(), w.keys["root"])
    _m, data, e, cat_bytes = w.release()
    v = w.verifier()
    with pytest.raises(FormatError, match="expected _type 'catalog', found 'release'"):
        v.verify_catalog(data)
    cat_e = replace(e, manifest_sha256=hashlib.sha256(cat_bytes).hexdigest(),
                    manifest_size=len(cat_bytes))  # fmt: skip
    with pytest.raises(FormatError, match="expected _type 'release', found 'catalog'"):
        v.verify_manifest(cat_bytes, cat_e, device_build="23B85")
    with pytest.raises(FormatError, match="expected _type 'root'"):
        Verifier(keys.sign_envelope(w.catalog().to_dict(), w.keys["root"]), now=NOW)


# --- endless data / substitution: sizes and digests ---------------------------------------------


def test_manifest_longer_than_catalog_says_refused(world):
    _m, data, e, _ = world.release()
    with pytest.raises(TargetMismatch, match="bytes; the catalog says"):
        world.verifier().verify_manifest(data + b" " * 10, e, device_build="23B85")


def test_manifest_substituted_same_size_refused(world):
    _m, data, e, _ = world.release()
    i = data.index(b'"sequence":1') + len(b'"sequence":')
    other = data[:i] + b"2" + data[i + 1 :]  # same length, one field changed
    assert len(other) == len(data)
    with pytest.raises(TargetMismatch, match="SHA-256"):
        world.verifier().verify_manifest(other, e, device_build="23B85")


def test_oversized_catalog_refused_before_parsing(world):
    with pytest.raises(FormatError, match="limit"):
        world.verifier().verify_catalog(b" " * (MAX_CATALOG_SIZE + 1))


def test_patch_size_or_digest_mismatch_refused(world):
    comp = world.manifest().component("webkit")
    body = b"26.1 (a)/webkit"
    check_patch(comp, len(body), hashlib.sha256(body).digest())  # the genuine patch passes
    with pytest.raises(TargetMismatch, match="bytes; the manifest says"):
        check_patch(comp, len(body) + 1, hashlib.sha256(body + b"x").digest())  # endless data
    with pytest.raises(TargetMismatch, match="SHA-256"):
        check_patch(comp, len(body), hashlib.sha256(b"26.1 (a)/webkiT").digest())
    v = world.verifier()
    with pytest.raises(TargetMismatch):
        v.check_patch(comp, 0, b"")


def test_image_size_or_root_hash_mismatch_refused(world):
    comp = world.manifest().component("libsystem")
    root = bytes.fromhex(comp.target.root_hash)
    check_image(comp.target, comp.target.size, root)
    with pytest.raises(TargetMismatch, match="bytes"):
        check_image(comp.target, comp.target.size + 4096, root)
    with pytest.raises(TargetMismatch, match="root hash"):
        check_image(comp.target, comp.target.size, bytes(32))


# --- withdrawal --------------------------------------------------------------------------------


def test_withdrawn_release_refused(world):
    _m, data, e, _ = world.release()
    cat = world.sign(world.catalog([replace(e, withdrawn=True)], version=2).to_dict(), "catalog")
    v = world.verifier()
    c = v.verify_catalog(cat, min_version=1)
    assert c.latest("23B85") is None
    assert c.latest("23B85", include_withdrawn=True).release_id == "26.1 (a)"
    with pytest.raises(WithdrawnRelease, match="withdrawn"):
        v.verify_manifest(data, c.entry("26.1 (a)"), device_build="23B85")


# --- key compromise: rotation and revocation --------------------------------------------------


def rotate(world, new_keys, signers, *, version=2, thresholds=None, expires_days=365):
    root = Root.build(new_keys, version=version, expires=NOW + timedelta(days=expires_days),
                      thresholds=thresholds or world.thresholds)  # fmt: skip
    return root, keys.sign_envelope(root.to_dict(), signers)


def test_root_rotation_accepted_with_both_thresholds(world):
    new_root_keys = [keys.generate() for _ in range(3)]
    new_keys = {**world.keys, "root": new_root_keys}
    root2, data = rotate(world, new_keys, world.keys["root"][:2] + new_root_keys[1:])
    v = world.verifier()
    assert v.update_root(data).version == 2
    assert v.root == root2
    assert v.rotated_roles == {"root"}


def test_rotation_without_old_root_threshold_refused(world):
    new_root_keys = [keys.generate() for _ in range(3)]
    new_keys = {**world.keys, "root": new_root_keys}
    _, data = rotate(world, new_keys, world.keys["root"][:1] + new_root_keys)
    with pytest.raises(ThresholdError, match="keys of root version 1"):
        world.verifier().update_root(data)


def test_rotation_without_new_root_threshold_refused(world):
    """The old keys alone cannot hand the root to keys that never signed it."""
    new_root_keys = [keys.generate() for _ in range(3)]
    _, data = rotate(world, {**world.keys, "root": new_root_keys}, world.keys["root"])
    with pytest.raises(SignatureError, match="its own keys"):
        world.verifier().update_root(data)


def test_rotation_by_attacker_keys_only_refused(world):
    evil = [keys.generate() for _ in range(3)]
    _, data = rotate(world, {**world.keys, "root": evil}, evil)
    with pytest.raises(SignatureError, match="not trusted for role root"):
        world.verifier().update_root(data)


def test_rotation_version_must_be_next(world):
    v = world.verifier()
    _, same = rotate(world, world.keys, world.keys["root"], version=1)
    with pytest.raises(RollbackAttack):
        v.update_root(same)
    _, skip = rotate(world, world.keys, world.keys["root"], version=3)
    with pytest.raises(MetadataError, match="expected 2"):
        v.update_root(skip)
    _, two = rotate(world, world.keys, world.keys["root"], version=2)
    v.update_root(two)
    with pytest.raises(RollbackAttack):  # replaying version 2 again
        v.update_root(two)


def test_revoked_release_key_refused_after_rotation(world):
    """Release key 0 is compromised: root v2 drops it; what it signs is refused."""
    compromised, kept = world.keys["release"]
    new_keys = {**world.keys, "release": [kept]}
    _, root2 = rotate(world, new_keys, world.keys["root"])
    m = world.manifest()
    forged = world.sign(m.to_dict(), "release", [compromised])
    e = world.entry(m, forged)
    v = world.verifier()
    assert v.verify_manifest(forged, e, device_build="23B85") == m  # before: accepted
    v.update_root(root2)
    assert v.rotated_roles == {"release"}
    with pytest.raises(SignatureError, match="not trusted for role release"):
        v.verify_manifest(forged, e, device_build="23B85")
    good = world.sign(m.to_dict(), "release", [kept])
    assert v.verify_manifest(good, world.entry(m, good), device_build="23B85") == m


def test_revoked_root_key_cannot_sign_the_next_root(world):
    r0, r1, r2 = world.keys["root"]
    fresh = keys.generate()
    keys2 = {**world.keys, "root": [r1, r2, fresh]}  # r0 revoked
    _, root2 = rotate(world, keys2, [r0, r1, r2, fresh])
    v = world.verifier()
    v.update_root(root2)
    # attacker holding the revoked r0 and a still-valid r1 cannot make v3:
    # r0 no longer counts, so only 1 of the 2 needed signatures is valid
    evil = [keys.generate(), keys.generate()]
    _, root3 = rotate(world, {**world.keys, "root": [r0, *evil]}, [r0, r1, *evil], version=3)
    with pytest.raises(ThresholdError, match="1 valid signature"):
        v.update_root(root3)
    # with r0 alone (plus the attacker's own keys) nothing counts at all
    _, root3b = rotate(world, {**world.keys, "root": [r0, *evil]}, [r0, *evil], version=3)
    with pytest.raises(SignatureError, match="not trusted for role root"):
        v.update_root(root3b)


def test_rotated_catalog_key_lets_device_recover_from_fast_forward(world):
    """A stolen catalog key signs version 10**9; after rotating the catalog key the
    device drops that floor (rotated_roles) and accepts the vendor's real catalog."""
    stolen = world.keys["catalog"][0]
    ff = world.sign(world.catalog(version=10**9).to_dict(), "catalog", [stolen])
    v = world.verifier()
    floor = v.verify_catalog(ff).version
    new_cat = [keys.generate()]
    _, root2 = rotate(world, {**world.keys, "catalog": new_cat}, world.keys["root"])
    v.update_root(root2)
    assert "catalog" in v.rotated_roles
    with pytest.raises(SignatureError):  # the stolen key's catalogs no longer count
        v.verify_catalog(ff)
    real = world.sign(world.catalog(version=3).to_dict(), "catalog", new_cat)
    with pytest.raises(RollbackAttack):
        v.verify_catalog(real, min_version=floor)
    assert v.verify_catalog(real, min_version=0).version == 3


def test_expired_trusted_root_can_rotate_to_a_fresh_one(world):
    later = NOW + timedelta(days=400)
    _, root2 = rotate(world, world.keys, world.keys["root"], expires_days=800)
    v = world.verifier(now=later, allow_expired_root=True)
    v.update_root(root2)
    cat = world.sign(
        Catalog(version=1, expires=format_time(later + timedelta(days=1))).to_dict(), "catalog"
    )
    assert v.verify_catalog(cat).version == 1


def test_rotation_chain_applies_in_order(world):
    v = world.verifier()
    cur = world.keys["root"]
    for n in range(2, 6):
        nxt = [keys.generate() for _ in range(3)]
        _, data = rotate(world, {**world.keys, "root": nxt}, cur + nxt, version=n)
        v.update_root(data)
        cur = nxt
    assert v.root.version == 5


# --- malformed roots -------------------------------------------------------------------------


def _root_dict(world):
    return world.root.to_dict()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["roles"].pop("catalog"),
        lambda d: d["roles"].__setitem__("extra", {"keyids": [], "threshold": 1}),
        lambda d: d["roles"]["root"].__setitem__("threshold", 4),
        lambda d: d["roles"]["root"].__setitem__("threshold", 0),
        lambda d: d["roles"]["root"].__setitem__("threshold", True),
        lambda d: d["roles"]["release"]["keyids"].append("ab" * 32),
        lambda d: d["roles"]["release"]["keyids"].append(d["roles"]["release"]["keyids"][0]),
        lambda d: d.__setitem__("version", 0),
        lambda d: d.__setitem__("expires", "2027-01-01"),
        lambda d: d.__setitem__("spec_version", 2),
        lambda d: d.__setitem__("extra", 1),
        lambda d: d["keys"].__setitem__("ab" * 32, next(iter(d["keys"].values()))),
    ],
)
def test_malformed_root_refused(world, mutate):
    d = _root_dict(world)
    mutate(d)
    with pytest.raises(FormatError):
        Verifier(keys.sign_envelope(d, world.keys["root"]), now=NOW)


# --- property: no single-byte change of a genuine file is ever accepted -------------------------

_PROP_WORLD = World(counts={"root": 1, "release": 1, "catalog": 1},
                    thresholds={"root": 1, "release": 1, "catalog": 1})  # fmt: skip
_PROP_M, _PROP_DATA, _PROP_E, _PROP_CAT = _PROP_WORLD.release()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_any_byte_change_of_catalog_or_manifest_is_refused(data):
    which = data.draw(st.sampled_from(["catalog", "manifest"]))
    blob = _PROP_CAT if which == "catalog" else _PROP_DATA
    i = data.draw(st.integers(0, len(blob) - 1))
    b = data.draw(st.integers(0, 255).filter(lambda x: x != blob[i]))
    mutated = blob[:i] + bytes([b]) + blob[i + 1 :]
    v = _PROP_WORLD.verifier()
    with pytest.raises(MetadataError):
        if which == "catalog":
            v.verify_catalog(mutated)
        else:  # even with a catalog entry that matches the mutated bytes
            v.verify_manifest(mutated, _PROP_WORLD.entry(_PROP_M, mutated), device_build="23B85")
