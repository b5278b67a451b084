"""Delivery workers: threads in this process (the default), or Redis Streams consumers.

In-process: one dispatcher thread leases due deliveries from the outbox a page at a time (only as
many as the worker threads can take next, so a backlog of millions is never held in memory) and
hands their ids to worker threads through a small bounded queue.

With ``GATEWAY_REDIS_URL`` see :mod:`gateway.routing.streams`: a relay moves due outbox ids to a
stream and consumers in any number of processes share them through a consumer group.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import uuid

from gateway.routing.delivery import Deliverer
from gateway.routing.outbox import Outbox

log = logging.getLogger(__name__)


def process_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class InProcessWorkers:
    def __init__(self, deliverer: Deliverer, threads: int = 4, poll_seconds: float = 0.5):
        self.deliverer = deliverer
        self.outbox: Outbox = deliverer.outbox
        self.threads = max(1, threads)
        self.poll_seconds = poll_seconds
        self._queue: queue.Queue[tuple[int, str] | None] = queue.Queue(maxsize=self.threads * 2)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._running: list[threading.Thread] = []
        self._prefix = f"{process_name()}-{uuid.uuid4().hex[:6]}"

    def start(self) -> "InProcessWorkers":
        self._stop.clear()
        self._running = [threading.Thread(target=self._dispatch, name="delivery-dispatcher", daemon=True)]
        self._running += [threading.Thread(target=self._work, name=f"delivery-worker-{i}", daemon=True)
                          for i in range(self.threads)]
        for thread in self._running:
            thread.start()
        log.info("delivery: %d worker thread(s) in this process", self.threads)
        return self

    def wake(self) -> None:
        """Look for due deliveries now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for _ in range(self.threads):
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                break
        for thread in self._running:
            thread.join(timeout)
        # leases handed out but not started go back at once instead of waiting to run out
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.outbox.release(*item)

    def _dispatch(self) -> None:
        lease = self.deliverer.lease_seconds()
        while not self._stop.is_set():
            room = self._queue.maxsize - self._queue.qsize()
            handed = 0
            if room > 0:
                try:
                    for delivery_id in self.outbox.due(room):
                        owner = f"{self._prefix}:{uuid.uuid4().hex[:12]}"
                        if self.outbox.lease(delivery_id, owner, lease):
                            self._queue.put((delivery_id, owner))
                            handed += 1
                except Exception:  # noqa: BLE001 - a database hiccup must not kill the dispatcher
                    log.exception("delivery dispatcher: reading the outbox failed; trying again")
            if handed == 0 or room <= 0:
                self._wake.wait(self.poll_seconds if handed == 0 else 0.05)
                self._wake.clear()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            delivery_id, owner = item
            if self._stop.is_set():
                self.outbox.release(delivery_id, owner)
                continue
            try:
                self.deliverer.attempt(delivery_id, owner)
            except Exception:  # noqa: BLE001 - the lease runs out and the delivery is tried again
                log.exception("delivery %s: attempt failed inside the gateway", delivery_id)
            self._wake.set()     # a delivered version may have unblocked the next one
