"""One agent run at a time per device, without holding the preboot lock.

The agent downloads and stages releases for as long as the network needs; the
preboot lock (``bsipatch.device.preboot.Preboot.lock``) is taken only by the short
operations that change ``state.json``. Two agents must still not run at once, so a
run holds ``<preboot>/agent/run.lock`` (``flock``, non-blocking).

No trust decisions and no other files here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from bsipatch._io import os_error_to_staging
from bsipatch.errors import LockedError


@contextlib.contextmanager
def run_lock(agent_dir: Path) -> Iterator[None]:
    """Hold ``agent_dir/run.lock`` for the block.

    Raises:
        LockedError: another agent run holds it.
        StagingError: the lock file cannot be made.
    """
    path = Path(agent_dir) / "run.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise os_error_to_staging(exc, f"opening {path}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise LockedError(f"another agent run is in progress on {path.parent.parent}") from exc
    try:
        yield
    finally:
        os.close(fd)


__all__ = ["run_lock"]
