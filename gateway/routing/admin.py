"""Operators' view of the outbox: list deliveries, replay one. Thin: the outbox does the work.

    GET  /admin/deliveries?status=failed|dead|pending|held|delivered&destination=NAME&limit=100&after=ID
    POST /admin/deliveries/<id>/replay

(Admin role only once the security work protects ``/admin``.)
"""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from gateway.fhir_api.outcome import outcome_response
from gateway.routing.outbox import STATUSES, ReplayRefused
from gateway.web import gateway_of_app

admin_blueprint = Blueprint("admin", __name__)      # the security policy: admin role only
MAX_LIMIT = 1000


@admin_blueprint.get("/admin/deliveries")
def list_deliveries():
    status = request.args.get("status") or None
    if status is not None and status not in STATUSES:
        return outcome_response(400, "invalid", f"status must be one of {', '.join(STATUSES)}, not {status!r}",
                                "status")
    try:
        limit = int(request.args.get("limit", 100))
        after = int(request.args.get("after", 0))
    except ValueError:
        return outcome_response(400, "invalid", "limit and after must be whole numbers", "limit")
    if not 1 <= limit <= MAX_LIMIT:
        return outcome_response(400, "invalid", f"limit must be between 1 and {MAX_LIMIT}", "limit")
    outbox = gateway_of_app().outbox
    page = outbox.list(status, request.args.get("destination") or None, limit, after)
    return jsonify(deliveries=[delivery.as_json() for delivery in page],
                   next=page[-1].id if len(page) == limit else None, counts=outbox.counts())


@admin_blueprint.post("/admin/deliveries/<int:delivery_id>/replay")
def replay_delivery(delivery_id: int):
    gateway = gateway_of_app()
    try:
        delivery = gateway.outbox.replay(delivery_id)
    except KeyError:
        return outcome_response(404, "not-found", f"delivery {delivery_id} is not known")
    except ReplayRefused as exc:
        return outcome_response(409, "conflict", str(exc))
    return jsonify(delivery.as_json())
