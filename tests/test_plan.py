"""The agent's pure planner as a table: catalog + device + policy -> one decision per release."""

from __future__ import annotations

import hashlib

import pytest

from bsipatch.agent.plan import DeviceView, check_manual, plan
from bsipatch.agent.policy import AutoInstallDecision, Policy
from bsipatch.errors import RollbackAttack, WithdrawnRelease, WrongTarget
from bsipatch.trust.manifest import SealRef
from bsipatch.trust.releases import Catalog, ComponentSpec, PatchInfo, Release

BUILD = "23B85"


def seal(tag: str) -> SealRef:
    return SealRef(
        root_hash=(tag.encode().hex() * 64)[:64],
        salt="00" * 32,
        size=4096,
        sha256=hashlib.sha256(tag.encode()).hexdigest(),
    )


def release(letter: str, seq: int, *, withdrawn: bool = False, build: str = BUILD,
            comps: tuple[str, ...] = ("webkit",)) -> tuple[Release, list[PatchInfo]]:  # fmt: skip
    specs, patches = {}, []
    for c in comps:
        path = f"patches/{c}/{letter}"
        patches.append(
            PatchInfo(
                path, c, seal(f"{c}-base"), seal(f"{c}-{letter}"), 100, "ab" * 32, f"targets/{path}"
            )
        )
        specs[c] = ComponentSpec("relaunch", seal(f"{c}-base"), seal(f"{c}-{letter}"), (path,))
    r = Release(f"26.1 ({letter})", "26.1", (build,), f"{build}{letter}",
                f"2026-11-2{seq}T00:00:00Z", seq, withdrawn, specs)  # fmt: skip
    return r, patches


def catalog(*rels: tuple[Release, list[PatchInfo]]) -> Catalog:
    patches = {p.path: p for _, ps in rels for p in ps}
    return Catalog(7, "2027-01-01T00:00:00Z", tuple(r for r, _ in rels), patches)


ON = AutoInstallDecision(True, "user", "user setting auto-install = on")
OFF = AutoInstallDecision(False, "user", "user setting auto-install = off")
A, B, C = release("a", 1), release("b", 2), release("c", 3)
AW, BW = release("a", 1, withdrawn=True), release("b", 2, withdrawn=True)
OTHER = release("z", 4, build="22Z99")
LIBSYS = release("d", 4, comps=("libsys",))


def dev(active: str | None = None, chain: tuple[str, ...] = (), floor: int = 0,
        removed: tuple[str, ...] = ()) -> DeviceView:  # fmt: skip
    return DeviceView("26.1", BUILD, active, chain, ("webkit",), floor, removed)


