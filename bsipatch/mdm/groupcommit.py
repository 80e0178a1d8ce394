"""Group commit: many concurrent status reports, one durable transaction.

Request handlers :meth:`GroupCommitter.submit` a validated report and wait on the
returned future; one writer thread takes everything queued, applies it with
:meth:`bsipatch.mdm.store.Store.apply_reports` in one transaction and resolves the
futures only after the commit returned (SQLite ``synchronous=FULL``, PostgreSQL
``synchronous_commit=on``): a report is acknowledged only once it is on disk. While
one batch commits, the next one gathers, so the batch size follows the load without
any added wait. If a batch fails, its reports are retried one by one so one bad report
fails alone. Knows nothing about HTTP or SQL.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from bsipatch.mdm.items import Report
from bsipatch.mdm.store import Store

log = logging.getLogger(__name__)


class GroupCommitter:
    """A writer thread that batches :class:`Report` applications.

    Args:
        store: where reports go.
        max_batch: the most reports in one transaction.
    """

    def __init__(self, store: Store, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[int, Report, Future[bool]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mdm-group-commit", daemon=True)
        self.batches = 0
        self.reports = 0
        self._thread.start()

    def submit(self, device_id: int, report: Report) -> Future[bool]:
        """Queue a report; the future yields True (applied) or False (duplicate)."""
        fut: Future[bool] = Future()
        self._queue.put((device_id, report, fut))
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

    def _commit(self, batch: list[tuple[int, Report, Future[bool]]]) -> None:
        try:
            results = self.store.apply_reports([(d, r) for d, r, _ in batch])
        except Exception:
            if len(batch) == 1:
                log.exception("storing a status report failed")
                batch[0][2].set_exception(RuntimeError("storing the report failed"))
                return
            for item in batch:  # isolate the failing report
                self._commit([item])
            return
        self.batches += 1
        self.reports += len(batch)
        for (_, _, fut), ok in zip(batch, results, strict=True):
            fut.set_result(ok)

    def stats(self) -> dict[str, Any]:
        """Batches committed and reports in them (mean batch size shows grouping)."""
        return {"batches": self.batches, "reports": self.reports}
