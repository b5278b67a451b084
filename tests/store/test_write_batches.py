"""SQLite: units of work that arrive while another runs share one transaction (ResourceStore.writing,
group_commit.LeaderBatches). Each caller gets its own result, in its own context, and only once its
unit is committed; one unit's error undoes its own writes only; a batch whose commit fails has every
unit run again alone, so nothing is lost and nothing is stored twice."""
from __future__ import annotations

import sqlite3
from contextvars import ContextVar

import pytest
from sqlalchemy import event, func, select

from gateway import create_app
from gateway.store import schema
from tests.store.sqlite_lock import immediate_begins, run_while_locked

caller: ContextVar[str] = ContextVar("test_caller", default="nobody")


@pytest.fixture
def sqlite_store(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "DATABASE_URL": f"sqlite:///{tmp_path / 'g.db'}"})
    store = app.extensions["gateway"].store
    yield store, tmp_path / "g.db"
    store.engine.dispose()


def _patient(name: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": name}]}


def _patients(store) -> list[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(schema.idx_token.c.code).where(
            schema.idx_token.c.res_type == "Patient", schema.idx_token.c.param == "identifier")).scalars()
        return sorted(rows)


def _run_together(store, db_path, units: dict[str, object]) -> dict[str, object]:
    """Each unit from its own thread, its ``caller`` context variable set to its name, while the write
    lock is held elsewhere."""
    def call(name: str):
        caller.set(name)        # each thread starts in a context of its own
        return store.writing(units[name])
    return run_while_locked(db_path, {name: (lambda name=name: call(name)) for name in units}, store._batches.queued)


def _creating(name: str, fail: bool = False):
    def unit(tx):
        tx.create(_patient(name))
        if fail:
            raise ValueError(f"{name} refused after writing")
        return caller.get()
    return unit


def test_units_arriving_together_share_one_transaction_each_in_its_callers_context(sqlite_store):
    store, db_path = sqlite_store
    begins = immediate_begins(store.engine)
    names = [f"p{i}" for i in range(6)]
    outcome = _run_together(store, db_path, {name: _creating(name) for name in names})
    assert outcome == {name: name for name in names}      # each its own result, read from its own context
    assert _patients(store) == names
    assert len(begins) == 2          # the first unit alone, then the five that queued behind it


def test_a_unit_that_fails_undoes_only_its_own_writes(sqlite_store):
    store, db_path = sqlite_store
    units = {name: _creating(name, fail=(name == "p2")) for name in ("p0", "p1", "p2", "p3", "p4")}
    outcome = _run_together(store, db_path, units)
    assert isinstance(outcome["p2"], ValueError) and "p2 refused" in str(outcome["p2"])
    assert {name: result for name, result in outcome.items() if name != "p2"} == {
        "p0": "p0", "p1": "p1", "p3": "p3", "p4": "p4"}
    assert _patients(store) == ["p0", "p1", "p3", "p4"]


def test_a_batch_whose_commit_fails_runs_each_unit_again_alone_and_stores_it_once(sqlite_store):
    store, db_path = sqlite_store
    runs: dict[str, int] = {}
    failed = []

    def counted(name: str):
        inner = _creating(name)

        def unit(tx):
            runs[name] = runs.get(name, 0) + 1
            return inner(tx)
        return unit

    def fail_the_shared_commit(conn):  # noqa: ANN001
        if conn.info.get("savepoints") and not failed:
            failed.append(1)
            raise sqlite3.OperationalError("disk I/O error (seeded)")

    def saw_savepoint(conn, _name):  # noqa: ANN001
        conn.info["savepoints"] = True

    event.listen(store.engine, "savepoint", saw_savepoint)
    event.listen(store.engine, "commit", fail_the_shared_commit)
    names = [f"p{i}" for i in range(5)]
    try:
        outcome = _run_together(store, db_path, {name: counted(name) for name in names})
    finally:
        event.remove(store.engine, "commit", fail_the_shared_commit)
        event.remove(store.engine, "savepoint", saw_savepoint)
    assert failed == [1]
    assert outcome == {name: name for name in names}
    assert _patients(store) == names                     # once each
    assert runs["p0"] == 1 and all(runs[name] == 2 for name in names[1:])   # the batch's four ran again
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.resources)).scalar_one() == 5
