"""The only module that touches the compiled extension ``bsipatch._bsi_native``.

It loads the extension, checks that its compiled-in version matches ``__version__``
(a stale build fails loudly), and maps negative ``BSI_E_*`` return codes to errors.
No I/O, no policy.

``BSIPATCH_NO_SIMD=1`` in the environment (read at import) forces the portable
code paths; :func:`set_simd` switches at run time for tests.
"""

from __future__ import annotations

import os

from bsipatch._version import __version__
from bsipatch.errors import NativeError

try:
    from bsipatch._bsi_native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "bsipatch's native extension is not built: install with `pip install .` "
        "(or `python setup.py build_ext --inplace` in a checkout)"
    ) from exc

_built = ffi.string(lib.bsi_version()).decode("ascii")
if _built != __version__:  # pragma: no cover - only on a stale build
    raise ImportError(
        f"bsipatch native extension is version {_built}, Python package is {__version__}: "
        "rebuild the extension"
    )


def error_name(code: int) -> str:
    """Name of a ``BSI_E_*`` code, e.g. ``"BSI_E_CORRUPT"``."""
    name: str = ffi.string(lib.bsi_error_name(code)).decode("ascii")
    return name


def check(rc: int, what: str) -> int:
    """Return ``rc`` when it is ``>= 0``; raise :class:`NativeError` naming it otherwise."""
    if rc < 0:
        raise NativeError(f"{what} failed: {error_name(rc)}", code=rc)
    return rc


def simd_env_disabled() -> bool:
    """True when ``BSIPATCH_NO_SIMD=1`` asks for the portable code paths."""
    return os.environ.get("BSIPATCH_NO_SIMD", "") not in ("", "0")


__all__ = ["check", "error_name", "ffi", "lib", "simd_env_disabled"]
