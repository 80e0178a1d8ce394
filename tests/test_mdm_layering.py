"""The device side never loads the MDM server's dependencies (plain install stays lean)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SERVER_ONLY = ("starlette", "uvicorn", "psycopg", "psycopg_pool", "uvloop", "httptools")


def test_device_side_does_not_import_server_dependencies():
    code = (
        "import sys\n"
        "import bsipatch.cli.main, bsipatch.agent.agent, bsipatch.agent.status\n"
        "import bsipatch.agent.policy, bsipatch.device.install\n"
        "from bsipatch.cli.main import build_parser\n"
        "build_parser().parse_args(['mdm', 'fleet', '--db', 'x'])\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {SERVER_ONLY!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"device side imported {out.stdout.strip()}"


def test_server_dependencies_are_only_in_extras():
    import pytest

    tomllib = pytest.importorskip("tomllib")
    with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    deps = " ".join(project["dependencies"]).lower()
    for name in ("starlette", "uvicorn", "psycopg"):
        assert name not in deps
        assert any(name in d for d in project["optional-dependencies"]["mdm"])
    assert "bsipatch[mdm]" in project["optional-dependencies"]["all"]
    assert "bsipatch[mdm]" in project["optional-dependencies"]["test"]
