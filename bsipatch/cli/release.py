"""CLI commands of the vendor side: keygen, repo init/rotate, release build/withdraw/show,
catalog show.

Thin: parse arguments, load keys, call :mod:`bsipatch.trust.publish`, print. Output never
contains key material: only key ids and file names.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bsipatch.cli._common import add_command, emit, progress_enabled
from bsipatch.cli.progress import Progress
from bsipatch.errors import FormatError, KeyFileError, MetadataError
from bsipatch.trust import publish
from bsipatch.trust.keys import KINDS
from bsipatch.trust.manifest import Cve, ReleaseManifest, parse_time
from bsipatch.trust.repository import Repository
from bsipatch.trust.verify import (
    MAX_MANIFEST_SIZE,
    ROLES,
    Verifier,
    check_signatures,
    parse_envelope,
)

_CVE_SPLIT = re.compile(r",(?=CVE-\d{4}-\d+=)")


def _passphrase(args: argparse.Namespace, attr: str = "passphrase_env") -> str | None:
    var = getattr(args, attr, None)
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        raise KeyFileError(f"environment variable {var} (passphrase) is not set")
    return value


def _now(args: argparse.Namespace) -> datetime:
    text = getattr(args, "now", None)
    return parse_time(text, "--now") if text else datetime.now(timezone.utc).replace(microsecond=0)


def _thresholds(values: list[str] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values or ():
        role, _, n = v.partition("=")
        if role not in ROLES or not n.isdigit() or int(n) < 1:
            raise FormatError(f"--threshold wants ROLE=N with ROLE in {', '.join(ROLES)}: {v!r}")
        out[role] = int(n)
    return out


def _parse_cves(text: str, what: str) -> list[Cve]:
    cves = []
    for item in _CVE_SPLIT.split(text) if text else []:
        cid, sep, desc = item.partition("=")
        if not sep:
            raise FormatError(f"{what}: CVE must be given as CVE-ID=description, got {item!r}")
        cves.append(Cve(id=cid.strip(), description=desc.strip()))
    return cves


def parse_component(spec: str) -> publish.ComponentInput:
    """Parse ``NAME:ACTIVATION:BASE_IMG:NEW_IMG[:CVE-ID=desc,CVE-ID=desc...]``.

    Raises:
        FormatError: too few parts, a bad activation or CVE.
    """
    parts = spec.split(":", 4)
    if len(parts) < 4:
        raise FormatError(
            f"--component wants NAME:ACTIVATION:BASE_IMG:NEW_IMG[:CVE-ID=desc,...], got {spec!r}"
        )
    name, activation, base, new = parts[:4]
    cves = _parse_cves(parts[4], f"component {name}") if len(parts) == 5 else []
    if activation not in ("relaunch", "reboot"):
        raise FormatError(f"component {name}: activation must be relaunch or reboot")
    for p in (base, new):
        if not Path(p).is_file():
            raise FormatError(f"component {name}: image {p} does not exist")
    return publish.ComponentInput(
        name=name, activation=activation, base_image=base, new_image=new, cves=tuple(cves)
    )


class _Bars:
    """One progress bar per publishing step, drawn on stderr."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled
        self.label: str | None = None
        self.bar: Progress | None = None
        self.t0 = time.monotonic()

    def update(self, label: str, done: int, total: int) -> None:
        if label != self.label:
            self.close()
            self.label, self.bar = label, Progress(f"  {label}", enabled=self.enabled)
            self.bar.start = self.t0  # the step began at its log line, not its first callback
        assert self.bar is not None
        self.bar.callback(done, total)

    def log(self, line: str) -> None:
        self.close()
        print(f"  {line}", flush=True)
        self.t0 = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.label, self.bar = None, None


# --- handlers ------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    made = publish.generate_keydir(
        args.out,
        kind=args.type,
        roles=args.role or ROLES,
        count=args.count,
        passphrase=_passphrase(args),
    )
    data = [{"role": r, "file": str(p), "keyid": k} for r, p, k in made]
    emit(
        args,
        {"keys": data},
        [f"{r:8} {k}  {p}" for r, p, k in made],
    )
    return 0


