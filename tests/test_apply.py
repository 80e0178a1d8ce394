"""Applying patches: output file policy, base checks, streams, resume, CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bsipatch.cli.main import main
from bsipatch.delta.apply import PARTIAL_SUFFIX, ApplyReader, apply, iter_apply
from bsipatch.delta.diff import diff
from bsipatch.errors import CorruptPatch, OutputMismatch, TruncatedPatch, WrongBaseImage

SEG = 8192


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, Path, bytes]:
    old = os.urandom(200_000)
    new = old[:50_000] + b"new stuff" * 300 + old[60_000:] + os.urandom(5000)
    op, np_, pp = tmp_path / "old.img", tmp_path / "new.img", tmp_path / "u.bsipatch"
    op.write_bytes(old)
    np_.write_bytes(new)
    diff(op, np_, pp, segment_size=SEG, level=3)
    return op, np_, pp, new


class OneByteStream(io.RawIOBase):
    """A non-seekable stream that returns at most ``n`` bytes per read and can fail."""

    def __init__(self, data: bytes, n: int = 1, fail_at: int | None = None) -> None:
        self.data, self.pos, self.n, self.fail_at = data, 0, n, fail_at

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b) -> int:  # type: ignore[override]
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise ConnectionResetError("download cut")
        k = min(len(b), self.n, len(self.data) - self.pos)
        if self.fail_at is not None:
            k = min(k, self.fail_at - self.pos)
        b[:k] = self.data[self.pos : self.pos + k]
        self.pos += k
        return k


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name not in ("old.img", "new.img", "u.bsipatch"))


def test_apply_to_path_is_exact_and_leaves_no_temp(files, tmp_path: Path) -> None:
    op, _np, pp, new = files
    info = apply(op, pp, tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == new
    assert info.new_size == len(new)
    assert _leftovers(tmp_path) == ["out.img"]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_apply_threads_from_nonseekable_stream(files, tmp_path: Path, threads: int) -> None:
    op, _np, pp, new = files
    stream = OneByteStream(pp.read_bytes(), n=777)
    apply(op, io.BufferedReader(stream), tmp_path / "out.img", threads=threads)
    assert (tmp_path / "out.img").read_bytes() == new


def test_wrong_base_refused_before_writing(files, tmp_path: Path) -> None:
    op, _np, pp, _new = files
    bad = bytearray(op.read_bytes())
    bad[12345] ^= 1
    (tmp_path / "bad.img").write_bytes(bad)
    with pytest.raises(WrongBaseImage):
        apply(tmp_path / "bad.img", pp, tmp_path / "out.img")
    with pytest.raises(WrongBaseImage):
        apply(bytes(bad[:-1]), pp, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()
    assert _leftovers(tmp_path) == ["bad.img"]


def test_corrupt_and_truncated_leave_nothing(files, tmp_path: Path) -> None:
    op, _np, pp, _new = files
    data = pp.read_bytes()
    (tmp_path / "out.img").write_bytes(b"previous")
    for cut in (len(data) // 2, len(data) - 1):
        with pytest.raises(TruncatedPatch):
            apply(op, data[:cut], tmp_path / "out.img")
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x40
    with pytest.raises(CorruptPatch):
        apply(op, bytes(bad), tmp_path / "out.img")
    assert (tmp_path / "out.img").read_bytes() == b"previous"  # untouched
    assert _leftovers(tmp_path) == ["out.img"]


def test_resume_after_interrupted_download(files, tmp_path: Path) -> None:
    op, _np, pp, new = files
    data = pp.read_bytes()
    out = tmp_path / "out.img"
    with pytest.raises(OSError):
        apply(
            op,
            io.BufferedReader(OneByteStream(data, n=4096, fail_at=len(data) * 2 // 3)),
            out,
            resume=True,
            threads=2,
        )
    partial = tmp_path / f".out.img{PARTIAL_SUFFIX}"
    assert partial.exists() and not out.exists()
    info = apply(op, io.BytesIO(data), out, resume=True)
    assert out.read_bytes() == new
    assert info.stats["resumed_segments"] > 5
    assert not partial.exists()


def test_resume_ignores_damaged_partial(files, tmp_path: Path) -> None:
    op, _np, pp, new = files
    partial = tmp_path / f".out.img{PARTIAL_SUFFIX}"
    damaged = bytearray(new)
    damaged[SEG * 3 + 5] ^= 1
    partial.write_bytes(bytes(damaged[: SEG * 10]))
    info = apply(op, pp, tmp_path / "out.img", resume=True)
    assert (tmp_path / "out.img").read_bytes() == new
    assert info.stats["resumed_segments"] == 9


def test_truncated_without_resume_removes_partial(files, tmp_path: Path) -> None:
    op, _np, pp, _new = files
    data = pp.read_bytes()
    with pytest.raises(TruncatedPatch):
        apply(op, data[: len(data) // 2], tmp_path / "out.img")
    assert _leftovers(tmp_path) == []


def test_iter_apply_and_reader(files) -> None:
    op, _np, pp, new = files
    assert b"".join(iter_apply(op, pp, chunk_size=3000)) == new
    with ApplyReader(op, io.BufferedReader(OneByteStream(pp.read_bytes(), n=1000))) as r:
        got = r.read()
    assert got == new


def test_iter_apply_withholds_unverified_end(files) -> None:
    op, _np, pp, new = files
    data = pp.read_bytes()
    got = bytearray()
    with pytest.raises(TruncatedPatch):
        for chunk in iter_apply(op, data[:-10]):
            got += chunk
    assert len(got) < len(new)


@pytest.mark.parametrize("single_segment", [False, True])
def test_output_mismatch_detected(files, tmp_path: Path, single_segment: bool) -> None:
    import hashlib

    from bsipatch.delta import patchformat as patchfmt

    op, _np, pp, _new = files
    # re-sign a patch whose header declares another new digest: segments still verify
    if single_segment:  # the verified segment digest stands for the whole image
        diff(op, _np, pp, level=3, compact=False)
    data = pp.read_bytes()
    h = patchfmt.Header.unpack(data[: patchfmt.HEADER_SIZE])

    h2 = h._replace(new_sha256=hashlib.sha256(b"other").digest())
    hb = h2.pack()
    h2 = patchfmt.Header.unpack(hb)
    rest = io.BytesIO()
    reader = patchfmt.PatchReader(io.BytesIO(data))
    digests = []
    for seg, comp in reader:
        body = seg.body()
        d = patchfmt.SegmentHeader.compute_digest(h2.digest, body, comp)
        rest.write(body + d + comp)
        digests.append(d)
    forged = hb + rest.getvalue() + patchfmt.pack_trailer(h2, digests)
    with pytest.raises(OutputMismatch):
        apply(op, forged, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()


def test_progress_reaches_total(files, tmp_path: Path) -> None:
    op, _np, pp, new = files
    seen: list[tuple[int, int]] = []
    apply(op, pp, tmp_path / "o", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(new), len(new))


def test_cli_diff_apply_info_stdin(tmp_path: Path, files) -> None:
    op, np_, _pp, new = files
    patch = tmp_path / "c.patch"
    assert main(["diff", "-q", str(op), str(np_), str(patch), "--level", "3"]) == 0
    r = subprocess.run(
        [sys.executable, "-m", "bsipatch", "apply", "-q", str(op), "-", str(tmp_path / "o.img")],
        input=patch.read_bytes(),
        capture_output=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o.img").read_bytes() == new
    assert main(["info", "--json", str(patch)]) == 0
    assert main(["apply", "-q", str(np_), str(patch), str(tmp_path / "x")]) == 4
    assert not (tmp_path / "x").exists()


def test_every_refusal_leaves_no_output_file(files, tmp_path: Path) -> None:
    from bsipatch.errors import PatchError, PatchTooLarge, UnsupportedPatch

    op, _np, pp, _new = files
    data = pp.read_bytes()
    wrong_version = bytearray(data)
    wrong_version[8] = 9
    cases = [
        (bytes(wrong_version), UnsupportedPatch),
        (b"GARBAGE!" + data[8:], UnsupportedPatch),
        (data + b"extra", CorruptPatch),
        (data[:-1], TruncatedPatch),
    ]
    for patch, exc in cases:
        with pytest.raises(exc):
            apply(op, patch, tmp_path / "out.img")
        assert _leftovers(tmp_path) == []
    with pytest.raises(PatchTooLarge):
        apply(op, data, tmp_path / "out.img", max_patch_size=len(data) // 2)
    assert _leftovers(tmp_path) == []
    with pytest.raises(PatchError):
        apply(op, data[: len(data) // 3], tmp_path / "out.img", resume=False)
    assert _leftovers(tmp_path) == []


class ShortWriter(io.RawIOBase):
    """A raw output stream that takes at most 3 bytes per write."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        piece = bytes(b[:3])
        self.data += piece
        return len(piece)


