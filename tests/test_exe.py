"""The executable reference transform: ELF parsing, the transform block, the native scan.

Round trips through bsipatch.diff/apply are in test_exe_patch.py; here the parts are
tested on their own: ELF files the C compiler builds, hostile transform blocks, and
the native transform's argument checks and determinism.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import exe_data
import pytest
from exehelp import native_arrays

from bsipatch._native import ffi, lib
from bsipatch.delta import elf, exe, exeplan
from bsipatch.delta.diff import compute_ops, diff
from bsipatch.delta.exemap import build_map
from bsipatch.errors import CorruptPatch, TruncatedPatch


@pytest.fixture(scope="module")
def expat_pairs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, Path]]:
    return exe_data.expat_pairs(exe_data.cache_dir(request, tmp_path_factory))


@pytest.fixture(scope="module")
def x86_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    return exe_data.insert_pair(tmp_path_factory.mktemp("x86"), "x86_64")


@pytest.fixture(scope="module")
def a64_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    return exe_data.insert_pair(tmp_path_factory.mktemp("a64"), "aarch64")


def test_elf_parse_sees_code_tables_and_segments(x86_pair: tuple[bytes, bytes]) -> None:
    e = elf.parse(x86_pair[0])
    assert e is not None and e.machine == elf.EM_X86_64 and e.type == elf.ET_DYN
    text = e.section(".text")
    assert text is not None and text.flags & elf.SHF_EXECINSTR and text.size > 1000
    assert any(ld.off <= text.off < ld.off + ld.filesz for ld in e.loads)
    kinds = {r.kind for r in exeplan.regions_of(e)}
    assert {lib.BSI_EXE_LOAD, lib.BSI_EXE_X86_64, lib.BSI_EXE_RELA, lib.BSI_EXE_SYM} <= kinds
    assert {lib.BSI_EXE_EHHDR, lib.BSI_EXE_EHFRAME} <= kinds


def test_elf_parse_refuses_what_it_does_not_know(x86_pair: tuple[bytes, bytes]) -> None:
    a = x86_pair[0]
    assert elf.parse(b"") is None
    assert elf.parse(b"\x7fELF" + bytes(100)) is None
    assert elf.parse(a[:63]) is None
    assert elf.parse(a[: len(a) // 2]) is None  # section headers beyond the end
    wrong_machine = bytearray(a)
    struct.pack_into("<H", wrong_machine, 18, 40)  # ARM (32-bit)
    assert elf.parse(bytes(wrong_machine)) is None
    assert elf.parse(a + bytes(64)) is not None  # a little padding is fine
    assert elf.parse(a + bytes(4096)) is None  # an ELF file at the start of something else
    assert elf.parse(a + a) is None
    huge = bytearray(a)
    struct.pack_into("<H", huge, 60, 60000)  # e_shnum
    assert elf.parse(bytes(huge)) is None


@pytest.mark.parametrize("arch", ["x86", "a64"])
def test_transform_predicts_moved_references(
    arch: str, x86_pair: tuple[bytes, bytes], a64_pair: tuple[bytes, bytes]
) -> None:
    """After a function is inserted in the middle, the predicted old file agrees with the
    new one at many more mapped bytes than the old file does (references moved)."""
    old, new = x86_pair if arch == "x86" else a64_pair
    prep = exeplan.prepare(old, new, compute_ops)
    assert prep is not None
    assert prep.stats["rewritten"] > 300
    found = "x86_branch" if arch == "x86" else "a64_branch"
    assert prep.stats[found] > 100
    pred = bytes(prep.predicted)
    assert len(pred) == len(old) and pred != old
    # the same engine, fed the predicted old file, needs far fewer bytes to make new
    plain, predicted = io.BytesIO(), io.BytesIO()
    diff(old, new, plain, exe=False)
    diff(pred, new, predicted, exe=False)
    block, _ = exe.pack_block(bytes(32), prep.block)
    assert len(predicted.getvalue()) + len(block) < len(plain.getvalue())


def test_transform_block_round_trip_and_digest() -> None:
    t = exe.Transform(
        (exe.Region(0, 100, 0x1000, lib.BSI_EXE_LOAD, 4096), exe.Region(10, 50, 0x100A, 1)),
        ((0x1000, 40, 16), (0x1040, 8, -8), (0x2000, 1, 1 << 40)),
    )
    body = t.pack()
    assert exe.Transform.unpack(body, 100) == t
    hd = bytes(range(32))
    block, digest = exe.pack_block(hd, body)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        pos += n
        return block[pos - n : pos]

    assert exe.read_block(read, hd) == (body, digest)
    for cut in (3, 20, len(block) - 1):
        pos = 0

        def read_short(n: int, short: bytes = block[:cut]) -> bytes:
            nonlocal pos
            pos += n
            return short[pos - n : pos]

        with pytest.raises(TruncatedPatch):
            exe.read_block(read_short, hd)
    for i in (0, 5, 9, 13, 20, len(block) - 1):
        bad = bytearray(block)
        bad[i] ^= 1
        pos = 0

        def read_bad(n: int, bad: bytearray = bad) -> bytes:
            nonlocal pos
            pos += n
            return bytes(bad[pos - n : pos])

        with pytest.raises((CorruptPatch, TruncatedPatch)):
            exe.read_block(read_bad, hd)
    pos = 0
    with pytest.raises(CorruptPatch, match="digest"):
        exe.read_block(read, bytes(32))  # bound to another patch header


def _body(nreg: int, nmap: int, tail: bytes = b"") -> bytes:
    return struct.pack("<III", 1, nreg, nmap) + tail


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "transform block"),
        (struct.pack("<III", 2, 0, 0), "version"),
        (_body(lib.BSI_EXE_MAX_REGIONS + 1, 0, bytes(50000)), "declares"),
        (_body(0, lib.BSI_EXE_MAX_MAP + 1, bytes(10)), "declares"),
        (_body(1, 0, bytes(4)), "declares"),  # region shorter than its minimum
        (_body(0, 1, b"\x00\x05\x00\x00"), "after its map"),
        (_body(0, 1, b"\x00\x00\x00"), "out of range"),  # empty map entry
        (_body(0, 2, b"\x00\x10\x00" + b"\x00\x10\x00"), ""),  # fine: adjacent
        (_body(0, 1, b"\xff" * 11), "varint"),
        (_body(1, 0, b"\x09\x00\x00\x01\x00"), "do not fit"),  # unknown kind
        (_body(1, 0, b"\x03\x05\x00\x01\x00"), "do not fit"),  # RELA with a bad machine
        (_body(1, 0, b"\x00\x00\x60\x50\x00"), "do not fit"),  # region beyond old (100 B)
        (_body(1, 0, b"\x01\x00\x00\x01\x00"), "do not fit"),  # no LOAD region
        (_body(1, 0, b"\x80\x80\x04\x00\x00\x01\x00"), "kind"),  # kind above 16 bits
    ],
)
def test_transform_unpack_rejects_hostile_bodies(body: bytes, match: str) -> None:
    if not match:
        assert exe.Transform.unpack(body, 100).map == ((0, 16, 0), (16, 16, 0))
        return
    with pytest.raises(CorruptPatch, match=match):
        exe.Transform.unpack(body, 100)


def test_native_checks_regions_and_map() -> None:
    buf = bytearray(256)
    pbuf = ffi.from_buffer(buf)

    def run(
        regions: list[tuple[int, int, int, int, int]], entries: list[tuple[int, int, int]]
    ) -> int:
        r, m = native_arrays(regions, entries)
        rc = lib.bsi_exe_check(len(buf), r, len(regions), m, len(entries))
        rt = lib.bsi_exe_transform(pbuf, len(buf), r, len(regions), m, len(entries), ffi.NULL)
        assert (rc < 0) == (rt < 0)
        return int(min(rc, rt))

    load = (0, 256, 0x1000, lib.BSI_EXE_LOAD, 0)
    assert run([load], [(0x1000, 256, 8)]) == 0
    assert run([], []) == 0
    assert run([load], [(0x1000, 16, 8), (0x1008, 16, 8)]) == lib.BSI_E_CORRUPT  # overlap
    assert run([load], [(0x1010, 16, 8), (0x1000, 16, 8)]) == lib.BSI_E_CORRUPT  # unsorted
    assert run([load], [(2**64 - 8, 16, 0)]) == lib.BSI_E_CORRUPT  # wraps
    assert run([load, (250, 7, 0, 1, 0)], []) == lib.BSI_E_CORRUPT  # past the buffer
    assert run([(0, 256, 2**64 - 100, 0, 0)], []) == lib.BSI_E_CORRUPT  # va wraps
    assert run([(0, 256, 2**64 - 1000, 0, 2**32 - 1)], []) == lib.BSI_E_CORRUPT  # bss wraps
    assert run([load, (0, 10, 0, lib.BSI_EXE_KINDS, 0)], []) == lib.BSI_E_CORRUPT
    assert run([(0, 10, 0, 1, 0)], []) == lib.BSI_E_CORRUPT  # no LOAD
    assert run([load, (0, 240, 0x1000, lib.BSI_EXE_SYM, 5)], []) == lib.BSI_E_CORRUPT


def test_native_transform_is_deterministic_and_stays_in_bounds() -> None:
    """Random bytes taken as code and tables of every kind, with random maps: the
    transform gives the same bytes twice and never writes outside its buffer."""
    rng = random.Random(1234)
    for _ in range(60):
        size = rng.randrange(16, 4096)
        data = bytes(rng.randrange(256) for _ in range(size))
        regions = [exe.Region(0, size, 0x400000, lib.BSI_EXE_LOAD, rng.randrange(4096))]
        for _k in range(rng.randrange(1, 8)):
            off = rng.randrange(size)
            kind = rng.randrange(1, lib.BSI_EXE_KINDS)
            arg = rng.choice((62, 183)) if kind == lib.BSI_EXE_RELA else 0
            regions.append(
                exe.Region(off, rng.randrange(size - off + 1), 0x400000 + off, kind, arg)
            )
        entries, va = [], 0x400000 - 64
        while va < 0x400000 + size + 4096 and len(entries) < 20:
            n = rng.randrange(1, 900)
            entries.append((va, n, rng.randrange(-3000, 3000)))
            va += n + rng.randrange(0, 64)
        t = exe.Transform(tuple(regions), tuple(entries))
        outs = []
        for _r in range(2):
            guard = bytearray(data + b"\xa5" * 16)
            view = memoryview(guard)[:size]
            stats = t.apply_to(view)
            view.release()
            assert guard[size:] == b"\xa5" * 16
            outs.append((bytes(guard), stats))
        assert outs[0] == outs[1]


def test_build_map_keeps_order_and_falls_back_to_sections(x86_pair: tuple[bytes, bytes]) -> None:
    eo, en = elf.parse(x86_pair[0]), elf.parse(x86_pair[1])
    assert eo is not None and en is not None
    text_o, text_n = eo.section(".text"), en.section(".text")
    assert text_o is not None and text_n is not None
    # one true alignment (moved by 0x40 in new) and one crossing it (a similar function
    # far away, moved the other way): only the heavier survives; what neither covers falls
    # back to the section's move, and the bytes after the alignment move with it
    true = (text_n.off + 0x440, 512, text_o.off + 0x400)
    crossing = (text_n.off + 0x100, 128, text_o.off + 0x1000)
    m = build_map(eo, en, [true, crossing])
    assert all(m[i][0] + m[i][1] <= m[i + 1][0] for i in range(len(m) - 1))

    def delta(va: int) -> int | None:
        return next((d for s, n, d in m if s <= va < s + n), None)

    section_move = text_n.addr - text_o.addr
    assert delta(text_o.addr + 0x400) == (text_n.addr + 0x440) - (text_o.addr + 0x400)
    assert delta(text_o.addr + 0x1000) == delta(text_o.addr + 0x400)  # stretched, not crossing
    assert delta(text_o.addr + 0x10) == section_move
    bss_o, bss_n = eo.section(".bss"), en.section(".bss")
    assert bss_o is not None and bss_n is not None
    assert delta(bss_o.addr) == bss_n.addr - bss_o.addr  # no file bytes: by section address


def test_real_expat_transform(expat_pairs: dict[str, tuple[Path, Path]]) -> None:
    for arch, (old_p, new_p) in expat_pairs.items():
        prep = exeplan.prepare(old_p.read_bytes(), new_p.read_bytes(), compute_ops)
        assert prep is not None, arch
        key = "x86_branch" if arch == "amd64" else "a64_branch"
        assert prep.stats[key] > 1000, (arch, prep.stats)
        assert prep.stats["rewritten"] > 1000, (arch, prep.stats)


def test_anchor_alignment_finds_the_displacement_of_shifted_data() -> None:
    rng = random.Random(5)
    old = rng.randbytes(200_000)
    new = old[:50_000] + rng.randbytes(100) + old[50_000:]
    ranges = exeplan.anchor_ranges(old, new)
    assert ranges is not None
    covered = {0: 0, -100: 0}
    pos = 0
    for new_off, n, old_off in ranges:
        assert new_off >= pos and n >= lib.BSI_ALIGN_MIN  # in new order, disjoint
        assert old_off >= 0 and old_off + n <= len(old) and new_off + n <= len(new)
        assert old[old_off : old_off + 16] == new[new_off : new_off + 16]  # starts exact
        covered[old_off - new_off] += n
        pos = new_off + n
    assert covered[0] >= 49_000 and covered[-100] >= 149_000
    assert covered[0] <= 50_000 and covered[-100] <= 150_000


def test_anchor_alignment_ignores_windows_repeated_in_old_and_checks_its_arguments() -> None:
    old = bytes(range(256)) * 64  # every window occurs 64 times: no anchor is unique
    assert exeplan.anchor_ranges(old, old) == []
    assert exeplan.anchor_ranges(b"", b"abc" * 100) == []
    assert exeplan.anchor_ranges(b"abc" * 100, b"") == []
    table = ffi.new("uint64_t[]", 16)
    out = ffi.new("uint64_t[]", 3)
    data = bytes(4096)
    rc = lib.bsi_align_ranges(data, len(data), data, len(data), table, 16, out, 1)
    assert rc == lib.BSI_E_INVAL  # table and output too small


def test_anchor_alignment_predicts_references_as_well_as_a_full_search(
    x86_pair: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bsipatch

    old, new = x86_pair
    monkeypatch.setattr(exeplan, "ANCHOR_ABOVE", 0)  # diff() takes anchors whatever the size
    fast = exeplan.prepare(old, new, anchors=True)
    full = exeplan.prepare(old, new, compute_ops, anchors=False)
    assert fast is not None and full is not None
    assert fast.stats["rewritten"] >= full.stats["rewritten"] * 0.9 > 0
    v2, v1 = io.BytesIO(), io.BytesIO()
    diff(old, new, v2)  # anchors
    diff(old, new, v1, exe=False)
    assert len(v2.getvalue()) < len(v1.getvalue())
    assert bsipatch.apply(old, v2.getvalue()) == new


def _chain_reference(pieces: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The heaviest chain by a quadratic search, with exemap's tie rules (the later
    predecessor on equal weight, the first piece of the heaviest weight last)."""
    pieces = sorted(pieces)
    weight, prev = [], []
    for i, (va, n, d) in enumerate(pieces):
        best = (0, -1)
        for j in range(i):
            if pieces[j][0] < va and pieces[j][0] + pieces[j][2] < va + d:
                best = max(best, (weight[j], j))
        weight.append(best[0] + n)
        prev.append(best[1])
    i = max(range(len(pieces)), key=weight.__getitem__)
    chain = []
    while i >= 0:
        chain.append(pieces[i])
        i = prev[i]
    return chain[::-1]


