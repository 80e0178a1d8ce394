"""Matrix release builds (bsipatch.vendor): validation, Dask execution, failures, bytes.

The Dask tests run real LocalClusters of worker processes on 127.0.0.1 (one owned by
the build for ``--cluster local``, one owned by the test and reached as
``tcp://...`` so the test can kill a worker process mid-task).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from vendorhelp import NOW, NOW_TEXT, images, init_repo, keyset, matrix

from bsipatch.cli.main import main
from bsipatch.errors import BuildTaskError, MatrixError
from bsipatch.trust import publish
from bsipatch.vendor.build import build_matrix
from bsipatch.vendor.matrix import load_matrix

distributed = pytest.importorskip("distributed")


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a repository."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _lock_free(repo: Path) -> bool:
    fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY)  # the publishers' lock is on the directory
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images of 2 variants x 2 components (base, (a), (c)) and one key set."""
    root = tmp_path_factory.mktemp("vendor")
    return {
        "root": root,
        "keydir": root / "keys",
        "keys": keyset(root / "keys"),
        "imgs": images(root / "img", 2),
    }


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 single-threaded worker processes the tests can kill."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=40,
    ) as lc:
        yield lc


def _build(repo, m, ks, **kw):
    return build_matrix(repo, m, keys=ks, now=NOW, **kw)


# --- validation ------------------------------------------------------------------------------


def test_matrix_validation_lists_every_problem_before_any_work(world, tmp_path):
    imgs, ks = world["imgs"], world["keys"]
    repo = init_repo(tmp_path / "repo", ks)
    mpath = matrix(tmp_path / "m.json", imgs, 2, "a")
    doc = json.loads(mpath.read_text())
    doc["variants"].append(dict(doc["variants"][0]))  # duplicate name and build
    doc["variants"][1]["images"]["webkit"]["new"] = str(tmp_path / "missing.img")
    doc["variants"][0]["images"]["libsystem"]["base"] = {
        "url": str(imgs[(0, "libsystem", "base")]),
        "size": 12345,
    }
    mpath.write_text(json.dumps(doc))
    with pytest.raises(MatrixError) as e:
        _build(repo, load_matrix(mpath), ks)
    problems = e.value.problems
    assert any("duplicate variant: name 'family0'" in p for p in problems)
    assert any("duplicate variant: build '23B80'" in p for p in problems)
    assert len(problems) == 2  # structure first; files are checked once it is sound

    del doc["variants"][2]
    mpath.write_text(json.dumps(doc))
    before = _files(repo)
    with pytest.raises(MatrixError) as e:
        _build(repo, load_matrix(mpath), ks)
    problems = e.value.problems
    assert len(problems) == 2, problems
    assert "variant family1, component webkit: new image" in problems[1]
    assert "does not exist" in problems[1]
    assert "variant family0, component libsystem: base image" in problems[0]
    assert "is 262144 bytes; the matrix says 12345" in problems[0]
    assert _files(repo) == before and not (repo / ".staging").exists()


def test_matrix_structure_errors_each_named(tmp_path):
    doc = {
        "release": "26.2 (c)",
        "os_version": "26.1",
        "components": {"webkit": {"activation": "sometimes"}, "bad name": {}},
        "variants": [
            {"name": "v", "build": "23B85", "supplemental_build": "bad build!", "images": {}},
        ],
        "extra": 1,
    }
    p = tmp_path / "m.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(MatrixError) as e:
        load_matrix(p)
    text = str(e.value)
    for needle in (
        "unknown field 'extra'",
        "does not belong to os_version",
        "activation must be relaunch or reboot",
        "component bad name: not a valid component name",
        "variant v: supplemental_build",
    ):
        assert needle in text, needle
    assert text.count("\n  - ") == len(e.value.problems) == 5


