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

Component images are ext4 file systems built with ``mke2fs -d`` when it is
installed, else deterministic tar archives built here in pure Python; their files
are copies of real shared libraries from ``/usr/lib`` when present, else generated
code-like data. No network access beyond 127.0.0.1.

This module only orchestrates the library for the demonstration; it holds no logic
the library relies on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

Out = Callable[[str], None]

OS_VERSION = "26.1"
BUILD = "23B85"
FIXED_TIME = 1_764_000_000  # file times inside the images (deterministic builds)
BLOCK = 4096

# real libraries that make realistic image contents, if this machine has them
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
_ENGINE_LIBS = (
    "libxml2.so.2",
    "libsqlite3.so.0",
    "libharfbuzz.so.0",
    "libfreetype.so.6",
    "libpng16.so.16",
    "libjpeg.so.62",
    "libicuuc.so.72",
    "libxslt.so.1",
)
_SYSTEM_LIBS = (
    "libc.so.6",
    "libm.so.6",
    "libz.so.1",
    "libssl.so.3",
    "libcrypto.so.3",
    "libstdc++.so.6",
)

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


# --- component images ----------------------------------------------------------------------


def _find_lib(name: str) -> Path | None:
    for d in _LIB_DIRS:
        p = Path(d) / name
        if p.is_file():
            return p.resolve()
    return None


def _code_like(seed: int, size: int) -> bytes:
    """Deterministic bytes that look like machine code plus a string table."""
    rng = random.Random(seed)  # noqa: S311 - deterministic demo data, not secrets
    ops = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8))) for _ in range(400)]
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randrange(4, 16)))
        for _ in range(300)
    ]
    out = bytearray(b"\x7fELF\x02\x01\x01" + bytes(9))
    while len(out) < size * 4 // 5:
        out += b"".join(rng.choice(ops) for _ in range(64))
    while len(out) < size:
        out += rng.choice(words).encode() + b"\0"
    return bytes(out[:size])


def _gather(libs: tuple[str, ...], budget: int, seed: int, prefix: str) -> dict[str, bytes]:
    """Files for one image: real libraries up to ``budget`` bytes, else generated."""
    files: dict[str, bytes] = {}
    used = 0
    for name in libs:
        p = _find_lib(name)
        if p is None:
            continue
        data = p.read_bytes()
        if used + len(data) > budget:
            data = data[: max(0, budget - used)]
        if len(data) < 64 << 10:
            break
        files[f"{prefix}/{name}"] = data
        used += len(data)
        if used >= budget:
            break
    i = 0
    while used < budget:
        size = min(budget - used, 1 << 20)
        files[f"{prefix}/lib{prefix.lower()}{i}.so"] = _code_like(seed + i, size)
        used += size
        i += 1
    return files


def _security_fix(files: dict[str, bytes], seed: int) -> dict[str, bytes]:
    """A "security fix" as a rebuilt library looks: one file gets 1.5 kB of new code,
    a dozen changed instructions, and, after the insertion point, the small changes
    of every relative address that now points across it (one byte in ~300)."""
    rng = random.Random(seed)  # noqa: S311 - deterministic demo data, not secrets
    out = dict(files)
    name = sorted(files, key=lambda n: (-len(files[n]), n))[seed % min(2, len(files))]
    data = bytearray(files[name])
    for _ in range(12):
        off = rng.randrange(0, len(data) - 64)
        data[off : off + 16] = bytes(rng.randrange(256) for _ in range(16))
    insert_at = len(data) // 3
    for off in range(insert_at, len(data) - 256, 256):
        if rng.random() < 0.8:
            pos = off + rng.randrange(252)
            data[pos] = (data[pos] + 0x06) & 0xFF  # displacement grew by 1536 = 0x600
    data[insert_at:insert_at] = _code_like(seed * 7919, 1536)
    out[name] = bytes(data)
    return out


def _mke2fs() -> str | None:
    return shutil.which("mke2fs") or shutil.which("mke2fs", path="/usr/sbin:/sbin")


