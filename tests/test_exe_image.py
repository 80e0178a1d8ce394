"""ELF files inside images: an image holding a changed library gets the reference-aware
patch (transform body version 2, one group per changed ELF file), every applier shape
rebuilds it byte for byte, and images without moved code keep today's patches.

Images are built two ways: raw (files at 4096-aligned offsets between random data) and
real ext4 file systems made by ``mke2fs -d`` from a directory holding the libraries
(the shape of a sealed OS image with a few changed files).
"""

from __future__ import annotations

import io
import random
import shutil
import struct
import subprocess
from pathlib import Path

import exe_data
import pytest

import bsipatch
from bsipatch._native import lib
from bsipatch.delta import exe, exeimage
from bsipatch.delta.apply import iter_apply
from bsipatch.delta.diff import compute_ops
from bsipatch.errors import CorruptPatch


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes]]:
    def tmp(name: str) -> Path:
        return tmp_path_factory.mktemp(name)

    return {
        "x86": exe_data.insert_pair(tmp("x"), "x86_64"),
        "a64": exe_data.insert_pair(tmp("a"), "aarch64"),
        "x86-change": exe_data.change_pair(tmp("xc"), "x86_64"),
    }


def _pad(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4096)


def raw_image(files: list[bytes], seed: int = 7) -> bytes:
    """Random filler, then each file at a 4096-aligned offset with filler between."""
    rng = random.Random(seed)
    out = bytearray(_pad(rng.randbytes(50_000)))
    for f in files:
        out += _pad(f) + _pad(rng.randbytes(30_000))
    return bytes(out)


def _patch(old: bytes | Path, new: bytes | Path, **kw: object) -> bytes:
    f = io.BytesIO()
    bsipatch.diff(old, new, f, **kw)  # type: ignore[arg-type]
    return f.getvalue()


def _apply(old: bytes | Path, patch: bytes) -> bytes:
    return bsipatch.apply(old if isinstance(old, bytes) else old.read_bytes(), patch)


def test_finds_and_pairs_elf_files_inside_an_image(libs: dict[str, tuple[bytes, bytes]]) -> None:
    (xo, xn), (ao, an) = libs["x86"], libs["a64"]
    old, new = raw_image([xo, ao]), raw_image([xn, an])
    fo, fn = exeimage.find_elves(old), exeimage.find_elves(new)
    assert [f.size for f in fo] == [len(xo), len(ao)]
    assert [f.size for f in fn] == [len(xn), len(an)]
    assert all(f.off % exeimage.ALIGN == 0 for f in fo + fn)
    assert old[fo[1].off : fo[1].off + fo[1].size] == ao
    pairs = exeimage.pair(fo, fn)
    assert [(o.elf.machine, n.elf.machine) for o, n in pairs] == [(62, 62), (183, 183)]
    # not at an aligned offset: not an ELF file of the image
    shifted = b"\x00" * 100 + old
    assert all(f.off % exeimage.ALIGN == 0 for f in exeimage.find_elves(shifted))
    assert len(exeimage.find_elves(shifted)) < 2 or exeimage.find_elves(shifted)[0].off != 100


@pytest.mark.parametrize("arch", ["x86", "a64"])
def test_image_with_a_changed_library_gets_the_transform(
    arch: str, libs: dict[str, tuple[bytes, bytes]]
) -> None:
    lo, ln = libs[arch]
    other = libs["x86-change"][0]  # an unchanged library beside it
    old, new = raw_image([other, lo]), raw_image([other, ln])
    with_exe, plain = _patch(old, new), _patch(old, new, exe=False)
    assert _apply(old, with_exe) == new and _apply(old, plain) == new
    info = bsipatch.read_patch_info(io.BytesIO(with_exe))
    assert info.version in (2, 3) and info.stats.get("transform_bytes", 0) > 0
    # the image patch gains (nearly) what the library on its own gains
    lone_gain = len(_patch(lo, ln, exe=False)) - len(_patch(lo, ln))
    assert lone_gain > 50
    # (less 64 B: the dense or sparse difference stream each patch picks moves sizes by
    # a few dozen bytes; the a64 library gains only ~60 B, x86 ~800 B)
    assert len(plain) > len(with_exe)
    assert len(plain) - len(with_exe) >= 0.8 * lone_gain - 64
    if arch == "x86":  # the inserted function moves every call after it
        assert len(with_exe) < 0.7 * len(plain)
    # streaming apply, any chunk size, is exact too
    out = b"".join(iter_apply(old, io.BytesIO(with_exe), chunk_size=777))
    assert out == new


def test_image_transform_has_one_group_per_changed_library(
    libs: dict[str, tuple[bytes, bytes]],
) -> None:
    (xo, xn), (ao, an) = libs["x86"], libs["a64"]
    same = libs["x86-change"][0]
    old, new = raw_image([xo, same, ao]), raw_image([xn, same, an])
    t = exeimage.plan_image(old, new, compute_ops)
    assert isinstance(t, exe.ImageTransform) and len(t.groups) == 2
    starts = [f.off for f in exeimage.find_elves(old)]
    for g, start, size in zip(t.groups, (starts[0], starts[2]), (len(xo), len(ao)), strict=True):
        assert all(start <= r.off and r.off + r.len <= start + size for r in g.regions)
    body = t.pack()
    assert exe.unpack_any(body, len(old)) == t
    pred = bytearray(old)
    stats = t.apply_to(pred)
    assert stats["groups"] == 2 and stats["rewritten"] > 300
    assert pred[: starts[0]] == old[: starts[0]]  # outside the files: untouched


