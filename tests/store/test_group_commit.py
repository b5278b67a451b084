"""Group commit (gateway/store/group_commit.py): concurrent rows share a transaction, each caller
returns only after its row is committed, and one bad row fails only its own caller."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.store.group_commit import GroupCommit
from gateway.store.schema import make_engine

rows = Table("rows", MetaData(), Column("id", Integer, primary_key=True), Column("name", String(32), unique=True))


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'group.db'}")
    rows.create(engine)
    return engine


def _begins(engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_rest: seen.append(statement) if statement == "BEGIN IMMEDIATE" else None)
    return seen


def _names(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(rows.c.name)).scalars())


def _run_while_locked(engine, writer: GroupCommit, names: list[str], db_path) -> dict[str, BaseException | None]:
    """Every name inserted from its own thread while another connection holds SQLite's write lock,
    so the callers queue up behind the first (the leader, waiting in BEGIN IMMEDIATE)."""
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    outcome: dict[str, BaseException | None] = {}

    def insert_one(name: str) -> None:
        try:
            writer.insert({"name": name})
            outcome[name] = None
        except Exception as exc:  # noqa: BLE001
            outcome[name] = exc

    threads = [threading.Thread(target=insert_one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while writer.queued() < len(names) - 1 and time.monotonic() < deadline:   # all but the leader queued
        time.sleep(0.01)
    assert not outcome, "nothing may return before its row is committed"
    blocker.execute("COMMIT")
    blocker.close()
    for thread in threads:
        thread.join(10)
    return outcome


def test_concurrent_rows_share_a_transaction_and_all_commit(engine, tmp_path):
    writer = GroupCommit(engine, insert(rows))
    begins = _begins(engine)
    names = [f"row-{i}" for i in range(8)]
    outcome = _run_while_locked(engine, writer, names, tmp_path / "group.db")
    assert outcome == {name: None for name in names}
    assert _names(engine) == sorted(names)
    assert len(begins) == 2          # the leader's own row, then the seven that queued behind it


def test_one_bad_row_fails_only_its_caller(engine, tmp_path):
    writer = GroupCommit(engine, insert(rows))
    writer.insert({"name": "taken"})
    names = ["a", "b", "taken", "c", "d"]
    outcome = _run_while_locked(engine, writer, names, tmp_path / "group.db")
    assert isinstance(outcome.pop("taken"), IntegrityError)
    assert outcome == {"a": None, "b": None, "c": None, "d": None}
    assert _names(engine) == ["a", "b", "c", "d", "taken"]


def test_one_caller_alone_commits_at_once(engine):
    writer = GroupCommit(engine, insert(rows))
    begins = _begins(engine)
    writer.insert({"name": "alone"})
    assert _names(engine) == ["alone"] and len(begins) == 1
    assert writer.idle()


def test_returning_keys_gives_each_caller_its_own_row_id(engine, tmp_path):
    writer = GroupCommit(engine, insert(rows), returning_keys=True)
    keys: dict[str, int] = {}
    lock = threading.Lock()

    def insert_one(name: str) -> None:
        key = writer.insert({"name": name})
        with lock:
            keys[name] = key

    threads = [threading.Thread(target=insert_one, args=(f"k{i}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(rows.c.name, rows.c.id)).all())
    assert keys == stored and len(set(keys.values())) == 12
