"""The package builds as a wheel that installs into a fresh venv and runs without the source."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_into_fresh_venv_and_imports_without_source(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = wheels.glob("bsipatch-*.whl")
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
