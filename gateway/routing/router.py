"""Routing decisions, written to the outbox inside the store's write transaction.

The ingest pipelines call :meth:`Router.on_stored` with the versions they just wrote, before the
transaction commits; the outbox rows it inserts commit or roll back with those versions, so a
stored version always has its deliveries and a rolled-back message leaves none behind.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from sqlalchemy import insert

from gateway.routing.routes import Routes
from gateway.store import schema

ROUTED_ACTIONS = ("create", "update", "delete")


@dataclass
class RoutingOutcome:
    """What routing made of one message's writes: how many deliveries, and what was held and why."""
    deliveries: int = 0
    held: list[str] = field(default_factory=list)        # "MedicationRequest/123: why"

    @property
    def on_hold(self) -> bool:
        return bool(self.held)


class Router:
    def __init__(self, routes: Routes):
        self.routes = routes

    def decide(self, resource: dict, message_type: str | None, sender: str | None
               ) -> tuple[dict[str, list[str]], list[str]]:
        """({destination: [rule names]}, [hold reasons]) for one resource."""
        targets: dict[str, list[str]] = {}
        holds: list[str] = []
        for rule in self.routes.rules:
            if not rule.matches(resource, message_type, sender):
                continue
            if rule.hold is not None:
                holds.append(f"{rule.hold} (rule {rule.name})")
            for destination in rule.destinations:
                targets.setdefault(destination, []).append(rule.name)
        return targets, holds

    def on_stored(self, tx: Any, written: Iterable[tuple[Any, dict, str]], origin: Any) -> RoutingOutcome:
        """The pipelines' hook: route every version written (``(mapped, resource, action)``) inside ``tx``.

        ``origin`` has ``message_type`` (``RDE^O11``, ``csv:device_first_use``) and
        ``sending_facility``; None for writes that came from no message (the FHIR API)."""
        return self.route(tx.conn, [(resource, action) for _mapped, resource, action in written],
                          getattr(origin, "message_type", None), getattr(origin, "sending_facility", None))

    def route(self, conn: Any, versions: Iterable[tuple[dict, str]], message_type: str | None,
              sender: str | None) -> RoutingOutcome:
        outcome = RoutingOutcome()
        now = time.time()
        rows = []
        for resource, action in versions:
            if action not in ROUTED_ACTIONS:
                continue
            targets, holds = self.decide(resource, message_type, sender)
            label = f"{resource['resourceType']}/{resource['id']}"
            outcome.held += [f"{label}: {reason}" for reason in holds]
            for destination, rule_names in targets.items():
                rows.append(dict(
                    destination=destination, organization=self.routes.destinations[destination].organization,
                    res_type=resource["resourceType"], res_id=resource["id"],
                    version_id=int(resource["meta"]["versionId"]), action=action,
                    rules=",".join(rule_names)[:512], message_type=message_type, sender=sender,
                    status="held" if holds else "pending", attempts=0,
                    last_error="; ".join(holds)[:2000] if holds else None,
                    created_at=now, next_attempt_at=now))
        if rows:
            conn.execute(insert(schema.deliveries), rows)
        outcome.deliveries = len(rows)
        return outcome
