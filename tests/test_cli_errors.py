"""Every CLI mistake is one clear line: usage errors, missing files, I/O errors, Ctrl-C,
--json failures, global options anywhere, outputs that are inputs, BSDIFF40 wording,
help text on every option. Through ``bsipatch.cli.main`` or a real subprocess."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bsipatch.cli.main import build_parser, main

REPO = Path(__file__).resolve().parent.parent
OLD = b"".join(b"line %05d of the old image\n" % i for i in range(3000))
NEW = OLD[:20000] + b"the fix" + OLD[20000:]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "old").write_bytes(OLD)
    (tmp_path / "new").write_bytes(NEW)
    return tmp_path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors, as argparse does
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "argv, option",
    [
        (["diff", "{d}/old", "{d}/new", "{d}/p", "--level", "30"], "--level"),
        (["diff", "{d}/old", "{d}/new", "{d}/p", "--level", "0"], "--level"),
        (["diff", "{d}/old", "{d}/new", "{d}/p", "--segment-size", "1"], "--segment-size"),
        (["diff", "{d}/old", "{d}/new", "{d}/p", "--threads", "-3"], "--threads"),
        (["diff", "{d}/old", "{d}/new", "{d}/p", "--threads", "many"], "--threads"),
        (["apply", "{d}/old", "{d}/p", "{d}/o", "--threads", "0"], "--threads"),
        (["apply", "{d}/old", "{d}/p", "{d}/o", "--max-patch-size", "-1"], "--max-patch-size"),
        (["seal", "{d}/old", "--threads", "-3"], "--threads"),
        (["verify", "{d}/old", "--root", "00" * 32, "--size", "-1"], "--size"),
        (["agent", "check", "--preboot", "{d}", "--repo", "{d}", "--timeout", "-1"], "--timeout"),
        (["agent", "check", "--preboot", "{d}", "--repo", "{d}", "--timeout", "nan"], "--timeout"),
        (["agent", "check", "--preboot", "{d}", "--repo", "{d}", "--retries", "-1"], "--retries"),
    ],
)
def test_out_of_range_values_are_usage_errors(files, capsys, argv, option) -> None:
    code, out, err = run([a.format(d=files) for a in argv], capsys)
    assert code == 2
    line = one_line(err)
    assert f"error: argument {option}" in line, line
    assert out == ""
    assert not (files / "p").exists() and not (files / "k").exists()


def test_error_names_the_file_that_is_missing(files, capsys) -> None:
    assert main(["diff", "-q", str(files / "old"), str(files / "new"), str(files / "p")]) == 0
    capsys.readouterr()
    for argv, missing in (
        (["apply", files / "missing-old.so", files / "p", files / "out"], "missing-old.so"),
        (["apply", files / "old", files / "no-patch", files / "out"], "no-patch"),
        (["diff", files / "old", files / "no-new", files / "p2"], "no-new"),
        (["info", files / "nope.bsipatch"], "nope.bsipatch"),
    ):
        code, _, err = run(argv, capsys)
        line = one_line(err)
        assert code == 4, line  # the delta commands' family (PatchError)
        assert f"{files / missing}: No such file or directory" in line, line
        assert "out" not in line.replace("missing-old", "").split(":")[-1]
    assert not (files / "out").exists() and not (files / "p2").exists()


def test_io_errors_carry_the_family_code_and_never_name_temp_files(files, capsys) -> None:
    out_dir = files / "gone"
    code, _, err = run(["diff", files / "old", files / "new", out_dir / "p"], capsys)
    line = one_line(err)
    assert code == 4
    assert f"{out_dir / 'p'}: No such file or directory" in line, line
    assert ".tmp" not in line and "/.p." not in line
    main(["diff", "-q", str(files / "old"), str(files / "new"), str(files / "p")])
    capsys.readouterr()
    code, _, err = run(["apply", files / "old", files / "p", out_dir / "new.img"], capsys)
    line = one_line(err)
    assert code == 4 and f"{out_dir / 'new.img'}:" in line and ".tmp" not in line, line
    code, _, err = run(["seal", files / "old", "--hash-file", out_dir / "h"], capsys)
    line = one_line(err)
    assert code == 3 and f"{out_dir / 'h'}:" in line and ".tmp" not in line, line


def test_output_that_is_an_input_is_refused(files, capsys) -> None:
    before = (files / "old").read_bytes()
    code, _, err = run(["diff", files / "old", files / "new", files / "old"], capsys)
    assert code == 2 and "is the input OLD" in one_line(err)
    os.link(files / "new", files / "new-link")
    code, _, err = run(["diff", files / "old", files / "new", files / "new-link"], capsys)
    assert code == 2 and "is the input NEW" in one_line(err)
    main(["diff", "-q", str(files / "old"), str(files / "new"), str(files / "p")])
    capsys.readouterr()
    (files / "sym").symlink_to(files / "old")
    for target, name in ((files / "sym", "OLD"), (files / "p", "PATCH")):
        code, _, err = run(["apply", files / "old", files / "p", target], capsys)
        assert code == 2 and f"is the input {name}" in one_line(err)
    code, _, err = run(["seal", files / "old", "--hash-file", files / "old"], capsys)
    assert code == 2 and "is the input IMAGE" in one_line(err)
    assert (files / "old").read_bytes() == before
    assert (files / "new").read_bytes() == NEW


def test_json_failures_are_one_object_on_stdout(files, capsys) -> None:
    for argv, code, kind in (
        (["--json", "apply", files / "old", files / "nope", files / "o"], 4, "FileNotFoundError"),
        (["diff", files / "old", files / "new", files / "p", "--json", "--level", "99"], 2, ""),
        (["diff", files / "new", files / "new", files / "new", "--json"], 2, "UsageError"),
    ):
        got, out, err = run(argv, capsys)
        assert got == code
        obj = json.loads(out)
        assert obj["ok"] is False and obj["code"] == code
        assert obj["error"] == one_line(err)
        if kind:
            assert obj["type"] == kind
    # a library error: wrong base image
    main(["diff", "-q", str(files / "old"), str(files / "new"), str(files / "p")])
    (files / "other").write_bytes(NEW)
    capsys.readouterr()
    got, out, err = run(["apply", files / "other", files / "p", files / "o", "--json"], capsys)
    obj = json.loads(out)
    assert got == 4 and obj == {
        "ok": False,
        "error": one_line(err),
        "code": 4,
        "type": "WrongBaseImage",
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "info", "{p}"],
        ["info", "--json", "{p}"],
        ["info", "{p}", "--json"],
        ["--quiet", "--json", "info", "{p}"],
        ["--debug", "info", "--json", "-q", "{p}"],
    ],
)
def test_global_options_before_or_after_the_subcommand(files, capsys, argv) -> None:
    main(["diff", "-q", str(files / "old"), str(files / "new"), str(files / "p")])
    capsys.readouterr()
    code, out, err = run([a.format(p=files / "p") for a in argv], capsys)
    assert code == 0, err
    assert json.loads(out)["new_size"] == len(NEW)


def test_debug_before_the_subcommand_shows_the_traceback(files, capsys) -> None:
    code, _, err = run(["--debug", "info", files / "nope"], capsys)
    assert code == 4 and "Traceback" in err
    code, _, err = run(["info", files / "nope"], capsys)
    assert code == 4 and "Traceback" not in err


def test_bsdiff40_apply_and_info_say_what_was_checked(files, capsys) -> None:
    p = files / "classic"
    assert main(["diff", "-q", str(files / "old"), str(files / "new"), str(p), "--format",
                 "bsdiff40"]) == 0  # fmt: skip
    capsys.readouterr()
    code, out, err = run(["apply", files / "old", p, files / "o"], capsys)
    assert code == 0, err
    assert (files / "o").read_bytes() == NEW
    assert "verified" not in out
    assert "no checksums" in out and "were not" in out
    code, out, _ = run(["apply", files / "old", p, files / "o2", "--json"], capsys)
    assert json.loads(out)["verified"] is False
    code, out, _ = run(["info", p], capsys)
    assert code == 0
    assert "-1" not in out
    assert "BSDIFF40" in out and "not recorded" in out
    # a bsipatch patch does say what was verified
    main(["diff", "-q", str(files / "old"), str(files / "new"), str(files / "p")])
    capsys.readouterr()
    code, out, _ = run(["apply", files / "old", files / "p", files / "o3"], capsys)
    assert code == 0 and "verified" in out and NEW != b""


def test_every_option_has_help_text() -> None:
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "bsipatch")
    assert not missing, missing


def test_ctrl_c_in_process_leaves_no_output(files, capsys, monkeypatch) -> None:
    # Ctrl-C arrives while the diff reports progress: exit 130, one line, nothing written
    from bsipatch.cli import progress

    def interrupted(self: object, done: int, total: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(progress.Progress, "callback", interrupted)
    code, out, err = run(["diff", files / "old", files / "new", files / "p"], capsys)
    assert (code, out, err) == (130, "", "bsipatch: interrupted\n")
    assert sorted(p.name for p in files.iterdir()) == ["new", "old"]
    code, out, err = run(["--json", "diff", files / "old", files / "new", files / "p"], capsys)
    assert code == 130 and json.loads(out)["error"] == "bsipatch: interrupted"
    assert sorted(p.name for p in files.iterdir()) == ["new", "old"]
    # main() as a library call leaves the process's Ctrl-C handling as it was
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_a_real_diff(tmp_path: Path) -> None:
    rng = os.urandom
    old = bytearray(rng(16 << 20))
    new = bytearray(old)
    for i in range(0, len(new), 1 << 16):
        new[i : i + 64] = rng(64)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    cmd = [sys.executable, "-m", "bsipatch", "diff", "old", "new", "patch", "--threads", "1"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # wait until the diff has mapped both images (past start-up, into the work)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        text = maps.read_text() if maps.exists() else ""
        if str(tmp_path / "old") in text and str(tmp_path / "new") in text:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0 and out.startswith("wrote"):
        pytest.skip("the diff finished before Ctrl-C arrived")
    assert proc.returncode == 130, err
    assert err == "bsipatch: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]


def _startup_window(python: str) -> float:
    """Wall time of the interpreter's own start-up (init + site), longest of 5 runs."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([python, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return max(times)


