"""A matrix release build: plan, validate, stage, run the tasks, publish once.

:func:`build_matrix` holds the repository's publisher lock for the whole build and

1. plans: the tasks of every (variant, component, source image), where source is
   the base image and, with ``from_previous=K``, the image each of the variant's
   last K earlier releases installed (their signed manifests say its seal and size);
2. validates everything before any work: the matrix, the signing keys, that the
   release is new, and that every image exists with the expected size;
3. runs the tasks (:mod:`bsipatch.vendor.execute`); they write their patches into
   ``REPO/.staging/<slug>/`` and return small results;
4. publishes: renames the staging directory to ``releases/<slug>/`` and hands the
   results to :func:`bsipatch.trust.publish.add_release`, which signs the manifest
   and the catalog here, on the publishing machine (keys never go to a worker).

If anything fails, the staging directory (or the renamed release directory) is
removed and the catalog is untouched: no partial release, and the lock is released.

Salts: every image of one (OS version, variant build, component) is sealed with one
lineage salt, taken from the first release of that build in the repository or, for
the first one, derived from those names, so a build is a pure function of its
inputs and the repository (same bytes with any cluster) and a device on an earlier
release checks the new seal by hashing only changed blocks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bsipatch._io import fsync_dir
from bsipatch.errors import BuildError, MatrixError, MetadataError
from bsipatch.trust import publish
from bsipatch.trust.keys import PrivateKey
from bsipatch.trust.manifest import (
    ComponentRelease,
    PatchRef,
    ReleaseManifest,
    SealRef,
    SourcePatch,
    release_slug,
)
from bsipatch.trust.repository import Repository
from bsipatch.trust.verify import MAX_MANIFEST_SIZE, check_signatures, parse_envelope
from bsipatch.vendor.execute import choose_cluster, run_tasks
from bsipatch.vendor.matrix import ImageRef, Matrix, VariantSpec, check_images
from bsipatch.vendor.tasks import TaskResult, TaskSpec

__all__ = ["BuildReport", "build_matrix", "lineage_salt"]

STAGING = ".staging"
Say = Callable[[str], None]


@dataclass
class BuildReport:
    """What a build did: the manifest, every task's result, wall time, the cluster used."""

    manifest: ReleaseManifest
    results: list[TaskResult]
    seconds: float
    cluster: str
    plan_seconds: float = 0.0
    run_seconds: float = 0.0
    publish_seconds: float = 0.0
    cluster_timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no manifest signatures; those are in the repository)."""
        return {
            "release": self.manifest.release_id,
            "sequence": self.manifest.sequence,
            "cluster": self.cluster,
            "seconds": round(self.seconds, 3),
            "tasks": [
                {
                    "variant": r.variant,
                    "build": r.build,
                    "component": r.component,
                    "source": r.source_release or "base",
                    "patch_size": r.patch_size,
                    "seconds": round(r.seconds, 3),
                    "cpu_seconds": round(r.cpu_seconds, 3),
                    "worker": r.worker,
                }
                for r in self.results
            ],
        }


def lineage_salt(os_version: str, build: str, component: str) -> str:
    """The derived lineage salt (hex, 32 bytes) of a variant's component."""
    text = f"bsipatch lineage salt\0{os_version}\0{build}\0{component}".encode()
    return hashlib.sha256(text).hexdigest()


