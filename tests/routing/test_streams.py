"""Deliveries through Redis Streams with a real redis-server: shared by worker processes, crash-safe."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import redis

from gateway.config import REPO_ROOT, load_config
from gateway.routing.delivery import Deliverer
from gateway.routing.streams import StreamWorkers
from gateway.runtime import Gateway
from tests.routing.conftest import fast_routes, wait_until


def order(number: int) -> dict:
    return {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "identifier": [{"system": "https://example.org/placer", "value": f"RX-{number:05d}"}],
            "subject": {"reference": "Patient/p1"}}


def fill_outbox(gateway: Gateway, resources: int, versions: int) -> list[str]:
    """``resources`` orders with ``versions`` versions each, routed as the pipeline would route them."""
    ids = []
    with gateway.store.write() as tx:
        for number in range(resources):
            stored = tx.create(order(number))
            gateway.router.route(tx.conn, [(stored, "create")], "RDE^O11", "TEST_HOSPITAL")
            for version in range(2, versions + 1):
                stored = tx.update({**stored, "note": [{"text": f"version {version}"}]})
                gateway.router.route(tx.conn, [(stored, "update")], "RDE^O11", "TEST_HOSPITAL")
            ids.append(stored["id"])
    return ids


def worker_logs(directory) -> str:
    return " | ".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted(directory.glob("worker*.log")))


@pytest.fixture
def stream_name(request):
    return f"test:{request.node.name}:{time.monotonic_ns()}"


def make_gateway(tmp_path, routes, redis_url, stream, **extra) -> Gateway:
    return Gateway.from_config(load_config({"DATA_DIR": str(tmp_path / "gw"), "ROUTES_FILE": str(routes),
                                            "REDIS_URL": redis_url, "REDIS_STREAM": stream,
                                            "DELIVERY_POLL_MS": 20, "DELIVERY_LEASE_SECONDS": 2, **extra}))


def test_two_worker_processes_share_deliveries_and_survive_a_sigkill(tmp_path, receivers, redis_url, stream_name):
    receiver = receivers["province"]
    receiver.slow(0.02)                                     # every request takes a while: the kill lands mid-flight
    routes = fast_routes(tmp_path, receiver.url(), timeout=0.5)
    gateway = make_gateway(tmp_path, routes, redis_url, stream_name)

    env = {**os.environ, "GATEWAY_DATA_DIR": str(tmp_path / "gw"), "GATEWAY_ROUTES_FILE": str(routes),
           "GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_STREAM": stream_name, "GATEWAY_DELIVERY_POLL_MS": "20",
           "GATEWAY_DELIVERY_LEASE_SECONDS": "3", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "gateway.cli", "worker", "--threads", "2"]
    workers = [subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=open(tmp_path / f"worker{i}.log", "wb")) for i in range(2)]
    try:
        for i, process in enumerate(workers):               # both are consuming before there is work
            line = process.stdout.readline()
            assert line.startswith(b"delivery worker: 2 thread(s), Redis Streams"), \
                (line, (tmp_path / f"worker{i}.log").read_text()[-2000:])
        ids = fill_outbox(gateway, resources=40, versions=3)
        wait_until(lambda: gateway.outbox.counts().get("delivered", 0) >= 20, timeout=30, interval=0.05,
                   describe=lambda: f"outbox {gateway.outbox.counts()}, {worker_logs(tmp_path)}")
        workers[0].send_signal(signal.SIGKILL)              # no goodbye: its leases and stream entries stay behind
        workers[0].wait(5)
        # a kill between a relay's lease and its XADD leaves rows for the relay lease (60 s) to expire
        wait_until(lambda: gateway.outbox.counts() == {"delivered": 120}, timeout=90, interval=0.05,
                   describe=lambda: f"outbox {gateway.outbox.counts()}, {worker_logs(tmp_path)}")
        # the killed consumer's pending entries are claimed by the survivor (XAUTOCLAIM) and acknowledged
        wait_until(lambda: redis.Redis.from_url(redis_url).xlen(stream_name) == 0, timeout=15,
                   describe=lambda: worker_logs(tmp_path))
    finally:
        for process in workers:
            if process.poll() is None:
                process.terminate()
                process.wait(10)

    for res_id in ids:                                      # every version arrived exactly once, in order
        assert receiver.stored_versions("MedicationRequest", res_id) == ["1", "2", "3"]
    sent = Counter(r["delivery_key"] for r in receiver.requests())
    assert len(sent) == 120
    repeats = sum(count - 1 for count in sent.values())
    assert repeats <= 2          # at most the killed process's in-flight requests (2 threads), repeated idempotently
    senders = {r["worker"].split("-")[1] for r in receiver.requests()}
    assert senders == {str(p.pid) for p in workers}         # both processes took a share


def test_a_relay_crash_before_xadd_loses_nothing_and_a_repeated_entry_delivers_once(
        tmp_path, receivers, redis_url, stream_name):
    receiver = receivers["province"]
    routes = fast_routes(tmp_path, receiver.url())
    gateway = make_gateway(tmp_path, routes, redis_url, stream_name)
    (res_id,) = fill_outbox(gateway, resources=1, versions=1)
    (delivery,) = gateway.outbox.list()
    workers = StreamWorkers(Deliverer(gateway.store.engine, gateway.routes, lease_seconds=2), redis_url, 1, 0.02,
                            stream=stream_name, relay_lease=0.3)
    workers.ensure_group()
    # a relay leased the row and died before its XADD: nothing in the stream, the row is leased
    assert gateway.outbox.lease(delivery.id, "relay:crashed", 0.3)
    assert workers.relay_once() == 0
    time.sleep(0.35)
    assert workers.relay_once() == 1                        # the lease ran out: relayed again
    client = redis.Redis.from_url(redis_url)
    client.xadd(stream_name, {"id": str(delivery.id)})      # and the same id once more (a second relay's copy)
    workers.start()
    try:
        wait_until(lambda: gateway.outbox.get(delivery.id).status == "delivered")
        wait_until(lambda: client.xlen(stream_name) == 0)
    finally:
        workers.stop()
    assert receiver.stored_versions("MedicationRequest", res_id) == ["1"]
    assert len(receiver.requests()) == 1


def test_stream_workers_retry_and_keep_version_order(tmp_path, receivers, redis_url, stream_name):
    receiver = receivers["province"]
    receiver.fail(500, times=3)
    routes = fast_routes(tmp_path, receiver.url())
    gateway = make_gateway(tmp_path, routes, redis_url, stream_name)
    (res_id,) = fill_outbox(gateway, resources=1, versions=3)
    workers = StreamWorkers(Deliverer(gateway.store.engine, gateway.routes, lease_seconds=2), redis_url, 3, 0.02,
                            stream=stream_name).start()
    try:
        wait_until(lambda: gateway.outbox.counts() == {"delivered": 3})
    finally:
        workers.stop()
    assert receiver.stored_versions("MedicationRequest", res_id) == ["1", "2", "3"]
    assert [d.attempts for d in gateway.outbox.list()] == [4, 1, 1]


def test_consumers_that_stopped_and_hold_nothing_are_forgotten(tmp_path, receivers, redis_url, stream_name):
    routes = fast_routes(tmp_path, receivers["province"].url())
    gateway = make_gateway(tmp_path, routes, redis_url, stream_name)
    workers = StreamWorkers(Deliverer(gateway.store.engine, gateway.routes), redis_url, 1, 0.02, stream=stream_name)
    workers.ensure_group()
    client = redis.Redis.from_url(redis_url)
    client.xadd(stream_name, {"id": "1"})
    client.xreadgroup(workers.group, "left-holding-one", {stream_name: ">"}, count=1)   # pending 1: kept
    client.xgroup_createconsumer(stream_name, workers.group, "stopped-long-ago")        # nothing pending
    time.sleep(0.2)
    assert workers.prune_consumers(idle_seconds=0.1) == ["stopped-long-ago"]
    assert [c["name"] for c in client.xinfo_consumers(stream_name, workers.group)] == [b"left-holding-one"]


def test_workers_started_while_redis_is_down_deliver_once_it_is_up(tmp_path, receivers, stream_name):
    from tests.routing.conftest import free_port
    receiver = receivers["province"]
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    gateway = make_gateway(tmp_path, fast_routes(tmp_path, receiver.url()), url, stream_name)
    (res_id,) = fill_outbox(gateway, resources=1, versions=2)
    workers = StreamWorkers(Deliverer(gateway.store.engine, gateway.routes, lease_seconds=2), url, 1, 0.02,
                            stream=stream_name).start()                  # no Redis yet: no exception either
    redis_server = None
    try:
        time.sleep(0.5)
        assert gateway.outbox.counts() == {"pending": 2}
        redis_server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: gateway.outbox.counts() == {"delivered": 2}, timeout=20)
    finally:
        workers.stop()
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait(10)
    assert receiver.stored_versions("MedicationRequest", res_id) == ["1", "2"]


def test_two_deployments_on_one_redis_each_deliver_only_their_own(tmp_path, receivers, redis_url):
    """Without REDIS_STREAM set, each database gets a stream of its own: two gateways sharing a Redis
    never take (and acknowledge) each other's deliveries; processes on one database share one."""
    from gateway.routing import deployment_stream, make_workers
    receiver = receivers["province"]
    routes = fast_routes(tmp_path, receiver.url())
    gateways = [Gateway.from_config(load_config({"DATA_DIR": str(tmp_path / name), "ROUTES_FILE": str(routes),
                                                 # two deployments: two databases, whatever GATEWAY_TEST_STORE says
                                                 "DATABASE_URL": f"sqlite:///{tmp_path / name / 'gateway.db'}",
                                                 "REDIS_URL": redis_url, "DELIVERY_POLL_MS": 20,
                                                 "DELIVERY_LEASE_SECONDS": 2})) for name in ("a", "b")]
    workers = [make_workers(g.config, g.store.engine, g.routes, threads=2) for g in gateways]
    assert workers[0].stream != workers[1].stream
    assert workers[0].stream == deployment_stream(gateways[0].config["DATABASE_URL"])
    assert deployment_stream("postgresql+psycopg://gw:one@db/lecheng") == \
        deployment_stream("postgresql+psycopg://gw:two@db/lecheng")          # a password change keeps it
    for w in workers:
        w.start()
    try:
        for gateway in gateways:
            fill_outbox(gateway, resources=10, versions=1)
        for gateway in gateways:
            wait_until(lambda: gateway.outbox.counts() == {"delivered": 10}, timeout=20, interval=0.05,
                       describe=lambda: str(gateway.outbox.counts()))
    finally:
        for w in workers:
            w.stop()
    assert len(receiver.requests()) == 20
