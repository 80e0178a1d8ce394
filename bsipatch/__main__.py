"""``python -m bsipatch``: runs the CLI."""

from bsipatch.cli.main import entry

entry()
