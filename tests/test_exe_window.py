"""The predicted old image without a private copy (delta/exewindow.py, csrc/bsi_exe.c's
bsi_exe_source): ranges transformed on demand and the unlinked temporary file give
exactly the bytes of the whole-image transform, whatever the read sizes and order;
transforms whose regions do not allow exact windows are refused (the caller falls back);
applies through every mode rebuild the new file byte for byte.

Inputs: libraries the C compiler builds (x86-64 and AArch64), libexpat.so.1 from Debian
(amd64, arm64), an image holding both architectures, and, when the bench data is there
($BSIPATCH_BENCH_DATA), libcrypto.so.3 of the libssl3 security update (amd64, arm64).
"""

from __future__ import annotations

import errno
import io
import os
import random
import struct
from pathlib import Path

import exe_data
import pytest
from test_exe_image import raw_image

import bsipatch
from bsipatch._native import ffi, lib
from bsipatch.delta import exe, exeimage, exeplan, exewindow, oldimage
from bsipatch.delta.diff import compute_ops

BENCH = os.environ.get("BSIPATCH_BENCH_DATA", "")
LIBCRYPTO = {
    arch: tuple(
        Path(BENCH, "exe/pkgs", f"libssl3_{v}-1~deb12u2_{arch}/usr/lib/{tri}/libcrypto.so.3")
        for v in ("3.0.20", "3.0.22")
    )
    for arch, tri in (("amd64", "x86_64-linux-gnu"), ("arm64", "aarch64-linux-gnu"))
}


@pytest.fixture(scope="module")
def pairs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[bytes, bytes]]:
    out = exe_data.standard_pairs(request, tmp_path_factory)
    for arch, (o, n) in LIBCRYPTO.items():
        if BENCH and o.exists() and n.exists():
            out[f"libcrypto-{arch}"] = (o.read_bytes(), n.read_bytes())
    return out


def _transform(old: bytes, new: bytes) -> exe.Transform:
    prep = exeplan.prepare(old, new, compute_ops)
    assert prep is not None
    t = exe.unpack_any(prep.block, len(old))
    assert isinstance(t, exe.Transform)
    return t


def _reads_agree(w: exewindow.WindowedOld, whole: bytes, seed: int) -> None:
    """Every byte, read in order in pieces of several sizes (pieces split instructions,
    ADRP pairs and table entries at every phase), then in random order, is the whole
    transform's byte."""
    for piece in (1, 3, 37, 4093, 4096, 65536 + 7, len(whole)):
        got = b"".join(
            w.read(off, min(piece, len(whole) - off)) for off in range(0, len(whole), piece)
        )
        assert got == whole, piece
    rnd = random.Random(seed)
    for _ in range(3000):
        off = rnd.randrange(len(whole))
        n = rnd.randrange(1, min(300, len(whole) - off) + 1)
        assert w.read(off, n) == whole[off : off + n], (off, n)


NAMES = ["x86-insert", "x86-change", "a64-insert", "a64-change", "expat-amd64", "expat-arm64"]


@pytest.mark.parametrize("name", [*NAMES, "libcrypto-amd64", "libcrypto-arm64"])
def test_windowed_and_file_equal_the_whole_transform(
    name: str, pairs: dict[str, tuple[bytes, bytes]], tmp_path: Path
) -> None:
    if name not in pairs:
        pytest.skip("bench data (libcrypto) not built here")
    old, new = pairs[name]
    t = _transform(old, new)
    whole, stats = exe.predicted_old(old, t)
    whole = bytes(whole)
    assert stats["rewritten"] > 100 and whole != old
    path = tmp_path / "old"
    path.write_bytes(old)
    w = exewindow.windowed_old(old, t, path)
    assert w is not None and len(w) == len(old)
    _reads_agree(w, whole, seed=len(old))
    assert w.reads > 0
    w.close()
    m = exewindow.file_predicted_old(old, t, path, str(tmp_path))
    assert m is not None and m[:] == whole
    m.close()
    assert os.listdir(tmp_path) == ["old"]  # the temporary file had no name


def test_an_image_of_both_architectures(
    pairs: dict[str, tuple[bytes, bytes]], tmp_path: Path
) -> None:
    (xo, xn), (ao, an) = pairs["x86-insert"], pairs["a64-insert"]
    old, new = raw_image([xo, ao]), raw_image([xn, an])
    t = exeimage.plan_image(old, new, compute_ops)
    assert isinstance(t, exe.ImageTransform) and len(t.groups) == 2
    t = exe.unpack_any(t.pack(), len(old))
    whole = bytes(exe.predicted_old(old, t)[0])
    path = tmp_path / "old"
    path.write_bytes(old)
    w = exewindow.windowed_old(old, t, path)
    assert w is not None
    _reads_agree(w, whole, seed=2)


def _t(*regions: exe.Region) -> exe.Transform:
    return exe.Transform(
        (exe.Region(0, 4096, 0x10000, lib.BSI_EXE_LOAD), *regions), ((0x10000, 4096, 0x40),)
    )