def test_short_writes_to_a_raw_stream_are_completed(files) -> None:
    op, _np, pp, new = files
    out = ShortWriter()
    apply(op, pp, out)
    assert bytes(out.data) == new


@pytest.mark.parametrize("segment_size", [None, SEG])
def test_disk_full_during_apply_raises_and_leaves_nothing(
    files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, segment_size
) -> None:
    """A full disk shows as short pwrites and then ENOSPC: never a silent success."""
    import errno

    op, np_, pp, _new = files
    if segment_size is None:  # one segment: its verified digest stands for the image
        diff(op, np_, pp, level=3)
    real = os.pwrite
    budget = [20_000]

    def filling_pwrite(fd: int, data, pos: int) -> int:
        if budget[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = min(len(data), budget[0], 1000)
        budget[0] -= n
        return real(fd, bytes(data[:n]), pos)

    monkeypatch.setattr(os, "pwrite", filling_pwrite)
    with pytest.raises(OSError) as info:
        apply(op, pp, tmp_path / "out.img")
    assert info.value.errno == errno.ENOSPC
    assert _leftovers(tmp_path) == []


# --- provenance: the new image's seal leaves from the old image's ----------------------


def _blocky_pair(seed: int, nblocks: int = 96, tail: int = 777) -> tuple[bytes, bytes]:
    """An old image of random and zero blocks; the new one moves, edits and zeroes some."""
    import random

    rnd = random.Random(seed)
    blocks = [bytes(4096) if rnd.random() < 0.2 else rnd.randbytes(4096) for _ in range(nblocks)]
    old = b"".join(blocks)
    new = bytearray(old)
    for _ in range(6):  # small edits inside blocks
        p = rnd.randrange(len(new) - 50)
        new[p : p + 50] = rnd.randbytes(50)
    new[4096 * 3 : 4096 * 5] = bytes(8192)  # two zero blocks made by a ZERO op
    new[4096 * 40 : 4096 * 40] = rnd.randbytes(4096 * 2)  # an insertion: the rest moves
    new[4096 * 60 + 10 : 4096 * 60 + 10] = b"shift"  # and an unaligned shift after it
    return old, bytes(new) + rnd.randbytes(tail)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("segment_size", [3 * 4096, 10_000, 64 << 20])
@pytest.mark.parametrize("verify_new", [False, True])
def test_provenance_leaves_equal_a_fresh_seal(
    tmp_path: Path, seed: int, segment_size: int, verify_new: bool
) -> None:
    from bsipatch.delta.apply import Provenance
    from bsipatch.seal.tree import check_leaves, image_leaves, seal_image

    old, new = _blocky_pair(seed)
    op, pp, out = tmp_path / "old.img", tmp_path / "p", tmp_path / "out.img"
    op.write_bytes(old)
    diff(old, new, pp, segment_size=segment_size)
    salt = bytes(range(32))
    prov = Provenance(image_leaves(op, salt), salt)
    apply(op, pp, out, verify_old=False, verify_new=verify_new, provenance=prov)
    assert out.read_bytes() == new
    seal = seal_image(new, salt=salt)
    check_leaves(prov.leaves, seal)
    assert (prov.leaves == image_leaves(new, salt)).all()
    nblocks = -(-len(new) // 4096)
    assert prov.copied_blocks + prov.zero_blocks + prov.hashed_blocks == nblocks
    assert prov.copied_blocks + prov.zero_blocks > nblocks // 4  # these were not hashed
    if not verify_new and prov.copied_blocks:
        assert prov.copy_method in ("reflink", "direct", "copy_file_range")


def test_provenance_from_a_buffer_copies_with_pwrite(tmp_path: Path) -> None:
    from bsipatch.delta.apply import Provenance
    from bsipatch.seal.tree import image_leaves

    old, new = _blocky_pair(4)
    pp, out = tmp_path / "p", tmp_path / "out.img"
    diff(old, new, pp)
    prov = Provenance(image_leaves(old, b"s"), b"s")
    apply(old, pp, out, verify_old=False, verify_new=False, provenance=prov)
    assert out.read_bytes() == new
    assert prov.copy_method == "pwrite"
    assert (prov.leaves == image_leaves(new, b"s")).all()


def test_provenance_copy_falls_back_when_the_kernel_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import bsipatch.delta.apply as apply_mod
    from bsipatch.delta.apply import Provenance
    from bsipatch.seal.tree import image_leaves

    def refuse(*_a: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(apply_mod.os, "copy_file_range", refuse)
    old, new = _blocky_pair(5)
    op, pp, out = tmp_path / "old.img", tmp_path / "p", tmp_path / "out.img"
    op.write_bytes(old)
    diff(old, new, pp)
    prov = Provenance(image_leaves(op, b""), b"", methods=("reflink", "copy_file_range"))
    apply(op, pp, out, verify_old=False, verify_new=False, provenance=prov)
    assert out.read_bytes() == new
    assert "pwrite" in prov.copy_method


def test_provenance_does_not_hide_a_bad_patch(files, tmp_path: Path) -> None:
    from bsipatch.delta.apply import Provenance
    from bsipatch.seal.tree import image_leaves

    op, _np, pp, _new = files
    data = bytearray(pp.read_bytes())
    data[300] ^= 1  # inside the first segment: its digest no longer matches
    bad = tmp_path / "bad.bsipatch"
    bad.write_bytes(bytes(data))
    prov = Provenance(image_leaves(op, b""), b"")
    with pytest.raises(CorruptPatch):
        apply(op, bad, tmp_path / "o.img", verify_old=False, verify_new=False, provenance=prov)
    assert not (tmp_path / "o.img").exists()


def test_provenance_needs_a_path_output_and_matching_old_leaves(files, tmp_path: Path) -> None:
    from bsipatch.delta.apply import Provenance
    from bsipatch.seal.tree import image_leaves

    op, _np, pp, _new = files
    prov = Provenance(image_leaves(op, b""), b"")
    with pytest.raises(ValueError):
        apply(op, pp, io.BytesIO(), provenance=prov)
    with pytest.raises(ValueError):
        apply(op, pp, tmp_path / "o.img", resume=True, provenance=prov)
    short = Provenance(image_leaves(op, b"")[:-1], b"")
    with pytest.raises(ValueError, match="old_leaves"):
        apply(op, pp, tmp_path / "o.img", verify_new=False, provenance=short)


def test_verify_old_false_skips_only_the_digest(files, tmp_path: Path) -> None:
    op, _np, pp, new = files
    wrong = tmp_path / "wrong.img"
    data = bytearray(op.read_bytes())
    data[150_000] ^= 0xFF  # same size, one byte differs (a block the patch copies)
    wrong.write_bytes(bytes(data))
    with pytest.raises(WrongBaseImage):
        apply(wrong, pp, tmp_path / "a.img")
    # the caller vouches for the old image: the patch's own digests still catch it
    # (as a bad segment: nothing says the old image is to blame)...
    with pytest.raises((CorruptPatch, OutputMismatch)):
        apply(wrong, pp, tmp_path / "b.img", verify_old=False)
    # ...unless those are off too, when the caller must check the result (a seal)
    apply(wrong, pp, tmp_path / "c.img", verify_old=False, verify_new=False)
    assert (tmp_path / "c.img").read_bytes() != new
    with pytest.raises(WrongBaseImage):
        apply(op.read_bytes()[:-1], pp, tmp_path / "d.img", verify_old=False)


@pytest.mark.parametrize(
    "methods", [(), ("direct",), ("copy_file_range",), ("reflink",), ("reflink", "direct")]
)
def test_every_copy_method_writes_the_same_image(tmp_path: Path, methods: tuple) -> None:
    from bsipatch.delta.apply import Provenance
    from bsipatch.seal.tree import image_leaves

    old, new = _blocky_pair(6, nblocks=300)
    op, pp, out = tmp_path / "old.img", tmp_path / "p", tmp_path / "out.img"
    op.write_bytes(old)
    diff(old, new, pp)
    prov = Provenance(image_leaves(op, b"x"), b"x", methods=methods)
    apply(op, pp, out, verify_old=False, verify_new=False, provenance=prov)
    assert out.read_bytes() == new
    assert (prov.leaves == image_leaves(new, b"x")).all()
    used = set(prov.copy_method.split("+"))
    assert used <= {*methods, "pwrite"}  # a refused method falls through to the next


def test_provenance_of_a_bsdiff40_patch_hashes_the_output(tmp_path: Path) -> None:
    from bsipatch.delta.apply import Provenance
    from bsipatch.seal.tree import image_leaves

    old, new = _blocky_pair(7, nblocks=20)
    pp, out = tmp_path / "p.bsdiff", tmp_path / "out.img"
    diff(old, new, pp, format="bsdiff40")
    prov = Provenance(image_leaves(old, b"s"), b"s")
    apply(old, pp, out, verify_old=False, verify_new=False, provenance=prov)
    assert out.read_bytes() == new
    assert (prov.leaves == image_leaves(new, b"s")).all()
    assert prov.hashed_blocks == len(prov.leaves) and prov.copied_blocks == 0
