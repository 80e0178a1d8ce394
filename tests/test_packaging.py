"""The package builds as a wheel that installs into a fresh venv and runs without the source."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel .`` builds from this checkout (built once for the module)."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("bsipatch-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_installs_into_fresh_venv_and_imports_without_source(tmp_path, built_wheel):
    wheel = built_wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # install the wheel alone (no network): pip from this interpreter, targeting the venv
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            site,
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # runtime dependencies come from this environment's site-packages, appended after the
    # venv's own, so the bsipatch imported is the wheel's
    env = dict(os.environ, PYTHONPATH="")
    deps = sysconfig.get_paths()["purelib"]
    code = (
        f"import sys; sys.path.append({deps!r}); import bsipatch, bsipatch._native as n; "
        "print(bsipatch.__file__); print(bsipatch.__version__)"
    )
    out = subprocess.run(
        [str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=env
    ).stdout.split()
    assert out[0].startswith(site), out
    assert out[1] == __import__("bsipatch").__version__
    cli = subprocess.run(
        [
            str(py),
            "-c",
            f"import sys; sys.path.append({deps!r}); from bsipatch.cli.main import main; "
            "sys.exit(main(['--version']))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert cli.returncode == 0 and cli.stdout.startswith("bsipatch ")


@pytest.mark.slow
def test_wheel_is_abi3_and_carries_the_license(built_wheel: Path) -> None:
    assert built_wheel.name.endswith("-cp310-abi3-linux_x86_64.whl") or "-abi3-" in built_wheel.name
    with zipfile.ZipFile(built_wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        tags = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert any(n.endswith(".abi3.so") for n in names), names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "License-Expression: MIT" in meta
    assert "Tag: cp310-abi3-" in tags


@pytest.mark.slow
def test_sdist_carries_the_license_and_every_manifest_pattern_matches(tmp_path: Path) -> None:
    code = (
        "import sys; from setuptools import build_meta; "
        f"print(build_meta.build_sdist({str(tmp_path)!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "no files found matching" not in out.stdout + out.stderr, out.stderr
    (sdist,) = tmp_path.glob("bsipatch-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "setup.py", "csrc/build_ffi.py", "bsipatch/py.typed"} <= names
    assert "DESIGN.md" not in (ROOT / "csrc" / "build_ffi.py").read_text()


def _other_pythons() -> list[str]:
    """Interpreters of another CPython 3.10+ version than this one, if this machine has any."""
    found: dict[str, str] = {}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(10, 16)]
    candidates += [str(p) for p in Path("/root/.pyenv/versions").glob("3.*/bin/python3")]
    for exe in candidates:
        if not exe or not os.access(exe, os.X_OK):
            continue
        res = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        version = res.stdout.strip()
        mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if (
            res.returncode == 0
            and version != mine
            and tuple(map(int, version.split("."))) >= (3, 10)
        ):
            found.setdefault(version, exe)
    return [found[v] for v in sorted(found)]


@pytest.mark.slow
def test_manylinux_wheel_runs_on_another_python(tmp_path: Path, built_wheel: Path) -> None:
    if shutil.which("patchelf") is None or importlib.util.find_spec("auditwheel") is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs auditwheel and patchelf (pip install -e '.[test]')")
        pytest.skip("auditwheel or patchelf not installed")
    repaired = tmp_path / "repaired"
    subprocess.run(
        [sys.executable, "-m", "auditwheel", "repair", "-w", str(repaired), str(built_wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = repaired.glob("*.whl")
    assert re.search(r"-cp310-abi3-manylinux_\d+_\d+_x86_64\.whl$", wheel.name), wheel.name
    others = _other_pythons()
    if not others:
        pytest.skip("no other CPython version on this machine")
    exe = others[-1]
    venv = tmp_path / "venv"
    subprocess.run([exe, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = str(venv / "bin" / "python")
    # the native core needs only cffi's backend; pip gets it from the package registry
    got = subprocess.run(
        [py, "-m", "pip", "install", "-q", "--no-deps", str(wheel), "cffi", "pycparser"],
        capture_output=True,
        text=True,
    )
    if got.returncode != 0 and "cffi" in got.stderr and not os.environ.get("CI"):
        pytest.skip(f"cannot install cffi for {exe}: {got.stderr.strip()[-200:]}")
    assert got.returncode == 0, got.stderr
    code = (
        "import sys, bsipatch, bsipatch._native as n\n"
        "buf = n.ffi.new('uint8_t[32]')\n"
        "n.lib.bsi_sha256(b'abc', 3, buf)\n"
        "print(sys.version_info[:2], bsipatch.__version__, bytes(n.ffi.buffer(buf)).hex())\n"
    )
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert __import__("bsipatch").__version__ in out.stdout
