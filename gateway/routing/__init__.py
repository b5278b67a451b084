"""Routing: rules (routes.yaml) -> outbox rows in the store's transaction -> delivery workers.

    routes.py     routes.yaml: destinations and rules, checked at start-up (file:line errors)
    router.py     Router.on_stored: the pipelines' hook; writes deliveries (or holds) in the same transaction
    outbox.py     the deliveries table: leasing, outcomes, listing, replay; routed_resource_ids()
    client.py     HTTP to a destination (resource PUT / transaction / message Bundle; bearer or OAuth2)
    delivery.py   one attempt: backoff with jitter, Retry-After, dead letters
    workers.py    in-process worker threads;  streams.py: Redis Streams relay and consumers
    admin.py      GET /admin/deliveries, POST /admin/deliveries/<id>/replay
"""
from __future__ import annotations

from typing import Any

from gateway.routing.outbox import Outbox, ReplayRefused, routed_resource_ids, routed_resource_ids_query
from gateway.routing.router import Router, RoutingOutcome
from gateway.routing.routes import Routes, RoutesError, load_routes

__all__ = ["Router", "RoutingOutcome", "Routes", "RoutesError", "load_routes", "Outbox", "ReplayRefused",
           "routed_resource_ids", "routed_resource_ids_query", "make_workers", "deployment_stream"]


def deployment_stream(database_url: str) -> str:
    """The Redis stream of one deployment: every process on the same database shares it, and another
    deployment using the same Redis gets its own (one shared name let two gateways acknowledge each
    other's deliveries). Machines that name one database differently set ``REDIS_STREAM`` instead."""
    from hashlib import blake2b

    from sqlalchemy.engine import make_url
    identity = make_url(database_url).render_as_string(hide_password=True)   # a password change keeps it
    return f"lecheng:{blake2b(identity.encode(), digest_size=6).hexdigest()}:deliveries"


def make_workers(config: dict, engine: Any, routes: Routes, threads: int | None = None):
    """Delivery workers: Redis Streams consumers when ``REDIS_URL`` is set, else threads in this
    process. They need only the database and the routes (a worker process loads no mappings or
    profiles). Not started: call ``.start()``, and ``.stop()`` at the end."""
    from gateway.routing.delivery import Deliverer
    deliverer = Deliverer(engine, routes, config.get("BASE_URL") or "", float(config["DELIVERY_LEASE_SECONDS"]))
    threads = int(threads or config["DELIVERY_THREADS"])
    poll = int(config["DELIVERY_POLL_MS"]) / 1000.0
    if config.get("REDIS_URL"):
        from gateway.routing.streams import StreamWorkers
        return StreamWorkers(deliverer, config["REDIS_URL"], threads, poll,
                             stream=config.get("REDIS_STREAM") or deployment_stream(config["DATABASE_URL"]))
    from gateway.routing.workers import InProcessWorkers
    return InProcessWorkers(deliverer, threads, poll)