def cmd_repo_init(args: argparse.Namespace) -> int:
    now = _now(args)
    keys = publish.load_keydir(args.keys, _passphrase(args))
    root = publish.init_repository(
        args.repo,
        keys,
        now=now,
        root_expires=now + timedelta(days=args.root_expires_days),
        catalog_expires=now + timedelta(days=args.catalog_expires_days),
        thresholds=_thresholds(args.threshold),
    )
    roles: dict[str, dict[str, Any]] = {
        n: {"keyids": list(r.keyids), "threshold": r.threshold} for n, r in root.roles.items()
    }
    emit(
        args,
        {
            "repo": str(args.repo),
            "root_version": root.version,
            "expires": root.expires,
            "roles": roles,
        },
        [f"initialised {args.repo}: root version 1, expires {root.expires}"]
        + [f"  {n:8} {r['threshold']} of {len(r['keyids'])} key(s)" for n, r in roles.items()],
    )
    return 0


def cmd_repo_rotate(args: argparse.Namespace) -> int:
    now = _now(args)
    old = publish.load_keydir(args.keys, _passphrase(args))
    new = publish.load_keydir(args.new_keys, _passphrase(args, "new_passphrase_env"))
    root = publish.rotate_root(
        args.repo,
        old_root_keys=old["root"],
        new_keys=new,
        now=now,
        expires=now + timedelta(days=args.root_expires_days),
        thresholds=_thresholds(args.threshold),
    )
    lines = [f"root version {root.version} published, expires {root.expires}"]
    data: dict[str, Any] = {"root_version": root.version, "expires": root.expires}
    if args.resign:
        cat = publish.resign(
            args.repo, new, now, catalog_expires=now + timedelta(days=args.catalog_expires_days)
        )
        lines.append(f"re-signed {len(cat.releases)} manifest(s); catalog version {cat.version}")
        data["catalog_version"] = cat.version
    emit(args, data, lines)
    return 0


def cmd_release_build(args: argparse.Namespace) -> int:
    published = parse_time(args.published, "--published") if args.published else _now(args)
    components = [parse_component(s) for s in args.component]
    extra: dict[str, list[Cve]] = {}
    for spec in args.cve or ():
        name, sep, rest = spec.partition(":")
        if not sep:
            raise FormatError(f"--cve wants NAME:CVE-ID=description, got {spec!r}")
        extra.setdefault(name, []).extend(_parse_cves(rest, f"--cve {name}"))
    unknown = set(extra) - {c.name for c in components}
    if unknown:
        raise FormatError(f"--cve names unknown component(s) {', '.join(sorted(unknown))}")
    components = [
        publish.ComponentInput(
            c.name, c.activation, c.base_image, c.new_image, (*c.cves, *extra.get(c.name, ()))
        )
        for c in components
    ]
    keys = publish.load_keydir(args.keys, _passphrase(args))
    quiet = args.quiet or args.json
    bars = _Bars(progress_enabled(args))
    m = publish.build_release(
        args.repo,
        release_id=args.id,
        os_version=args.os_version,
        builds=args.build,
        supplemental_build=args.supplemental_build,
        components=components,
        keys=keys,
        published=published,
        expires=published + timedelta(days=args.expires_days),
        catalog_expires=published + timedelta(days=args.catalog_expires_days),
        store_base_images=not args.no_images,
        threads=args.threads,
        log=None if quiet else bars.log,
        progress=bars.update,
    )
    bars.close()
    lines = [f"published {m.release_id} (sequence {m.sequence}) for build(s) {', '.join(m.builds)}"]
    for c in m.components:
        lines.append(
            f"  {c.name:12} {c.activation:8} patch {c.patch.size} bytes "
            f"(image {c.base.size} -> {c.target.size})  {' '.join(x.id for x in c.cves)}"
        )
    emit(args, m.to_dict(), lines)
    return 0


def cmd_release_withdraw(args: argparse.Namespace) -> int:
    now = _now(args)
    keys = publish.load_keydir(args.keys, _passphrase(args), roles=("catalog",))
    cat = publish.withdraw(
        args.repo,
        args.release_id,
        keys,
        now,
        catalog_expires=now + timedelta(days=args.catalog_expires_days),
    )
    emit(
        args,
        {"withdrawn": args.release_id, "catalog_version": cat.version},
        f"withdrew {args.release_id}; catalog version {cat.version}",
    )
    return 0


def _read_manifest(repo: Repository, root: Any, entry: Any) -> ReleaseManifest:
    data = repo.read(entry.manifest_path, max_size=MAX_MANIFEST_SIZE)
    if len(data) != entry.manifest_size or not hmac.compare_digest(
        hashlib.sha256(data).hexdigest(), entry.manifest_sha256
    ):
        raise MetadataError(f"manifest of {entry.release_id} does not match the catalog entry")
    env = parse_envelope(data, max_size=MAX_MANIFEST_SIZE, what="manifest")
    check_signatures(root, "release", env, f"manifest of {entry.release_id}")
    return ReleaseManifest.from_dict(env.signed)


