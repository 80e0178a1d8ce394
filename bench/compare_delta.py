"""Compare bsipatch's delta engine with its peers on the same files, in one run.

For each data set of ``bench/data.py`` every tool diffs old -> new and applies
its own patch, each run in its own subprocess so that its peak memory
(``ru_maxrss`` from ``wait4``) is its alone. Peers: Debian ``bsdiff``/``bspatch``,
``bsdiff4`` and ``detools`` (PyPI), ``xdelta3 -9``, ``zstd -19 --long=31
--patch-from``. Every applied output is compared byte for byte with the new
file. Cheap runs are repeated (median time, highest peak memory); slow ones run
once, under a timeout. The script prints a table with ratios against bsdiff
(and against zstd for size), checks the goals of issue 3 (PASS/FAIL each) and
can write everything as JSON.

Times: native tools are timed from spawn to exit; Python tools (bsipatch,
bsdiff4, detools) are timed around the library call inside their process, so
interpreter start-up is excluded, while their peak memory includes the
interpreter and its imports (the baseline is reported).

Run ``python bench/compare_delta.py --help``. If ``bsipatch.delta.diff``/``apply`` are
not available yet, the script says so and runs the peers only. This module does
not fetch or generate data (``data.py`` does) and asserts nothing (``tests/``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import filecmp
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

MiB = 1024 * 1024
GNU_TIME = os.environ.get("BENCH_GNU_TIME", "/usr/bin/time")

# Reference figures quoted in the issue (HDiffPatch is not packaged here).
HDIFFPATCH_FS_PATCH_BYTES = 496_000  # "HDiffPatch 496 KB" on the 256 MiB ext4 image
APPLY_PEAK_LIMIT_MIB = 64.0

# -------------------------------------------------------------------------- worker side
# Python tools run as `python -c WORKER TOOL OP A B C`: one library call, timed
# inside the process, printing {"seconds", "cpu", "info"} as JSON. The worker is a
# small code string rather than this module so that the process imports only
# what the tool needs and its peak memory is the tool's (plus the interpreter).
# BENCH_BSIPATCH_THREADS sets bsipatch's threads= (the bsipatch-1t tool: 1).

WORKER = r"""
import json, os, sys, time
tool, op, a, b, c = sys.argv[1:6]
info = None
if tool.startswith("bsipatch"):
    import bsipatch
    raw = os.environ.get("BENCH_BSIPATCH_THREADS", "")
    threads = 1 if tool == "bsipatch-1t" else (int(raw) if raw else None)
    fmt = "bsdiff40" if tool == "bsipatch-bsdiff40" else "bsipatch"
    from bsipatch.delta.apply import apply
    from bsipatch.delta.diff import diff
    if op == "diff" and tool == "bsipatch-v1":  # without the executable transform
        run = lambda: diff(a, b, c, threads=threads, exe=False)
    elif op == "diff":
        run = lambda: diff(a, b, c, format=fmt, threads=threads)
    else:
        run = lambda: apply(a, b, c, threads=threads)
elif tool == "bsdiff4":
    import bsdiff4
    if op == "diff":
        run = lambda: bsdiff4.file_diff(a, b, c)  # old, new, patch
    else:
        run = lambda: bsdiff4.file_patch(a, c, b)  # old, out, patch
elif tool == "detools":
    import detools
    def run():
        if op == "diff":  # lzma, sequential, bsdiff: the CLI's defaults
            with open(a, "rb") as fo, open(b, "rb") as fn, open(c, "wb") as fp:
                detools.create_patch(fo, fn, fp)
        else:
            with open(a, "rb") as fo, open(b, "rb") as fp, open(c, "wb") as fout:
                detools.apply_patch(fo, fp, fout)
else:
    sys.exit("unknown worker tool " + tool)
seconds = cpu = 0.0
if op != "noop":
    t0, c0 = time.perf_counter(), time.process_time()
    result = run()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    to_dict = getattr(result, "to_dict", None)
    info = to_dict() if callable(to_dict) else None
