"""The search's ops after the search: kept packed while other regions are searched, then
normalised, with stitched matches turned into literal bytes.

search.py finds the ops; this module only post-processes them (csrc/bsi_diff.c:
bsi_ops_pack / bsi_ops_unpack, bsi_ops_normalize, bsi_ops_prune). It does not search,
encode or write patches.
"""

from __future__ import annotations

from typing import Any

from bsipatch._buffers import Buffer
from bsipatch._native import check, ffi, lib

#: ADD ops that jump at least PRUNE_FAR bytes in old and match fewer than
#: PRUNE_MIN_MATCH of their bytes become literal bytes (csrc bsi_ops_prune; 0: never).
#: The search takes any match 8 bytes longer than the current alignment's, so where
#: new has no counterpart in old it stitches short matches of common strings from all
#: over old: on the Chromium 150 -> 156 pair a middle segment of the code had 181 K ADD
#: ops, median 15 bytes, 91 % of them jumping 1 MB or more, and its control section
#: was 38 % of the segment's compressed bytes. Re-encoding that segment (bytes,
#: PRUNE_MIN_MATCH / PRUNE_FAR): 2,494,216 without, 2,358,104 (12 / 64 KiB), 2,268,734
#: (24 / 64 KiB), 2,252,025 (32 / 64 KiB), 2,235,311 (48 / 64 KiB), 2,233,786 (64 / 64
#: KiB), 2,232,115 (48 / 1 KiB): the literal section grows by less than the control,
#: runs and differences shrink (zstd finds those common strings among the literals).
#: Other segments of that pair: -3.8 % (the first code segment), -14.1 % and -8.5 %
#: (the last two); the whole patch 64,069,493 -> 57,001,602 bytes.
#: Only when those matches add up to PRUNE_MIN_BYTES or more: on the small libraries
#: and executables of the bench exe set (a few KB of such matches each) pruning made
#: patches up to 4.5 % larger (ssh arm64 8,531 -> 8,911 bytes; libcrypto x86-64 was
#: 0.5 % smaller): little literal data for zstd to find the strings in, and an isolated
#: short far match is likelier moved code. With the bound every exe-set, fsimage and
#: near patch is byte for byte what it was.
PRUNE_MIN_MATCH = 48
PRUNE_FAR = 1024
PRUNE_MIN_BYTES = 1 << 20


def _ptr(buf: Buffer) -> Any:
    return ffi.from_buffer(buf) if len(buf) else ffi.NULL


def packed(ops: Any, n: int, local: Any) -> tuple[bytes, int]:
    """``n`` ops packed (bsi_ops_pack) for keeping until they are assembled: the
    results of the whole search are alive at its end, the diff's memory peak (on the
    Chromium pair 7.3 M ops: 175 MB as bsi_op, about 40 MB packed)."""
    need = n * lib.BSI_OP_PACKED_MAX
    scratch = getattr(local, "packed", None)
    if scratch is None or len(scratch) < need:
        scratch = local.packed = bytearray(need)
    m = check(lib.bsi_ops_pack(ops, n, ffi.from_buffer(scratch), len(scratch)), "pack ops")
    return bytes(memoryview(scratch)[:m]), n


def unpack_into(dest: Any, data: bytes, n: int) -> None:
    """Unpack ``n`` ops packed by :func:`packed` into the ``bsi_op`` array at ``dest``."""
    check(lib.bsi_ops_unpack(data, len(data), dest, n), "unpack ops")


def normalized(ops: Any, n: int, old: Buffer, new: Buffer, stats: dict[str, Any]) -> int:
    """Normalise the ``n`` ops in place (merge neighbours, check every range) and turn
    stitched matches into literal bytes (PRUNE_MIN_MATCH); return the new count and set
    ``stats["pruned_ops"]``."""
    po, pn, on, nn = _ptr(old), _ptr(new), len(old), len(new)
    count = check(lib.bsi_ops_normalize(ops, n, po, on, pn, nn), "normalise ops")
    pruned = 0
    if PRUNE_MIN_MATCH:
        pruned = check(
            lib.bsi_ops_prune(
                ops, count, po, on, pn, nn, PRUNE_MIN_MATCH, PRUNE_FAR, PRUNE_MIN_BYTES
            ),
            "prune ops",
        )
        if pruned:
            count = check(lib.bsi_ops_normalize(ops, count, po, on, pn, nn), "normalise ops")
    stats["pruned_ops"] = pruned
    return int(count)
