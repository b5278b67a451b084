"""Deliveries through Redis Streams, so any number of worker processes share the work.

The outbox table stays the source of truth; the stream only carries delivery ids:

* **relay** (one per process; they do not need to agree): leases a page of due outbox rows as
  ``relay:*`` for ``relay_lease`` seconds, then ``XADD``s their ids. Crash before the XADD: the
  lease runs out and the row is relayed again. Crash after it: the id is in the stream.
* **consumer** (threads, in every process): ``XREADGROUP`` an id, take the row's lease from the
  relay (a conditional UPDATE: only one consumer can win it), attempt it, then ``XACK`` + ``XDEL``.
  A consumer that dies holding entries leaves them pending in the group; another consumer takes
  them with ``XAUTOCLAIM`` once they have been idle longer than a worker lease. An id that reaches a
  consumer twice (relayed again, or claimed from a dead consumer after the row was redone) loses the
  lease race or finds the row delivered, and is just acknowledged.

So nothing is lost at any crash point, and the worst a crash causes is one repeat of an idempotent
request to a receiver (the dead worker's request may have arrived before it died).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid

import redis

from gateway.routing.delivery import Deliverer
from gateway.routing.workers import process_name

log = logging.getLogger(__name__)

STREAM = "lecheng:deliveries"
GROUP = "delivery-workers"
RELAY_PREFIX = "relay:"
CONSUMER_GONE_SECONDS = 3600.0


class StreamWorkers:
    def __init__(self, deliverer: Deliverer, redis_url: str, threads: int = 4, poll_seconds: float = 0.5, *,
                 stream: str = STREAM, group: str = GROUP, relay_lease: float = 60.0,
                 worker_lease: float | None = None, high_watermark: int = 1000):
        self.deliverer = deliverer
        self.outbox = deliverer.outbox
        self.redis = redis.Redis.from_url(redis_url)
        self.threads = max(1, threads)
        self.poll_seconds = poll_seconds
        self.stream = stream
        self.group = group
        self.relay_lease = relay_lease
        self.worker_lease = worker_lease or deliverer.lease_seconds()
        self.high_watermark = high_watermark
        self.name = f"{process_name()}-{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._running: list[threading.Thread] = []

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def start(self) -> "StreamWorkers":
        try:
            self.ensure_group()
        except redis.ConnectionError as exc:     # the loops keep trying; the outbox keeps everything meanwhile
            log.error("delivery: Redis at %s is not reachable (%s); deliveries wait until it is", self.redis, exc)
        self._stop.clear()
        self._running = [threading.Thread(target=self._relay_loop, name="delivery-relay", daemon=True)]
        self._running += [threading.Thread(target=self._consume_loop, args=(f"{self.name}-{i}",),
                                           name=f"delivery-consumer-{i}", daemon=True) for i in range(self.threads)]
        for thread in self._running:
            thread.start()
        log.info("delivery: %d Redis Streams consumer(s) as %s on %s", self.threads, self.name, self.stream)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._running:
            thread.join(timeout)

    # ------------------------------------------------------------------ relay

    def relay_once(self) -> int:
        """Move up to a page of due outbox rows to the stream; returns how many."""
        room = self.high_watermark - self.redis.xlen(self.stream)
        if room <= 0:
            return 0
        moved = 0
        for delivery_id in self.outbox.due(room):
            if self.outbox.lease(delivery_id, f"{RELAY_PREFIX}{self.name}", self.relay_lease):
                self.redis.xadd(self.stream, {"id": str(delivery_id)})
                moved += 1
        return moved

    def prune_consumers(self, idle_seconds: float = CONSUMER_GONE_SECONDS) -> list[str]:
        """Forget consumers that hold nothing and have not asked for work in ``idle_seconds`` (workers
        that stopped or died; a live consumer asks every poll interval). Returns their names."""
        gone = []
        for consumer in self.redis.xinfo_consumers(self.stream, self.group):
            name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
            if consumer["pending"] == 0 and consumer["idle"] > idle_seconds * 1000:
                self.redis.xgroup_delconsumer(self.stream, self.group, name)
                gone.append(name)
        return gone

    def _relay_loop(self) -> None:
        next_prune = 0.0
        failures = 0
        while not self._stop.is_set():
            try:
                moved = self.relay_once()
                if time.monotonic() >= next_prune:
                    self.prune_consumers()
                    next_prune = time.monotonic() + 60
                failures = 0
            except Exception:  # noqa: BLE001 - Redis or the database away for a while: try again, less often
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.exception("delivery relay: failed %d time(s) in a row; trying again", failures)
                moved = 0
            if moved == 0:
                self._stop.wait(_pause(self.poll_seconds, failures))

    # ------------------------------------------------------------------ consumers

    def _consume_loop(self, consumer: str) -> None:
        block_ms = max(1, int(self.poll_seconds * 1000))
        claim_idle_ms = int((self.worker_lease + 1.0) * 1000)
        claim_every = 0
        failures = 0
        while not self._stop.is_set():
            try:
                entries = []
                if claim_every <= 0:          # entries a dead consumer left pending
                    _next, claimed, *_ = self.redis.xautoclaim(self.stream, self.group, consumer,
                                                               min_idle_time=claim_idle_ms, start_id="0-0", count=10)
                    entries = [e for e in claimed if e and e[1]]
                    claim_every = 20
                claim_every -= 1
                if not entries:
                    response = self.redis.xreadgroup(self.group, consumer, {self.stream: ">"}, count=1,
                                                     block=block_ms)
                    entries = [entry for _stream, items in response or [] for entry in items]
                for entry_id, fields in entries:
                    self._handle(consumer, entry_id, fields)
                failures = 0
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self.ensure_group()
                    continue
                failures += 1
                log.exception("delivery consumer %s: Redis error; trying again", consumer)
                self._stop.wait(_pause(self.poll_seconds, failures))
            except Exception:  # noqa: BLE001 - keep consuming; the outbox keeps what was not done
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.exception("delivery consumer %s: failed %d time(s) in a row; trying again", consumer,
                                  failures)
                self._stop.wait(_pause(self.poll_seconds, failures))

    def _handle(self, consumer: str, entry_id: bytes, fields: dict) -> None:
        raw = fields.get(b"id") or fields.get("id")
        try:
            delivery_id = int(raw)
        except (TypeError, ValueError):
            log.warning("delivery stream entry %s has no delivery id; dropped", entry_id)
            delivery_id = None
        if delivery_id is not None:
            owner = f"{consumer}:{uuid.uuid4().hex[:12]}"
            if self.outbox.lease(delivery_id, owner, self.worker_lease, take_from=RELAY_PREFIX):
                self.deliverer.attempt(delivery_id, owner)
        pipe = self.redis.pipeline()
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()


def _pause(poll_seconds: float, failures: int) -> float:
    """The poll interval, growing to 30 s while something keeps failing (Redis down, say)."""
    return min(30.0, poll_seconds * (2 ** min(failures, 10))) if failures else poll_seconds
