"""The patch header is bound to the signed images before anything is sized or allocated.

The attacker here is not a key thief but a buggy or compromised build pipeline: it
publishes, with the genuine targets keys, a release whose patch target is correctly
signed (TUF length and SHA-256 match the file) but whose patch was made from or to
other images than the ones the metadata signs. The patch is a real, self-consistent
patch, so only the binding of its header to the signed images (size and SHA-256 of
the image it starts from and of the one it produces) stops it before the device
sizes an output. The agent talks to a real HTTP server on 127.0.0.1; an audit hook
records every file the process opens for writing, to show that no output or
temporary file was created. docs/security.md cites these tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from httpserver import serve
from tufworld import ACTIVATION, BUILD, NOW, SIZE, device, images, new_repo, publish

from bsipatch.agent.executor import Agent
from bsipatch.agent.status import device_report
from bsipatch.delta.diff import diff
from bsipatch.errors import FormatError, HeaderMismatch
from bsipatch.seal.tree import seal_image
from bsipatch.trust.manifest import Cve, SealRef
from bsipatch.trust.publish import PatchInput, add_release
from bsipatch.trust.releases import CUSTOM_KEY, ComponentSpec
from bsipatch.trust.tufrepo import TufRepository, publish_targets

LATER = NOW + timedelta(minutes=30)
SALT = bytes(range(32))

# --- every file this process opens for writing, while recording -------------------------

_RECORDING = threading.Event()
_WRITES: list[str] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not _RECORDING.is_set():
        return
    path, mode, flags = args
    if isinstance(path, int):
        return
    writing = bool((flags or 0) & _WRITE_FLAGS) or (
        isinstance(mode, str) and any(c in mode for c in "wax+")
    )
    if writing:
        _WRITES.append(os.fsdecode(path))


sys.addaudithook(_audit)  # cannot be removed; records only inside `recording()`


@contextmanager
def recording() -> Iterator[list[str]]:
    _WRITES.clear()
    _RECORDING.set()
    try:
        yield _WRITES
    finally:
        _RECORDING.clear()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a pipeline that publishes its own (wrong) patch with the genuine keys ---------------


def _ref(path: Path) -> SealRef:
    return SealRef.from_seal(seal_image(path, salt=SALT), sha(path.read_bytes()))


def _make_patch(w: dict[str, Any], patch_old: bytes, patch_new: bytes) -> Path:
    tmp = w["tmp"]
    old_p, new_p, out = tmp / "pipe-old.img", tmp / "pipe-new.img", tmp / "pipe.bsipatch"
    old_p.write_bytes(patch_old)
    new_p.write_bytes(patch_new)
    diff(old_p, new_p, out)
    return out


def _release_args(w: dict[str, Any], patch: Path) -> dict[str, Any]:
    """``add_release`` arguments for ``26.1 (a)``: webkit base -> (a), with ``patch``."""
    base, target = _ref(w["imgs"]["base"]["webkit"]), _ref(w["imgs"]["a"]["webkit"])
    spec = ComponentSpec("relaunch", base, target, (), (Cve("CVE-2026-41001", "fix"),))
    return dict(
        release_id="26.1 (a)", os_version="26.1", builds=(BUILD,),
        supplemental_build=f"{BUILD}a", components={"webkit": spec},
        patches=[PatchInput("webkit", patch, base, target)], keys=w["keys"], now=NOW,
    )  # fmt: skip


def _publish_webkit_patch(w: dict[str, Any], patch_old: bytes, patch_new: bytes) -> None:
    """Publish ``26.1 (a)`` signing webkit base -> (a), then, as a pipeline that skips
    the publisher's own header check would, re-sign the webkit patch target (genuine
    targets keys, TUF length and SHA-256 of the new file) over a patch from
    ``patch_old`` to ``patch_new``."""
    genuine = _make_patch(w, w["base"], w["new"])
    add_release(w["repo"], **_release_args(w, genuine))
    wrong = _make_patch(w, patch_old, patch_new)
    r = TufRepository(w["repo"])

    def swap(targets: Any) -> None:
        for path, t in list(targets.targets.items()):
            if path.startswith("patches/webkit/"):
                targets.targets[path] = r.add_target_file(path, wrong, t.custom)

    with r.lock():
        publish_targets(r, w["keys"], swap, now=NOW)


@pytest.fixture
def w(tmp_path: Path) -> dict[str, Any]:
    imgs = images(tmp_path)
    repo, keys = new_repo(tmp_path)
    pb = device(tmp_path, imgs)
    root = (repo / "metadata" / "1.root.json").read_bytes()
    base = imgs["base"]["webkit"].read_bytes()
    new = imgs["a"]["webkit"].read_bytes()
    return {"tmp": tmp_path, "imgs": imgs, "repo": repo, "keys": keys, "pb": pb,
            "root": root, "base": base, "new": new}  # fmt: skip


def _agent(w: dict[str, Any], url: str) -> Agent:
    return Agent(w["pb"], url, now=LATER, trusted_root=w["root"], timeout=5, retries=1)


def _outputs(writes: list[str]) -> list[str]:
    """Written files that are a component image or its temporary file."""
    return [p for p in writes if any(f"{n}.img" in Path(p).name for n in ACTIVATION)]


def _refused(w: dict[str, Any], match: str) -> HeaderMismatch:
    pb = w["pb"]
    before = pb.read_state()
    with (
        serve(w["repo"]) as srv,
        recording() as writes,
        pytest.raises(HeaderMismatch, match=match) as info,
    ):
        _agent(w, srv.url).run()
    assert _outputs(writes) == []  # no output or temporary file was ever created
    assert pb.read_state() == before and pb.status()["active_release"] is None
    with pb.open_component("webkit") as f:
        assert f.read() == w["base"]  # still on its verified base image
    assert not [p for p in pb.path.rglob("*.img") if "base" not in p.relative_to(pb.path).parts]
    last = device_report(pb)["last_check"]
    assert last["ok"] is False and str(info.value) in last["error"]
    return info.value


# --- the three wrong headers -------------------------------------------------------------


def test_header_declaring_another_new_image_of_the_same_size_is_refused(w):
    other = bytearray(w["new"])
    other[-1] ^= 0xFF  # same size, another digest
    _publish_webkit_patch(w, w["base"], bytes(other))
    _refused(w, f"output SHA-256 {sha(bytes(other))}, expected {sha(w['new'])}")


def test_header_declaring_another_old_image_is_refused(w):
    other = bytearray(w["base"])
    other[0] ^= 0xFF  # same size, another digest
    _publish_webkit_patch(w, bytes(other), w["new"])
    _refused(w, f"old image SHA-256 {sha(bytes(other))}, expected {sha(w['base'])}")


def test_header_declaring_an_old_image_of_another_size_is_refused(w):
    other = w["base"] + bytes(4096)
    _publish_webkit_patch(w, other, w["new"])
    _refused(w, f"declares a {len(other)}-byte old image, expected {SIZE} bytes")


def test_genuine_pipeline_patch_installs_and_the_recorder_sees_its_output(w):
    """Control: the same pipeline with the right images installs, and the recorder that
    found nothing above sees the staged output being written."""
    _publish_webkit_patch(w, w["base"], w["new"])
    with serve(w["repo"]) as srv, recording() as writes:
        report = _agent(w, srv.url).run()
    assert report["installed"]["release"] == "26.1 (a)"
    assert any(Path(p).name.startswith(".webkit.img.") for p in _outputs(writes))
    with w["pb"].open_component("webkit") as f:
        assert f.read() == w["new"]
    assert device_report(w["pb"])["last_check"]["ok"] is True


def test_publisher_refuses_a_patch_whose_header_is_not_the_signed_images(w):
    """The same wrong patches given to ``add_release`` are refused before anything is
    written (the repository's files are unchanged)."""
    other = bytearray(w["new"])
    other[-1] ^= 0xFF
    cases = [  # (old, new, which image the header gets wrong, its wrong bytes)
        (w["base"], bytes(other), "new", bytes(other)),
        (bytes(reversed(w["base"])), w["new"], "old", bytes(reversed(w["base"]))),
        (w["base"] + bytes(4096), w["new"], "old", w["base"] + bytes(4096)),
    ]
    before = sorted(p.relative_to(w["repo"]) for p in w["repo"].rglob("*"))
    for old, new, which, wrong in cases:
        patch = _make_patch(w, old, new)
        with pytest.raises(HeaderMismatch, match=f"-byte {which} image with SHA-256 {sha(wrong)}"):
            add_release(w["repo"], **_release_args(w, patch))
    assert sorted(p.relative_to(w["repo"]) for p in w["repo"].rglob("*")) == before


# --- metadata without the digests is refused, not installed unchecked ---------------------


def test_signed_patch_target_lacking_image_digests_is_refused(w):
    publish(w["repo"], w["keys"], w["imgs"], "a", "a")
    r = TufRepository(w["repo"])

    def strip(targets: Any) -> None:
        for t in targets.targets.values():
            fields = (t.custom or {}).get(CUSTOM_KEY) or {}
            if fields.get("type") == "patch":
                del fields["from"]["sha256"]

    with r.lock():  # signed with the genuine targets keys: only the digests are missing
        publish_targets(r, w["keys"], strip, now=NOW)
    pb = w["pb"]
    before = pb.read_state()
    with serve(w["repo"]) as srv, pytest.raises(FormatError, match=r"lacks field.*sha256") as info:
        _agent(w, srv.url).run()
    assert pb.read_state() == before and pb.status()["active_release"] is None
    last = device_report(pb)["last_check"]
    assert last["ok"] is False and str(info.value) in last["error"]


# --- known answer: the published digests are those of the images --------------------------


def _targets_json(repo: Path) -> dict[str, Any]:
    versions = sorted(
        (int(p.name.split(".")[0]), p) for p in (repo / "metadata").glob("*.targets.json")
    )
    return json.loads(versions[-1][1].read_bytes())["signed"]["targets"]


def test_published_metadata_carries_the_images_sha256_and_size(w):
    """Read straight from the served targets.json (no bsipatch parser): every image record
    of (a) and (b) has the SHA-256 and size hashlib gives for the image file."""
    publish(w["repo"], w["keys"], w["imgs"], "a", "a")
    publish(w["repo"], w["keys"], w["imgs"], "b", "b", names=("webkit",), minutes=1)
    known = {}
    for tag, comps in w["imgs"].items():
        for name, path in comps.items():
            data = path.read_bytes()
            known[(name, tag)] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    targets = _targets_json(w["repo"])

    def check(ref: dict[str, Any], name: str, tag: str) -> None:
        assert {"sha256": ref["sha256"], "size": ref["size"]} == known[(name, tag)], (name, tag)

    seen = 0
    for letter, tag in (("a", "a"), ("b", "b")):
        rel = targets[f"releases/26.1-{letter}.json"]["custom"][CUSTOM_KEY]
        for name, comp in rel["components"].items():
            target_tag = "a" if (letter, name) == ("b", "libsys") else tag  # carried forward
            check(comp["base"], name, "base")
            check(comp["target"], name, target_tag)
            for p in comp["patches"]:
                patch = targets[p]["custom"][CUSTOM_KEY]
                check(patch["from"], name, "base")
                check(patch["to"], name, target_tag)
                seen += 1
    assert seen == 4  # (a): 2 patches; (b): webkit's new one and libsys's carried forward
