"""Thread-count defaults: one answer, everywhere, to "how many threads for threads=None"."""

from __future__ import annotations

import os


def default_threads() -> int:
    """Threads used when ``threads=None``: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
