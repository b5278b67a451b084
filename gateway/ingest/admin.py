"""Operators' view of the message log over HTTP (admin role only; ``gateway/security/policy.py``).

    GET  /admin/messages?sender=&type=&status=&ack=&control_id=&text=&since=&until=&format=&limit=&before=
    GET  /admin/messages/<id>
    POST /admin/messages/<id>/replay[?force=true]
    POST /admin/messages/replay        JSON {"sender": .., "status": .., "ack": .., "since": .., "force": false}

Thin: :mod:`gateway.ingest.message_browser` reads, :mod:`gateway.ingest.replay` replays. A listing
page is newest first; ``next`` is the cursor for the page after (pass it as ``before``). Every
replayed message gets its own AuditEvent naming the message and what came of it, besides the
request's own.
"""
from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify, request

from gateway.fhir_api.outcome import outcome_response
from gateway.ingest.message_browser import MessageFilter, find_messages, message_detail
from gateway.ingest.replay import MAX_SET, ReplayOutcome, replay_matching, replay_message
from gateway.web import gateway_of_app

message_admin_blueprint = Blueprint("message_admin", __name__)
MAX_LIMIT = 1000
FILTER_KEYS = {"sender": "sender", "type": "message_type", "status": "status", "ack": "ack_code",
               "control_id": "control_id", "text": "text", "since": "since", "until": "until", "format": "format"}


def filter_from(values) -> MessageFilter:
    """A :class:`MessageFilter` from query arguments or a JSON body (unknown keys are ignored)."""
    ids = values.get("ids") or ()
    if isinstance(ids, str):
        ids = [i for i in ids.split(",") if i.strip()]
    return MessageFilter(**{attr: (str(values.get(key)).strip() or None) if values.get(key) is not None else None
                            for key, attr in FILTER_KEYS.items()},
                         ids=tuple(int(i) for i in ids))


@message_admin_blueprint.get("/admin/messages")
def list_messages():
    try:
        criteria = filter_from(request.args)
        limit = int(request.args.get("limit", 100))
        before = int(request.args["before"]) if request.args.get("before") else None
    except ValueError:
        return outcome_response(400, "invalid", "limit, before and ids must be whole numbers", "limit")
    if not 1 <= limit <= MAX_LIMIT:
        return outcome_response(400, "invalid", f"limit must be between 1 and {MAX_LIMIT}", "limit")
    problems = criteria.problems()
    if problems:
        return outcome_response(400, "invalid", "; ".join(problems))
    try:
        page = find_messages(gateway_of_app().store.engine, criteria, limit, before)
    except ValueError as exc:          # since/until that are not dates
        return outcome_response(400, "invalid", str(exc), "since")
    return jsonify(messages=[m.as_json() for m in page], next=page[-1].id if len(page) == limit else None)


@message_admin_blueprint.get("/admin/messages/<int:log_id>")
def show_message(log_id: int):
    gateway = gateway_of_app()
    found = message_detail(gateway.store.engine, log_id, gateway.config["FALLBACK_CHARSET"])
    if found is None:
        return outcome_response(404, "not-found", f"message {log_id} is not in the message log")
    return jsonify(found.as_json())


@message_admin_blueprint.post("/admin/messages/<int:log_id>/replay")
def replay_one(log_id: int):
    outcome = replay_message(gateway_of_app(), log_id, by=_who(), force=_flag(request.args.get("force")))
    if outcome.after == "missing":
        return outcome_response(404, "not-found", outcome.reason)
    audit_replays([outcome])
    return jsonify(outcome.as_json())


@message_admin_blueprint.post("/admin/messages/replay")
def replay_set():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return outcome_response(400, "invalid", "send the filter as a JSON object, e.g. "
                                                '{"sender": "BOAO_SUPER_HOSPITAL", "ack": "AE", "since": "2026-03-15"}')
    try:
        criteria = filter_from(body)
    except (TypeError, ValueError):
        return outcome_response(400, "invalid", "ids must be whole numbers", "ids")
    problems = criteria.problems()
    if criteria.is_empty():
        problems.append("a replay of a set needs at least one criterion (for every failed message: "
                        '{"status": "error"})')
    if problems:
        return outcome_response(400, "invalid", "; ".join(problems))
    try:
        outcomes = replay_matching(gateway_of_app(), criteria, by=_who(), force=_flag(body.get("force")),
                                   limit=MAX_SET)
    except ValueError as exc:
        return outcome_response(400, "invalid", str(exc), "since")
    audit_replays(outcomes)
    summary: dict[str, int] = {}
    for outcome in outcomes:
        summary[outcome.after] = summary.get(outcome.after, 0) + 1
    return jsonify(replayed=[o.as_json() for o in outcomes], summary=summary)


def _flag(value) -> bool:
    return value is True or str(value).lower() in ("1", "true", "yes")


def _who() -> str:
    principal = g.get("principal")
    return f"client {principal.client_id}" if principal else "unknown"


def audit_replays(outcomes: list[ReplayOutcome]) -> None:
    """One AuditEvent per message replayed over HTTP (the request has its own too)."""
    from gateway.security.audit import AuditRecord
    security = current_app.extensions.get("security")
    if security is None:
        return
    principal = g.get("principal")
    for outcome in outcomes:
        security.audit.record(AuditRecord(
            activity="admin", outcome_status=200 if outcome.after != "error" else 422,
            outcome_text=replay_text(outcome), client_id=principal.client_id if principal else None,
            organization=principal.organization if principal else None,
            role=principal.role if principal else None, address=request.remote_addr,
            description=f"replay of message {outcome.log_id}", message_log_id=str(outcome.log_id)))


def replay_text(outcome: ReplayOutcome) -> str:
    """``replay: error -> processed (AA)``, or why it was skipped."""
    if outcome.after == "skipped":
        return f"replay skipped: {outcome.reason}"
    code = f" ({outcome.ack_code})" if outcome.ack_code else ""
    return f"replay: {outcome.before} -> {outcome.after}{code}" + (f": {outcome.reason}" if outcome.reason else "")
