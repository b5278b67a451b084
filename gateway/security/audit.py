"""The audit trail: one FHIR AuditEvent per access to clinical data, refused ones included.

Who (client id, its organization and role, source address), what (the resource, or the search
query, or the HL7 message), when, and how it ended (HTTP status or ACK code). Each record is one
INSERT into ``audit_events`` (the AuditEvent JSON plus the columns it is searched on), so auditing
every request stays cheap; concurrent requests' rows are group-committed in one transaction
(``gateway.store.group_commit``), and a request is answered only once its row is committed. Records are never updated or deleted through the gateway; admins and
regulators read them at ``/fhir/AuditEvent``.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import orjson
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from gateway.observability import AUDIT_EVENTS, TOKENS
from gateway.security.tables import audit_events
from gateway.store import new_resource_id
from gateway.store.group_commit import GroupCommit

REST_INTERACTION = "http://hl7.org/fhir/restful-interaction"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"

# what the gateway calls an access -> (AuditEvent.action, subtype system, subtype code)
ACTIVITIES: dict[str, tuple[str, str]] = {
    "read": ("R", REST_INTERACTION), "vread": ("R", REST_INTERACTION),
    "history-instance": ("R", REST_INTERACTION), "history-type": ("R", REST_INTERACTION),
    "history-system": ("R", REST_INTERACTION), "search-type": ("E", REST_INTERACTION),
    "create": ("C", REST_INTERACTION), "update": ("U", REST_INTERACTION), "delete": ("D", REST_INTERACTION),
    "transaction": ("E", REST_INTERACTION), "batch": ("E", REST_INTERACTION), "operation": ("E", REST_INTERACTION),
    "hl7v2": ("C", "{base}/CodeSystem/audit-activity"), "ingest": ("C", "{base}/CodeSystem/audit-activity"),
    "token": ("E", "{base}/CodeSystem/audit-activity"), "admin": ("E", "{base}/CodeSystem/audit-activity"),
    "export": ("R", "{base}/CodeSystem/audit-activity"), "other": ("E", "{base}/CodeSystem/audit-activity"),
}


@dataclass(frozen=True)
class AuditRecord:
    """One access, as the hooks see it; :meth:`AuditLog.record` turns it into an AuditEvent."""
    activity: str                       # a key of ACTIVITIES
    outcome_status: int                 # HTTP status; MLLP uses 200 (AA), 422 (AE) and 403/400 (AR)
    outcome_text: str
    client_id: str | None = None
    organization: str | None = None
    role: str | None = None
    address: str | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    query: str | None = None            # a search's query string
    description: str = ""               # method and path, or "MLLP message"
    message_log_id: str | None = None
    transport: str = "http"


class AuditLog:
    def __init__(self, engine: Engine, canonical_base: str):
        self.engine = engine
        self.base = canonical_base.rstrip("/")
        self._writer = GroupCommit(engine, insert(audit_events))

    def record(self, rec: AuditRecord) -> str:
        event_id = new_resource_id()     # time-ordered: the unique index on id grows at its end
        recorded = _now()
        outcome = "0" if rec.outcome_status < 400 else ("4" if rec.outcome_status < 500 else "8")
        action, system = ACTIVITIES.get(rec.activity, ACTIVITIES["other"])
        event = self._event(event_id, recorded, rec, action, system.format(base=self.base), outcome)
        # concurrent requests' rows share one transaction; this returns once the row is committed
        self._writer.insert(dict(
            id=event_id, recorded=recorded, client_id=rec.client_id, organization=rec.organization,
            role=rec.role, action=action, subtype=rec.activity, outcome=outcome, status=rec.outcome_status,
            entity_type=rec.entity_type, entity_id=rec.entity_id, address=rec.address,
            content=orjson.dumps(event)))
        AUDIT_EVENTS.labels(rec.activity, outcome).inc()
        if rec.activity == "token":
            TOKENS.labels("issued" if outcome == "0" else "refused").inc()
        return event_id

    def _event(self, event_id: str, recorded: str, rec: AuditRecord, action: str, system: str,
               outcome: str) -> dict:
        event_type = ({"system": DCM, "code": "110107", "display": "Import"} if rec.activity in ("hl7v2", "ingest")
                      else {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"})
        agent: dict = {
            "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP" if action == "R" else "AUT"}]},
            "who": ({"identifier": {"system": f"{self.base}/sid/client", "value": rec.client_id},
                     "display": f"{rec.client_id} ({rec.role} of {rec.organization})"}
                    if rec.client_id else {"display": "anonymous (no valid token)"}),
            "requestor": True,
        }
        if rec.address:
            agent["network"] = {"address": rec.address, "type": "2"}
        agents = [agent]
        if rec.organization:
            agents.append({"who": {"identifier": {"system": f"{self.base}/sid/facility", "value": rec.organization}},
                           "requestor": False})
        event: dict = {
            "resourceType": "AuditEvent", "id": event_id, "meta": {"lastUpdated": recorded},
            "type": event_type, "subtype": [{"system": system, "code": rec.activity}], "action": action,
            "recorded": recorded, "outcome": outcome, "outcomeDesc": rec.outcome_text[:1000],
            "agent": agents,
            "source": {"site": rec.transport, "observer": {"display": "Lecheng FHIR gateway"},
                       "type": [{"system": SOURCE_TYPE, "code": "3", "display": "Web Server"}]},
        }
        entity: dict = {}
        if rec.entity_type and rec.entity_id:
            entity["what"] = {"reference": f"{rec.entity_type}/{rec.entity_id}"}
        elif rec.message_log_id:
            entity["what"] = {"identifier": {"system": f"{self.base}/sid/message-log", "value": rec.message_log_id}}
        if rec.entity_type:
            entity["type"] = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
        if rec.query:     # R4 sev-1: an entity has a name or a query, never both (the type is in description)
            entity["query"] = base64.b64encode(rec.query.encode("utf-8")).decode("ascii")
        elif rec.entity_type:
            entity["name"] = rec.entity_type
        if rec.description:
            entity["description"] = rec.description[:500]
        if entity:
            event["entity"] = [entity]
        return event

    # ------------------------------------------------------------------ reading

    def read(self, event_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(audit_events.c.content).where(audit_events.c.id == event_id)).first()
        return orjson.loads(row.content) if row else None

    def search(self, criteria: list[tuple[str, str]], count: int, cursor: str | None) -> tuple[list[dict], int, str | None]:
        """Newest first. ``criteria`` are (parameter, value) pairs, ANDed; commas in a value OR."""
        a = audit_events
        conditions = []
        for name, value in criteria:
            values = [v for v in value.split(",") if v]
            if name == "date":
                conditions.append(_or([_date_condition(v) for v in values]))
            else:
                column = SEARCH_COLUMNS[name]
                if name == "entity":
                    pairs = [v.rstrip("/").split("/")[-2:] for v in values]
                    conditions.append(_or([(a.c.entity_type == p[0]) & (a.c.entity_id == p[1])
                                           for p in pairs if len(p) == 2] or [a.c.seq < 0]))
                else:
                    conditions.append(column.in_([v.split("|", 1)[-1] for v in values]))
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(a).where(*conditions)).scalar_one()
            page = list(conditions)
            if cursor and cursor.isdigit():
                page.append(a.c.seq < int(cursor))
            rows = conn.execute(select(a.c.seq, a.c.content).where(*page).order_by(a.c.seq.desc())
                                .limit(count + 1)).all()
        more = len(rows) > count
        rows = rows[:count]
        return [orjson.loads(r.content) for r in rows], total, (str(rows[-1].seq) if more and rows else None)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(audit_events)).scalar_one()


SEARCH_COLUMNS = {
    "_id": audit_events.c.id, "agent": audit_events.c.client_id, "organization": audit_events.c.organization,
    "address": audit_events.c.address, "entity-type": audit_events.c.entity_type, "entity": audit_events.c.entity_id,
    "outcome": audit_events.c.outcome, "action": audit_events.c.action, "subtype": audit_events.c.subtype,
    "role": audit_events.c.role,
}
SEARCH_PARAMETERS = {
    "date": ("date", "When the event was recorded (ge/gt/le/lt/eq prefixes)"),
    "agent": ("token", "The client id that made the request"),
    "organization": ("token", "The organization (facility code) of that client"),
    "role": ("token", "The role of that client (hospital, pharmacy, ...)"),
    "address": ("token", "The network address the request came from"),
    "entity-type": ("token", "The resource type accessed"),
    "entity": ("reference", "The resource accessed (Type/id)"),
    "outcome": ("token", "0 success, 4 refused or invalid, 8 failed inside the gateway"),
    "action": ("token", "C, R, U, D or E"),
    "subtype": ("token", "read, search-type, create, hl7v2, token, ..."),
}

_DATE = re.compile(r"^(eq|ge|gt|le|lt)?(\d{4}-\d{2}-\d{2})(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?$")


class AuditSearchError(ValueError):
    pass


def _date_condition(value: str):
    match = _DATE.match(value)
    if not match:
        raise AuditSearchError(f"'{value}' is not a date search value (e.g. ge2026-11-23 or ge2026-11-23T10:00:00Z)")
    prefix, day, time_part = match.group(1) or "eq", match.group(2), match.group(3)
    col = audit_events.c.recorded
    if time_part:
        moment = datetime.fromisoformat(f"{day}{time_part}".replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        low = high = _instant(moment)
    else:
        start = date.fromisoformat(day)
        low, high = f"{start.isoformat()}T00:00:00.000Z", f"{(start + timedelta(days=1)).isoformat()}T00:00:00.000Z"
    return {"eq": (col >= low) & (col < high) if low != high else col == low, "ge": col >= low,
            "gt": col >= high if low != high else col > low, "le": col < high if low != high else col <= low,
            "lt": col < low}[prefix]


def _or(conditions: list):
    from sqlalchemy import or_
    return or_(*conditions)


def _instant(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _now() -> str:
    return _instant(datetime.now(timezone.utc))