def test_toml_matrix_is_the_same_matrix(world, tmp_path):
    mj = load_matrix(matrix(tmp_path / "m.json", world["imgs"], 2, "a"))
    doc = json.loads((tmp_path / "m.json").read_text())
    lines = [f'release = "{doc["release"]}"', f'os_version = "{doc["os_version"]}"']
    for c, spec in doc["components"].items():
        lines += [f"[components.{c}]", f'activation = "{spec["activation"]}"']
        for x in spec["cves"]:
            lines.append(f'cves = [{{id = "{x["id"]}", description = "{x["description"]}"}}]')
    for v in doc["variants"]:
        lines.append("[[variants]]")
        lines += [f'{k} = "{v[k]}"' for k in ("name", "build", "supplemental_build")]
        for c, pair in v["images"].items():
            lines.append(f"[variants.images.{c}]")
            lines += [f'base = "{pair["base"]}"', f'new = "{pair["new"]}"']
    (tmp_path / "m.toml").write_text("\n".join(lines) + "\n")
    mt = load_matrix(tmp_path / "m.toml")
    assert mt.variants == mj.variants and mt.components == mj.components


# --- same bytes, in process and on a LocalCluster ------------------------------------------


def test_same_bytes_in_process_and_on_a_two_worker_local_cluster(world, tmp_path, capsys):
    imgs, ks = world["imgs"], world["keys"]
    keydir = world["keydir"]
    out = {}
    for mode in ("none", "local"):
        repo = init_repo(tmp_path / f"repo-{mode}", ks)
        for letter, prev in (("a", ""), ("c", "a")):
            m = matrix(tmp_path / f"{letter}.json", imgs, 2, letter, prev)
            argv = ["release", "build", str(repo), "--matrix", str(m), "--keys", str(keydir)]
            argv += ["--cluster", mode, "--workers", "2", "--now", NOW_TEXT]
            if prev:
                argv += ["--from-previous", "1"]
            assert main(argv) == 0
        out[mode] = _files(repo)
        err = capsys.readouterr().err
        assert err.count("] family") == 4 + 8  # one line per finished task
        assert ("Dask dashboard: http://127.0.0.1:" in err) == (mode == "local")
    assert sorted(out["none"]) == sorted(out["local"])
    assert len([k for k in out["none"] if k.endswith(".bsipatch")]) == 4 + 8
    for name in out["none"]:
        assert out["none"][name] == out["local"][name], name


# --- failures --------------------------------------------------------------------------------


def test_corrupt_input_fails_the_build_naming_it_and_publishes_nothing(world, tmp_path, cluster):
    imgs, ks = world["imgs"], world["keys"]
    repo = init_repo(tmp_path / "repo", ks)
    _build(repo, load_matrix(matrix(tmp_path / "a.json", imgs, 2, "a")), ks, cluster="none")
    bad = tmp_path / "a-corrupt.img"
    data = bytearray(imgs[(1, "libsystem", "a")].read_bytes())
    data[5000] ^= 0xFF  # same size: passes validation, fails its seal in the task
    bad.write_bytes(bytes(data))
    mpath = matrix(tmp_path / "c.json", imgs, 2, "c", "a")
    doc = json.loads(mpath.read_text())
    doc["variants"][1]["previous"]["26.1 (a)"]["libsystem"] = str(bad)
    mpath.write_text(json.dumps(doc))
    before = _files(repo)
    for where in ("none", cluster.scheduler_address):
        with pytest.raises(BuildTaskError) as e:
            _build(repo, load_matrix(mpath), ks, cluster=where, from_previous=1)
        msg = str(e.value)
        assert "variant family1, component libsystem (from 26.1 (a))" in msg
        assert "corrupt or wrong input" in msg
        assert _files(repo) == before  # no patch, no release, same metadata versions
        assert not any((repo / ".staging").iterdir())
        assert _lock_free(repo)
    assert publish.load_catalog(repo).get("26.1 (c)") is None