def build_image(
    files: dict[str, bytes], dest: Path, *, label: str, use_mke2fs: bool | None = None
) -> str:
    """Write a component image holding ``files``; returns the format used.

    ext4 via ``mke2fs -d`` (fixed UUID, hash seed and time) when available and
    ``use_mke2fs`` is not False; else a deterministic tar archive padded to 4 KiB.
    """
    tool = _mke2fs() if use_mke2fs is not False else None
    if tool:
        with tempfile.TemporaryDirectory(prefix="bsipatch-demo-tree-") as tree:
            for rel, data in sorted(files.items()):
                p = Path(tree, rel)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
                os.utime(p, (FIXED_TIME, FIXED_TIME))
            for d in sorted({Path(tree, r).parent for r in files}, reverse=True):
                os.utime(d, (FIXED_TIME, FIXED_TIME))
            total = sum(len(d) for d in files.values())
            blocks = (total * 5 // 4 + (2 << 20)) // BLOCK
            uuid = hashlib.sha256(label.encode()).hexdigest()
            uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:32]}"
            env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(FIXED_TIME))
            dest.unlink(missing_ok=True)
            proc = subprocess.run(
                [
                    tool, "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-O", "^has_journal",
                    "-L", label[:16], "-U", uuid, "-E", f"hash_seed={uuid},root_owner=0:0",
                    "-N", "256", "-d", tree, str(dest), str(blocks),
                ],
                env=env,
                capture_output=True,
                check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                return "ext4 (mke2fs -d)"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mtime = FIXED_TIME
            info.mode = 0o755
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    raw += bytes(-len(raw) % BLOCK)
    dest.write_bytes(raw)
    return "tar (built-in, pure Python)"


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
    from bsipatch.agent.agent import Agent
    from bsipatch.agent.status import device_report
    from bsipatch.device.install import boot
    from bsipatch.device.preboot import Preboot
    from bsipatch.errors import BsipatchError
    from bsipatch.trust import signers
    from bsipatch.trust.manifest import Cve
    from bsipatch.trust.publish import ComponentInput, build_release, load_catalog, withdraw
    from bsipatch.trust.tufrepo import init_repository, refresh

    ROLES = signers.ROLES

    def manifest_of(release: Any) -> Any:
        return load_catalog(repo_dir).manifest(release)

    t_start = time.monotonic()
    outcomes: dict[str, Any] = {}

    def head(title: str) -> None:
        out("")
        out(f"== {title}")

    def say(text: str) -> None:
        out(f"   {text}")

    def cost_line(c: Cost) -> None:
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
        say("cost: " + ", ".join(parts))

    out("bsipatch demo: a security fix shipped as a small signed patch to a sealed OS image,")
    out("installed by the device's update agent, activated without a restart, and reversible.")
    out(f"working directory: {root}")

    # -- 1. the vendor's OS images --------------------------------------------------------
    head(f"1. The vendor builds OS {OS_VERSION} ({BUILD}) with two sealed component images")
    engine_budget, system_budget = SCALES[scale]
    v0 = {
        "webkit": _gather(_ENGINE_LIBS, engine_budget, 1, "WebKit"),
        "libsystem": _gather(_SYSTEM_LIBS, system_budget, 2, "System"),
    }
    fix_a = {
        "webkit": _security_fix(v0["webkit"], 11),
        "libsystem": _security_fix(v0["libsystem"], 12),
    }
    fix_b = {"webkit": _security_fix(fix_a["webkit"], 21), "libsystem": fix_a["libsystem"]}
    imgdir = root / "vendor-images"
    imgdir.mkdir()
    img: dict[str, dict[str, Path]] = {}
    fmt = ""
    for tag, tree in (("base", v0), ("a", fix_a), ("b", fix_b)):
        img[tag] = {}
        for name, files in tree.items():
            p = imgdir / f"{name}-{tag}.img"
            fmt = build_image(files, p, label=f"{name}", use_mke2fs=use_mke2fs)
            img[tag][name] = p
    activation = {"webkit": "relaunch", "libsystem": "reboot"}
    role = {
        "webkit": "browser engine, activated when the browser relaunches",
        "libsystem": "system library, activated at the next restart",
    }
    for name in ("webkit", "libsystem"):
        files = v0[name]
        names = sorted(Path(f).name for f in files)
        real = any(_find_lib(n) for n in names)
        say(f"{name:<10} {human(img['base'][name].stat().st_size):>8}  {role[name]}")
        say(f"{'':<10} {'':>8}  files: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            f" ({'copied from this machine' if real else 'generated'})")  # fmt: skip
    say(f"image format: {fmt}")
    outcomes["image_format"] = fmt

    now = datetime.now(timezone.utc).replace(microsecond=0)
    keydir_keys = signers.KeySet({role: [signers.generate("ed25519")] for role in ROLES})
    repo_dir = root / "vendor-repo"
    init_repository(repo_dir, keydir_keys, now=now)
    say(f"vendor TUF repository {repo_dir.name}/ created; keys for roles: {', '.join(ROLES)}")
    say(
        "(root and targets keys stay offline; snapshot and timestamp keys only vouch for freshness)"
    )

    # -- 2. the device ---------------------------------------------------------------------
    head("2. A device ships with those base images on its preboot volume")
    pb_dir = root / "device-preboot"
    pb = Preboot.create(
        pb_dir,
        os_version=OS_VERSION,
        build=BUILD,
        images={n: img["base"][n] for n in activation},
        activation=activation,
    )
    st = pb.status()
    for name, c in st["components"].items():
        say(f"{name:<10} sealed, root hash {str(c['root_hash'])[:16]}...")
    say("the agent trusts the vendor's metadata/1.root.json (provisioned at the factory)")

    with serve_directory(repo_dir) as url:
        agent = Agent(
            pb, url, trusted_root=(repo_dir / "metadata" / "1.root.json").read_bytes(), timeout=10
        )
        meter = _Meter(pb_dir, agent.repo)
        say(f"the vendor's repository is served at {url} (HTTP, this machine only)")

        # -- 3. release (a) ----------------------------------------------------------------
        head(f"3. The vendor publishes security release {OS_VERSION} (a)")
        t0 = time.monotonic()
        m_a = manifest_of(
            build_release(
                repo_dir,
                release_id=f"{OS_VERSION} (a)",
                os_version=OS_VERSION,
                builds=(BUILD,),
                supplemental_build=f"{BUILD}a",
                components=[
                    ComponentInput(
                        "webkit",
                        "relaunch",
                        img["base"]["webkit"],
                        img["a"]["webkit"],
                        (Cve("CVE-2026-43001", "Web content may lead to memory corruption"),),
                    ),
                    ComponentInput(
                        "libsystem",
                        "reboot",
                        img["base"]["libsystem"],
                        img["a"]["libsystem"],
                        (Cve("CVE-2026-43002", "An app may be able to gain elevated privileges"),),
                    ),
                ],
                keys=keydir_keys,
                now=now,
                published=now,
            )
        )
        for c in m_a.components:
            say(
                f"{c.name:<10} patch {human(c.patch.size):>9} for a {human(c.target.size)} image "
                f"({pct(c.patch.size, c.target.size)}); fixes {', '.join(x.id for x in c.cves)}"
            )
        say(f"targets metadata (release + patches) signed and published {m_a.published} "
            f"(diff and seal took {time.monotonic() - t0:.1f} s at the vendor)")  # fmt: skip

        refresh(repo_dir, keydir_keys.only(signers.ONLINE_ROLES), now=now)
        say("repo refresh: timestamp re-signed with the online key only (no offline key)")

        # -- 4. check -----------------------------------------------------------------------
        head("4. The device's agent refreshes its TUF metadata")
        decisions = agent.check()
        for d in decisions:
            say(f"{d.release_id}: {d.action} -- {d.reason}")
        say(f"trust: python-tuf verified root, timestamp, snapshot and targets; targets "
            f"version {agent.last_check.metadata['targets']}")  # fmt: skip

        # -- 5. install (a) -------------------------------------------------------------------
        head(f"5. The agent installs {OS_VERSION} (a): patches stream from HTTP into the applier")
        browser = pb.open_component("webkit")  # a running browser holds its engine open
        say("(meanwhile a browser is running: it has the engine image open)")
        full = sum(int(c.target.size) for c in m_a.components)
        with meter.measure("install (a)", full) as cost:
            report = agent.run()
        inst = report["installed"]
        say(f"installed {inst['release']}: components {', '.join(inst['changed'])}")
        say("each patch was checked against the signed size and SHA-256 as it arrived, and")
        say("each new image against its signed seal, before one atomic switch activated it")
        cost_line(cost)
        outcomes["installed_a"] = inst["release"]

        # -- 6. activation ----------------------------------------------------------------------
        head("6. Activation: the browser engine by relaunch, the system library at restart")
        old_view = _read_all(browser)
        browser.close()
        new_view = _read_all(pb.open_component("webkit"))
        same_old = old_view == _sha(img["base"]["webkit"])
        now_new = new_view == _sha(img["a"]["webkit"])
        say(f"the running browser still reads the old engine: {'yes' if same_old else 'NO'}")
        say(f"a relaunched browser reads the fixed engine:    {'yes' if now_new else 'NO'}")
        pending = [p["component"] for p in pb.status()["pending"]]
        say(f"waiting for restart: {', '.join(pending) or 'nothing'}")
        say("the device restarts ...")
        with meter.measure("restart (activate reboot components)") as cost:
            boot(pb)
        pending_after = [p["component"] for p in pb.status()["pending"]]
        say(f"after restart, pending: {', '.join(pending_after) or 'nothing'}")
        outcomes["relaunch_old_view_kept"] = same_old
        outcomes["relaunch_new_view"] = now_new
        outcomes["pending_before_restart"] = pending
        outcomes["pending_after_restart"] = pending_after

        # -- 7. status ---------------------------------------------------------------------------
        head("7. What device management sees (bsipatch agent status --json)")
        rep = device_report(pb)
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
        outcomes["status"] = {
            k: rep[k]
            for k in ("OSVersion", "BuildVersion", "SupplementalOSVersionExtra",
                      "SupplementalBuildVersion")
        }  # fmt: skip

        # -- 8. release (b), first with automatic install off -------------------------------------
        head(f"8. The vendor publishes {OS_VERSION} (b); the user has automatic install off")
        later = now + timedelta(seconds=1)
        m_b = manifest_of(
            build_release(
                repo_dir,
                release_id=f"{OS_VERSION} (b)",
                os_version=OS_VERSION,
                builds=(BUILD,),
                supplemental_build=f"{BUILD}b",
                components=[
                    ComponentInput(
                        "webkit",
                        "relaunch",
                        img["base"]["webkit"],
                        img["b"]["webkit"],
                        (
                            Cve(
                                "CVE-2026-43003",
                                "A website may be able to bypass same-origin policy",
                            ),
                        ),
                    ),
                    ComponentInput(
                        "libsystem", "reboot", img["base"]["libsystem"], img["b"]["libsystem"]
                    ),
                ],
                keys=keydir_keys,
                now=now,
                published=later,
            )
        )
        agent.set_auto_install(False)
        for d in agent.check():
            if d.release_id.endswith("(b)"):
                say(f"{d.release_id}: {d.action} -- {d.reason}")
        outcomes["deferred"] = [d["release_id"] for d in agent.store.state().deferred]
        agent.set_auto_install(True)
        say("the user turns automatic install back on")

        # -- 9. tampering ----------------------------------------------------------------------
        head("9. Meanwhile someone tampers with the download: one byte of a patch is flipped")
        patch_path = repo_dir / m_b.component("webkit").patch.path
        original = patch_path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01
        patch_path.write_bytes(bytes(damaged))
        try:
            agent.run()
            refused = None
        except BsipatchError as exc:
            refused = f"{type(exc).__name__}: {exc}"
        finally:
            patch_path.write_bytes(original)
        verified = True
        for n in activation:
            with pb.open_component(n) as reader:  # raises if any block fails its seal
                verified = verified and bool(_read_all(reader))
        say(f"refused -- {refused}")
        say(f"the device is still on {pb.status()['active_release']}, every block of its "
            f"images verified: {'yes' if verified else 'NO'}")  # fmt: skip
        outcomes["tampered_refused"] = refused is not None
        outcomes["after_tamper"] = pb.status()["active_release"]
        say("the genuine patch is back; the agent runs again")
        with meter.measure("install (b)", full) as cost:
            report = agent.run()
        say(f"installed {report['installed']['release']}; the device keeps (a) for rollback")
        cost_line(cost)
        outcomes["installed_b"] = report["installed"]["release"]

        # -- 9. withdrawal ----------------------------------------------------------------------
        head(f"10. The vendor withdraws {OS_VERSION} (b) (say it broke a web site)")
        withdraw(repo_dir, f"{OS_VERSION} (b)", keydir_keys, now=later)
        with meter.measure("step back from withdrawn (b)") as cost:
            report = agent.run()
        sb = report["step_back"]
        say(f"the agent sees (b) withdrawn and steps back to {sb['to'] or 'the base images'} "
            f"by {sb['how']} -- no download, no patching")  # fmt: skip
        cost_line(cost)
        outcomes["after_withdrawal"] = pb.status()["active_release"]

        # -- 10. uninstall --------------------------------------------------------------------
        head("11. The user uninstalls the security release (a regression, say)")
        with meter.measure("uninstall to base") as cost:
            agent.uninstall()
            boot(pb)
        st = pb.status()
        exact = all(_sha(pb.component_path(n)) == _sha(img["base"][n]) for n in activation)
        say(f"active release: {st['active_release'] or 'none -- base images of ' + OS_VERSION}")
        say(f"images byte-identical to the OS's base images: {'yes' if exact else 'NO'}")
        cost_line(cost)
        outcomes["after_uninstall"] = st["active_release"]
        outcomes["base_restored"] = exact

    # -- summary --------------------------------------------------------------------------------
    head("Summary: what each step cost on the device")
    out(f"   {'step':<36} {'downloaded':>11} {'of images':>10} {'CPU':>7} {'written':>10}")
    for c in meter.costs:
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
    out(f"done in {time.monotonic() - t_start:.1f} s.")
    if keep:
        out(f"look around: bsipatch agent status --preboot {pb_dir}")
        out(f"             bsipatch agent check --preboot {pb_dir} --repo {repo_dir}")
    else:
        out("run with --dir DIR to keep the repository and the device's preboot volume")
    return {
        "image_format": fmt,
        "costs": [c.__dict__ for c in meter.costs],
        "outcomes": outcomes,
    }
