"""The files and directories being written right now, for removal if a process is abandoned.

Every temporary output (the temporary file an output is written to before its rename,
a build directory) is listed here while it exists and forgotten once it is renamed into
place or removed. Normally the code that made it removes it as it unwinds; the list is
for the one case where that cannot happen: after a Ctrl-C the CLI gives the unwinding a
few seconds and then ends the process itself (``bsipatch.__main__``), first removing
what is listed here so that nothing half-written is left behind.

This module imports nothing and takes no locks: the watchdog that reads the list may run
while the main thread holds any lock, including the import lock. It decides nothing and
writes nothing itself; :func:`remove_all` is the watchdog's last act.
"""

# ruff: noqa: PTH106, PTH108, PTH114, PTH118
# (os functions only: this module imports nothing, pathlib included)
from __future__ import annotations

import os

# path -> True for a directory tree, False for a file; set/dict operations are atomic
# under the GIL, and the watchdog takes a snapshot with one C-level call
_OUTPUTS: dict[str, bool] = {}


def add(path: str | os.PathLike[str], *, tree: bool = False) -> None:
    """List ``path`` (a temporary file, or a directory tree when ``tree``) as being written."""
    _OUTPUTS[os.fspath(path)] = tree


def discard(path: str | os.PathLike[str]) -> None:
    """Forget ``path``: it was renamed into place or removed."""
    _OUTPUTS.pop(os.fspath(path), None)


def listed() -> tuple[str, ...]:
    """The paths listed now (for tests and diagnostics)."""
    return tuple(_OUTPUTS)


def remove_all() -> None:
    """Remove every listed path, ignoring errors (the process is about to end)."""
    for path, tree in tuple(_OUTPUTS.items()):
        try:
            if tree:
                _remove_tree(path)
            else:
                os.unlink(path)
        except OSError:
            pass
    _OUTPUTS.clear()


def _remove_tree(top: str) -> None:
    """``shutil.rmtree`` without importing it (symlinks are removed, never followed)."""
    for root, dirs, files in os.walk(top, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            path = os.path.join(root, name)
            if os.path.islink(path):
                os.unlink(path)
            else:
                os.rmdir(path)
    os.rmdir(top)
