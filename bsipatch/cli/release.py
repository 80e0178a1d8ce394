"""CLI commands of the vendor side: keygen, repo init/refresh/rotate, release
build/withdraw/show/list (and ``catalog show``, the same list).

Thin: parse arguments, load signers, call :mod:`bsipatch.trust.tufrepo` and
:mod:`bsipatch.trust.publish`, print. Output never contains key material: only key ids
and file names. Commands that change releases load only the targets keys plus the
online snapshot/timestamp keys; ``repo refresh`` loads only the online keys.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bsipatch._time import format_time, parse_time, to_utc, utc_now
from bsipatch.cli import vendor as vendor_cli
from bsipatch.cli._common import add_command, emit, positive_int, progress_enabled
from bsipatch.cli.progress import Progress
from bsipatch.errors import FormatError, KeyFileError, MetadataError
from bsipatch.trust import publish, signers, tufrepo
from bsipatch.trust.manifest import Cve

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
    return parse_time(text, "--now") if text else to_utc(utc_now())


def _pairs(values: list[str] | None, what: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values or ():
        role, _, n = v.partition("=")
        if role not in signers.ROLES or not n.isdigit() or int(n) < 1:
            raise FormatError(f"{what} wants ROLE=N with ROLE in {', '.join(signers.ROLES)}: {v!r}")
        out[role] = int(n)
    return out


def _expiry(args: argparse.Namespace) -> tufrepo.Expiry:
    return tufrepo.Expiry.days(
        **{r: getattr(args, f"{r}_expires_days", None) for r in signers.ROLES}
    )


def _keys(args: argparse.Namespace, roles: tuple[str, ...], attr: str = "keys") -> signers.KeySet:
    env = "passphrase_env" if attr == "keys" else "new_passphrase_env"
    return signers.KeySet.from_dir(getattr(args, attr), roles, _passphrase(args, env))


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


# --- handlers ------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    count = _pairs(args.count, "--count") if args.count else None
    if args.role:
        count = {r: (count or {}).get(r, 1) for r in args.role}
    made = signers.generate_keydir(
        args.out, kind=args.type, passphrase=_passphrase(args), count=count, add=args.add
    )
    rows = [{"role": r, "keyid": k} for r, ks in made.items() for k in ks]
    emit(args, {"dir": str(args.out), "keys": rows}, [f"{r['role']:9} {r['keyid']}" for r in rows])
    return 0


def _roles_info(root: Any) -> dict[str, Any]:
    return {n: {"keyids": list(r.keyids), "threshold": r.threshold} for n, r in root.roles.items()}


def cmd_repo_init(args: argparse.Namespace) -> int:
    keys = _keys(args, signers.ROLES)
    md = tufrepo.init_repository(
        args.repo,
        keys,
        now=_now(args),
        expiry=_expiry(args),
        thresholds=_pairs(args.threshold, "--threshold"),
        public_keys={r: signers.load_public_keys(args.keys, r) for r in signers.ROLES},
    )
    root = md.signed
    roles = _roles_info(root)
    exp = format_time(root.expires)
    emit(
        args,
        {"repo": str(args.repo), "root_version": root.version, "expires": exp, "roles": roles},
        [f"initialised {args.repo}: root version 1, expires {exp}"]
        + [f"  {n:9} {r['threshold']} of {len(r['keyids'])} key(s)" for n, r in roles.items()]
        + [f"  provision devices with {Path(args.repo) / 'metadata' / '1.root.json'}"],
    )
    return 0


def cmd_repo_refresh(args: argparse.Namespace) -> int:
    keys = _keys(args, signers.ONLINE_ROLES)
    out = tufrepo.refresh(
        args.repo, keys, now=_now(args), expiry=_expiry(args), force_snapshot=args.snapshot
    )
    lines = [
        f"timestamp version {out['timestamp']}, expires {out['timestamp_expires']}",
        f"snapshot version {out['snapshot']}"
        + (" (re-signed)" if out["snapshot_resigned"] else " (unchanged)"),
        f"targets expire {out['targets_expires']} (re-signing targets needs the offline keys)",
    ]
    emit(args, out, lines)
    return 0


def cmd_repo_rotate(args: argparse.Namespace) -> int:
    old = _keys(args, signers.ROLES)
    new = _keys(args, signers.ROLES, "new_keys")
    md = tufrepo.rotate_root(
        args.repo,
        old,
        new,
        now=_now(args),
        expiry=_expiry(args),
        thresholds=_pairs(args.threshold, "--threshold"),
    )
    root = md.signed
    exp = format_time(root.expires)
    emit(
        args,
        {"root_version": root.version, "expires": exp, "roles": _roles_info(root)},
        [f"root version {root.version} published, expires {exp}"],
    )
    return 0


def _components(args: argparse.Namespace) -> list[publish.ComponentInput]:
    components = [parse_component(s) for s in args.component or ()]
    extra: dict[str, list[Cve]] = {}
    for spec in args.cve or ():
        name, sep, rest = spec.partition(":")
        if not sep:
            raise FormatError(f"--cve wants NAME:CVE-ID=description, got {spec!r}")
        extra.setdefault(name, []).extend(_parse_cves(rest, f"--cve {name}"))
    unknown = set(extra) - {c.name for c in components}
    if unknown:
        raise FormatError(f"--cve names unknown component(s) {', '.join(sorted(unknown))}")
    return [
        publish.ComponentInput(
            c.name, c.activation, c.base_image, c.new_image, (*c.cves, *extra.get(c.name, ()))
        )
        for c in components
    ]


def _release_lines(rel: Any, catalog: Any = None) -> list[str]:
    flag = "  WITHDRAWN" if rel.withdrawn else ""
    lines = [
        f"{rel.published[:10]}  {rel.release_id}  seq {rel.sequence}  builds "
        f"{', '.join(rel.builds)} -> {rel.supplemental_build}{flag}"
    ]
    for name, c in sorted(rel.components.items()):
        if c.target is None:
            lines.append(f"    {name} ({c.activation}): back to the base image")
            continue
        sizes = [catalog.patches[p].length for p in c.patches] if catalog is not None else []
        lines.append(
            f"    {name} ({c.activation}): {len(c.patches)} patch(es)"
            + (f", {', '.join(str(s) for s in sizes)} bytes" if sizes else "")
        )
        lines.append(f"        new image: {c.target.size} bytes, SHA-256 {c.target.sha256}")
        for cve in c.cves:
            lines.append(f"        {cve.id}: {cve.description}")
    return lines


def cmd_release_build(args: argparse.Namespace) -> int:
    vendor_cli.check_single(args)
    now = _now(args)
    published = parse_time(args.published, "--published") if args.published else now
    if args.matrix:
        keys = _keys(args, ("targets", *signers.ONLINE_ROLES))
        return vendor_cli.cmd_matrix_build(args, keys, now, published, _expiry(args))
    components = _components(args)
    if not components and not args.back_to_base:
        raise FormatError("give at least one --component (or --back-to-base NAME)")
    keys = _keys(args, ("targets", *signers.ONLINE_ROLES))
    quiet = args.quiet or args.json
    bars = _Bars(progress_enabled(args))
    rel = publish.build_release(
        args.repo,
        release_id=args.id,
        os_version=args.os_version,
        builds=args.build,
        supplemental_build=args.supplemental_build,
        components=components,
        keys=keys,
        now=now,
        published=published,
        back_to_base=args.back_to_base or (),
        carry_forward=not args.no_carry_forward,
        with_images=args.with_images,
        expiry=_expiry(args),
        threads=args.threads,
        log=None if quiet else bars.log,
        progress=bars.update,
    )
    bars.close()
    catalog = publish.load_catalog(args.repo)
    lines = [f"published {rel.release_id} (sequence {rel.sequence})", *_release_lines(rel, catalog)]
    emit(args, publish.summary(rel), lines)
    return 0


def cmd_release_withdraw(args: argparse.Namespace) -> int:
    keys = _keys(args, ("targets", *signers.ONLINE_ROLES))
    rel = publish.withdraw(args.repo, args.release_id, keys, now=_now(args), expiry=_expiry(args))
    version = tufrepo.TufRepository(args.repo).targets().signed.version
    emit(
        args,
        {"withdrawn": rel.release_id, "targets_version": version},
        f"withdrew {rel.release_id}; targets version {version}",
    )
    return 0


def cmd_release_list(args: argparse.Namespace) -> int:
    catalog = publish.load_catalog(args.repo)
    now = _now(args)
    rels = catalog.for_build(args.build) if args.build else catalog.releases
    expired = now >= parse_time(catalog.expires)
    lines = [
        f"targets version {catalog.version}, expires {catalog.expires}"
        + ("  ** EXPIRED **" if expired else "")
    ]
    for r in reversed(rels):
        lines.extend(_release_lines(r, catalog))
    if not rels:
        lines.append("  (no releases)")
    data = {
        "version": catalog.version,
        "expires": catalog.expires,
        "expired": expired,
        "releases": [r.to_dict() for r in reversed(rels)],
    }
    emit(args, data, lines)
    return 0


def cmd_release_show(args: argparse.Namespace) -> int:
    catalog = publish.load_catalog(args.repo)
    rel = catalog.get(args.release_id)
    if rel is None:
        raise MetadataError(f"no release {args.release_id!r} is published")
    emit(args, rel.to_dict(), _release_lines(rel, catalog))
    return 0


# --- registration ----------------------------------------------------------------------------


def _add_expiry(p: argparse.ArgumentParser, roles: tuple[str, ...]) -> None:
    for r in roles:
        default = tufrepo.Expiry().of(r).days
        p.add_argument(
            f"--{r}-expires-days",
            type=float,
            default=None,
            metavar="DAYS",
            help=f"{r} metadata lifetime (default {default} days; > 0)",
        )


def _register_repo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    repo = sub.add_parser("repo", help="create a TUF repository, keep it fresh, rotate keys")
    repo.set_defaults(func=_group_help(repo))
    rsub = repo.add_subparsers(dest="repo_command", metavar="ACTION")
    p = add_command(rsub, "init", "create a TUF repository (root v1, empty targets)", cmd_repo_init)
    p.add_argument("repo", metavar="REPO", help="repository directory (the served directory)")
    _add_keys(p)
    p.add_argument("--threshold", action="append", metavar="ROLE=N", help="signatures a role needs")
    _add_expiry(p, signers.ROLES)
    _add_now(p)

    p = add_command(
        rsub,
        "refresh",
        "re-sign timestamp (and snapshot when needed) with the online keys only",
        cmd_repo_refresh,
    )
    p.add_argument("repo", metavar="REPO")
    _add_keys(p, "key directory holding the online (timestamp, snapshot) keys")
    p.add_argument("--snapshot", action="store_true", help="re-sign the snapshot too")
    _add_expiry(p, signers.ONLINE_ROLES)
    _add_now(p)

    p = add_command(
        rsub, "rotate", "publish the next root (revokes keys left out)", cmd_repo_rotate
    )
    p.add_argument("repo", metavar="REPO")
    _add_keys(p, "key directory holding the CURRENT root keys (and online keys)")
    p.add_argument("--new-keys", required=True, metavar="DIR", help="keys of the new root")
    p.add_argument("--new-passphrase-env", metavar="VAR", help="passphrase for --new-keys")
    p.add_argument("--threshold", action="append", metavar="ROLE=N")
    _add_expiry(p, signers.ROLES)
    _add_now(p)


def _register_release(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rel = sub.add_parser("release", help="build, withdraw, list or show security releases")
    rel.set_defaults(func=_group_help(rel))
    lsub = rel.add_subparsers(dest="release_command", metavar="ACTION")
    p = add_command(lsub, "build", "seal, diff and publish a release", cmd_release_build)
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--id", help='release id, e.g. "26.1 (a)"')
    p.add_argument("--os-version", help="e.g. 26.1")
    p.add_argument("--build", action="append", help="base OS build (repeatable)")
    p.add_argument("--supplemental-build", help="build after install, e.g. 23B85a")
    p.add_argument(
        "--component",
        action="append",
        metavar="NAME:ACTIVATION:BASE_IMG:NEW_IMG[:CVE-ID=desc,...]",
        help="a component to patch (repeatable); ACTIVATION is relaunch or reboot",
    )
    p.add_argument("--cve", action="append", metavar="NAME:CVE-ID=desc", help="add a CVE")
    p.add_argument(
        "--back-to-base",
        action="append",
        metavar="NAME",
        help="send a component an earlier release changed back to its base image, on purpose",
    )
    p.add_argument(
        "--no-carry-forward",
        action="store_true",
        help="do not carry the previous release's other components forward",
    )
    p.add_argument("--with-images", action="store_true", help="also publish the base images")
    p.add_argument("--published", metavar="TIME", help="publication date (default now)")
    p.add_argument("--threads", type=positive_int, default=None, help="threads (default: all CPUs)")
    vendor_cli.add_arguments(p)
    _add_keys(p, "key directory holding the targets (offline) and online keys")
    _add_expiry(p, ("targets", *signers.ONLINE_ROLES))
    _add_now(p)

    p = add_command(lsub, "withdraw", "withdraw a release (targets role)", cmd_release_withdraw)
    p.add_argument("repo", metavar="REPO")
    p.add_argument("release_id", metavar="ID")
    _add_keys(p, "key directory holding the targets (offline) and online keys")
    _add_expiry(p, ("targets", *signers.ONLINE_ROLES))
    _add_now(p)

    for name, helptext, fn in (
        ("show", "show one release", cmd_release_show),
        ("list", "releases newest first, with components and CVEs", cmd_release_list),
    ):
        p = add_command(lsub, name, helptext, fn)
        p.add_argument("repo", metavar="REPO")
        if name == "show":
            p.add_argument("release_id", metavar="ID")
        else:
            p.add_argument("--build", help="only releases for this OS build")
        _add_now(p)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add keygen, repo, release and catalog commands to the CLI."""
    p = add_command(sub, "keygen", "make signing keys for every TUF role", cmd_keygen)
    p.add_argument("--out", required=True, metavar="DIR", help="key directory (created, 0700)")
    p.add_argument("--type", choices=signers.KINDS, default="ed25519", help="key type")
    p.add_argument(
        "--role", action="append", choices=signers.ROLES, help="only these roles (repeatable)"
    )
    p.add_argument("--count", action="append", metavar="ROLE=N", help="keys for a role")
    p.add_argument("--add", action="store_true", help="add keys to a directory that has some")
    p.add_argument("--passphrase-env", metavar="VAR", help="encrypt keys with env VAR's value")
    _register_repo(sub)
    _register_release(sub)
    cat = sub.add_parser("catalog", help="list a repository's releases (= release list)")
    cat.set_defaults(func=_group_help(cat))
    csub = cat.add_subparsers(dest="catalog_command", metavar="ACTION")
    p = add_command(csub, "show", "releases newest first", cmd_release_list)
    p.add_argument("repo", metavar="REPO")
    p.add_argument("--build", help="only releases for this OS build")
    _add_now(p)
