"""Shared test helpers: locating real external tools.

Interop tests run the real tools (veritysetup, bsdiff, bspatch). On a developer's
machine without them such a test is skipped with the package to install; in CI
(``CI=true``) a missing tool is a failure, so a green CI means the tool really ran.
"""

from __future__ import annotations

import os
import shutil

import pytest

TOOL_PACKAGES = {
    "veritysetup": "cryptsetup-bin",
    "bsdiff": "bsdiff",
    "bspatch": "bsdiff",
    "xdelta3": "xdelta3",
    "zstd": "zstd",
    "mke2fs": "e2fsprogs",
}


def require_tool(name: str) -> str:
    """Return the path of tool ``name``; skip (locally) or fail (CI) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path:
        return path
    package = TOOL_PACKAGES.get(name, name)
    msg = f"{name} not found (Debian package {package})"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + ": CI must install it")
    pytest.skip(msg)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def pg_cluster():
    """A private PostgreSQL cluster for the whole session (tests/pgcluster.py)."""
    from pgcluster import Cluster

    cluster = Cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def mdm_db_url(request, tmp_path):
    """An empty database URL for the MDM server: SQLite file, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mdm.sqlite3'}"
    return request.getfixturevalue("pg_cluster").new_database()
