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
    __slots__ = ("values", "done", "lead", "error", "key")

    def __init__(self, values: dict[str, Any]):
        self.values = values
        self.key: Any = None            # the inserted row's primary key (``returning_keys``)
        self.done = threading.Event()
        self.lead = False               # woken to lead the next batch rather than because it is committed
        self.error: BaseException | None = None


class GroupCommit:
    """Inserts rows with ``statement`` (an INSERT taking the row's values as parameters). With
    ``returning_keys`` each row is its own INSERT in the shared transaction, so :meth:`insert` can
    return the row's generated primary key (one executemany otherwise)."""

    def __init__(self, engine: Engine, statement: Executable, max_batch: int = MAX_BATCH,
                 returning_keys: bool = False):
        self.engine = engine
        self.statement = statement
        self.returning_keys = returning_keys
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False

    def insert(self, values: dict[str, Any]) -> Any:
        """Returns once the row is committed (its primary key with ``returning_keys``); raises what
        made its transaction fail."""
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
                return mine.key
            mine.done.clear()
        self._lead(mine)
        if mine.error is not None:
            raise mine.error
        return mine.key

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
            self._insert(batch)
            errors: list[BaseException | None] = [None] * len(batch)
        except Exception as exc:  # noqa: BLE001 - one bad row must not fail its neighbours: each alone
            errors = [exc] if len(batch) == 1 else [self._insert_alone(p) for p in batch]
        for pending, error in zip(batch, errors):
            pending.error = error
            pending.lead = False
            pending.done.set()

    def _insert(self, batch: list[_Pending]) -> None:
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            if self.returning_keys:
                keys = [conn.execute(self.statement, p.values).inserted_primary_key[0] for p in batch]
            else:
                conn.execute(self.statement, [p.values for p in batch])
        if self.returning_keys:
            for pending, key in zip(batch, keys):
                pending.key = key

    def _insert_alone(self, pending: _Pending) -> BaseException | None:
        try:
            self._insert([pending])
        except Exception as exc:  # noqa: BLE001 - re-raised in the row's own caller
            return exc
        return None
