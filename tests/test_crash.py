"""Power-cut safety: kill install/rollback/uninstall/boot/gc/os-update at every named point.

For each operation the harness first runs it once in a child process with
``BSIPATCH_CRASH_TRACE`` to list every crash point it passes (``name#N``), then, for each
point, starts from a fresh copy of the same preboot, runs the operation in a child with
``BSIPATCH_CRASH_AT=name#N`` (the child SIGKILLs itself there), runs recovery in a new
process, and checks:

* every image a new open gets verifies against its stored seal;
* the images are all the old ones or all the new ones, never a mix;
* no staging, trash or open journal entry is left behind;
* running the operation again completes and gives the new images.

Small images (64-160 KiB) keep the whole file well under a minute.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import crashhelper as ch

from bsipatch import _crashpoints
from bsipatch.device import install as inst
from bsipatch.device.preboot import Preboot

pytestmark = pytest.mark.crash

HELPER = str(Path(__file__).parent / "crashhelper.py")


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """Where the preboot copies live: tmpfs (/dev/shm) when there is one.

    A SIGKILL loses nothing the kernel already has, so the crash tests do not need a
    real disk; on tmpfs their many fsyncs cost nothing, which keeps the file fast on a
    busy machine.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="bsipatch-crash-", dir=shm))
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        yield tmp_path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return ch.make_world(tmp_path_factory.mktemp("world"))


class Result:
    """Exit of a child: ``returncode`` (negative signal number if killed) and ``stderr``."""

    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr


def run_subprocess(op: list[str], env_extra: dict[str, str]) -> Result:
    """Run one operation in a fresh interpreter (``python tests/crashhelper.py ...``)."""
    env = dict(os.environ)
    env.pop("BSIPATCH_CRASH_AT", None)
    env.pop("BSIPATCH_CRASH_TRACE", None)
    env.update(env_extra)
    r = subprocess.run(
        [sys.executable, HELPER, *op], env=env, capture_output=True, text=True, timeout=60
    )
    return Result(r.returncode, r.stderr)


def run_child(op: list[str], env_extra: dict[str, str]) -> Result:
    """Run one operation in a forked child (bsipatch already imported: fast).

    The child starts with no crash-point hits counted and its own environment, exactly
    like a fresh process as far as the crash points are concerned.
    """
    with tempfile.NamedTemporaryFile(prefix="crash-err-", delete=False) as f:
        errpath = f.name
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.environ.pop("BSIPATCH_CRASH_AT", None)
            os.environ.pop("BSIPATCH_CRASH_TRACE", None)
            os.environ.update(env_extra)
            _crashpoints._hits.clear()
            code = ch.main(op)
        except BaseException:
            with open(errpath, "w") as err:
                traceback.print_exc(file=err)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    stderr = Path(errpath).read_text()
    os.unlink(errpath)
    return Result(rc, stderr)


def copy_preboot(src: Path, dst: Path) -> Path:
    # cp -a keeps hard links, modes and times, as a real volume would have them
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def verify_dir(pb: Preboot, directory: Path) -> dict[str, str]:
    """Check every image in a base/release directory against its stored seal."""
    from bsipatch.device.preboot import seal_from_record
    from bsipatch.seal.tree import verify_image

    out = {}
    for name in sorted(pb.components()):
        data = (directory / f"{name}.img").read_bytes()
        # bytes, not the path: small images verify faster from memory
        verify_image(data, seal_from_record(pb.seal_record(directory, name)))
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def snapshot(pb: Preboot) -> dict[str, str]:
    """SHA-256 of what a new open of each component gets; checks each against its seal."""
    from bsipatch.device.preboot import seal_from_record
    from bsipatch.seal.tree import verify_image

    out = {}
    for name in sorted(pb.components()):
        path = pb.component_path(name)
        data = path.read_bytes()
        verify_image(data, seal_from_record(pb.seal_record(path.parent, name)))
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def assert_clean(pb: Preboot) -> None:
    assert pb.journal.pending() == []
    assert list(pb.staging_dir.iterdir()) == []
    assert list(pb.trash_dir.iterdir()) == []
    state = pb.read_state()
    releases, bases = pb.referenced(state)
    assert {p.name for p in pb.releases_dir.iterdir()} == releases
    assert {f"base/{p.name}" for p in (pb.path / "base").iterdir()} == bases
    # the active and booted selections are whole
    chain = state["chain"]
    verify_dir(pb, pb.selection_dir(state["os"]["base"], chain[-1] if chain else None))
    verify_dir(pb, pb.selection_dir(state["booted"]["base"], state["booted"]["release"]))


def prepare(world: dict, root: Path, steps: list[str]) -> Path:
    path = root / "template"
    pb = ch.create_preboot(world, path)
    for step in steps:
        if step == "boot":
            inst.boot(pb)
        else:
            ch.install(world, pb, step)
    return path


