"""What one HL7 message costs the database, counted statement by statement (SQLAlchemy's
``before_cursor_execute``), so a regression in the write path shows here and not only in bench/.

The rules (gateway/ingest/pipeline.py, ../shared/design.md "Invariants of the write path"):
the raw bytes commit alone first; then the log entry's outcome, the resources, their index rows,
the Provenance and the outbox rows commit in ONE transaction; the HTTP audit row is one more
(group-)committed insert. The count does not grow with the store.
"""
from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy import event, func, select

from conftest import ack_segment, post_hl7, sample
from gateway.store import schema

# a new order for a known patient (the most common message): raw insert, dedupe read, the store
# transaction, the audit insert. Lower it when the write path gets cheaper; never raise it lightly.
MAX_STATEMENTS_NEW_ORDER = 27     # was 28 in 5 write transactions at 8b8ccab; +1: the resend check again, in the store transaction (two identical messages at once)
# PostgreSQL holds what a message decides on with advisory locks (StoreTransaction.claim): the new
# order's identifier, found absent, is claimed and looked up again (2), and its sender + control id
# claimed (1); SQLite's one write lock needs none of them
POSTGRESQL_CLAIMS = 3


def _order(number: int) -> bytes:
    raw = sample("rde_o11_new_imported.hl7")
    return (raw.replace(b"BSH20260315000001", f"CTRL{number:06d}".encode())
            .replace(b"BSH-RX-0001", f"RX-{number:06d}".encode()))


@contextmanager
def _statements(engine):
    seen: list[str] = []

    def record(_conn, _cursor, statement, _params, _context, _many):  # noqa: ANN001
        seen.append(" ".join(statement.split()))

    def begin(_conn):  # noqa: ANN001
        seen.append("BEGIN")          # PostgreSQL's driver begins without a statement; SQLite's BEGIN is one

    event.listen(engine, "before_cursor_execute", record)
    if engine.dialect.name != "sqlite":
        event.listen(engine, "begin", begin)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)
        if engine.dialect.name != "sqlite":
            event.remove(engine, "begin", begin)


def _budget(engine) -> int:
    return MAX_STATEMENTS_NEW_ORDER + (POSTGRESQL_CLAIMS if engine.dialect.name == "postgresql" else 0)


def _transactions(statements: list[str]) -> list[list[str]]:
    """Statements grouped by the BEGIN that opened them (SQLite: we issue BEGIN ourselves)."""
    groups: list[list[str]] = []
    for statement in statements:
        if statement.startswith("BEGIN"):
            groups.append([statement])
        elif groups:
            groups[-1].append(statement)
    return groups


def _writes(group: list[str]) -> list[str]:
    return [s for s in group if s.split(" ", 1)[0] in ("INSERT", "UPDATE", "DELETE")]


def test_a_new_order_is_one_store_transaction_with_its_log_entry(client, gateway):
    post_hl7(client, _order(0))                      # the patient, practitioner and organization exist now
    with _statements(gateway.store.engine) as seen:
        _response, ack = post_hl7(client, _order(1))
    assert ack_segment(ack, "MSA")[1] == "AA"
    writing = [g for g in _transactions(seen) if _writes(g)]
    raw, store, audit = writing                         # exactly three write transactions
    assert [s.split(" (")[0] for s in _writes(raw)] == ["INSERT INTO message_log"]
    store_writes = " | ".join(_writes(store))
    for table in ("INSERT INTO resources", "INSERT INTO resource_versions", "INSERT INTO idx_token",
                  "INSERT INTO deliveries", "UPDATE message_log SET"):
        assert table in store_writes, table           # the log's outcome commits with what it stored
    assert store_writes.count("INSERT INTO resources ") == 2      # the order and its Provenance
    assert [s.split(" (")[0] for s in _writes(audit)] == ["INSERT INTO audit_events"]
    assert len(seen) <= _budget(gateway.store.engine), "\n".join(seen)


def test_the_statement_count_does_not_grow_with_the_store(client, gateway):
    post_hl7(client, _order(0))
    with _statements(gateway.store.engine) as early:
        post_hl7(client, _order(1))
    for number in range(2, 40):
        post_hl7(client, _order(number))
    with _statements(gateway.store.engine) as late:
        _response, ack = post_hl7(client, _order(40))
    assert ack_segment(ack, "MSA")[1] == "AA"
    assert len(late) == len(early)


def test_a_failure_in_the_store_transaction_leaves_no_half_message(client, gateway, monkeypatch):
    """Routing (the outbox) fails after the resources were written: nothing of the message stays
    but its raw bytes, kept for replay as an error."""
    def broken_routing(*_args):
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr(gateway.pipeline, "on_stored", broken_routing)
    _response, ack = post_hl7(client, _order(7))
    assert ack_segment(ack, "MSA")[1] == "AR"
    with gateway.store.engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(schema.resources)).scalar_one()
        versions = conn.execute(select(func.count()).select_from(schema.resource_versions)).scalar_one()
        indexed = conn.execute(select(func.count()).select_from(schema.idx_token)).scalar_one()
    assert (stored, versions, indexed) == (0, 0, 0)
    logged = gateway.message_log.recent(1)[0]
    assert logged.status == "error" and logged.raw == _order(7)


def test_the_log_entry_names_sender_and_control_id_once_finished(client, gateway):
    post_hl7(client, _order(3))
    logged = gateway.message_log.recent(1)[0]
    assert (logged.sender_facility, logged.control_id, logged.message_type, logged.status) == (
        "BOAO_SUPER_HOSPITAL", "CTRL000003", "RDE^O11", "processed")
