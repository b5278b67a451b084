"""What an operator's monitoring reads: Prometheus metrics at ``/metrics`` and JSON log lines.

Two kinds of metric, kept apart on purpose:

* **Events**, counted where they happen, per process: messages by sender, type, status and ACK
  code; ingest time per stage (parse, map, store, and the whole message); replays; tokens; audit
  records. Several processes (gunicorn workers, ``serve`` beside ``mllp``) share them through
  prometheus_client's multi-process mode: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
  before the processes start, and a scrape of any of them sums every process's files.
* **State**, read from the database when scraped, so every process answers the same: resources
  stored per type and the database size, deliveries per destination and status (the backlog, the
  dead letters), the age of the oldest delivery still waiting, message-log rows per status (a
  ``received`` row that stays is an interrupted message; see gateway/ingest/replay.py).

Logs: ``LOG_FORMAT=json`` writes one JSON object per line; every line written while a message is
being processed carries its ``message_log_id`` (text logs get ``[message N]``), so the lines about
one message are found with one filter.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# the classic text format every Prometheus version reads (our names are plain ASCII)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABEL_LIMIT = 64            # a label value longer than this is cut (a sender cannot blow up the series)

MESSAGES = Counter("gateway_messages", "Inbound messages by sender, type and what came of them",
                   ["sender", "type", "status", "ack"])
STAGE_SECONDS = Histogram("gateway_ingest_stage_seconds", "Time spent per ingest stage (total: the whole message)",
                          ["stage"], buckets=STAGE_BUCKETS)
REPLAYS = Counter("gateway_message_replays", "Messages processed again by replay or recovery", ["kind", "status"])
TOKENS = Counter("gateway_tokens", "Token requests at /auth/token by outcome", ["outcome"])
AUDIT_EVENTS = Counter("gateway_audit_events", "AuditEvents written, by activity and outcome (0 ok, 4 refused, "
                                               "8 failed)", ["activity", "outcome"])

_message_log_id: ContextVar[int | None] = ContextVar("message_log_id", default=None)


def _label(value: str | None) -> str:
    return (value or "unknown")[:LABEL_LIMIT]


def count_message(sender: str | None, message_type: str | None, status: str, ack: str | None) -> None:
    MESSAGES.labels(_label(sender), _label(message_type), status, ack or "none").inc()


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time one ingest stage into ``gateway_ingest_stage_seconds{stage=name}``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - started)


@contextmanager
def about_message(log_id: int) -> Iterator[None]:
    """Log lines written inside carry this message-log id."""
    token = _message_log_id.set(log_id)
    try:
        yield
    finally:
        _message_log_id.reset(token)


# ------------------------------------------------------------------ scraping

class _Forward:
    """The process's own registry (single-process mode), collected into a scrape's registry."""
    def collect(self):
        yield from REGISTRY.collect()


class StoreState:
    """The state metrics, read from the database at scrape time (identical from every process)."""

    def __init__(self, engine, database_url: str):
        self.engine = engine
        self.database_url = database_url

    def collect(self):
        from sqlalchemy import func, select

        from gateway.store.schema import deliveries, message_log, resources
        now = time.time()
        d = deliveries.c
        with self.engine.connect() as conn:
            stored = conn.execute(select(resources.c.res_type, func.count()).where(resources.c.deleted.is_(False))
                                  .group_by(resources.c.res_type)).all()
            routed = conn.execute(select(d.destination, d.status, func.count(), func.min(d.created_at))
                                  .group_by(d.destination, d.status)).all()
            logged = conn.execute(select(message_log.c.status, func.count()).group_by(message_log.c.status)).all()
            size = self._database_bytes(conn)
        family = GaugeMetricFamily("gateway_store_resources", "Current (not deleted) resources by type",
                                   labels=["type"])
        for res_type, count in stored:
            family.add_metric([res_type], count)
        yield family
        if size is not None:
            yield GaugeMetricFamily("gateway_store_database_bytes", "Size of the database", value=size)
        by_status = GaugeMetricFamily("gateway_deliveries", "Deliveries by destination and status",
                                      labels=["destination", "status"])
        backlog = GaugeMetricFamily("gateway_delivery_backlog", "Deliveries waiting (pending or failed, to retry)",
                                    labels=["destination"])
        oldest = GaugeMetricFamily("gateway_delivery_oldest_pending_age_seconds",
                                   "Age of the oldest delivery still waiting", labels=["destination"])
        dead = GaugeMetricFamily("gateway_dead_letters", "Deliveries given up on (dead), to replay",
                                 labels=["destination"])
        waiting: dict[str, list] = {}
        dead_counts: dict[str, int] = {}
        for destination, status, count, first in routed:
            by_status.add_metric([destination, status], count)
            if status in ("pending", "failed"):
                entry = waiting.setdefault(destination, [0, first])
                entry[0] += count
                entry[1] = min(entry[1], first)
            dead_counts.setdefault(destination, 0)
            if status == "dead":
                dead_counts[destination] += count
        for destination, (count, first) in sorted(waiting.items()):
            backlog.add_metric([destination], count)
            oldest.add_metric([destination], max(0.0, now - first))
        for destination, count in sorted(dead_counts.items()):
            dead.add_metric([destination], count)
            if destination not in waiting:
                backlog.add_metric([destination], 0)
                oldest.add_metric([destination], 0)
        yield from (by_status, backlog, oldest, dead)
        log_family = GaugeMetricFamily("gateway_message_log", "Message-log rows by status (received: in flight, "
                                                              "or interrupted and awaiting recovery)",
                                       labels=["status"])
        for status, count in logged:
            log_family.add_metric([status], count)
        yield log_family

    def _database_bytes(self, conn) -> int | None:
        if self.database_url.startswith("sqlite:///"):
            path = Path(self.database_url[len("sqlite:///"):])
            return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
        if conn.dialect.name == "postgresql":
            from sqlalchemy import text
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar())
        return None


def scrape(engine, database_url: str) -> tuple[bytes, str]:
    """The body and content type of one ``/metrics`` answer."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward())
    registry.register(StoreState(engine, database_url))
    return generate_latest(registry), CONTENT_TYPE


# ------------------------------------------------------------------ logs

class _MessageIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.message_log_id = _message_log_id.get()
        record.about = f" [message {record.message_log_id}]" if record.message_log_id is not None else ""
        return True


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, message_log_id, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        log_id = getattr(record, "message_log_id", None)
        if log_id is not None:
            line["message_log_id"] = log_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """The process's root logger: ``text`` (the default) or ``json`` lines on stderr."""
    handler = logging.StreamHandler()
    handler.addFilter(_MessageIdFilter())
    if str(log_format).lower() == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(about)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every start-up at INFO ("Context impl SQLiteImpl."); the gateway logs the one
    # line that matters itself (gateway/store/migrations: "database schema upgraded from ... to ...")
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))