def test_the_native_map_chain_is_the_heaviest_chain() -> None:
    # exemap._monotone (csrc bsi_map_chain) against a quadratic reference, on pieces
    # with repeated old and new addresses and equal weights (the tie rules matter)
    import random

    from bsipatch.delta import exemap

    rnd = random.Random(12)
    for _ in range(60):
        pieces = []
        for _ in range(rnd.randrange(1, 120)):
            va = rnd.randrange(0, 40) * 64
            pieces.append((va, rnd.choice([32, 64, 64, 100]), rnd.randrange(-10, 10) * 64))
        ref = _chain_reference(pieces)
        trimmed = []  # _monotone trims overlaps off the later piece; none here (64 apart)
        for va, n, d in ref:
            if trimmed:
                cut = max(trimmed[-1][0] + trimmed[-1][1] - va,
                          trimmed[-1][0] + trimmed[-1][2] + trimmed[-1][1] - (va + d))  # fmt: skip
                if cut >= n:
                    continue
                if cut > 0:
                    va, n = va + cut, n - cut
            trimmed.append((va, n, d))
        assert exemap._monotone(pieces) == trimmed


def test_the_load_finder_keeps_every_load_a_range_can_overlap() -> None:
    # exemap._pieces looks only at the loads _finder gives: for sorted, disjoint loads
    # (bisected) every overlapping load must be among them, in order; otherwise all
    import random

    from bsipatch.delta import exemap

    rnd = random.Random(6)
    for _ in range(200):
        loads, pos = [], rnd.randrange(0, 100)
        for _ in range(rnd.randrange(1, 6)):
            n = rnd.randrange(0, 300)
            loads.append((pos, pos + n, rnd.randrange(-5, 5)))
            pos += n + rnd.randrange(0, 50)
        find = exemap._finder(loads)
        for _ in range(20):
            s = rnd.randrange(0, pos + 50)
            e = s + rnd.randrange(1, 400)
            overlapping = [ld for ld in loads if min(e, ld[1]) > max(s, ld[0])]
            got = find(s, e)
            assert [ld for ld in got if min(e, ld[1]) > max(s, ld[0])] == overlapping
    shuffled = [(500, 600, 0), (0, 100, 0)]
    assert exemap._finder(shuffled)(0, 50) == shuffled  # not sorted: every load
