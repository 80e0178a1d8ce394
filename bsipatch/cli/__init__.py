"""The ``bsipatch`` command line: one module per command group; ``main`` is the entry point.

``main`` is loaded on first use: the apply command (bsipatch.cli.fast) runs without
the argparse CLI, and importing this package must not load it.
"""

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from bsipatch.cli.main import main as main

__all__ = ["main"]


def __getattr__(name: str) -> object:
    if name == "main":
        from bsipatch.cli.main import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
