"""The CLI entry points: version, help, exit codes."""

import subprocess
import sys

import bsipatch
from bsipatch.cli.main import main


def test_python_m_version():
    out = subprocess.run(
        [sys.executable, "-m", "bsipatch", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"bsipatch {bsipatch.__version__}"


def test_version_answers_before_the_commands_are_imported():
    """`--version` is start-up only: the CLI's commands (argparse, typing, the delta
    engine) are not imported for it."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bsipatch", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"bsipatch {bsipatch.__version__}"
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()]
    assert "bsipatch.__main__" in imported or "bsipatch" in imported
    assert not [m for m in imported if m.startswith("bsipatch.cli") or m == "argparse"]


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_missing_file_is_one_clear_line_and_nonzero_exit(tmp_path, capsys):
    missing = tmp_path / "nope.img"
    assert main(["info", str(missing)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bsipatch: error:") and "nope.img" in err[0]


def test_atomic_write_follows_umask(tmp_path):
    import os

    from bsipatch._io import atomic_write

    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "f") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").read_bytes() == b"x"
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
