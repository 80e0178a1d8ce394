"""Shared pieces of the CLI commands: the common options and JSON/human output.

No library logic here: command modules parse arguments, call the library, print.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence

# re-exported: what commands print, shared with the apply command's quick entry
from bsipatch.cli._report import UsageError as UsageError
from bsipatch.cli._report import emit as emit
from bsipatch.cli._report import progress_enabled as progress_enabled
from bsipatch.cli._report import refuse_same_file as refuse_same_file


def add_global_options(parser: argparse.ArgumentParser, default: object = False) -> None:
    """``--json``, ``--debug`` and ``--quiet``, accepted before and after the subcommand.

    The top-level parser gets them with ``default=False``; each subcommand with
    ``default=SUPPRESS``, so that a subcommand that does not repeat an option keeps
    the value given before it.
    """
    parser.add_argument(
        "--json",
        action="store_true",
        default=default,
        help='print one JSON document on stdout (failures: {"ok": false, ...})',
    )
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks on errors"
    )
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        default=default,
        help="print nothing but errors: no progress, no result lines (--json still prints)",
    )


COMMON = argparse.ArgumentParser(add_help=False)
add_global_options(COMMON, default=argparse.SUPPRESS)


# --- argparse ``type=`` validators: a bad value is a usage error (exit 2), never a traceback ---


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """A ``type=`` for integers in ``[low, high]`` (either bound optional).

    Example: ``p.add_argument("--level", type=int_in(1, 22))``.
    """

    def parse(value: str) -> int:
        try:
            n = int(value, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if low is not None and high is not None and not low <= n <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {n}")
        if low is not None and n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {n}")
        if high is not None and n > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {n}")
        return n

    parse.__name__ = "integer"  # argparse names the type in "invalid integer value"
    return parse


positive_int = int_in(1)
"""``type=`` for integers >= 1 (counts, thread numbers, sizes, days)."""

nonnegative_int = int_in(0)
"""``type=`` for integers >= 0."""


def positive_float(value: str) -> float:
    """``type=`` for finite numbers > 0 (seconds)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {value}")
    return x


positive_float.__name__ = "number"


def role_count(roles: Sequence[str]) -> Callable[[str], tuple[str, int]]:
    """A ``type=`` for ``ROLE=N`` with ``ROLE`` in ``roles`` and ``N >= 1`` (``--threshold``)."""

    def parse(value: str) -> tuple[str, int]:
        role, sep, n = value.partition("=")
        if not sep or role not in roles:
            raise argparse.ArgumentTypeError(
                f"expected ROLE=N with ROLE one of {', '.join(roles)}, got {value!r}"
            )
        return role, int_in(1)(n)

    parse.__name__ = "ROLE=N"
    return parse


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


# Help for arguments that several commands share, filled in where a command gives none.
SHARED_HELP = {
    "repo": "the vendor repository directory",
    "release_id": 'release id, e.g. "26.1 (a)"',
    "dir": "the preboot directory to create",
    "manifest": "a release manifest (signed JSON)",
    "--os-version": "OS version of the base images, e.g. 26.1",
    "--build": "OS build of the base images, e.g. 23B85",
    "--threads": "threads to use (default: all CPUs)",
    "--component": "a component (image) name",
    "--threshold": "signatures a role needs, as ROLE=N (repeatable)",
    "--expires-days": "days until the release manifest expires",
    "--root-expires-days": "days until the root metadata expires",
    "--catalog-expires-days": "days until the catalog expires",
}


def fill_shared_help(parser: argparse.ArgumentParser) -> None:
    """Give every argument of ``parser`` and its subcommands without help its shared help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                fill_shared_help(sub)
        elif action.help is None:
            key = action.option_strings[0] if action.option_strings else action.dest
            action.help = SHARED_HELP.get(key)


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
