"""Fixtures for the device tests, and the child process the crash tests kill.

As a module: :func:`make_world` builds small base images, two releases (patches made
with :func:`bsipatch.delta.diff.diff`, seals with :func:`bsipatch.seal.tree.seal_image`) and writes
a JSON description of them; :func:`load_manifest` turns that description back into a
:class:`bsipatch.trust.manifest.ReleaseManifest`.

As a script (``python tests/crashhelper.py OP PREBOOT WORLD [RELEASE]``) it runs one
operation (install, rollback, uninstall, boot, recover, gc) on a preboot directory; the
crash test sets ``BSIPATCH_CRASH_AT`` so that the process kills itself with SIGKILL at a
named point, then checks the state with a fresh process.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bsipatch.device import install as inst  # noqa: E402
from bsipatch.device.preboot import Preboot  # noqa: E402

BLOCK = 4096
SALT = bytes(range(32))

# name -> (activation, size in bytes)
COMPONENTS = {
    "webkit": ("relaunch", 160 * 1024),
    "libsys": ("reboot", 64 * 1024 + 100),
    "safari": ("relaunch", 96 * 1024),
}

# release -> {component: "new" (a fresh change) or "keep" (the previous release's image)}.
# Releases are cumulative and every patch is made against the base image.
RELEASES = {
    "26.1 (a)": {"webkit": "new", "libsys": "new"},
    "26.1 (b)": {"webkit": "new", "libsys": "keep", "safari": "new"},
    "26.1 (c)": {"webkit": "new", "libsys": "keep", "safari": "keep"},
}


def _image(rng: random.Random, size: int) -> bytearray:
    return bytearray(rng.randbytes(size))


def _mutate(data: bytearray, rng: random.Random, blocks: int = 3) -> bytearray:
    out = bytearray(data)
    for _ in range(blocks):
        pos = rng.randrange(0, len(out) - 64)
        out[pos : pos + 64] = rng.randbytes(64)
    return out


def seal_ref(path: Path) -> dict[str, Any]:
    """Manifest image reference of an image (fixed salt, so fixtures are reproducible)."""
    from bsipatch.seal.tree import seal_image

    s = seal_image(path, salt=SALT)
    return {
        "root_hash": s.root_hash.hex(),
        "salt": s.salt.hex(),
        "size": s.data_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def make_world(directory: Path, seed: int = 1) -> dict[str, Any]:
    """Build base images, two releases (patches against the base) and their description.

    Returns (and writes to ``directory/world.json``)::

        {"os_version", "build", "images": {name: path}, "activation": {name: act},
         "releases": {release_id: manifest dict}, "sha256": {release_id|"base": {name: hex}}}
    """
    from bsipatch.delta.diff import diff

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    base: dict[str, bytearray] = {}
    images = {}
    sha: dict[str, dict[str, str]] = {"base": {}}
    for name, (_act, size) in COMPONENTS.items():
        base[name] = _image(rng, size)
        p = directory / "base" / f"{name}.img"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(base[name])
        images[name] = str(p)
        sha["base"][name] = hashlib.sha256(base[name]).hexdigest()
    releases = {}
    made: dict[str, bytearray] = {}
    for seq, (rid, changed) in enumerate(RELEASES.items(), start=1):
        slug = rid.replace(" (", "-").rstrip(")")
        rdir = directory / "releases" / slug
        rdir.mkdir(parents=True, exist_ok=True)
        sha[rid] = dict(sha["base"])
        comps = []
        for name in changed:
            new = made[name] if changed[name] == "keep" else _mutate(base[name], rng)
            made[name] = new
            newp = rdir / f"{name}.new.img"
            newp.write_bytes(new)
            patch = rdir / f"{name}.bsipatch"
            diff(images[name], str(newp), str(patch))
            pbytes = patch.read_bytes()
            sha[rid][name] = hashlib.sha256(new).hexdigest()
            comps.append(
                {
                    "name": name,
                    "activation": COMPONENTS[name][0],
                    "base": seal_ref(Path(images[name])),
                    "target": seal_ref(newp),
                    "patch": {
                        "path": f"releases/{slug}/{name}.bsipatch",
                        "sha256": hashlib.sha256(pbytes).hexdigest(),
                        "size": len(pbytes),
                    },
                    "cves": [
                        {"id": f"CVE-2026-{1000 + seq * 10 + len(comps)}", "description": "x"}
                    ],
                }
            )
        releases[rid] = _manifest_dict(
            {
                "release_id": rid,
                "os_version": "26.1",
                "builds": ["23B85"],
                "supplemental_build": f"23B85{rid[-2]}",
                "published": f"2026-11-{10 + seq:02d}T00:00:00Z",
                "sequence": seq,
                "expires": "2027-11-01T00:00:00Z",
                "components": comps,
            }
        )
    # the same change as 26.1 (a), published for the OS update the tests install (26.2)
    nxt = dict(releases["26.1 (a)"])
    nxt.update(release_id="26.2 (a)", os_version="26.2", builds=["23C10"])
    nxt["supplemental_build"] = "23C10a"
    releases["26.2 (a)"] = load_manifest(nxt).to_dict()
    sha["26.2 (a)"] = sha["26.1 (a)"]
    world = {
        "dir": str(directory),
        "os_version": "26.1",
        "build": "23B85",
        "images": images,
        "activation": {n: a for n, (a, _s) in COMPONENTS.items()},
        "releases": releases,
        "sha256": sha,
    }
    (directory / "world.json").write_text(json.dumps(world, indent=1))
    return world


def load_manifest(d: dict[str, Any]) -> Any:
    """The ReleaseManifest of a :func:`make_world` release description (strict parse)."""
    from bsipatch.trust.manifest import ReleaseManifest

    return ReleaseManifest.from_dict(d)


def _manifest_dict(d: dict[str, Any]) -> dict[str, Any]:
    """Build the manifest from plain fields and return its canonical ``signed`` dict."""
    from bsipatch.trust import manifest as m

    comps = tuple(
        m.ComponentRelease(
            name=c["name"],
            activation=c["activation"],
            base=m.SealRef(**c["base"]),
            target=m.SealRef(**c["target"]),
            patch=m.PatchRef(**c["patch"]),
            cves=tuple(m.Cve(**v) for v in c["cves"]),
        )
        for c in d["components"]
    )
    return m.ReleaseManifest(
        release_id=d["release_id"],
        os_version=d["os_version"],
        builds=tuple(d["builds"]),
        supplemental_build=d["supplemental_build"],
        published=d["published"],
        sequence=d["sequence"],
        expires=d["expires"],
        components=comps,
    ).to_dict()


def create_preboot(world: dict[str, Any], path: Path) -> Preboot:
    """A fresh preboot directory with the world's base images."""
    return Preboot.create(
        path,
        os_version=world["os_version"],
        build=world["build"],
        images=world["images"],
        activation=world["activation"],
    )


