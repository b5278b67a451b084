"""Fuzz the ingest paths at volume: 100,000 mutated samples (tests/fuzzing.py) against a real gateway
on loopback, over HTTP and MLLP, and report what the fuzz test (tests/ingest/test_fuzz.py) asserts:
every input answered well-formed within 5 s, a message-log row with exactly the bytes sent, the server
up at the end; plus answers by code and the slowest answer.

Run from the repository root::

    python bench/fuzz.py                          # 100,000 inputs: 80,000 over HTTP, 20,000 over MLLP
    python bench/fuzz.py --inputs 10000 --seed 7

The server is waitress (the production server of `fhir-gateway serve`) on a temporary data directory,
in this process; the MLLP listener is the gateway's own. Exit status 1 when any input failed a check.
"""
from __future__ import annotations

import argparse
import http.client
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import create_app  # noqa: E402
from gateway.ingest.mllp_handler import mllp_server  # noqa: E402
from tests.fuzzing import (Mutator, Verdict, for_mllp, logged_hashes, missing_log_rows, post,  # noqa: E402
                           send_mllp)
from tests.security.credentials import http_token, register  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--mllp-share", type=float, default=0.2, help="share of the inputs sent over MLLP")
    parser.add_argument("--seed", type=int, default=1411)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--huge", type=int, default=500_000, help="largest huge field, bytes")
    args = parser.parse_args()

    import logging
    from waitress.server import create_server
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)     # "Task queue depth" on every burst
    data_dir = tempfile.mkdtemp(prefix="lecheng-fuzz-")
    app = create_app({"DATA_DIR": data_dir, "RATE_LIMIT": "100000000 per minute", "TOKEN_LIFETIME_SECONDS": 86400})
    register(app, "fuzz-admin", "admin")
    server = create_server(app, host="127.0.0.1", port=0, threads=args.senders,
                           max_request_body_size=int(app.config["MAX_MESSAGE_BYTES"]))
    threading.Thread(target=server.run, daemon=True).start()
    host, port = "127.0.0.1", server.effective_port
    base = f"http://{host}:{port}"
    token = http_token(base, "fuzz-admin")
    gateway = app.extensions["gateway"]

    mllp_inputs = int(args.inputs * args.mllp_share)
    http_inputs = args.inputs - mllp_inputs
    mutator = Mutator(args.seed, huge=args.huge)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    limit = int(app.config["MAX_MESSAGE_BYTES"])
    print(f"fuzz: {http_inputs} inputs over HTTP, {mllp_inputs} over MLLP, seed {args.seed}, {args.senders} senders; "
          f"{platform.platform()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)

    listener = mllp_server(gateway.pipeline, "127.0.0.1", 0)
    listener.start()
    mllp = Verdict()
    sent_by_thread: list[Counter] = []
    mllp_started = time.perf_counter()

    def sender(count: int, seed: int) -> None:
        sent = Counter()
        sent_by_thread.append(sent)
        own = Mutator(seed, huge=min(args.huge, limit // 2))
        sock = socket.create_connection(listener.address, timeout=10)
        for _ in range(count):
            mutant = own.hl7_mutant(original_mode=True)
            mutant.data = for_mllp(mutant.data)
            sent[mutant.sha256] += 1
            reported = len(mllp.problems)
            try:
                send_mllp(sock, mutant, mllp)
            except (OSError, ConnectionError):
                sock.close()
                sock = socket.create_connection(listener.address, timeout=10)
            for problem in mllp.problems[reported:]:
                print(f"    MLLP {problem[:400]}", flush=True)
        sock.close()
    threads = [threading.Thread(target=sender, args=(mllp_inputs // args.senders + (i < mllp_inputs % args.senders),
                                                     args.seed * 100 + i)) for i in range(args.senders)]
    for thread in threads:          # MLLP and HTTP at once, as a gateway sees them
        thread.start()

    web = Verdict()
    started = time.perf_counter()
    batch = 2_000
    with ThreadPoolExecutor(args.senders) as pool:
        for first in range(0, http_inputs, batch):
            mutants = [mutator.document_mutant() if i % 4 == 0 else mutator.hl7_mutant()
                       for i in range(first, min(first + batch, http_inputs))]
            reported = len(web.problems)
            list(pool.map(lambda m: post(lambda: http.client.HTTPConnection(host, port, timeout=60), m, headers,
                                         web, limit), mutants))
            print(f"  http {min(first + batch, http_inputs)}/{http_inputs} at {time.perf_counter() - started:.0f} s, "
                  f"{len(web.problems)} problems, slowest {web.slowest:.2f} s, load {os.getloadavg()[0]:.1f}",
                  flush=True)
            for problem in web.problems[reported:]:
                print(f"    {problem[:400]}", flush=True)
    http_seconds = time.perf_counter() - started
    web.problems += missing_log_rows(gateway.store.engine, web)

    for thread in threads:
        thread.join()
    mllp_seconds = time.perf_counter() - mllp_started
    sent_hashes = sum(sent_by_thread, Counter())
    logged = logged_hashes(gateway.store.engine, "mllp")
    unlogged = sum(n - logged.get(sha, 0) for sha, n in sent_hashes.items() if logged.get(sha, 0) < n)
    if unlogged:
        mllp.problems.append(f"{unlogged} MLLP inputs without a message-log row")
    listener.stop()

    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/healthz")
    up = conn.getresponse().status == 200
    server.close()

    for name, verdict, seconds in (("HTTP", web, http_seconds), ("MLLP", mllp, mllp_seconds)):
        print(f"{name}: {verdict.sent} answered in {seconds:.0f} s ({verdict.sent / max(seconds, 1e-9):.0f}/s), "
              f"slowest {verdict.slowest:.2f} s, {len(verdict.problems)} problems; answers: "
              + ", ".join(f"{k} {v}" for k, v in sorted(verdict.codes.items())))
        for problem in verdict.problems[:20]:
            print(f"  {problem}")
    print(f"server up at the end: {up}; data directory {data_dir}")
    return 0 if up and not web.problems and not mllp.problems and web.sent == http_inputs else 1


if __name__ == "__main__":
    sys.exit(main())
