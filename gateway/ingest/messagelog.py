"""The message log: every inbound message, stored raw before it is answered, so it can be replayed.

One row per arrival (a resend is a new row pointing at the same content hash), with the ACK that
was sent and what came of it. Nothing here parses HL7 or knows FHIR.

Two write transactions per message: :meth:`MessageLog.receive` commits the raw bytes first (nothing
is lost before the ACK; concurrent arrivals' rows are group-committed together), and :meth:`MessageLog.finish` records who sent it, the outcome and the ACK
in one UPDATE, inside the caller's transaction when it has one (the pipeline's store transaction),
so the entry, the resources, Provenance and outbox rows commit together.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection, Engine

from gateway.store import now_instant
from gateway.store.access import bound_organization
from gateway.store.group_commit import GroupCommit
from gateway.store.schema import message_log

FINISHED = ("processed", "error", "rejected", "on-hold")

# Statements built once: SQLAlchemy builds and keys an expression in about as much time as SQLite
# takes to run it, and the log runs these for every message. Values come as execute parameters.
_INSERT = insert(message_log)
_UPDATE = update(message_log).where(message_log.c.id == bindparam("log_id"))
_SAME_SENDER = select(
    message_log,
    (message_log.c.content_sha256 == select(message_log.c.content_sha256)
     .where(message_log.c.id == bindparam("log_id")).scalar_subquery()).label("same_content"),
).where(message_log.c.sender_facility == bindparam("facility"),
        message_log.c.control_id == bindparam("control"),
        message_log.c.id != bindparam("log_id")).order_by(message_log.c.id)
_BY_ID = select(message_log).where(message_log.c.id == bindparam("log_id"))


def ack_code(ack: bytes | None) -> str | None:
    """MSA-1 of an ACK (None for documents, answered in FHIR, and for messages not answered yet)."""
    if not ack:
        return None
    for line in ack.replace(b"\n", b"\r").split(b"\r"):
        if line.startswith(b"MSA") and len(line) > 5:
            return line[4:6].decode("ascii", "replace")
    return None


_FRAMING = b"\x0b\x1c\r\n\t "
_BOM = b"\xef\xbb\xbf"


def content_digest(raw: bytes) -> str:
    """SHA-256 of a message as HL7 reads it, so a resend is recognised however it was framed.

    Senders frame the same message differently from one try to the next: python-hl7's
    ``mllp_send --loose`` turns line ends into ``\\r`` and drops the last one, a file POSTed with curl
    keeps its ``\\r\\n``, interface engines add or drop the trailing segment terminator or leave the
    MLLP start byte in. None of that is content: leading and trailing framing (MLLP bytes, blanks,
    line ends, a UTF-8 byte order mark) is dropped and segment terminators are written as ``\\r``
    (``\\r\\n`` always; a lone ``\\n`` only in a message with no ``\\r``, as the parser reads it). No
    byte inside a segment changes, and none of these bytes can end a GB18030 character."""
    body = raw.strip(_FRAMING)
    if body.startswith(_BOM):
        body = body[len(_BOM):].strip(_FRAMING)
    body = body.replace(b"\r\n", b"\r")
    if b"\r" not in body:
        body = body.replace(b"\n", b"\r")
    return hashlib.sha256(body).hexdigest()


@dataclass
class LoggedMessage:
    id: int
    received_at: str
    transport: str
    format: str
    sender_application: str | None
    sender_facility: str | None
    control_id: str | None
    message_type: str | None
    content_sha256: str
    status: str
    raw: bytes
    ack: bytes | None
    detail: dict


@dataclass
class EarlierArrivals:
    same_content: LoggedMessage | None
    other_content: bool


class MessageLog:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._receiver = GroupCommit(engine, _INSERT, returning_keys=True)

    def receive(self, raw: bytes, *, transport: str, format: str = "hl7v2") -> int:
        """Store the bytes as they came; returns the log id. Called before anything can fail.

        The organization the sender was held to (``bound_to``) is kept in the detail, so a replay or
        start-up recovery holds the message to the same organization as its arrival did."""
        bound = bound_organization()
        # concurrent arrivals share one transaction (gateway/store/group_commit.py); each returns
        # only once its own row is committed
        return self._receiver.insert({
            "received_at": now_instant(), "transport": transport, "format": format, "raw": raw,
            "content_sha256": content_digest(raw), "status": "received",
            "detail": orjson.dumps({"bound_to": bound}).decode() if bound else None})

    def earlier_arrivals(self, log_id: int, sender_facility: str, control_id: str,
                         conn: Connection | None = None) -> "EarlierArrivals":
        """What this sender sent before under the same control id, in one query: the first finished
        arrival with the same content (its ACK is the answer to a resend), and whether any arrival
        had other content (the sender's counter was reset). On ``conn`` (the caller's write
        transaction) when given."""
        fitted = _fitted({"sender_facility": sender_facility, "control_id": control_id})
        params = {"log_id": log_id, "facility": fitted["sender_facility"], "control": fitted["control_id"]}
        if conn is not None:
            rows = conn.execute(_SAME_SENDER, params).all()
        else:
            with self.engine.connect() as own:
                rows = own.execute(_SAME_SENDER, params).all()
        same = next((r for r in rows if r.same_content and r.status in FINISHED), None)
        return EarlierArrivals(_logged(same) if same else None, any(not r.same_content for r in rows))

    def finish(self, log_id: int, status: str, ack: bytes | None, detail: dict[str, Any], *,
               identity: dict[str, str | None] | None = None, conn: Connection | None = None) -> None:
        """The outcome, in one UPDATE: ``identity`` (sender_application, sender_facility, control_id,
        message_type) when known; on ``conn`` (the caller's open write transaction) when given, so it
        commits with what the message stored, else in a transaction of its own."""
        bound = bound_organization()
        if bound and "bound_to" not in detail:
            detail = {**detail, "bound_to": bound}
        values = {"log_id": log_id, "status": status, "ack": ack, "ack_code": ack_code(ack),
                  "detail": orjson.dumps(detail).decode(),
                  **_fitted(identity or {})}
        if conn is not None:
            conn.execute(_UPDATE, values)
            return
        with self.engine.connect().execution_options(write=True) as own, own.begin():
            own.execute(_UPDATE, values)

    def refuse(self, raw: bytes, *, transport: str, format: str, reason: str, **detail: Any) -> int:
        """One row for a body refused before anything parsed it (too large, too many rows or entries,
        a DTD): the bytes as they came, status ``rejected``, and the reason; returns the log id."""
        log_id = self.receive(raw, transport=transport, format=format)
        self.finish(log_id, "rejected", None, {"errors": [reason], **detail})
        return log_id

    def get(self, log_id: int) -> LoggedMessage | None:
        with self.engine.connect() as conn:
            row = conn.execute(_BY_ID, {"log_id": log_id}).first()
        return _logged(row) if row else None

    def recent(self, limit: int = 100, status: str | None = None) -> list[LoggedMessage]:
        query = select(message_log).order_by(message_log.c.id.desc()).limit(limit)
        if status:
            query = query.where(message_log.c.status == status)
        with self.engine.connect() as conn:
            return [_logged(row) for row in conn.execute(query).all()]


def _fitted(identity: dict[str, str | None]) -> dict[str, str | None]:
    """Identity values cut to their columns' lengths and without NUL characters: PostgreSQL refuses
    both where SQLite keeps them, and a message with an overlong MSH field is refused anyway
    (``Hl7Pipeline``). The raw bytes keep the message exactly as it came."""
    return {key: value.replace("\x00", "")[:message_log.c[key].type.length] if isinstance(value, str) else value
            for key, value in identity.items()}


def _logged(row) -> LoggedMessage:
    return LoggedMessage(id=row.id, received_at=row.received_at, transport=row.transport, format=row.format,
                         sender_application=row.sender_application, sender_facility=row.sender_facility,
                         control_id=row.control_id, message_type=row.message_type,
                         content_sha256=row.content_sha256, status=row.status, raw=row.raw, ack=row.ack,
                         detail=orjson.loads(row.detail) if row.detail else {})
