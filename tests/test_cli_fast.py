"""The apply command's quick entry (bsipatch.cli.fast): same answers as the argparse CLI,
without loading it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import bsipatch
from bsipatch.cli.fast import main as fast_main
from bsipatch.cli.fast import parse_apply
from bsipatch.cli.main import build_parser
from bsipatch.cli.main import main as full_main

OPTIONAL = ("json", "debug", "quiet", "resume", "threads", "max_patch_size", "expected_size")

HANDLED = [
    ["apply", "a", "b", "c"],
    ["-q", "apply", "a", "-", "c"],
    ["--json", "--debug", "apply", "a", "b", "c", "--quiet"],
    ["apply", "--resume", "a", "b", "c", "--threads", "2"],
    ["apply", "a", "b", "c", "--threads=3", "--max-patch-size", "100"],
    ["apply", "--expected-size", "0", "a", "b", "c", "--json"],
    ["apply", "a", "b", "c", "--expected-size=12", "--threads", "1", "--threads", "4"],
]

# the argparse CLI answers these (help, mistakes, abbreviations, other commands)
NOT_HANDLED = [
    [],
    ["apply"],
    ["apply", "a", "b"],
    ["apply", "a", "b", "c", "d"],
    ["apply", "-h"],
    ["--help"],
    ["apply", "a", "b", "c", "--threads"],
    ["apply", "a", "b", "c", "--threads", "0"],
    ["apply", "a", "b", "c", "--threads", "-1"],
    ["apply", "a", "b", "c", "--threads", "+2"],
    ["apply", "a", "b", "c", "--threads", "٣"],
    ["apply", "a", "b", "c", "--max-patch-size=0"],
    ["apply", "a", "b", "c", "--thread", "2"],
    ["apply", "a", "b", "c", "--res"],
    ["apply", "--", "a", "b", "c"],
    ["apply", "a", "b", "c", "-x"],
    ["info", "a"],
    ["diff", "a", "b", "c"],
    ["--version"],
]


@pytest.mark.parametrize("argv", HANDLED)
def test_handled_lines_parse_as_argparse_parses_them(argv: list[str]) -> None:
    mine = parse_apply(argv)
    assert mine is not None
    theirs = build_parser(("delta",)).parse_args(argv)
    for name in ("old", "patch", "out", "command", *OPTIONAL):
        assert getattr(mine, name) == getattr(theirs, name, False), name
    assert mine.func is theirs.func
    assert mine.io_exit_code == theirs.io_exit_code


@pytest.mark.parametrize("argv", NOT_HANDLED)
def test_everything_else_goes_to_argparse(argv: list[str]) -> None:
    assert parse_apply(argv) is None


def _pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    old = tmp_path / "old.img"
    new = tmp_path / "new.img"
    old.write_bytes(bytes(range(256)) * 400)
    new.write_bytes(bytes(range(256)) * 399 + b"changed" * 10)
    patch = tmp_path / "p.bsipatch"
    bsipatch.diff(old, new, patch)
    return old, new, patch


def _both(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) through the quick entry and through the whole CLI."""
    results = []
    for run in (fast_main, full_main):
        try:
            code = run(argv)
        except SystemExit as exc:  # usage errors leave as argparse's do
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        results.append((code, out, err))
    return results


def test_same_answers_as_the_whole_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new, patch = _pair(tmp_path)
    out = tmp_path / "out.img"
    bad = tmp_path / "bad.bsipatch"
    damaged = bytearray(patch.read_bytes())
    damaged[-5] ^= 1
    bad.write_bytes(damaged)
    cases = [
        ["apply", str(old), str(patch), str(out)],
        ["--json", "apply", str(old), str(patch), str(out)],
        ["apply", "-q", str(old), str(patch), str(out)],
        ["apply", str(new), str(patch), str(out)],  # wrong base image
        ["apply", "--json", str(new), str(patch), str(out)],
        ["apply", str(old), str(bad), str(out)],  # damaged patch
        ["apply", str(old), str(tmp_path / "missing"), str(out)],
        ["apply", str(old), str(patch), str(old)],  # output is an input
        ["apply", "--json", str(old), str(patch), str(patch)],
        ["apply", "--expected-size", "5", str(old), str(patch), str(out)],
        ["apply", "--max-patch-size", "10", str(old), str(patch), str(out)],
    ]
    for argv in cases:
        assert parse_apply(argv) is not None
        (code, stdout, stderr), want = _both(argv, capsys)
        assert (code, stdout, stderr) == want, argv
        if code == 0:
            assert out.read_bytes() == new.read_bytes()
            out.unlink()
        else:
            assert not out.exists()
    code, stdout, _ = _both(["--json", "apply", str(old), str(patch), str(out)], capsys)[0]
    assert code == 0 and json.loads(stdout)["verified"] is True


_LOADED = """
import sys
before = set(sys.modules)
sys.argv = ["bsipatch", "apply", "-q", *sys.argv[1:]]
from bsipatch.__main__ import entry
try:
    entry()
except SystemExit as exc:
    assert exc.code == 0, exc.code
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_apply_process_loads_no_argparse_typing_or_re(tmp_path: Path) -> None:
    old, new, patch = _pair(tmp_path)
    out = tmp_path / "out.img"
    proc = subprocess.run(
        [sys.executable, "-c", _LOADED, str(old), str(patch), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.read_bytes() == new.read_bytes()
    loaded = set(proc.stdout.split())
    assert "bsipatch.delta.apply" in loaded
    heavy = {"argparse", "typing", "re", "enum", "contextlib", "bsipatch.cli._common"}
    heavy |= {"numpy", "hashlib", "dataclasses", "bsipatch.cli.delta", "pathlib"}
    assert not heavy & loaded


def test_the_installed_command_imports_only_the_entry_module() -> None:
    # bin/bsipatch is installed as the `bsipatch` command (pyproject: script-files): a
    # plain script, because pip's console-script wrapper imports `re` first
    import ast

    script = Path(__file__).resolve().parents[1] / "bin" / "bsipatch"
    tree = ast.parse(script.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(str(node.module))
    assert imported == {"sys", "bsipatch.__main__"}
    assert script.read_text().startswith("#!python\n")