def _in_interpreter_start_up(returncode: int, err: str) -> bool:
    """The signal provably arrived before any bsipatch code ran.

    For its first ~20 ms Python has no SIGINT handler, so the signal ends the process as
    it would any C program (killed by SIGINT, no output; a shell shows status 130). Then
    ``site`` runs (an editable install's finder imports pathlib & co. there), and a Ctrl-C
    inside it makes Python itself print "Fatal Python error: init_import_site". Then the
    console script imports the package and compiles ``bsipatch.__main__`` (milliseconds
    without cached bytecode), where Python's own handler still prints a traceback.
    """
    if (returncode == -signal.SIGINT and err == "") or "init_import_site" in err:
        return True
    # Python's own KeyboardInterrupt, raised at the console script's import of
    # bsipatch.__main__ (importlib hides its own frames): before that module's first line
    return err.endswith("from bsipatch.__main__ import entry\nKeyboardInterrupt\n")


# Runs in a fresh interpreter: records every module imported while SIGINT still has
# Python's default handler, from the first bsipatch import on; then Ctrl-C itself.
_FIRST_ACT = """
import os, signal, sys
before = []
def hook(event, args):
    if event == "import" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        if args[0].startswith("bsipatch") or before:
            before.append(args[0])
sys.addaudithook(hook)
import bsipatch.__main__
print(" ".join(before), flush=True)
os.kill(os.getpid(), signal.SIGINT)
signal.pthread_sigmask(signal.SIG_BLOCK, [])  # a bytecode boundary for the handler
print("still running")
"""


