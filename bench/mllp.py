"""Benchmark the MLLP listener: messages per second and ACK latency at 1, 8 and 32 connections.

Run from the repository root::

    python bench/mllp.py                       # listener only: a trivial handler answers AA
    python bench/mllp.py --messages 5000 --connections 1,4,16
    python bench/mllp.py --handler mypkg.ingest:make_handler   # any factory() -> Handler

Each connection is a separate client process that behaves like an interface engine in
original-mode acknowledgement: send one message, wait for its ACK, send the next. Client
processes (not threads) keep the clients' own Python work off the server's GIL, so the numbers
describe the listener rather than the load generator. Each client sends a few warm-up messages
before the clock starts; messages/s is total messages over the wall time from the common start
to the last ACK; latency is per message, from the write to the complete ACK frame; server CPU
is the listener process's CPU time per message, which stays meaningful when the clients and the
server share a small machine and wall-clock rates mostly measure the contention.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import platform
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.ingest.mllp import Handler, MllpDecoder, MllpReply, MllpServer, frame  # noqa: E402

WARM_UP_MESSAGES = 20


def rde_o11(control_id: str) -> bytes:
    """A realistic RDE^O11 (about 700 bytes) with the given MSH-10."""
    segments = [
        f"MSH|^~\\&|HIS|BOAO_HOSP|GATEWAY|LECHENG|20260315093000||RDE^O11^RDE_O11|{control_id}|P|2.5|||AL|NE||UNICODE UTF-8",
        "PID|1||HN00012345^^^BOAO_HOSP^MR~460100199001011234^^^CHNMOH^RI||王^小明^^^^^L||19900101|M|||"
        "博鳌乐城国际医疗旅游先行区^^琼海^海南^571434^CHN",
        "PV1|1|O|ONC^101^1^BOAO_HOSP||||D0042^李^华^^^^^^BOAO_HOSP",
        "ORC|NW|PO-20260315-001^HIS|||||^^^20260315^^R||20260315092500|N0012^张^敏|||ONC",
        "RXE|^^^20260315^^R|J-DRUG-0042^帕博利珠单抗注射液 100mg/4ml^LOCAL|200||mg|IV^静脉滴注|||1|||||"
        "||||||||||||||LECHENG-APPROVAL-2026-0315",
        "RXR|IV^Intravenous^HL70162",
        "RXC|B|0338-0049-04^0.9% Sodium Chloride 100ml^NDC|100|ml",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def make_trivial_handler() -> Handler:
    """The default: answer AA with the message's MSH-10, so the run measures the listener itself."""

    def handle(payload: bytes) -> MllpReply:
        msh = payload.split(b"\r", 1)[0].split(b"|")
        control_id = msh[9] if len(msh) > 9 else b""
        stamp = time.strftime("%Y%m%d%H%M%S").encode()
        return MllpReply(
            b"MSH|^~\\&|GATEWAY|LECHENG|HIS|BOAO_HOSP|" + stamp + b"||ACK^O11^ACK|ACK" + control_id
            + b"|P|2.5\rMSA|AA|" + control_id + b"\r"
        )

    return handle


def load_handler_factory(spec: str) -> Callable[[], Handler]:
    """Resolve ``module:callable``; the callable takes no arguments and returns a Handler."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"--handler wants module:callable, got {spec!r}")
    target = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise SystemExit(f"--handler {spec!r} is not callable")
    return target


def client(address: tuple[str, int], connection: int, messages: int, start, results) -> None:
    """One sending system: connect, warm up, wait for the common start, then send-and-wait N times."""
    sock = socket.create_connection(address, timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    decoder = MllpDecoder()
    pending: list[bytes] = []

    def request(payload: bytes) -> None:
        sock.sendall(frame(payload))
        while not pending:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            pending.extend(f.payload for f in decoder.feed(data))
        pending.pop(0)

    try:
        for i in range(WARM_UP_MESSAGES):
            request(rde_o11(f"W{connection}-{i}"))
        start.wait()
        latencies = []
        began = time.monotonic()
        for i in range(messages):
            payload = rde_o11(f"B{connection}-{i}")
            sent = time.perf_counter()
            request(payload)
            latencies.append(time.perf_counter() - sent)
        results.put((connection, began, time.monotonic(), latencies, None))
    except Exception as exc:  # reported by the parent instead of hanging it
        results.put((connection, 0.0, 0.0, [], repr(exc)))
    finally:
        sock.close()


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def run(address: tuple[str, int], connections: int, messages: int) -> dict:
    """Drive ``connections`` concurrent client processes and summarise their ACK timings."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(connections + 1)
    results = context.Queue()
    processes = [
        context.Process(target=client, args=(address, n, messages, start, results), daemon=True)
        for n in range(connections)
    ]
    for process in processes:
        process.start()
    start.wait(timeout=120)
    cpu_before = _cpu_seconds()
    outcomes = [results.get(timeout=600) for _ in processes]
    server_cpu = _cpu_seconds() - cpu_before
    for process in processes:
        process.join()
    errors = [error for *_, error in outcomes if error]
    if errors:
        raise SystemExit(f"{len(errors)} client(s) failed: {errors[0]}")
    began = min(o[1] for o in outcomes)
    ended = max(o[2] for o in outcomes)
    latencies = sorted(latency for o in outcomes for latency in o[3])
    seconds = ended - began
    return {
        "connections": connections,
        "messages": len(latencies),
        "seconds": seconds,
        "rate": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "cpu_us": server_cpu / len(latencies) * 1e6,
    }


def _cpu_seconds() -> float:
    """CPU time of this process (the server's threads; the clients are child processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per connection (default 2000)")
    parser.add_argument("--connections", default="1,8,32", help="comma-separated connection counts (default 1,8,32)")
    parser.add_argument("--handler", metavar="MODULE:CALLABLE", help="handler factory to measure instead of the trivial AA")
    args = parser.parse_args(argv)

    factory = load_handler_factory(args.handler) if args.handler else make_trivial_handler
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    server = MllpServer(factory(), "127.0.0.1", 0, idle_timeout=600.0, max_connections=max(counts) + 8)
    server.start()
    try:
        print(f"MLLP listener benchmark: python {platform.python_version()}, {os.cpu_count()} CPU(s), "
              f"handler {args.handler or 'trivial AA'}, {len(rde_o11('X'))} byte RDE^O11, "
              f"{args.messages} messages per connection, send-and-wait")
        print(f"{'connections':>11} {'messages':>9} {'seconds':>8} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'server CPU us/msg':>17}")
        for count in counts:
            row = run(server.address, count, args.messages)
            print(f"{row['connections']:>11} {row['messages']:>9} {row['seconds']:>8.2f} {row['rate']:>9.0f} "
                  f"{row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} {row['cpu_us']:>17.1f}", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
