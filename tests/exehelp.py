"""Native region and map arrays for the executable-transform tests (test_exe, test_exe_index)."""

from __future__ import annotations

from typing import Any

from bsipatch._native import ffi


def native_arrays(regions: list[tuple[int, int, int, int, int]], entries: Any) -> tuple[Any, Any]:
    """``bsi_exe_region[]`` from (off, len, va, kind, arg) and ``bsi_exe_map[]`` from
    (old_va, len, delta) tuples (each array at least one element long)."""
    r = ffi.new("bsi_exe_region[]", max(len(regions), 1))
    for i, (off, n, va, kind, arg) in enumerate(regions):
        r[i].off, r[i].len, r[i].va, r[i].kind, r[i].arg = off, n, va, kind, arg
    m = ffi.new("bsi_exe_map[]", max(len(entries), 1))
    for i, (va, n, d) in enumerate(entries):
        m[i].old_va, m[i].len, m[i].delta = va, n, d
    return r, m