SCENARIOS = {
    # name: (setup steps, child op argv tail)
    "install-first": ([], ["install", "26.1 (a)"]),
    "install-second": (["26.1 (a)", "boot"], ["install", "26.1 (b)"]),
    "install-third-gc": (["26.1 (a)", "boot", "26.1 (b)"], ["install", "26.1 (c)"]),
    "rollback": (["26.1 (a)", "boot", "26.1 (b)"], ["rollback"]),
    "rollback-to-base": (["26.1 (a)"], ["rollback"]),
    "uninstall": (["26.1 (a)", "boot", "26.1 (b)"], ["uninstall"]),
    "boot": (["26.1 (a)"], ["boot"]),
    "os-update": (["26.1 (a)", "boot"], ["os_update"]),
}


def child_argv(op: list[str], path: Path, world: dict) -> list[str]:
    world_json = str(Path(world["dir"]) / "world.json")
    return [op[0], str(path), world_json, *op[1:]]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_crash_at_every_point_leaves_old_or_new(world: dict, workdir: Path, scenario: str) -> None:
    tmp_path = workdir
    steps, op = SCENARIOS[scenario]
    template = prepare(world, tmp_path, steps)
    old = snapshot(Preboot(template))

    # 1. a clean run, tracing every crash point passed
    clean = copy_preboot(template, tmp_path / "clean")
    trace = tmp_path / "trace.txt"
    # (in a fresh interpreter, so the points are those a real process passes)
    r = run_subprocess(child_argv(op, clean, world), {"BSIPATCH_CRASH_TRACE": str(trace)})
    assert r.returncode == 0, r.stderr
    new = snapshot(Preboot(clean))
    assert_clean(Preboot(clean))
    if scenario != "boot":
        assert new != old  # the operation changes what a new open gets
    points = [p for p in trace.read_text().split() if p]
    assert len(points) >= 5, points
    assert len(set(points)) == len(points)

    # 2. kill at each point, recover in a new process, check, redo
    outcomes = {"old": 0, "new": 0}
    for i, point in enumerate(points):
        work = copy_preboot(template, tmp_path / f"crash{i}")
        r = run_child(child_argv(op, work, world), {"BSIPATCH_CRASH_AT": point})
        assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr)
        r = run_child(["recover", str(work), str(Path(world["dir"]) / "world.json")], {})
        assert r.returncode == 0, (point, r.stderr)
        pb = Preboot(work)
        now = snapshot(pb)
        assert now in (old, new), f"mixed images after a crash at {point}"
        outcomes["old" if now == old else "new"] += 1
        assert_clean(pb)
        # the operation can be completed afterwards
        if now == old:
            r = run_child(child_argv(op, work, world), {})
            assert r.returncode == 0, (point, r.stderr)
            assert snapshot(Preboot(work)) == new, point
            assert_clean(Preboot(work))
        shutil.rmtree(work)
    if scenario != "boot":
        assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes


def test_crash_during_recovery_is_recovered(world: dict, workdir: Path) -> None:
    """A crash while recovering from a crash: recovery runs again and still ends whole."""
    tmp_path = workdir
    template = prepare(world, tmp_path, ["26.1 (a)", "boot"])
    old = snapshot(Preboot(template))
    world_json = str(Path(world["dir"]) / "world.json")
    for crash_at in ("install.renamed", "install.committed"):
        first = copy_preboot(template, tmp_path / f"first-{crash_at}")
        r = run_child(
            ["install", str(first), world_json, "26.1 (b)"], {"BSIPATCH_CRASH_AT": crash_at}
        )
        assert r.returncode == -signal.SIGKILL
        trace = tmp_path / f"rtrace-{crash_at}"
        probe = copy_preboot(first, tmp_path / f"probe-{crash_at}")
        r = run_child(["recover", str(probe), world_json], {"BSIPATCH_CRASH_TRACE": str(trace)})
        assert r.returncode == 0, r.stderr
        expected = snapshot(Preboot(probe))
        points = trace.read_text().split()
        if crash_at == "install.renamed":  # the uncommitted release directory is swept
            assert any(p.startswith("sweep.") for p in points), points
        for j, point in enumerate(points):
            work = copy_preboot(first, tmp_path / f"rec-{crash_at}-{j}")
            r = run_child(["recover", str(work), world_json], {"BSIPATCH_CRASH_AT": point})
            assert r.returncode == -signal.SIGKILL, point
            r = run_child(["recover", str(work), world_json], {})
            assert r.returncode == 0, r.stderr
            pb = Preboot(work)
            assert snapshot(pb) == expected
            assert_clean(pb)
            shutil.rmtree(work)
        if crash_at == "install.renamed":
            assert expected == old  # not committed: undone
        else:
            assert expected != old  # committed: finished