def _load_verified(args: argparse.Namespace) -> tuple[Repository, Any, Any]:
    repo = Repository(args.repo)
    if args.root:
        root_bytes = Path(args.root).read_bytes()
        v = Verifier(root_bytes, now=_now(args), allow_expired_root=True)
        for n in repo.root_versions():
            if n > v.root.version:
                v.update_root(repo.read_root(n))
        root = v.root
    else:
        root = publish.load_root(repo)
    return repo, root, publish.load_catalog(repo, root)


def cmd_catalog_show(args: argparse.Namespace) -> int:
    repo, root, cat = _load_verified(args)
    now = _now(args)
    entries = cat.for_build(args.build) if args.build else cat.releases
    expired = now >= parse_time(cat.expires)
    out: list[dict[str, Any]] = []
    lines = [
        f"catalog version {cat.version}, expires {cat.expires}"
        + ("  ** EXPIRED **" if expired else "")
        + f"  (root version {root.version})"
    ]
    for e in reversed(entries):  # newest first
        m = _read_manifest(repo, root, e)
        d = e.to_dict()
        d["supplemental_build"] = m.supplemental_build
        d["expires"] = m.expires
        d["component_details"] = [c.to_dict() for c in m.components]
        out.append(d)
        flag = "  WITHDRAWN" if e.withdrawn else ""
        lines.append(
            f"{e.published[:10]}  {e.release_id}  seq {e.sequence}  builds {', '.join(e.builds)}"
            f" -> {m.supplemental_build}{flag}"
        )
        for c in m.components:
            lines.append(f"    {c.name} ({c.activation}), patch {c.patch.size} bytes")
            for cve in c.cves:
                lines.append(f"        {cve.id}: {cve.description}")
    if not entries:
        lines.append("  (no releases)")
    emit(
        args,
        {
            "version": cat.version,
            "expires": cat.expires,
            "expired": expired,
            "root_version": root.version,
            "releases": out,
        },
        lines,
    )
    return 0


def cmd_release_show(args: argparse.Namespace) -> int:
    repo, root, cat = _load_verified(args)
    entry = cat.get(args.release_id)
    if entry is None:
        raise MetadataError(f"the catalog does not list release {args.release_id!r}")
    m = _read_manifest(repo, root, entry)
    d = m.to_dict()
    d["withdrawn"] = entry.withdrawn
    lines = [
        f"{m.release_id}  published {m.published}  sequence {m.sequence}"
        + ("  WITHDRAWN" if entry.withdrawn else ""),
        f"  OS {m.os_version}, builds {', '.join(m.builds)} -> {m.supplemental_build}",
        f"  expires {m.expires}",
    ]
    for c in m.components:
        lines.append(f"  {c.name} ({c.activation})")
        lines.append(f"    base   {c.base.root_hash}  {c.base.size} bytes")
        lines.append(f"    target {c.target.root_hash}  {c.target.size} bytes")
        lines.append(f"    patch  {c.patch.path}  {c.patch.size} bytes  sha256 {c.patch.sha256}")
        for cve in c.cves:
            lines.append(f"    {cve.id}: {cve.description}")
    emit(args, d, lines)
    return 0


# --- registration ----------------------------------------------------------------------------


def _add_keys(p: argparse.ArgumentParser, help_text: str = "key directory (from keygen)") -> None:
    p.add_argument("--keys", required=True, metavar="DIR", help=help_text)
    p.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="read the key passphrase from environment variable VAR",
    )


def _add_now(p: argparse.ArgumentParser) -> None:
    p.add_argument("--now", metavar="TIME", help=argparse.SUPPRESS)  # tests: fixed clock


