"""``python -m bsipatch`` and the ``bsipatch`` console script: run the CLI, exit with its code.

The CLI's entry module, and the first bsipatch code a ``bsipatch`` process runs: its
first statements install Ctrl-C handling, before anything heavy is imported. Until the
commands are imported, a Ctrl-C prints ``bsipatch: interrupted`` and exits 130 at once
(nothing has been written yet); from then on it raises :class:`KeyboardInterrupt`, so the
command unwinds and removes what it was writing (:func:`bsipatch.cli.fast.main` reports
it the same way). Only the interpreter's own start-up, before this module runs, is not
covered; ``bsipatch/__init__.py`` imports nothing heavy, to keep that gap short.

While a command runs, :mod:`bsipatch.cli.interrupt` handles Ctrl-C: it never raises the
interrupt inside the import machinery, ignores further Ctrl-Cs while unwinding, and ends
an unwinding that cannot finish (see there).

Importing this module installs the first
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
    from typing import NoReturn


def _interrupted_while_starting(signum: int, frame: object) -> None:
    """Ctrl-C before the commands are imported: the one line (and --json object), exit 130."""
    if "--json" in sys.argv[1:]:
        os.write(1, _JSON + b"\n")
    os.write(2, b"bsipatch: interrupted\n")
    os._exit(130)


_signal.signal(_signal.SIGINT, _interrupted_while_starting)


def entry() -> NoReturn:
    """Run :func:`bsipatch.cli.fast.main` (the whole CLI) and exit with its code.

    After Ctrl-C (exit 130) the process ends at once instead of waiting for worker
    threads to finish work nobody wants any more (outputs were removed while unwinding).
    """
    if sys.argv[1:] == ["--version"]:  # answered before the commands load
        from bsipatch._version import __version__

        print(f"bsipatch {__version__}")
        sys.exit(0)
    try:
        from bsipatch.cli.fast import main  # apply without argparse; else the whole CLI
        from bsipatch.cli.interrupt import install

        install()  # from here on Ctrl-C raises KeyboardInterrupt: commands clean up as they unwind
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