@pytest.mark.parametrize("json_flag", [False, True])
def test_ctrl_c_handler_is_bsipatchs_first_act(json_flag: bool) -> None:
    # Deterministic half of the Ctrl-C start-up check: the console script's module
    # installs its handler before importing anything but the package's own 2-line
    # __init__ (no typing, no signal/enum), and that handler exits 130 with the line.
    argv = ["bsipatch", "diff", "--json"] if json_flag else ["bsipatch", "diff"]
    code = f"import sys; sys.argv = {argv!r}\n" + _FIRST_ACT
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    assert sorted(lines[0].split()) == ["bsipatch", "bsipatch.__main__", "bsipatch._version"]
    assert (proc.returncode, proc.stderr) == (130, "bsipatch: interrupted\n")
    if json_flag:
        assert json.loads(lines[1]) == {
            "ok": False,
            "error": "bsipatch: interrupted",
            "code": 130,
            "type": "KeyboardInterrupt",
        }
    assert len(lines) == 1 + json_flag  # never "still running"


def test_ctrl_c_at_any_time_after_interpreter_start_up(tmp_path: Path) -> None:
    # The real console script on a large diff, interrupted at a sweep of delays that
    # starts after the interpreter's own start-up (1.5x its slowest of 5 runs, a margin
    # for load): from bsipatch's first line on (bsipatch.__main__ installs the handler
    # before importing anything heavy) every Ctrl-C is the one line, exit 130, no
    # traceback, nothing left behind. Should the load stretch a start-up past the margin,
    # the signal lands in Python's own start-up, recognised above and tolerated only
    # for the earliest delays.
    script = Path(sys.executable).parent / "bsipatch"
    if not script.exists():
        pytest.skip("no bsipatch console script next to this interpreter")
    rng = os.urandom
    # ~2 s of diff on a quiet machine (64 MiB took 0.93-1.06 s after session 3's diff
    # speed-ups: the last Ctrl-C, ~0.93 s in, then came after the patch was complete)
    old = bytearray(rng(128 << 20))
    new = bytearray(old)
    for i in range(0, len(new), 1 << 16):
        new[i : i + 64] = rng(64)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    del old, new
    start = 1.5 * _startup_window(sys.executable)
    outcomes = []
    for extra in (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4, 0.8):
        json_too = extra == 0.01
        cmd = [str(script), "diff", "old", "new", "patch", "--threads", "1"]
        cmd += ["--json"] if json_too else []
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(start + extra)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)  # the CLI's watchdog ends it by 5 s
        finally:
            proc.kill()  # a failing run leaves no orphan behind
        outcomes.append((round(start + extra, 3), proc.returncode, err[-300:]))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"], outcomes
        if extra < 0.1 and _in_interpreter_start_up(proc.returncode, err):
            continue
        assert (proc.returncode, err) == (130, "bsipatch: interrupted\n"), outcomes
        if json_too:
            assert json.loads(out) == {
                "ok": False,
                "error": "bsipatch: interrupted",
                "code": 130,
                "type": "KeyboardInterrupt",
            }
        else:
            assert out == ""


