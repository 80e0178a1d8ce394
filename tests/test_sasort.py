"""The index's suffix sort: libdivsufsort (when installed) and the bundled SA-IS agree."""

from __future__ import annotations

import itertools
import random

import pytest

from bsipatch._native import ffi
from bsipatch.delta import sasort
from bsipatch.delta.search import compute_ops


def _text(rnd: random.Random, n: int) -> bytes:
    # repeats of a small vocabulary, runs and random bytes: deep suffix comparisons
    words = [rnd.randbytes(rnd.randrange(3, 30)) for _ in range(50)]
    out = bytearray()
    while len(out) < n:
        r = rnd.random()
        out += rnd.choice(words) if r < 0.7 else (b"\0" * 300 if r < 0.75 else rnd.randbytes(9))
    return bytes(out[:n])


def _sa(text: bytes, monkeypatch: pytest.MonkeyPatch, divsufsort: bool) -> tuple[str, bytes]:
    monkeypatch.setattr(sasort, "USE_DIVSUFSORT", divsufsort)
    monkeypatch.setattr(sasort, "DIVSUFSORT_ABOVE", 1 << 10)
    sa = bytearray(4 * len(text))
    used = sasort.sort_part(
        ffi.from_buffer(text), len(text), ffi.cast("int32_t *", ffi.from_buffer(sa)), ffi.NULL
    )
    return used, bytes(sa)


def test_divsufsort_and_sais_give_the_same_suffix_array(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pydivsufsort")
    text = _text(random.Random(3), 300_000)
    used_a, a = _sa(text, monkeypatch, True)
    used_b, b = _sa(text, monkeypatch, False)
    assert (used_a, used_b) == ("divsufsort", "sais")
    assert a == b
    # and it is a suffix array: the first suffixes in order
    idx = [int.from_bytes(a[4 * i : 4 * i + 4], "little") for i in range(2000)]
    assert all(text[p:] < text[q:] for p, q in itertools.pairwise(idx))


def test_ops_do_not_depend_on_the_suffix_sorter(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pydivsufsort")
    rnd = random.Random(4)
    old = _text(rnd, 2_000_000)
    new = bytearray(old[500_000:1_500_000] + _text(rnd, 200_000) + old[:400_000])
    for _ in range(500):
        new[rnd.randrange(len(new))] ^= 0x21
    monkeypatch.setattr(sasort, "DIVSUFSORT_ABOVE", 1 << 16)
    monkeypatch.setattr(sasort, "USE_DIVSUFSORT", True)
    a = list(compute_ops(old, bytes(new)))
    monkeypatch.setattr(sasort, "USE_DIVSUFSORT", False)
    b = list(compute_ops(old, bytes(new)))
    assert a == b
