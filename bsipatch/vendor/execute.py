"""Run build tasks: in process, on a Dask ``LocalCluster``, or on an existing scheduler.

:func:`run_tasks` takes the :class:`~bsipatch.vendor.tasks.TaskSpec` list of a build
and returns the results of all of them, or raises on the first task that fails for
good (after cancelling the rest). A worker process that dies mid-task is Dask's
business: the scheduler hands the task to another worker (up to its
``allowed-failures`` limit). One line per finished task goes to ``say``, and the
dashboard link when the scheduler runs one. Dask is imported only here and only for
``local`` and ``tcp://`` clusters; ``none`` runs the tasks one after another in this
process. Planning, staging and signing are :mod:`bsipatch.vendor.build`'s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from bsipatch.errors import BuildError, BuildTaskError
from bsipatch.vendor.tasks import TaskResult, TaskSpec, run_task

__all__ = ["choose_cluster", "run_tasks"]

Say = Callable[[str], None]


def choose_cluster(cluster: str | None, n_tasks: int) -> str:
    """``none``, ``local`` or a scheduler address; ``None``/``auto``: local for > 1 task.

    Raises:
        BuildError: an unknown cluster name.
    """
    if cluster in (None, "auto"):
        return "local" if n_tasks > 1 else "none"
    if cluster in ("none", "local") or "://" in cluster:
        return cluster
    raise BuildError(f"--cluster must be none, local or tcp://HOST:PORT, found {cluster!r}")


def _line(r: TaskResult, done: int, total: int) -> str:
    src = r.source_release or "base"
    return (
        f"[{done}/{total}] {r.variant} {r.component} from {src}: patch {r.patch_size} bytes "
        f"in {r.seconds:.1f} s on {r.worker}"
    )


def run_tasks(
    specs: Sequence[TaskSpec],
    *,
    cluster: str,
    workers: int | None = None,
    say: Say | None = None,
    timings: dict[str, float] | None = None,
) -> list[TaskResult]:
    """Run every task and return their results in the order of ``specs``.

    Args:
        specs: the tasks.
        cluster: ``"none"`` (in process), ``"local"`` (a new ``LocalCluster`` of
            ``workers`` single-threaded worker processes, default one per CPU) or a
            scheduler address such as ``tcp://10.0.0.5:8786``.
        workers: worker processes of a local cluster.
        say: receives one line per finished task (and the dashboard link).
        timings: if given, receives ``startup_seconds`` (cluster start or connect) and
            ``shutdown_seconds``.

    Raises:
        BuildTaskError: a task failed for good; it names the variant and component.
        BuildError: the cluster could not be started or reached.
    """
    emit = say or (lambda _line: None)
    if cluster == "none":
        out = []
        for i, spec in enumerate(specs, 1):
            r = run_task(spec)
            emit(_line(r, i, len(specs)))
            out.append(r)
        return out
    return _run_dask(specs, cluster, workers, emit, {} if timings is None else timings)


def _start(cluster: str, workers: int | None) -> tuple[Any, Any]:
    """(client, local cluster or None)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise BuildError("--cluster local/tcp needs Dask: pip install 'bsipatch[vendor]'") from exc
    try:
        if cluster == "local":
            lc = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR,
            )
            return Client(lc), lc  # type: ignore[no-untyped-call]
        return Client(cluster, timeout=30), None  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise BuildError(f"cannot start or reach the Dask cluster {cluster}: {exc}") from exc


def dashboard_link(client: Any) -> str | None:
    """The dashboard URL when the scheduler runs one, else ``None``."""
    services = client.scheduler_info().get("services", {})
    return str(client.dashboard_link) if "dashboard" in services else None


#: After a task failed for good, wait at most this long for the build's other tasks
#: still running on workers to stop (a running task cannot be interrupted).
DRAIN_SECONDS = 600.0


def _executing(dask_worker: Any) -> list[str]:
    """Keys a worker is still executing, cancelled ones included (runs on the worker)."""
    return [str(ts.key) for ts in dask_worker.state.executing]


def _cancel_and_drain(client: Any, futures: list[Any], prefix: str) -> None:
    """Cancel every task of this build and wait until no worker still runs one.

    Cancelling only makes the scheduler forget a task: a worker already running it goes
    on to the end, and it would write its patch into the staging directory after the
    build removed it (a half-cleaned repository). So the build waits, bounded by
    ``DRAIN_SECONDS``, until the workers report none of its keys executing.
    """
    client.cancel(futures)
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline:
        try:
            running = client.run(_executing)
        except (OSError, TimeoutError):  # a worker went away: nothing left to wait for there
            return
        if not any(k.startswith(prefix) for keys in running.values() for k in keys):
            return
        time.sleep(0.2)


def _run_dask(
    specs: Sequence[TaskSpec],
    cluster: str,
    workers: int | None,
    emit: Say,
    timings: dict[str, float],
) -> list[TaskResult]:
    from distributed import as_completed

    t0 = time.monotonic()
    client, lc = _start(cluster, workers)
    if lc is not None:
        client.wait_for_workers(len(lc.workers))
    timings["startup_seconds"] = time.monotonic() - t0
    try:
        link = dashboard_link(client)
        if link:
            note = (
                "" if importlib.util.find_spec("bokeh") else " (its pages need: pip install bokeh)"
            )
            emit(f"Dask dashboard: {link}{note}")
        token = secrets.token_hex(4)
        futures = [
            client.submit(run_task, s, key=f"bsipatch-{token}-{s.key}", pure=False, retries=0)
            for s in specs
        ]
        by_key = {f.key: s for f, s in zip(futures, specs, strict=True)}
        results: dict[str, TaskResult] = {}
        for done, fut in enumerate(as_completed(futures), 1):  # type: ignore[no-untyped-call]
            if fut.status != "finished":
                exc = fut.exception()  # before cancelling, which forgets it
                _cancel_and_drain(client, futures, f"bsipatch-{token}-")
                if isinstance(exc, BuildTaskError):
                    raise BuildTaskError(str(exc))
                spec = by_key[fut.key]
                raise BuildTaskError(f"{spec.label}: {type(exc).__name__}: {exc}")
            r = fut.result()
            results[r.key] = r
            emit(_line(r, done, len(specs)))
        return [results[s.key] for s in specs]
    finally:
        t1 = time.monotonic()
        client.close()
        if lc is not None:
            lc.close()
        timings["shutdown_seconds"] = time.monotonic() - t1