def test_worker_killed_mid_task_is_retried_and_the_release_completes(world, tmp_path, cluster):
    ks = world["keys"]
    imgs = images(tmp_path / "img", 2, size=8 << 20, releases="a")  # tasks long enough to hit
    m = load_matrix(matrix(tmp_path / "a.json", imgs, 2, "a"))
    ref = init_repo(tmp_path / "ref", ks)
    _build(ref, m, ks, cluster="none")
    repo = init_repo(tmp_path / "repo", ks)
    client = distributed.Client(cluster)
    pids_before = set(client.run(os.getpid).values())
    done: dict = {}

    def run() -> None:
        try:
            done["report"] = _build(repo, m, ks, cluster=cluster.scheduler_address)
        except BaseException as exc:
            done["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    killed = None
    lost: set = set()
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and t.is_alive():
        busy = {w: keys for w, keys in client.processing().items() if keys}
        if busy:  # kill the first worker seen running a task, at once
            addr = next(iter(busy))
            pid = client.run(os.getpid, workers=[addr])[addr]
            lost = {k.split("-", 2)[2] for k in client.processing([addr])[addr]}
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.02)
    t.join(120)
    pids_after = set(client.run(os.getpid).values())
    client.close()
    assert killed in pids_before, (killed, pids_before)
    assert killed not in pids_after  # that process is gone; its nanny starts another
    assert "error" not in done, done.get("error")
    report = done["report"]
    ran_on = {r.key: int(r.worker.split(":")[1]) for r in report.results}  # host:pid
    assert lost, "the killed worker had no task in hand"
    assert all(ran_on[k] != killed for k in lost), (killed, lost, ran_on)  # redone elsewhere
    assert _files(repo) == _files(ref)  # the same release, byte for byte
    assert not any((repo / ".staging").iterdir())


def test_device_side_imports_neither_dask_nor_fsspec():
    code = (
        "import sys\n"
        "import bsipatch, bsipatch.agent.agent, bsipatch.device.install, bsipatch.cli.main\n"
        "from bsipatch.cli.main import main\n"
        "try:\n    main(['status', '--help'])\nexcept SystemExit:\n    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('dask', 'distributed', 'fsspec', 'bsipatch.vendor') or m.startswith('bsipatch.vendor'))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout


def test_fsspec_urls_are_read(world, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    imgs, ks = world["imgs"], world["keys"]
    mpath = matrix(tmp_path / "a.json", imgs, 1, "a")
    doc = json.loads(mpath.read_text())
    for c, pair in doc["variants"][0]["images"].items():
        for which in ("base", "new"):
            url = f"memory://vendor-test/{c}.{which}.img"
            with fsspec.open(url, "wb") as f:
                f.write(Path(pair[which]).read_bytes())
            pair[which] = url
    mpath.write_text(json.dumps(doc))
    ref = init_repo(tmp_path / "ref", ks)
    _build(ref, load_matrix(matrix(tmp_path / "b.json", imgs, 1, "a")), ks, cluster="none")
    repo = init_repo(tmp_path / "repo", ks)
    _build(repo, load_matrix(mpath), ks, cluster="none")
    assert _files(repo) == _files(ref)
    doc["variants"][0]["images"]["webkit"]["new"] = "memory://vendor-test/nothing.img"
    mpath.write_text(json.dumps(doc))
    with pytest.raises(MatrixError, match=r"memory://vendor-test/nothing\.img does not exist"):
        _build(init_repo(tmp_path / "repo2", ks), load_matrix(mpath), ks, cluster="none")


def test_cluster_choice_and_cli_option_rules(tmp_path, capsys):
    from bsipatch.errors import BuildError
    from bsipatch.vendor.execute import choose_cluster

    assert choose_cluster(None, 1) == "none" and choose_cluster(None, 2) == "local"
    assert choose_cluster("tcp://127.0.0.1:8786", 9) == "tcp://127.0.0.1:8786"
    with pytest.raises(BuildError, match="--cluster must be none, local or tcp://HOST:PORT"):
        choose_cluster("everywhere", 3)
    base = ["release", "build", str(tmp_path), "--keys", str(tmp_path)]
    assert main([*base, "--matrix", "m.json", "--id", "26.1 (a)"]) == 5
    assert "--matrix replaces --id" in capsys.readouterr().err
    assert main([*base, "--cluster", "local"]) == 5
    assert "release build needs --id, --os-version" in capsys.readouterr().err