# (name, catalog, device, auto, policy, expected codes by letter, install, step back (how, to))
CASES = [
    ("fresh device installs newest", [A, B], dev(), ON, None,
     {"a": "superseded", "b": "install"}, "26.1 (b)", None),
    ("auto off defers", [A], dev(), OFF, None, {"a": "deferred"}, None, None),
    ("active is active", [A], dev("26.1 (a)", ("26.1 (a)",), 1), ON, None,
     {"a": "active"}, None, None),
    ("newer installs over active", [A, B], dev("26.1 (a)", ("26.1 (a)",), 1), ON, None,
     {"a": "active", "b": "install"}, "26.1 (b)", None),
    ("older than active is not newer", [A, B], dev("26.1 (b)", ("26.1 (b)",), 2), ON, None,
     {"a": "not_newer", "b": "active"}, None, None),
    ("below the floor after uninstall", [A, B], dev(None, (), 2, ("26.1 (b)",)), ON, None,
     {"a": "below_floor", "b": "removed"}, None, None),
    ("withdrawn skipped", [A, BW], dev(), ON, None,
     {"a": "install", "b": "withdrawn"}, "26.1 (a)", None),
    ("wrong build skipped", [A, OTHER], dev(), ON, None,
     {"a": "install", "z": "wrong_build"}, "26.1 (a)", None),
    ("component the device lacks rejected", [A, LIBSYS], dev(), ON, None,
     {"a": "install", "d": "rejected"}, "26.1 (a)", None),
    ("policy forbids", [A], dev(), ON, {"PinnedRelease": "26.1 (q)"},
     {"a": "policy"}, None, None),
    ("withdrawn active steps back by rollback", [A, BW],
     dev("26.1 (b)", ("26.1 (a)", "26.1 (b)"), 2), ON, None,
     {"a": "step_back_target", "b": "active_withdrawn"}, None, ("rollback", "26.1 (a)")),
    ("withdrawn active steps back by install", [A, BW], dev("26.1 (b)", ("26.1 (b)",), 2), ON,
     None, {"a": "step_back_target", "b": "active_withdrawn"}, None, ("install", "26.1 (a)")),
    ("withdrawn only release goes to base", [AW], dev("26.1 (a)", ("26.1 (a)",), 1), ON, None,
     {"a": "active_withdrawn"}, None, ("uninstall", None)),
    ("withdrawn active with auto off stays", [A, BW], dev("26.1 (b)", ("26.1 (b)",), 2), OFF,
     None, {"a": "not_newer", "b": "active_withdrawn"}, None, None),
    ("withdrawn active but newer exists installs it", [A, BW, C],
     dev("26.1 (b)", ("26.1 (b)",), 2), ON, None,
     {"a": "not_newer", "b": "active_withdrawn", "c": "install"}, "26.1 (c)", None),
]  # fmt: skip


@pytest.mark.parametrize(
    "cat, device, auto, policy, codes, install, step", [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)  # fmt: skip
def test_plan_table(cat, device, auto, policy, codes, install, step):
    pol = Policy.from_json(policy) if policy else Policy()
    p = plan(catalog(*cat), device, policy=pol, auto=auto)
    got = {d.release_id[-2]: d.code for d in p.decisions}
    assert got == codes
    assert (p.install.release_id if p.install else None) == install
    assert ((p.step_back.how, p.step_back.to_id) if p.step_back else None) == step
    assert all(d.reason for d in p.decisions)


def test_plan_picks_the_patch_from_the_active_image():
    """N->1: with two patches for (b), the one from (a)'s image is chosen on a device on (a)."""
    a, pa = A
    b, pb = B
    extra = PatchInfo("patches/webkit/a-to-b", "webkit", seal("webkit-a"), seal("webkit-b"), 50,
                      "cd" * 32, "targets/patches/webkit/x.a-to-b")  # fmt: skip
    b2 = Release(b.release_id, "26.1", b.builds, b.supplemental_build, b.published, 2, False,
                 {"webkit": ComponentSpec("relaunch", seal("webkit-base"), seal("webkit-b"),
                                          ("patches/webkit/b", extra.path))})  # fmt: skip
    cat = catalog((a, pa), (b2, [*pb, extra]))
    on_a = plan(cat, dev("26.1 (a)", ("26.1 (a)",), 1), policy=Policy(), auto=ON)
    on_base = plan(cat, dev(), policy=Policy(), auto=ON)
    assert on_a.install.component("webkit").patch.size == 50
    assert on_base.install.component("webkit").patch.size == 100


def test_manual_install_checks_floor_withdrawal_and_build():
    cat = catalog(A, BW, OTHER)
    with pytest.raises(RollbackAttack, match="--allow-older"):
        check_manual(cat, "26.1 (a)", dev(None, (), 2), allow_older=False)
    r, m = check_manual(cat, "26.1 (a)", dev(None, (), 2), allow_older=True)
    assert m.release_id == r.release_id == "26.1 (a)"
    with pytest.raises(WithdrawnRelease):
        check_manual(cat, "26.1 (b)", dev(), allow_older=True)
    with pytest.raises(WrongTarget, match="not to this device's build"):
        check_manual(cat, "26.1 (z)", dev(), allow_older=True)
    with pytest.raises(WrongTarget, match="lists no release"):
        check_manual(cat, "26.1 (q)", dev(), allow_older=True)
