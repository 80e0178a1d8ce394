"""The update agent's executor: refresh trust, plan, install or step back, record.

What a device runs periodically. :meth:`Agent.check` refreshes the TUF metadata through
:func:`bsipatch.trust.client.refresh` (every trust decision is python-tuf's), asks the
pure planner :func:`bsipatch.agent.plan.plan` what to do with every release and records
the result. :meth:`Agent.run` then does it: streams each patch from the repository
straight into :func:`bsipatch.device.install.install_release` (bounded by the target's
length, checked against its SHA-256), or steps back from a release the targets role
withdrew. :meth:`Agent.install` is the manual install, checked against the same trusted
metadata and the device's floor.

Trusted metadata and the release floor are saved together in one atomic write
(:class:`bsipatch.agent.state.AgentStore`). This module decides nothing about trust or
about what applies; it orchestrates, and reads the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from bsipatch._crashpoints import crashpoint
from bsipatch._io import PathLike
from bsipatch._time import format_time, utc_now
from bsipatch.agent.download import FetchStats, PatchStream, Repository, open_repository
from bsipatch.agent.limits import DEFAULT_TIMEOUT, Limits
from bsipatch.agent.plan import (
    DEFER,
    Decision,
    DeviceView,
    Plan,
    StepBack,
    check_manual,
    floor_after_step_back,
    plan,
)
from bsipatch.agent.policy import AutoInstallDecision, Policy, decide_auto_install
from bsipatch.agent.runlock import run_lock
from bsipatch.agent.state import AgentState, AgentStore, Settings
from bsipatch.device.preboot import Preboot
from bsipatch.errors import BsipatchError, PolicyDenied, StateError
from bsipatch.trust.client import RefreshResult, refresh
from bsipatch.trust.manifest import ReleaseManifest
from bsipatch.trust.releases import Catalog

__all__ = ["Agent", "CheckResult"]


@dataclass
class CheckResult:
    """Everything one check found (``Agent.last_check`` after :meth:`Agent.check`)."""

    time: str
    os_version: str
    build: str
    active_release: str | None
    metadata: dict[str, int]
    auto_install: AutoInstallDecision
    plan: Plan
    catalog: Catalog
    fetched: list[str]

    @property
    def decisions(self) -> list[Decision]:
        """One decision per release."""
        return self.plan.decisions

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        sb = self.plan.step_back
        return {
            "time": self.time,
            "os_version": self.os_version,
            "build": self.build,
            "active_release": self.active_release,
            "catalog_version": self.metadata.get("targets", 0),
            "metadata": dict(self.metadata),
            "auto_install": self.auto_install.to_dict(),
            "decisions": [d.to_dict() for d in self.plan.decisions],
            "install": self.plan.install.release_id if self.plan.install is not None else None,
            "step_back": sb.to_dict() if sb is not None else None,
        }


def _summary(manifest: ReleaseManifest) -> dict[str, Any]:
    return {
        "release_id": manifest.release_id,
        "os_version": manifest.os_version,
        "supplemental_build": manifest.supplemental_build,
        "published": manifest.published,
        "sequence": int(manifest.sequence),
        "cves": list(manifest.cves),
    }


class Agent:
    """The on-device update agent for one preboot volume and one repository.

    Args:
        preboot: a :class:`bsipatch.device.preboot.Preboot` or its directory.
        repo: a :class:`bsipatch.agent.download.Repository`, an ``http(s)://`` URL or a
            directory; ``None`` for operations that need none (settings, uninstall).
        now: fixed current time (tests, demo); ``None`` reads the clock at each call.
        trusted_root: the vendor's root metadata to trust when none is stored yet
            (provisioning); ignored once the device trusts a root.
        timeout: HTTP stall timeout in seconds.
        retries: HTTP retries per file.
        progress: ``(done, total)`` callback for installs.
        cafile: CA certificates (PEM) for an ``https://`` repository.
        limits: deadline and minimum average rate of every download
            (:class:`bsipatch.agent.limits.Limits`; the defaults fail a stalled or
            trickling server within seconds).
        on_retry: called with one line of text before each download retry.

    Example:
        >>> agent = Agent("/preboot", "https://updates.example.com/bsi/")  # doctest: +SKIP
        >>> for d in agent.check():  # doctest: +SKIP
        ...     print(d.release_id, d.action, d.reason)
        >>> report = agent.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        preboot: Preboot | PathLike,
        repo: Repository | str | PathLike | None,
        *,
        now: datetime | None = None,
        trusted_root: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 4,
        progress: Callable[[int, int], None] | None = None,
        cafile: PathLike | None = None,
        limits: Limits | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.preboot = preboot if isinstance(preboot, Preboot) else Preboot(preboot)
        self._repo: Repository | None = (
            repo
            if repo is None or isinstance(repo, Repository)
            else open_repository(
                repo,
                timeout=timeout,
                retries=retries,
                cafile=cafile,
                limits=limits,
                on_retry=on_retry,
            )
        )
        self._now = now
        self.progress = progress
        self.store = AgentStore(self.preboot.path)
        if trusted_root is not None:
            self.store.provision(bytes(trusted_root))
        self.last_check: CheckResult | None = None

    def now(self) -> datetime:
        """The agent's notion of the current time."""
        return self._now if self._now is not None else utc_now()

    @property
    def repo(self) -> Repository:
        """The repository (StateError when the agent was made without one)."""
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

    # check -------------------------------------------------------------------------------

    def _refresh(self, state: AgentState) -> RefreshResult:
        stored = state.stored_metadata()
        if stored is None:
            raise StateError(
                f"{self.store.dir}: no trusted root provisioned; pass the vendor's "
                "metadata/1.root.json (--root FILE) once"
            )
        repo = self.repo
        return refresh(stored, lambda p, n: repo.fetch_optional(p, max_size=n), now=self.now())

    def _device(self, state: AgentState, catalog: Catalog | None = None) -> DeviceView:
        st = self.preboot.status()
        active = st.get("active_release")
        floor = state.sequence
        rel = catalog.get(active) if (catalog is not None and active) else None
        if rel is not None:
            floor = max(floor, rel.sequence)
        return DeviceView(
            os_version=st["os_version"],
            build=st["build"],
            active_release=active,
            installed=tuple(st.get("installed_releases") or ()),
            components=tuple(self.preboot.components()),
            floor=floor,
            removed=tuple(state.removed),
            # hook (issue 16): what the device fell back from is not reinstalled by itself
            fallen_back=tuple(
                f["release"] for f in (st.get("health") or {}).get("fallen_back", [])
            ),
        )

    def check(self) -> list[Decision]:
        """Refresh the trusted metadata and decide what applies now (and why not the rest).

        The new metadata, the time and the result are saved in one atomic write, also
        when the check fails (then with ``ok: false`` and the reason, and the metadata
        trusted before).

        Raises:
            MetadataError: TUF refused the metadata (expired, rollback, threshold...).
            FetchError: the repository cannot be read.
            StateError: no trusted root is provisioned.
        """
        state = self.store.state()
        try:
            result = self._check(state)
        except BsipatchError as exc:
            state = self.store.state()
            state.last_check = format_time(self.now())
            state.last_result = {"ok": False, "summary": "check failed", "error": str(exc)}
            self.store.save_state(state)
            raise
        crashpoint("agent.check.verified")  # new metadata verified, not yet saved
        self.last_check = result
        rejected = [d for d in result.plan.decisions if d.code == "rejected"]
        state.last_check = result.time
        state.last_result = {
            "ok": not rejected,
            "summary": result.plan.summary(),
            "error": "; ".join(f"{d.release_id} rejected: {d.reason}" for d in rejected) or None,
        }
        state.deferred = [
            {"release_id": d.release_id, "published": d.published, "reason": d.reason,
             "cves": list(d.cves)}
            for d in result.plan.decisions
            if d.action == DEFER
        ]  # fmt: skip
        self.store.save_state(state)
        return result.plan.decisions

    def _check(self, state: AgentState) -> CheckResult:
        r = self._refresh(state)
        versions = {
            "root": r.root_version,
            "timestamp": r.timestamp_version,
            "snapshot": r.snapshot_version,
            "targets": r.targets_version,
        }
        state.set_metadata(r.stored, versions)
        device = self._device(state, r.catalog)
        state.sequence = device.floor  # self-heals a crash between install and record
        auto = self.auto_install()
        p = plan(r.catalog, device, policy=self.store.policy(), auto=auto)
        return CheckResult(
            time=format_time(self.now()),
            os_version=device.os_version,
            build=device.build,
            active_release=device.active_release,
            metadata=versions,
            auto_install=auto,
            plan=p,
            catalog=r.catalog,
            fetched=r.fetched,
        )

    # run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Check, then install what applies (or step back from a withdrawn release).

        Returns:
            ``{"check", "installed", "step_back", "downloaded", "cpu_seconds", "fetch"}``.

        Raises:
            MetadataError, FetchError, PatchError, SealError, StagingError: the device
            stays on its active images; the error is recorded as the last result.
            LockedError: another agent run is in progress, or another process is
                changing the preboot volume at the moment of activation.

        Downloading and staging hold no preboot lock (rollback, boot and uninstall stay
        available); :func:`bsipatch.device.install.install_release` takes it to activate.
        """
        with run_lock(self.store.dir):  # one agent run at a time
            return self._run()

    def _run(self) -> dict[str, Any]:
        cpu0 = time.process_time()
        bytes0 = self.repo.stats.bytes_received
        self.check()
        result = self.last_check
        assert result is not None
        report: dict[str, Any] = {"check": result.to_dict(), "installed": None, "step_back": None}
        state = self.store.state()
        try:
            if result.plan.install is not None:
                report["installed"] = self._install(result.plan.install, state)
                if result.plan.install_release is not None:  # N->1: what the choice saved
                    choice = result.catalog.patch_saving(
                        result.plan.install_release, result.plan.install
                    )
                    report["installed"]["patch_sources"] = choice
                    report["installed"]["saved_bytes"] = sum(
                        c["saved_bytes"] for c in choice.values()
                    )
                summary = f"installed {report['installed']['release']}"
            elif result.plan.step_back is not None:
                report["step_back"] = self._step_back(result.plan.step_back, result.catalog, state)
                summary = (
                    f"stepped back from withdrawn {result.plan.step_back.from_id} to "
                    f"{result.plan.step_back.to_id or 'the base images'}"
                )
            else:
                summary = ""
        except BsipatchError as exc:
            state.removed = self.store.state().removed  # the user may have removed one meanwhile
            state.last_result = {
                "ok": False,
                "summary": f"install failed; still on {result.active_release or 'base images'}",
                "error": str(exc),
            }
            self.store.save_state(state)
            raise
        if summary:
            state.removed = self.store.state().removed
            state.last_result = {"ok": True, "summary": summary, "error": None}
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

    def _install(self, manifest: ReleaseManifest, state: AgentState) -> dict[str, Any]:
        """Install ``manifest``; raise the floor and record it in ``state`` (not saved)."""
        from bsipatch.device.install import install_release

        streams: list[PatchStream] = []
        try:
            out = install_release(
                self.preboot, manifest, self._open_patch_fn(streams), progress=self.progress
            )
        finally:
            for s in streams:
                s.close()
        if manifest.sequence >= state.sequence:
            state.sequence, state.floor_release = int(manifest.sequence), manifest.release_id
        state.installed[manifest.release_id] = _summary(manifest)
        state.deferred = [d for d in state.deferred if d["release_id"] != manifest.release_id]
        out = dict(out)
        out["downloaded_patch_bytes"] = sum(s.pos for s in streams)
        out["full_image_bytes"] = sum(int(c.target.size) for c in manifest.components)
        return out

    def _step_back(self, step: StepBack, catalog: Catalog, state: AgentState) -> dict[str, Any]:
        from bsipatch.device.install import rollback, uninstall

        if step.how == "rollback":
            out = rollback(self.preboot)
        elif step.how == "install":
            assert step.manifest is not None
            out = self._install(step.manifest, state)
        else:
            out = uninstall(self.preboot)
        state.sequence = floor_after_step_back(catalog, step)
        state.floor_release = step.to_id
        state.overrides.append(
            {"time": format_time(self.now()), "kind": "withdrawal", **step.to_dict()}
        )
        return {**step.to_dict(), "result": out}

    # manual install ----------------------------------------------------------------------

    def install(self, release_id: str, *, allow_older: bool = False) -> dict[str, Any]:
        """Install ``release_id`` by hand, checked against freshly refreshed trusted metadata.

        A release below the device's floor needs ``allow_older`` and is recorded in
        ``overrides``; a withdrawn one is refused.

        Raises:
            RollbackAttack: older than the floor without ``allow_older``.
            WithdrawnRelease, WrongTarget: not installable on this device.
        """
        with run_lock(self.store.dir):  # the preboot lock only to activate
            self.check()
            assert self.last_check is not None
            catalog = self.last_check.catalog
            state = self.store.state()
            device = self._device(state, catalog)
            release, manifest = check_manual(catalog, release_id, device, allow_older)
            older = release.sequence < device.floor
            out = self._install(manifest, state)
            if older:
                state.sequence, state.floor_release = release.sequence, release.release_id
                state.overrides.append(
                    {"time": format_time(self.now()), "kind": "forced_older",
                     "to": release_id, "floor_was": device.floor}
                )  # fmt: skip
            state.last_result = {"ok": True, "summary": f"installed {release_id} by hand",
                                 "error": None}  # fmt: skip
            if release_id in state.removed:
                state.removed.remove(release_id)
            self.store.save_state(state)
            return out

    # user and MDM operations --------------------------------------------------------------

    def set_auto_install(self, enabled: bool) -> AutoInstallDecision:
        """Set the user's automatic-install switch; returns the effective decision."""
        self.store.save_settings(Settings(auto_install=bool(enabled)))
        return self.auto_install()

    def apply_policy(self, document: bytes) -> Policy:
        """Apply an MDM policy document whole, or raise PolicyError and keep the old one."""
        return self.store.save_policy(document)

    def _check_rollback_allowed(self) -> None:
        if not self.store.policy().rollback_allowed:
            raise PolicyDenied(
                "device management forbids removing security releases "
                "(RapidSecurityResponse.EnableRollback = false)"
            )

    def uninstall(self) -> dict[str, Any]:
        """The user removes the installed releases (PolicyDenied when MDM forbids it)."""
        from bsipatch.device.install import uninstall

        self._check_rollback_allowed()
        out = uninstall(self.preboot)
        self._note_removed(out.get("removed", []))
        return out

    def rollback(self) -> dict[str, Any]:
        """The user goes back one release (PolicyDenied as for :meth:`uninstall`)."""
        from bsipatch.device.install import rollback

        self._check_rollback_allowed()
        out = rollback(self.preboot)
        self._note_removed([out.get("from")])
        return out

    def _note_removed(self, release_ids: list[Any]) -> None:
        state = self.store.state()
        for rid in release_ids:
            if rid and rid not in state.removed:
                state.removed.append(str(rid))
        self.store.save_state(state)

    def os_update(
        self,
        *,
        os_version: str,
        build: str,
        images: Mapping[str, PathLike],
        activation: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Install the base images of a new OS version; releases of the old one retire.

        Their fixes ship inside the new version, so deferred releases are cleared.

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
                images=dict(images),
                activation=dict(activation),
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
