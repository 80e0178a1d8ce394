"""Ctrl-C while a CLI command runs: raised where it is safe, and never a hang.

:func:`install` (called by ``bsipatch.__main__`` once the commands are imported) makes a
Ctrl-C raise :class:`KeyboardInterrupt` in the main thread, so a command unwinds and
removes what it was writing, with two guards. Python may raise the interrupt between
taking a lock and the ``try`` that releases it; inside the import machinery that leaks
the import lock, so a worker thread's next import waits forever and the unwinding waits
forever for that worker (diffs that hung after Ctrl-C showed this: 4 of 40 runs of the
Ctrl-C sweep test, 8 interrupts each, without cached bytecode). So:

- a Ctrl-C that arrives while the main thread is inside the import machinery is held
  back and delivered again a few milliseconds later, once the import is done;
- a watchdog thread gives the unwinding :data:`GRACE` seconds; should the process still
  be there, it removes the temporary outputs listed in :mod:`bsipatch._partial`, prints
  the same line as the CLI (and the ``--json`` object) and ends the process with 130.
  It imports nothing and takes no lock once started.

Further Ctrl-Cs while unwinding are ignored. Library code never installs this: it is the
command line's policy, not the library's.
"""

from __future__ import annotations

import _signal as signal  # type: ignore[import-not-found]  # `signal` without its enums
import _thread
import os
import select
import sys
import time

from bsipatch import _partial

TYPE_CHECKING = False  # not typing's: importing typing is start-up time
if TYPE_CHECKING:
    from types import FrameType, ModuleType

# what the CLI prints on stdout for an interrupt under --json (one object, sorted keys)
_JSON = b'{"code": 130, "error": "bsipatch: interrupted", "ok": false, "type": "KeyboardInterrupt"}'

GRACE = 5.0  # seconds the unwinding gets after a Ctrl-C before the watchdog ends the process
_RETRY = 0.005  # seconds before a held-back Ctrl-C is delivered again
_RESEND = 0.05  # seconds without an answer from the handler before the signal is sent again
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


def _watchdog(partial: ModuleType, main: int) -> None:
    """Deliver held-back Ctrl-Cs again; end the process GRACE seconds after the first one.

    The deadline runs from the first Ctrl-C, held back or not, so a main thread that keeps
    importing cannot put the end off. This thread blocks SIGINT and sends the signal to
    the main thread itself, so a Ctrl-C always wakes the main thread from a blocking call;
    a signal sent while the main thread was on its way into one (after its last check for
    signals, before the call) is not seen until the call returns, so until the handler
    answers, the signal is sent again every :data:`_RESEND` seconds.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    deadline = 0.0
    waiting = False  # a signal was sent and the handler has not answered yet
    while True:
        ready, _, _ = select.select([_wake_r], [], [], _RESEND if waiting else None)
        what = os.read(_wake_r, 1) if ready else b""
        deadline = deadline or time.monotonic() + GRACE
        if what != b"i" and time.monotonic() + _RETRY < deadline:
            time.sleep(_RETRY if what else 0.0)
            signal.pthread_kill(main, signal.SIGINT)
            waiting = True
            continue
        time.sleep(max(0.0, deadline - time.monotonic()))
        partial.remove_all()
        if "--json" in sys.argv[1:]:
            os.write(1, _JSON + b"\n")
        os.write(2, b"bsipatch: interrupted\n")
        os._exit(130)


def install() -> None:
    """Start the watchdog and make :func:`_on_interrupt` the SIGINT handler (main thread)."""
    global _wake_r, _wake_w
    _wake_r, _wake_w = os.pipe()
    _thread.start_new_thread(_watchdog, (_partial, _thread.get_ident()))
    signal.signal(signal.SIGINT, _on_interrupt)