@dataclass
class _Plan:
    specs: list[TaskSpec] = field(default_factory=list)
    images: list[tuple[str, ImageRef, int | None]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _earlier(
    r: Repository, root: Any, catalog: Any, build: str
) -> tuple[list[ReleaseManifest], list[ReleaseManifest]]:
    """(every, not withdrawn) release for ``build`` in the repository, newest first."""
    out: list[tuple[ReleaseManifest, bool]] = []
    for e in sorted(catalog.for_build(build), key=lambda e: e.sequence, reverse=True):
        data = r.read(e.manifest_path, max_size=MAX_MANIFEST_SIZE)
        if len(data) != e.manifest_size or hashlib.sha256(data).hexdigest() != e.manifest_sha256:
            raise MetadataError(f"manifest of {e.release_id} does not match the catalog entry")
        env = parse_envelope(data, max_size=MAX_MANIFEST_SIZE, what="manifest")
        check_signatures(root, "release", env, f"manifest of {e.release_id}")
        m = ReleaseManifest.from_dict(env.signed).for_build(build)
        out.append((m, e.withdrawn))
    return [m for m, _ in out], [m for m, withdrawn in out if not withdrawn]


def _plan_variant(
    plan: _Plan,
    m: Matrix,
    v: VariantSpec,
    history: tuple[list[ReleaseManifest], list[ReleaseManifest]],
    from_previous: int,
    staging: Path,
    threads: int,
) -> None:
    every, live = history
    sources = live[:from_previous]
    for c in m.components:
        base, new = v.images[c.name]
        firsts = [x.component(c.name) for x in reversed(every) if _has(x, c.name)]
        salt = firsts[0].base.salt if firsts else lineage_salt(m.os_version, v.build, c.name)
        base_size = firsts[-1].base.size if firsts else None
        label = f"variant {v.name}, component {c.name}"
        plan.images += [
            (f"{label}: base image", base, base_size),
            (f"{label}: new image", new, None),
        ]
        out = staging / v.build / f"{c.name}.bsipatch"
        plan.specs.append(
            TaskSpec(f"{v.name}/{c.name}/base", v.name, v.build, c.name, None, base.url,
                     new.url, salt, salt, None, str(out), threads)
        )  # fmt: skip
        for earlier in sources:
            if not _has(earlier, c.name):
                continue  # that release left the base image in place: the base patch applies
            rid = earlier.release_id
            target = earlier.component(c.name).target
            ref = v.previous.get(rid, {}).get(c.name)
            if ref is None:
                plan.problems.append(
                    f"{label}: --from-previous {from_previous} needs the image release {rid} "
                    f"installed (matrix: variants[].previous[{rid!r}].{c.name})"
                )
                continue
            plan.images.append((f"{label}: image of {rid}", ref, target.size))
            out = staging / v.build / f"{c.name}.from-{release_slug(rid)}.bsipatch"
            plan.specs.append(
                TaskSpec(f"{v.name}/{c.name}/{rid}", v.name, v.build, c.name, rid, ref.url,
                         new.url, salt, target.salt, target.root_hash, str(out), threads)
            )  # fmt: skip


def _has(m: ReleaseManifest, name: str) -> bool:
    return any(c.name == name for c in m.components)


def _check_keys(root: Any, keys: publish.KeyMap) -> list[str]:
    problems = []
    for role in ("release", "catalog"):
        value = keys.get(role) or []
        given = [value] if isinstance(value, PrivateKey) else list(value)
        trusted = set(root.roles[role].keyids)
        have = {k.keyid for k in given if k.keyid in trusted}
        need = root.roles[role].threshold
        if len(have) < need:
            problems.append(f"signing needs {need} trusted {role} key(s); {len(have)} given")
    return problems


def _plan(
    r: Repository, m: Matrix, keys: publish.KeyMap, from_previous: int, threads: int
) -> _Plan:
    root = publish.load_root(r)
    catalog = publish.load_catalog(r, root)
    plan = _Plan(problems=_check_keys(root, keys))
    if catalog.get(m.release_id) is not None:
        plan.problems.append(f"release {m.release_id} is already in the catalog")
    slug = release_slug(m.release_id)
    if (r.path / "releases" / slug).exists():
        plan.problems.append(f"{r.path / 'releases' / slug} already exists")
    staging = r.path / STAGING / slug
    for v in m.variants:
        history = _earlier(r, root, catalog, v.build)
        _plan_variant(plan, m, v, history, from_previous, staging, threads)
    return plan


def build_matrix(
    repo: Repository | str | os.PathLike[str],
    matrix: Matrix,
    *,
    keys: publish.KeyMap,
    published: datetime,
    expires: datetime,
    catalog_expires: datetime | None = None,
    from_previous: int = 0,
    cluster: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    say: Say | None = None,
) -> BuildReport:
    """Build, sign and publish one release for every variant of ``matrix``.

    Args:
        repo: the repository (a local or shared-file-system directory workers can write).
        matrix: the validated matrix (:func:`bsipatch.vendor.matrix.load_matrix`).
        keys: role -> private keys (release and catalog); they stay in this process.
        published, expires, catalog_expires: as for :func:`bsipatch.trust.publish.add_release`.
        from_previous: also patch from the images of the last K earlier releases of
            each variant (N->1).
        cluster: ``"none"``, ``"local"``, ``"tcp://HOST:PORT"``; default local when
            there is more than one task.
        workers: worker processes of a local cluster.
        threads: engine threads per task (part of the output bytes).
        say: progress lines (one per finished task).

    Raises:
        MatrixError: validation found problems (all listed); nothing was done.
        BuildTaskError: a task failed for good; nothing was published.
        BuildError: the cluster could not be used.
    """
    if from_previous < 0 or threads < 1:
        raise ValueError("from_previous must be >= 0 and threads >= 1")
    t0 = time.monotonic()
    emit = say or (lambda _line: None)
    r = repo if isinstance(repo, Repository) else Repository(repo)
    with r.lock():
        plan = _plan(r, matrix, keys, from_previous, threads)
        if plan.problems:
            raise MatrixError(plan.problems, matrix.source)
        check_images(plan.images, matrix.source)
        mode = choose_cluster(cluster, len(plan.specs))
        slug = release_slug(matrix.release_id)
        staging = r.path / STAGING / slug
        t1 = time.monotonic()
        report_timings: dict[str, float] = {}
        emit(f"{len(plan.specs)} task(s) for {len(matrix.variants)} variant(s); cluster {mode}")
        try:
            _make_staging(staging, matrix)
            results = run_tasks(
                plan.specs, cluster=mode, workers=workers, say=emit, timings=report_timings
            )
            t2 = time.monotonic()
            manifest = _publish(r, matrix, results, staging, keys, published, expires,
                                catalog_expires)  # fmt: skip
        except BaseException:
            _remove(staging)
            raise
        t3 = time.monotonic()
    return BuildReport(manifest, results, t3 - t0, mode, t1 - t0, t2 - t1, t3 - t2, report_timings)


def _make_staging(staging: Path, m: Matrix) -> None:
    _remove(staging)  # a crashed earlier build's leftovers (we hold the lock)
    for v in m.variants:
        (staging / v.build).mkdir(parents=True)


def _remove(path: Path) -> None:
    """Remove a directory tree, retrying while a cancelled task may still write into it."""
    for _ in range(5):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.2)
    shutil.rmtree(path, ignore_errors=True)