def test_regions_that_do_not_allow_exact_windows_are_refused(tmp_path: Path) -> None:
    code = bytes([0xE8, 0x10, 0, 0, 0] * 200)
    old = code + bytes(4096 - len(code))
    path = tmp_path / "old"
    path.write_bytes(old)
    x86 = exe.Region(0, 1000, 0x10000, lib.BSI_EXE_X86_64)
    assert exewindow.windowed_old(old, _t(x86), path) is not None
    # a table inside the code (its bytes would change under the walk) or two code regions
    for other in (
        exe.Region(500, 48, 0x10000 + 500, lib.BSI_EXE_SYM),
        exe.Region(996, 100, 0x10000 + 996, lib.BSI_EXE_X86_64),
        exe.Region(0, 24, 0x10000, lib.BSI_EXE_RELA, 62),
    ):
        t = _t(x86, other)
        t.check(len(old))
        assert exewindow.windowed_old(old, t, path) is None, other
    assert exewindow.windowed_old(old, _t(x86), None) is None  # no file to map
    # a relocated pointer written in place inside the code: found by the eager pass
    rela = bytearray(old)
    struct.pack_into("<QQQ", rela, 2048, 0x10000 + 120, 8, 0x10000 + 8)  # R_X86_64_RELATIVE
    path.write_bytes(rela)
    t = _t(x86, exe.Region(2048, 24, 0x10000 + 2048, lib.BSI_EXE_RELA, 62))
    assert exewindow.windowed_old(bytes(rela), t, path) is None
    struct.pack_into("<Q", rela, 2048, 0x10000 + 3000)  # pointer in place outside: fine
    path.write_bytes(rela)
    w = exewindow.windowed_old(bytes(rela), t, path)
    assert w is not None
    assert w.read(0, len(rela)) == bytes(exe.predicted_old(bytes(rela), t)[0])


def test_native_source_checks_its_fields(tmp_path: Path) -> None:
    old = bytes(range(256)) * 64
    path = tmp_path / "old"
    path.write_bytes(old)
    w = exewindow.windowed_old(
        old,
        _t(
            exe.Region(0, 1000, 0x10000, lib.BSI_EXE_X86_64),
            exe.Region(2000, 96, 0x10000 + 2000, lib.BSI_EXE_RELA, 62),
        ),
        path,
    )
    assert w is not None
    src = w.source
    assert lib.bsi_exe_source_init(src) == 0
    out = ffi.new("uint8_t[]", 8)
    assert lib.bsi_exe_source_read(src, len(old) - 4, 8, out) == lib.BSI_E_RANGE
    assert lib.bsi_exe_source_read(src, 2**64 - 4, 8, out) == lib.BSI_E_RANGE
    for field, bad in (
        ("win", None),
        ("group", 5),
        ("kind", lib.BSI_EXE_SYM),
        ("n_ckpt", 3),
        ("order", None),
        ("len", len(old)),
    ):
        keep = (
            src.wregions[0].group,
            src.wregions[0].r.kind,
            src.n_ckpt,
            src.wregions[1].r.off,
            src.wregions[0].r.len,
        )
        if field == "group":
            src.wregions[0].group = bad
        elif field == "kind":
            src.wregions[0].r.kind = bad
        elif field == "n_ckpt":
            src.n_ckpt = bad
        elif field == "order":
            src.wregions[1].r.off = 10  # overlaps the first
        elif field == "len":
            src.wregions[0].r.len = bad + 1
        else:
            continue
        assert lib.bsi_exe_source_init(src) == lib.BSI_E_INVAL, field
        (
            src.wregions[0].group,
            src.wregions[0].r.kind,
            src.n_ckpt,
            src.wregions[1].r.off,
            src.wregions[0].r.len,
        ) = keep
    assert lib.bsi_exe_source_init(src) == 0


@pytest.mark.parametrize("name", ["x86-insert", "a64-change", "expat-amd64"])
def test_apply_through_every_mode(
    name: str,
    pairs: dict[str, tuple[bytes, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Applies with the old image read through the file, through windows (no room for
    the file: posix_fallocate fails as on a full disk) and from a private copy, into a
    path and into a stream, all rebuild the new file; the mode is the one expected."""
    old, new = pairs[name]
    f = io.BytesIO()
    assert bsipatch.diff(old, new, f).version in (2, 3)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "p").write_bytes(f.getvalue())
    used: list[str] = []
    real_use = oldimage.OldImage.use_transform

    def spy(self: oldimage.OldImage, reader: object, scratch_dir: str | None = None) -> bool:
        r = real_use(self, reader, scratch_dir)  # type: ignore[arg-type]
        used.append(
            "windowed"
            if self.source is not None
            else "file"
            if scratch_dir
            and self.size >= oldimage.WINDOWED_ABOVE
            and self.predicted is not None
            and not hasattr(self.predicted, "keep_pages")
            else "copy"
        )
        return r

    monkeypatch.setattr(oldimage.OldImage, "use_transform", spy)
    monkeypatch.setattr(oldimage, "WINDOWED_ABOVE", 0)
    monkeypatch.setattr(oldimage, "PRIVATE_BELOW", 0)
    bsipatch.apply(tmp_path / "old", tmp_path / "p", tmp_path / "out1")
    assert (tmp_path / "out1").read_bytes() == new
    sink = io.BytesIO()
    bsipatch.apply(tmp_path / "old", tmp_path / "p", sink)
    assert sink.getvalue() == new

    def full(fd: int, off: int, n: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    bsipatch.apply(tmp_path / "old", tmp_path / "p", tmp_path / "out2")
    assert (tmp_path / "out2").read_bytes() == new
    monkeypatch.setattr(oldimage, "PRIVATE_BELOW", 1 << 62)  # few pages rewritten: a copy
    bsipatch.apply(tmp_path / "old", tmp_path / "p", tmp_path / "out4")
    assert (tmp_path / "out4").read_bytes() == new
    monkeypatch.setattr(oldimage, "WINDOWED_ABOVE", 1 << 62)
    bsipatch.apply(tmp_path / "old", tmp_path / "p", tmp_path / "out3")
    assert (tmp_path / "out3").read_bytes() == new
    assert used == ["file", "windowed", "windowed", "copy", "copy"]
    assert sorted(os.listdir(tmp_path)) == ["old", "out1", "out2", "out3", "out4", "p"]
