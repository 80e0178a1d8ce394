"""``bsipatch demo``: the whole system end to end, on one machine, explained as it runs.

A vendor builds two component images of "OS 26.1" (a browser engine, activated by
relaunch, and a system library, activated at restart), signs a repository, and
publishes security release ``26.1 (a)``. A device with those base images on its
preboot volume runs the update agent against the repository over HTTP on
127.0.0.1; it installs (a) by streaming the patches into the applier, activates the
browser engine for new launches while a running reader keeps its old view, reports
its status for device management, then installs ``26.1 (b)``, steps back when the
vendor withdraws (b), and finally uninstalls back to the base images. Every step
prints what happened and what it cost: bytes downloaded against the full images,
CPU time, bytes written to the preboot volume.

The component images come from :mod:`bsipatch.cli.demo_images`. Each numbered step
of the narrative is one method of :class:`_Demo`. No network access beyond 127.0.0.1.

This module only orchestrates the library for the demonstration; it holds no logic
the library relies on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bsipatch._time import to_utc, utc_now
from bsipatch.cli.demo_images import (
    ENGINE_LIBS,
    SYSTEM_LIBS,
    build_image,
    find_lib,
    gather,
    security_fix,
)

Out = Callable[[str], None]

OS_VERSION = "26.1"
BUILD = "23B85"

SCALES = {
    # bytes of file data per component image: (engine, system)
    "normal": (6 << 20, 3 << 20),
    "small": (600 << 10, 300 << 10),
}


# --- formatting ----------------------------------------------------------------------------


def human(n: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def pct(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole``."""
    if not whole:
        return "-"
    p = 100 * part / whole
    return f"{p:.2f}%" if p < 1 else f"{p:.1f}%"


# --- measuring costs -----------------------------------------------------------------------


def _allocations(root: Path) -> dict[tuple[int, int], int]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(Path(dirpath, n))
                out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return out


@dataclass
class Cost:
    """What one step cost."""

    step: str
    downloaded: int = 0
    full_images: int = 0
    cpu_seconds: float = 0.0
    written: int = 0
    wall_seconds: float = 0.0


@dataclass
class _Meter:
    preboot_dir: Path
    repo: Any
    costs: list[Cost] = field(default_factory=list)

    @contextlib.contextmanager
    def measure(self, step: str, full_images: int = 0) -> Iterator[Cost]:
        cost = Cost(step, full_images=full_images)
        before = _allocations(self.preboot_dir)
        got0 = self.repo.stats.bytes_received if self.repo is not None else 0
        cpu0, wall0 = time.process_time(), time.monotonic()
        yield cost
        cost.cpu_seconds = time.process_time() - cpu0
        cost.wall_seconds = time.monotonic() - wall0
        if self.repo is not None:
            cost.downloaded = self.repo.stats.bytes_received - got0
        after = _allocations(self.preboot_dir)
        cost.written = sum(v for k, v in after.items() if k not in before)
        self.costs.append(cost)


# --- a tiny static HTTP server for the repository ------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (a refused download) is not news here


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on ``http://127.0.0.1:<free port>/`` for the block."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


