"""One delivery attempt: read the version from the store, send it, record the outcome in the outbox.

Shared by the in-process worker threads and the Redis Streams consumers; whoever calls
:meth:`Deliverer.attempt` holds the delivery's lease (see ``outbox.py``), and the outcome is only
recorded while it still does.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from gateway.routing.client import DestinationClient, SendResult
from gateway.routing.outbox import Outbox, current_resources, referenced_ids, resource_version
from gateway.routing.routes import RetryPolicy, Routes

log = logging.getLogger(__name__)


def backoff_delay(policy: RetryPolicy, attempts: int, retry_after: float | None = None,
                  rand: random.Random | None = None) -> float:
    """Seconds before the next try after ``attempts`` failed ones: exponential (base·2^(n-1), capped)
    with jitter in [50 %, 100 %] so a destination coming back is not hit by every retry at once.
    A server's Retry-After (429, 503) is followed as given, up to the policy's max age."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.max_age)
    ceiling = min(policy.backoff_cap, policy.backoff_base * (2 ** max(attempts - 1, 0)))
    return ceiling * (rand or random).uniform(0.5, 1.0)


@dataclass(frozen=True)
class AttemptResult:
    delivery_id: int
    status: str                 # delivered | failed | dead | skipped (not ours any more)
    result: SendResult | None


class Deliverer:
    def __init__(self, engine: Engine, routes: Routes, gateway_base: str = "", lease_seconds: float = 0.0):
        self.engine = engine
        self.lease_override = lease_seconds
        self.outbox = Outbox(engine)
        self.routes = routes
        self.clients = {name: DestinationClient(dest, gateway_base or "urn:lecheng-gateway")
                        for name, dest in routes.destinations.items()}

    def lease_seconds(self) -> float:
        """How long a worker may hold a delivery: longer than any request can take."""
        if self.lease_override:
            return self.lease_override
        longest = max((dest.timeout for dest in self.routes.destinations.values()), default=10.0)
        return 2 * longest + 30.0

    def attempt(self, delivery_id: int, owner: str) -> AttemptResult:
        delivery = self.outbox.get(delivery_id)
        if delivery is None:
            return AttemptResult(delivery_id, "skipped", None)
        client = self.clients.get(delivery.destination)
        if client is None:
            error = f"destination {delivery.destination!r} is not in {self.routes.source} any more"
            self.outbox.failed(delivery_id, owner, None, error, dead=True, next_attempt_at=time.time())
            return AttemptResult(delivery_id, "dead", SendResult(False, None, error))
        with self.engine.connect() as conn:
            resource, _deleted = resource_version(conn, delivery.res_type, delivery.res_id, delivery.version_id)
            related = []
            if resource is not None and client.destination.mode != "resource" and delivery.action != "delete":
                related = current_resources(conn, referenced_ids(resource))
        if resource is None:
            error = f"{delivery.res_type}/{delivery.res_id} version {delivery.version_id} is not in the store"
            self.outbox.failed(delivery_id, owner, None, error, dead=True, next_attempt_at=time.time())
            return AttemptResult(delivery_id, "dead", SendResult(False, None, error))
        key = f"{delivery.destination}/{delivery.res_type}/{delivery.res_id}/_history/{delivery.version_id}"
        result = client.send(client.build(resource, delivery.action, related, key, owner.split(":", 1)[0]))
        if result.ok:
            recorded = self.outbox.delivered(delivery_id, owner, result.status)
            return AttemptResult(delivery_id, "delivered" if recorded else "skipped", result)
        policy = client.destination.retry
        attempts = delivery.attempts + 1
        now = time.time()
        delay = backoff_delay(policy, attempts, result.retry_after)
        dead = (not result.retryable or attempts >= policy.max_attempts
                or now + delay - delivery.created_at > policy.max_age)
        error = result.error or "failed"
        if dead and result.retryable:
            error = f"gave up after {attempts} attempt(s) over {now - delivery.created_at:.0f} s; last: {error}"
        recorded = self.outbox.failed(delivery_id, owner, result.status, error, dead=dead, next_attempt_at=now + delay)
        if recorded:
            log.log(logging.WARNING if dead else logging.INFO, "delivery %s (%s) to %s %s: %s", delivery_id, key,
                    delivery.destination, "dead" if dead else f"failed, retry in {delay:.1f} s", error)
        status = ("dead" if dead else "failed") if recorded else "skipped"
        return AttemptResult(delivery_id, status, result)
