"""Shared pieces of the CLI commands: the common options and JSON/human output.

No library logic here: command modules parse arguments, call the library, print.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--json", action="store_true", help="print one JSON document on stdout")
COMMON.add_argument("--debug", action="store_true", help="show tracebacks on errors")
COMMON.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    func: Callable[[argparse.Namespace], int] | None,
) -> argparse.ArgumentParser:
    """Add a subcommand with the common options whose handler is ``func(args) -> int``."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, parents=[COMMON])
    p.set_defaults(func=func)
    return p


def emit(args: argparse.Namespace, data: Any, human: str | list[str] | None = None) -> None:
    """Print ``data`` as JSON with ``--json``, else the human text (lines)."""
    if getattr(args, "json", False):
        import json

        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
    elif human is not None:
        if isinstance(human, str):
            human = [human]
        for line in human:
            print(line)


def progress_enabled(args: argparse.Namespace) -> bool | None:
    """``False`` with ``--quiet`` or ``--json``, else ``None`` (draw when stderr is a tty)."""
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return False
    return None


PREBOOT_ENV = "BSIPATCH_PREBOOT"


def add_preboot_arg(p: argparse.ArgumentParser) -> None:
    """``--preboot DIR`` with the ``$BSIPATCH_PREBOOT`` default (every device command)."""
    p.add_argument(
        "--preboot",
        metavar="DIR",
        default=os.environ.get(PREBOOT_ENV),
        help=f"the preboot directory (default: ${PREBOOT_ENV})",
    )


def preboot_dir(args: argparse.Namespace) -> str:
    """The ``--preboot`` directory, or StateError when neither it nor the variable is set."""
    from bsipatch.errors import StateError

    if not getattr(args, "preboot", None):
        raise StateError(f"no preboot directory: give --preboot DIR or set ${PREBOOT_ENV}")
    return str(args.preboot)
