"""The patch header's claims are bound before use, and partial files are never followed.

* a header claiming an absurd size (>= 2^63) is a typed error, not an OverflowError;
* a header claiming 16 GiB of output from a small patch is refused at once (no temp
  file sized), in ``bsipatch apply`` too, unless the caller passes the expected size;
* install checks the header against the signed target's size before sizing output;
* ``apply --resume`` refuses a partial path that is a symlink, not a regular file, or
  owned by someone else.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import crashhelper as ch
import pytest

from bsipatch.cli.main import main
from bsipatch.delta.apply import PARTIAL_SUFFIX, apply
from bsipatch.delta.diff import diff
from bsipatch.delta.patchformat import HEADER_SIZE, MAX_IMAGE_SIZE, Header
from bsipatch.device import install as inst
from bsipatch.errors import HeaderMismatch, ImplausiblePatch, UnsafeFile


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path, bytes]:
    old = bytearray(os.urandom(1 << 16))
    new = bytearray(old)
    new[5000:5100] = os.urandom(100)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    diff(tmp_path / "old", tmp_path / "new", tmp_path / "p.bsipatch", compact=False)
    return tmp_path / "old", tmp_path / "p.bsipatch", tmp_path / "out", bytes(new)


def _with_claim(patch: bytes, **changes: int) -> bytes:
    """The patch with its header's fields changed and its header digest recomputed
    (what an attacker who writes patches can do)."""
    if patch[8:10] == b"\x03\x00":  # compact framing: fields, then one digest over all
        return _with_compact_claim(patch, **changes)
    h = Header.unpack(patch[:HEADER_SIZE])
    fields = {
        "version": h.version,
        "segment_size": h.segment_size,
        "old_size": h.old_size,
        "old_sha256": h.old_sha256,
        "new_size": h.new_size,
        "new_sha256": h.new_sha256,
        "max_buffered": h.max_buffered,
        "max_payload": h.max_payload,
    }
    fields.update(changes)
    return Header(**fields).pack() + patch[HEADER_SIZE:]  # type: ignore[arg-type]


def _with_compact_claim(patch: bytes, **changes: int) -> bytes:
    import hashlib
    import io

    from bsipatch.delta import compact

    r = io.BytesIO(patch)
    r.read(10)
    fields, _ = compact.read_fields(r.read, patch[:10])
    head = compact.pack_header(fields._replace(**changes))
    body = patch[r.tell() : -32]
    return head + body + hashlib.sha256(head + body).digest()


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("size", [1 << 63, (1 << 64) - 1, MAX_IMAGE_SIZE + 1])
def test_absurd_claimed_size_is_a_typed_error(pair, capsys, size) -> None:
    old, patch, out, _ = pair
    bad = _with_claim(patch.read_bytes(), new_size=size)
    with pytest.raises(ImplausiblePatch, match=f"claims a {size}-byte new image"):
        apply(old, bad, out)
    patch.write_bytes(bad)
    assert main(["apply", str(old), str(patch), str(out)]) == ImplausiblePatch.exit_code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "OverflowError" not in err
    assert err.count("\n") == 1 and "claims a" in err
    assert not out.exists() and _leftovers(out.parent) == []


def test_sixteen_gib_claim_in_a_small_patch_is_refused_at_once(pair, capsys) -> None:
    old, patch, out, _ = pair
    bad = _with_claim(patch.read_bytes(), new_size=16 << 30)
    assert len(bad) < 10_000
    patch.write_bytes(bad)
    t0 = time.process_time()
    code = main(["apply", str(old), str(patch), str(out)])
    assert time.process_time() - t0 < 1.0  # was 41 s of CPU and a 16 GiB sparse file
    assert code == ImplausiblePatch.exit_code
    assert f"claims a {16 << 30}-byte output" in capsys.readouterr().err
    assert not out.exists() and _leftovers(out.parent) == []
    for src in (bad, io.BytesIO(bad)):  # bytes and a stream of unknown length
        with pytest.raises(ImplausiblePatch):
            apply(old, src, io.BytesIO())


def test_expected_size_must_match_the_header(pair, capsys) -> None:
    old, patch, out, new = pair
    with pytest.raises(HeaderMismatch, match=f"{len(new)}-byte output, expected 12345"):
        apply(old, patch, out, expected_size=12345)
    with pytest.raises(HeaderMismatch, match="SHA-256"):
        apply(old, patch, out, expected_size=len(new), expected_sha256=b"\x01" * 32)
    assert not out.exists()
    info = apply(old, patch, out, expected_size=len(new), expected_sha256=info_sha(new))
    assert out.read_bytes() == new and info.new_size == len(new)


def info_sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_genuine_large_ratio_patch_needs_the_expected_size(tmp_path: Path, capsys) -> None:
    old, new = os.urandom(4096), bytes(66 << 20)  # 66 MiB of zeros from a ~500-byte patch
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    diff(tmp_path / "old", tmp_path / "new", tmp_path / "p")
    argv = ["apply", str(tmp_path / "old"), str(tmp_path / "p"), str(tmp_path / "out")]
    assert main(argv) == ImplausiblePatch.exit_code
    assert "--expected-size" in capsys.readouterr().err
    assert main([*argv, "--expected-size", str(len(new))]) == 0
    assert (tmp_path / "out").read_bytes() == new
    with pytest.raises(SystemExit) as usage:
        main([*argv, "--expected-size", "-1"])
    assert usage.value.code == 2


# --- install binds the header to the signed target -----------------------------------------


def test_install_refuses_a_header_that_differs_from_the_manifest(tmp_path: Path) -> None:
    world = ch.make_world(tmp_path / "world")
    pb = ch.create_preboot(world, tmp_path / "pb")
    d = world["releases"]["26.1 (a)"]
    comp = d["components"][0]
    patch_path = Path(world["dir"]) / comp["patch"]["path"]
    data = patch_path.read_bytes()
    # the attacker's patch claims 16 GiB; the manifest (signed target) says otherwise
    bad = _with_claim(data, new_size=16 << 30)
    patch_path.write_bytes(bad)
    import hashlib

    comp["patch"] = {**comp["patch"], "sha256": hashlib.sha256(bad).hexdigest(), "size": len(bad)}
    before = pb.read_state()
    t0 = time.process_time()
    with pytest.raises(HeaderMismatch, match=f"expected {comp['target']['size']} bytes"):
        inst.install_release(pb, ch.load_manifest(d), inst.open_patch_in(world["dir"]))
    assert time.process_time() - t0 < 2.0
    assert pb.read_state() == before
    pb.recover()
    assert list((pb.path / "pending").iterdir()) == []


# --- partial files: O_NOFOLLOW, regular, ours -------------------------------------------------


def test_resume_does_not_follow_a_symlink_at_the_partial_path(pair, capsys) -> None:
    old, patch, out, _ = pair
    victim = out.parent / "victim"
    victim.write_bytes(b"precious")
    partial = out.parent / f".{out.name}{PARTIAL_SUFFIX}"
    partial.symlink_to(victim)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        apply(old, patch, out, resume=True)
    assert main(["apply", "--resume", str(old), str(patch), str(out)]) == UnsafeFile.exit_code
    assert "symbolic link" in capsys.readouterr().err
    assert victim.read_bytes() == b"precious"
    assert partial.is_symlink() and not out.exists()


def test_resume_refuses_a_partial_that_is_not_a_regular_file(pair) -> None:
    old, patch, out, _ = pair
    partial = out.parent / f".{out.name}{PARTIAL_SUFFIX}"
    os.mkfifo(partial)
    with pytest.raises(UnsafeFile, match="not a regular file"):
        apply(old, patch, out, resume=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_resume_refuses_a_partial_owned_by_another_user(pair) -> None:
    old, patch, out, new = pair
    partial = out.parent / f".{out.name}{PARTIAL_SUFFIX}"
    partial.write_bytes(new[:1000])
    os.chown(partial, 4321, 4321)
    with pytest.raises(UnsafeFile, match="owned by uid 4321"):
        apply(old, patch, out, resume=True)
    os.chown(partial, 0, 0)
    apply(old, patch, out, resume=True)
    assert out.read_bytes() == new
