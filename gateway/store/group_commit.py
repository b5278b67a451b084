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
from typing import Any, Callable

from sqlalchemy.engine import Engine
from sqlalchemy.sql import Executable

MAX_BATCH = 500


class _Pending:
    __slots__ = ("payload", "result", "done", "lead", "error")

    def __init__(self, payload: Any):
        self.payload = payload
        self.result: Any = None         # what the batch made of it (an inserted row's key, a unit's return)
        self.done = threading.Event()
        self.lead = False               # woken to lead the next batch rather than because it is committed
        self.error: BaseException | None = None


class LeaderBatches:
    """The leader protocol both batchers share: :meth:`submit` queues a payload, and the first caller
    to find no batch running leads: it runs ``run_batch`` on everything queued (which sets each
    pending's ``result`` or ``error``), wakes those callers, and hands the queue to the first caller
    that arrived meanwhile. Every caller returns only once its own batch is done."""

    def __init__(self, run_batch: Callable[[list[_Pending]], None], max_batch: int = MAX_BATCH):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False

    def submit(self, payload: Any) -> Any:
        """Returns the payload's result once its batch is done; raises the error the batch gave it."""
        mine = _Pending(payload)
        with self._lock:
            self._queue.append(mine)
            lead = not self._leading
            self._leading = True
        if not lead:
            mine.done.wait()
            if not mine.lead:
                if mine.error is not None:
                    raise mine.error
                return mine.result
            mine.done.clear()
        self._lead(mine)
        if mine.error is not None:
            raise mine.error
        return mine.result

    def queued(self) -> int:
        """Payloads waiting for a batch (not those of the batch running)."""
        with self._lock:
            return len(self._queue)

    def idle(self) -> bool:
        """No batch running and none waiting."""
        with self._lock:
            return not self._leading and not self._queue

    def _lead(self, mine: _Pending) -> None:
        """Run batches until this caller's payload is in one, then hand the queue to the next waiter."""
        while True:
            with self._lock:
                batch, self._queue = self._queue[:self.max_batch], self._queue[self.max_batch:]
            try:
                self.run_batch(batch)
            except BaseException as exc:    # never leave a caller waiting: each hears what stopped it
                for pending in batch:
                    if pending.error is None:
                        pending.error = exc
                raise
            finally:
                for pending in batch:
                    pending.lead = False
                    if pending is not mine:
                        pending.done.set()
                with self._lock:
                    if mine in batch:
                        if self._queue:         # those who came meanwhile: the first of them leads
                            successor = self._queue[0]
                            successor.lead = True
                            successor.done.set()
                        else:
                            self._leading = False
            if mine in batch:
                return


class GroupCommit:
    """Inserts rows with ``statement`` (an INSERT taking the row's values as parameters). With
    ``returning_keys`` each row is its own INSERT in the shared transaction, so :meth:`insert` can
    return the row's generated primary key (one executemany otherwise)."""

    def __init__(self, engine: Engine, statement: Executable, max_batch: int = MAX_BATCH,
                 returning_keys: bool = False):
        self.engine = engine
        self.statement = statement
        self.returning_keys = returning_keys
        self._batches = LeaderBatches(self._commit, max_batch)

    def insert(self, values: dict[str, Any]) -> Any:
        """Returns once the row is committed (its primary key with ``returning_keys``); raises what
        made its transaction fail."""
        return self._batches.submit(values)

    def queued(self) -> int:
        return self._batches.queued()

    def idle(self) -> bool:
        return self._batches.idle()

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            self._insert(batch)
            errors: list[BaseException | None] = [None] * len(batch)
        except Exception as exc:  # noqa: BLE001 - one bad row must not fail its neighbours: each alone
            errors = [exc] if len(batch) == 1 else [self._insert_alone(p) for p in batch]
        for pending, error in zip(batch, errors):
            pending.error = error

    def _insert(self, batch: list[_Pending]) -> None:
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            if self.returning_keys:
                keys = [conn.execute(self.statement, p.payload).inserted_primary_key[0] for p in batch]
            else:
                conn.execute(self.statement, [p.payload for p in batch])
        if self.returning_keys:
            for pending, key in zip(batch, keys):
                pending.result = key

    def _insert_alone(self, pending: _Pending) -> BaseException | None:
        try:
            self._insert([pending])
        except Exception as exc:  # noqa: BLE001 - re-raised in the row's own caller
            return exc
        return None
