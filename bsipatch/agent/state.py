"""The agent's persistent files in ``<preboot>/agent/``: trusted state, settings, policy.

``state.json`` holds everything the device trusts, written together in one atomic
write (:func:`bsipatch._io.atomic_write`): the TUF metadata it trusts (root, timestamp,
snapshot, targets, as served) and their versions, the release floor (the highest
release sequence installed, and which release set it), the releases installed by the
agent, older installs the user forced, deferred releases and the last check's result.
A crash leaves the previous or the new state, never a mix (the crash tests kill the
agent at ``agent.state.written``). ``settings.json`` is the user's switch and
``policy.json`` the MDM policy.

No trust decisions (see :mod:`bsipatch.trust.client`) and no planning here.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bsipatch._crashpoints import crashpoint
from bsipatch._io import PathLike, atomic_write, fsync_dir, os_error_to_staging
from bsipatch.agent.policy import Policy
from bsipatch.errors import StateError
from bsipatch.trust.client import StoredMetadata

__all__ = ["AGENT_DIR", "AgentState", "AgentStore", "Settings"]

AGENT_DIR = "agent"
_META = ("root", "timestamp", "snapshot", "targets")


@dataclass
class Settings:
    """The user's settings.

    Attributes:
        auto_install: install security releases automatically (Apple's default: on).
    """

    auto_install: bool = True


@dataclass
class AgentState:
    """What the agent remembers between runs (``agent/state.json``), all in one file.

    Attributes:
        metadata: role -> trusted TUF metadata (the served bytes as text), or absent.
        versions: role -> version of that metadata (for status reports).
        sequence: release floor: the highest release sequence installed; the device
            never goes below it except by a withdrawal the targets role signed, or an
            explicit forced install (recorded in ``overrides``).
        floor_release: the release that set ``sequence``.
        deferred: releases found applicable while automatic install was off.
        last_check: time of the last check (``YYYY-MM-DDTHH:MM:SSZ``), or None.
        last_result: ``{"ok": bool, "summary": str, "error": str | None}`` or None.
        installed: release id -> summary, for the status report.
        retired: release ids retired by OS updates.
        removed: release ids the user removed (not reinstalled automatically).
        overrides: forced installs below the floor and withdrawal step-backs.
    """

    metadata: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    sequence: int = 0
    floor_release: str | None = None
    deferred: list[dict[str, Any]] = field(default_factory=list)
    last_check: str | None = None
    last_result: dict[str, Any] | None = None
    installed: dict[str, dict[str, Any]] = field(default_factory=dict)
    retired: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    overrides: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentState:
        """Load, ignoring unknown keys (newer agent versions may add some)."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def stored_metadata(self) -> StoredMetadata | None:
        """The trusted TUF metadata, or None when no root is provisioned."""
        if "root" not in self.metadata:
            return None
        get = self.metadata.get
        return StoredMetadata(
            root=get("root", "").encode(),
            timestamp=_enc(get("timestamp")),
            snapshot=_enc(get("snapshot")),
            targets=_enc(get("targets")),
        )

    def set_metadata(self, stored: StoredMetadata, versions: dict[str, int]) -> None:
        """Replace the trusted metadata (saved with the rest by :meth:`AgentStore.save_state`)."""
        self.metadata = {r: b.decode() for r in _META if (b := getattr(stored, r)) is not None}
        self.versions = dict(versions)


def _enc(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


class AgentStore:
    """The agent's files in ``<preboot>/agent/``. Every write is atomic.

    Args:
        preboot_dir: the preboot directory.
    """

    def __init__(self, preboot_dir: PathLike):
        self.dir = Path(preboot_dir) / AGENT_DIR

    def _path(self, name: str) -> Path:
        return self.dir / name

    def _read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise os_error_to_staging(exc, f"reading {self._path(name)}") from exc

    def _write(self, name: str, data: bytes) -> None:
        try:
            if not self.dir.is_dir():
                self.dir.mkdir(parents=True, exist_ok=True)
                fsync_dir(self.dir.parent)  # else a power cut may lose the directory
            with atomic_write(self._path(name)) as f:
                f.write(data)
        except OSError as exc:
            raise os_error_to_staging(exc, f"writing {self._path(name)}") from exc

    @staticmethod
    def _json(obj: Any) -> bytes:
        return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()

    # trusted root ------------------------------------------------------------------

    def trusted_root(self) -> bytes | None:
        """The trusted root metadata bytes, or None when not provisioned."""
        stored = self.state().stored_metadata()
        return None if stored is None else stored.root

    def provision(self, root: bytes) -> None:
        """Trust ``root`` (the vendor's root metadata) when no root is trusted yet.

        Raises:
            MetadataError: ``root`` is not a TUF root signed by a threshold of its own keys.
        """
        from bsipatch.trust.client import StoredMetadata, check_root

        state = self.state()
        if state.stored_metadata() is not None:
            return
        version = check_root(bytes(root))
        state.set_metadata(StoredMetadata(bytes(root)), {"root": version})
        self.save_state(state)

    # settings ------------------------------------------------------------------------

    def settings(self) -> Settings:
        """The user's settings (defaults when never set)."""
        raw = self._read("settings.json")
        if raw is None:
            return Settings()
        try:
            d = json.loads(raw)
            return Settings(auto_install=bool(d["auto_install"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{self._path('settings.json')} is damaged: {exc}") from exc

    def save_settings(self, settings: Settings) -> None:
        """Store the user's settings."""
        self._write("settings.json", self._json(asdict(settings)))

    # policy --------------------------------------------------------------------------

    def policy(self) -> Policy:
        """The applied MDM policy (``Policy()`` when none)."""
        raw = self._read("policy.json")
        if raw is None:
            return Policy()
        return Policy.from_json(raw)

    def save_policy(self, document: bytes) -> Policy:
        """Validate ``document`` and, only if it is entirely valid, store it.

        Raises:
            PolicyError: invalid; the previously applied policy stays in force.
        """
        policy = Policy.from_json(document)
        self._write("policy.json", bytes(document))
        return policy

    def clear_policy(self) -> None:
        """Remove the MDM policy (the device is no longer managed)."""
        with contextlib.suppress(FileNotFoundError):
            self._path("policy.json").unlink()

    # state ---------------------------------------------------------------------------

    def state(self) -> AgentState:
        """The remembered state (defaults on first use)."""
        raw = self._read("state.json")
        if raw is None:
            return AgentState()
        try:
            return AgentState.from_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise StateError(f"{self._path('state.json')} is damaged: {exc}") from exc

    def forget_removal(self, release_id: str) -> bool:
        """The user asked for ``release_id`` again: automatic installs may bring it back.

        Returns:
            True if it was on the list of releases the user removed.
        """
        state = self.state()
        if release_id not in state.removed:
            return False
        state.removed = [r for r in state.removed if r != release_id]
        self.save_state(state)
        return True

    def save_state(self, state: AgentState) -> None:
        """Store the whole state in one atomic write."""
        self._write("state.json", self._json(asdict(state)))
        crashpoint("agent.state.written")
