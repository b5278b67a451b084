"""Group commit (gateway/store/group_commit.py): concurrent rows share a transaction, each caller
returns only after its row is committed, and one bad row fails only its own caller."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.store.group_commit import GroupCommit
from gateway.store.schema import make_engine
from tests.store.sqlite_lock import immediate_begins, run_while_locked

rows = Table("rows", MetaData(), Column("id", Integer, primary_key=True), Column("name", String(32), unique=True))


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'group.db'}")
    rows.create(engine)
    return engine


def _names(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(rows.c.name)).scalars())


def _run_while_locked(writer: GroupCommit, names: list[str], db_path) -> dict[str, BaseException | None]:
    """Every name inserted from its own thread while the write lock is held elsewhere: None or the error."""
    outcome = run_while_locked(db_path, {name: (lambda name=name: writer.insert({"name": name})) for name in names},
                               writer.queued)
    return {name: (result if isinstance(result, BaseException) else None) for name, result in outcome.items()}


def test_concurrent_rows_share_a_transaction_and_all_commit(engine, tmp_path):
    writer = GroupCommit(engine, insert(rows))
    begins = immediate_begins(engine)
    names = [f"row-{i}" for i in range(8)]
    outcome = _run_while_locked(writer, names, tmp_path / "group.db")
    assert outcome == {name: None for name in names}
    assert _names(engine) == sorted(names)
    assert len(begins) == 2          # the leader's own row, then the seven that queued behind it


def test_one_bad_row_fails_only_its_caller(engine, tmp_path):
    writer = GroupCommit(engine, insert(rows))
    writer.insert({"name": "taken"})
    names = ["a", "b", "taken", "c", "d"]
    outcome = _run_while_locked(writer, names, tmp_path / "group.db")
    assert isinstance(outcome.pop("taken"), IntegrityError)
    assert outcome == {"a": None, "b": None, "c": None, "d": None}
    assert _names(engine) == ["a", "b", "c", "d", "taken"]


def test_one_caller_alone_commits_at_once(engine):
    writer = GroupCommit(engine, insert(rows))
    begins = immediate_begins(engine)
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
