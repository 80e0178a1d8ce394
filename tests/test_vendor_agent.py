"""N->1 on the device: a matrix release with --from-previous, installed by the real agent.

A device on (a) downloads the (a) -> (c) patch (smaller), a device on the base images
the base -> (c) patch; each device gets only its own variant's patches, every image
it ends on is the vendor's (c) image byte for byte, and the install result reports the
saving.
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from vendorhelp import COMPONENTS, NOW, images, init_repo, keyset, matrix

from bsipatch.agent.agent import Agent
from bsipatch.device.preboot import Preboot
from bsipatch.trust.manifest import ReleaseManifest
from bsipatch.trust.publish import load_catalog
from bsipatch.trust.repository import Repository
from bsipatch.trust.verify import parse_envelope
from bsipatch.vendor.build import build_matrix
from bsipatch.vendor.matrix import load_matrix

LATER = NOW + timedelta(hours=2)


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    root = tmp_path_factory.mktemp("nto1")
    ks = keyset()
    imgs = images(root / "img", 2, size=512 * 1024)
    repo = init_repo(root / "repo", ks)
    for letter, prev, when in (("a", "", NOW), ("c", "a", NOW + timedelta(minutes=5))):
        m = load_matrix(matrix(root / f"{letter}.json", imgs, 2, letter, prev))
        build_matrix(
            repo, m, keys=ks, published=when, expires=NOW + timedelta(days=90),
            catalog_expires=NOW + timedelta(days=30), from_previous=1, cluster="none",
        )  # fmt: skip
        shutil.copytree(repo, root / f"snap-{letter}")
    return {"root": root, "imgs": imgs, "root_json": (repo / "root.json").read_bytes()}


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
    agent = Agent(
        device, vendor["root"] / f"snap-{snap}", now=LATER, trusted_root=vendor["root_json"]
    )
    return agent.run()


def _on(device, vendor, v: int, letter: str) -> None:
    for c in COMPONENTS:
        if COMPONENTS[c] == "relaunch":
            with device.open_component(c) as f:
                assert f.read() == vendor["imgs"][(v, c, letter)].read_bytes(), (v, c, letter)


def _manifest(repo, release_id):
    data = repo.read(load_catalog(repo).get(release_id).manifest_path)
    return ReleaseManifest.from_dict(parse_envelope(data, max_size=1 << 22, what="m").signed)


def test_signed_manifest_lists_every_patch_with_its_source_seal(vendor):
    repo = Repository(vendor["root"] / "snap-c")
    m, a = _manifest(repo, "26.1 (c)"), _manifest(repo, "26.1 (a)")
    assert m.builds == ("23B80", "23B81")
    assert m.supplemental_builds == {"23B81": "23B81c"} and m.supplemental_build == "23B80c"
    assert len(m.components) == 4
    for c in m.components:
        (src,) = c.sources
        assert src.release_id == "26.1 (a)"
        earlier = a.for_build(c.build).component(c.name)
        assert src.base == earlier.target  # the source is what (a) installed, by seal
        assert c.base == earlier.base  # same base seal (lineage salt) as (a)
        assert c.target.salt == c.base.salt == src.base.salt
        assert src.patch.size < c.patch.size
        assert src.patch.path == f"releases/26.1-c/{c.build}/{c.name}.from-26.1-a.bsipatch"


def test_device_on_a_downloads_the_smaller_a_to_c_patches(tmp_path, vendor):
    dev = _device(tmp_path, vendor, 1)
    first = _run(dev, vendor, "a")
    assert first["installed"]["release"] == "26.1 (a)"
    _on(dev, vendor, 1, "a")
    report = _run(dev, vendor, "c")
    inst = report["installed"]
    assert inst["release"] == "26.1 (c)"
    _on(dev, vendor, 1, "c")
    src = inst["patch_sources"]
    assert {c: s["source"] for c, s in src.items()} == {c: "26.1 (a)" for c in COMPONENTS}
    chosen = sum(s["patch_bytes"] for s in src.values())
    base = sum(s["base_patch_bytes"] for s in src.values())
    assert inst["downloaded_patch_bytes"] == chosen < base
    assert inst["saved_bytes"] == base - chosen > 0
    # the patches were this variant's
    assert all(v["seal_check"] for v in inst["verification"].values())


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
