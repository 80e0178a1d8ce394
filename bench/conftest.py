"""pytest fixtures for the delta benchmarks: data pairs, patches made ahead of time.

The benchmarks themselves are in ``test_bench_delta.py`` (pytest-benchmark); the
data comes from ``data.py`` (cached under ``bench/data/``). This file runs no
benchmark and asserts nothing about speed.

Options:
    --bench-large   also benchmark the 92 MB near-identical pair and the 256 MiB
                    ext4 images (bsdiff4, the baseline, needs minutes and GBs there).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
for _p in (str(REPO_DIR), str(BENCH_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import data  # noqa: E402  (bench/data.py, after the path set-up above)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--bench-large``."""
    parser.addoption(
        "--bench-large",
        action="store_true",
        help="also benchmark the 92 MB near-identical pair and the 256 MiB ext4 images",
    )


class Loaded:
    """A data pair read into memory, with patches made on demand and cached."""

    def __init__(self, pair: data.Pair) -> None:
        self.pair = pair
        self.old = pair.old.read_bytes()
        self.new = pair.new.read_bytes()
        self._patches: dict[str, bytes] = {}

    def patch(self, tool: str, make: Callable[[], bytes]) -> bytes:
        """The patch of ``tool`` for this pair (made once per session)."""
        if tool not in self._patches:
            self._patches[tool] = make()
        return self._patches[tool]


_PAIRS: dict[str, Loaded] = {}


def load_pair(name: str) -> Loaded:
    """A data set by name: libcrypto, near16M, near, fsimage."""
    if name not in _PAIRS:
        if name == "near16M":
            pair = data.near_pair(data.QUICK_NEAR_SIZE)
        else:
            (pair,) = data.get_pairs([name])
        _PAIRS[name] = Loaded(pair)
    return _PAIRS[name]


@pytest.fixture(params=["libcrypto", "near16M", "near", "fsimage"])
def pair(request: pytest.FixtureRequest) -> Loaded:
    """Each data set in turn; the large ones only with ``--bench-large``."""
    if request.param in ("near", "fsimage") and not request.config.getoption("--bench-large"):
        pytest.skip("large data set: run with --bench-large")
    try:
        return load_pair(request.param)
    except RuntimeError as exc:
        pytest.skip(f"data set {request.param} unavailable: {exc}")
        raise  # unreachable


@pytest.fixture(scope="session")
def bsipatch_delta() -> Any:
    """The bsipatch package, whose public ``diff`` and ``apply`` the benchmarks call."""
    import bsipatch

    return bsipatch


def bsipatch_patch(bsipatch: Any, old: bytes, new: bytes, **kw: Any) -> bytes:
    """A bsipatch patch of old -> new, in memory."""
    buf = io.BytesIO()
    bsipatch.diff(old, new, buf, **kw)
    return buf.getvalue()
