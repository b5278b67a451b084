"""The outbox: every delivery of a resource version to a destination, and its fate.

    pending ──attempt──> delivered
       │  └─network error, 5xx, 408/409/429──> failed (next_attempt_at, backoff) ──attempt── ...
       │                 other 4xx, too many attempts, too old ──> dead (last error kept)
    held (a hold rule matched)                     replay: dead/failed/held -> pending, once

Workers take a delivery by *leasing* it (``lease_owner``/``lease_until``, a conditional UPDATE), so
any number of threads or processes can share the table: a crashed worker's lease runs out and the
delivery is taken again (a receiver sees at most a repeat of an idempotent request, never a loss).
A delivery is *due* when it is pending or failed, its time has come, nobody holds it, and no earlier
version of the same resource is still waiting for the same destination: versions keep their order
per destination, while a stuck resource holds up nothing but itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import orjson
from sqlalchemy import and_, bindparam, exists, func, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select

from gateway.store import schema

d = schema.deliveries
WAITING = ("pending", "failed")
STATUSES = ("pending", "failed", "delivered", "dead", "held")
ROUTED = ("pending", "failed", "delivered")       # queued or delivered: what a receiving organization may see


@dataclass(frozen=True)
class Delivery:
    id: int
    destination: str
    organization: str | None
    res_type: str
    res_id: str
    version_id: int
    action: str
    rules: str
    message_type: str | None
    sender: str | None
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: float
    next_attempt_at: float
    delivered_at: float | None

    def as_json(self) -> dict:
        return {"id": self.id, "destination": self.destination, "organization": self.organization,
                "resource": f"{self.res_type}/{self.res_id}/_history/{self.version_id}", "action": self.action,
                "rules": self.rules.split(","), "messageType": self.message_type, "sender": self.sender,
                "status": self.status, "attempts": self.attempts, "lastStatusCode": self.last_status_code,
                "lastError": self.last_error, "createdAt": _iso(self.created_at),
                "nextAttemptAt": _iso(self.next_attempt_at) if self.status in WAITING else None,
                "deliveredAt": _iso(self.delivered_at)}


class ReplayRefused(Exception):
    """The delivery cannot be replayed (already delivered, or a newer version already went out)."""


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"


def _delivery(row: Any) -> Delivery:
    return Delivery(id=row.id, destination=row.destination, organization=row.organization, res_type=row.res_type,
                    res_id=row.res_id, version_id=row.version_id, action=row.action, rules=row.rules,
                    message_type=row.message_type, sender=row.sender, status=row.status, attempts=row.attempts,
                    last_status_code=row.last_status_code, last_error=row.last_error, created_at=row.created_at,
                    next_attempt_at=row.next_attempt_at, delivered_at=row.delivered_at)


def _no_earlier_waiting():
    """No earlier version of the same resource is still waiting for the same destination."""
    e = d.alias("earlier")
    return ~exists().where(e.c.destination == d.c.destination, e.c.res_type == d.c.res_type,
                           e.c.res_id == d.c.res_id, e.c.version_id < d.c.version_id, e.c.status.in_(WAITING))


def _free(now: float):
    return or_(d.c.lease_until.is_(None), d.c.lease_until < now)


# Statements run for every delivery are built once (building the NOT EXISTS costs more than running it).
_LEASE_WHERE = (d.c.id == bindparam("delivery_id"), d.c.status.in_(WAITING), _no_earlier_waiting())
_LEASE_VALUES = dict(lease_owner=bindparam("new_owner"), lease_until=bindparam("new_until"))
LEASE_FREE = update(d).where(*_LEASE_WHERE, _free(bindparam("now"))).values(**_LEASE_VALUES)
LEASE_FREE_OR_FROM = (update(d).where(*_LEASE_WHERE, or_(_free(bindparam("now")),
                                                         d.c.lease_owner.startswith(bindparam("take_from"))))
                      .values(**_LEASE_VALUES))
OUTCOME = (update(d).where(d.c.id == bindparam("delivery_id"), d.c.lease_owner == bindparam("owner"))
           .values(lease_owner=None, lease_until=None, attempts=d.c.attempts + 1,
                   status=bindparam("new_status"), last_status_code=bindparam("code"),
                   last_error=bindparam("error"), next_attempt_at=bindparam("next_at"),
                   delivered_at=bindparam("done_at")))
BY_ID = select(d).where(d.c.id == bindparam("delivery_id"))


def routed_resource_ids_query(organization: str, res_type: str) -> Select:
    """SELECT of the ids of ``res_type`` resources delivered or queued to destinations of
    ``organization`` (held and dead deliveries do not count); usable as a subquery:
    ``resources.c.res_id.in_(routed_resource_ids_query("HAINAN_EPC", "MedicationRequest"))``."""
    return select(d.c.res_id).where(d.c.organization == organization, d.c.res_type == res_type,
                                    d.c.status.in_(ROUTED)).distinct()


def routed_resource_ids(conn_or_engine: Connection | Engine, organization: str, res_type: str) -> set[str]:
    """Ids of ``res_type`` resources delivered or queued to destinations of ``organization``."""
    query = routed_resource_ids_query(organization, res_type)
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return set(conn.execute(query).scalars())
    return set(conn_or_engine.execute(query).scalars())


class Outbox:
    def __init__(self, engine: Engine):
        self.engine = engine

    def _write(self):
        return self.engine.connect().execution_options(write=True)

    # ------------------------------------------------------------------ workers

    def due(self, limit: int, now: float | None = None) -> list[int]:
        """Up to ``limit`` ids of due deliveries, oldest due first (a page, never the whole backlog)."""
        now = time.time() if now is None else now
        query = (select(d.c.id).where(d.c.status.in_(WAITING), d.c.next_attempt_at <= now, _free(now),
                                      _no_earlier_waiting())
                 .order_by(d.c.next_attempt_at, d.c.id).limit(limit))
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def lease(self, delivery_id: int, owner: str, seconds: float, *, take_from: str | None = None) -> bool:
        """Take a due delivery for ``seconds``; False when someone else holds it or it is no longer due.
        ``take_from``: a lease-owner prefix that may be taken over before it runs out (the relay's)."""
        now = time.time()
        params = dict(delivery_id=delivery_id, now=now, new_owner=owner, new_until=now + seconds)
        with self._write() as conn, conn.begin():
            if take_from is None:
                result = conn.execute(LEASE_FREE, params)
            else:
                result = conn.execute(LEASE_FREE_OR_FROM, {**params, "take_from": take_from})
            return result.rowcount == 1

    def get(self, delivery_id: int) -> Delivery | None:
        with self.engine.connect() as conn:
            row = conn.execute(BY_ID, {"delivery_id": delivery_id}).first()
        return _delivery(row) if row else None

    def delivered(self, delivery_id: int, owner: str, status_code: int | None) -> bool:
        now = time.time()
        return self._finish(delivery_id, owner, "delivered", status_code, None, now, now)

    def failed(self, delivery_id: int, owner: str, status_code: int | None, error: str, *,
               dead: bool, next_attempt_at: float) -> bool:
        return self._finish(delivery_id, owner, "dead" if dead else "failed", status_code, error[:2000],
                            next_attempt_at, None)

    def _finish(self, delivery_id: int, owner: str, status: str, code: int | None, error: str | None,
                next_at: float, done_at: float | None) -> bool:
        """Record an attempt's outcome, only while ``owner`` still holds the lease."""
        with self._write() as conn, conn.begin():
            result = conn.execute(OUTCOME, dict(delivery_id=delivery_id, owner=owner, new_status=status, code=code,
                                                error=error, next_at=next_at, done_at=done_at))
            return result.rowcount == 1

    def release(self, delivery_id: int, owner: str) -> None:
        """Give a lease back without an attempt (a worker stopping)."""
        with self._write() as conn, conn.begin():
            conn.execute(update(d).where(d.c.id == delivery_id, d.c.lease_owner == owner)
                         .values(lease_owner=None, lease_until=None))

    # ------------------------------------------------------------------ operators

    def list(self, status: str | None = None, destination: str | None = None, limit: int = 100,
             after_id: int = 0) -> list[Delivery]:
        query = select(d).where(d.c.id > after_id).order_by(d.c.id).limit(limit)
        if status:
            query = query.where(d.c.status == status)
        if destination:
            query = query.where(d.c.destination == destination)
        with self.engine.connect() as conn:
            return [_delivery(row) for row in conn.execute(query).all()]

    def iterate(self, status: str | None = None, destination: str | None = None,
                page: int = 500) -> Iterator[Delivery]:
        """Every matching delivery, a page at a time."""
        after = 0
        while True:
            batch = self.list(status, destination, page, after)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].id

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(d.c.status, func.count()).group_by(d.c.status)).all()
        return {status: count for status, count in rows}

    def replay(self, delivery_id: int) -> Delivery:
        """Put a dead, failed or held delivery back in the queue, due now, with a fresh attempt count.
        Replaying twice before it runs is one delivery: the row is re-queued, not copied."""
        with self._write() as conn, conn.begin():
            row = conn.execute(select(d).where(d.c.id == delivery_id)).first()
            if row is None:
                raise KeyError(delivery_id)
            if row.status == "delivered":
                raise ReplayRefused(f"delivery {delivery_id} was delivered already")
            newer = conn.execute(select(d.c.version_id).where(
                d.c.destination == row.destination, d.c.res_type == row.res_type, d.c.res_id == row.res_id,
                d.c.version_id > row.version_id, d.c.status == "delivered").limit(1)).first()
            if newer is not None:
                raise ReplayRefused(f"version {newer.version_id} of {row.res_type}/{row.res_id} was delivered to "
                                    f"{row.destination} already; replaying version {row.version_id} would move it "
                                    "backwards")
            now = time.time()
            if row.status in WAITING:
                conn.execute(update(d).where(d.c.id == delivery_id).values(next_attempt_at=now))
            else:
                conn.execute(update(d).where(d.c.id == delivery_id).values(
                    status="pending", attempts=0, next_attempt_at=now, created_at=now,
                    lease_owner=None, lease_until=None))
            row = conn.execute(select(d).where(d.c.id == delivery_id)).first()
        return _delivery(row)


