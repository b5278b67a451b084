"""Replaying logged messages, and finishing those a crash interrupted.

A replay runs a logged message through the pipeline again **in place**: the same log row gets the
new status and ACK (so a resend from the hospital is answered with today's outcome, not the old
error), and what the row said before is kept in its detail under ``replays`` (when, by whom, the
status and ACK code it had, and its errors): what the hospital was told is never lost.

Idempotent: a message that is already ``processed`` or ``on-hold`` is skipped unless forced, and a
forced pass stores nothing new (resources are upserted on business identifiers, so an unchanged
resource keeps its version). A replay holds the message to the organization its arrival was held
to (``bound_to`` in the detail), so an operator replaying "every AR" cannot store a message a
hospital sent in another hospital's name.

Start-up recovery (:func:`recover_interrupted`): a row still ``received`` well after it arrived
(``RECOVER_AFTER_SECONDS``) was being processed when its process died. Before the write path
committed the log entry with the resources, such a row could stand beside resources that were
stored; processing it again settles it either way (an upsert finds what was stored and the row
becomes ``processed`` with those versions; otherwise it is processed for the first time). A row is
claimed first (compare-and-set on its detail), so two gateway processes starting together do not
both take it, and a claim whose process died too is taken over once it is as old.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import orjson
from sqlalchemy import LargeBinary, select, type_coerce, update

from gateway.ingest.message_browser import MessageFilter, matching_ids
from gateway.ingest.messagelog import ack_code
from gateway.observability import REPLAYS
from gateway.store import now_instant
from gateway.store.access import bound_to
from gateway.store.schema import message_log

log = logging.getLogger(__name__)

REPLAYABLE = ("error", "rejected", "received")
MAX_SET = 10_000            # one replay request takes at most this many messages


@dataclass
class ReplayOutcome:
    log_id: int
    before: str                     # status before the replay
    after: str                      # status after it; "skipped" when nothing was done, "missing"
    ack_code: str | None = None
    resources: list[str] = field(default_factory=list)
    reason: str = ""                # why skipped, or the first error of the new outcome

    def as_json(self) -> dict:
        return dict(self.__dict__)


def replay_message(gateway, log_id: int, *, by: str, force: bool = False) -> ReplayOutcome:
    """Process one logged message again, in place; ``by`` names who asked (kept in the row)."""
    row = _row(gateway, log_id)
    if row is None:
        return ReplayOutcome(log_id, "missing", "missing", reason=f"message {log_id} is not in the log")
    if row.status not in REPLAYABLE and not force:
        return ReplayOutcome(log_id, row.status, "skipped", ack_code(row.ack),
                             reason=f"already {row.status}; replay with force to run it again")
    return _run(gateway, row, {"at": now_instant(), "by": by}, "replays")


def replay_matching(gateway, criteria: MessageFilter, *, by: str, force: bool = False,
                    limit: int = MAX_SET) -> list[ReplayOutcome]:
    """Replay every message the filter matches, oldest first (a later correction then wins)."""
    return [replay_message(gateway, log_id, by=by, force=force)
            for log_id in matching_ids(gateway.store.engine, criteria, limit)]


# the detail column's bytes as stored: the claim compares them, not the text deflated again, which
# another process's zlib may write differently
_STORED_DETAIL = type_coerce(message_log.c.detail, LargeBinary)


def recover_interrupted(gateway, older_than_seconds: float, *, by: str | None = None) -> list[ReplayOutcome]:
    """Finish every message left ``received`` for longer than ``older_than_seconds``; see the module text."""
    by = by or f"recovery {socket.gethostname()}:{os.getpid()}"
    cutoff = _instant_ago(older_than_seconds)
    engine = gateway.store.engine
    with engine.connect() as conn:
        rows = conn.execute(select(message_log.c.id, message_log.c.detail, _STORED_DETAIL.label("stored_detail"))
                            .where(message_log.c.status == "received", message_log.c.received_at <= cutoff)
                            .order_by(message_log.c.id)).all()
    outcomes = []
    for candidate in rows:
        detail = orjson.loads(candidate.detail) if candidate.detail else {}
        claim = detail.get("recovering")
        if claim and claim.get("at", "") > cutoff:
            continue                        # another process took it a moment ago
        claimed = {**detail, "recovering": {"at": now_instant(), "by": by}}
        with engine.connect().execution_options(write=True) as conn, conn.begin():
            taken = conn.execute(update(message_log).where(
                message_log.c.id == candidate.id, message_log.c.status == "received",
                message_log.c.detail.is_(None) if candidate.detail is None
                else _STORED_DETAIL == candidate.stored_detail).values(detail=orjson.dumps(claimed).decode())).rowcount
        if taken != 1:
            continue
        row = _row(gateway, candidate.id)
        outcome = _run(gateway, row, {"at": now_instant(), "by": by}, "recovered")
        log.warning("message %s was left received by an interrupted process; processed again: %s%s",
                    candidate.id, outcome.after, f" ({outcome.reason})" if outcome.reason else "")
        outcomes.append(outcome)
    return outcomes


def _run(gateway, row, note: dict, key: str) -> ReplayOutcome:
    before = orjson.loads(row.detail) if row.detail else {}
    bound = before.get("bound_to")
    note = {**note, "status": row.status, "ack_code": ack_code(row.ack), "errors": before.get("errors", [])}
    with bound_to(bound):
        if row.format == "hl7v2":
            result = gateway.pipeline.reprocess(row.id, row.raw)
            new_status, code, resources = result.status, result.code, list(result.resources)
            reason = result.errors[0].text if result.errors else ""
        else:
            result = gateway.documents.reprocess(row.id, row.raw, row.format)
            new_status, code, resources = result.log_status, None, list(result.resources)
            problems = (result.body.get("issue") or []) if result.body.get("resourceType") == "OperationOutcome" else []
            reason = problems[0].get("diagnostics", "") if problems else ""
    _remember(gateway, row.id, key, note, before)
    REPLAYS.labels("replay" if key == "replays" else "recovery", new_status).inc()
    return ReplayOutcome(row.id, row.status, new_status, code, resources, reason)


def _remember(gateway, log_id: int, key: str, note: dict, before: dict) -> None:
    """Add the earlier outcome to the row's detail (the new outcome is already there)."""
    with gateway.store.engine.connect().execution_options(write=True) as conn, conn.begin():
        current = conn.execute(select(message_log.c.detail).where(message_log.c.id == log_id)).scalar()
        detail = orjson.loads(current) if current else {}
        detail.pop("recovering", None)
        if before.get("bound_to") and "bound_to" not in detail:
            detail["bound_to"] = before["bound_to"]
        if key == "replays":
            detail["replays"] = [*before.get("replays", []), note]
        else:
            detail["replays"] = before.get("replays", [])
            detail["recovered"] = note
        if not detail["replays"]:
            del detail["replays"]
        conn.execute(update(message_log).where(message_log.c.id == log_id)
                     .values(detail=orjson.dumps(detail).decode()))


def _row(gateway, log_id: int):
    with gateway.store.engine.connect() as conn:
        return conn.execute(select(message_log).where(message_log.c.id == log_id)).first()


def _instant_ago(seconds: float) -> str:
    moment = datetime.now(timezone.utc) - timedelta(seconds=max(0.0, seconds))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class RecoverySweep:
    """Runs :func:`recover_interrupted` at start-up and then every ``interval`` seconds in a daemon
    thread, in ``serve`` and ``mllp``: a row interrupted just before a restart is younger than the
    threshold at start-up, and is finished by a later sweep."""

    def __init__(self, gateway, older_than_seconds: float, interval: float | None = None):
        import threading
        self.gateway = gateway
        self.older_than = older_than_seconds
        self.interval = interval if interval is not None else max(1.0, older_than_seconds / 2 or 1.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="message-recovery", daemon=True)

    def start(self) -> "RecoverySweep":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                recover_interrupted(self.gateway, self.older_than)
            except Exception:    # a database hiccup must not end the sweep; it tries again
                log.exception("message-log recovery sweep failed; trying again in %.0f s", self.interval)
            self._stop.wait(self.interval)

