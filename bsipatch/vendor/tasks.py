"""The work of one build task: one (variant, component, source image) -> one patch.

:func:`run_task` seals the source image (the base image, or the image an earlier
release installed) with its salt, seals the new image with the lineage salt (base
tasks only: the target seal is the same for every source), writes the patch
straight into the repository's staging directory (temporary file + rename) and
returns a small :class:`TaskResult`: seals, patch size and SHA-256, timings. It runs
on a Dask worker or in process and is a pure function of its :class:`TaskSpec`
(fixed thread count, fixed salts), so the bytes do not depend on where it ran.

Inputs given as URLs are copied to a local temporary file first (the engine maps
its inputs). No scheduling, signing or metadata here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bsipatch._io import atomic_write
from bsipatch.errors import BuildTaskError
from bsipatch.vendor.matrix import is_url, local_path

__all__ = ["TaskResult", "TaskSpec", "run_task"]


@dataclass(frozen=True)
class TaskSpec:
    """Everything one task needs (small and picklable).

    Attributes:
        key: unique task name, ``<variant>/<component>/<source>``.
        source_release: ``None`` for the base image, else the earlier release whose
            installed image is the source.
        source_url, new_url: the images (absolute paths or URLs).
        salt: hex lineage salt the new image is sealed with.
        source_salt: hex salt the source image is sealed with.
        expected_source_root: for earlier-release sources, the target root hash that
            release published; a different seal means a corrupt or wrong input.
        out_path: where the patch goes (a file in the staging directory).
        threads: engine threads (part of the output: fixed per build, not per machine).
    """

    key: str
    variant: str
    build: str
    component: str
    source_release: str | None
    source_url: str
    new_url: str
    salt: str
    source_salt: str
    expected_source_root: str | None
    out_path: str
    threads: int = 1

    @property
    def label(self) -> str:
        """``variant phone-a17, component webkit (from 26.1 (a))`` for messages."""
        src = f"from {self.source_release}" if self.source_release else "from base"
        return f"variant {self.variant}, component {self.component} ({src})"


@dataclass(frozen=True)
class TaskResult:
    """What a task returns: images as ``{"root_hash", "salt", "size", "sha256"}`` (the
    SHA-256 from the patch header the diff wrote), patch facts, timings."""

    key: str
    variant: str
    build: str
    component: str
    source_release: str | None
    source_seal: dict[str, Any]
    target_seal: dict[str, Any] | None
    patch_path: str
    patch_size: int
    patch_sha256: str
    seconds: float
    cpu_seconds: float
    worker: str


@contextlib.contextmanager
def _local(url: str) -> Iterator[str]:
    """A local path for ``url``: the path itself, or a temporary copy of a remote file."""
    if not is_url(url):
        yield local_path(url)
        return
    import fsspec  # type: ignore[import-untyped]  # the vendor extra

    fd, tmp = tempfile.mkstemp(prefix="bsipatch-input-", suffix=".img")
    try:
        with os.fdopen(fd, "wb") as out, fsspec.open(url, "rb") as src:
            shutil.copyfileobj(src, out, 4 << 20)
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)


def _seal_dict(seal: Any, sha256: bytes) -> dict[str, Any]:
    """The image as metadata records it (:class:`bsipatch.trust.manifest.SealRef` fields)."""
    return {
        "root_hash": seal.root_hash.hex(),
        "salt": seal.salt.hex(),
        "size": seal.data_size,
        "sha256": sha256.hex(),
    }


def _sha256_file(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def run_task(spec: TaskSpec) -> TaskResult:
    """Seal, diff and digest one (variant, component, source) into ``spec.out_path``.

    Raises:
        BuildTaskError: the source image does not match the seal its release
            published, or any input cannot be read or processed (the message names
            the variant and component). Retrying does not help.
    """
    t0, c0 = time.monotonic(), time.process_time()
    try:
        return _run(spec, t0, c0)
    except BuildTaskError:
        raise
    except Exception as exc:  # every other failure of this task, named
        raise BuildTaskError(f"{spec.label}: {type(exc).__name__}: {exc}") from None


def _run(spec: TaskSpec, t0: float, c0: float) -> TaskResult:
    from bsipatch.delta.diff import diff  # lazy: loads the native core
    from bsipatch.seal.tree import seal_image

    with _local(spec.source_url) as src, _local(spec.new_url) as new:
        source = seal_image(src, salt=spec.source_salt, threads=spec.threads)
        want = spec.expected_source_root
        if want is not None and source.root_hash.hex() != want:
            raise BuildTaskError(
                f"{spec.label}: image {spec.source_url} has seal root {source.root_hash.hex()}; "
                f"release {spec.source_release} installed root {want} (corrupt or wrong input)"
            )
        target = None
        if spec.source_release is None:
            target = seal_image(new, salt=spec.salt, threads=spec.threads)
        with atomic_write(spec.out_path) as f:
            os.fchmod(f.fileno(), 0o644)
            info = diff(src, new, f, threads=spec.threads)  # hashes both images for its header
    size, digest = _sha256_file(spec.out_path)
    return TaskResult(
        key=spec.key,
        variant=spec.variant,
        build=spec.build,
        component=spec.component,
        source_release=spec.source_release,
        source_seal=_seal_dict(source, info.old_sha256),
        target_seal=None if target is None else _seal_dict(target, info.new_sha256),
        patch_path=spec.out_path,
        patch_size=size,
        patch_sha256=digest,
        seconds=time.monotonic() - t0,
        cpu_seconds=time.process_time() - c0,
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )
