"""CLI commands ``bsipatch seal`` and ``bsipatch verify``: dm-verity compatible seals.

Argument parsing and output only; the work is in :mod:`bsipatch.seal.tree`.
"""

from __future__ import annotations

import argparse
import sys
import time

from bsipatch.cli._common import add_command, emit, progress_enabled
from bsipatch.cli.progress import Progress
from bsipatch.errors import SealFormatError


def _hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid hex: {value!r}") from exc


def _salt(value: str) -> bytes:
    if value in ("-", ""):
        return b""
    salt = _hex(value)
    if len(salt) > 256:
        raise argparse.ArgumentTypeError(f"salt is {len(salt)} bytes, at most 256 allowed")
    return salt


def _root(value: str) -> bytes:
    root = _hex(value)
    if len(root) != 32:
        raise argparse.ArgumentTypeError(f"a root hash is 64 hex digits, got {len(value)}")
    return root


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from exc
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def _os_error(exc: OSError) -> int:
    """One clear line for a file that cannot be read or written; exit code 1."""
    where = f" {exc.filename!r}" if exc.filename else ""
    print(f"bsipatch: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
    return 1


def _threads(value: str) -> int:
    n = _positive(value)
    if n == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def cmd_seal(args: argparse.Namespace) -> int:
    """``bsipatch seal IMAGE``: build the hash tree, print the root hash."""
    try:
        return _seal(args)
    except OSError as exc:
        return _os_error(exc)


def cmd_verify(args: argparse.Namespace) -> int:
    """``bsipatch verify IMAGE --root HEX``: check every block, name the first bad one."""
    try:
        return _verify(args)
    except OSError as exc:
        return _os_error(exc)


def _seal(args: argparse.Namespace) -> int:
    from bsipatch.seal.tree import seal_image

    start = time.monotonic()
    with Progress("seal", enabled=progress_enabled(args)) as bar:
        seal = seal_image(
            args.image,
            hash_file=args.hash_file,
            salt=args.salt,
            threads=args.threads,
            progress=bar.callback,
        )
    seconds = time.monotonic() - start
    data = {
        **seal.to_dict(),
        "image": args.image,
        "hash_file": args.hash_file,
        "data_blocks": seal.data_blocks,
        "seconds": round(seconds, 3),
    }
    human = [
        f"root hash:   {seal.root_hash.hex()}",
        f"salt:        {seal.salt.hex() or '-'}",
        f"size:        {seal.data_size} bytes ({seal.data_blocks} blocks of 4096)",
    ]
    if args.hash_file:
        human.append(f"hash file:   {args.hash_file}")
    emit(args, data, human)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from bsipatch.seal.tree import Seal, read_superblock, verify_image

    salt = args.salt
    if salt is None and args.hash_file is None:
        raise SealFormatError(
            "verify needs --salt HEX or --hash-file F (the salt is part of the seal)"
        )
    target: Seal | bytes = args.root
    if args.size is not None:
        if salt is None:
            salt = read_superblock(args.hash_file).salt
        target = Seal(root_hash=args.root, salt=salt, data_size=args.size)
        salt = None
    start = time.monotonic()
    with Progress("verify", enabled=progress_enabled(args)) as bar:
        verify_image(
            args.image,
            target,
            salt=salt,
            hash_file=args.hash_file,
            threads=args.threads,
            progress=bar.callback,
        )
    seconds = time.monotonic() - start
    emit(
        args,
        {
            "ok": True,
            "image": args.image,
            "root_hash": args.root.hex(),
            "hash_file": args.hash_file,
            "seconds": round(seconds, 3),
        },
        f"OK: {args.image} matches root hash {args.root.hex()}",
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``seal`` and ``verify`` to the CLI."""
    p = add_command(
        sub, "seal", "build a dm-verity compatible seal (hash tree) of an image", cmd_seal
    )
    p.add_argument("image", help="image file to seal")
    p.add_argument(
        "--hash-file",
        metavar="F",
        help="write the superblock and hash tree here (veritysetup format)",
    )
    p.add_argument(
        "--salt",
        type=_salt,
        metavar="HEX",
        help="salt in hex ('-' for none); default: 32 random bytes",
    )
    p.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="N",
        help="hashing threads (default: all cores)",
    )

    p = add_command(
        sub, "verify", "verify an image against its seal, naming the first bad block", cmd_verify
    )
    p.add_argument("image", help="image file to verify")
    p.add_argument(
        "--root", type=_root, required=True, metavar="HEX", help="root hash (64 hex digits)"
    )
    p.add_argument(
        "--hash-file", metavar="F", help="hash file (superblock + tree) to check against"
    )
    p.add_argument(
        "--salt",
        type=_salt,
        metavar="HEX",
        help="salt in hex ('-' for none); taken from the hash file when omitted",
    )
    p.add_argument(
        "--size",
        type=_positive,
        metavar="N",
        help="exact image size in bytes the seal was made for",
    )
    p.add_argument(
        "--threads",
        type=_threads,
        default=None,
        metavar="N",
        help="hashing threads (default: all cores)",
    )
