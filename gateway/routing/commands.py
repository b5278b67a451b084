"""``fhir-gateway worker``, ``fhir-gateway deliveries list|replay`` and ``fhir-gateway demo``."""
from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
import threading
import time

from gateway.config import load_config


def _config(args: argparse.Namespace) -> dict:
    return load_config({"DATA_DIR": args.data_dir} if getattr(args, "data_dir", None) else {})


def _engine(config: dict):
    """The database engine, its schema brought to this release (gateway/store/migrations, under a
    lock). Worker processes often start together: one that still meets "database is locked" (SQLite,
    switching a new file to WAL) tries again."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from gateway.store import make_engine
    attempt = 0
    while True:
        try:
            return make_engine(config["DATABASE_URL"], config["SCHEMA_UPGRADE"])
        except (OperationalError, ProgrammingError) as exc:
            attempt += 1
            if attempt >= 5 or not any(text in str(exc) for text in ("already exists", "database is locked")):
                raise
            time.sleep(0.1 * attempt)


def _outbox(args: argparse.Namespace):
    from gateway.routing import Outbox
    return Outbox(_engine(_config(args)))


def cmd_worker(args: argparse.Namespace) -> int:
    """Run delivery workers alone (no HTTP): threads here, or a Redis Streams consumer group member.
    Only the database and routes.yaml are loaded, so a worker starts in a second or two."""
    from gateway.routing import load_routes, make_workers
    config = _config(args)
    routes = load_routes(config["ROUTES_FILE"])
    workers = make_workers(config, _engine(config), routes, args.threads).start()
    mode = f"Redis Streams ({config['REDIS_URL']})" if config.get("REDIS_URL") else "in-process"
    print(f"delivery worker: {workers.threads} thread(s), {mode}, routes {routes.source}", flush=True)
    faulthandler.register(signal.SIGUSR1)          # `kill -USR1 <pid>`: every thread's stack to stderr
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    stopping.wait()
    workers.stop()
    return 0


def cmd_deliveries_list(args: argparse.Namespace) -> int:
    outbox = _outbox(args)
    shown = 0
    print(f"{'id':>7}  {'status':9} {'destination':22} {'resource':58} {'tries':>5}  last error")
    for delivery in outbox.iterate(args.status, args.destination):
        resource = f"{delivery.res_type}/{delivery.res_id}/_history/{delivery.version_id}"
        error = (delivery.last_error or "")[:100]
        print(f"{delivery.id:>7}  {delivery.status:9} {delivery.destination:22} {resource:58} "
              f"{delivery.attempts:>5}  {error}")
        shown += 1
        if args.limit and shown >= args.limit:
            break
    counts = outbox.counts()
    print("total: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no deliveries"))
    return 0


def cmd_deliveries_replay(args: argparse.Namespace) -> int:
    from gateway.routing import ReplayRefused
    outbox = _outbox(args)
    failed = False
    ids = list(args.ids)
    if args.all_dead:
        ids += [d.id for d in outbox.iterate("dead", args.destination)]
    for delivery_id in ids:
        try:
            delivery = outbox.replay(int(delivery_id))
            print(f"delivery {delivery.id} ({delivery.res_type}/{delivery.res_id}/_history/{delivery.version_id} "
                  f"to {delivery.destination}) queued again")
        except KeyError:
            print(f"error: delivery {delivery_id} is not known", file=sys.stderr)
            failed = True
        except ReplayRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo
    return run_demo(verbose=args.verbose)


def add_routing_parsers(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    worker = sub.add_parser("worker", help="run delivery workers only (Redis Streams when GATEWAY_REDIS_URL is set)")
    worker.add_argument("--threads", type=int, help="worker threads (GATEWAY_DELIVERY_THREADS, default 4)")
    worker.set_defaults(func=cmd_worker)

    deliveries = sub.add_parser("deliveries", help="list or replay routed deliveries")
    actions = deliveries.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="deliveries, oldest first")
    listing.add_argument("--status", choices=["pending", "failed", "delivered", "dead", "held"])
    listing.add_argument("--destination")
    listing.add_argument("--limit", type=int, default=200, help="at most this many rows (0: all)")
    listing.set_defaults(func=cmd_deliveries_list)
    replay = actions.add_parser("replay", help="queue dead, failed or held deliveries again")
    replay.add_argument("ids", nargs="*", type=int)
    replay.add_argument("--all-dead", action="store_true", help="every dead delivery (of --destination)")
    replay.add_argument("--destination")
    replay.set_defaults(func=cmd_deliveries_replay)

    demo = sub.add_parser("demo", help="gateway + prescription center + regulators on loopback; send every sample")
    demo.add_argument("--verbose", action="store_true")
    demo.set_defaults(func=cmd_demo)
