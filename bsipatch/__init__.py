"""bsipatch: small, signed, reversible security fixes for sealed OS images.

This module re-exports the public API (loaded lazily, so ``import bsipatch`` stays
cheap and the CLI starts fast) and ``__version__``. No logic lives here.
"""

from __future__ import annotations

import importlib
from typing import Any

from bsipatch._version import __version__

# public name -> module that defines it
_EXPORTS = {
    # native hashing
    "sha256": "hashing",
    "hash_blocks": "hashing",
    # seal (dm-verity compatible hash tree)
    "Seal": "seal.tree",
    "seal_image": "seal.tree",
    "verify_image": "seal.tree",
    "open_verified": "seal.tree",
    "VerifiedReader": "seal.tree",
    # delta engine
    "diff": "delta.diff",
    "apply": "delta.apply",
    "ApplyReader": "delta.apply",
    "iter_apply": "delta.apply",
    "PatchInfo": "delta.patchformat",
    "read_patch_info": "delta.info",
    # signed metadata
    "TufRepository": "trust.tufrepo",
    "ReleaseManifest": "trust.manifest",
    "Release": "trust.releases",
    "Catalog": "trust.releases",
    # device
    "Preboot": "device.preboot",
    "Agent": "agent.agent",
    "Policy": "agent.policy",
}

__all__ = ["__version__", "errors", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module(".errors", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bsipatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