def install(world: dict[str, Any], pb: Preboot, release_id: str) -> dict[str, Any]:
    """Install one of the world's releases with patches from its directory."""
    manifest = load_manifest(world["releases"][release_id])
    return inst.install_release(pb, manifest, inst.open_patch_in(world["dir"]))


def images_now(pb: Preboot) -> dict[str, str]:
    """SHA-256 of the image a new open of each component gets now."""
    out = {}
    for name in pb.components():
        out[name] = hashlib.sha256(pb.component_path(name).read_bytes()).hexdigest()
    return out


def agent_state(pb: Preboot) -> None:
    """The agent's own state writes on a device's first run (settings, then its state)."""
    from bsipatch.agent.agent import AgentState, AgentStore, Settings

    store = AgentStore(pb.path)
    store.save_settings(Settings(auto_install=False))
    store.save_state(AgentState(sequence=1, last_check="2026-11-28T00:00:00Z", removed=["x"]))


def main(argv: list[str]) -> int:
    op, path, world_path = argv[0], Path(argv[1]), Path(argv[2])
    world = json.loads(world_path.read_text())
    pb = Preboot(path)
    if op == "agent-run":  # world: {"repo": URL}; the device already trusts a root
        from bsipatch.agent.executor import Agent

        Agent(pb, world["repo"], timeout=5, retries=1).run()
    elif op == "install":
        install(world, pb, argv[3])
    elif op == "rollback":
        inst.rollback(pb)
    elif op == "uninstall":
        inst.uninstall(pb)
    elif op == "boot":
        inst.boot(pb)
    elif op == "gc":
        inst.gc(pb)
    elif op == "recover":
        pb.recover()
    elif op == "os_update":
        inst.os_update(
            pb,
            os_version="26.2",
            build="23C10",
            images=world["images"],
            activation=world["activation"],
        )
    elif op == "confirm":
        from bsipatch.device.health import confirm

        confirm(pb)
    elif op == "report_failed":
        from bsipatch.device.health import report

        report(pb, argv[3], ok=False)
    elif op == "agent_state":
        agent_state(pb)
    else:
        raise SystemExit(f"unknown op {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
