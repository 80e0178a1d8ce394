"""Group commit: many concurrent status reports, one durable transaction.

Request handlers :meth:`GroupCommitter.submit` a validated report and await the
returned asyncio future; one writer thread takes everything queued, applies it with
:meth:`bsipatch.mdm.store.Store.apply_reports` in one transaction and resolves the
futures only after the commit returned (SQLite ``synchronous=FULL``, PostgreSQL
``synchronous_commit=on``): a report is acknowledged only once it is on disk. While
one batch commits, the next one gathers, so the batch size follows the load without
any added wait. A batch's futures are resolved with one wake-up of the event loop, not
one per report. If a batch fails, its reports are retried one by one so one bad report
fails alone. Knows nothing about HTTP or SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import Any

from bsipatch.mdm.items import Report
from bsipatch.mdm.reports import ApplyResult
from bsipatch.mdm.store import Store

log = logging.getLogger(__name__)

_Item = tuple[int, str, Report, "asyncio.Future[ApplyResult]"]


class GroupCommitter:
    """A writer thread that batches :class:`Report` applications.

    Args:
        store: where reports go.
        max_batch: the most reports in one transaction.
    """

    def __init__(self, store: Store, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mdm-group-commit", daemon=True)
        self.batches = 0
        self.reports = 0
        self._thread.start()

    def submit(self, device_id: int, secret_sha256: str, report: Report) -> asyncio.Future[Any]:
        """Queue a report (call from the event loop); the future yields its
        :data:`~bsipatch.mdm.store.ApplyResult` once the batch is durable."""
        fut: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
        self._queue.put((device_id, secret_sha256, report, fut))
        return fut

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[_Item]) -> None:
        try:
            results = self.store.apply_reports([(d, s, r) for d, s, r, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                log.exception("storing a status report failed")
                _resolve([(batch[0][3], None, RuntimeError(f"storing the report failed: {exc}"))])
                return
            for item in batch:  # isolate the failing report
                self._commit([item])
            return
        self.batches += 1
        self.reports += len(batch)
        _resolve([(item[3], ok, None) for item, ok in zip(batch, results, strict=True)])

    def stats(self) -> dict[str, Any]:
        """Batches committed and reports in them (mean batch size shows grouping)."""
        return {"batches": self.batches, "reports": self.reports}


def _resolve(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """Complete futures from the writer thread: one call into each event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
    for fut, value, exc in done:
        by_loop.setdefault(fut.get_loop(), []).append((fut, value, exc))
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_set_all, items)


def _set_all(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in items:
        if fut.cancelled():  # the client went away; the report is stored all the same
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
