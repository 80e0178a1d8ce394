"""``bsipatch apply`` without argparse: the command a device runs starts in milliseconds.

:func:`main` is what the console script runs. A command line of the form
``[--json] [--debug] [-q] apply [options] OLD PATCH OUT`` with the apply options
spelled out in full (``--resume``, ``--threads N``, ``--max-patch-size N``,
``--expected-size N``, also as ``--opt=N``) and plain decimal numbers is parsed here
and runs :func:`cmd_apply` with nothing of the rest of the CLI loaded (argparse,
typing, the other commands). Anything else (help, abbreviations, mistakes, other
commands) goes to the argparse CLI (:func:`bsipatch.cli.main.main`), which therefore
decides every usage error; both report failures through bsipatch.cli._report.
No library logic here.
"""

from __future__ import annotations

import sys

from bsipatch.cli._report import emit, progress_enabled, refuse_same_file, run_command
from bsipatch.errors import PatchError

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

BSDIFF40_UNCHECKED = (
    "BSDIFF40 carries no checksums: the patch's structure and sizes were checked, "
    "the old and new images were not"
)
_FLAGS = {"--json": "json", "--debug": "debug", "--quiet": "quiet", "-q": "quiet"}
#: apply's options with a value: name -> (attribute, smallest accepted value)
_VALUES = {
    "--threads": ("threads", 1),
    "--max-patch-size": ("max_patch_size", 1),
    "--expected-size": ("expected_size", 0),
}


class Args:
    """The parsed command line, with the attributes argparse would give (``vars`` works)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def parse_apply(argv: Sequence[str]) -> Args | None:
    """The arguments of an apply command line this module handles, else ``None``."""
    args: Any = Args(
        command="apply",
        func=cmd_apply,
        io_exit_code=PatchError.exit_code,
        json=False,
        debug=False,
        quiet=False,
        resume=False,
        threads=None,
        max_patch_size=None,
        expected_size=None,
    )
    words = list(argv)
    while words and words[0] in _FLAGS:  # the global options before the command
        setattr(args, _FLAGS[words.pop(0)], True)
    if not words or words.pop(0) != "apply":
        return None
    paths: list[str] = []
    while words:
        word = words.pop(0)
        name, eq, value = word.partition("=")
        if word in _FLAGS:
            setattr(args, _FLAGS[word], True)
        elif word == "--resume":
            args.resume = True
        elif name in _VALUES:
            if not eq:
                if not words:
                    return None
                value = words.pop(0)
            attr, low = _VALUES[name]
            if not (value.isascii() and value.isdigit()) or int(value) < low:
                return None  # argparse says what is wrong with it
            setattr(args, attr, int(value))
        elif word.startswith("-") and word != "-":
            return None  # help, an abbreviation, a mistake: argparse's business
        else:
            paths.append(word)
    if len(paths) != 3:
        return None
    args.old, args.patch, args.out = paths
    parsed: Args = args
    return parsed


def cmd_apply(args: Any) -> int:
    """bsipatch apply OLD PATCH OUT."""
    from bsipatch.delta.apply import apply

    refuse_same_file(args.out, {"OLD": args.old, "PATCH": args.patch})
    patch: Any = sys.stdin.buffer if args.patch == "-" else args.patch
    progress = None
    enabled = progress_enabled(args)
    if enabled is None and sys.stderr.isatty():
        from bsipatch.cli.progress import Progress

        bar = Progress("apply", enabled=enabled)
        progress = bar.callback
    try:
        info = apply(
            args.old,
            patch,
            args.out,
            threads=args.threads,
            progress=progress,
            resume=args.resume,
            max_patch_size=args.max_patch_size,
            expected_size=args.expected_size,
        )
    finally:
        if progress is not None:
            bar.close()
    d = info.to_dict()
    if info.format == "bsdiff40":
        d["verified"] = False
        human = [f"wrote {args.out}: {info.new_size} bytes; {BSDIFF40_UNCHECKED}"]
    else:
        d["verified"] = True
        human = [
            f"wrote {args.out}: {info.new_size} bytes; old image and output verified "
            f"against the patch's SHA-256s (output sha256 {info.new_sha256.hex()})"
        ]
    emit(args, d, human)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI (an apply through :func:`parse_apply` when it can); return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_apply(argv)
    if args is None:
        from bsipatch.cli.main import main as full_main

        return full_main(argv)
    import gc

    # an apply makes few reference cycles, but its imports and its chunks allocate
    # enough objects to trigger collections (full ones too) while it runs
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return run_command(argv, lambda: args)
    finally:
        if was_enabled:
            gc.enable()
