"""Creating a preboot volume and building the base images of an OS version.

:func:`create_in` lays out a new preboot directory (what ``preboot init`` does);
:func:`build_base` copies, seals and protects base images in staging and renames the
finished directory into ``base/``. Both write durably (fsync before every rename). No
state switching or recovery here (that is :mod:`bsipatch.device.preboot`).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

from bsipatch._crashpoints import crashpoint
from bsipatch._io import PathLike, atomic_write, fsync_dir
from bsipatch.device.files import (
    check_name,
    copy_durable,
    json_bytes,
    release_slug,
    seal_record_dict,
    write_durable,
)
from bsipatch.device.journal import Journal
from bsipatch.errors import StateError

STATE_FORMAT = 1
ACTIVATIONS = ("relaunch", "reboot")
CREATE_NAMES = {"base", "releases", "staging", "trash", "journal", "lock"}


def empty_dir(path: Path) -> None:
    """Remove everything inside ``path`` (read-only directories included)."""
    make_writable(path)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            make_writable(child)
            shutil.rmtree(child)
        else:
            child.unlink()


def make_writable(path: Path) -> None:
    """Give the owner write permission on every directory below ``path`` (for removal)."""
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = Path(root) / d
            p.chmod(p.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)
    path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IXUSR)


def create_in(
    path: Path,
    os_version: str,
    build: str,
    images: Mapping[str, PathLike],
    activation: dict[str, str],
    clock: Callable[[], str],
    progress: Callable[[int, int], None] | None,
) -> None:
    """The body of :meth:`Preboot.create` (``path`` is empty or missing)."""
    path.mkdir(parents=True, exist_ok=True)
    for sub in ("base", "releases", "staging", "trash"):
        (path / sub).mkdir(exist_ok=True)
    Journal.create(path / "journal")
    (path / "lock").touch()
    fsync_dir(path)
    base_rel = build_base(
        path, "staging", "create", os_version, build, images, activation, progress
    )
    state = {
        "format": STATE_FORMAT,
        "os": {"version": os_version, "build": build, "base": base_rel},
        "chain": [],
        "booted": {"base": base_rel, "release": None},
        "last_tx": None,
        "history": [{"time": clock(), "op": "create", "os_version": os_version, "build": build}],
    }
    with atomic_write(path / "state.json") as f:
        f.write(json_bytes(state))


def build_base(
    root: Path,
    staging_sub: str,
    tag: str,
    os_version: str,
    build: str,
    images: Mapping[str, PathLike],
    activation: dict[str, str],
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Copy, seal and store base images as ``base/<os>-<build>``; return that relative path.

    The images are built in ``<root>/<staging_sub>/<tag>`` and the finished directory is
    renamed into ``base/`` (fsynced) in one step. Callers journal the operation.

    Raises:
        ValueError: bad names or activation values.
        StateError: that base directory already exists.
        OSError: I/O errors (callers map them).
    """
    from bsipatch.seal.tree import seal_image

    check_name(release_slug(f"{os_version}-{build}"), "OS version/build")
    if not images:
        raise ValueError("no base images given")
    if set(images) != set(activation):
        raise ValueError(
            f"activation must name exactly the images: images {sorted(images)}, "
            f"activation {sorted(activation)}"
        )
    for name, act in activation.items():
        check_name(name)
        if act not in ACTIVATIONS:
            raise ValueError(f"activation of {name} is {act!r}; expected relaunch or reboot")
    key = release_slug(f"{os_version}-{build}")
    final = root / "base" / key
    if final.exists():
        raise StateError(f"base images of {os_version} {build} already exist at {final}")
    stage = root / staging_sub / tag
    stage.mkdir()
    fsync_dir(stage.parent)
    total = sum(Path(p).stat().st_size for p in images.values())
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    for name in sorted(images):
        img = stage / f"{name}.img"
        digest = copy_durable(images[name], img, step)
        crashpoint("base.copied")
        seal = seal_image(img)
        write_durable(stage / f"{name}.seal.json", json_bytes(seal_record_dict(seal, digest)))
    info = {
        "os_version": os_version,
        "build": build,
        "components": {n: {"activation": activation[n]} for n in sorted(images)},
    }
    write_durable(stage / "os.json", json_bytes(info))
    fsync_dir(stage)
    crashpoint("base.staged")
    stage.rename(final)
    fsync_dir(final.parent)
    fsync_dir(stage.parent)
    crashpoint("base.moved")
    final.chmod(0o555)
    return f"base/{key}"
