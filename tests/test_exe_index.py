"""The applier's fast paths of the executable transform give the same answers as the
plain ones: the native map decoder (bsi_exe_unpack_map) against the Python packer, and
the indexed transform (bsi_exe_transform_indexed) against bsi_exe_transform."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from exehelp import native_arrays

from bsipatch._native import ffi, lib
from bsipatch.delta import exe
from bsipatch.errors import CorruptPatch


def _random_map(rng: random.Random, n: int, base: int, spread: int) -> tuple:
    entries = []
    va = base
    for _ in range(n):
        va += rng.randrange(0, spread)
        length = rng.randrange(1, spread)
        entries.append((va, length, rng.randrange(-(1 << 20), 1 << 20)))
        va += length
    return tuple(entries)


def test_native_map_decoder_reads_what_the_packer_writes() -> None:
    rng = random.Random(5)
    regions = (exe.Region(0, 4096, 0x400000, lib.BSI_EXE_LOAD),)
    for n in (0, 1, 2, 1000):
        t = exe.Transform(regions, _random_map(rng, n, 0x400000, 64))
        back = exe.Transform.unpack(t.pack(), 4096)
        assert isinstance(back.map, exe.NativeMap)
        assert back == t and back.map == t.map and tuple(back.map) == t.map
        assert len(back.map) == n and back.map[-1:] == t.map[-1:]
        if n:
            assert back.map[0] == t.map[0] and back.map[n - 1] == t.map[-1]
            with pytest.raises(IndexError):
                back.map[n]
    extreme = ((0, 1, -(1 << 62)), (2**64 - 2, 1, (1 << 62) - 1))  # the largest change
    t = exe.Transform(regions, extreme)
    assert exe.Transform.unpack(t.pack(), 4096).map == extreme


def _body(nmap: int, tail: bytes) -> bytes:
    return struct.pack("<III", 1, 0, nmap) + tail


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (_body(1, b"\x80" * 9 + b"\x02\x01\x00"), "varint"),  # 2**64
        (_body(1, b"\x80" * 9 + b"\x81\x00\x01\x00"), "varint"),  # eleven bytes
        (_body(1, b"\x00\x01"), "declares"),  # shorter than 3 bytes per entry
        (_body(2, b"\x00\x01\x00\x00\x01\x80"), "varint"),  # runs past the end
        (_body(1, b"\xff" * 9 + b"\x01" + b"\x01\x00"), "out of range"),  # ends at 2**64
        (_body(2, b"\x00\x01\xfe" + b"\xff" * 8 + b"\x01" + b"\x00\x01\x02"), "out of range"),
        (_body(1, b"\x00\x00\x00"), "out of range"),  # empty entry
    ],
)
def test_native_map_decoder_refuses_what_the_python_one_refused(body: bytes, match: str) -> None:
    with pytest.raises(CorruptPatch, match=match):
        exe.Transform.unpack(body, 100)


@pytest.mark.parametrize("seed", range(6))
def test_indexed_transform_makes_the_same_bytes(seed: int) -> None:
    rng = random.Random(seed)
    size = 1 << 18
    code = bytearray(rng.randbytes(size))
    va = rng.choice((0x1000, 0x400000, 2**40))
    for _ in range(8000):  # many calls into the image among the noise
        at = rng.randrange(0, size - 8)
        target = rng.randrange(va, va + size)
        code[at] = rng.choice((0xE8, 0xE9))
        code[at + 1 : at + 5] = struct.pack("<i", target - (va + at + 5))
    bss = rng.randrange(0, 1 << 16)
    kind = rng.choice((lib.BSI_EXE_X86_64, lib.BSI_EXE_A64))
    regions = [(0, size, va, lib.BSI_EXE_LOAD, bss), (4096, size - 8192, va + 4096, kind, 0)]
    regions.append((size - 4096, 4096, va + size - 4096, lib.BSI_EXE_PTR64, 0))
    n, span = rng.choice((1, 50, 5000, 60000)), size + 8192
    cuts = [0, *sorted(rng.sample(range(1, span), n - 1)), span]
    entries = tuple(  # covers the image in n pieces, most of them moved
        (va - 4096 + a, b - a, rng.randrange(-(1 << 12), 1 << 12))
        for a, b in itertools.pairwise(cuts)
    )
    r, m = native_arrays(regions, entries)
    plain, indexed = bytearray(code), bytearray(code)
    sa = ffi.new("uint64_t[]", int(lib.BSI_EXE_KINDS))
    sb = ffi.new("uint64_t[]", int(lib.BSI_EXE_KINDS))
    ra = lib.bsi_exe_transform(ffi.from_buffer(plain), size, r, 3, m, len(entries), sa)
    rb = lib.bsi_exe_transform_indexed(
        ffi.from_buffer(indexed), size, r, 3, m, len(entries), sb, exe.new_index()
    )
    assert ra == rb >= 0 and list(sa) == list(sb)
    assert plain == indexed
    assert ra > 100  # the index was used in earnest
