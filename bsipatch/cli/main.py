"""The ``bsipatch`` command line: argparse, ``main(argv=None) -> int``.

Thin by design: each area's commands live in ``bsipatch/cli/<area>.py`` and
call the library. Every failure is one line on stderr (and, with ``--json``, one
``{"ok": false, ...}`` object on stdout) and an exit code: 2 for usage mistakes,
the error family's code from :mod:`bsipatch.errors`, the command family's code for
I/O errors, 130 for Ctrl-C (bsipatch.cli._report). ``--debug`` adds the traceback.
``bsipatch apply`` starts through bsipatch.cli.fast, which hands every command line it
does not recognise to :func:`main`. No library logic here.
"""

from __future__ import annotations

import sys

from bsipatch._version import __version__
from bsipatch.cli._report import UsageError, run_command
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

# argparse (with re, gettext...) and the commands load in build_parser: importing this
# module (``bsipatch.cli`` does) costs the apply command's quick entry nothing
TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import NoReturn


def _parser_class() -> type[argparse.ArgumentParser]:
    """An ArgumentParser whose errors raise :class:`UsageError` instead of exiting."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            self.print_usage(sys.stderr)
            raise UsageError(f"{self.prog}: error: {message}")

    return _Parser


def build_parser(modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with the subcommands of ``modules`` (default: all)."""
    import importlib

    from bsipatch.cli._common import add_global_options, fill_shared_help

    parser = _parser_class()(
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        print(f"bsipatch {__version__}")
        return 0
    parser = build_parser(_fast_modules(argv))

    def parse() -> argparse.Namespace | int:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help(sys.stderr)
            return 2
        return args

    return run_command(argv, parse)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
