"""Expert entry points that can switch safety checks off: read the docs before use.

Like ``cryptography.hazmat``, this module is for callers who verify by other means
and know what they give up. :func:`apply` here takes ``verify_old`` and
``verify_new`` (and ``provenance``), which the everyday :func:`bsipatch.apply` does
not: the device installer uses them because it checks the base image and the
result against their signed dm-verity seals instead of the patch's SHA-256s.
Turning a check off without such a replacement lets a wrong base image or a
corrupt result through. Nothing else lives here.
"""

from __future__ import annotations

from bsipatch.api import Image, Output, PatchInput, Progress
from bsipatch.delta import apply as _apply_engine
from bsipatch.delta.apply import Provenance
from bsipatch.delta.patchformat import PatchInfo


def apply(
    old: Image,
    patch: PatchInput,
    out: Output,
    *,
    verify_old: bool,
    verify_new: bool,
    provenance: Provenance | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    max_patch_size: int | None = None,
) -> PatchInfo:
    """:func:`bsipatch.apply` with its checks under the caller's control.

    Args:
        old, patch, out, threads, progress, resume, max_patch_size: as for
            :func:`bsipatch.apply` (``out`` is required here).
        verify_old: check the old image's SHA-256 against the patch header. ``False``
            only when the caller verified the old image itself (e.g. against a seal);
            its size is always checked.
        verify_new: check every segment's and the whole output's SHA-256. ``False``
            only when the caller verifies the output itself (e.g. against a seal, with
            ``provenance``); the patch's own structure and digests are always checked.
        provenance: a :class:`Provenance` to fill with the new image's dm-verity
            leaves (path outputs only, not with ``resume``).

    Returns:
        The applied patch's :class:`PatchInfo`.
    """
    return _apply_engine.apply(
        old,
        patch,
        out,
        threads=threads,
        progress=progress,
        resume=resume,
        max_patch_size=max_patch_size,
        verify_old=verify_old,
        verify_new=verify_new,
        provenance=provenance,
    )


__all__ = ["Provenance", "apply"]
