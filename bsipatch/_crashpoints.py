"""Named crash points: where the crash tests may kill the process between two durable steps.

A test hook with no effect unless its environment variables are set. No I/O otherwise.
"""

from __future__ import annotations

import os

CRASH_ENV = "BSIPATCH_CRASH_AT"
"""Environment variable naming a crash point (``name`` or ``name#N`` for the N-th hit)."""

TRACE_ENV = "BSIPATCH_CRASH_TRACE"
"""Environment variable naming a file to which every crash point reached is appended."""

_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """A named point between two durable steps where tests may kill the process.

    With ``BSIPATCH_CRASH_AT=name`` (or ``name#N``: the N-th time this point is reached,
    counting from 1) in the environment, the process sends itself SIGKILL here: no
    cleanup handler runs, exactly as in a power cut after the preceding fsync. With
    ``BSIPATCH_CRASH_TRACE=path`` every point reached is appended to ``path`` (one
    ``name#N`` per line), so a test can enumerate them. Without either variable this
    costs one dictionary update.

    Args:
        name: the point's name, e.g. ``"install.committed"``.
    """
    count = _hits.get(name, 0) + 1
    _hits[name] = count
    target = os.environ.get(CRASH_ENV)
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{name}#{count}\n")
    if target and target in (name, f"{name}#{count}"):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
