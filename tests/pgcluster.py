"""A private PostgreSQL cluster for the tests (Debian's postgresql package).

``Cluster()`` runs initdb and pg_ctl from /usr/lib/postgresql/*/bin under a
temporary directory, listening on 127.0.0.1 on a free port only. PostgreSQL refuses
to run as root, so as root the cluster belongs to the ``postgres`` user (created by
the Debian package) or ``nobody``. Missing PostgreSQL: skip locally, fail in CI.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A running cluster; :meth:`new_database` gives each test its own empty database.

    Args:
        settings: extra server settings (``-c name=value``), e.g. for the load generator.
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not initdb or not pg_ctl:
            msg = "PostgreSQL not found (Debian package postgresql)"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(msg + ": CI must install it")
            pytest.skip(msg)
        self.pg_ctl = pg_ctl
        root = Path(tempfile.mkdtemp(prefix="bsipatch-pg-"))  # under /tmp: others may traverse
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            for user in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(user)
                except KeyError:
                    continue
                self.user = user
                break
            pw = pwd.getpwnam(self.user or "nobody")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {root} -c fsync=on"
        opts += "".join(f" -c {k}={v}" for k, v in (settings or {}).items())
        self._run(
            [pg_ctl, "-D", str(self.data), "-l", str(root / "log"), "-o", opts, "-w", "start"]
        )
        self.count = 0

    def _run(self, cmd: list[str]) -> None:
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A URL whose search_path is a fresh, empty schema (much faster than CREATE DATABASE)."""
        import psycopg

        self.count += 1
        name = f"t{self.count}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return self.url() + f"?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)
