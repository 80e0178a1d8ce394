"""Power-cut crash states of every preboot operation, recovered by ``bsipatch boot`` and checked.

For each scenario (install, rollback, uninstall, os-update, boot, gc, health confirmation
and fallback, the agent's state writes): record the operation's system calls with strace
(:mod:`crashexplore`), prove the recording complete by replaying it and comparing with
the real result, build every crash state the persistence model allows (``alice``:
the conservative model; ``writeback``: ext4 ``data=writeback``), and for each state:
materialise it in a fresh directory, run ``bsipatch boot`` and check that

* every image a new open gets verifies against its seal, and all come from one
  selection (one release or the base images), the one before or after the operation;
* ``state.json``, the journal, ``verified.json``, leaf-cache entries, the agent's files
  and every referenced release/base description parse; no transaction is open;
* no temporary file, staging or trash entry is left anywhere;
* the next install succeeds (and leaves the same clean state).

By default each scenario checks an evenly spaced sample of at most
``BSIPATCH_EXPLORE_STATES`` (default 12) states per model (about 3 minutes for this file
on a 2-core machine under a load average of 17); ``BSIPATCH_EXPLORE=full`` checks every state
(``pytest -m crash tests/test_crash_explore.py``: see docs/preboot.md for the counts).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import crashexplore as ce
import crashhelper as ch
from conftest import require_tool

from bsipatch.cli.main import main as cli_main
from bsipatch.device import health
from bsipatch.device import install as inst
from bsipatch.device.preboot import Preboot, seal_from_record

pytestmark = pytest.mark.crash

FULL = os.environ.get("BSIPATCH_EXPLORE", "") == "full"
SAMPLE = int(os.environ.get("BSIPATCH_EXPLORE_STATES", "12"))
TEMP_SUFFIXES = (".tmp", ".bsipatch-tmp", ".partial")

# name: (setup steps, operation argv tail)
SCENARIOS: dict[str, tuple[list[str], list[str]]] = {
    "install-first": ([], ["install", "26.1 (a)"]),
    "install-second": (["26.1 (a)", "boot"], ["install", "26.1 (b)"]),
    "install-third-gc": (["26.1 (a)", "boot", "26.1 (b)"], ["install", "26.1 (c)"]),
    "rollback": (["26.1 (a)", "boot", "26.1 (b)"], ["rollback"]),
    "rollback-to-base": (["26.1 (a)"], ["rollback"]),
    "uninstall": (["26.1 (a)", "boot", "26.1 (b)"], ["uninstall"]),
    "boot": (["26.1 (a)"], ["boot"]),
    "os-update": (["26.1 (a)", "boot"], ["os_update"]),
    "agent-state": (["26.1 (a)"], ["agent_state"]),
    "health-confirm": (["26.1 (a)", "boot"], ["confirm"]),
    # the 4th boot of an unconfirmed release falls back (to the base images)
    "fallback-boot": (["26.1 (a)", "boot", "boot", "boot"], ["boot"]),
    # the 3rd failed launch of webkit falls back from 26.1 (b) to 26.1 (a)
    "fallback-report": (
        ["26.1 (a)", "boot", "confirm", "26.1 (b)", "fail:webkit", "fail:webkit"],
        ["report_failed", "webkit"],
    ),
}


@pytest.fixture(scope="module")
def strace() -> str:
    """The recorder (Debian ``strace``): skipped locally without it, a failure in CI."""
    return require_tool("strace")


@pytest.fixture(scope="module")
def world(strace: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return ch.make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def shm() -> Iterator[Path]:
    """Where crash states are materialised: tmpfs when there is one (fast)."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix="bsipatch-explore-", dir=base))
    try:
        yield d
    finally:
        ce.fresh_dir(d.parent, d.name)


