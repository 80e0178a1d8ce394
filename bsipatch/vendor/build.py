"""A matrix release build: plan, validate, stage, run the tasks, publish once.

:func:`build_matrix` holds the repository's publisher lock for the whole build and

1. plans: the tasks of every (variant, component, source image), where source is
   the base image and, with ``from_previous=K``, the image each of the variant's
   last K earlier releases installed (their signed manifests say its seal and size);
2. validates everything before any work: the matrix, the signing keys, that the
   release is new, and that every image exists with the expected size;
3. runs the tasks (:mod:`bsipatch.vendor.execute`); they write their patches into
   ``REPO/.staging/<slug>/`` and return small results;
4. publishes: one new targets version (:func:`bsipatch.trust.tufrepo.publish_targets`)
   with every patch as a target (``patches/<component>/<to>/from-<from>.bsipatch``)
   and the release target, whose ``variants`` hold each build's components (see
   :class:`bsipatch.trust.releases.Variant`); it is signed here, on the publishing
   machine, after every task succeeded (keys never go to a worker).

If anything fails, the staging directory is removed and the metadata is untouched:
no partial release, and the lock is released.

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

from bsipatch._time import format_time
from bsipatch.errors import MatrixError, MetadataError
from bsipatch.trust import publish
from bsipatch.trust.manifest import SealRef, release_slug
from bsipatch.trust.releases import (
    CUSTOM_KEY,
    Catalog,
    ComponentSpec,
    PatchInfo,
    Release,
    Variant,
    check_cumulative,
    patch_target_path,
    release_target_path,
)
from bsipatch.trust.signers import KeySet
from bsipatch.trust.tufrepo import Expiry, TufRepository, publish_targets
from bsipatch.vendor.execute import choose_cluster, run_tasks
from bsipatch.vendor.matrix import ImageRef, Matrix, VariantSpec, check_images
from bsipatch.vendor.tasks import TaskResult, TaskSpec

__all__ = ["BuildReport", "build_matrix", "lineage_salt"]

STAGING = ".staging"
Say = Callable[[str], None]


@dataclass
class BuildReport:
    """What a build did: the release, every task's result, wall time, the cluster used."""

    release: Release
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
            "release": self.release.release_id,
            "sequence": self.release.sequence,
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


def _history(catalog: Catalog, build: str) -> tuple[list[Release], list[Release]]:
    """(every, not withdrawn) release for ``build``, newest first, as that build sees them."""
    every = sorted(
        (r.for_build(build) for r in catalog.for_build(build)),
        key=lambda r: r.sequence,
        reverse=True,
    )
    return every, [r for r in every if not r.withdrawn]


def _target(r: Release, name: str) -> SealRef | None:
    spec = r.components.get(name)
    return None if spec is None else spec.target


def _plan_variant(
    plan: _Plan,
    m: Matrix,
    v: VariantSpec,
    history: tuple[list[Release], list[Release]],
    from_previous: int,
    staging: Path,
    threads: int,
) -> None:
    every, live = history
    for c in m.components:
        base, new = v.images[c.name]
        firsts = [r.components[c.name] for r in reversed(every) if c.name in r.components]
        salt = firsts[0].base.salt if firsts else lineage_salt(m.os_version, v.build, c.name)
        base_size = firsts[-1].base.size if firsts else None
        label = f"variant {v.name}, component {c.name}"
        plan.images.append((f"{label}: base image", base, base_size))
        plan.images.append((f"{label}: new image", new, None))
        out = staging / v.build / f"{c.name}.bsipatch"
        plan.specs.append(
            TaskSpec(f"{v.name}/{c.name}/base", v.name, v.build, c.name, None, base.url,
                     new.url, salt, salt, None, str(out), threads)
        )  # fmt: skip
        for earlier in live[:from_previous]:
            target = _target(earlier, c.name)
            if target is None:
                continue  # that release left the base image in place: the base patch applies
            rid = earlier.release_id
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


def _check_keys(r: TufRepository, keys: KeySet) -> list[str]:
    root = r.root().signed
    problems = []
    for role in ("targets", "snapshot", "timestamp"):
        trusted = set(root.roles[role].keyids)
        have = sum(1 for s in keys.get(role) if s.public_key.keyid in trusted)
        need = root.roles[role].threshold
        if have < need:
            problems.append(f"publishing needs {need} {role} key(s) the root trusts; {have} given")
    return problems


