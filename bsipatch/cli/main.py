"""The ``bsipatch`` command line: argparse, ``main(argv=None) -> int``.

Thin by design: each area's commands live in ``bsipatch/cli/<area>.py`` and
call the library. Errors from :mod:`bsipatch.errors` become one clear line on
stderr and the error family's exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from bsipatch._version import __version__
from bsipatch.errors import BsipatchError

#: Command modules under bsipatch.cli, imported when the parser is built.
COMMAND_MODULES = ("seal", "delta", "release", "device", "agent", "demo", "mdm")
#: Commands whose module is the only one loaded for them: a device applying a patch
#: (and a build host diffing) does not import the trust, release and agent layers.
FAST_COMMANDS = {"diff": "delta", "apply": "delta", "info": "delta"}


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The argument parser with the subcommands of ``modules`` (default: all)."""
    parser = argparse.ArgumentParser(
        prog="bsipatch",
        description="Small, signed, reversible security fixes for sealed OS images.",
    )
    parser.add_argument("--version", action="version", version=f"bsipatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(f"bsipatch.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    words = sys.argv[1:] if argv is None else list(argv)
    if words == ["--version"]:
        print(f"bsipatch {__version__}")
        return 0
    fast = FAST_COMMANDS.get(words[0]) if words else None
    parser = build_parser((fast,) if fast else COMMAND_MODULES)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except BrokenPipeError:
        return 141
    except BsipatchError as exc:
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        print(f"bsipatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if getattr(args, "debug", False):
            import traceback

            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"bsipatch: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bsipatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
