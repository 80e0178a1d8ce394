"""Suffix-sorting one part of the diff's index: libdivsufsort when it is installed and
the part is large, otherwise the bundled SA-IS (csrc/bsi_sais.c).

A suffix array is defined by its text alone, so both give the same array and the same
patch. libdivsufsort (the ``pydivsufsort`` package, an optional dependency: the
``vendor`` extra) sorted 32 MiB of the Chromium 150 binary in 3.4 CPU s against
SA-IS's 6.9 (same array); importing it costs ~0.16 s (numpy and its own extension),
so small indexes keep SA-IS. This module sorts only: search.py builds the index,
buckets and searches. No I/O.
"""

from __future__ import annotations

import contextlib
import mmap
from typing import Any

from bsipatch._native import check, ffi, lib

#: Parts at least this long are sorted with libdivsufsort when it is installed.
DIVSUFSORT_ABOVE = 16 << 20
#: Use libdivsufsort at all (tests turn it off to compare the two).
USE_DIVSUFSORT = True

_loaded: list[Any] = []


def _divsufsort() -> Any:
    """libdivsufsort's ``divsufsort`` (32-bit indices) from pydivsufsort, or None."""
    if not _loaded:
        import ctypes  # here, not at the top: 3-6 ms of every diff's start-up

        fn = None
        with contextlib.suppress(ImportError, OSError, AttributeError):
            from pydivsufsort.dll import libdivsufsort  # type: ignore[import-untyped,import-not-found,unused-ignore]

            fn = libdivsufsort["divsufsort"]  # a fresh function object: ours to type
            fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)
            fn.restype = ctypes.c_int32
        _loaded.append(fn)
    return _loaded[0]


def _address(p: Any) -> int:
    return int(ffi.cast("uintptr_t", p))


def sort_part(text: Any, n: int, sa32: Any, sa64: Any) -> str:
    """Write the suffix array of the ``n`` bytes at ``text`` (cffi pointer) to ``sa32``
    (int32 entries) or, when that is NULL, ``sa64``; return which sorter ran."""
    if n == 0:
        return "none"
    if sa32 != ffi.NULL and USE_DIVSUFSORT and n >= DIVSUFSORT_ABOVE and n < (1 << 31) - 1:
        fn = _divsufsort()
        if fn is not None and fn(_address(text), _address(sa32), n) == 0:  # GIL released
            return "divsufsort"
    wide = sa32 == ffi.NULL
    ws_size = lib.bsi_sais_workspace_size(n, 1 if wide else 0)
    # lazily zeroed private memory: the workspace is sized for the worst case
    ws = mmap.mmap(-1, max(ws_size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if wide:
        check(lib.bsi_sais64(text, sa64, n, ffi.from_buffer(ws), ws_size), "suffix sort")
    else:
        check(lib.bsi_sais32(text, sa32, n, ffi.from_buffer(ws), ws_size), "suffix sort")
    ws.close()
    return "sais"