# --- the demo ------------------------------------------------------------------------------


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_all(reader: Any) -> str:
    h = hashlib.sha256()
    while chunk := reader.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def run_demo(
    dir: str | os.PathLike[str] | None = None,
    out: Out = print,
    *,
    scale: str = "normal",
    use_mke2fs: bool | None = None,
) -> dict[str, Any]:
    """Run the end-to-end demonstration, printing a narrative with ``out``.

    Args:
        dir: working directory to keep (vendor repository, device preboot volume);
            ``None`` uses a temporary directory that is removed afterwards.
        out: where each line of the narrative goes.
        scale: ``"normal"`` (about 6 MB + 3 MB of files) or ``"small"`` (tests).
        use_mke2fs: force (True) or forbid (False) ext4 images; ``None``: when available.

    Returns:
        A summary: ``{"dir", "image_format", "costs": [...], "outcomes": {...}}``.

    Raises:
        BsipatchError: any step failed (the narrative says which).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}")
    if dir is None:
        with tempfile.TemporaryDirectory(prefix="bsipatch-demo-") as tmp:
            summary = _run(Path(tmp), out, scale, use_mke2fs, False)
            summary["dir"] = None
            return summary
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        from bsipatch.errors import StateError

        raise StateError(f"{root} is not empty; the demo needs an empty or new directory")
    summary = _run(root, out, scale, use_mke2fs, True)
    summary["dir"] = str(root)
    return summary


def _run(root: Path, out: Out, scale: str, use_mke2fs: bool | None, keep: bool) -> dict[str, Any]:
    """Run every step of the narrative in ``root``; return the summary."""
    demo = _Demo(root, out)
    demo.intro()
    demo.vendor_images(scale, use_mke2fs)
    demo.vendor_repository()
    demo.device()
    with serve_directory(demo.repo_dir) as url:
        demo.connect(url)
        demo.release_a()
        demo.check()
        demo.install_a()
        demo.status()
        demo.release_b_deferred()
        demo.tampering()
        demo.withdrawal()
        demo.uninstall()
    demo.summary(keep)
    return {
        "image_format": demo.fmt,
        "costs": [c.__dict__ for c in demo.meter.costs],
        "outcomes": demo.outcomes,
    }


_ROLE_TEXT = {
    "webkit": "browser engine, activated when the browser relaunches",
    "libsystem": "system library, activated at the next restart",
}


class _Demo:
    """The demo's shared state; one method per numbered step of the narrative."""

    def __init__(self, root: Path, out: Out) -> None:
        self.activation = {"webkit": "relaunch", "libsystem": "reboot"}
        self.root = root
        self.out = out
        self.t_start = time.monotonic()
        self.outcomes: dict[str, Any] = {}
        self.img: dict[str, dict[str, Path]] = {}
        self.fmt = ""
        self.now = to_utc(utc_now())
        self.repo_dir = root / "vendor-repo"
        self.pb_dir = root / "device-preboot"
        self.keys: Any = None
        self.full = 0
        self.pb: Any = None
        self.agent: Any = None
        self.meter = _Meter(self.pb_dir, None)
        self.later = self.now + timedelta(seconds=1)
        self.m_b: Any = None

    # --- narration ---------------------------------------------------------------------------

    def head(self, title: str) -> None:
        self.out("")
        self.out(f"== {title}")

    def say(self, text: str) -> None:
        self.out(f"   {text}")

    def cost_line(self, c: Cost) -> None:
        parts = []
        if c.full_images:
            parts.append(
                f"downloaded {human(c.downloaded)} for {human(c.full_images)} of images "
                f"({pct(c.downloaded, c.full_images)})"
            )
        elif c.downloaded:
            parts.append(f"downloaded {human(c.downloaded)}")
        else:
            parts.append("downloaded nothing")
        parts.append(f"CPU {c.cpu_seconds:.2f} s")
        parts.append(f"wrote {human(c.written)} to the preboot volume")
        self.say("cost: " + ", ".join(parts))

    def intro(self) -> None:
        out = self.out
        out("bsipatch demo: a security fix shipped as a small signed patch to a sealed OS image,")
        out("installed by the device's update agent, activated without a restart, and reversible.")
        out(f"working directory: {self.root}")

    # --- the vendor and the device -----------------------------------------------------------

    def vendor_images(self, scale: str, use_mke2fs: bool | None) -> None:
        """1. Base images of OS 26.1 and the images of fixes (a) and (b)."""
        say = self.say
        self.head(
            f"1. The vendor builds OS {OS_VERSION} ({BUILD}) with two sealed component images"
        )
        engine_budget, system_budget = SCALES[scale]
        v0 = {
            "webkit": gather(ENGINE_LIBS, engine_budget, 1, "WebKit"),
            "libsystem": gather(SYSTEM_LIBS, system_budget, 2, "System"),
        }
        fix_a = {
            "webkit": security_fix(v0["webkit"], 11),
            "libsystem": security_fix(v0["libsystem"], 12),
        }
        fix_b = {"webkit": security_fix(fix_a["webkit"], 21), "libsystem": fix_a["libsystem"]}
        imgdir = self.root / "vendor-images"
        imgdir.mkdir()
        for tag, tree in (("base", v0), ("a", fix_a), ("b", fix_b)):
            self.img[tag] = {}
            for name, files in tree.items():
                p = imgdir / f"{name}-{tag}.img"
                self.fmt = build_image(files, p, label=f"{name}", use_mke2fs=use_mke2fs)
                self.img[tag][name] = p
        for name in ("webkit", "libsystem"):
            names = sorted(Path(f).name for f in v0[name])
            real = any(find_lib(n) for n in names)
            size = human(self.img["base"][name].stat().st_size)
            say(f"{name:<10} {size:>8}  {_ROLE_TEXT[name]}")
            say(f"{'':<10} {'':>8}  files: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                f" ({'copied from this machine' if real else 'generated'})")  # fmt: skip
        say(f"image format: {self.fmt}")
        self.outcomes["image_format"] = self.fmt

    def vendor_repository(self) -> None:
        """The vendor's signed repository, one key per role."""
        from bsipatch.trust import signers
        from bsipatch.trust.tufrepo import init_repository

        self.keys = signers.KeySet({role: [signers.generate()] for role in signers.ROLES})
        init_repository(self.repo_dir, self.keys, now=self.now)
        self.say(f"vendor TUF repository {self.repo_dir.name}/, keys: {', '.join(signers.ROLES)}")

    def device(self) -> None:
        """2. A preboot volume holding the base images."""
        from bsipatch.device.preboot import Preboot

        self.head("2. A device ships with those base images on its preboot volume")
        self.pb = Preboot.create(
            self.pb_dir,
            os_version=OS_VERSION,
            build=BUILD,
            images={n: self.img["base"][n] for n in self.activation},
            activation=self.activation,
        )
        for name, c in self.pb.status()["components"].items():
            self.say(f"{name:<10} sealed, root hash {str(c['root_hash'])[:16]}...")
        self.say("the agent trusts the vendor's metadata/1.root.json (provisioned at the factory)")

    def connect(self, url: str) -> None:
        """The device's agent, pointed at the repository served on ``url``."""
        from bsipatch.agent.agent import Agent

        root_json = (self.repo_dir / "metadata" / "1.root.json").read_bytes()
        self.agent = Agent(self.pb, url, trusted_root=root_json, timeout=10)
        self.meter = _Meter(self.pb_dir, self.agent.repo)
        self.say(f"the vendor's repository is served at {url} (HTTP, this machine only)")

    # --- release (a) -------------------------------------------------------------------------

    def _publish(self, tag: str, cves: dict[str, tuple[str, str]], published: datetime) -> Any:
        """Sign and publish release ``26.1 (tag)`` with the CVEs each component fixes."""
        from bsipatch.trust.manifest import Cve
        from bsipatch.trust.publish import ComponentInput, build_release, load_catalog

        components = [
            ComponentInput(
                name,
                self.activation[name],
                self.img["base"][name],
                self.img[tag][name],
                (Cve(*cves[name]),) if name in cves else (),
            )
            for name in ("webkit", "libsystem")
        ]
        release = build_release(
            self.repo_dir,
            release_id=f"{OS_VERSION} ({tag})",
            os_version=OS_VERSION,
            builds=(BUILD,),
            supplemental_build=f"{BUILD}{tag}",
            components=components,
            keys=self.keys,
            now=self.now,
            published=published,
        )
        return load_catalog(self.repo_dir).manifest(release)

    def release_a(self) -> None:
        """3. The vendor diffs, seals and signs release (a)."""
        self.head(f"3. The vendor publishes security release {OS_VERSION} (a)")
        t0 = time.monotonic()
        cves = {
            "webkit": ("CVE-2026-43001", "Web content may lead to memory corruption"),
            "libsystem": ("CVE-2026-43002", "An app may be able to gain elevated privileges"),
        }
        m_a = self._publish("a", cves, self.now)
        for c in m_a.components:
            self.say(
                f"{c.name:<10} patch {human(c.patch.size):>9} for a {human(c.target.size)} image "
                f"({pct(c.patch.size, c.target.size)}); fixes {', '.join(x.id for x in c.cves)}"
            )
        self.say(f"targets metadata (release + patches) signed, published {m_a.published} "
                 f"(diff and seal took {time.monotonic() - t0:.1f} s at the vendor)")  # fmt: skip
        self.full = sum(int(c.target.size) for c in m_a.components)

    def check(self) -> None:
        """4. The agent refreshes its TUF metadata (after a refresh with online keys only)."""
        from bsipatch.trust.tufrepo import refresh

        refresh(self.repo_dir, self.keys.only(("snapshot", "timestamp")), now=self.now)
        self.say("repo refresh: timestamp re-signed with the online key only (no offline key)")
        self.head("4. The device's agent refreshes its TUF metadata")
        for d in self.agent.check():
            self.say(f"{d.release_id}: {d.action} -- {d.reason}")
        assert self.agent.last_check is not None
        self.say(f"trust: python-tuf verified root, timestamp, snapshot and targets; "
                 f"targets version {self.agent.last_check.metadata['targets']}")  # fmt: skip

    def install_a(self) -> None:
        """5. and 6. Install (a) while a browser runs, then activate by relaunch and restart."""
        say = self.say
        self.head(
            f"5. The agent installs {OS_VERSION} (a): patches stream from HTTP into the applier"
        )
        browser = self.pb.open_component("webkit")  # a running browser holds its engine open
        say("(meanwhile a browser is running: it has the engine image open)")
        with self.meter.measure("install (a)", self.full) as cost:
            report = self.agent.run()
        inst = report["installed"]
        say(f"installed {inst['release']}: components {', '.join(inst['changed'])}")
        say("each patch was checked against the signed size and SHA-256 as it arrived, and")
        say("each new image against its signed seal, before one atomic switch activated it")
        self.cost_line(cost)
        self.outcomes["installed_a"] = inst["release"]
        self.activate(browser)

    def activate(self, browser: Any) -> None:
        """6. The running browser keeps its view; a relaunch and a restart switch over."""
        from bsipatch.device.install import boot

        say, pb = self.say, self.pb
        self.head("6. Activation: the browser engine by relaunch, the system library at restart")
        old_view = _read_all(browser)
        browser.close()
        new_view = _read_all(pb.open_component("webkit"))
        same_old = old_view == _sha(self.img["base"]["webkit"])
        now_new = new_view == _sha(self.img["a"]["webkit"])
        say(f"the running browser still reads the old engine: {'yes' if same_old else 'NO'}")
        say(f"a relaunched browser reads the fixed engine:    {'yes' if now_new else 'NO'}")
        pending = [p["component"] for p in pb.status()["pending"]]
        say(f"waiting for restart: {', '.join(pending) or 'nothing'}")
        say("the device restarts ...")
        with self.meter.measure("restart (activate reboot components)"):
            boot(pb)
        pending_after = [p["component"] for p in pb.status()["pending"]]
        say(f"after restart, pending: {', '.join(pending_after) or 'nothing'}")
        self.outcomes["relaunch_old_view_kept"] = same_old
        self.outcomes["relaunch_new_view"] = now_new
        self.outcomes["pending_before_restart"] = pending
        self.outcomes["pending_after_restart"] = pending_after

    def status(self) -> None:
        """7. The status report device management reads."""
        from bsipatch.agent.status import device_report

        say = self.say
        self.head("7. What device management sees (bsipatch agent status --json)")
        rep = device_report(self.pb)
        say(f"OSVersion {rep['OSVersion']}  BuildVersion {rep['BuildVersion']}  "
            f"SupplementalOSVersionExtra {rep['SupplementalOSVersionExtra']}  "
            f"SupplementalBuildVersion {rep['SupplementalBuildVersion']}")  # fmt: skip
        say(f"published {rep['active_release']['published']}; fixes "
            f"{', '.join(rep['active_release']['cves'])}")  # fmt: skip
        for name, c in rep["components"].items():
            say(f"{name:<10} root hash {str(c['root_hash'])[:16]}...  pending: {c['pending']}")
        auto = rep["auto_install"]
        say(f"automatic install {'on' if auto['enabled'] else 'off'}, decided by "
            f"{auto['decided_by']}; last check {rep['last_check']['time']}: "
            f"{rep['last_check']['summary']}")  # fmt: skip
        self.outcomes["status"] = {
            k: rep[k]
            for k in ("OSVersion", "BuildVersion", "SupplementalOSVersionExtra",
                      "SupplementalBuildVersion")
        }  # fmt: skip

    # --- release (b) and after ---------------------------------------------------------------

    def release_b_deferred(self) -> None:
        """8. Release (b) while automatic install is off: deferred, not installed."""
        self.head(f"8. The vendor publishes {OS_VERSION} (b); the user has automatic install off")
        cves = {"webkit": ("CVE-2026-43003", "A website may be able to bypass same-origin policy")}
        self.m_b = self._publish("b", cves, self.later)
        agent = self.agent
        agent.set_auto_install(False)
        for d in agent.check():
            if d.release_id.endswith("(b)"):
                self.say(f"{d.release_id}: {d.action} -- {d.reason}")
        self.outcomes["deferred"] = [d["release_id"] for d in agent.store.state().deferred]
        agent.set_auto_install(True)
        self.say("the user turns automatic install back on")

    def tampering(self) -> None:
        """9. A flipped byte in a patch is refused; the genuine patch then installs."""
        from bsipatch.errors import BsipatchError

        say, pb = self.say, self.pb
        self.head("9. Meanwhile someone tampers with the download: one byte of a patch is flipped")
        patch_path = self.repo_dir / self.m_b.component("webkit").patch.path
        original = patch_path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01
        patch_path.write_bytes(bytes(damaged))
        try:
            self.agent.run()
            refused = None
        except BsipatchError as exc:
            refused = f"{type(exc).__name__}: {exc}"
        finally:
            patch_path.write_bytes(original)
        verified = True
        for n in self.activation:
            with pb.open_component(n) as reader:  # raises if any block fails its seal
                verified = verified and bool(_read_all(reader))
        say(f"refused -- {refused}")
        say(f"the device is still on {pb.status()['active_release']}, every block of its "
            f"images verified: {'yes' if verified else 'NO'}")  # fmt: skip
        self.outcomes["tampered_refused"] = refused is not None
        self.outcomes["after_tamper"] = pb.status()["active_release"]
        say("the genuine patch is back; the agent runs again")
        with self.meter.measure("install (b)", self.full) as cost:
            report = self.agent.run()
        say(f"installed {report['installed']['release']}; the device keeps (a) for rollback")
        self.cost_line(cost)
        self.outcomes["installed_b"] = report["installed"]["release"]

    def withdrawal(self) -> None:
        """10. The vendor withdraws (b); the agent steps back without downloading."""
        from bsipatch.trust.publish import withdraw

        self.head(f"10. The vendor withdraws {OS_VERSION} (b) (say it broke a web site)")
        withdraw(self.repo_dir, f"{OS_VERSION} (b)", self.keys, now=self.later)
        with self.meter.measure("step back from withdrawn (b)") as cost:
            report = self.agent.run()
        sb = report["step_back"]
        self.say(f"the agent sees (b) withdrawn and steps back to {sb['to'] or 'the base images'} "
                 f"by {sb['how']} -- no download, no patching")  # fmt: skip
        self.cost_line(cost)
        self.outcomes["after_withdrawal"] = self.pb.status()["active_release"]

    def uninstall(self) -> None:
        """11. The user uninstalls; the images are the base images again, byte for byte."""
        from bsipatch.device.install import boot

        pb = self.pb
        self.head("11. The user uninstalls the security release (a regression, say)")
        with self.meter.measure("uninstall to base") as cost:
            self.agent.uninstall()
            boot(pb)
        st = pb.status()
        base = self.img["base"]
        exact = all(_sha(pb.component_path(n)) == _sha(base[n]) for n in self.activation)
        self.say(
            f"active release: {st['active_release'] or 'none -- base images of ' + OS_VERSION}"
        )
        self.say(f"images byte-identical to the OS's base images: {'yes' if exact else 'NO'}")
        self.cost_line(cost)
        self.outcomes["after_uninstall"] = st["active_release"]
        self.outcomes["base_restored"] = exact

    def summary(self, keep: bool) -> None:
        """The cost table and the closing lines."""
        out = self.out
        self.head("Summary: what each step cost on the device")
        out(f"   {'step':<36} {'downloaded':>11} {'of images':>10} {'CPU':>7} {'written':>10}")
        for c in self.meter.costs:
            share = pct(c.downloaded, c.full_images) if c.full_images else ""
            out(f"   {c.step:<36} {human(c.downloaded):>11} {share:>10} {c.cpu_seconds:>6.2f}s "
                f"{human(c.written):>10}")  # fmt: skip
        out("")
        out("")
        out("   In short: the fix travelled as a patch of a fraction of a percent of the images,")
        out("   was checked against signed metadata while it streamed, produced images whose")
        out("   seals were verified before one atomic switch, took effect for the browser engine")
        out("   at its next launch, and could be withdrawn or removed without downloading again.")
        out("")
        out(f"done in {time.monotonic() - self.t_start:.1f} s.")
        if keep:
            out(f"look around: bsipatch agent status --preboot {self.pb_dir}")
            out(f"             bsipatch agent check --preboot {self.pb_dir} --repo {self.repo_dir}")
        else:
            out("run with --dir DIR to keep the repository and the device's preboot volume")
