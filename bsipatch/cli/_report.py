"""How CLI commands report: output lines or JSON, and every failure as one line and a code.

:func:`run_command` runs a parsed command and turns each failure into its exit code
(2 usage, the error family's code, the command family's code for I/O errors, 141 for
a closed pipe, 130 for Ctrl-C), printing one line on stderr (and, with ``--json``, one
``{"ok": false, ...}`` object on stdout); ``--debug`` adds the traceback. Shared by
the argparse CLI (main.py) and the apply command's quick entry (fast.py), so it
imports neither argparse nor the library's heavy layers. No library logic here.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` without its enum set-up
import os
import sys

from bsipatch._lite import suppress
from bsipatch.errors import BsipatchError

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any


class UsageError(Exception):
    """A mistake in the command line: one line on stderr, exit code 2 (as argparse's own)."""


def refuse_same_file(output: str, inputs: dict[str, str]) -> None:
    """Raise :class:`UsageError` when ``output`` is (or links to) one of the ``inputs``.

    ``inputs`` maps each input's name in the usage line (``OLD``) to its path.
    """
    if output == "-":
        return
    # os.path, not pathlib: its import is start-up time of every apply
    out = os.path.realpath(output)
    for name, value in inputs.items():
        if value == "-":
            continue
        same = os.path.realpath(value) == out
        with suppress(OSError):
            same = same or os.path.samefile(output, value)  # noqa: PTH121
        if same:
            raise UsageError(
                f"bsipatch: error: the output {output} is the input {name}; "
                "write the result to another path"
            )


def emit(args: Any, data: Any, human: str | list[str] | None = None) -> None:
    """Print ``data`` as JSON with ``--json``, else the human text (lines) unless ``--quiet``."""
    if getattr(args, "json", False):
        import json

        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    elif human is not None and not getattr(args, "quiet", False):
        if isinstance(human, str):
            human = [human]
        for line in human:
            print(line)


def progress_enabled(args: Any) -> bool | None:
    """``False`` with ``--quiet`` or ``--json``, else ``None`` (draw when stderr is a tty)."""
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return False
    return None


def public_name(filename: str, args: Any) -> str:
    """The user's path for ``filename``: an output's temporary file is named as the output."""
    parent, name = os.path.split(os.path.normpath(filename))
    for value in vars(args).values():
        if isinstance(value, str) and value and value != "-":
            out_parent, out_name = os.path.split(os.path.normpath(value))
            if parent == out_parent and name.startswith(f".{out_name}."):
                return value
    return filename


def print_traceback() -> None:
    """The traceback of the exception being handled (``--debug``)."""
    import traceback  # here: only --debug failures need it

    traceback.print_exc()


def fail(args: Any, argv: Sequence[str], message: str, code: int) -> int:
    """Print ``message`` as one line (and the JSON failure object with --json); return ``code``."""
    print(message, file=sys.stderr)
    wants_json = getattr(args, "json", False) if args is not None else "--json" in argv
    if wants_json:
        kind = sys.exc_info()[0]
        obj = {"ok": False, "error": message, "code": code, "type": getattr(kind, "__name__", "")}
        import json  # here: only failures need it (start-up time of every command)

        print(json.dumps(obj, sort_keys=True), flush=True)
    return code


def run_command(argv: Sequence[str], parse: Callable[[], Any]) -> int:
    """Parse the command line with ``parse`` and run the command; return the exit code.

    ``parse`` returns the parsed arguments, whose ``func(args)`` runs the command, or
    an exit code (e.g. 2 after printing the help), or raises :class:`UsageError`.
    """
    args: Any = None
    try:
        args = parse()
        if isinstance(args, int):
            return args
        return int(args.func(args) or 0)
    except UsageError as exc:
        # as argparse does: usage mistakes leave through SystemExit(2), also in-process
        raise SystemExit(fail(args, argv, str(exc), 2)) from None
    except BrokenPipeError:
        return 141
    except BsipatchError as exc:
        if getattr(args, "debug", False):
            print_traceback()
        return fail(args, argv, f"bsipatch: error: {exc}", exc.exit_code)
    except OSError as exc:
        if getattr(args, "debug", False):
            print_traceback()
        where = f"{public_name(str(exc.filename), args)}: " if exc.filename and args else ""
        what = exc.strerror or str(exc)
        return fail(args, argv, f"bsipatch: error: {where}{what}", getattr(args, "io_exit_code", 1))
    except KeyboardInterrupt:
        with sigint_ignored():  # a second Ctrl-C must not interrupt the report
            if getattr(args, "debug", False):
                print_traceback()
            return fail(args, argv, "bsipatch: interrupted", 130)


class sigint_ignored:  # a function's name: ``with sigint_ignored():``
    """Ignore SIGINT for the block (main thread only), then restore the previous handler."""

    def __enter__(self) -> None:
        try:
            self._previous = _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
        except ValueError:  # not the main thread: signals are the main thread's business
            self._previous = None

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            _signal.signal(_signal.SIGINT, self._previous)
