"""The ``bsipatch`` command line: argparse, ``main(argv=None) -> int``.

Thin by design: each area's commands live in ``bsipatch/cli/<area>.py`` and
call the library. Errors from :mod:`bsipatch.errors` become one clear line on
stderr and the error family's exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from bsipatch._version import __version__
from bsipatch.cli import agent, delta, demo, device, mdm, release, seal
from bsipatch.errors import BsipatchError

COMMAND_MODULES = (seal, delta, release, device, agent, demo, mdm)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bsipatch",
        description="Small, signed, reversible security fixes for sealed OS images.",
    )
    parser.add_argument("--version", action="version", version=f"bsipatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    parser = build_parser()
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
            traceback.print_exc()
        print(f"bsipatch: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        where = f": {exc.filename}" if exc.filename else ""
        print(f"bsipatch: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bsipatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
