"""A small table's rows, kept in memory and compared with the database at most every few seconds.

The clients and the signing keys are read on every request and change a few times a year. Each
process keeps them as Python values; a look at most ``REFRESH_SECONDS`` after the last comparison
uses them as they are, a later one runs one cheap query (the row count and the highest change
counter) and reads the rows again only when that changed. ``fresh=True`` compares now (issuing a
token, an id not in the cache); :meth:`invalidate` makes this process's own edits count at once.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

T = TypeVar("T")
REFRESH_SECONDS = 2.0      # how stale a running process's view of another process's edits may be


class TableCache(Generic[T]):
    def __init__(self, engine: Engine, stamp: Select, read: Callable[[Connection], T], empty: T):
        self.engine = engine
        self._stamp_query = stamp
        self._read = read
        self._value = empty
        self._stamp: tuple | None = None
        self._looked = float("-inf")          # time.monotonic() of the last comparison
        self._lock = threading.Lock()

    def get(self, fresh: bool = False) -> T:
        now = time.monotonic()
        if not fresh and now - self._looked < REFRESH_SECONDS:
            return self._value
        with self.engine.connect() as conn:
            stamp = tuple(conn.execute(self._stamp_query).one())
            with self._lock:
                if stamp != self._stamp:
                    self._value = self._read(conn)
                    self._stamp = stamp
                self._looked = now
                return self._value

    def invalidate(self) -> None:
        with self._lock:
            self._stamp = None
            self._looked = float("-inf")
