"""The update agent: check the vendor's catalog, decide, install, step back, remember.

What a device runs periodically. :meth:`Agent.check` fetches and verifies the trust
root chain and the catalog, and says for every listed release what the agent will do
with it and why (wrong build, withdrawn, older than the active release, policy
forbids, deferred because automatic install is off, superseded, or install).
:meth:`Agent.run` then does it: streams each patch from the repository straight into
:func:`bsipatch.device.install.install_release` (no patch file on disk first), or, when the
catalog marks the active release withdrawn and automatic install is on, steps back to
the newest release that is not withdrawn, or to the base images.

The agent's own state lives in ``<preboot>/agent/`` (written with
:func:`bsipatch._io.atomic_write`): the trusted root (``root.json``), the user's
settings, the MDM policy document, and ``state.json`` (catalog version and release
sequence already trusted, deferred releases, last check time and result).

Trust decisions are :class:`bsipatch.trust.verify.Verifier`'s; image writes are
:mod:`bsipatch.device.install`'s; this module only orchestrates, and reads the clock.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from bsipatch._io import PathLike, atomic_write, fsync_dir, os_error_to_staging
from bsipatch.agent.download import FetchStats, PatchStream, Repository, open_repository
from bsipatch.agent.policy import AutoInstallDecision, Policy, decide_auto_install
from bsipatch.errors import (
    BsipatchError,
    MetadataError,
    PolicyDenied,
    PolicyError,
    StateError,
)

AGENT_DIR = "agent"
MAX_ROOT_CHAIN = 64  # root rotations fetched in one check, at most

# Decision actions
INSTALL = "install"
DEFER = "defer"
SKIP = "skip"
ACTIVE = "active"
STEP_BACK = "step-back"


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def format_time(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- persistent agent state ----------------------------------------------------------------


@dataclass
class Settings:
    """The user's settings.

    Attributes:
        auto_install: install security releases automatically (Apple's default: on).
    """

    auto_install: bool = True


@dataclass
class AgentState:
    """What the agent remembers between runs (``agent/state.json``).

    Attributes:
        catalog_version: highest catalog version trusted (rollback floor).
        sequence: highest release sequence installed (rollback floor for manifests).
        deferred: releases found applicable while automatic install was off.
        last_check: time of the last check (ISO-8601 UTC), or None.
        last_result: ``{"ok": bool, "summary": str, "error": str | None}`` or None.
        installed: release id -> summary of its manifest, for the status report.
        retired: release ids retired by OS updates.
        removed: release ids the user removed (not reinstalled automatically).
    """

    catalog_version: int = 0
    sequence: int = 0
    deferred: list[dict[str, Any]] = field(default_factory=list)
    last_check: str | None = None
    last_result: dict[str, Any] | None = None
    installed: dict[str, dict[str, Any]] = field(default_factory=dict)
    retired: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentState:
        """Load, ignoring unknown keys (newer agent versions may add some)."""
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


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
        return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()

    # trusted root ------------------------------------------------------------------

    def trusted_root(self) -> bytes | None:
        """The trusted root envelope bytes, or None when not provisioned."""
        return self._read("root.json")

    def save_root(self, data: bytes) -> None:
        """Store a (verified) root envelope as the trusted root."""
        self._write("root.json", data)

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

    def save_state(self, state: AgentState) -> None:
        """Store the state."""
        self._write("state.json", self._json(asdict(state)))


# --- decisions -----------------------------------------------------------------------------


@dataclass
class Decision:
    """What the agent does with one catalog release, and why.

    Attributes:
        release_id: e.g. ``"26.1 (a)"``.
        action: ``install``, ``defer``, ``skip``, ``active`` or ``step-back``.
        code: machine-readable reason: ``install``, ``deferred``, ``wrong_build``,
            ``withdrawn``, ``not_newer``, ``policy``, ``superseded``, ``rejected``,
            ``active``, ``active_withdrawn``, ``step_back_target``.
        reason: one sentence for people.
        published: publication time from the catalog.
        sequence: release sequence number.
        cves: CVE ids the release fixes.
    """

    release_id: str
    action: str
    code: str
    reason: str
    published: str = ""
    sequence: int = 0
    cves: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = asdict(self)
        d["cves"] = list(self.cves)
        return d


@dataclass
class CheckResult:
    """Everything one check found (``Agent.last_check`` after :meth:`Agent.check`)."""

    time: str
    os_version: str
    build: str
    active_release: str | None
    catalog_version: int
    auto_install: AutoInstallDecision
    decisions: list[Decision]
    install: Any = None  # verified ReleaseManifest to install, or None
    step_back: dict[str, Any] | None = None  # {"from", "to", "how", "manifest"}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        sb = None
        if self.step_back is not None:
            sb = {k: v for k, v in self.step_back.items() if k != "manifest"}
        return {
            "time": self.time,
            "os_version": self.os_version,
            "build": self.build,
            "active_release": self.active_release,
            "catalog_version": self.catalog_version,
            "auto_install": self.auto_install.to_dict(),
            "decisions": [d.to_dict() for d in self.decisions],
            "install": self.install.release_id if self.install is not None else None,
            "step_back": sb,
        }


# --- the agent -----------------------------------------------------------------------------


class Agent:
    """The on-device update agent for one preboot volume and one repository.

    Args:
        preboot: a :class:`bsipatch.device.preboot.Preboot` or its directory.
        repo: a :class:`bsipatch.agent.download.Repository`, an ``http(s)://`` URL or a directory;
            ``None`` for the operations that need none (settings, uninstall, os_update).
        now: fixed current time (tests, demo); ``None`` reads the clock at each call.
        trusted_root: root envelope bytes to trust when none is stored yet
            (provisioning); ignored once the device has a trusted root.
        timeout: HTTP stall timeout in seconds.
        retries: HTTP retries per file.
        progress: ``(done, total)`` callback for installs.
        cafile: CA certificates (PEM) to trust for an ``https://`` repository.

    Raises:
        StateError: ``preboot`` is not a preboot directory.
        FetchError: ``repo`` is not a usable location.

    Example:
        >>> agent = Agent("/preboot", "https://updates.example.com/bsi/")  # doctest: +SKIP
        >>> for d in agent.check():  # doctest: +SKIP
        ...     print(d.release_id, d.action, d.reason)
        >>> report = agent.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        preboot: Any,
        repo: Repository | str | PathLike | None,
        *,
        now: datetime | None = None,
        trusted_root: bytes | None = None,
        timeout: float = 15.0,
        retries: int = 4,
        progress: Callable[[int, int], None] | None = None,
        cafile: PathLike | None = None,
    ):
        from bsipatch.device.preboot import Preboot

        self.preboot = preboot if isinstance(preboot, Preboot) else Preboot(preboot)
        self._repo: Repository | None = (
            repo
            if repo is None or isinstance(repo, Repository)
            else open_repository(repo, timeout=timeout, retries=retries, cafile=cafile)
        )
        self._now = now
        self.progress = progress
        self.store = AgentStore(self.preboot.path)
        if trusted_root is not None and self.store.trusted_root() is None:
            self.store.save_root(bytes(trusted_root))
        self.last_check: CheckResult | None = None

    # helpers ---------------------------------------------------------------------------

    def now(self) -> datetime:
        """The agent's notion of the current time."""
        return self._now if self._now is not None else utc_now()

    @property
    def repo(self) -> Repository:
        """The repository.

        Raises:
            StateError: the agent was made without one.
        """
        if self._repo is None:
            raise StateError("this operation needs a repository (--repo URL|DIR)")
        return self._repo

    @property
    def stats(self) -> FetchStats:
        """Download counters of the repository."""
        return self.repo.stats

    def auto_install(self) -> AutoInstallDecision:
        """Whether releases install automatically now, and who decided (policy or user)."""
        return decide_auto_install(self.store.policy(), self.store.settings().auto_install)

    def _verifier(self, state: AgentState) -> Any:
        """A Verifier on the stored root, advanced through any rotations the repo has."""
        from bsipatch.trust.verify import MAX_ROOT_SIZE, Verifier

        root_bytes = self.store.trusted_root()
        if root_bytes is None:
            raise StateError(
                f"{self.store.dir}: no trusted root provisioned; pass the vendor's root.json "
                "(--root FILE) once"
            )
        v = Verifier(root_bytes, now=self.now(), allow_expired_root=True)
        from bsipatch.trust.repository import root_relpath

        rotated = False
        for _ in range(MAX_ROOT_CHAIN):
            nxt = self.repo.fetch_optional(root_relpath(v.root.version + 1), max_size=MAX_ROOT_SIZE)
            if nxt is None:
                break
            v.update_root(nxt)
            root_bytes = nxt
            rotated = True
        if rotated:
            self.store.save_root(root_bytes)
            roles = v.rotated_roles
            if "catalog" in roles:
                state.catalog_version = 0
            if "release" in roles:
                state.sequence = 0
        # a fresh Verifier re-checks the final root's expiry
        return Verifier(root_bytes, now=self.now())

    # check -----------------------------------------------------------------------------

    def check(self) -> list[Decision]:
        """Fetch and verify the catalog; decide what applies now and why not for the rest.

        Records the time and result (and any deferred releases) in the agent state, also
        when it fails.

        Returns:
            One :class:`Decision` per catalog release (oldest first); the full result is
            in :attr:`last_check`.

        Raises:
            MetadataError: the root, catalog or a manifest is not genuine or current.
            FetchError: the repository cannot be read.
            StateError: no trusted root is provisioned.
        """
        state = self.store.state()
        try:
            result = self._check(state)
        except BsipatchError as exc:
            state.last_check = format_time(self.now())
            state.last_result = {"ok": False, "summary": "check failed", "error": str(exc)}
            self.store.save_state(state)
            raise
        self.last_check = result
        state.last_check = result.time
        state.last_result = {"ok": True, "summary": _summary(result), "error": None}
        state.deferred = [
            {
                "release_id": d.release_id,
                "published": d.published,
                "reason": d.reason,
                "cves": list(d.cves),
            }
            for d in result.decisions
            if d.action == DEFER
        ]
        self.store.save_state(state)
        return result.decisions

    def _check(self, state: AgentState) -> CheckResult:
        from bsipatch.trust.verify import MAX_CATALOG_SIZE

        verifier = self._verifier(state)
        catalog = verifier.verify_catalog(
            self.repo.fetch("catalog.json", max_size=MAX_CATALOG_SIZE),
            min_version=state.catalog_version,
        )
        state.catalog_version = max(state.catalog_version, catalog.version)

        status = self.preboot.status()
        build, os_version = status["build"], status["os_version"]
        active_id = status.get("active_release")
        installed = list(status.get("installed_releases") or [])
        # hook (issue 16): releases the device fell back from are not reinstalled by itself
        fallen_back = {f["release"] for f in (status.get("health") or {}).get("fallen_back", [])}
        policy = self.store.policy()
        auto = decide_auto_install(policy, self.store.settings().auto_install)
        result = CheckResult(
            time=format_time(self.now()),
            os_version=os_version,
            build=build,
            active_release=active_id,
            catalog_version=catalog.version,
            auto_install=auto,
            decisions=[],
        )

        active_entry = catalog.get(active_id) if active_id else None
        active_seq = 0
        if active_id:
            if active_entry is not None:
                active_seq = active_entry.sequence
            else:
                active_seq = int(state.installed.get(active_id, {}).get("sequence", 0))

        decisions: dict[str, Decision] = {}
        candidates = []
        for e in catalog.releases:

            def mk(action: str, code: str, reason: str, e: Any = e) -> Decision:
                return Decision(e.release_id, action, code, reason, e.published, e.sequence, e.cves)

            if build not in e.builds:
                decisions[e.release_id] = mk(
                    SKIP,
                    "wrong_build",
                    f"for OS {e.os_version} build(s) {', '.join(e.builds)}; this device runs "
                    f"{os_version} ({build})",
                )
            elif e.release_id == active_id:
                if e.withdrawn:
                    decisions[e.release_id] = mk(
                        ACTIVE, "active_withdrawn", "active, but withdrawn by the vendor"
                    )
                else:
                    decisions[e.release_id] = mk(ACTIVE, "active", "installed and active")
            elif e.withdrawn:
                decisions[e.release_id] = mk(SKIP, "withdrawn", "withdrawn by the vendor")
            elif e.release_id in fallen_back:
                decisions[e.release_id] = mk(
                    SKIP,
                    "fallen_back",
                    "the device fell back from it by itself (not confirmed healthy); "
                    "not reinstalled automatically",
                )
            elif e.release_id in state.removed:
                decisions[e.release_id] = mk(
                    SKIP, "removed", "removed by the user; not reinstalled automatically"
                )
            elif e.sequence <= active_seq:
                decisions[e.release_id] = mk(
                    SKIP, "not_newer", f"older than the active release {active_id}"
                )
            else:
                ok, why = policy.allows_release(e.release_id)
                if not ok:
                    decisions[e.release_id] = mk(SKIP, "policy", why)
                else:
                    candidates.append(e)

        candidates.sort(key=lambda e: e.sequence)
        comps = list(self.preboot.components())
        chosen = None
        for e in reversed(candidates):
            if chosen is not None:
                decisions[e.release_id] = Decision(
                    e.release_id,
                    SKIP,
                    "superseded",
                    f"superseded by {chosen.release_id} (releases are cumulative)",
                    e.published,
                    e.sequence,
                    e.cves,
                )
                continue
            try:
                manifest = self._fetch_manifest(verifier, e, build, comps, active_seq)
            except MetadataError as exc:
                decisions[e.release_id] = Decision(
                    e.release_id, SKIP, "rejected", str(exc), e.published, e.sequence, e.cves
                )
                continue
            chosen = e
            if auto.enabled:
                result.install = manifest
                decisions[e.release_id] = Decision(
                    e.release_id,
                    INSTALL,
                    "install",
                    f"applies to {os_version} ({build}); installing ({auto.reason})",
                    e.published,
                    e.sequence,
                    e.cves,
                )
            else:
                decisions[e.release_id] = Decision(
                    e.release_id,
                    DEFER,
                    "deferred",
                    f"applies, but automatic install is off ({auto.reason}); "
                    "it arrives with the next OS update",
                    e.published,
                    e.sequence,
                    e.cves,
                )

        # withdrawal of the active release: step back when nothing newer replaces it
        if active_entry is not None and active_entry.withdrawn and chosen is None:
            if auto.enabled:
                result.step_back = self._plan_step_back(
                    verifier, catalog, active_entry, installed, build, comps, policy, decisions
                )
            else:
                decisions[str(active_id)].reason = (
                    "active, but withdrawn by the vendor; automatic install is off "
                    f"({auto.reason}), so the device stays on it until it is uninstalled"
                )

        result.decisions = [decisions[e.release_id] for e in catalog.releases]
        return result

    def _fetch_manifest(
        self, verifier: Any, entry: Any, build: str, comps: list[str], min_sequence: int
    ) -> Any:
        data = self.repo.fetch(entry.manifest_path, max_size=entry.manifest_size)
        return verifier.verify_manifest(
            data,
            entry,
            device_build=build,
            min_sequence=min_sequence,
            device_components=comps,
        )

    def _plan_step_back(
        self,
        verifier: Any,
        catalog: Any,
        active_entry: Any,
        installed: list[str],
        build: str,
        comps: list[str],
        policy: Policy,
        decisions: dict[str, Decision],
    ) -> dict[str, Any]:
        """Choose where to go from a withdrawn active release: the newest older release
        that is not withdrawn (kept for rollback, or installable), else the base images."""
        previous = installed[-2] if len(installed) > 1 else None
        older = sorted(
            (
                e
                for e in catalog.for_build(build)
                if e.sequence < active_entry.sequence
                and not e.withdrawn
                and policy.allows_release(e.release_id)[0]
            ),
            key=lambda e: e.sequence,
            reverse=True,
        )
        plan: dict[str, Any] = {"from": active_entry.release_id, "to": None, "how": "uninstall"}
        for e in older:
            if e.release_id == previous:
                plan.update(to=e.release_id, how="rollback")
                break
            if e.release_id in installed:
                continue  # kept deeper in the chain; reached by rollbacks, not reinstall
            try:
                # The signed catalog itself sends the device back: the older release is
                # allowed even though its sequence is below the one installed.
                manifest = self._fetch_manifest(verifier, e, build, comps, 0)
            except MetadataError as exc:
                decisions[e.release_id].reason += f"; cannot step back to it: {exc}"
                continue
            plan.update(to=e.release_id, how="install", manifest=manifest)
            break
        target = plan["to"] or "the base images"
        decisions[active_entry.release_id] = Decision(
            active_entry.release_id,
            STEP_BACK,
            "active_withdrawn",
            f"withdrawn by the vendor; stepping back to {target} ({plan['how']})",
            active_entry.published,
            active_entry.sequence,
            active_entry.cves,
        )
        if plan["to"] is not None:
            d = decisions[plan["to"]]
            d.action, d.code = STEP_BACK, "step_back_target"
            d.reason = "newest release that is not withdrawn; the device steps back to it"
        return plan

    # run -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Check, then install what applies (or step back from a withdrawn release).

        Returns:
            ``{"check": CheckResult dict, "installed": install report or None,
            "step_back": report or None, "downloaded": bytes, "cpu_seconds": float,
            "fetch": FetchStats dict}``.

        Raises:
            MetadataError, FetchError, PatchError, SealError, StagingError: the device
            stays on its active (verified) images; the error is recorded as the last
            result.
            LockedError: another process is changing the preboot volume.
        """
        with self.preboot.lock():  # one agent at a time; install/rollback re-enter it
            return self._run()

    def _run(self) -> dict[str, Any]:
        cpu0 = time.process_time()
        bytes0 = self.repo.stats.bytes_received
        self.check()
        result = self.last_check
        assert result is not None
        report: dict[str, Any] = {
            "check": result.to_dict(),
            "installed": None,
            "step_back": None,
        }
        state = self.store.state()
        try:
            if result.install is not None:
                report["installed"] = self._install(result.install, state)
            elif result.step_back is not None:
                report["step_back"] = self._step_back(result.step_back, state)
        except BsipatchError as exc:
            state.last_result = {
                "ok": False,
                "summary": f"install failed; still on {result.active_release or 'base images'}",
                "error": str(exc),
            }
            self.store.save_state(state)
            raise
        if report["installed"] is not None:
            r = report["installed"]
            state.last_result = {
                "ok": True,
                "summary": f"installed {r['release']}",
                "error": None,
            }
            state.deferred = [d for d in state.deferred if d["release_id"] != r["release"]]
        elif report["step_back"] is not None:
            sb = report["step_back"]
            state.last_result = {
                "ok": True,
                "summary": f"stepped back from withdrawn {sb['from']} to "
                f"{sb['to'] or 'the base images'}",
                "error": None,
            }
        self.store.save_state(state)
        report["downloaded"] = self.repo.stats.bytes_received - bytes0
        report["cpu_seconds"] = time.process_time() - cpu0
        report["fetch"] = self.repo.stats.to_dict()
        return report

    def _open_patch_fn(self, streams: list[PatchStream]) -> Callable[[Any], BinaryIO]:
        def open_patch(component: Any) -> BinaryIO:
            s = self.repo.open_patch(
                component.patch.path, size=int(component.patch.size), sha256=component.patch.sha256
            )
            streams.append(s)
            return s  # type: ignore[return-value]

        return open_patch

    def _install(self, manifest: Any, state: AgentState) -> dict[str, Any]:
        from bsipatch.device.install import install_release

        streams: list[PatchStream] = []
        try:
            out = install_release(
                self.preboot, manifest, self._open_patch_fn(streams), progress=self.progress
            )
        finally:
            for s in streams:
                s.close()
        state.sequence = max(state.sequence, int(manifest.sequence))
        state.installed[manifest.release_id] = _manifest_summary(manifest)
        out = dict(out)
        out["downloaded_patch_bytes"] = sum(s.pos for s in streams)
        out["full_image_bytes"] = sum(int(c.target.size) for c in manifest.components)
        return out

    def _step_back(self, plan: dict[str, Any], state: AgentState) -> dict[str, Any]:
        from bsipatch.device.install import rollback, uninstall

        how = plan["how"]
        if how == "rollback":
            out = rollback(self.preboot)
        elif how == "install":
            out = self._install(plan["manifest"], state)
        else:
            out = uninstall(self.preboot)
        return {"from": plan["from"], "to": plan["to"], "how": how, "result": out}

    # user and MDM operations ------------------------------------------------------------

    def set_auto_install(self, enabled: bool) -> AutoInstallDecision:
        """Set the user's automatic-install switch; returns the effective decision."""
        self.store.save_settings(Settings(auto_install=bool(enabled)))
        return self.auto_install()

    def apply_policy(self, document: bytes) -> Policy:
        """Apply an MDM policy document whole, or raise PolicyError and keep the old one."""
        return self.store.save_policy(document)

    def uninstall(self) -> dict[str, Any]:
        """The user removes the installed releases (back to the base images).

        Raises:
            PolicyDenied: MDM forbids it (``RapidSecurityResponse.EnableRollback`` false).
        """
        from bsipatch.device.install import uninstall

        if not self.store.policy().rollback_allowed:
            raise PolicyDenied(
                "device management forbids removing security releases "
                "(RapidSecurityResponse.EnableRollback = false)"
            )
        out = uninstall(self.preboot)
        self._note_removed(out.get("removed", []))
        return out

    def _note_removed(self, release_ids: list[Any]) -> None:
        state = self.store.state()
        for rid in release_ids:
            if rid and rid not in state.removed:
                state.removed.append(str(rid))
        self.store.save_state(state)

    def rollback(self) -> dict[str, Any]:
        """The user goes back one release (PolicyDenied as for :meth:`uninstall`)."""
        from bsipatch.device.install import rollback

        if not self.store.policy().rollback_allowed:
            raise PolicyDenied(
                "device management forbids removing security releases "
                "(RapidSecurityResponse.EnableRollback = false)"
            )
        out = rollback(self.preboot)
        self._note_removed([out.get("from")])
        return out

    def os_update(
        self,
        *,
        os_version: str,
        build: str,
        images: Mapping[str, PathLike],
        activation: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Install the base images of a new OS version; releases of the old one retire.

        Their fixes ship inside the new version, so deferred releases are cleared too.

        Args:
            os_version: e.g. ``"26.2"``.
            build: e.g. ``"23C55"``.
            images: component name -> new base image file.
            activation: component name -> activation; defaults to the current ones.

        Returns:
            ``{"os_version", "build", "retired": [release ids], "deferred_cleared": [...]}``.
        """
        from bsipatch.device.install import os_update

        if activation is None:
            current = self.preboot.components()
            activation = {name: current.get(name, "reboot") for name in images}
        out = dict(
            os_update(
                self.preboot,
                os_version=os_version,
                build=build,
                images=images,
                activation=activation,
                progress=self.progress,
            )
        )
        state = self.store.state()
        out["deferred_cleared"] = [d["release_id"] for d in state.deferred]
        state.deferred = []
        state.retired = [*state.retired, *out.get("retired", [])]
        state.last_result = {
            "ok": True,
            "summary": f"OS updated to {os_version} ({build})",
            "error": None,
        }
        self.store.save_state(state)
        return out


def _manifest_summary(manifest: Any) -> dict[str, Any]:
    return {
        "release_id": manifest.release_id,
        "os_version": manifest.os_version,
        "supplemental_build": manifest.supplemental_build,
        "published": manifest.published,
        "sequence": int(manifest.sequence),
        "cves": sorted({c.id for comp in manifest.components for c in comp.cves}),
    }


def _summary(result: CheckResult) -> str:
    if result.install is not None:
        return f"{result.install.release_id} applies"
    if result.step_back is not None:
        return f"{result.step_back['from']} withdrawn; step back to " + (
            result.step_back["to"] or "the base images"
        )
    deferred = [d.release_id for d in result.decisions if d.action == DEFER]
    if deferred:
        return f"{', '.join(deferred)} deferred (automatic install off)"
    return "up to date"


__all__ = [
    "ACTIVE",
    "DEFER",
    "INSTALL",
    "SKIP",
    "STEP_BACK",
    "Agent",
    "AgentState",
    "AgentStore",
    "CheckResult",
    "Decision",
    "PolicyError",
    "Settings",
]