def test_images_without_moved_code_keep_version_1(libs: dict[str, tuple[bytes, bytes]]) -> None:
    lo = libs["x86"][0]
    old = raw_image([lo])
    new = bytearray(old)
    new[-5000] ^= 0xFF  # filler changed, library unchanged
    p = _patch(old, bytes(new))
    assert "transform_bytes" not in bsipatch.read_patch_info(io.BytesIO(p)).stats
    assert p == _patch(old, bytes(new), exe=False)
    flipped = bytearray(old)  # one byte inside the library: nothing moves
    flipped[exeimage.find_elves(old)[0].off + 5000] ^= 1
    info = bsipatch.read_patch_info(io.BytesIO(_patch(old, bytes(flipped))))
    assert "transform_bytes" not in info.stats


def test_hostile_image_transform_bodies_are_refused(libs: dict[str, tuple[bytes, bytes]]) -> None:
    lo, ln = libs["x86"]
    old, new = raw_image([lo]), raw_image([ln])
    t = exeimage.plan_image(old, new, compute_ops)
    assert t is not None
    body = t.pack()
    bad_count = body[:4] + struct.pack("<I", 0) + body[8:]
    too_many = body[:4] + struct.pack("<I", exe.MAX_GROUPS + 1) + body[8:]
    for bad in (bad_count, too_many, body[:-1], body + b"\x00", body[:9]):
        with pytest.raises(CorruptPatch):
            exe.unpack_any(bad, len(old))
    with pytest.raises(CorruptPatch):  # regions beyond a smaller old image
        exe.unpack_any(body, 4096)
    # the same region repeated to make the native scan run over and over
    g = t.groups[0]
    code = max((r for r in g.regions if r.kind != lib.BSI_EXE_LOAD), key=lambda r: r.len)
    loads = [r for r in g.regions if r.kind == lib.BSI_EXE_LOAD]
    many = (*loads, *[code] * (exe.MAX_REGIONS - len(loads)))
    greedy = exe.ImageTransform((exe.Transform(many, g.map),))
    with pytest.raises(CorruptPatch, match="cover"):
        exe.unpack_any(greedy.pack(), len(old))


@pytest.mark.skipif(shutil.which("mke2fs") is None, reason="needs e2fsprogs (mke2fs)")
def test_ext4_image_with_changed_libraries(
    libs: dict[str, tuple[bytes, bytes]], tmp_path: Path
) -> None:
    """Two ext4 images of one tree where two libraries changed: the image patch gets
    the reference transform and is much smaller than without it; apply is exact."""
    rng = random.Random(3)
    images = []
    for side in (0, 1):
        tree = tmp_path / f"tree{side}"
        (tree / "lib").mkdir(parents=True)
        (tree / "lib" / "libx.so").write_bytes(libs["x86"][side])
        (tree / "lib" / "liba.so").write_bytes(libs["a64"][side])
        (tree / "lib" / "libsame.so").write_bytes(libs["x86-change"][0])
        (tree / "data.bin").write_bytes(random.Random(11).randbytes(200_000))
        img = tmp_path / f"img{side}.ext4"
        subprocess.run(
            ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-U",
             "3b1f6c0a-1111-4222-8333-444455556666", "-E", "hash_seed="
             "3b1f6c0a-1111-4222-8333-444455556666", "-d", str(tree), str(img), "8M"],
            check=True,
            env={"E2FSPROGS_FAKE_TIME": "1700000000", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
        images.append(img)
    del rng
    with_exe, plain = _patch(images[0], images[1]), _patch(images[0], images[1], exe=False)
    assert _apply(images[0], with_exe) == images[1].read_bytes()
    assert bsipatch.read_patch_info(io.BytesIO(with_exe)).version in (2, 3)
    assert len(with_exe) < 0.85 * len(plain)


def test_magic_is_looked_for_only_at_aligned_offsets() -> None:
    # the magic at unaligned offsets (also straddling an aligned word), at aligned ones,
    # and a buffer whose length is no multiple of 4: only the aligned ones are candidates
    buf = bytearray(random.Random(5).randbytes(8 * exeimage.ALIGN + 3))
    for off in (0, 3 * exeimage.ALIGN, 7 * exeimage.ALIGN):
        buf[off : off + 4] = exeimage.ELF_MAGIC
    for off in (9, exeimage.ALIGN - 2, 2 * exeimage.ALIGN + 4, 5 * exeimage.ALIGN + 510):
        buf[off : off + 4] = exeimage.ELF_MAGIC
    got = list(exeimage._magic_offsets(memoryview(buf)))
    assert got == [0, 3 * exeimage.ALIGN, 7 * exeimage.ALIGN]
    assert list(exeimage._magic_offsets(memoryview(bytes(3)))) == []
