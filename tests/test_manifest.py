"""Release manifests: strict round trips; unknown, missing and mistyped fields refused."""

import copy
import hashlib
import json

import pytest

from bsipatch.errors import FormatError, WrongTarget
from bsipatch.trust.manifest import (
    ComponentRelease,
    Cve,
    PatchRef,
    ReleaseManifest,
    SealRef,
    format_time,
    parse_time,
    release_slug,
)


def h(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def sample_dict() -> dict:
    def comp(name, activation):
        return {
            "name": name,
            "activation": activation,
            "base": {
                "root_hash": h("b" + name),
                "salt": h("s"),
                "size": 8192,
                "sha256": h("image b" + name),
            },
            "target": {
                "root_hash": h("t" + name),
                "salt": "",
                "size": 12288,
                "sha256": h("image t" + name),
            },
            "patch": {"path": f"releases/26.1-a/{name}.bsipatch", "sha256": h(name), "size": 77},
            "cves": [
                {"id": "CVE-2026-43001", "description": "use-after-free in JIT"},
                {"id": "CVE-2026-1234567", "description": "Ünïcode déscription"},
            ],
        }

    return {
        "_type": "release",
        "spec_version": 1,
        "release_id": "26.1 (a)",
        "os_version": "26.1",
        "builds": ["23B85", "23B86"],
        "supplemental_build": "23B85a",
        "published": "2026-11-28T00:00:00Z",
        "sequence": 1,
        "expires": "2027-05-27T00:00:00Z",
        "components": [comp("webkit", "relaunch"), comp("libsystem", "reboot")],
    }


def test_round_trip_dict_and_canonical_bytes():
    d = sample_dict()
    m = ReleaseManifest.from_dict(d)
    assert m.to_dict() == d
    enc = json.dumps(d, sort_keys=True).encode()
    assert (
        json.dumps(ReleaseManifest.from_dict(json.loads(enc)).to_dict(), sort_keys=True).encode()
        == enc
    )
    assert m.extra_version == "(a)"
    assert m.slug == "26.1-a"
    assert m.builds == ("23B85", "23B86")
    assert m.component("webkit").activation == "relaunch"
    assert m.component("libsystem").base.size == 8192
    assert m.cves == ("CVE-2026-1234567", "CVE-2026-43001")
    assert m.published_at.isoformat() == "2026-11-28T00:00:00+00:00"


def test_component_absent_is_wrongtarget():
    with pytest.raises(WrongTarget, match="no component 'kernel'"):
        ReleaseManifest.from_dict(sample_dict()).component("kernel")


def _mutations():
    def setp(path, value):
        def f(d):
            obj = d
            for k in path[:-1]:
                obj = obj[k]
            obj[path[-1]] = value

        return f

    def delp(path):
        def f(d):
            obj = d
            for k in path[:-1]:
                obj = obj[k]
            del obj[path[-1]]

        return f

    c0 = ("components", 0)
    return {
        "unknown top-level field": setp(("extra",), 1),
        "missing sequence": delp(("sequence",)),
        "sequence as string": setp(("sequence",), "1"),
        "sequence as bool": setp(("sequence",), True),
        "sequence zero": setp(("sequence",), 0),
        "wrong _type": setp(("_type",), "catalog"),
        "spec_version 2": setp(("spec_version",), 2),
        "release id without letter": setp(("release_id",), "26.1"),
        "release id of other os": setp(("release_id",), "26.2 (a)"),
        "release id uppercase": setp(("release_id",), "26.1 (A)"),
        "builds empty": setp(("builds",), []),
        "builds as string": setp(("builds",), "23B85"),
        "build with slash": setp(("builds",), ["23B85/.."]),
        "duplicate build": setp(("builds",), ["23B85", "23B85"]),
        "published not utc": setp(("published",), "2026-11-28T00:00:00+01:00"),
        "published no time": setp(("published",), "2026-11-28"),
        "published impossible date": setp(("published",), "2026-02-30T00:00:00Z"),
        "expires before published": setp(("expires",), "2026-11-27T00:00:00Z"),
        "no components": setp(("components",), []),
        "component unknown field": setp((*c0, "extra"), 1),
        "component missing cves": delp((*c0, "cves")),
        "activation other": setp((*c0, "activation"), "logout"),
        "name with slash": setp((*c0, "name"), "../etc"),
        "name empty": setp((*c0, "name"), ""),
        "root hash short": setp((*c0, "base", "root_hash"), "ab" * 31),
        "root hash uppercase": setp((*c0, "base", "root_hash"), "AB" * 32),
        "salt odd hex": setp((*c0, "target", "salt"), "abc"),
        "salt too long": setp((*c0, "target", "salt"), "00" * 257),
        "size negative": setp((*c0, "target", "size"), -1),
        "size float-like str": setp((*c0, "target", "size"), "4096"),
        "seal extra field": setp((*c0, "base", "hash_algorithm"), "sha1"),
        "base image sha256 missing": delp((*c0, "base", "sha256")),
        "target image sha256 missing": delp((*c0, "target", "sha256")),
        "image sha256 short": setp((*c0, "target", "sha256"), "ab" * 31),
        "image sha256 uppercase": setp((*c0, "base", "sha256"), "AB" * 32),
        "image sha256 not str": setp((*c0, "base", "sha256"), 5),
        "patch path absolute": setp((*c0, "patch", "path"), "/etc/passwd"),
        "patch path traversal": setp((*c0, "patch", "path"), "releases/../../x"),
        "patch path backslash": setp((*c0, "patch", "path"), "releases\\x"),
        "patch path empty part": setp((*c0, "patch", "path"), "releases//x"),
        "patch size zero": setp((*c0, "patch", "size"), 0),
        "patch sha short": setp((*c0, "patch", "sha256"), "00"),
        "cve bad id": setp((*c0, "cves", 0, "id"), "CVE-26-1"),
        "cve description not str": setp((*c0, "cves", 0, "description"), 5),
        "cve description huge": setp((*c0, "cves", 0, "description"), "x" * 1001),
        "cve duplicated": setp((*c0, "cves", 1, "id"), "CVE-2026-43001"),
        "duplicate component": setp(("components", 1, "name"), "webkit"),
        "component not object": setp(("components",), ["webkit"]),
    }


@pytest.mark.parametrize("name", sorted(_mutations()))
def test_invalid_manifest_refused(name):
    d = copy.deepcopy(sample_dict())
    _mutations()[name](d)
    with pytest.raises(FormatError):
        ReleaseManifest.from_dict(d)


def test_not_a_dict_refused():
    for value in (None, [], "x", 1):
        with pytest.raises(FormatError):
            ReleaseManifest.from_dict(value)


def test_release_slug():
    assert release_slug("26.1 (a)") == "26.1-a"
    assert release_slug("26.1.2 (bc)") == "26.1.2-bc"
    for bad in ("26.1", "26.1 (a) ", "../x (a)", "26.1 (a/b)", 5):
        with pytest.raises(FormatError):
            release_slug(bad)


def test_time_helpers_round_trip_and_refuse_naive():
    from datetime import datetime, timedelta, timezone

    t = datetime(2026, 11, 28, 1, 2, 3, 999, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(t) == "2026-11-27T23:02:03Z"
    assert parse_time("2026-11-27T23:02:03Z") == t.replace(microsecond=0)
    with pytest.raises(ValueError):
        format_time(datetime(2026, 1, 1))


def test_sealref_to_seal_gives_the_seal_of_the_seal_module():
    seal_mod = pytest.importorskip("bsipatch.seal.tree")
    ref = SealRef(root_hash=h("r"), salt=h("s"), size=12345, sha256=h("image"))
    seal = ref.to_seal()
    assert isinstance(seal, seal_mod.Seal)
    assert seal.root_hash == bytes.fromhex(h("r")) and seal.salt == bytes.fromhex(h("s"))
    assert seal.data_size == 12345
    assert SealRef.from_seal(seal, bytes.fromhex(h("image"))) == ref
    assert SealRef.from_seal(seal, h("image")) == ref


def test_dataclasses_validate_when_built_in_python():
    with pytest.raises(FormatError):
        PatchRef(path="a/../b", sha256=h("x"), size=1)
    with pytest.raises(FormatError):
        Cve(id="nope", description="")
    ok = ComponentRelease(
        name="webkit",
        activation="relaunch",
        base=SealRef(h("a"), "", 1, h("ia")),
        target=SealRef(h("b"), "", 1, h("ib")),
        patch=PatchRef("releases/26.1-a/webkit.bsipatch", h("p"), 5),
        cves=[Cve("CVE-2026-0001", "x")],
    )
    assert isinstance(ok.cves, tuple)