def test_torn_journal_record_counts_as_never_written(world: dict, tmp_path: Path) -> None:
    pb = ch.create_preboot(world, tmp_path / "pb")
    before = snapshot(pb)
    tx = pb.journal.begin("install", release="26.1-a")
    (pb.staging_dir / tx).mkdir()
    with open(pb.journal.path, "ab") as f:  # a half-written second record
        f.write(b'0123456789abcdef {"tx": "x", "pha')
    assert [p["tx"] for p in pb.journal.pending()] == [tx]
    report = pb.recover()
    assert report == [{"tx": tx, "op": "install", "outcome": "undone"}]
    assert snapshot(pb) == before
    assert_clean(pb)
    assert json.loads(pb.state_path.read_text())["chain"] == []


def test_crash_during_create_can_be_created_again(world: dict, workdir: Path) -> None:
    """Kill ``preboot init`` at each point: a new create then succeeds from scratch."""
    code = (
        "import json,sys\n"
        "sys.path.insert(0, sys.argv[3])\n"
        "import crashhelper as ch\n"
        "from pathlib import Path\n"
        "ch.create_preboot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))\n"
    )
    world_json = str(Path(world["dir"]) / "world.json")
    here = str(Path(__file__).parent)

    def create(path: Path, env: dict[str, str]) -> int:
        full = {k: v for k, v in os.environ.items() if not k.startswith("BSIPATCH_CRASH")}
        full.update(env)
        r = subprocess.run(
            [sys.executable, "-c", code, world_json, str(path), here], env=full, timeout=60
        )
        return r.returncode

    trace = workdir / "trace"
    assert create(workdir / "clean", {"BSIPATCH_CRASH_TRACE": str(trace)}) == 0
    points = trace.read_text().split()
    assert any(p.startswith("base.") for p in points), points
    for i, point in enumerate(points):
        path = workdir / f"pb{i}"
        assert create(path, {"BSIPATCH_CRASH_AT": point}) == -signal.SIGKILL, point
        pb = ch.create_preboot(world, path)
        assert snapshot(pb) == world["sha256"]["base"]
        assert_clean(pb)


def test_crash_during_agent_run_with_root_rotation(workdir: Path) -> None:
    """Kill the agent at every point of a run that follows a root rotation (new online and
    targets keys) and installs: its trusted state (metadata, floor) is the old or the new
    one, whole, and the next run in a fresh process completes."""
    from datetime import timedelta

    from httpserver import serve
    from tufworld import NOW, device, images, new_repo, publish

    from bsipatch.agent.executor import Agent
    from bsipatch.agent.state import AgentStore
    from bsipatch.trust import signers
    from bsipatch.trust.tufrepo import rotate_root

    imgs = images(workdir)
    repo, keys = new_repo(workdir)
    publish(repo, keys, imgs, "a", "a")
    pb = device(workdir, imgs)
    template = pb.path
    root1 = (repo / "metadata" / "1.root.json").read_bytes()
    with serve(repo) as srv:
        agent = Agent(pb, srv.url, trusted_root=root1)
        agent.set_auto_install(False)
        agent.check()
        agent.set_auto_install(True)
        new = signers.KeySet(
            {r: [signers.generate()] for r in ("targets", "snapshot", "timestamp")}
        )
        new.signers["root"] = keys.get("root")
        rotate_root(repo, keys, new, now=NOW + timedelta(minutes=1))
        old = snapshot(Preboot(template))
        world_json = workdir / "agent-world.json"
        world_json.write_text(json.dumps({"repo": srv.url}))
        op = ["agent-run", str(template), str(world_json)]

        clean = copy_preboot(template, workdir / "clean")
        trace = workdir / "trace.txt"
        r = run_subprocess([op[0], str(clean), op[2]], {"BSIPATCH_CRASH_TRACE": str(trace)})
        assert r.returncode == 0, r.stderr
        new_images = snapshot(Preboot(clean))
        points = [p for p in trace.read_text().split() if p]
        assert {"agent.check.verified#1", "agent.state.written#1", "agent.state.written#2"} <= set(
            points
        )
        # the agent's own writes, plus the first and last point of the install between them
        # (every install point is covered by test_crash_at_every_point_leaves_old_or_new)
        others = [p for p in points if not p.startswith("agent.")]
        chosen = [p for p in points if p.startswith("agent.")] + others[:1] + others[-1:]
        roots_seen = set()
        for i, point in enumerate(chosen):
            work = copy_preboot(template, workdir / f"agent-crash{i}")
            r = run_child([op[0], str(work), op[2]], {"BSIPATCH_CRASH_AT": point})
            assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr)
            assert run_child(["recover", str(work), op[2]], {}).returncode == 0
            state = AgentStore(work).state()  # parses: whole, never torn
            roots_seen.add(state.versions["root"])
            assert snapshot(Preboot(work)) in (old, new_images), point
            r = run_child([op[0], str(work), op[2]], {})
            assert r.returncode == 0, (point, r.stderr)
            state = AgentStore(work).state()
            assert state.versions["root"] == 2 and state.sequence == 1, point
            assert state.last_result is not None and state.last_result["ok"], point
            assert snapshot(Preboot(work)) == new_images, point
            shutil.rmtree(work)
    assert roots_seen == {1, 2}
