"""Reading the message log the way an operator asks about it: "did hospital X's message arrive, what
did we answer, what did it become, did the prescription center get it, and why not".

Two questions, both read-only:

* :func:`find_messages`: the log filtered by sender, message type, status, ACK code, time, control
  id or a text in the raw bytes, newest first, paged by id (``before``: the cursor is the last id
  of the previous page, so a page never shifts while new messages arrive);
* :func:`message_detail`: one message with its raw text decoded with the charset it declares
  (MSH-18), its segments with the field names of its HL7 version (hl7apy's, via
  :mod:`gateway.hl7v2.names`), the ACK we answered, the resource versions it wrote, and the
  deliveries those versions caused (``gateway/routing``'s outbox rows).

Byte searches (a text in the raw message, the ACK code in MSA-1) run in the database on both
engines: SQLite's ``instr`` and PostgreSQL's ``position`` both work on blobs, so no row is loaded
into Python to be filtered.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import or_, select, tuple_
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement
from sqlalchemy.types import Boolean

from gateway.store.schema import deliveries, message_log

STATUSES = ("received", "processed", "error", "rejected", "on-hold")
ACK_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")
# the columns a listing shows; raw and ACK bytes stay in the database until one message is opened
_SUMMARY = [c for c in message_log.c if c.name not in ("raw", "ack", "detail")]


class _BytesContain(FunctionElement):
    """``haystack`` (a blob column) contains ``needle`` (bytes), on SQLite and PostgreSQL."""
    type = Boolean()
    inherit_cache = True
    name = "bytes_contain"


@compiles(_BytesContain)
def _bytes_contain_default(element, compiler, **kw):       # SQLite (and others with instr)
    haystack, needle = list(element.clauses)
    return f"instr({compiler.process(haystack, **kw)}, {compiler.process(needle, **kw)}) > 0"


@compiles(_BytesContain, "postgresql")
def _bytes_contain_postgresql(element, compiler, **kw):
    haystack, needle = list(element.clauses)
    return f"position({compiler.process(needle, **kw)} in {compiler.process(haystack, **kw)}) > 0"


def bytes_contain(haystack: Any, needle: bytes) -> ColumnElement:
    from sqlalchemy import literal
    from sqlalchemy.types import LargeBinary
    return _BytesContain(haystack, literal(needle, LargeBinary))


@dataclass(frozen=True)
class MessageFilter:
    """What an operator narrows the log by; every field optional, all of them ANDed."""
    sender: str | None = None           # MSH-4 sending facility (or MSH-3 application)
    message_type: str | None = None     # RDE^O11, or RDE for every trigger
    status: str | None = None           # received | processed | error | rejected | on-hold
    ack_code: str | None = None         # AA | AE | AR: MSA-1 of the ACK we answered
    control_id: str | None = None       # MSH-10
    text: str | None = None             # a text in the raw message (UTF-8 bytes, or GB18030 too)
    since: str | None = None            # received at or after (ISO instant, as the log writes them)
    until: str | None = None            # received before
    format: str | None = None           # hl7v2, or a document mapping's name
    ids: tuple[int, ...] = ()           # these log ids only

    def problems(self) -> list[str]:
        found = []
        if self.status and self.status not in STATUSES:
            found.append(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")
        if self.ack_code and self.ack_code.upper() not in ACK_CODES:
            found.append(f"ack must be one of {', '.join(ACK_CODES)}, not {self.ack_code!r}")
        return found

    def is_empty(self) -> bool:
        return not any((self.sender, self.message_type, self.status, self.ack_code, self.control_id, self.text,
                        self.since, self.until, self.format, self.ids))

    def conditions(self) -> list[ColumnElement]:
        m = message_log.c
        where: list[ColumnElement] = []
        if self.sender:
            where.append(or_(m.sender_facility == self.sender, m.sender_application == self.sender))
        if self.message_type:
            where.append(m.message_type == self.message_type if "^" in self.message_type
                         else m.message_type.like(f"{self.message_type}^%") | (m.message_type == self.message_type))
        if self.status:
            where.append(m.status == self.status)
        if self.ack_code:
            where.append(m.ack_code == self.ack_code.upper())
        if self.control_id:
            where.append(m.control_id == self.control_id)
        if self.text:
            needles = {self.text.encode("utf-8")}
            try:
                needles.add(self.text.encode("gb18030"))   # Hainan HIS exports without MSH-18 are often GB18030
            except UnicodeEncodeError:
                pass
            where.append(or_(*[bytes_contain(m.raw, n) for n in needles]))
        if self.since:
            where.append(m.received_at >= _instant(self.since))
        if self.until:
            where.append(m.received_at < _instant(self.until))
        if self.format:
            where.append(m.format == self.format)
        if self.ids:
            where.append(m.id.in_(self.ids))
        return where


def _instant(text: str) -> str:
    """The log's instants are UTC ``YYYY-MM-DDTHH:MM:SS.mmmZ``; a date or an instant with an offset
    given by an operator is brought to that form so string order is time order."""
    from datetime import datetime, timezone
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a date or an ISO 8601 instant") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class MessageSummary:
    id: int
    received_at: str
    transport: str
    format: str
    sender_application: str | None
    sender_facility: str | None
    control_id: str | None
    message_type: str | None
    status: str
    ack_code: str | None

    def as_json(self) -> dict:
        return dict(self.__dict__)


def find_messages(engine: Engine, criteria: MessageFilter, limit: int = 100,
                  before: int | None = None) -> list[MessageSummary]:
    """Newest first; ``before``: only ids below it (the previous page's last id)."""
    query = (select(*_SUMMARY).where(*criteria.conditions())
             .order_by(message_log.c.id.desc()).limit(limit))
    if before is not None:
        query = query.where(message_log.c.id < before)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [MessageSummary(r.id, r.received_at, r.transport, r.format, r.sender_application, r.sender_facility,
                           r.control_id, r.message_type, r.status, r.ack_code) for r in rows]


def matching_ids(engine: Engine, criteria: MessageFilter, limit: int) -> list[int]:
    """Oldest first (a replay of a set goes in arrival order, so a later correction wins)."""
    query = (select(message_log.c.id).where(*criteria.conditions()).order_by(message_log.c.id).limit(limit))
    with engine.connect() as conn:
        return [row.id for row in conn.execute(query)]


# ------------------------------------------------------------------ one message

@dataclass
class FieldView:
    position: str           # PID-3
    name: str               # Patient Identifier List
    value: str              # as on the wire (escapes kept: the operator sees what was sent)


@dataclass
class SegmentView:
    index: int
    name: str
    fields: list[FieldView] = field(default_factory=list)


@dataclass
class MessageDetail:
    summary: MessageSummary
    content_sha256: str
    charset: str | None
    text: str               # the raw bytes decoded with the message's charset (replacement marks if not)
    decode_problem: str | None
    segments: list[SegmentView]
    ack: str | None
    detail: dict
    resources: list[str]
    deliveries: list[dict]

    def as_json(self) -> dict:
        return {**self.summary.as_json(), "content_sha256": self.content_sha256, "charset": self.charset,
                "raw": self.text, "decode_problem": self.decode_problem,
                "segments": [{"index": s.index, "name": s.name,
                              "fields": [f.__dict__ for f in s.fields]} for s in self.segments],
                "ack": self.ack, "errors": self.detail.get("errors", []),
                "warnings": self.detail.get("warnings", []), "resources": self.resources,
                "deliveries": self.deliveries,
                "replays": self.detail.get("replays", []),
                "duplicate_of": self.detail.get("duplicate_of"),
                "recovered": self.detail.get("recovered")}


def message_detail(engine: Engine, log_id: int, fallback_charset: str = "gb18030") -> MessageDetail | None:
    with engine.connect() as conn:
        row = conn.execute(select(message_log).where(message_log.c.id == log_id)).first()
        if row is None:
            return None
        detail = orjson.loads(row.detail) if row.detail else {}
        resources = list(detail.get("resources") or [])
        routed = _deliveries_of(conn, resources)
    summary = MessageSummary(row.id, row.received_at, row.transport, row.format, row.sender_application,
                             row.sender_facility, row.control_id, row.message_type, row.status, row.ack_code)
    charset, text, problem, segments = _decode(row.raw, row.format, fallback_charset)
    ack = row.ack.decode(charset or "utf-8", "replace") if row.ack else None
    return MessageDetail(summary, row.content_sha256, charset, text, problem, segments, ack, detail, resources,
                         routed)


def _deliveries_of(conn, resources: list[str]) -> list[dict]:
    """The outbox rows of the versions a message wrote: where each went and how it ended."""
    versions = []
    for ref in resources:
        parts = ref.split("/")
        if len(parts) == 4 and parts[2] == "_history" and parts[3].isdigit():
            versions.append((parts[0], parts[1], int(parts[3])))
    if not versions:
        return []
    d = deliveries.c
    rows = conn.execute(select(deliveries).where(tuple_(d.res_type, d.res_id, d.version_id).in_(versions))
                        .order_by(d.id)).all()
    from gateway.routing.outbox import _delivery
    return [_delivery(r).as_json() for r in rows]


def _decode(raw: bytes, fmt: str, fallback_charset: str) -> tuple[str | None, str, str | None, list[SegmentView]]:
    """(charset, text, why the bytes did not decode, segments with field names)."""
    if fmt != "hl7v2":
        text = raw.decode("utf-8", "replace")
        return "utf-8", text, None, []
    from gateway.hl7v2 import Hl7ParseError, parse_message
    try:
        message = parse_message(raw, fallback_charset=fallback_charset)
    except Hl7ParseError as exc:
        problem = "; ".join(e.text for e in exc.errors) or "not an HL7 v2 message"
        return None, raw.decode("utf-8", "replace"), problem, []
    from gateway.hl7v2.names import field_name
    segments = []
    for segment in message.segments:
        view = SegmentView(segment.index, segment.name)
        for n in range(1, len(segment) + 1):
            value = segment.raw_field(n)
            if value:
                view.fields.append(FieldView(f"{segment.name}-{n}", field_name(segment.name, n, message.version),
                                             value))
        segments.append(view)
    return message.charset or "utf-8", message.text or raw.decode(message.charset or "utf-8", "replace"), None, segments