print(json.dumps({"seconds": seconds, "cpu": cpu, "info": info}, default=str))
"""


def _worker_argv(tool: str, op: str, a: str = "", b: str = "", c: str = "") -> list[str]:
    return [sys.executable, "-c", WORKER, tool, op, a, b, c]


# -------------------------------------------------------------------------- tools


@dataclasses.dataclass(frozen=True)
class Tool:
    """How to run one delta tool: argv builders for diff and apply."""

    name: str
    label: str
    diff: Callable[[str, str, str], list[str]]  # (old, new, patch) -> argv
    apply: Callable[[str, str, str], list[str]]  # (old, patch, out) -> argv
    python: bool = False  # timed inside the worker process
    slow: bool = False  # suffix-sorts the whole old file: skipped on big sets in --quick


def _py(tool: str, op: str) -> Callable[[str, str, str], list[str]]:
    def argv(a: str, b: str, c: str) -> list[str]:
        return _worker_argv(tool, op, a, b, c)

    return argv


def _py_tool(name: str, label: str, *, slow: bool = False) -> Tool:
    return Tool(name, label, _py(name, "diff"), _py(name, "apply"), python=True, slow=slow)


def _bsdiff(o: str, n: str, p: str) -> list[str]:
    return ["bsdiff", o, n, p]


def _bspatch(o: str, p: str, out: str) -> list[str]:
    return ["bspatch", o, out, p]


def _xdelta3_diff(o: str, n: str, p: str) -> list[str]:
    return ["xdelta3", "-9", "-e", "-f", "-s", o, n, p]


def _xdelta3_apply(o: str, p: str, out: str) -> list[str]:
    return ["xdelta3", "-d", "-f", "-s", o, p, out]


def _cli() -> list[str]:
    """The ``bsipatch`` command as a user runs it: $BSIPATCH_CLI (e.g. the script of a
    non-editable install, whose start-up a user pays), else the script beside this
    interpreter, else ``python -m bsipatch``."""
    chosen = os.environ.get("BSIPATCH_CLI")
    if chosen:
        return [chosen]
    script = os.path.join(os.path.dirname(sys.executable), "bsipatch")
    if os.path.isfile(script):
        return [script]
    return [sys.executable, "-m", "bsipatch"]


def _cli_diff(o: str, n: str, p: str) -> list[str]:
    return [*_cli(), "diff", "-q", o, n, p]


def _cli_apply(o: str, p: str, out: str) -> list[str]:
    return [*_cli(), "apply", "-q", o, p, out]


#: HDiffPatch is not packaged in Debian: point HDIFFPATCH_DIR at a directory holding
#: hdiffz and hpatchz (built from its sources for measuring only), or put them on PATH.
HDIFFPATCH_DIR = os.environ.get("HDIFFPATCH_DIR", "")


def _hdp(name: str) -> str:
    return str(Path(HDIFFPATCH_DIR) / name) if HDIFFPATCH_DIR else name


#: hdiffz options; the default is match mode (suffix array), zstd at its strongest, two
#: threads. BENCH_HDIFFZ_ARGS="-s -c-zstd-21-24" selects its faster block-match mode.
HDIFFZ_ARGS = os.environ.get("BENCH_HDIFFZ_ARGS", "-p-2 -c-zstd-21-24").split()


def _hdiffz(o: str, n: str, p: str) -> list[str]:
    return [_hdp("hdiffz"), "-f", *HDIFFZ_ARGS, o, n, p]


def _hpatchz(o: str, p: str, out: str) -> list[str]:
    return [_hdp("hpatchz"), "-f", o, p, out]


def _hpatchz_durable(o: str, p: str, out: str) -> list[str]:
    """hpatchz, then its output and directory fsynced (coreutils ``sync FILE``): the
    durability a ``bsipatch apply`` into a path gives (fsync, rename, directory fsync),
    which hpatchz alone does not. Measured beside the plain run, reported, not a goal."""
    script = 'set -e; "$0" -f "$1" "$2" "$3" >/dev/null; sync "$3" "$(dirname "$3")"'
    return ["sh", "-c", script, _hdp("hpatchz"), o, p, out]


def _zstd_diff(o: str, n: str, p: str) -> list[str]:
    return ["zstd", "-q", "-f", "-19", "--long=31", f"--patch-from={o}", n, "-o", p]


def _zstd_apply(o: str, p: str, out: str) -> list[str]:
    return ["zstd", "-q", "-f", "-d", "--long=31", f"--patch-from={o}", p, "-o", out]


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        _py_tool("bsipatch", "bsipatch (all cores)"),
        _py_tool("bsipatch-1t", "bsipatch (threads=1)"),
        _py_tool("bsipatch-bsdiff40", "bsipatch --format bsdiff40"),
        _py_tool("bsipatch-v1", "bsipatch, no executable transform"),
        Tool("bsipatch-cli", "bsipatch CLI (whole process)", _cli_diff, _cli_apply),
        Tool("hdiffpatch", "HDiffPatch hdiffz -c-zstd-21-24", _hdiffz, _hpatchz),
        Tool("bsdiff", "bsdiff/bspatch (Debian)", _bsdiff, _bspatch, slow=True),
        _py_tool("bsdiff4", "bsdiff4 (PyPI)", slow=True),
        _py_tool("detools", "detools (PyPI, lzma)", slow=True),
        Tool("xdelta3", "xdelta3 -9", _xdelta3_diff, _xdelta3_apply),
        Tool("zstd", "zstd -19 --long=31 --patch-from", _zstd_diff, _zstd_apply),
    )
}
BSIPATCH_TOOLS = ("bsipatch", "bsipatch-1t", "bsipatch-bsdiff40", "bsipatch-cli", "bsipatch-v1")
DEFAULT_TOOLS = (
    "bsipatch",
    "bsipatch-cli",
    "bsipatch-1t",
    "hdiffpatch",
    "bsdiff",
    "bsdiff4",
    "detools",
    "xdelta3",
    "zstd",
)


# -------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Run:
    """One subprocess run: its time, peak memory and outcome."""

    status: str  # "ok" | "timeout" | "error" | "skipped"
    seconds: float | None = None  # the tool's time (see module docstring)
    cpu: float | None = None  # user + system CPU seconds, same scope as seconds
    wall: float | None = None  # spawn to exit
    peak_mib: float | None = None
    anon_mib: float | None = None  # highest RssAnon seen (sampled), mapped file pages excluded
    detail: str = ""
    info: Any = None


@dataclasses.dataclass
class Step:
    """Repeated runs of one operation, summarised."""

    status: str
    seconds: float | None = None  # median over the runs
    cpu: float | None = None  # median CPU seconds (user + system) over the runs
    peak_mib: float | None = None  # highest over the runs
    anon_mib: float | None = None  # highest sampled RssAnon over the runs
    wall: float | None = None  # median spawn-to-exit seconds
    runs: list[float] = dataclasses.field(default_factory=list)
    detail: str = ""
    info: Any = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


def _anon_kib(pid: int) -> int:
    """RssAnon (KiB) of ``pid`` and all its descendants, 0 where they are gone."""
    total = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                total += int(line.split()[1])
                break
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += _anon_kib(int(child))
    return total


class _AnonSampler:
    """Samples the RssAnon of a process tree every few milliseconds; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _anon_kib(self.pid))
            self.stop.wait(self.every)

    def close(self) -> float:
        self.stop.set()
        self.thread.join()
        return self.peak / 1024


