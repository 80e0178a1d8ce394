"""``bsipatch demo`` end to end (small images): every promised outcome really happens."""

from __future__ import annotations

import pytest

from bsipatch.cli.demo_images import build_image
from bsipatch.cli.demo_run import run_demo
from bsipatch.cli.main import main as cli_main


def _check(summary: dict) -> None:
    o = summary["outcomes"]
    assert o["installed_a"] == "26.1 (a)"
    assert o["relaunch_old_view_kept"] is True
    assert o["relaunch_new_view"] is True
    assert o["pending_before_restart"] == ["libsystem"]
    assert o["pending_after_restart"] == []
    assert o["status"] == {
        "OSVersion": "26.1",
        "BuildVersion": "23B85",
        "SupplementalOSVersionExtra": "(a)",
        "SupplementalBuildVersion": "23B85a",
    }
    assert o["deferred"] == ["26.1 (b)"]
    assert o["tampered_refused"] is True
    assert o["after_tamper"] == "26.1 (a)"
    assert o["installed_b"] == "26.1 (b)"
    assert o["after_withdrawal"] == "26.1 (a)"
    assert o["after_uninstall"] is None
    assert o["base_restored"] is True
    costs = {c["step"]: c for c in summary["costs"]}
    install = costs["install (a)"]
    assert 0 < install["downloaded"] < install["full_images"] / 10
    assert costs["step back from withdrawn (b)"]["downloaded"] < 20_000


def test_demo_pure_python_images_keeps_dir(tmp_path, monkeypatch):
    # a fresh machine: no mke2fs (forced off) and no /usr/lib libraries to copy
    monkeypatch.setattr("bsipatch.cli.demo_images.LIB_DIRS", ())
    lines: list[str] = []
    summary = run_demo(tmp_path / "demo", lines.append, scale="small", use_mke2fs=False)
    _check(summary)
    assert summary["image_format"].startswith("tar")
    assert summary["dir"] == str(tmp_path / "demo")
    assert (tmp_path / "demo" / "device-preboot" / "state.json").exists()
    text = "\n".join(lines)
    for needle in ("== 1.", "downloaded", "CPU", "wrote", "Summary", "withdraw", "uninstall"):
        assert needle in text


def test_demo_ext4_images_in_temporary_dir(tmp_path):
    from conftest import require_tool

    require_tool("mke2fs")
    summary = run_demo(None, lambda _line: None, scale="small", use_mke2fs=True)
    _check(summary)
    assert summary["image_format"].startswith("ext4")
    assert summary["dir"] is None


def test_demo_refuses_non_empty_dir(tmp_path):
    (tmp_path / "x").write_text("keep me")
    from bsipatch.errors import StateError

    with pytest.raises(StateError, match="not empty"):
        run_demo(tmp_path, lambda _line: None, scale="small")
    assert (tmp_path / "x").read_text() == "keep me"


def test_built_in_image_builder_is_deterministic(tmp_path):
    files = {"A/lib.so": b"\x7fELF" + bytes(range(256)) * 40, "A/b.txt": b"hello"}
    build_image(files, tmp_path / "1.img", label="x", use_mke2fs=False)
    build_image(
        dict(reversed(list(files.items()))), tmp_path / "2.img", label="x", use_mke2fs=False
    )
    one = (tmp_path / "1.img").read_bytes()
    assert one == (tmp_path / "2.img").read_bytes()
    assert len(one) % 4096 == 0


def test_cli_demo_runs(tmp_path, capsys):
    assert cli_main(["demo", "--dir", str(tmp_path / "d"), "--scale", "small"]) == 0
    out = capsys.readouterr().out
    assert "26.1 (a)" in out and "Summary" in out
