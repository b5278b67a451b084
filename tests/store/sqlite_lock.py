"""Helpers for the group-commit tests: callers released while another connection holds SQLite's
write lock queue behind the first (the leader, waiting in BEGIN IMMEDIATE)."""
from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any, Callable

from sqlalchemy import event


def immediate_begins(engine) -> list[str]:
    """Every ``BEGIN IMMEDIATE`` (a write transaction) the engine issues from now on."""
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_rest: seen.append(statement) if statement == "BEGIN IMMEDIATE" else None)
    return seen


def run_while_locked(db_path, calls: dict[str, Callable[[], Any]], queued: Callable[[], int]) -> dict[str, Any]:
    """Each call from its own thread while the write lock is held elsewhere; once all but the first
    are queued (``queued()``), the lock goes. Returns each call's result, or the exception it raised;
    none may return while the lock is held."""
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    outcome: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            outcome[name] = calls[name]()
        except Exception as exc:  # noqa: BLE001
            outcome[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while queued() < len(calls) - 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not outcome, "nothing may return before it is committed"
    blocker.execute("COMMIT")
    blocker.close()
    for thread in threads:
        thread.join(10)
    return outcome
