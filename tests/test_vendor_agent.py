"""N->1 on the device: a matrix release with --from-previous, installed by the real agent.

A device on (a) downloads the (a) -> (c) patches (smaller), a device on the base images
the base -> (c) patches; each device gets its own variant's patches, every image it
ends on is the vendor's (c) image byte for byte, and the install result reports the
saving.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import timedelta

import pytest
from vendorhelp import COMPONENTS, NOW, images, init_repo, keyset, matrix

from bsipatch.agent.agent import Agent
from bsipatch.device.preboot import Preboot
from bsipatch.errors import FormatError
from bsipatch.trust.publish import load_catalog
from bsipatch.trust.releases import Release
from bsipatch.vendor.build import build_matrix
from bsipatch.vendor.matrix import load_matrix

LATER = NOW + timedelta(hours=1)


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    root = tmp_path_factory.mktemp("nto1")
    ks = keyset(root / "keys")
    imgs = images(root / "img", 2, size=512 * 1024)
    repo = init_repo(root / "repo", ks)
    for letter, prev in (("a", ""), ("c", "a")):
        m = load_matrix(matrix(root / f"{letter}.json", imgs, 2, letter, prev))
        build_matrix(repo, m, keys=ks, now=NOW, from_previous=1, cluster="none")
        shutil.copytree(repo, root / f"snap-{letter}")
    root_json = (repo / "metadata" / "1.root.json").read_bytes()
    return {"root": root, "imgs": imgs, "root_json": root_json}


def _device(tmp_path, vendor, v: int) -> Preboot:
    imgs = vendor["imgs"]
    return Preboot.create(
        tmp_path / f"preboot{v}",
        os_version="26.1",
        build=f"23B8{v}",
        images={c: imgs[(v, c, "base")] for c in COMPONENTS},
        activation=dict(COMPONENTS),
    )


def _run(device, vendor, snap):
    repo = vendor["root"] / f"snap-{snap}"
    return Agent(device, repo, now=LATER, trusted_root=vendor["root_json"]).run()


def _on(device, vendor, v: int, letter: str) -> None:
    for c in COMPONENTS:
        if COMPONENTS[c] == "relaunch":
            with device.open_component(c) as f:
                assert f.read() == vendor["imgs"][(v, c, letter)].read_bytes(), (v, c, letter)


def test_signed_metadata_lists_every_patch_with_its_source_seal(vendor):
    catalog = load_catalog(vendor["root"] / "snap-c")
    c, a = catalog.get("26.1 (c)"), catalog.get("26.1 (a)")
    assert c.builds == ("23B80", "23B81") and not c.components
    assert {b: v.supplemental_build for b, v in c.variants.items()} == {
        "23B80": "23B80c",
        "23B81": "23B81c",
    }
    for build in c.builds:
        for name, spec in c.for_build(build).components.items():
            earlier = a.for_build(build).components[name]
            patches = [catalog.patches[p] for p in spec.patches]
            assert {p.from_seal.root_hash for p in patches} == {
                spec.base.root_hash,
                earlier.target.root_hash,  # the source is what (a) installed, by seal root
            }
            assert spec.base == earlier.base  # same base seal (lineage salt) as (a)
            assert all(p.to_seal == spec.target for p in patches)
            by_src = {p.from_seal: p.length for p in patches}
            assert by_src[earlier.target] < by_src[spec.base]


def test_matrix_metadata_carries_each_source_and_target_image_sha256(vendor):
    """Known answer, read straight from the served targets.json: every patch of (c) and
    every component record says the SHA-256 and size hashlib gives for the image it
    starts from (the base, or what (a) installed) and for the (c) image."""
    repo = vendor["root"] / "snap-c"
    newest = max((repo / "metadata").glob("*.targets.json"), key=lambda p: int(p.name[:-13]))
    targets = json.loads(newest.read_bytes())["signed"]["targets"]
    rel = targets["releases/26.1-c.json"]["custom"]["bsipatch"]

    def known(v: int, c: str, tag: str) -> dict:
        data = vendor["imgs"][(v, c, tag)].read_bytes()
        return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def digest(ref: dict) -> dict:
        return {"sha256": ref["sha256"], "size": ref["size"]}

    sources = []
    for build, variant in rel["variants"].items():
        v = int(build[-1])
        for c, comp in variant["components"].items():
            assert digest(comp["base"]) == known(v, c, "base")
            assert digest(comp["target"]) == known(v, c, "c")
            for path in comp["patches"]:
                patch = targets[path]["custom"]["bsipatch"]
                assert digest(patch["to"]) == known(v, c, "c")
                tag = "base" if patch["from"]["root_hash"] == comp["base"]["root_hash"] else "a"
                assert digest(patch["from"]) == known(v, c, tag)
                sources.append(tag)
    assert sorted(sources) == ["a"] * 4 + ["base"] * 4  # 2 variants x 2 components, N->1


def test_release_variants_round_trip_and_are_checked(vendor):
    c = load_catalog(vendor["root"] / "snap-c").get("26.1 (c)")
    assert Release.from_dict(c.to_dict()) == c
    d = c.to_dict()
    del d["variants"]["23B81"]
    with pytest.raises(FormatError, match="one variant per build"):
        Release.from_dict(d)


def test_device_on_a_downloads_the_smaller_a_to_c_patches(tmp_path, vendor):
    dev = _device(tmp_path, vendor, 1)
    assert _run(dev, vendor, "a")["installed"]["release"] == "26.1 (a)"
    _on(dev, vendor, 1, "a")
    inst = _run(dev, vendor, "c")["installed"]
    assert inst["release"] == "26.1 (c)"
    _on(dev, vendor, 1, "c")
    src = inst["patch_sources"]
    assert {s["source"] for s in src.values()} == {"active image"}
    chosen = sum(s["patch_bytes"] for s in src.values())
    base = sum(s["base_patch_bytes"] for s in src.values())
    assert inst["downloaded_patch_bytes"] == chosen < base
    assert inst["saved_bytes"] == base - chosen > 0


def test_device_on_base_falls_back_to_the_base_patch(tmp_path, vendor):
    dev = _device(tmp_path, vendor, 0)
    inst = _run(dev, vendor, "c")["installed"]
    assert inst["release"] == "26.1 (c)"
    _on(dev, vendor, 0, "c")
    assert {s["source"] for s in inst["patch_sources"].values()} == {"base"}
    assert inst["saved_bytes"] == 0
    assert inst["downloaded_patch_bytes"] == sum(
        s["base_patch_bytes"] for s in inst["patch_sources"].values()
    )