def test_ctrl_c_during_release_build_leaves_no_release_directory(tmp_path, capsys, monkeypatch):
    from bsipatch.delta import diff as diff_module

    kd, rd = tmp_path / "keys", tmp_path / "repo"
    assert main(["keygen", "--out", str(kd)]) == 0
    assert main(["repo", "init", str(rd), "--keys", str(kd)]) == 0
    for name in ("a", "b"):
        (tmp_path / f"{name}-base.img").write_bytes(OLD)
        (tmp_path / f"{name}-new.img").write_bytes(NEW)
    real_diff = diff_module.diff
    calls = []

    def diff_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first component's patch is already written
            raise KeyboardInterrupt
        return real_diff(*args, **kwargs)

    monkeypatch.setattr(diff_module, "diff", diff_then_ctrl_c)

    def tree() -> list[str]:  # the lock file of the repository aside
        return sorted(
            p.relative_to(rd).as_posix() for p in rd.rglob("*") if p.name != ".publish.lock"
        )

    before = tree()
    argv = ["release", "build", str(rd), "--id", "26.1 (a)", "--os-version", "26.1",
            "--build", "23B85", "--supplemental-build", "23B85a", "--keys", str(kd),
            "-q"]  # fmt: skip
    for name in ("a", "b"):
        argv += [
            "--component",
            f"{name}:reboot:{tmp_path}/{name}-base.img:{tmp_path}/{name}-new.img",
        ]
    capsys.readouterr()
    code, _, err = run(argv, capsys)
    assert (code, err) == (130, "bsipatch: interrupted\n")
    assert len(calls) == 2
    assert tree() == before
    # and the same build, not interrupted, publishes
    monkeypatch.setattr(diff_module, "diff", real_diff)
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert tree() != before
    assert main(["release", "show", str(rd), "26.1 (a)", "-q"]) == 0


def test_quiet_prints_nothing_but_errors(tmp_path: Path, files: Path, capsys) -> None:
    # -q silences every result line of diff, apply, info, keygen, repo and release;
    # --json still prints its one object; errors still print their line.
    kd, rd = tmp_path / "keys", tmp_path / "repo"
    (tmp_path / "a-base.img").write_bytes(OLD)
    (tmp_path / "a-new.img").write_bytes(NEW)
    build = ["release", "build", str(rd), "--id", "26.1 (a)", "--os-version", "26.1",
             "--build", "23B85", "--supplemental-build", "23B85a", "--keys", str(kd),
             "--component", f"a:reboot:{tmp_path}/a-base.img:{tmp_path}/a-new.img"]  # fmt: skip
    f = files
    commands = [
        ["diff", f / "old", f / "new", f / "p"],
        ["apply", f / "old", f / "p", f / "out"],
        ["info", f / "p"],
        ["keygen", "--out", kd],
        ["repo", "init", rd, "--keys", kd],
        build,
        ["release", "show", rd, "26.1 (a)"],
        ["release", "list", rd],
    ]
    for argv in commands:
        assert run([*argv, "-q"], capsys) == (0, "", ""), argv
    assert (f / "out").read_bytes() == NEW
    # the same read-only commands with --json too: one object each
    for argv in (["info", f / "p"], ["release", "show", rd, "26.1 (a)"]):
        code, out, err = run(["-q", *argv, "--json"], capsys)
        assert (code, err) == (0, "") and isinstance(json.loads(out), dict), argv
    code, out, err = run(["apply", "-q", f / "new", f / "p", f / "out2"], capsys)
    assert code == 4 and out == "" and err.startswith("bsipatch: error: ")
    # without -q the result lines are there
    code, out, _ = run(["apply", f / "old", f / "p", f / "out3"], capsys)
    assert code == 0 and out.startswith("wrote ")