def _publish(
    r: Repository,
    m: Matrix,
    results: Sequence[TaskResult],
    staging: Path,
    keys: publish.KeyMap,
    published: datetime,
    expires: datetime,
    catalog_expires: datetime | None,
) -> ReleaseManifest:
    slug = release_slug(m.release_id)
    final = r.path / "releases" / slug
    components = _components(m, results, staging, f"releases/{slug}")
    expected = {Path(x.patch_path).relative_to(staging) for x in results}
    for p in sorted(staging.rglob("*")):  # temp files of workers killed mid-write
        if p.is_file() and p.relative_to(staging) not in expected:
            p.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)
    fsync_dir(final.parent)
    try:
        return publish.add_release(
            r,
            release_id=m.release_id,
            os_version=m.os_version,
            builds=m.builds,
            supplemental_build=m.variants[0].supplemental_build,
            supplemental_builds={v.build: v.supplemental_build for v in m.variants[1:]},
            components=components,
            keys=keys,
            published=published,
            expires=expires,
            catalog_expires=catalog_expires,
        )
    except BaseException:
        _remove(final)
        raise


def _components(
    m: Matrix, results: Sequence[TaskResult], staging: Path, prefix: str
) -> list[ComponentRelease]:
    by: dict[tuple[str, str], list[TaskResult]] = {}
    for x in results:
        by.setdefault((x.variant, x.component), []).append(x)
    out = []
    for v in m.variants:
        for c in m.components:
            tasks = by[(v.name, c.name)]
            base = next(x for x in tasks if x.source_release is None)
            assert base.target_seal is not None

            def ref(x: TaskResult) -> PatchRef:
                rel = Path(x.patch_path).relative_to(staging).as_posix()
                size, digest = x.patch_size, x.patch_sha256
                if (staging / rel).stat().st_size != size:
                    raise BuildError(f"{x.key}: staged patch {rel} changed size after its task")
                return PatchRef(path=f"{prefix}/{rel}", sha256=digest, size=size)

            sources = tuple(
                SourcePatch(str(x.source_release), SealRef(**x.source_seal), ref(x))
                for x in tasks
                if x.source_release is not None
            )
            out.append(
                ComponentRelease(
                    name=c.name,
                    activation=c.activation,
                    base=SealRef(**base.source_seal),
                    target=SealRef(**base.target_seal),
                    patch=ref(base),
                    cves=c.cves,
                    build=v.build,
                    sources=sources,
                )
            )
    return out
