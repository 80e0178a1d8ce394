"""Device-management policy for security releases: parse it, and decide auto-install.

An MDM server pushes a JSON document with the meanings of Apple's declarative
software-update settings (``com.apple.configuration.softwareupdate.settings``), so
administrators find the keys they already know:

=========================================  ===============================================
key                                        meaning here
=========================================  ===============================================
``RapidSecurityResponse.Enable``           security releases are offered at all (bool)
``RapidSecurityResponse.EnableRollback``   users may remove an installed release (bool)
``AutomaticActions.InstallSecurityUpdate`` ``Allowed`` (the user's switch decides),
                                           ``AlwaysOn`` or ``AlwaysOff`` (policy decides)
``AutomaticActions.Download``              accepted and validated; ``AlwaysOff`` stops the
                                           agent from downloading security releases on
                                           its own (same effect as ``AlwaysOff`` above)
``AutomaticActions.InstallOSUpdates``      accepted and validated; not used (full OS
                                           updates are outside this agent)
``PinnedRelease``                          (bsipatch extension) a release id such as
                                           ``"26.1 (a)"``: only that release may be
                                           installed, nothing newer
=========================================  ===============================================

The document may be the bare payload (the keys above) or a declaration
``{"Type": "com.apple.configuration.softwareupdate.settings", "Identifier": ...,
"ServerToken": ..., "Payload": {...}}``. Any other key, and any value of the wrong
type, is a :class:`~bsipatch.errors.PolicyError`: a policy is applied whole or not at
all. This module is pure: no file, clock or network I/O (the agent stores the
document).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bsipatch.errors import PolicyError

DECLARATION_TYPE = "com.apple.configuration.softwareupdate.settings"
AUTOMATIC_VALUES = ("Allowed", "AlwaysOn", "AlwaysOff")

_DECLARATION_KEYS = {"Type", "Identifier", "ServerToken", "Payload"}
_PAYLOAD_KEYS = {"RapidSecurityResponse", "AutomaticActions", "PinnedRelease"}
_RSR_KEYS = {"Enable", "EnableRollback"}
_AUTO_KEYS = {"InstallSecurityUpdate", "Download", "InstallOSUpdates"}
MAX_POLICY_SIZE = 64 * 1024


@dataclass(frozen=True)
class Policy:
    """A validated device-management policy. The default instance means "no policy".

    Attributes:
        security_updates_enabled: ``RapidSecurityResponse.Enable`` (default True).
        rollback_allowed: ``RapidSecurityResponse.EnableRollback`` (default True).
        install_security_update: ``Allowed`` / ``AlwaysOn`` / ``AlwaysOff``.
        download: ``AutomaticActions.Download`` (``Allowed`` by default).
        install_os_updates: ``AutomaticActions.InstallOSUpdates`` (recorded only).
        pinned_release: the only release id that may be installed, or None.
        identifier: the declaration's ``Identifier`` (for the status report), or None.
        server_token: the declaration's ``ServerToken``, or None.
        present: True when an MDM policy was applied at all (False for the default).
    """

    security_updates_enabled: bool = True
    rollback_allowed: bool = True
    install_security_update: str = "Allowed"
    download: str = "Allowed"
    install_os_updates: str = "Allowed"
    pinned_release: str | None = None
    identifier: str | None = None
    server_token: str | None = None
    present: bool = False

    @classmethod
    def from_json(cls, doc: bytes | bytearray | str | dict[str, Any]) -> Policy:
        """Parse and validate a policy document (bytes, text, or an already-decoded dict).

        Args:
            doc: the JSON document, bare payload or a declaration with ``Payload``.

        Returns:
            The validated policy (``present=True``).

        Raises:
            PolicyError: not JSON, not an object, an unknown key, a wrong type or value.

        Example:
            >>> p = Policy.from_json(b'{"AutomaticActions": {"InstallSecurityUpdate": "AlwaysOn"}}')
            >>> p.install_security_update
            'AlwaysOn'
        """
        if isinstance(doc, (bytes, bytearray, str)):
            if len(doc) > MAX_POLICY_SIZE:
                raise PolicyError(f"policy document is {len(doc)} bytes; limit {MAX_POLICY_SIZE}")
            try:
                obj = json.loads(doc)
            except (ValueError, UnicodeDecodeError) as exc:
                raise PolicyError(f"policy is not valid JSON: {exc}") from exc
        else:
            obj = doc
        if not isinstance(obj, dict):
            raise PolicyError(f"policy must be a JSON object, got {type(obj).__name__}")

        identifier = server_token = None
        if "Payload" in obj or "Type" in obj:
            _check_keys(obj, _DECLARATION_KEYS, "declaration")
            dtype = obj.get("Type", DECLARATION_TYPE)
            if dtype != DECLARATION_TYPE:
                raise PolicyError(f"declaration Type is {dtype!r}; expected {DECLARATION_TYPE!r}")
            identifier = _opt_str(obj, "Identifier", "declaration")
            server_token = _opt_str(obj, "ServerToken", "declaration")
            payload = obj.get("Payload", {})
            if not isinstance(payload, dict):
                raise PolicyError(f"Payload must be an object, got {type(payload).__name__}")
        else:
            payload = obj

        _check_keys(payload, _PAYLOAD_KEYS, "policy")
        rsr = _opt_obj(payload, "RapidSecurityResponse")
        _check_keys(rsr, _RSR_KEYS, "RapidSecurityResponse")
        auto = _opt_obj(payload, "AutomaticActions")
        _check_keys(auto, _AUTO_KEYS, "AutomaticActions")

        pinned = _opt_str(payload, "PinnedRelease", "policy")
        if pinned is not None and not pinned.strip():
            raise PolicyError("PinnedRelease must be a non-empty release id such as '26.1 (a)'")

        return cls(
            security_updates_enabled=_opt_bool(rsr, "Enable", "RapidSecurityResponse", True),
            rollback_allowed=_opt_bool(rsr, "EnableRollback", "RapidSecurityResponse", True),
            install_security_update=_opt_auto(auto, "InstallSecurityUpdate"),
            download=_opt_auto(auto, "Download"),
            install_os_updates=_opt_auto(auto, "InstallOSUpdates"),
            pinned_release=pinned,
            identifier=identifier,
            server_token=server_token,
            present=True,
        )

    def to_dict(self) -> dict[str, Any]:
        """The policy in its Apple-style key layout (what the status report shows)."""
        payload: dict[str, Any] = {
            "RapidSecurityResponse": {
                "Enable": self.security_updates_enabled,
                "EnableRollback": self.rollback_allowed,
            },
            "AutomaticActions": {
                "InstallSecurityUpdate": self.install_security_update,
                "Download": self.download,
                "InstallOSUpdates": self.install_os_updates,
            },
        }
        if self.pinned_release is not None:
            payload["PinnedRelease"] = self.pinned_release
        out: dict[str, Any] = {"present": self.present, "Payload": payload}
        if self.identifier is not None:
            out["Identifier"] = self.identifier
        if self.server_token is not None:
            out["ServerToken"] = self.server_token
        return out

    def allows_release(self, release_id: str) -> tuple[bool, str]:
        """Whether policy lets the device install ``release_id`` at all.

        Returns:
            ``(allowed, reason)``; the reason is empty when allowed.
        """
        if not self.security_updates_enabled:
            return False, "policy: security releases are disabled (RapidSecurityResponse.Enable)"
        if self.pinned_release is not None and release_id != self.pinned_release:
            return False, f"policy: pinned to release {self.pinned_release!r}"
        return True, ""


@dataclass(frozen=True)
class AutoInstallDecision:
    """Whether security releases install automatically, and who decided.

    Attributes:
        enabled: install without asking.
        decided_by: ``"policy"`` or ``"user"``.
        reason: one line for people, e.g. ``"policy AutomaticActions.InstallSecurityUpdate
            = AlwaysOn"``.
    """

    enabled: bool
    decided_by: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the status report."""
        return {"enabled": self.enabled, "decided_by": self.decided_by, "reason": self.reason}


