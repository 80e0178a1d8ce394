"""Making patches: byte-identical round trips over many kinds of old/new pairs."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsipatch._native import ffi, lib
from bsipatch.delta.apply import apply
from bsipatch.delta.diff import compute_ops, diff
from bsipatch.delta.info import read_patch_info


def roundtrip(old: bytes, new: bytes, **kw) -> bytes:
    out = io.BytesIO()
    diff(old, new, out, **kw)
    patch = out.getvalue()
    got = io.BytesIO()
    apply(old, patch, got)
    assert got.getvalue() == new
    return patch


def _assert_applies_exactly(old: bytes, new: bytes, ops: Any) -> None:
    """A patch written from ``ops`` applies to ``old`` and gives ``new`` byte for byte."""
    from bsipatch.delta.writer import write_bsipatch

    out = io.BytesIO()
    shas = hashlib.sha256(old).digest(), hashlib.sha256(new).digest()
    write_bsipatch(old, new, ops, out, old_sha256=shas[0], new_sha256=shas[1], level=3)
    got = io.BytesIO()
    apply(old, out.getvalue(), got)
    assert got.getvalue() == new


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"", b""),
        (b"", b"new data" * 100),
        (b"old data" * 100, b""),
        (b"same" * 5000, b"same" * 5000),
        (bytes(100_000), bytes(100_000)),
        (bytes(50_000), b"\x01" + bytes(49_999)),
        (b"a", b"b"),
    ],
    ids=["both-empty", "empty-old", "empty-new", "identical", "zeros", "one-byte-change", "tiny"],
)
def test_roundtrip_edge_cases(old: bytes, new: bytes) -> None:
    roundtrip(old, new)


def test_roundtrip_unrelated_random() -> None:
    old, new = os.urandom(200_000), os.urandom(150_000)
    patch = roundtrip(old, new)
    assert len(patch) < len(new) + 2000  # incompressible data costs about its size


def test_identical_is_tiny_and_all_copy() -> None:
    data = os.urandom(1 << 20)
    patch = roundtrip(data, data)
    assert len(patch) < 600
    info = read_patch_info(patch)
    assert info.stats["copy_bytes"] == len(data)


def test_block_moves_found_by_prepass() -> None:
    blocks = [os.urandom(4096) for _ in range(64)]
    old = b"".join(blocks)
    order = list(range(64))
    random.Random(3).shuffle(order)
    new = b"".join(blocks[i] for i in order)
    patch = roundtrip(old, new)
    assert len(patch) < 2000
    ops = compute_ops(old, new)
    assert ops.stats["prepass_matched_bytes"] == len(new)


def test_segments_split_output() -> None:
    old = os.urandom(300_000)
    new = old[:100_000] + os.urandom(1000) + old[100_000:]
    patch = roundtrip(old, new, segment_size=65536, level=3, threads=2)
    info = read_patch_info(patch)
    assert len(info.segments) == (len(new) + 65535) // 65536


def _executables() -> list[Path]:
    cands = [
        Path("/usr/bin/python3"),
        Path("/usr/bin/bash"),
        Path("/usr/bin/ls"),
        Path("/usr/bin/cp"),
        Path("/usr/bin/mv"),
        Path("/usr/bin/grep"),
    ]
    return [p.resolve() for p in cands if p.exists()]


def test_roundtrip_real_executables() -> None:
    exes = [p for p in _executables() if p.stat().st_size < 8 << 20][:4]
    if len(exes) < 2:
        pytest.skip("not enough executables")
    for a, b in itertools.pairwise(exes):
        old, new = a.read_bytes(), b.read_bytes()
        roundtrip(old, new, level=3)


def test_real_executable_small_edit_gives_small_patch() -> None:
    exe = next((p for p in _executables() if 100_000 < p.stat().st_size < 4 << 20), None)
    if exe is None:
        pytest.skip("no executable")
    old = exe.read_bytes()
    new = bytearray(old)
    rnd = random.Random(5)
    for _ in range(200):  # scattered "relocation" changes
        i = rnd.randrange(len(new) - 4)
        new[i : i + 4] = (int.from_bytes(new[i : i + 4], "little") + 16 & 0xFFFFFFFF).to_bytes(
            4, "little"
        )
    new[5000:5000] = b"inserted code " * 50
    patch = roundtrip(old, bytes(new))
    assert len(patch) < 10_000


edits = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "move", "flip"]),
        st.integers(0, 1 << 30),
        st.integers(1, 3000),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1 << 30),
    size=st.integers(0, 40_000),
    edits=edits,
    seg=st.sampled_from([4096, 5000, 65536, 1 << 20]),
)
def test_hypothesis_edits_roundtrip(seed: int, size: int, edits: list, seg: int) -> None:
    rnd = random.Random(seed)
    old = bytes(rnd.choice(b"abcdefgh\0\0\0\xff") for _ in range(size))
    new = bytearray(old)
    for kind, where, n in edits:
        p = where % (len(new) + 1)
        if kind == "insert":
            new[p:p] = bytes(rnd.randrange(256) for _ in range(n))
        elif kind == "delete":
            del new[p : p + n]
        elif kind == "move":
            piece = new[p : p + n]
            del new[p : p + n]
            q = rnd.randrange(len(new) + 1)
            new[q:q] = piece
        else:
            for _ in range(min(n, 50)):
                if new:
                    new[rnd.randrange(len(new))] ^= 0x5A
    roundtrip(old, bytes(new), segment_size=seg, level=1, threads=2)


def test_suffix_array_matches_naive_sort() -> None:
    import mmap

    rnd = random.Random(11)
    for _ in range(300):
        n = rnd.randint(0, 60)
        text = bytes(rnd.randrange(rnd.randint(1, 4)) for _ in range(n))
        want = sorted(range(n), key=lambda i: text[i:])
        for wide in (0, 1):
            ws_size = lib.bsi_sais_workspace_size(n, wide)
            ws = mmap.mmap(-1, ws_size)
            sa = ffi.new("int64_t[]" if wide else "int32_t[]", max(n, 1))
            fn = lib.bsi_sais64 if wide else lib.bsi_sais32
            assert (
                fn(ffi.from_buffer(text) if n else ffi.NULL, sa, n, ffi.from_buffer(ws), ws_size)
                == 0
            )
            assert list(sa)[:n] == want, (text, wide)


def test_suffix_array_refuses_small_workspace() -> None:
    text = b"banana" * 10
    sa = ffi.new("int32_t[]", len(text))
    ws = ffi.new("uint8_t[]", 16)
    assert lib.bsi_sais32(ffi.from_buffer(text), sa, len(text), ws, 16) == lib.BSI_E_NOMEM


@pytest.mark.slow
def test_sparse_image_over_4gib_roundtrip(tmp_path: Path) -> None:
    size = (4 << 30) + 3 * 4096 + 123
    rnd = random.Random(2)
    old_p, new_p, patch_p, out_p = (tmp_path / n for n in ("old.img", "new.img", "p", "out.img"))
    chunks = {
        off: rnd.randbytes(4096 * 8)
        for off in [0, 1 << 20, 1 << 30, (3 << 30) + 4096, (4 << 30) - 8192]
    }
    with open(old_p, "wb") as f:
        f.truncate(size)
        for off, data in chunks.items():
            f.seek(off)
            f.write(data)
    with open(new_p, "wb") as f:
        f.truncate(size)
        for i, (off, data) in enumerate(chunks.items()):
            d = bytearray(data)
            if i == 1:
                d[100:110] = b"0123456789"  # changed block
            f.seek(off + (4096 if i == 2 else 0))  # moved by a block
            f.write(d)
        f.seek(size - 50)
        f.write(b"tail changed")
    info = diff(old_p, new_p, patch_p, threads=2)
    assert info.patch_size < 100_000
    apply(old_p, patch_p, out_p, threads=2)
    import filecmp

    assert filecmp.cmp(new_p, out_p, shallow=False)


def test_sparse_files_and_chunked_prepass(tmp_path: Path, monkeypatch) -> None:
    """Holes are taken as zeros without reading; the pre-pass works in chunks."""
    import bsipatch.delta.search as D

    monkeypatch.setattr(D, "PREPASS_CHUNK", 1 << 20)
    monkeypatch.setattr(D, "PAGE_DROP_ABOVE", 0)
    rnd = random.Random(4)
    size = 24 << 20
    data = {
        0: rnd.randbytes(70_000),
        5 << 20: rnd.randbytes(300_000),
        (17 << 20) + 333: rnd.randbytes(1 << 20),
    }
    old_p, new_p = tmp_path / "old", tmp_path / "new"
    with open(old_p, "wb") as f:
        f.truncate(size)
        for off, d in data.items():
            f.seek(off)
            f.write(d)
    with open(new_p, "wb") as f:
        f.truncate(size + 5000)
        for i, (off, d) in enumerate(data.items()):
            f.seek(off + i * 777)  # moved by odd amounts
            f.write(d[:1000] + b"changed" + d[1007:])
    patch = tmp_path / "p"
    info = diff(old_p, new_p, patch, threads=2, segment_size=1 << 20)
    assert info.patch_size < 20_000
    out = tmp_path / "out"
    apply(old_p, patch, out)
    assert out.read_bytes() == new_p.read_bytes()


def test_diff_progress_is_monotonic_and_completes() -> None:
    old = os.urandom(300_000)
    new = old[:1000] + os.urandom(50_000) + old[1000:]
    seen: list[tuple[int, int]] = []
    diff(old, new, io.BytesIO(), progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))


def test_index_of_many_small_ranges_remaps_ops() -> None:
    """With many unclaimed old ranges, matches crossing range boundaries are split."""
    rnd = random.Random(8)
    blocks = [rnd.randbytes(4096) for _ in range(40)]
    old = b"".join(blocks)
    new = bytearray()
    for i, blk in enumerate(blocks):
        if i % 2:
            new += blk  # claimed by the pre-pass: these old blocks leave the index
        else:
            b = bytearray(blk)
            b[rnd.randrange(4096)] ^= 1
            new += b  # changed: found by the search in the remaining ranges
    # one stretch copying across many old ranges at once
    new += b"".join(blocks[i][:3000] for i in range(0, 40, 2))
    roundtrip(old, bytes(new))


def test_segments_cut_when_sections_fill(monkeypatch) -> None:
    """A segment ends when its literal, difference, control or runs section fills."""
    from bsipatch.delta import patchformat as patchfmt

    for name, value in (
        ("LIT_CAP", 5000),
        ("DIFF_CAP", 3000),
        ("CTRL_CAP", 4096),
        ("RUNS_CAP", 4096),
    ):
        monkeypatch.setattr(patchfmt, name, value)
    rnd = random.Random(12)
    old = rnd.randbytes(200_000)
    new = bytearray(old)
    for _ in range(3000):  # many scattered changes: differences and runs
        new[rnd.randrange(len(new))] ^= 0xFF
    new[50_000:50_000] = rnd.randbytes(30_000)  # literals
    patch = roundtrip(old, bytes(new), segment_size=16 << 20, level=1)
    info = read_patch_info(patch)
    assert len(info.segments) > 5
    assert info.stats["insert_bytes"] >= 30_000


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_index_sorted_in_parts_roundtrips_and_finds_matches_in_every_part(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """With several threads the index is suffix-sorted in parts; a lookup searches
    them all, so data moved from any part of old is still found."""
    import bsipatch.delta.search

    rnd = random.Random(21)
    old = rnd.randbytes(120_000)
    new = bytearray()
    for start in (100_000, 3_000, 60_000, 30_000, 90_000):  # pieces from every part
        piece = bytearray(old[start : start + 12_000])
        for _ in range(20):  # not block-aligned copies: the search must find them
            piece[rnd.randrange(len(piece))] ^= 0x10
        new += rnd.randbytes(7) + piece
    one = len(roundtrip(old, bytes(new), threads=1, level=3))
    monkeypatch.setattr(bsipatch.delta.search, "SA_PART_MIN", 4096)
    parts = len(roundtrip(old, bytes(new), threads=threads, level=3))
    assert parts < one + 300  # no match lost to the split


def test_search_parts_checks_its_arguments() -> None:
    idx = bytes(range(256)) * 4
    sa = ffi.new("int32_t[]", len(idx))
    ws_size = lib.bsi_sais_workspace_size(len(idx), 0)
    ws = ffi.new("uint8_t[]", ws_size)
    assert lib.bsi_sais32(idx, sa, len(idx), ws, ws_size) == 0
    ops = ffi.new("bsi_op[]", 64)
    stopped = ffi.new("uint64_t *")
    new = idx[100:400]

    def run(parts: list[tuple[int, int]], n_parts: int | None = None) -> int:
        arr = ffi.new("bsi_sa_part[]", max(len(parts), 1))
        for i, (off, n) in enumerate(parts):
            arr[i].off, arr[i].len, arr[i].sa32 = off, n, sa
        count = len(parts) if n_parts is None else n_parts
        return lib.bsi_diff_search_parts(
            idx, len(idx), arr, count, new, len(new), 0, len(new), ops, 64, stopped
        )

    assert run([(0, len(idx))]) > 0 and stopped[0] == len(new)
    assert run([(0, len(idx))], n_parts=0) == lib.BSI_E_INVAL
    assert run([(0, len(idx))], n_parts=lib.BSI_MAX_SA_PARTS + 1) == lib.BSI_E_INVAL
    assert run([(0, len(idx) + 1)]) == lib.BSI_E_INVAL
    assert run([(len(idx), 1)]) == lib.BSI_E_INVAL


def test_incompressible_payloads_take_the_fast_zstd_level() -> None:
    from bsipatch.delta.writer import FAST_LEVEL, SAMPLE_ABOVE, level_for

    rnd = random.Random(3)
    noise = rnd.randbytes(2 * SAMPLE_ABOVE)
    text = b"".join(b"line %d of a text that compresses\n" % i for i in range(60_000))
    assert level_for(noise, 18) == FAST_LEVEL
    assert level_for(text, 18) == 18
    assert level_for(noise[: SAMPLE_ABOVE - 1], 18) == 18  # too short to bother
    # half noise, half text: still worth the slow level for the text
    assert level_for(noise[:SAMPLE_ABOVE] + text[:SAMPLE_ABOVE], 18) == 18


def test_random_literals_round_trip_and_stay_stored_size() -> None:
    rnd = random.Random(4)
    old = rnd.randbytes(3 << 20)
    new = bytearray(old)
    for k in range(0, len(new), 1 << 20):  # a fresh random 256 KiB run in every MiB
        new[k : k + (256 << 10)] = rnd.randbytes(256 << 10)
    patch = io.BytesIO()
    diff(old, bytes(new), patch)
    assert len(patch.getvalue()) < 3 * (256 << 10) + 4096  # literals stored, little else
    out = io.BytesIO()
    apply(old, patch.getvalue(), out)
    assert out.getvalue() == bytes(new)


def test_the_8gram_filter_skips_lookups_without_changing_what_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bsipatch.delta.search as search

    rnd = random.Random(8)
    words = [rnd.randbytes(rnd.randint(3, 40)) for _ in range(400)]
    old = b"".join(rnd.choice(words) for _ in range(40_000))
    new = bytearray(old)
    for _ in range(30):  # random data (no 8 bytes of it in old) and edits inside old data
        p = rnd.randrange(len(new))
        new[p : p + rnd.randint(1, 3000)] = rnd.randbytes(rnd.randint(1, 3000))
    sizes = {}
    for use in (False, True):
        monkeypatch.setattr(search, "USE_FILTER", use)
        patch = io.BytesIO()
        diff(old, bytes(new), patch, threads=1)
        out = io.BytesIO()
        apply(old, patch.getvalue(), out)
        assert out.getvalue() == bytes(new)
        sizes[use] = len(patch.getvalue())
    assert abs(sizes[True] - sizes[False]) <= sizes[False] // 100


def test_the_8gram_filter_has_no_false_negatives_and_checks_its_arguments() -> None:
    import mmap

    text = random.Random(9).randbytes(50_000)
    log2 = lib.bsi_gram_filter_log2(len(text))
    assert log2 >= 7 and (1 << log2) >= 8 * len(text)
    assert lib.bsi_gram_filter_log2(100) == 0  # too small to bother
    buf = mmap.mmap(-1, (1 << log2) // 8)
    filt = ffi.cast("uint64_t *", ffi.from_buffer(buf))
    assert lib.bsi_gram_filter_build(text, len(text), filt, log2) == 0
    assert lib.bsi_gram_filter_build(text, len(text), filt, 40) == lib.BSI_E_INVAL
    assert lib.bsi_gram_filter_build(text, len(text), ffi.NULL, log2) == lib.BSI_E_INVAL
    # every window of the text is present: the text's pieces in reverse order (the
    # alignment breaks at each, so the filter is asked) are all found, none inserted
    pieces = [text[i : i + 1000] for i in range(0, len(text), 1000)]
    new = b"".join(reversed(pieces))
    sa = ffi.new("int32_t[]", len(text))
    ws_size = lib.bsi_sais_workspace_size(len(text), 0)
    ws = mmap.mmap(-1, ws_size)
    assert lib.bsi_sais32(text, sa, len(text), ffi.from_buffer(ws), ws_size) == 0
    part = ffi.new("bsi_sa_part *", {"off": 0, "len": len(text), "sa32": sa})
    ops = ffi.new("bsi_op[]", 1024)
    stopped = ffi.new("uint64_t *")
    n = lib.bsi_diff_search_filtered(
        text, len(text), part, 1, new, len(new), 0, len(new), ops, 1024, stopped, filt, log2
    )
    assert n > 0 and stopped[0] == len(new)
    assert all(ops[i].kind == lib.BSI_OP_ADD for i in range(n) if ops[i].len)
    assert sum(ops[i].len for i in range(n)) == len(new)


@pytest.mark.parametrize("sparse_side", ["new", "old", "both"])
def test_patch_depends_on_the_bytes_not_on_file_holes(sparse_side: str, tmp_path: Path) -> None:
    """A sparse file and a dense copy of the same bytes give the same patch, byte for
    byte (a release built on two machines, or from a copied image, must not differ).
    Before, a zero run that is a hole in new became a ZERO op while the same zeros
    written out were taken as a COPY continuing the data before them."""
    rng = random.Random(5)
    a, b = rng.randbytes(1 << 20), rng.randbytes(1 << 20)
    zeros = 6 << 20
    old = a + bytes(zeros) + b
    b2 = bytearray(b)
    b2[1000] ^= 1
    new = a + bytes(zeros) + bytes(b2)

    def write(path: Path, data: bytes, sparse: bool) -> Path:
        with open(path, "wb") as f:
            if sparse:
                f.write(data[: len(a)])
                f.seek(len(a) + zeros)
                f.write(data[len(a) + zeros :])
            else:
                f.write(data)
        return path

    patches = []
    for sparse in (False, True):
        o = write(tmp_path / f"old{sparse}", old, sparse and sparse_side in ("old", "both"))
        n = write(tmp_path / f"new{sparse}", new, sparse and sparse_side in ("new", "both"))
        out = io.BytesIO()
        diff(o, n, out)
        patches.append(out.getvalue())
        got = io.BytesIO()
        apply(old, out.getvalue(), got)
        assert got.getvalue() == new
    assert patches[0] == patches[1]


def test_scratch_buffers_keep_their_bytes_when_pages_are_dropped() -> None:
    # the diff's scratch maps are private anonymous memory: dropping their pages would
    # zero them, so drop_pages must leave them alone
    from bsipatch._buffers import drop_pages
    from bsipatch.delta.search import HUGE_ABOVE, _anon

    for size in (4096, HUGE_ABOVE):
        buf = _anon(size, huge=True)
        buf[:] = b"\x5a" * size
        drop_pages(buf)
        assert buf[:] == b"\x5a" * size


def test_hinted_ranges_become_add_ops_and_leave_the_index() -> None:
    # the executable transform's anchors, given as hints, are taken without a search:
    # the patch is still exact, and the old bytes they cover are not suffix-sorted

    from bsipatch.delta import search
    from bsipatch.delta.exeplan import anchor_ranges

    rnd = random.Random(21)
    old = rnd.randbytes(300_000)
    new = bytearray(old[:100_000] + rnd.randbytes(5_000) + old[100_000:])
    for _ in range(300):  # changed in place, as moved references are
        new[rnd.randrange(len(new))] ^= 0x11
    new = bytes(new)
    hints = anchor_ranges(old, new)
    assert hints and max(n for _, n, _ in hints) > search.HINT_MIN + 2 * search.HINT_MARGIN
    plain = compute_ops(old, new)
    hinted = compute_ops(old, new, hints=hints)
    assert hinted.stats["indexed_bytes"] < plain.stats["indexed_bytes"] // 2
    pos, adds = 0, []
    for kind, n, o in hinted:
        if kind == lib.BSI_OP_ADD:
            adds.append((pos, n, o))
        pos += n
    assert pos == len(new)
    for hs, hl, ho in hints:  # each long hint's interior lies in one ADD op, same offsets
        if hl >= search.HINT_MIN + 2 * search.HINT_MARGIN:
            a = hs + search.HINT_MARGIN
            assert any(p <= a < p + n and o + a - p == ho + a - hs for p, n, o in adds)
    _assert_applies_exactly(old, new, hinted)


def test_patch_bytes_do_not_depend_on_the_thread_count() -> None:
    # text-like data (words of a small vocabulary, some replaced): the search needs the
    # suffix arrays everywhere, the index (2.8 MB) is sorted in parts and the gaps are
    # searched in regions; before, 1 thread sorted one part and 3 threads three, and
    # the patches differed (93,728 against 93,739 bytes)
    rnd = random.Random(7)
    vocab = [rnd.randbytes(rnd.randrange(3, 12)) for _ in range(3000)]
    words = [rnd.choice(vocab) for _ in range(400_000)]
    old = b"".join(words)
    for i in range(0, len(words), 40):
        words[i] = rnd.choice(vocab)
    new = b"".join(words)
    patches = []
    for threads in (1, 2, 3):
        out = io.BytesIO()
        diff(old, new, out, threads=threads, level=1, exe=False)
        patches.append(out.getvalue())
    assert patches[0] == patches[1] == patches[2]
    got = io.BytesIO()
    apply(old, patches[0], got)
    assert got.getvalue() == new


def test_an_index_built_in_place_gives_the_same_ops_and_is_restored() -> None:
    # compute_ops(restore=...): the old copy itself holds the index during the search
    # (its unclaimed blocks moved to the front, in ascending order), then the caller's
    # restore() makes it again; the ops must be those of an index in a copy
    import mmap

    rnd = random.Random(5)
    old = rnd.randbytes(1_500_000)
    # new: blocks copied from old (claimed: they leave holes in the index, so the ranges
    # move down), pieces of old with bytes changed (found only by the search) and new bytes
    parts = []
    for i in range(40):
        s = rnd.randrange(0, len(old) - 40_000) // 4096 * 4096
        piece = bytearray(old[s : s + 20_000 + i * 300])
        if i % 2:
            for _ in range(30):
                piece[rnd.randrange(len(piece))] ^= 0x5A
        parts.append(bytes(piece) + rnd.randbytes(700))
    new = b"".join(parts)
    want = list(compute_ops(old, new))
    copy = mmap.mmap(-1, len(old), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    copy[:] = old
    calls = []

    def restore() -> None:
        assert bytes(copy) != old  # the index was built in it
        calls.append(1)
        copy[:] = old

    got = compute_ops(copy, new, restore=restore)
    assert calls == [1]
    assert bytes(copy) == old
    assert list(got) == want
    assert got.stats["indexed_bytes"] < len(old)


def test_packed_ops_unpack_to_the_same_ops_and_reject_short_or_bad_bytes() -> None:
    # the search keeps its results packed (bsi_ops_pack) until they are assembled
    rnd = random.Random(8)
    kinds = [lib.BSI_OP_COPY, lib.BSI_OP_ADD, lib.BSI_OP_INSERT, lib.BSI_OP_ZERO]
    ops = [(rnd.choice(kinds), rnd.choice([1, 7, 300, 1 << 33, (1 << 61) - 1]),
            rnd.choice([0, 5, 1 << 40, (1 << 64) - 1])) for _ in range(500)]  # fmt: skip
    arr = ffi.new("bsi_op[]", len(ops))
    for i, (k, n, o) in enumerate(ops):
        arr[i].kind, arr[i].len, arr[i].old_off = k, n, o
    out = bytearray(len(ops) * lib.BSI_OP_PACKED_MAX)
    m = lib.bsi_ops_pack(arr, len(ops), ffi.from_buffer(out), len(out))
    assert 0 < m < len(ops) * 24
    back = ffi.new("bsi_op[]", len(ops))
    assert lib.bsi_ops_unpack(bytes(out[:m]), m, back, len(ops)) == m
    for i, (k, n, o) in enumerate(ops):
        assert (back[i].kind, back[i].len) == (k, n)
        assert back[i].old_off == (o if k in (lib.BSI_OP_COPY, lib.BSI_OP_ADD) else 0)
    assert lib.bsi_ops_unpack(bytes(out[: m - 1]), m - 1, back, len(ops)) == lib.BSI_E_TRUNCATED
    assert lib.bsi_ops_unpack(b"\x07", 1, back, 1) == lib.BSI_E_CORRUPT  # kind 7
    assert lib.bsi_ops_unpack(b"\xff" * 11, 11, back, 1) == lib.BSI_E_CORRUPT  # varint too long
    small = bytearray(lib.BSI_OP_PACKED_MAX - 1)
    assert lib.bsi_ops_pack(arr, 1, ffi.from_buffer(small), len(small)) == lib.BSI_E_NOMEM
    arr[0].len = 1 << 61
    assert lib.bsi_ops_pack(arr, 1, ffi.from_buffer(out), len(out)) == lib.BSI_E_INVAL


def _stitched_pair(rnd: random.Random) -> tuple[bytes, bytes, list[tuple[int, int, int]]]:
    """old, new and ops ``(kind, len, old_off)``: short matches from far apart in old
    (12-20 bytes, every byte equal) with literal bytes between them, one long match."""
    old = rnd.randbytes(1 << 20)
    new, ops = bytearray(), []
    for i in range(200):
        n, o = rnd.randrange(12, 21), rnd.randrange(0, len(old) - 4096)
        ops.append((lib.BSI_OP_ADD, n, o))
        new += old[o : o + n]
        lit = rnd.randbytes(5)
        ops.append((lib.BSI_OP_INSERT, len(lit), 0))
        new += lit
        if i == 100:  # a long match: stays, and the next short one is measured from it
            ops.append((lib.BSI_OP_ADD, 4000, 7))
            new += old[7:4007]
    return old, bytes(new), ops


def _pruned(old: bytes, new: bytes, ops: list[tuple[int, int, int]], *args: int) -> tuple[int, Any]:
    arr = ffi.new("bsi_op[]", len(ops))
    for i, (k, n, o) in enumerate(ops):
        arr[i].kind, arr[i].len, arr[i].old_off = k, n, o
    return lib.bsi_ops_prune(arr, len(ops), old, len(old), new, len(new), *args), arr


def test_stitched_short_matches_become_literals_only_when_they_add_up() -> None:
    old, new, ops = _stitched_pair(random.Random(4))
    short = sum(n for k, n, _ in ops if k == lib.BSI_OP_ADD and n < 48)
    changed, arr = _pruned(old, new, ops, 48, 1024, short)
    assert changed == 200  # every short far match; the long one stays
    kinds = [arr[i].kind for i in range(len(ops))]
    assert kinds.count(lib.BSI_OP_ADD) == 1 and arr[202].len == 4000
    # the same matches adding up to less than min_bytes: nothing changes
    assert _pruned(old, new, ops, 48, 1024, short + 1)[0] == 0
    # matched bytes at or above min_match, or jumps under far: kept
    assert _pruned(old, new, ops, 12, 1024, 0)[0] == 0
    assert _pruned(old, new, ops, 48, 1 << 21, 0)[0] == 0
    # every op is checked: an old range past the end is refused
    bad = [*ops[:-1], (lib.BSI_OP_ADD, 5, len(old))]
    assert _pruned(old, new, bad, 48, 1024, 0)[0] == lib.BSI_E_RANGE


def test_pruned_ops_still_make_an_exact_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    # new made of short pieces of old from all over it (as new code stitched from
    # common strings): the pruned ops carry them as literals and the patch is exact

    from bsipatch.delta import opspost

    rnd = random.Random(9)
    words = [rnd.randbytes(rnd.randrange(20, 40)) for _ in range(3000)]
    old = b"".join(rnd.choice(words) + rnd.randbytes(3) for _ in range(40_000))
    new = b"".join(
        rnd.choice(words)[: rnd.randrange(14, 20)] + rnd.randbytes(2) for _ in range(20_000)
    )
    monkeypatch.setattr(opspost, "PRUNE_MIN_BYTES", 1)
    pruned = compute_ops(old, new)
    assert pruned.stats["pruned_ops"] > 1000
    monkeypatch.setattr(opspost, "PRUNE_MIN_BYTES", 1 << 40)
    plain = compute_ops(old, new)
    assert plain.stats["pruned_ops"] == 0 and plain.count > pruned.count
    _assert_applies_exactly(old, new, pruned)
