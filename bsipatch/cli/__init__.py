"""The ``bsipatch`` command line: one module per command group; ``main`` is the entry point."""

from bsipatch.cli.main import main

__all__ = ["main"]
