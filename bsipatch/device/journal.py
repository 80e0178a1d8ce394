"""The write-ahead journal of the preboot volume, and the crash-point hook used to test it.

Before an operation changes anything on the preboot volume it appends an intent record
("begin": what it is about to do, and which temporary names it will use) and fsyncs it.
When it is finished it appends an "end" record. At the next start, recovery
(:meth:`bsipatch.device.preboot.Preboot.recover`) reads the journal, finds the transaction that
began but did not end, and finishes or undoes it.

Each record is one line: ``<16 hex digits of sha256(json)> <json>\\n``. A line whose
checksum does not match (a write torn by a power cut) and everything after it are
ignored, so a half-written intent counts as never written; that is safe because nothing
is changed before its intent is durable.

This module only reads and appends records and provides :func:`crashpoint`; it does not
know what the operations mean (that is :mod:`bsipatch.device.preboot` and
:mod:`bsipatch.device.install`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from bsipatch._crashpoints import crashpoint
from bsipatch._io import fsync_dir


def _encode(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
    return f"{digest} {body}\n".encode()


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n") or len(text) < 18 or text[16] != " ":
        return None
    body = text[17:-1]
    if hashlib.sha256(body.encode("utf-8")).hexdigest()[:16] != text[:16]:
        return None
    try:
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class Journal:
    """An append-only file of fsynced intent records.

    Args:
        path: the journal file (created by :meth:`create`).

    Example:
        >>> j = Journal(path)  # doctest: +SKIP
        >>> tx = j.begin("install", release="26.1-a")
        >>> ...  # durable steps, each fsynced
        >>> j.end(tx)
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: Path) -> Journal:
        """Create an empty journal file (fsynced, and its directory) and return it."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
        return cls(path)

    def _append(self, record: dict[str, Any]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            valid = self._valid_length()
            if os.fstat(fd).st_size != valid:  # drop a torn tail before appending after it
                os.ftruncate(fd, valid)
            data = _encode(record)
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "short write to journal")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _valid_length(self) -> int:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        length = 0
        for line in data.splitlines(keepends=True):
            if _decode(line) is None:
                break
            length += len(line)
        return length

    def records(self) -> list[dict[str, Any]]:
        """Every intact record in order; stops at the first torn or damaged line."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in data.splitlines(keepends=True):
            record = _decode(line)
            if record is None:
                break
            out.append(record)
        return out

    def begin(self, op: str, **data: Any) -> str:
        """Append and fsync the intent record of a new transaction; return its id.

        Args:
            op: the operation (``"install"``, ``"rollback"``, ...).
            **data: what recovery needs to finish or undo it (JSON-serialisable).

        Returns:
            The transaction id (unique, also usable as a temporary file name).
        """
        tx = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        self._append({"tx": tx, "phase": "begin", "op": op, "data": data})
        crashpoint(f"{op}.journal-begin")
        return tx

    def note(self, tx: str, phase: str, **data: Any) -> None:
        """Append and fsync a progress record of transaction ``tx``."""
        self._append({"tx": tx, "phase": phase, "data": data})

    def end(self, tx: str) -> None:
        """Append and fsync the record saying transaction ``tx`` is finished."""
        self._append({"tx": tx, "phase": "end"})

    def pending(self) -> list[dict[str, Any]]:
        """Transactions that began and did not end, oldest first.

        Returns:
            One dict per transaction: ``{"tx", "op", "data", "notes": [phase, ...]}``.
        """
        open_tx: dict[str, dict[str, Any]] = {}
        for record in self.records():
            tx = record.get("tx")
            phase = record.get("phase")
            if not isinstance(tx, str):
                continue
            if phase == "begin":
                open_tx[tx] = {
                    "tx": tx,
                    "op": record.get("op"),
                    "data": record.get("data") or {},
                    "notes": [],
                }
            elif phase == "end":
                open_tx.pop(tx, None)
            elif tx in open_tx:
                open_tx[tx]["notes"].append(phase)
        return list(open_tx.values())

    def compact(self) -> None:
        """Empty the journal when no transaction is open (truncate + fsync).

        Raises:
            RuntimeError: a transaction is still open.
        """
        if self.pending():
            raise RuntimeError("journal has an open transaction; recover first")
        if self.path.stat().st_size == 0:
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
