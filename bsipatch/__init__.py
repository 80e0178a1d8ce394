"""bsipatch: small, signed, reversible security fixes for sealed OS images.

This module re-exports the public API and ``__version__``; names are loaded lazily
(so ``import bsipatch`` stays cheap and the CLI starts fast), and declared for type
checkers in the ``TYPE_CHECKING`` block below. No logic lives here.

Everyday use::

    patch = bsipatch.diff(old_bytes, new_bytes)          # bytes in, bytes out
    new = bsipatch.apply(old_bytes, patch)
    bsipatch.diff("old.img", "new.img", "update.bsipatch")  # paths or files, streaming

Checks can only be switched off through :mod:`bsipatch.hazmat`.
"""

from __future__ import annotations

from bsipatch._version import __version__

# Not ``from typing import TYPE_CHECKING``: importing typing would cost the CLI ~5 ms of
# start-up before its Ctrl-C handling is in place (see bsipatch.__main__). Type checkers
# treat a module-level ``TYPE_CHECKING`` as true all the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from bsipatch import errors as errors
    from bsipatch import hazmat as hazmat
    from bsipatch.agent.agent import Agent as Agent
    from bsipatch.agent.policy import Policy as Policy
    from bsipatch.api import apply as apply
    from bsipatch.api import diff as diff
    from bsipatch.delta.apply import ApplyReader as ApplyReader
    from bsipatch.delta.apply import iter_apply as iter_apply
    from bsipatch.delta.info import read_patch_info as read_patch_info
    from bsipatch.delta.patchformat import PatchInfo as PatchInfo
    from bsipatch.device.preboot import Preboot as Preboot
    from bsipatch.hashing import hash_blocks as hash_blocks
    from bsipatch.hashing import sha256 as sha256
    from bsipatch.seal.tree import Seal as Seal
    from bsipatch.seal.tree import VerifiedReader as VerifiedReader
    from bsipatch.seal.tree import open_verified as open_verified
    from bsipatch.seal.tree import seal_image as seal_image
    from bsipatch.seal.tree import verify_image as verify_image
    from bsipatch.trust.manifest import ReleaseManifest as ReleaseManifest
    from bsipatch.trust.releases import Catalog as Catalog
    from bsipatch.trust.releases import Release as Release
    from bsipatch.trust.tufrepo import TufRepository as TufRepository

# public name -> module that defines it ("" for a submodule of that name)
_EXPORTS = {
    "errors": "",
    "hazmat": "",
    # native hashing
    "sha256": "hashing",
    "hash_blocks": "hashing",
    # seal (dm-verity compatible hash tree)
    "Seal": "seal.tree",
    "seal_image": "seal.tree",
    "verify_image": "seal.tree",
    "open_verified": "seal.tree",
    "VerifiedReader": "seal.tree",
    # delta engine: everyday shapes in bsipatch.api, streaming reads from the engine
    "diff": "api",
    "apply": "api",
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

__all__ = ["__version__", *sorted(_EXPORTS)]

if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'bsipatch' has no attribute {name!r}")
        import importlib

        if module == "":
            value = importlib.import_module(f".{name}", __name__)
        else:
            value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(__all__)
