"""N->1 patch choice: per component, the smallest patch that starts from the active image.

A release built from a matrix with ``--from-previous K`` lists, for each component,
the patch from the base image and patches from the images earlier releases
installed, each with its source seal. :func:`choose_patches` takes the verified
manifest (as the device's build sees it) and the seal root of the image the device
verified as active for each component, and returns the manifest with one patch per
component: the smallest whose source is that image, else the base patch. Pure: no
I/O, no trust decisions (the manifest was verified before), no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["PatchChoice", "choose_patches"]


@dataclass(frozen=True)
class PatchChoice:
    """What was chosen for one component and what the base patch would have cost."""

    component: str
    source: str  # "base" or the earlier release id
    patch_bytes: int
    base_patch_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "source": self.source,
            "patch_bytes": self.patch_bytes,
            "base_patch_bytes": self.base_patch_bytes,
            "saved_bytes": self.base_patch_bytes - self.patch_bytes,
        }


def choose_patches(manifest: Any, active_roots: Mapping[str, str]) -> tuple[Any, list[PatchChoice]]:
    """Pick each component's patch for a device whose active images have ``active_roots``.

    Args:
        manifest: a verified :class:`bsipatch.trust.manifest.ReleaseManifest` for the
            device's build (``manifest.for_build(build)``).
        active_roots: component -> hex seal root of the image the device verified as
            active (its base image or the one its active release installed).

    Returns:
        ``(manifest with one patch per component, choices)``. A component whose
        active image is the source of no listed patch keeps the base patch (the
        device still holds its base image).
    """
    comps = []
    choices = []
    for c in manifest.components:
        base_size = int(c.patch.size)
        options = [(c.base, c.patch, "base")] + [(s.base, s.patch, s.release_id) for s in c.sources]
        active = active_roots.get(c.name)
        fits = [o for o in options if active is not None and o[0].root_hash == active]
        base, patch, source = min(fits, key=lambda o: int(o[1].size)) if fits else options[0]
        comps.append(replace(c, base=base, patch=patch, sources=()))
        choices.append(PatchChoice(c.name, source, int(patch.size), base_size))
    return replace(manifest, components=tuple(comps)), choices