def _boot(path: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cli_main(["boot", "--preboot", str(path)])
    assert rc == 0, f"bsipatch boot failed: {out.getvalue()}"


def snapshot(pb: Preboot) -> dict[str, str]:
    """SHA-256 of what a new open of each component gets; each checked against its seal."""
    from bsipatch.seal.tree import verify_image

    out = {}
    dirs = set()
    for name in sorted(pb.components()):
        path = pb.component_path(name)
        dirs.add(path.parent)
        data = path.read_bytes()
        verify_image(data, seal_from_record(pb.seal_record(path.parent, name)))
        out[name] = hashlib.sha256(data).hexdigest()
    assert len(dirs) == 1, f"after boot the components come from several places: {dirs}"
    return out


def check_files(pb: Preboot) -> None:
    """Every state file parses, nothing is open, nothing temporary or unreferenced is left."""
    state = pb.read_state()
    assert pb.journal.pending() == []
    assert pb.journal.path.read_bytes() == b"", "journal not emptied"
    for p in pb.path.rglob("*"):
        assert not p.name.endswith(TEMP_SUFFIXES), f"stray temporary file {p}"
    assert list(pb.staging_dir.iterdir()) == []
    assert list(pb.trash_dir.iterdir()) == []
    releases, bases = pb.referenced(state)
    assert {p.name for p in pb.releases_dir.iterdir()} == releases
    assert {f"base/{p.name}" for p in (pb.path / "base").iterdir()} == bases
    for b in bases:
        pb.os_info(b)
    for slug in releases:
        pb.release_info(slug)
    for d in [*(pb.path / b for b in bases), *(pb.releases_dir / s for s in releases)]:
        for seal in d.glob("*.seal.json"):
            seal_from_record(json.loads(seal.read_bytes()))
    t = state.get("tentative")
    assert t is None or t["release"] in state["chain"], "tentative record of another release"
    for f in state.get("fallen_back", []):
        assert {"release", "slug", "to", "reason", "time"} <= set(f), f
        assert not state["chain"] or f["slug"] != state["chain"][-1], "fell back, still active"
    verified = pb.path / "verified.json"
    if verified.exists():
        assert isinstance(json.loads(verified.read_bytes()), dict)
    for entry in (pb.path / "cache" / "leaves").glob("*"):
        with open(entry, "rb") as f:
            assert isinstance(json.loads(f.readline()), dict), entry
    for f in (pb.path / "agent").glob("*.json"):
        json.loads(f.read_bytes())


def _next_release(world: dict[str, Any], pb: Preboot) -> str | None:
    state = pb.read_state()
    for rid, m in world["releases"].items():
        if m["os_version"] != state["os"]["version"]:
            continue
        if not (pb.releases_dir / rid.replace(" (", "-").rstrip(")")).exists():
            return rid
    return None


def check_state(world: dict[str, Any], path: Path, expected: list[dict[str, str]]) -> None:
    """Recover one crash state with ``bsipatch boot`` and check every invariant."""
    _boot(path)
    pb = Preboot(path)
    now = snapshot(pb)
    assert now in expected, "images are neither the state before nor after the operation"
    check_files(pb)
    nxt = _next_release(world, pb)
    assert nxt is not None
    ch.install(world, pb, nxt)
    _boot(path)
    assert snapshot(Preboot(path)) == world["sha256"][nxt]
    check_files(Preboot(path))


def check_returned_is_durable(
    world: dict[str, Any], model: ce.Model, dest: Path, after: Path
) -> None:
    """A power cut just after the operation returned keeps all of it: it was durable."""
    ce.materialise(model, dest)
    _boot(dest)
    pb, ref = Preboot(dest), Preboot(after)
    assert snapshot(pb) == snapshot(ref), "a returned operation is not durable"
    for key in ("os", "chain", "booted"):
        assert pb.read_state()[key] == ref.read_state()[key], key
    for f in sorted((after / "agent").glob("*.json")):
        assert (dest / "agent" / f.name).read_bytes() == f.read_bytes(), f"{f.name} lost"
    check_files(pb)
    ce.fresh_dir(dest.parent, dest.name)


def prepare(world: dict[str, Any], path: Path, steps: list[str]) -> Path:
    pb = ch.create_preboot(world, path)
    for step in steps:
        if step == "boot":
            inst.boot(pb)
        elif step == "confirm":
            health.confirm(pb)
        elif step.startswith("fail:"):
            health.report(pb, step[5:], ok=False)
        else:
            ch.install(world, pb, step)
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def _sample(states: list[ce.CrashState]) -> list[ce.CrashState]:
    if FULL or len(states) <= SAMPLE:
        return states
    step = len(states) / SAMPLE
    return [states[int(i * step)] for i in range(SAMPLE)]


def explore(
    world: dict[str, Any], tmp: Path, shm: Path, steps: list[str], op: list[str]
) -> dict[str, Any]:
    """Record ``op`` after ``steps``, then check its crash states; return the counts."""
    world_json = str(Path(world["dir"]) / "world.json")
    template = prepare(world, tmp / "template", steps)
    # what boot makes of the state before and after the operation
    before = copy_tree(template, tmp / "before")
    _boot(before)
    expected = [snapshot(Preboot(before))]
    rec = copy_tree(template, tmp / "recorded")
    model0 = ce.load(rec)
    calls = ce.record([op[0], str(rec), world_json, *op[1:]], tmp / "trace")
    ops, final, used = ce.to_ops(calls, rec, model0)
    ce.compare_with_disk(final, rec)  # the recording holds every change
    after = copy_tree(rec, tmp / "after")
    _boot(after)
    expected.append(snapshot(Preboot(after)))
    counts: dict[str, Any] = {"calls": used, "ops": len(ops)}
    check_returned_is_durable(world, ce.durable_final(model0, ops), shm / "final", after)
    for model in ("alice", "writeback"):
        states = list(ce.crash_states(model0, ops, model))
        checked = _sample(states)
        for i, st in enumerate(checked):
            d = ce.fresh_dir(shm, f"s{i}")
            ce.materialise(st.model, d)
            try:
                check_state(world, d, expected)
            except BaseException as exc:
                raise AssertionError(f"{model} state {st.how} ({op}): {exc}") from exc
            ce.fresh_dir(shm, f"s{i}")
        counts[model] = {"states": len(states), "checked": len(checked)}
    return counts


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_crash_state_recovers(
    world: dict[str, Any], tmp_path: Path, shm: Path, scenario: str
) -> None:
    steps, op = SCENARIOS[scenario]
    counts = explore(world, tmp_path, shm, steps, op)
    assert counts["ops"] >= 3, counts
    assert counts["alice"]["states"] >= counts["ops"] // 2, counts
    report = os.environ.get("BSIPATCH_EXPLORE_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"scenario": scenario, **counts}) + "\n")


def test_replay_catches_a_missed_write(world: dict[str, Any], tmp_path: Path) -> None:
    """The completeness proof fails when one recorded write is left out of the replay."""
    template = prepare(world, tmp_path / "template", [])
    model0 = ce.load(template)
    calls = ce.record(
        ["install", str(template), str(Path(world["dir"]) / "world.json"), "26.1 (a)"],
        tmp_path / "trace",
    )
    _ops, final, _ = ce.to_ops(calls, template, model0)
    ce.compare_with_disk(final, template)

    def target(c: ce.Call) -> str:
        return ce._fd(c.args[0])[1] or ""

    writes = [i for i, c in enumerate(calls) if c.name in ("write", "pwrite64")]
    state = [i for i in writes if ".state.json." in target(calls[i])]
    image = [i for i in writes if ".webkit.img." in target(calls[i])]
    assert state and image, [target(calls[i]) for i in writes]
    for drop in (state[-1], image[-1]):
        partial = calls[:drop] + calls[drop + 1 :]
        _, model, _ = ce.to_ops(partial, template, model0)
        with pytest.raises(AssertionError):
            ce.compare_with_disk(model, template)


def test_crash_states_follow_the_persistence_model() -> None:
    """Known answers of the state builder on a hand-written operation list."""
    m = ce.Model()
    m.new("d", 0o755)
    ops: list[ce.Op] = [
        ("creat", 0, ".t.tmp", 1, "f", 0o644),
        ("write", 1, 0, b"x" * 9000),
        ("fsync", 1),
        ("rename", 0, ".t.tmp", 0, "t", 1),
        ("fsync", 0),
    ]
    assert ce.durability(ops) == [4, 2, 2, 4, 4]

    def trees(model: str) -> set[tuple[tuple[str, int], ...]]:
        out = set()
        for st in ce.crash_states(m, ops, model):
            out.add(tuple((p, len(st.model.inodes[i].data)) for p, i in st.model.walk()))
        return out

    alice = trees("alice")
    assert ((".t.tmp", 9000),) in alice
    assert ((".t.tmp", 4096),) in alice  # torn at a block boundary before the fsync
    assert (("t", 9000),) in alice
    assert () in alice  # nothing persisted
    assert not any(t == (("t", 4096),) for t in alice)  # the rename waits for the data
    wb = set()
    for st in ce.crash_states(m, ops, "writeback"):
        for p, i in st.model.walk():
            wb.add((p, bytes(st.model.inodes[i].data[:1])))
    assert (".t.tmp", b"\0") in wb  # size persisted, data not
    assert ("t", b"x") in wb and ("t", b"\0") not in wb


def test_boot_removes_temporary_files_a_crash_left(world: dict[str, Any], tmp_path: Path) -> None:
    """Regression (explorer, install-first): a power cut during an atomic write left
    ``.verified.json.*.tmp`` (and the agent's ``.state.json.*.tmp``) for ever."""
    pb = ch.create_preboot(world, tmp_path / "pb")
    ch.agent_state(pb)
    leftovers = [
        pb.path / ".verified.json.k2j3h4.tmp",
        pb.path / ".state.json.a1b2c3.tmp",
        pb.path / "agent" / ".state.json.zz9y8x.tmp",
    ]
    for p in leftovers:
        p.write_bytes(b'{"half')
    keep = pb.path / "agent" / "state.json"
    before = keep.read_bytes()
    _boot(pb.path)
    assert [p for p in leftovers if p.exists()] == []
    assert keep.read_bytes() == before
    check_files(Preboot(pb.path))


def test_agent_directory_creation_is_durable(world: dict[str, Any], tmp_path: Path) -> None:
    """Regression (explorer, agent-state): the agent created ``agent/`` without an fsync of
    the preboot directory, so a power cut after it stored its state (which holds the
    trusted TUF metadata) and settings could lose them."""
    template = prepare(world, tmp_path / "template", [])
    model0 = ce.load(template)
    calls = ce.record(
        ["agent_state", str(template), str(Path(world["dir"]) / "world.json")],
        tmp_path / "trace",
    )
    ops, final, _ = ce.to_ops(calls, template, model0)
    ce.compare_with_disk(final, template)
    durable = ce.durable_final(model0, ops)
    agent = durable.lookup(["agent"])
    assert agent is not None, "agent/ may vanish after a power cut"
    assert {"settings.json", "state.json"} <= set(durable.inodes[agent].entries)
