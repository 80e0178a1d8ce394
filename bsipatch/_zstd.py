"""zstandard's C backend for the appliers, loaded without the package's start-up cost.

``import zstandard`` runs the package's ``__init__``, which imports ``platform`` and
``typing`` to choose a backend: about 50 M instructions, more than the rest of an
apply's start-up together. On CPython that choice is always the C extension
``zstandard.backend_c``, whose names are the package's (``ZstdDecompressor``,
``ZstdError``, ``FORMAT_ZSTD1_MAGICLESS``, ``frame_content_size``...), so
:func:`zstd` loads that extension alone and registers it under its own name (a
later ``import zstandard`` reuses it). Where that is not possible (another Python,
``PYTHON_ZSTANDARD_IMPORT_POLICY`` set, another layout) it imports the package.
Only decoding uses this; the diff side imports ``zstandard`` as usual. No I/O here.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing is start-up time (bsipatch._lite)
if TYPE_CHECKING:
    from typing import Any

_BACKEND = "zstandard.backend_c"


def _backend_alone() -> Any:
    from importlib.machinery import ExtensionFileLoader, PathFinder

    package = PathFinder.find_spec("zstandard")
    where = package.submodule_search_locations if package is not None else None
    spec = PathFinder.find_spec(_BACKEND, where) if where else None
    if spec is None or not isinstance(spec.loader, ExtensionFileLoader):
        return None
    module = spec.loader.create_module(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "ZstdDecompressor"):
        return None
    sys.modules[_BACKEND] = module
    return module


def zstd() -> Any:
    """The zstandard API (the C backend alone when it can be, else the package)."""
    module = sys.modules.get("zstandard") or sys.modules.get(_BACKEND)
    if module is not None:
        return module
    if sys.implementation.name == "cpython" and not os.environ.get(
        "PYTHON_ZSTANDARD_IMPORT_POLICY"
    ):
        try:
            module = _backend_alone()
        except (ImportError, OSError):
            module = None
        if module is not None:
            return module
    import zstandard

    return zstandard