def referenced_ids(resource: Any) -> list[tuple[str, str]]:
    """Literal ``Type/id`` references anywhere in a resource, in order, without repeats."""
    found: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and ref.count("/") == 1 and not ref.startswith(("#", "urn:", "http")):
                pair = tuple(ref.split("/"))
                if pair not in found:
                    found.append(pair)  # type: ignore[arg-type]
            for value in node.values():
                if isinstance(value, (dict, list)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(resource)
    return found


def resource_version(conn: Connection, res_type: str, res_id: str, version_id: int) -> tuple[dict | None, bool]:
    """(content, deleted) of one stored version."""
    v = schema.resource_versions
    row = conn.execute(select(schema.version_content(), v.c.deleted).where(
        v.c.res_type == res_type, v.c.res_id == res_id, v.c.version_id == version_id)).first()
    if row is None:
        return None, False
    return orjson.loads(row.content), bool(row.deleted)


def current_resources(conn: Connection, pairs: list[tuple[str, str]]) -> list[dict]:
    r = schema.resources
    if not pairs:
        return []
    rows = conn.execute(select(r.c.content).where(
        or_(*[and_(r.c.res_type == t, r.c.res_id == i) for t, i in pairs]), r.c.deleted.is_(False))).all()
    return [orjson.loads(row.content) for row in rows]
