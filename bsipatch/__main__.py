"""``python -m bsipatch`` and the ``bsipatch`` console script: run the CLI, exit with its code.

The CLI's entry module, and the first bsipatch code a ``bsipatch`` process runs: its
first statements install Ctrl-C handling, before anything heavy is imported. Until the
commands are imported, a Ctrl-C prints ``bsipatch: interrupted`` and exits 130 at once
(nothing has been written yet); from then on it raises :class:`KeyboardInterrupt`, so the
command unwinds and removes what it was writing (:func:`bsipatch.cli.main.main` reports
it the same way). Only the interpreter's own start-up, before this module runs, is not
covered; ``bsipatch/__init__.py`` imports nothing heavy, to keep that gap short.

Two guards make that interrupt safe with worker threads about. Python may raise
:class:`KeyboardInterrupt` between taking a lock and the ``try`` that would release it,
and inside the import machinery that leaks the import lock, so a worker thread's next
import waits forever and the unwinding waits forever for the worker (seen as a diff that
hung after Ctrl-C, in about one run in thirty without cached bytecode). So:

- a Ctrl-C that arrives while the main thread is inside the import machinery is held
  back and delivered again a few milliseconds later, once the import is done;
- a watchdog thread gives the unwinding :data:`GRACE` seconds; should the process still
  be there, it removes the temporary outputs listed in :mod:`bsipatch._partial`, prints
  the same line and ends the process with 130. It imports nothing and takes no lock.

Further Ctrl-Cs while unwinding are ignored. Importing this module installs the first
handler: it is the CLI, not part of the library.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` without its enum set-up
import os
import sys

# what main() prints on stdout for an interrupt under --json (one object, sorted keys)
_JSON = b'{"code": 130, "error": "bsipatch: interrupted", "ok": false, "type": "KeyboardInterrupt"}'
TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs ~5 ms of start-up
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType, ModuleType
    from typing import NoReturn


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C before the commands are imported: the one line (and --json object), exit 130."""
    if "--json" in sys.argv[1:]:
        os.write(1, _JSON + b"\n")
    os.write(2, b"bsipatch: interrupted\n")
    os._exit(130)


_signal.signal(_signal.SIGINT, _interrupted_while_starting)


GRACE = 5.0  # seconds the unwinding gets after a Ctrl-C before the watchdog ends the process
_RETRY = 0.005  # seconds before a held-back Ctrl-C is delivered again
_wake_r, _wake_w = -1, -1  # the watchdog's pipe: b"r" deliver again, b"i" interrupted
_interrupted: list[bool] = []  # appended to once (atomic), by the handler


def _in_import_machinery(frame: FrameType | None) -> bool:
    """True when ``frame`` or a caller runs importlib's bootstrap code."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    """The SIGINT handler while a command runs (see the module docstring)."""
    if _interrupted:
        return  # the unwinding is under way; the watchdog bounds it
    if _in_import_machinery(frame):
        os.write(_wake_w, b"r")
        return
    _interrupted.append(True)
    os.write(_wake_w, b"i")
    raise KeyboardInterrupt


def _watchdog(partial: ModuleType, sleep: Callable[[float], None], main: int) -> None:
    """Deliver held-back Ctrl-Cs again; after an interrupt, end the process by GRACE.

    Its own thread blocks SIGINT, and it sends the signal to the main thread itself, so a
    Ctrl-C always wakes the main thread from a blocking call."""
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    while True:
        what = os.read(_wake_r, 1)
        if what == b"r":
            sleep(_RETRY)
            _signal.pthread_kill(main, _signal.SIGINT)
        elif what == b"i":
            sleep(GRACE)
            partial.remove_all()
            if "--json" in sys.argv[1:]:
                os.write(1, _JSON + b"\n")
            os.write(2, b"bsipatch: interrupted\n")
            os._exit(130)
        else:  # pragma: no cover - the pipe is ours; nothing else writes to it
            return


def _start_watchdog() -> None:
    """Open the pipe and start the watchdog (``_thread``: no ``threading`` at start-up)."""
    global _wake_r, _wake_w
    import _thread
    import time

    from bsipatch import _partial

    _wake_r, _wake_w = os.pipe()
    _thread.start_new_thread(_watchdog, (_partial, time.sleep, _thread.get_ident()))


def entry() -> NoReturn:
    """Run :func:`bsipatch.cli.main.main` and exit with its code.

    After Ctrl-C (exit 130) the process ends at once instead of waiting for worker
    threads to finish work nobody wants any more (outputs were removed while unwinding).
    """
    if sys.argv[1:] == ["--version"]:  # answered before the commands load
        from bsipatch._version import __version__

        print(f"bsipatch {__version__}")
        sys.exit(0)
    _start_watchdog()
    try:
        from bsipatch.cli.main import main

        # from here on Ctrl-C raises KeyboardInterrupt, so commands clean up as they unwind
        _signal.signal(_signal.SIGINT, _on_interrupt)
        code = main()
    except KeyboardInterrupt:  # between the line above and main's own handler
        if "--json" in sys.argv[1:]:
            sys.stdout.buffer.write(_JSON + b"\n")
        print("bsipatch: interrupted", file=sys.stderr)
        code = 130
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if code == 130:
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # a second Ctrl-C: no traceback
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