def _group_help(parser: argparse.ArgumentParser) -> Any:
    """A handler for a command group run without an action: print its help, exit 2."""

    def show(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add keygen, repo, release and catalog commands to the CLI."""
    p = add_command(
        sub, "keygen", "generate signing keys (PKCS#8 PEM) into a key directory", cmd_keygen
    )
    p.add_argument("--out", required=True, metavar="DIR", help="key directory (created, mode 0700)")
    p.add_argument("--type", choices=KINDS, default="ed25519", help="key type (default ed25519)")
    p.add_argument(
        "--role",
        action="append",
        choices=ROLES,
        help="role to make keys for (repeatable; default: root, release and catalog)",
    )
    p.add_argument("--count", type=int, default=1, help="keys per role (default 1)")
    p.add_argument(
        "--passphrase-env", metavar="VAR", help="encrypt keys with the passphrase in env VAR"
    )

    repo = sub.add_parser("repo", help="create a release repository or rotate its trust root")
    repo.set_defaults(func=_group_help(repo))
    rsub = repo.add_subparsers(dest="repo_command", metavar="ACTION")
    p = add_command(
        rsub, "init", "create a repository: trust root and empty catalog", cmd_repo_init
    )
    p.add_argument("repo", metavar="REPO", help="repository directory")
    _add_keys(p)
    p.add_argument(
        "--threshold",
        action="append",
        metavar="ROLE=N",
        help="signatures a role needs (repeatable; default 1 each)",
    )
    p.add_argument("--root-expires-days", type=int, default=publish.DEFAULT_ROOT_DAYS)
    p.add_argument("--catalog-expires-days", type=int, default=publish.DEFAULT_CATALOG_DAYS)
    _add_now(p)

    p = add_command(
        rsub, "rotate", "publish the next trust root (revokes keys left out)", cmd_repo_rotate
    )
    p.add_argument("repo", metavar="REPO")
    _add_keys(p, "key directory holding the CURRENT root keys")
    p.add_argument(
        "--new-keys", required=True, metavar="DIR", help="keys of the new root, all roles"
    )
    p.add_argument("--new-passphrase-env", metavar="VAR", help="passphrase for --new-keys")
    p.add_argument("--threshold", action="append", metavar="ROLE=N")
    p.add_argument("--root-expires-days", type=int, default=publish.DEFAULT_ROOT_DAYS)
    p.add_argument("--catalog-expires-days", type=int, default=publish.DEFAULT_CATALOG_DAYS)
    p.add_argument(
        "--resign",
        action="store_true",
        help="re-sign all manifests and the catalog with the new release/catalog keys",
    )
    _add_now(p)

    rel = sub.add_parser("release", help="build, withdraw or show security releases")
    rel.set_defaults(func=_group_help(rel))
    lsub = rel.add_subparsers(dest="release_command", metavar="ACTION")
    p = add_command(
        lsub, "build", "seal, diff, sign and publish a release into a repository", cmd_release_build
    )
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--id", required=True, help='release id, e.g. "26.1 (a)"')
    p.add_argument("--os-version", required=True, help="e.g. 26.1")
    p.add_argument(
        "--build", required=True, action="append", help="base OS build it applies to (repeatable)"
    )
    p.add_argument("--supplemental-build", required=True, help="build after install, e.g. 23B85a")
    p.add_argument(
        "--component",
        required=True,
        action="append",
        metavar="NAME:ACTIVATION:BASE_IMG:NEW_IMG[:CVE-ID=desc,...]",
        help="a component to patch (repeatable); ACTIVATION is relaunch or reboot",
    )
    p.add_argument(
        "--cve", action="append", metavar="NAME:CVE-ID=desc", help="add a CVE to a component"
    )
    _add_keys(p)
    p.add_argument("--expires-days", type=int, default=publish.DEFAULT_MANIFEST_DAYS)
    p.add_argument("--catalog-expires-days", type=int, default=publish.DEFAULT_CATALOG_DAYS)
    p.add_argument("--published", metavar="TIME", help="publication time (default now)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-images", action="store_true", help="do not copy base images into images/")
    _add_now(p)

    p = add_command(
        lsub, "withdraw", "withdraw a release (new catalog version)", cmd_release_withdraw
    )
    p.add_argument("repo", metavar="REPO")
    p.add_argument("release_id", metavar="ID")
    _add_keys(p)
    p.add_argument("--catalog-expires-days", type=int, default=publish.DEFAULT_CATALOG_DAYS)
    _add_now(p)

    p = add_command(lsub, "show", "show one release's manifest", cmd_release_show)
    p.add_argument("repo", metavar="REPO")
    p.add_argument("release_id", metavar="ID")
    p.add_argument(
        "--root", metavar="FILE", help="trusted root to verify with (default REPO/root.json)"
    )
    _add_now(p)

    cat = sub.add_parser("catalog", help="inspect a repository's catalog")
    cat.set_defaults(func=_group_help(cat))
    csub = cat.add_subparsers(dest="catalog_command", metavar="ACTION")
    p = add_command(
        csub, "show", "releases by date with their components and CVEs", cmd_catalog_show
    )
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--build", help="only releases for this OS build")
    p.add_argument(
        "--root", metavar="FILE", help="trusted root to verify with (default REPO/root.json)"
    )
    _add_now(p)
