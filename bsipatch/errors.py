"""The exception tree of bsipatch: one class per outcome a caller handles differently.

Every error a caller can meet from bad input, a forged or stale update, or a failing
disk derives from :class:`BsipatchError`. Misuse of the API (a negative size, calling
``finish()`` twice) raises ``ValueError``/``TypeError``/``RuntimeError`` instead.
Messages say what was found and what was expected. No logic lives here beyond
the exit-code table the CLI uses.
"""

from __future__ import annotations


class BsipatchError(Exception):
    """Base class of every error bsipatch raises for bad input or a failed operation."""

    exit_code = 1


# --- seal (hash tree) -----------------------------------------------------------------


class SealError(BsipatchError):
    """An image or hash tree does not match, or a seal cannot be read."""

    exit_code = 3


class SealMismatch(SealError):
    """A data or hash block does not hash to what the tree (or root hash) says.

    Attributes:
        block: index of the first bad block (data block index for data, or the
            hash-file block index when ``area == "hash"``), or ``None`` when only
            the root differs.
        area: ``"data"``, ``"hash"`` or ``"root"``.
    """

    def __init__(self, message: str, *, block: int | None = None, area: str = "data") -> None:
        super().__init__(message)
        self.block = block
        self.area = area


class SealFormatError(SealError):
    """A hash file or seal description is malformed: bad superblock, truncated, bad parameters."""


# --- patches --------------------------------------------------------------------------


class PatchError(BsipatchError):
    """A patch cannot be applied."""

    exit_code = 4


class CorruptPatch(PatchError):
    """The patch bytes are damaged: bad framing, a failed segment digest, bad operations."""


class TruncatedPatch(CorruptPatch):
    """The patch ended before everything its header declares had arrived."""


class PatchTooLarge(CorruptPatch):
    """The patch produces (or carries) more bytes than its header or the manifest declares."""


class UnsupportedPatch(PatchError):
    """Unknown magic or an unsupported format version."""


class WrongBaseImage(PatchError):
    """The old image is not the one the patch was made for (size or SHA-256 differs)."""


class OutputMismatch(PatchError):
    """The image the patch produced does not have the size or SHA-256 the header declares."""


class ImplausiblePatch(CorruptPatch):
    """The header claims an output size out of bounds (absurd, or too large for the patch)."""


class HeaderMismatch(PatchError):
    """The patch header's sizes or digests differ from those the signed target declares."""


# --- signed metadata ------------------------------------------------------------------


class MetadataError(BsipatchError):
    """Signed metadata is malformed, not genuine, not current or not applicable."""

    exit_code = 5


class FormatError(MetadataError):
    """Metadata is not valid canonical JSON or lacks/mistypes a required field."""


class SignatureError(MetadataError):
    """Signatures are missing, invalid, from unknown or revoked keys, or below threshold."""


class ThresholdError(SignatureError):
    """Fewer valid signatures from the role's trusted keys than its threshold."""


class ExpiredMetadata(MetadataError):
    """The metadata's expiry time has passed (freeze attack)."""


class RollbackAttack(MetadataError):
    """The metadata's version or sequence is older than one already trusted."""


class WrongTarget(MetadataError):
    """The release or patch is for another OS build, device or component (mix-and-match)."""


class TargetMismatch(MetadataError):
    """A downloaded patch or produced image differs in size or digest from the manifest."""


class WithdrawnRelease(MetadataError):
    """The vendor withdrew this release."""


class KeyFileError(MetadataError):
    """A key file cannot be read: bad PEM, wrong passphrase, unsupported key type."""


# --- device state ---------------------------------------------------------------------


class StagingError(BsipatchError):
    """Reading or writing the preboot volume failed; the active release is unchanged."""

    exit_code = 6


class DiskFullError(StagingError):
    """No space left on the preboot volume."""


class ReadOnlyError(StagingError):
    """The preboot volume is read-only."""


class UnsafeFile(StagingError):
    """A temp or partial file path is a symlink, not a regular file, or not ours."""


class LockedError(StagingError):
    """Another process holds the preboot lock."""


class UnsupportedFilesystem(StagingError):
    """The preboot directory's file system lacks atomic rename, directory fsync,
    hard links or flock (vfat, exFAT, NFS, SMB and the like)."""


class StateError(BsipatchError):
    """The requested operation does not fit the device's state (nothing to roll back to...)."""

    exit_code = 7


class RollbackFailed(BsipatchError):
    """Going back to an earlier release failed; the device stays on the active release."""

    exit_code = 8


class PolicyError(BsipatchError):
    """A device-management policy document is invalid (unknown key, wrong type)."""

    exit_code = 9


class PolicyDenied(BsipatchError):
    """Device-management policy forbids the requested operation."""

    exit_code = 9


class FetchError(BsipatchError):
    """Downloading from the repository failed (connection, HTTP status, stalled transfer)."""

    exit_code = 10


class DownloadTooSlow(FetchError):
    """A download missed its deadline or stayed below the minimum average rate."""


class NativeError(BsipatchError):
    """The native core reported an error that has no more specific meaning."""

    exit_code = 11

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


# --- device-management server (bsipatch.mdm) -----------------------------------------


class MdmError(BsipatchError):
    """The device-management server or its database refused an operation."""

    exit_code = 12


class MdmSchemaError(MdmError):
    """The database schema is newer than this server knows, or is not a bsipatch schema."""

    exit_code = 12


# --- vendor builds (bsipatch.vendor) ---------------------------------------------------


class BuildError(BsipatchError):
    """A vendor build (``release build --matrix``) failed; nothing was published."""

    exit_code = 13


class MatrixError(BuildError):
    """A build matrix is invalid: every problem found is listed, one per line."""

    def __init__(self, problems: list[str], source: str = "matrix") -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")
        self.problems = list(problems)


class BuildTaskError(BuildError):
    """One task of a vendor build failed for good (e.g. a corrupt input image)."""
