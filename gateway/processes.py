"""``fhir-gateway serve --processes N``: N gateway processes answering on one listening socket.

One Python process never uses more than one core (the GIL), and on SQLite or PostgreSQL the write
path is mostly waiting on the database or on Python, so a gateway that must keep up with a
province's hospitals runs several. This supervisor binds the HTTP socket once and starts N
processes that inherit it (the kernel hands each new connection to one of them); each is a fresh
interpreter (``python -m gateway.cli serve --listen-fd``) that builds its own app, engine and
threads, so nothing is shared by ``fork`` (SQLAlchemy engines and sockets must not be: the issue
of ``gunicorn --preload``). What the processes share lives in the database and ``DATA_DIR``:
resources, the message log, the outbox, export jobs, clients, signing keys, the search cursor key.

Process 0 also runs the MLLP listener, the start-up recovery sweep and the delivery workers (the
outbox is leased row by row, so ``fhir-gateway worker`` may run beside it too); the others answer
HTTP only. A process that dies is started again (after a second, so a crash loop cannot spin);
SIGTERM or SIGINT stops them all. ``/metrics`` sums every process (prometheus_client's
multi-process mode, in a directory made empty at start when ``PROMETHEUS_MULTIPROC_DIR`` is unset).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0


def listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP socket every process accepts on (OSError when the port is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def serve_in_processes(sock: socket.socket, processes: int, data_dir: str, threads: int,
                       mllp_port: int | None, workers: bool) -> int:
    """Start and watch the processes until SIGTERM/SIGINT; returns the exit status."""
    env = dict(os.environ)
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics = Path(data_dir) / "metrics"
        shutil.rmtree(metrics, ignore_errors=True)      # counters of processes that are gone
        metrics.mkdir(parents=True, exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    host, port = sock.getsockname()[:2]

    def start(index: int) -> subprocess.Popen:
        argv = [sys.executable, "-m", "gateway.cli", "--data-dir", data_dir, "serve",
                "--listen-fd", str(sock.fileno()), "--host", str(host), "--port", str(port),
                "--threads", str(threads), "--process-index", str(index)]
        if index == 0 and mllp_port:
            argv += ["--mllp-port", str(mllp_port)]
        if index != 0 or not workers:
            argv.append("--no-workers")
        return subprocess.Popen(argv, env=env, pass_fds=(sock.fileno(),))

    stopping = False

    def stop(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    children = {index: start(index) for index in range(processes)}
    print(f"{processes} gateway processes on http://{host}:{port} (pids "
          f"{', '.join(str(c.pid) for c in children.values())})", flush=True)
    try:
        while not stopping:
            time.sleep(0.2)
            for index, child in list(children.items()):
                status = child.poll()
                if status is not None and not stopping:
                    log.error("gateway process %d (pid %d) ended with status %s; starting it again", index,
                              child.pid, status)
                    time.sleep(RESTART_DELAY_SECONDS)
                    children[index] = start(index)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 15
        for child in children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sock.close()
    return 0