def decide_auto_install(policy: Policy, user_auto_install: bool) -> AutoInstallDecision:
    """Combine policy and the user's switch: policy wins whenever it says anything definite.

    Args:
        policy: the applied policy (``Policy()`` when there is none).
        user_auto_install: the user's automatic-install switch.

    Returns:
        The decision, naming which side decided.

    Example:
        >>> decide_auto_install(Policy(), True).decided_by
        'user'
    """
    if not policy.security_updates_enabled:
        return AutoInstallDecision(False, "policy", "policy RapidSecurityResponse.Enable = false")
    if policy.install_security_update == "AlwaysOn":
        return AutoInstallDecision(
            True, "policy", "policy AutomaticActions.InstallSecurityUpdate = AlwaysOn"
        )
    if policy.install_security_update == "AlwaysOff":
        return AutoInstallDecision(
            False, "policy", "policy AutomaticActions.InstallSecurityUpdate = AlwaysOff"
        )
    if policy.download == "AlwaysOff":
        return AutoInstallDecision(False, "policy", "policy AutomaticActions.Download = AlwaysOff")
    state = "on" if user_auto_install else "off"
    return AutoInstallDecision(user_auto_install, "user", f"user setting auto-install = {state}")


# --- validation helpers ---------------------------------------------------------------


def _check_keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise PolicyError(
            f"unknown key(s) in {where}: {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _opt_obj(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise PolicyError(f"{key} must be an object, got {type(value).__name__}")
    return value


def _opt_bool(obj: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise PolicyError(f"{where}.{key} must be a string, got {value!r}")
    return value


def _opt_auto(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key, "Allowed")
    if not isinstance(value, str) or value not in AUTOMATIC_VALUES:
        raise PolicyError(
            f"AutomaticActions.{key} must be one of {', '.join(AUTOMATIC_VALUES)}, got {value!r}"
        )
    return value
