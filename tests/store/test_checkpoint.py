"""WAL checkpoints in their own thread (gateway/store/checkpoint.py), on a real SQLite file."""
from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

from sqlalchemy import create_engine

from gateway.store.checkpoint import WAL_BACKSTOP_PAGES, WalCheckpointer
from gateway.store.schema import make_engine

ROWS = 200


def _rows_in_database_file_alone(db: Path, scratch: Path) -> int:
    """Rows of ``t`` in the database file without its WAL: what checkpoints have copied there."""
    copy = scratch / "copy.db"
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(copy)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]
    except sqlite3.OperationalError:        # not even the table has reached the file yet
        return 0
    finally:
        conn.close()


def _write_rows(engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (n INTEGER PRIMARY KEY, body TEXT)")
    for n in range(ROWS):                   # one commit each, as messages commit
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (?, ?)", (n, "x" * 500))


def _wait_for_rows(db: Path, scratch: Path, seconds: float = 5.0) -> int:
    deadline = time.monotonic() + seconds
    while (found := _rows_in_database_file_alone(db, scratch)) < ROWS and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_the_thread_copies_committed_pages_into_the_database_file(tmp_path):
    db = tmp_path / "var" / "gateway.db"
    engine = make_engine(f"sqlite:///{db}")
    _write_rows(engine)
    # the commits stayed in the WAL: under the backstop, no commit checkpointed inline
    assert _rows_in_database_file_alone(db, tmp_path) == 0
    checkpointer = WalCheckpointer(engine, interval=0.02).start()
    try:
        assert _wait_for_rows(db, tmp_path) == ROWS
    finally:
        checkpointer.stop()
        engine.dispose()


def test_a_relative_database_path_is_checkpointed_after_the_working_directory_changes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    engine = make_engine("sqlite:///var/gateway.db")
    _write_rows(engine)
    checkpointer = WalCheckpointer(engine, interval=0.02)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    checkpointer.start()
    try:
        assert _wait_for_rows(tmp_path / "var" / "gateway.db", tmp_path) == ROWS
        assert list(elsewhere.iterdir()) == []          # no stray database made where it now runs
    finally:
        checkpointer.stop()
        engine.dispose()


def test_connections_keep_sqlites_own_checkpoint_as_the_backstop(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == WAL_BACKSTOP_PAGES
    engine.dispose()


def test_nothing_runs_for_postgresql_or_an_in_memory_sqlite():
    for url in ("postgresql+psycopg://nobody@127.0.0.1:1/none", "sqlite://", "sqlite:///:memory:"):
        checkpointer = WalCheckpointer(create_engine(url)).start()
        assert checkpointer.path is None and not checkpointer._thread.is_alive()
        checkpointer.stop()
