"""pytest-benchmark: bsipatch diff/apply against bsdiff4 (the baseline) and peers.

One benchmarked call per test. Tests are grouped per operation and data set
("diff libcrypto", "apply near16M", ...); each group holds the bsdiff4 baseline,
so pytest-benchmark's table reads as ratios against it. Every result is checked
(the patch applies back to the new file) after the timed rounds: these are
benchmarks, not timing assertions. Peer command-line tools are timed through
``subprocess`` on files, so their rows include process start-up (~1 ms).

Run: ``python -m pytest bench/test_bench_delta.py`` (add ``--bench-large`` for
the 92 MB and 256 MiB sets). ``compare_delta.py`` is the one-run comparison with
memory figures and the goals of issue 3.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import bsdiff4
import detools
import pytest
from conftest import Loaded, bsipatch_patch

LARGE = 64 * 1024 * 1024


def _rounds(pair: Loaded) -> int:
    return 1 if len(pair.old) > LARGE else 3


def _group(benchmark: Any, op: str, pair: Loaded) -> None:
    benchmark.group = f"{op} {pair.pair.name}"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def _bsdiff4_patch(pair: Loaded) -> bytes:
    return pair.patch("bsdiff4", lambda: bsdiff4.diff(pair.old, pair.new))


def _detools_patch(pair: Loaded) -> bytes:
    def make() -> bytes:
        out = io.BytesIO()
        detools.create_patch(io.BytesIO(pair.old), io.BytesIO(pair.new), out)
        return out.getvalue()

    return pair.patch("detools", make)


def _apply_bsipatch(bsipatch: Any, old: bytes, patch: bytes) -> bytes:
    out = io.BytesIO()
    bsipatch.apply(old, io.BytesIO(patch), out)
    return out.getvalue()


# ------------------------------------------------------------------------------ diff


def test_diff_bsdiff4_baseline(benchmark: Any, pair: Loaded) -> None:
    _group(benchmark, "diff", pair)
    patch = benchmark.pedantic(bsdiff4.diff, args=(pair.old, pair.new), rounds=_rounds(pair))
    assert bsdiff4.patch(pair.old, patch) == pair.new


def test_diff_bsipatch(benchmark: Any, pair: Loaded, bsipatch_delta: Any) -> None:
    _group(benchmark, "diff", pair)

    def setup() -> tuple[tuple[bytes, bytes, io.BytesIO], dict[str, Any]]:
        return (pair.old, pair.new, io.BytesIO()), {}

    outs: list[io.BytesIO] = []

    def run(old: bytes, new: bytes, out: io.BytesIO) -> None:
        bsipatch_delta.diff(old, new, out)
        outs.append(out)

    benchmark.pedantic(run, setup=setup, rounds=_rounds(pair))
    patch = outs[-1].getvalue()
    benchmark.extra_info["patch_bytes"] = len(patch)
    assert _apply_bsipatch(bsipatch_delta, pair.old, patch) == pair.new


def test_diff_bsipatch_one_thread(benchmark: Any, pair: Loaded, bsipatch_delta: Any) -> None:
    _group(benchmark, "diff", pair)

    def run() -> bytes:
        return bsipatch_patch(bsipatch_delta, pair.old, pair.new, threads=1)

    patch = benchmark.pedantic(run, rounds=_rounds(pair))
    benchmark.extra_info["patch_bytes"] = len(patch)
    assert _apply_bsipatch(bsipatch_delta, pair.old, patch) == pair.new


def test_diff_detools(benchmark: Any, pair: Loaded) -> None:
    _group(benchmark, "diff", pair)

    def run() -> bytes:
        out = io.BytesIO()
        detools.create_patch(io.BytesIO(pair.old), io.BytesIO(pair.new), out)
        return out.getvalue()

    patch = benchmark.pedantic(run, rounds=_rounds(pair))
    benchmark.extra_info["patch_bytes"] = len(patch)
    out = io.BytesIO()
    detools.apply_patch(io.BytesIO(pair.old), io.BytesIO(patch), out)
    assert out.getvalue() == pair.new


@pytest.mark.parametrize(
    "tool",
    ["bsdiff", "xdelta3", "zstd"],
)
def test_diff_system_tool(benchmark: Any, pair: Loaded, tool: str, tmp_path: Path) -> None:
    _group(benchmark, "diff", pair)
    exe = _tool(tool)
    old, new, patch = str(pair.pair.old), str(pair.pair.new), str(tmp_path / "patch")
    argv = {
        "bsdiff": [exe, old, new, patch],
        "xdelta3": [exe, "-9", "-e", "-f", "-s", old, new, patch],
        "zstd": [exe, "-q", "-f", "-19", "--long=31", f"--patch-from={old}", new, "-o", patch],
    }[tool]
    benchmark.pedantic(subprocess.run, args=(argv,), kwargs={"check": True}, rounds=_rounds(pair))
    benchmark.extra_info["patch_bytes"] = Path(patch).stat().st_size


# ------------------------------------------------------------------------------ apply


def test_apply_bsdiff4_baseline(benchmark: Any, pair: Loaded) -> None:
    _group(benchmark, "apply", pair)
    patch = _bsdiff4_patch(pair)
    out = benchmark.pedantic(bsdiff4.patch, args=(pair.old, patch), rounds=5)
    assert out == pair.new


def test_apply_bsipatch(benchmark: Any, pair: Loaded, bsipatch_delta: Any) -> None:
    _group(benchmark, "apply", pair)
    patch = pair.patch("bsipatch", lambda: bsipatch_patch(bsipatch_delta, pair.old, pair.new))
    out = benchmark.pedantic(_apply_bsipatch, args=(bsipatch_delta, pair.old, patch), rounds=5)
    assert out == pair.new


def test_apply_bsipatch_one_thread(benchmark: Any, pair: Loaded, bsipatch_delta: Any) -> None:
    _group(benchmark, "apply", pair)
    patch = pair.patch("bsipatch", lambda: bsipatch_patch(bsipatch_delta, pair.old, pair.new))

    def run() -> bytes:
        out = io.BytesIO()
        bsipatch_delta.apply(pair.old, io.BytesIO(patch), out, threads=1)
        return out.getvalue()

    assert benchmark.pedantic(run, rounds=5) == pair.new


def test_apply_detools(benchmark: Any, pair: Loaded) -> None:
    _group(benchmark, "apply", pair)
    patch = _detools_patch(pair)

    def run() -> bytes:
        out = io.BytesIO()
        detools.apply_patch(io.BytesIO(pair.old), io.BytesIO(patch), out)
        return out.getvalue()

    assert benchmark.pedantic(run, rounds=5) == pair.new


def test_apply_bspatch(benchmark: Any, pair: Loaded, tmp_path: Path) -> None:
    _group(benchmark, "apply", pair)
    exe = _tool("bspatch")
    patch = tmp_path / "patch"
    patch.write_bytes(_bsdiff4_patch(pair))  # bsdiff4 writes the BSDIFF40 format bspatch reads
    out = tmp_path / "out"
    argv = [exe, str(pair.pair.old), str(out), str(patch)]
    benchmark.pedantic(subprocess.run, args=(argv,), kwargs={"check": True}, rounds=5)
    assert out.read_bytes() == pair.new
