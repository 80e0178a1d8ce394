"""The ``bsipatch`` command line: argparse, ``main(argv=None) -> int``.

Thin by design: each area's commands live in ``bsipatch/cli/<area>.py`` and
call the library. Every failure is one line on stderr (and, with ``--json``, one
``{"ok": false, ...}`` object on stdout) and an exit code: 2 for usage mistakes,
the error family's code from :mod:`bsipatch.errors`, the command family's code for
I/O errors, 130 for Ctrl-C. ``--debug`` adds the traceback. No library logic here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import NoReturn

from bsipatch._version import __version__
from bsipatch.cli._common import UsageError, add_global_options, fill_shared_help
from bsipatch.errors import (
    BsipatchError,
    MdmError,
    MetadataError,
    PatchError,
    SealError,
    StagingError,
)

# command module under bsipatch.cli -> the exit code of its family, used for I/O errors
COMMAND_MODULES: tuple[tuple[str, int], ...] = (
    ("seal", SealError.exit_code),
    ("delta", PatchError.exit_code),
    ("release", MetadataError.exit_code),
    ("device", StagingError.exit_code),
    ("agent", StagingError.exit_code),
    ("demo", BsipatchError.exit_code),
    ("mdm", MdmError.exit_code),
)
#: Commands whose module is the only one loaded for them: a device applying a patch
#: (and a build host diffing) does not import the trust, release and agent layers.
FAST_COMMANDS = {"diff": "delta", "apply": "delta", "info": "delta"}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser(modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with the subcommands of ``modules`` (default: all)."""
    parser = _Parser(
        prog="bsipatch",
        description="Small, signed, reversible security fixes for sealed OS images.",
    )
    parser.add_argument("--version", action="version", version=f"bsipatch {__version__}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, code in COMMAND_MODULES:
        if modules is not None and name not in modules:
            continue
        before = set(sub.choices)
        importlib.import_module(f"bsipatch.cli.{name}").register(sub)
        for command in set(sub.choices) - before:
            sub.choices[command].set_defaults(io_exit_code=code)
    fill_shared_help(parser)
    return parser


def _fast_modules(words: Sequence[str]) -> tuple[str, ...] | None:
    """The one command module a fast command needs (global options may come first)."""
    first = next((w for w in words if not w.startswith("-")), None)
    fast = FAST_COMMANDS.get(first) if first else None
    return (fast,) if fast else None


def _public_name(filename: str, args: argparse.Namespace) -> str:
    """The user's path for ``filename``: an output's temporary file is named as the output."""
    parent, name = os.path.split(os.path.normpath(filename))
    for value in vars(args).values():
        if isinstance(value, str) and value and value != "-":
            out_parent, out_name = os.path.split(os.path.normpath(value))
            if parent == out_parent and name.startswith(f".{out_name}."):
                return value
    return filename


def _print_traceback() -> None:
    import traceback  # here: only --debug failures need it

    traceback.print_exc()


def _fail(args: argparse.Namespace | None, argv: Sequence[str], message: str, code: int) -> int:
    """Print ``message`` as one line (and the JSON failure object with --json); return ``code``."""
    print(message, file=sys.stderr)
    wants_json = getattr(args, "json", False) if args is not None else "--json" in argv
    if wants_json:
        kind = sys.exc_info()[0]
        obj = {"ok": False, "error": message, "code": code, "type": getattr(kind, "__name__", "")}
        import json  # here: only failures need it (start-up time of every command)

        print(json.dumps(obj, sort_keys=True), flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        print(f"bsipatch {__version__}")
        return 0
    parser = build_parser(_fast_modules(argv))
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return 2
        return int(func(args) or 0)
    except UsageError as exc:
        # as argparse does: usage mistakes leave through SystemExit(2), also in-process
        raise SystemExit(_fail(args, argv, str(exc), 2)) from None
    except BrokenPipeError:
        return 141
    except BsipatchError as exc:
        if getattr(args, "debug", False):
            _print_traceback()
        return _fail(args, argv, f"bsipatch: error: {exc}", exc.exit_code)
    except OSError as exc:
        if getattr(args, "debug", False):
            _print_traceback()
        where = f"{_public_name(str(exc.filename), args)}: " if exc.filename and args else ""
        what = exc.strerror or str(exc)
        return _fail(
            args, argv, f"bsipatch: error: {where}{what}", getattr(args, "io_exit_code", 1)
        )
    except KeyboardInterrupt:
        with _sigint_ignored():  # a second Ctrl-C must not interrupt the report
            if getattr(args, "debug", False):
                _print_traceback()
            return _fail(args, argv, "bsipatch: interrupted", 130)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT for the block (main thread only), then restore the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
