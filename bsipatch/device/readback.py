"""Read-back of a tentative release's new images, and what "tentative" means in state.json.

Before a newly activated release is confirmed, the first verified open of each image it
wrote reads the whole file back from disk (its page cache dropped first) and checks it
against its seal: the install checked leaves computed from what it wrote from memory,
not the bytes the disk returns. A marker file in ``<preboot>/health/`` remembers the
images already read back (losing one only means reading that image once more).
Used by :meth:`bsipatch.device.preboot.Preboot.open_component` and
:func:`bsipatch.device.health.confirm`; no state changes here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

READBACK_DIR = "health"


def tentative(state: dict[str, Any]) -> dict[str, Any] | None:
    """The tentative record of ``state`` if it describes the active release, else None."""
    t = state.get("tentative")
    active = state["chain"][-1] if state.get("chain") else None
    if isinstance(t, dict) and t.get("release") == active:
        return t
    return None


def _marker(root: Path, slug: str, name: str) -> Path:
    return root / READBACK_DIR / f"{slug}.{name}.read-back"


def readback_check(
    root: Path,
    state: dict[str, Any],
    directory: Path,
    name: str,
    seal: Any,
    *,
    force: bool = False,
) -> None:
    """Read a tentative release's new image back from disk once; check it against ``seal``.

    Does nothing for images of confirmed releases, unchanged components, or images
    already read back (unless ``force``).

    Args:
        root: the preboot directory.
        state: its state (``state.json``).
        directory: the directory the image is opened from.
        name: the component.
        seal: the image's :class:`bsipatch.seal.tree.Seal`.
        force: read back even when a marker says it was done.

    Raises:
        SealError: the image on disk does not match its seal.
    """
    from bsipatch.seal.tree import verify_image

    t = tentative(state)
    if t is None or directory.parent != root / "releases" or directory.name != t["release"]:
        return
    if name not in t.get("components", []):
        return
    marker = _marker(root, t["release"], name)
    if marker.exists() and not force:
        return
    image = directory / f"{name}.img"
    with open(image, "rb") as f:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        verify_image(image, seal)
    with contextlib.suppress(OSError):  # only an optimisation: the next open re-reads
        marker.parent.mkdir(exist_ok=True)
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644))


def forget_readbacks(root: Path, state: dict[str, Any]) -> None:
    """Remove read-back markers of releases that are no longer tentative."""
    t = tentative(state)
    keep = f"{t['release']}." if t else None
    with contextlib.suppress(FileNotFoundError):
        for p in (root / READBACK_DIR).iterdir():
            if keep is None or not p.name.startswith(keep):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
