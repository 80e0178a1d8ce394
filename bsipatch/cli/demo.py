"""CLI command ``bsipatch demo``: the end-to-end demonstration (steps in :mod:`.demo_run`)."""

from __future__ import annotations

import argparse
import sys

from bsipatch.cli._common import add_command, emit


def cmd_demo(args: argparse.Namespace) -> int:
    from bsipatch.cli.demo_run import run_demo

    def out(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    use = {"auto": None, "ext4": True, "tar": False}[args.image_format]
    summary = run_demo(args.dir, out, scale=args.scale, use_mke2fs=use)
    emit(args, summary)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo``."""
    p = add_command(
        sub,
        "demo",
        "build a vendor repository and a device, then install, activate, withdraw and "
        "uninstall security releases over local HTTP, explaining each step",
        cmd_demo,
    )
    p.add_argument(
        "--dir", metavar="DIR", help="keep everything in DIR (default: a temporary directory)"
    )
    p.add_argument(
        "--scale", choices=("normal", "small"), default="normal", help="size of the images"
    )
    p.add_argument(
        "--image-format",
        choices=("auto", "ext4", "tar"),
        default="auto",
        help="component image format (auto: ext4 when mke2fs is installed)",
    )
