"""Group commit: rows that concurrent threads append to one table share one write transaction.

The audit trail writes one row per request. On SQLite every write transaction queues for the one
write lock (``BEGIN IMMEDIATE``), so at eight concurrent requests the audit's own transactions were a
third of all lock acquisitions. Here the first caller to arrive becomes the *leader*: it takes every
row queued so far, inserts them with one ``executemany`` in one transaction, and wakes their callers;
rows that arrived meanwhile go in the next batch, led by the first of them. Every caller returns only
once its own row is committed (or raises the error that stopped the commit), so a row is never
acknowledged and then lost in a crash, which a background flusher with an in-memory buffer could not
promise. With one caller at a time it costs what a plain insert costs: there is no timer and no wait
for company.
"""
from __future__ import annotations

import threading
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.sql import Executable

MAX_BATCH = 500


class _Pending:
    __slots__ = ("values", "done", "lead", "error")

    def __init__(self, values: dict[str, Any]):
        self.values = values
        self.done = threading.Event()
        self.lead = False               # woken to lead the next batch rather than because it is committed
        self.error: BaseException | None = None


class GroupCommit:
    """Inserts rows with ``statement`` (an INSERT taking the row's values as parameters)."""

    def __init__(self, engine: Engine, statement: Executable, max_batch: int = MAX_BATCH):
        self.engine = engine
        self.statement = statement
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False

    def insert(self, values: dict[str, Any]) -> None:
        """Returns once the row is committed; raises what made its transaction fail."""
        mine = _Pending(values)
        with self._lock:
            self._queue.append(mine)
            lead = not self._leading
            self._leading = True
        if not lead:
            mine.done.wait()
            if not mine.lead:
                if mine.error is not None:
                    raise mine.error
                return
            mine.done.clear()
        self._lead(mine)
        if mine.error is not None:
            raise mine.error

    def _lead(self, mine: _Pending) -> None:
        """Commit batches until this caller's row is in one, then hand the queue to the next waiter."""
        while True:
            with self._lock:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            self._commit(batch)
            with self._lock:
                if mine in batch:
                    if self._queue:             # those who came meanwhile: the first of them leads
                        successor = self._queue[0]
                        successor.lead = True
                        successor.done.set()
                    else:
                        self._leading = False
                    return

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            self._insert([p.values for p in batch])
            errors: list[BaseException | None] = [None] * len(batch)
        except Exception as exc:  # noqa: BLE001 - one bad row must not fail its neighbours: each alone
            errors = [exc] if len(batch) == 1 else [self._insert_alone(p.values) for p in batch]
        for pending, error in zip(batch, errors):
            pending.error = error
            pending.lead = False
            pending.done.set()

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(self.statement, rows)

    def _insert_alone(self, values: dict[str, Any]) -> BaseException | None:
        try:
            self._insert([values])
        except Exception as exc:  # noqa: BLE001 - re-raised in the row's own caller
            return exc
        return None
