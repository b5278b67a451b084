"""Deliveries per second from the outbox to a local receiving FHIR server (loopback only).

    python bench/route.py [--deliveries 2000] [--threads 4]

Fills the outbox of a fresh SQLite gateway with N routed MedicationRequest versions (a third of the
resources get 3 versions, so per-resource ordering is exercised), then drains it with:

1. in-process worker threads;
2. Redis Streams consumers in this process (a redis-server started here on a free loopback port);
3. two ``fhir-gateway worker`` processes sharing the Redis consumer group.

Each run reports deliveries/s and the p50/p95 of one attempt (lease, read, HTTP PUT, record), and
checks the receiver got every version exactly once. Bounded: each run stops after 120 s.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from gateway.routing import make_workers  # noqa: E402
from gateway.routing.delivery import Deliverer  # noqa: E402
from gateway.routing.receiver import Receiver  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402

LIMIT_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def routes_file(directory: Path, base_url: str) -> Path:
    path = directory / "routes.yaml"
    path.write_text(f"""
destinations:
  epc: {{base_url: "{base_url}", organization: HAINAN_EPC, timeout: 5,
         retry: {{max_attempts: 20, backoff_base: 0.05, backoff_cap: 1}}}}
rules:
  - {{name: orders, resource: MedicationRequest, to: epc}}
""")
    return path


def fill(gateway: Gateway, deliveries: int) -> int:
    made = 0
    with gateway.store.write() as tx:
        number = 0
        while made < deliveries:
            resource = tx.create({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                                  "identifier": [{"system": "https://bench.example/placer", "value": f"B{number}"}],
                                  "subject": {"reference": "Patient/p1"}})
            gateway.router.route(tx.conn, [(resource, "create")], "RDE^O11", "BENCH")
            made += 1
            for version in (2, 3) if number % 3 == 0 else ():
                if made >= deliveries:
                    break
                resource = tx.update({**resource, "note": [{"text": f"v{version}"}]})
                gateway.router.route(tx.conn, [(resource, "update")], "RDE^O11", "BENCH")
                made += 1
            number += 1
    return made


def timed_attempts():
    """Wrap Deliverer.attempt to collect per-attempt durations in this process."""
    durations: list[float] = []
    original = Deliverer.attempt

    def attempt(self, delivery_id, owner):
        start = time.perf_counter()
        try:
            return original(self, delivery_id, owner)
        finally:
            durations.append(time.perf_counter() - start)

    Deliverer.attempt = attempt
    return durations, lambda: setattr(Deliverer, "attempt", original)


def drain(gateway: Gateway, total: int) -> float:
    start = time.perf_counter()
    while gateway.outbox.counts().get("delivered", 0) < total:
        if time.perf_counter() - start > LIMIT_SECONDS:
            raise SystemExit(f"not drained within {LIMIT_SECONDS} s: {gateway.outbox.counts()}")
        time.sleep(0.02)
    return time.perf_counter() - start


def check(receiver: Receiver, total: int) -> str:
    stored = sum(len(v) for v in receiver.resources().values())
    sent = len(receiver.requests())
    assert stored == total, f"receiver stored {stored} versions, expected {total}"
    return f"{sent - total} repeated request(s)"


def run(name: str, directory: Path, deliveries: int, threads: int, redis_url: str = "", processes: int = 0) -> None:
    receiver = Receiver("bench").start()
    directory.mkdir(parents=True)
    routes = routes_file(directory, receiver.url())
    config = load_config({"DATA_DIR": str(directory / "gw"), "ROUTES_FILE": str(routes), "REDIS_URL": redis_url,
                          "REDIS_STREAM": f"bench:{name}:{time.time_ns()}", "DELIVERY_POLL_MS": 20})
    gateway = Gateway.from_config(config)
    total = fill(gateway, deliveries)
    durations, restore = timed_attempts()
    children, workers = [], None
    try:
        if processes:
            env = {**os.environ, "GATEWAY_DATA_DIR": config["DATA_DIR"], "GATEWAY_ROUTES_FILE": str(routes),
                   "GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_STREAM": config["REDIS_STREAM"],
                   "GATEWAY_DELIVERY_POLL_MS": "20", "PYTHONPATH": str(ROOT)}
            children = [subprocess.Popen([sys.executable, "-m", "gateway.cli", "worker", "--threads", str(threads)],
                                         env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                        for _ in range(processes)]
            for child in children:
                child.stdout.readline()                  # started
        else:
            workers = make_workers(config, gateway.store.engine, gateway.routes, threads).start()
        seconds = drain(gateway, total)
    finally:
        restore()
        if workers is not None:
            workers.stop()
        for child in children:
            child.terminate()
            child.wait(10)
    repeats = check(receiver, total)
    receiver.stop()
    line = f"{name:44} {total:6d} deliveries in {seconds:6.2f} s = {total / seconds:7.0f} deliveries/s"
    if durations:
        ordered = sorted(durations)
        line += (f"; attempt p50 {statistics.median(ordered) * 1000:5.1f} ms, "
                 f"p95 {ordered[int(len(ordered) * 0.95) - 1] * 1000:5.1f} ms")
    print(f"{line}; {repeats}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    directory = Path(tempfile.mkdtemp(prefix="lecheng-bench-route-"))
    redis_binary = shutil.which("redis-server")
    redis = None
    try:
        run(f"in-process, {args.threads} threads", directory / "a", args.deliveries, args.threads)
        if redis_binary is None:
            print("redis-server not installed: Redis runs skipped")
            return 0
        port = free_port()
        redis = subprocess.Popen([redis_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        url = f"redis://127.0.0.1:{port}/0"
        run(f"Redis Streams, 1 process x {args.threads} threads", directory / "b", args.deliveries, args.threads, url)
        run(f"Redis Streams, 2 processes x {args.threads // 2 or 1} threads", directory / "c", args.deliveries,
            args.threads // 2 or 1, url, processes=2)
    finally:
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
