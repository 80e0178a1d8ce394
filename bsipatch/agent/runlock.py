"""One agent run at a time per device, without holding the preboot lock.

The agent downloads and stages releases for as long as the network needs; the
preboot lock (``bsipatch.device.preboot.Preboot.lock``) is taken only by the short
operations that change ``state.json``. Two agents must still not run at once, so a
run holds ``<preboot>/agent/run.lock`` (``flock``, non-blocking). Holding it, the run
removes temp files that a kill during an atomic write of the agent's files left
behind (``.state.json.*.tmp`` older than a minute: no live writer takes that long).

No trust decisions and no other files here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
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
        remove_stray_temps(Path(agent_dir))
        yield
    finally:
        os.close(fd)


def remove_stray_temps(agent_dir: Path, *, older_than: float = 60.0) -> list[str]:
    """Remove ``.<name>.*.tmp`` files of atomic writes killed before their rename.

    Returns:
        The names removed.
    """
    removed = []
    now = time.time()
    for tmp in agent_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            st = tmp.lstat()
            regular = stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)
            if regular and now - st.st_mtime > older_than:
                tmp.unlink()
                removed.append(tmp.name)
    return removed


__all__ = ["remove_stray_temps", "run_lock"]
