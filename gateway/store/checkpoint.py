"""SQLite WAL checkpoints in a thread of their own, off the write path.

In WAL mode each commit appends the pages it changed to the ``-wal`` file, and a *checkpoint* copies
them back into the database file. By default SQLite runs one inside whichever commit takes the WAL
past 1,000 pages: a stored order changes about 40 pages, so about one commit in 25 also copied 4 MB
and synced the database file, while holding the process's write lock (gateway/store/schema.py) that
every other writer queues for. ``serve`` and ``mllp`` run :class:`WalCheckpointer` instead: every
half second a PASSIVE checkpoint on a connection of its own, which writers and readers go on beside
(SQLite's checkpoint lock is not the write lock) and which releases the GIL while it copies; a page
that many commits changed in that half second is copied once. Every connection's own checkpoint
(``wal_autocheckpoint``) is kept as the backstop, at :data:`WAL_BACKSTOP_PAGES`, for processes
without the thread (the CLI) and should it fall behind. Measured at HTTP c=8, three pairs
alternated: 103 -> 113 msg/s, p99 124-165 -> 112-140 ms; checkpointing every 50 ms instead was
slower than none (each checkpoint syncs the file, and hot pages were copied again and again).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading

from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_SECONDS = 0.5     # at 130 orders/s, about 2,500 pages a checkpoint
WAL_BACKSTOP_PAGES = 10_000           # SQLite's own checkpoint, inside a commit: 40 MB behind, or no thread


class WalCheckpointer:
    """PASSIVE checkpoints of ``engine``'s SQLite file every ``interval`` seconds, in a daemon thread.
    Does nothing for other databases (PostgreSQL checkpoints itself) or an in-memory SQLite."""

    def __init__(self, engine: Engine, interval: float = CHECKPOINT_INTERVAL_SECONDS):
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        # absolute: the thread must open the file the engine opened, whatever the working directory becomes
        self.path = os.path.abspath(database) if database and database != ":memory:" else None
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sqlite-wal-checkpoint", daemon=True)

    def start(self) -> "WalCheckpointer":
        if self.path is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _loop(self) -> None:
        conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(self.interval):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:       # a locked or vanished file must not end the thread
                    log.exception("WAL checkpoint of %s failed; trying again", self.path)
        finally:
            conn.close()