def run_measured(argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` once; time it, read its own peak RSS, kill it after ``timeout``."""
    # A child forked from this (large) Python process inherits its memory high-water
    # mark across exec, so the tool is started by /usr/bin/time (a small process),
    # which reports the tool's own peak RSS.
    gnu_time = GNU_TIME if GNU_TIME and Path(GNU_TIME).exists() else None
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".rss") as rss,
    ):
        full = [gnu_time, "-f", "%M %U %S", "-o", rss.name, *argv] if gnu_time else argv
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(full, stdout=out, stderr=err, env=env, start_new_session=True)
        except FileNotFoundError as exc:
            return Run("error", detail=f"not installed: {exc.filename}")
        timed_out = threading.Event()

        def kill() -> None:
            # Kill the tool first so that /usr/bin/time still reports its peak memory,
            # then, if anything is left, the whole process group we started.
            timed_out.set()
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            with contextlib.suppress(OSError, ValueError):
                for pid in children.read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            if gnu_time is None or not stopped.wait(5.0):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        stopped = threading.Event()
        timer = threading.Timer(timeout, kill)
        timer.start()
        sampler = _AnonSampler(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            stopped.set()
            timer.cancel()
            anon = sampler.close()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = usage.ru_maxrss / 1024  # KiB on Linux
        cpu = usage.ru_utime + usage.ru_stime
        if gnu_time:
            fields = (rss.read().strip().splitlines() or [""])[-1].split()
            if len(fields) == 3 and fields[0].isdigit():
                peak = int(fields[0]) / 1024
                cpu = float(fields[1]) + float(fields[2])
        if timed_out.is_set():
            return Run("timeout", wall=wall, peak_mib=peak, detail=f"killed after {timeout:g} s")
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        if proc.returncode != 0:
            tail = (stderr.strip() or stdout.strip()).splitlines()[-1:] or [""]
            return Run(
                "error", wall=wall, peak_mib=peak, detail=f"exit {proc.returncode}: {tail[0][:200]}"
            )
        seconds, info = wall, None
        if argv[1:3] == ["-c", WORKER]:
            try:
                report = json.loads(stdout.strip().splitlines()[-1])
                seconds, info = float(report["seconds"]), report.get("info")
                cpu = float(report["cpu"])
            except (ValueError, IndexError, KeyError) as exc:
                return Run("error", wall=wall, peak_mib=peak, detail=f"bad worker output: {exc}")
        return Run(
            "ok", seconds=seconds, cpu=cpu, wall=wall, peak_mib=peak, anon_mib=anon, info=info
        )


def run_repeated(
    argv: list[str],
    *,
    repeat: int,
    timeout: float,
    cheap: float,
    env: dict[str, str] | None,
    check: Callable[[], str | None] | None = None,
) -> Step:
    """Run ``argv`` up to ``repeat`` times (once if the first run took over ``cheap`` s).

    ``check`` runs after every successful run and returns an error text or None.
    """
    runs: list[Run] = []
    for i in range(repeat):
        r = run_measured(argv, timeout=timeout, env=env)
        if r.status == "ok" and check is not None:
            problem = check()
            if problem:
                r = dataclasses.replace(r, status="error", detail=problem)
        runs.append(r)
        if r.status != "ok" or (i == 0 and (r.wall or 0) > cheap):
            break
    last = runs[-1]
    if last.status != "ok":
        return Step(last.status, peak_mib=last.peak_mib, detail=last.detail, runs=[])
    secs = [r.seconds for r in runs if r.seconds is not None]
    cpus = [r.cpu for r in runs if r.cpu is not None]
    walls = [r.wall for r in runs if r.wall is not None]
    return Step(
        "ok",
        seconds=statistics.median(secs),
        cpu=statistics.median(cpus) if cpus else None,
        peak_mib=max(r.peak_mib or 0.0 for r in runs),
        anon_mib=max(r.anon_mib or 0.0 for r in runs),
        wall=statistics.median(walls) if walls else None,
        runs=[round(s, 4) for s in secs],
        info=last.info,
    )


# -------------------------------------------------------------------------- comparing


@dataclasses.dataclass
class ToolResult:
    """A tool's figures on one data set."""

    tool: str
    label: str
    patch_bytes: int | None
    diff: Step
    apply: Step
    identical: bool | None
    #: HDiffPatch only: hpatchz followed by an fsync of its output (_hpatchz_durable)
    apply_durable: Step | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        d = {
            "tool": self.tool,
            "label": self.label,
            "patch_bytes": self.patch_bytes,
            "diff": self.diff.to_dict(),
            "apply": self.apply.to_dict(),
            "identical": self.identical,
        }
        if self.apply_durable is not None:
            d["apply_durable"] = self.apply_durable.to_dict()
        return d


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _fmt_step(s: Step) -> str:
    if s.status != "ok":
        return f"{s.status} ({s.detail})" if s.detail else s.status
    runs = "/".join(f"{x:.3f}" for x in s.runs)
    return (
        f"{s.seconds:.3f} s [{runs}], cpu {s.cpu or 0:.3f} s, peak {s.peak_mib:.0f} MiB, "
        f"anon {s.anon_mib or 0:.0f} MiB"
    )


def _read_through(path: Path) -> None:
    """Read a file once, so that every tool finds it in the page cache (else the first
    tool to run on a set the machine evicted pays the disk, e.g. after the major set)."""
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def compare_pair(
    pair: Any, tools: list[Tool], opts: argparse.Namespace, workdir: Path
) -> list[ToolResult]:
    """Diff and apply ``pair`` with every tool; verify every output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_DIR), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    # Python tools run as installed: with their bytecode cached (main() compiles it once),
    # not recompiled from source by every process as PYTHONDONTWRITEBYTECODE=1 would make
    # them (about 30 ms of a small apply's CPU)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if opts.threads:
        env["BENCH_BSIPATCH_THREADS"] = str(opts.threads)
    big = pair.old.stat().st_size > opts.quick_big
    for path in (pair.old, pair.new):  # into the page cache: no tool pays the first read
        _read_through(path)
    results = []
    for tool in tools:
        patch = workdir / f"{pair.name}.{tool.name}.patch"
        out = workdir / f"{pair.name}.{tool.name}.out"
        if opts.quick and tool.slow and big:
            skipped = Step("skipped", detail="--quick: slow peer on a large set")
            results.append(ToolResult(tool.name, tool.label, None, skipped, skipped, None))
            _log(f"{pair.name} {tool.name}: skipped (--quick)")
            continue
        sizes: list[int] = []
        durable: Step | None = None

        def record_size(patch: Path = patch, sizes: list[int] = sizes) -> str | None:
            if not patch.exists():
                return "no patch written"
            sizes.append(patch.stat().st_size)
            return None

        d = run_repeated(
            tool.diff(str(pair.old), str(pair.new), str(patch)),
            repeat=opts.repeat,
            timeout=opts.timeout,
            cheap=opts.cheap,
            env=env,
            check=record_size,
        )
        _log(
            f"{pair.name} {tool.name} diff: {_fmt_step(d)}"
            + (f", {sizes[-1]:,} B" if sizes else "")
        )
        if d.status == "ok" and len(set(sizes)) > 1:
            d.detail = f"patch size varied between runs: {sizes}"
        size = sizes[-1] if d.status == "ok" else None
        identical: bool | None = None
        if d.status == "ok":

            def verify(out: Path = out) -> str | None:
                if not out.exists():
                    return "no output written"
                same = filecmp.cmp(out, pair.new, shallow=False)
                out.unlink()
                return None if same else "output differs from the new file"

            a = run_repeated(
                tool.apply(str(pair.old), str(patch), str(out)),
                repeat=opts.repeat,
                timeout=opts.timeout,
                cheap=opts.cheap,
                env=env,
                check=verify,
            )
            if a.status == "ok":
                identical = True
            elif a.status == "error" and "differs from the new file" in a.detail:
                identical = False
            _log(f"{pair.name} {tool.name} apply: {_fmt_step(a)}")
            if tool.name == "hdiffpatch" and a.status == "ok":
                durable = run_repeated(
                    _hpatchz_durable(str(pair.old), str(patch), str(out)),
                    repeat=opts.repeat,
                    timeout=opts.timeout,
                    cheap=opts.cheap,
                    env=env,
                    check=verify,
                )
                _log(f"{pair.name} {tool.name} apply + fsync: {_fmt_step(durable)}")
        else:
            a = Step("skipped", detail="no patch")
        if not opts.keep:
            patch.unlink(missing_ok=True)
            out.unlink(missing_ok=True)
        results.append(ToolResult(tool.name, tool.label, size, d, a, identical, durable))
    return results


def python_baseline(tool: str, env: dict[str, str]) -> float | None:
    """Peak RSS (MiB) of a worker that only imports ``tool``."""
    r = run_measured(
        _worker_argv(tool, "noop"),
        timeout=60,
        env=env,
    )
    return r.peak_mib if r.status == "ok" else None


# -------------------------------------------------------------------------- report


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _by_tool(results: list[ToolResult]) -> dict[str, ToolResult]:
    return {r.tool: r for r in results}


def _cell(v: float | None, fmt: str, missing: str = "-") -> str:
    return format(v, fmt) if v is not None else missing


def table(pair_dict: dict[str, Any], results: list[ToolResult], timeout: float) -> str:
    """The human table for one data set, with ratios against bsdiff and zstd."""
    by = _by_tool(results)
    bsd, zstd = by.get("bsdiff"), by.get("zstd")
    bsd_ok = bsd is not None and bsd.diff.status == "ok"
    head = (
        "tool",
        "patch B",
        "diff s",
        "cpu s",
        "diff MiB",
        "apply s",
        "cpu s",
        "apply MiB",
        "same",
    )
    head2 = ("size", "size", "diff speed", "diff mem", "apply speed")
    sub2 = ("/bsdiff", "/zstd", "x bsdiff", "/bsdiff", "x bspatch")
    row = "{:<31} {:>11} {:>8} {:>7} {:>8} {:>8} {:>7} {:>9} {:>4}  {:>7} {:>6} {:>10} {:>8} {:>11}"
    lines = [
        f"== {pair_dict['name']}: {pair_dict['description']}",
        f"   old {pair_dict['old_size']:,} B, new {pair_dict['new_size']:,} B",
        row.format(*head, *head2),
        row.format(*[""] * len(head), *sub2),
    ]
    for r in results:
        d, a = r.diff, r.apply
        size_ratio = _ratio(r.patch_bytes, bsd.patch_bytes if bsd_ok and bsd else None)
        zstd_ratio = _ratio(r.patch_bytes, zstd.patch_bytes if zstd else None)
        speed = _ratio(bsd.diff.seconds if bsd_ok and bsd else None, d.seconds)
        mem = _ratio(
            d.peak_mib if d.status == "ok" else None, bsd.diff.peak_mib if bsd_ok and bsd else None
        )
        apply_speed = _ratio(bsd.apply.seconds if bsd else None, a.seconds)
        if speed is None and bsd is not None and bsd.diff.status == "timeout" and d.seconds:
            speed_cell = f">{timeout / d.seconds:.0f}x"
        else:
            speed_cell = _cell(speed, ".1f") + ("x" if speed is not None else "")
        lines.append(
            row.format(
                r.label,
                f"{r.patch_bytes:,}" if r.patch_bytes is not None else d.status,
                _cell(d.seconds, ".3f", d.status),
                _cell(d.cpu, ".2f"),
                _cell(d.peak_mib, ".0f"),
                _cell(a.seconds, ".3f", a.status),
                _cell(a.cpu, ".3f"),
                _cell(a.peak_mib if a.status == "ok" else None, ".0f"),
                {True: "yes", False: "NO", None: "-"}[r.identical],
                _cell(size_ratio, ".3f"),
                _cell(zstd_ratio, ".3f"),
                speed_cell,
                _cell(mem, ".2f"),
                _cell(apply_speed, ".2f") + ("x" if apply_speed is not None else ""),
            )
        )
        if d.status != "ok" and d.detail:
            lines.append(f"{'':<31}   diff {d.status}: {d.detail}")
        elif a.status not in ("ok", "skipped") and a.detail:
            lines.append(f"{'':<31}   apply {a.status}: {a.detail}")
        elif d.detail:
            lines.append(f"{'':<31}   note: {d.detail}")
    return "\n".join(lines)


@dataclasses.dataclass
class Goal:
    """One goal of the issue checked on one data set."""

    goal: str
    data_set: str
    status: str  # PASS | FAIL | UNKNOWN | INFO
    detail: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


G_SIZE_BSDIFF = "patch size <= bsdiff's (real binaries)"
G_SIZE_ZSTD = "patch >= 40% smaller than zstd --patch-from's (real binaries)"
G_SPEED_5X = "diff >= 5x faster than bsdiff (real binaries)"
G_SPEED_50X = "diff >= 50x faster than bsdiff (near-identical, < 1% of blocks changed)"
G_FS_TIME = "file-system image: diff < 3 s"
G_FS_SIZE = "file-system image: patch <= HDiffPatch's 496 KB"
G_DIFF_MEM = "diff peak memory <= bsdiff's"
G_APPLY_SPEED = "apply at least as fast as bspatch"
G_APPLY_MEM = "apply peak memory < 64 MiB"
G_IDENTICAL = "applied output byte-identical"


def _goals_for_set(
    ds: str, by: dict[str, ToolResult], timeout: float, base: float | None
) -> list[tuple[str, bool | None, str]]:
    """(goal, ok or None if it cannot be decided, detail) for one data set."""
    me = by["bsipatch"]
    bsd, zstd = by.get("bsdiff"), by.get("zstd")
    out: list[tuple[str, bool | None, str]] = []
    md, ma = me.diff, me.apply
    interp = f" (whole process; {base:.0f} MiB of it is the interpreter + imports)" if base else ""
    me_ok = md.status == "ok" and md.seconds is not None and me.patch_bytes is not None
    bsd_ok = bsd is not None and bsd.diff.status == "ok" and bsd.patch_bytes is not None
    bsd_state = "bsdiff missing" if bsd is None else f"bsdiff {bsd.diff.status}"
    if not me_ok:
        return [("bsipatch diff", False, f"{md.status}: {md.detail}")]
    assert md.seconds is not None and me.patch_bytes is not None
    if ds == "libcrypto":
        if bsd_ok and bsd and bsd.patch_bytes and bsd.diff.seconds:
            x = me.patch_bytes / bsd.patch_bytes
            out.append(
                (
                    G_SIZE_BSDIFF,
                    x <= 1,
                    f"{me.patch_bytes:,} B vs bsdiff {bsd.patch_bytes:,} B (x{x:.3f})",
                )
            )
            x = bsd.diff.seconds / md.seconds
            out.append(
                (
                    G_SPEED_5X,
                    x >= 5,
                    f"{md.seconds:.3f} s vs bsdiff {bsd.diff.seconds:.3f} s: {x:.1f}x",
                )
            )
        else:
            out += [(G_SIZE_BSDIFF, None, bsd_state), (G_SPEED_5X, None, bsd_state)]
        if zstd is not None and zstd.diff.status == "ok" and zstd.patch_bytes:
            cut = 1 - me.patch_bytes / zstd.patch_bytes
            detail = (
                f"{me.patch_bytes:,} B vs zstd {zstd.patch_bytes:,} B: {100 * cut:.1f}% smaller"
            )
            out.append((G_SIZE_ZSTD, cut >= 0.40, detail))
        else:
            out.append((G_SIZE_ZSTD, None, "no zstd figure"))
    if ds.startswith("near"):
        if bsd_ok and bsd and bsd.diff.seconds:
            x = bsd.diff.seconds / md.seconds
            out.append(
                (
                    G_SPEED_50X,
                    x >= 50,
                    f"{md.seconds:.3f} s vs bsdiff {bsd.diff.seconds:.3f} s: {x:.1f}x",
                )
            )
        elif bsd is not None and bsd.diff.status == "timeout":
            x = timeout / md.seconds
            detail = f"{md.seconds:.3f} s vs bsdiff > {timeout:g} s (timeout): > {x:.0f}x"
            out.append((G_SPEED_50X, True if x >= 50 else None, detail))
        else:
            out.append((G_SPEED_50X, None, bsd_state))
    if ds == "fsimage":
        out.append((G_FS_TIME, md.seconds < 3.0, f"{md.seconds:.3f} s"))
        limit = HDIFFPATCH_FS_PATCH_BYTES
        out.append((G_FS_SIZE, me.patch_bytes <= limit, f"{me.patch_bytes:,} B vs {limit:,} B"))
    # on every data set
    if bsd_ok and bsd and md.peak_mib is not None and bsd.diff.peak_mib is not None:
        detail = f"{md.peak_mib:.0f} MiB vs bsdiff {bsd.diff.peak_mib:.0f} MiB{interp}"
        out.append((G_DIFF_MEM, md.peak_mib <= bsd.diff.peak_mib, detail))
    elif bsd is not None and bsd.diff.status == "timeout" and md.peak_mib is not None:
        detail = f"{md.peak_mib:.0f} MiB; bsdiff timed out at {bsd.diff.peak_mib or 0:.0f} MiB"
        out.append((G_DIFF_MEM, True if md.peak_mib <= (bsd.diff.peak_mib or 0) else None, detail))
    if ma.status != "ok" or ma.seconds is None or ma.peak_mib is None:
        out.append(
            (
                G_IDENTICAL if me.identical is False else "bsipatch apply",
                False,
                f"{ma.status}: {ma.detail}",
            )
        )
        return out
    if bsd is not None and bsd.apply.status == "ok" and bsd.apply.seconds:
        detail = f"{ma.seconds:.3f} s vs bspatch {bsd.apply.seconds:.3f} s"
        out.append((G_APPLY_SPEED, ma.seconds <= bsd.apply.seconds, detail))
    else:
        out.append((G_APPLY_SPEED, None, "no bspatch figure on this set"))
    detail = f"{ma.peak_mib:.1f} MiB{interp}"
    out.append((G_APPLY_MEM, ma.peak_mib < APPLY_PEAK_LIMIT_MIB, detail))
    return out


def _ok(r: ToolResult | None, step: str) -> Step | None:
    if r is None:
        return None
    st: Step = getattr(r, step)
    return st if st.status == "ok" and st.wall is not None else None


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _goals13_for_set(ds: str, by: dict[str, ToolResult]) -> list[tuple[str, bool | None, str]]:
    """Issue 13's goals on one set: the whole-process bsipatch CLI against its peers."""
    me, hdp = by.get("bsipatch-cli"), by.get("hdiffpatch")
    bsd, xd = by.get("bsdiff"), by.get("xdelta3")
    out: list[tuple[str, bool | None, str]] = []
    ma, ha = _ok(me, "apply"), _ok(hdp, "apply")
    md, hd = _ok(me, "diff"), _ok(hdp, "diff")
    if ma is not None and me is not None:
        assert ma.wall is not None
        limit = {"fsimage": 2.0, "major": 2.0, "near": 3.0}.get(ds)
        if limit is not None and ha is not None and ha.wall:
            r = ma.wall / ha.wall
            detail = (
                f"{ma.wall:.3f} s (cpu {ma.cpu or 0:.2f}) vs hpatchz {ha.wall:.3f} s "
                f"(cpu {ha.cpu or 0:.2f}): {r:.2f}x wall, {_x(ma.cpu, ha.cpu)} cpu"
            )
            out.append((f"apply (old+new verified) <= {limit:g}x hpatchz wall", r <= limit, detail))
            hd_ = hdp.apply_durable if hdp is not None else None
            if hd_ is not None and hd_.status == "ok" and hd_.wall:
                out.append(
                    (
                        f"{INFO} the same durability: hpatchz + fsync of its output",
                        None,
                        f"{ma.wall:.3f} s vs {hd_.wall:.3f} s: {ma.wall / hd_.wall:.2f}x wall",
                    )
                )
        out.append(
            (
                "apply peak anonymous memory < 64 MiB",
                (ma.anon_mib or 0) < APPLY_PEAK_LIMIT_MIB,
                f"RssAnon {ma.anon_mib or 0:.1f} MiB, peak RSS incl. mapped pages "
                f"{ma.peak_mib or 0:.0f} MiB"
                + (f" (hpatchz {ha.anon_mib or 0:.1f} / {ha.peak_mib or 0:.0f})" if ha else ""),
            )
        )
    if me is None or md is None or me.patch_bytes is None:
        return out
    if ds == "near" and hdp is not None and hdp.patch_bytes:
        r = me.patch_bytes / hdp.patch_bytes
        detail = f"{me.patch_bytes:,} B vs HDiffPatch {hdp.patch_bytes:,} B: {r:.2f}x"
        out.append(("tiny change: patch <= 2x HDiffPatch's", r <= 2, detail))
    if ds == "major" and hd is not None and hdp is not None and hdp.patch_bytes:
        r = me.patch_bytes / hdp.patch_bytes
        out.append(
            (
                "major update: patch <= HDiffPatch's",
                r <= 1,
                f"{me.patch_bytes:,} B vs {hdp.patch_bytes:,} B: {r:.3f}x",
            )
        )
        r = (md.cpu or 0) / (hd.cpu or 1)
        detail = f"{md.cpu or 0:.1f} CPU s vs {hd.cpu or 0:.1f}: {r:.2f}x"
        out.append(("major update: diff CPU <= 0.5x HDiffPatch's", r <= 0.5, detail))
        r = (md.peak_mib or 0) / (hd.peak_mib or 1)
        detail = f"{md.peak_mib or 0:.0f} MiB vs {hd.peak_mib or 0:.0f} MiB: {r:.2f}x"
        out.append(("major update: diff peak memory <= HDiffPatch's", r <= 1, detail))
    xdd = _ok(xd, "diff")
    if ds == "scatter" and xdd is not None and xdd.wall:
        assert md.wall is not None
        r = md.wall / xdd.wall
        detail = (
            f"{md.wall:.2f} s vs xdelta3 {xdd.wall:.2f} s: {r:.2f}x (cpu {_x(md.cpu, xdd.cpu)})"
        )
        out.append(("scattered 1 GiB: diff <= 0.25x xdelta3's time", r <= 0.25, detail))
    bd = _ok(bsd, "diff")
    if ds == "libcrypto" and bd is not None and bsd is not None and bsd.patch_bytes:
        assert md.wall is not None and bd.wall is not None
        r = bd.wall / md.wall
        detail = f"{md.wall:.3f} s vs bsdiff {bd.wall:.3f} s: {r:.1f}x (cpu {_x(bd.cpu, md.cpu)})"
        out.append(("libcrypto: whole-process diff >= 6x faster than bsdiff", r >= 6, detail))
        r = me.patch_bytes / bsd.patch_bytes
        detail = f"{me.patch_bytes:,} B vs {bsd.patch_bytes:,} B: {r:.3f}x"
        out.append(("libcrypto: patch <= bsdiff's", r <= 1, detail))
    return out


#: A line printed with the goals that is not one (status INFO).
INFO = "(not a goal)"


def check_goals13(all_results: dict[str, list[ToolResult]]) -> list[Goal]:
    """Issue 13's goals for the whole-process ``bsipatch-cli`` row, every data set."""
    goals: list[Goal] = []
    for ds, results in all_results.items():
        for goal, ok, detail in _goals13_for_set(ds, _by_tool(results)):
            if goal.startswith(INFO):
                status = "INFO"
            else:
                status = "UNKNOWN" if ok is None else ("PASS" if ok else "FAIL")
            goals.append(Goal(goal, ds, status, detail))
    return goals


def check_goals(
    all_results: dict[str, list[ToolResult]],
    quick: bool,
    timeout: float,
    base: float | None = None,
) -> list[Goal]:
    """Evaluate the issue's performance goals for the default bsipatch row."""
    goals: list[Goal] = []
    for ds, results in all_results.items():
        by = _by_tool(results)
        if "bsipatch" not in by:
            continue
        for goal, ok, detail in _goals_for_set(ds, by, timeout, base):
            status = "UNKNOWN" if ok is None else ("PASS" if ok else "FAIL")
            goals.append(Goal(goal, ds + (" (--quick data)" if quick else ""), status, detail))
    return goals


# -------------------------------------------------------------------------- main


def _tool_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "bsdiff", "xdelta3", "zstd", "e2fsprogs"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for line in out.splitlines():
            name, _, ver = line.partition("\t")
            versions[name] = ver
    except OSError:
        pass
    for mod in ("bsdiff4", "detools"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = "missing"
    return versions


def _machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other load skews wall times
    }


def bsipatch_available() -> tuple[bool, str]:
    """Whether ``bsipatch.delta.diff`` and ``bsipatch.delta.apply`` import from the checkout."""
    sys.path.insert(0, str(REPO_DIR))
    try:
        import bsipatch
        from bsipatch.delta.apply import apply
        from bsipatch.delta.diff import diff

        _ = diff, apply
    except (ImportError, AttributeError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        sys.path.remove(str(REPO_DIR))
    return True, getattr(bsipatch, "__version__", "?")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the table and goals (and JSON on request)."""
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(BENCH_DIR))
    import data

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sets",
        default=",".join(data.SET_NAMES),
        help=f"comma-separated, of {','.join(data.SET_NAMES)}",
    )
    ap.add_argument(
        "--tools", default=",".join(DEFAULT_TOOLS), help=f"comma-separated, of {','.join(TOOLS)}"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="timed runs of cheap steps (median; default 3)"
    )
    ap.add_argument(
        "--cheap",
        type=float,
        default=20.0,
        help="repeat only steps whose first run took under this many s",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="per run, seconds (default 300); reported as 'timeout'",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for the 'bsipatch' row (default: library default)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1 run each, 60 s timeout, 16 MB near-identical pair, "
        "slow peers skipped on sets > 64 MB",
    )
    ap.add_argument(
        "--json",
        metavar="PATH",
        help="also write all figures as JSON to PATH ('-' = stdout, table to stderr)",
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep patches and outputs in the work directory"
    )
    ap.add_argument(
        "--workdir", type=Path, help="where patches go (default: a temporary directory)"
    )
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.repeat = 1
        if opts.timeout == 300.0:
            opts.timeout = 60.0
    opts.quick_big = 64 * 1024 * 1024

    names = [t for t in opts.tools.split(",") if t]
    unknown = [t for t in names if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tools: {', '.join(unknown)}")
    have, why = bsipatch_available()
    if not have:
        print(
            f"NOTE: bsipatch.delta.diff/apply not available ({why}): running the peers only.",
            file=sys.stderr,
        )
        names = [t for t in names if t not in BSIPATCH_TOOLS]
    missing = [
        t
        for t in names
        if not TOOLS[t].python and shutil.which(TOOLS[t].diff("o", "n", "p")[0]) is None
    ]
    if missing:
        print(f"NOTE: not installed, skipped: {', '.join(missing)}", file=sys.stderr)
        names = [t for t in names if t not in missing]
    tools = [TOOLS[t] for t in names]

    pairs = data.get_pairs([s for s in opts.sets.split(",") if s], quick=opts.quick)
    workdir_cm = (
        tempfile.TemporaryDirectory(prefix="bench-delta-") if opts.workdir is None else None
    )
    workdir = Path(workdir_cm.name) if workdir_cm else opts.workdir
    workdir.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    import compileall

    compileall.compile_dir(str(REPO_DIR / "bsipatch"), quiet=1)
    baselines = {
        t: python_baseline(t, env)
        for t in names
        if TOOLS[t].python and t in ("bsipatch", "bsdiff4", "detools")
    }

    started = datetime.datetime.now(datetime.timezone.utc)
    machine = _machine()
    all_results: dict[str, list[ToolResult]] = {}
    pair_dicts: dict[str, dict[str, Any]] = {}
    try:
        for pair in pairs:
            pair_dicts[pair.name] = pair.to_dict()
            _log(f"data set {pair.name}: {pair.description}")
            all_results[pair.name] = compare_pair(pair, tools, opts, workdir)
    finally:
        if workdir_cm:
            workdir_cm.cleanup()
    goals = (
        check_goals(all_results, opts.quick, opts.timeout, baselines.get("bsipatch"))
        if have
        else []
    )

    human = [
        f"bsipatch delta comparison, {started:%Y-%m-%d %H:%M} UTC: "
        + ("bsipatch " + why if have else "bsipatch NOT available (" + why + "): peers only"),
        f"machine: {machine}, load average at the end {os.getloadavg()[0]:.2f}",
        f"tools: {_tool_versions()}",
        f"runs: repeat {opts.repeat} (median; steps over {opts.cheap:g} s run once), "
        f"timeout {opts.timeout:g} s" + (", --quick" if opts.quick else ""),
        "times: native tools spawn-to-exit; Python tools around the library call "
        "(interpreter start-up excluded).",
        "peak MiB: max RSS of the tool's own process"
        + (
            ", Python baseline (imports only): "
            + ", ".join(f"{k} {v:.0f} MiB" for k, v in baselines.items() if v)
            if baselines
            else ""
        ),
        "",
    ]
    for name, results in all_results.items():
        human.append(table(pair_dicts[name], results, opts.timeout))
        me = _by_tool(results).get("bsipatch")
        if me is not None and isinstance(me.diff.info, dict):
            stats = me.diff.info.get("stats")
            segs = me.diff.info.get("segments")
            nseg = len(segs) if isinstance(segs, list) else segs
            human.append(
                f"   bsipatch patch: {nseg} segments, stats {json.dumps(stats, default=str)}"
            )
        cli = _by_tool(results).get("bsipatch-cli")
        if cli is not None and cli.apply.status == "ok" and cli.apply.cpu is not None:
            gb = pair_dicts[name]["new_size"] / 1e9
            human.append(
                f"   bsipatch-cli apply: {cli.apply.cpu / gb:.2f} CPU s per output GB, "
                f"RssAnon peak {cli.apply.anon_mib or 0:.1f} MiB"
            )
        human.append("")
    goals13 = check_goals13(all_results) if have else []
    if goals13:
        human.append("Goals of issue 13 (whole processes, ratios from this run):")
        for g in goals13:
            human.append(f"  {g.status:<7} {g.goal} [{g.data_set}]: {g.detail}")
        human.append("")
    if goals:
        human.append("Goals of issue 3 (bsipatch row, default threads):")
        for g in goals:
            human.append(f"  {g.status:<7} {g.goal} [{g.data_set}]: {g.detail}")
    elif not have:
        human.append("Goals: not checked (bsipatch.delta.diff/apply not available).")
    text = "\n".join(human)

    report = {
        "started": started.isoformat(),
        "bsipatch": why if have else None,
        "machine": {**machine, "load_average_1min_end": round(os.getloadavg()[0], 2)},
        "tool_versions": _tool_versions(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "python_baseline_mib": baselines,
        "data_sets": [
            {**pair_dicts[n], "results": [r.to_dict() for r in rs]} for n, rs in all_results.items()
        ],
        "goals": [g.to_dict() for g in goals],
        "goals_issue13": [g.to_dict() for g in goals13],
    }
    if opts.json == "-":
        print(text, file=sys.stderr)
        print(json.dumps(report, indent=2, default=str))
    else:
        print(text)
        if opts.json:
            Path(opts.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    # exit 1 when an applied output was not byte-identical (goals are reported, not enforced)
    return 1 if any(r.identical is False for rs in all_results.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