def _plan(r: TufRepository, m: Matrix, keys: KeySet, from_previous: int, threads: int) -> _Plan:
    catalog = publish.load_catalog(r)
    plan = _Plan(problems=_check_keys(r, keys))
    if catalog.get(m.release_id) is not None:
        plan.problems.append(f"release {m.release_id} is already published")
    staging = r.path / STAGING / release_slug(m.release_id)
    for v in m.variants:
        history = _history(catalog, v.build)
        _plan_variant(plan, m, v, history, from_previous, staging, threads)
    return plan


def build_matrix(
    repo: TufRepository | str | os.PathLike[str],
    matrix: Matrix,
    *,
    keys: KeySet,
    now: datetime,
    published: datetime | None = None,
    expiry: Expiry | None = None,
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
        keys: the targets (offline) and online signers; they stay in this process.
        now, published, expiry: as for :func:`bsipatch.trust.publish.add_release`.
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
    r = repo if isinstance(repo, TufRepository) else TufRepository(repo)
    with r.lock():
        plan = _plan(r, matrix, keys, from_previous, threads)
        if plan.problems:
            raise MatrixError(plan.problems, matrix.source)
        check_images(plan.images, matrix.source)
        mode = choose_cluster(cluster, len(plan.specs))
        staging = r.path / STAGING / release_slug(matrix.release_id)
        t1 = time.monotonic()
        timings: dict[str, float] = {}
        emit(f"{len(plan.specs)} task(s) for {len(matrix.variants)} variant(s); cluster {mode}")
        try:
            _make_staging(staging, matrix)
            results = run_tasks(
                plan.specs, cluster=mode, workers=workers, say=emit, timings=timings
            )
            t2 = time.monotonic()
            release = _publish(r, matrix, results, keys, now, published or now, expiry)
        finally:
            _remove(staging)
        t3 = time.monotonic()
    return BuildReport(release, results, t3 - t0, mode, t1 - t0, t2 - t1, t3 - t2, timings)


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
    r: TufRepository,
    m: Matrix,
    results: Sequence[TaskResult],
    keys: KeySet,
    now: datetime,
    published: datetime,
    expiry: Expiry | None,
) -> Release:
    """One new targets version: every patch, and the release with a variant per build."""

    def change(targets: Any) -> Release:
        catalog = Catalog.from_targets(targets)
        if catalog.get(m.release_id) is not None:
            raise MetadataError(f"release {m.release_id} is already published")
        variants = {}
        for v in m.variants:
            comps = {}
            for c in m.components:
                tasks = [x for x in results if x.variant == v.name and x.component == c.name]
                comps[c.name] = _component(r, targets, c.name, c.activation, c.cves, tasks)
            variants[v.build] = Variant(v.supplemental_build, comps)
        release = Release(
            release_id=m.release_id,
            os_version=m.os_version,
            builds=m.builds,
            supplemental_build=m.variants[0].supplemental_build,
            published=format_time(published),
            sequence=catalog.max_sequence + 1,
            withdrawn=False,
            variants=variants,
        )
        check_cumulative(catalog.releases, release)
        tf = r.add_target_bytes(
            release_target_path(release.release_id),
            release.document(),
            {CUSTOM_KEY: release.to_dict()},
        )
        targets.targets[tf.path] = tf
        return release

    _md, release = publish_targets(r, keys, change, now=now, expiry=expiry)
    return release  # type: ignore[no-any-return]


def _component(
    r: TufRepository,
    targets: Any,
    name: str,
    activation: str,
    cves: Any,
    tasks: Sequence[TaskResult],
) -> ComponentSpec:
    """Store one component's patches as targets (base patch first); its spec."""
    base = next(x for x in tasks if x.source_release is None)
    assert base.target_seal is not None
    to_seal = SealRef(**base.target_seal)
    paths = []
    for x in sorted(tasks, key=lambda x: (x.source_release is not None, x.source_release or "")):
        from_seal = SealRef(**x.source_seal)
        if Path(x.patch_path).stat().st_size != x.patch_size:
            raise MetadataError(f"{x.key}: staged patch {x.patch_path} changed after its task")
        rel = patch_target_path(name, from_seal, to_seal)
        tf = r.add_target_file(rel, x.patch_path, PatchInfo.custom(name, from_seal, to_seal))
        if tf.hashes.get("sha256") != x.patch_sha256:
            raise MetadataError(f"{x.key}: staged patch {x.patch_path} changed after its task")
        targets.targets[rel] = tf
        paths.append(rel)
    return ComponentSpec(activation, SealRef(**base.source_seal), to_seal, tuple(paths), cves)
