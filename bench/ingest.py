"""Benchmark HL7 ingest end to end against a real server: RDE^O11 orders over HTTP (``POST /hl7v2``)
and MLLP, at several concurrencies, on an empty store and on one holding many orders, beside the
bare Flask + waitress ceiling and the peer (hl7v2-fhir-bridge), alternated in one run.

Run from the repository root::

    python bench/ingest.py                                 # HTTP and MLLP at 1, 8, 32; empty store
    python bench/ingest.py --stored 200000                 # also at 200,000 stored orders
    python bench/ingest.py --messages 1600 --concurrency 8 --transports http --rounds 3
    python bench/ingest.py --database postgresql --processes 1,2 --concurrency 8   # a PostgreSQL it starts

What is measured: ``fhir-gateway serve`` (waitress, 8 threads, SQLite in its data directory, MLLP
listener on) started as a subprocess with validation, audit and routing (rules and outbox rows) on;
the outbox's delivery workers are off (``--no-workers``: delivery is asynchronous and has its own
bench, bench/route.py). Each client connection sends distinct new orders (own MSH-10 and placer
number, one of 20,000 patients) and waits for each ACK (original-mode acknowledgement), so an ACK
means the message was stored. Clients run in separate processes (threads inside), so their Python
work does not share the server's GIL. messages/s = ACKs / wall time; latency is per message, from
send to the whole ACK. The ceiling is a bare Flask app under waitress answering a fixed ACK. The
*pipeline ceiling* runs the gateway's own parse, map, validate and ACK on that bare app, in each
``--processes`` count, storing, logging, auditing and authorising nothing: what lies between it and
the gateway is the store-before-ACK and the security. The peer is
``../shared/peer/bridge_handle_bench.py`` (one process, no HTTP: bytes in, ACK out, bundle
written to a directory). Gateway runs and peer runs alternate (A, B, A, B); the load average is
printed beside each, as the machine is shared.

``--stored N`` preloads N orders (with their Provenance, message-log entry and outbox row, indexed
by the gateway's own ``index_rows``) straight into the tables (bulk INSERTs: the HTTP path would
take hours), after one real message of the same shape went through the pipeline; the preloaded data
directory is kept under ``--cache`` and reused.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from base64 import b64encode
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "tests" / "data" / "samples" / "rde_o11_new_imported.hl7"
PEER_PYTHON = Path.home() / ".cache" / "peer" / "bin" / "python"
PEER_BENCH = ROOT.parent / "shared" / "peer" / "bridge_handle_bench.py"
PATIENTS = 20000
START = datetime(2025, 1, 1)
MLLP_START, MLLP_END = b"\x0b", b"\x1c\r"
MLLP_CLIENT_ADDRESS = "127.0.0.2"


def resident_id(person: int) -> str:
    """A well-formed 18-character resident identity number (GB 11643 check digit), one per person."""
    born = (datetime(1950, 1, 1) + timedelta(days=person // 1000)).strftime("%Y%m%d")
    body = f"460100{born}{person % 1000:03d}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights)) % 11]


def order(tag: str, i: int) -> bytes:
    """A distinct new order: own control id, placer number, one of PATIENTS patients (each with its own
    MRN and resident id), authored i minutes on."""
    base = SAMPLE.read_bytes() if not hasattr(order, "base") else order.base
    order.base = base
    authored = (START + timedelta(minutes=i)).strftime("%Y%m%d%H%M%S").encode()
    # tag N ("new patients"): patients the preloaded store does not hold, so a run on it does the same
    # work per message as one on the empty store (each message a new Patient and Person)
    patient = i % PATIENTS + (PATIENTS if tag == "N" else 0)
    return (base.replace(b"BSH20260315000001", f"{tag}{i:08d}".encode())
            .replace(b"BSH-RX-0001", f"RX{tag}-{i:08d}".encode())
            .replace(b"BSH-RXNUM-0001", f"RXN{tag}-{i:08d}".encode())
            .replace(b"H0012345", f"H{patient:06d}".encode())
            .replace(b"46010019900101123X", resident_id(patient).encode())
            .replace(b"20260315092500", authored))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ servers

class Server:
    """``fhir-gateway serve`` (or the bare Flask ceiling) as a subprocess on free loopback ports."""

    def __init__(self, data_dir: Path | None, threads: int = 8, bare: bool = False, processes: int = 1,
                 database_url: str | None = None, pipeline_only: bool = False):
        self.port, self.mllp_port = _free_port(), _free_port()
        env = {**os.environ, "GATEWAY_RATE_LIMIT": "100000000 per minute", "GATEWAY_LOG_LEVEL": "WARNING",
               "GATEWAY_TOKEN_LIFETIME_SECONDS": "86400"}      # one token for the whole run
        if database_url:
            env["GATEWAY_DATABASE_URL"] = database_url
        if bare:
            cmd = [sys.executable, __file__, "--pipeline-server" if pipeline_only else "--bare-server",
                   str(self.port), "--threads", str(threads), "--processes", str(processes)]
        else:
            cmd = [str(Path(sys.executable).parent / "fhir-gateway"), "--data-dir", str(data_dir), "serve",
                   "--port", str(self.port), "--threads", str(threads), "--mllp-port", str(self.mllp_port),
                   "--no-workers", "--processes", str(processes)]
        if not bare:        # a hospital client: HTTP with its token, MLLP from 127.0.0.2 (its registered address)
            added = subprocess.run([cmd[0], "--data-dir", str(data_dir), "clients", "add", "bench-hospital",
                                    "--organization", "BOAO_SUPER_HOSPITAL", "--role", "hospital",
                                    "--mllp-address", MLLP_CLIENT_ADDRESS], capture_output=True, text=True,
                                   env=env, cwd=str(ROOT))
            found = re.search(r"client_secret: (\S+)", added.stdout)
            if found is None:
                raise SystemExit(f"could not register the bench client: {added.stdout}{added.stderr}")
            self.secret = found.group(1)
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                        cwd=str(ROOT))
        self.output: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise SystemExit("server exited:\n" + "".join(self.output))
            self.output.append(line)
            if "on http://" in line or "bare server" in line:
                break
        if processes > 1 and not bare:      # wait until every process says it serves
            while sum("serving" in line for line in self.output) < processes and time.monotonic() < deadline:
                line = self.process.stdout.readline()
                if not line:
                    raise SystemExit("server exited:\n" + "".join(self.output))
                self.output.append(line)
        threading.Thread(target=self._drain, daemon=True).start()
        self.token = self._token() if not bare else "none"

    def _drain(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    def _token(self) -> str:
        basic = b64encode(f"bench-hospital:{self.secret}".encode()).decode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/auth/token",
                                         data=b"grant_type=client_credentials",
                                         headers={"Authorization": f"Basic {basic}",
                                                  "Content-Type": "application/x-www-form-urlencoded"})
        deadline = time.monotonic() + 60
        while True:             # the banner is printed before waitress binds the port
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read())["access_token"]
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """CPU of the server and of the processes it started (serve --processes)."""
        pids = [self.process.pid] + [int(p) for p in subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True).stdout.split()]
        total = 0.0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def bare_server(port: int, threads: int) -> None:
    """The ceiling: Flask + waitress answering a fixed ACK-sized body to POST /hl7v2."""
    from flask import Flask, Response, request
    from waitress import serve
    app = Flask("bare")
    ack = b"MSH|^~\\&|LECHENG_GW|HAINAN_EPC|BOAO_HIS|BOAO_SUPER_HOSPITAL|20260315093000||ACK^O11^ACK|X|P|2.5\rMSA|AA|X\r"

    @app.post("/hl7v2")
    def receive():
        request.get_data()
        return Response(ack, content_type="x-application/hl7-v2+er7")

    print(f"bare server on {port}", flush=True)
    serve(app, host="127.0.0.1", port=port, threads=threads, ident="bare")


def pipeline_server(port: int, threads: int, processes: int) -> None:
    """The second ceiling: the gateway's own parse, map, validate (every resource, as the store step
    validates it) and ACK for POST /hl7v2 on Flask + waitress, with nothing stored, logged, audited or
    authorised, in ``processes`` processes forked after binding one socket (as ``serve --processes``
    shares its). What the gateway does per message beyond this is the store-before-ACK and security."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            _serve_pipeline(listener, threads)
            os._exit(0)
        children.append(pid)
    print(f"bare server (gateway pipeline, nothing stored, {processes} processes) on {port}", flush=True)
    try:
        for pid in children:
            os.waitpid(pid, 0)
    except KeyboardInterrupt:
        for pid in children:
            os.kill(pid, signal.SIGKILL)


def _serve_pipeline(listener: socket.socket, threads: int) -> None:
    from flask import Flask, Response, request
    from waitress import serve

    from gateway.config import load_config
    from gateway.hl7v2 import AckCode, build_ack, parse_message
    from gateway.runtime import Gateway

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    gateway = Gateway.from_config(load_config({"DATA_DIR": tempfile.mkdtemp(prefix="lecheng-bench-pipeline-")}))
    pipeline = gateway.pipeline
    app = Flask("pipeline")

    @app.post("/hl7v2")
    def receive():
        message = parse_message(request.get_data(cache=False), fallback_charset=pipeline.config["FALLBACK_CHARSET"])
        mapped = pipeline.mappings.for_message(message.message_type).run(message, pipeline.terminology, pipeline.zone)
        issues = [issue for m in mapped.resources for issue in pipeline.validator.validate(m.resource)
                  if issue.severity in ("fatal", "error")]
        code = AckCode.AE if mapped.errors or issues else AckCode.AA
        return Response(build_ack(message, code, []).encode(), content_type="x-application/hl7-v2+er7")

    serve(app, sockets=[listener], threads=threads, ident="pipeline", _quiet=True)


# ------------------------------------------------------------------ clients

def _client(transport: str, port: int, token: str, tag: str, first: int, count: int, threads: int,
            start_at: float, out) -> None:
    """One client process: ``threads`` connections, each sending its share of messages one at a time."""
    results: list[tuple[float, bool]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def run(index: int) -> None:
        mine = [order(tag, first + index + k * threads) for k in range(count // threads)]
        local = []
        if transport == "http":
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "x-application/hl7-v2+er7"}
            while time.time() < start_at:
                time.sleep(0.001)
            for raw in mine:
                t = time.perf_counter()
                conn.request("POST", "/hl7v2", body=raw, headers=headers)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and b"MSA|AA" in body
                local.append((time.perf_counter() - t, ok))
                if not ok and not failures:
                    failures.append(f"HTTP {response.status}: {body[:300]!r}")
            conn.close()
        else:
            sock = socket.create_connection(("127.0.0.1", port), timeout=120,
                                            source_address=(MLLP_CLIENT_ADDRESS, 0))
            while time.time() < start_at:
                time.sleep(0.001)
            buffer = b""
            for raw in mine:
                t = time.perf_counter()
                sock.sendall(MLLP_START + raw + MLLP_END)
                while MLLP_END not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("MLLP connection closed")
                    buffer += chunk
                frame, _, buffer = buffer.partition(MLLP_END)
                # the sample asks for enhanced-mode acknowledgement (MSH-15 AL, MSH-16 NE): a commit
                # accept (CA), sent once the message is stored, is its only answer
                ok = b"MSA|CA" in frame or b"MSA|AA" in frame
                local.append((time.perf_counter() - t, ok))
                if not ok and not failures:
                    failures.append(f"MLLP: {frame[:300]!r}")
            sock.close()
        with lock:
            results.extend(local)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put((results, failures[:1]))


def load_run(transport: str, port: int, token: str, tag: str, first: int, messages: int, concurrency: int,
             server: Server | None) -> dict:
    """``messages`` orders over ``concurrency`` connections; returns rate, latency, server CPU per message."""
    processes = min(concurrency, 4)
    per_process = concurrency // processes
    share = messages // processes
    queue = multiprocessing.Queue()
    start_at = time.time() + 1.0
    clients = [multiprocessing.Process(target=_client, args=(transport, port, token, tag,
                                                             first + p * share, share, per_process, start_at, queue))
               for p in range(processes)]
    for c in clients:
        c.start()
    cpu0 = server.cpu_seconds() if server else 0.0
    results, failures = [], []
    for _ in clients:
        got, failed = queue.get()
        results += got
        failures += failed
    elapsed = time.time() - start_at
    for c in clients:
        c.join()
    cpu = (server.cpu_seconds() - cpu0) if server else 0.0
    latencies = sorted(t for t, _ok in results)
    return {"messages": len(results), "ok": sum(1 for _t, ok in results if ok), "rate": len(results) / elapsed,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "cpu_ms_per_msg": 1000 * cpu / max(1, len(results)), "load": os.getloadavg()[0],
            "failure": failures[0] if failures else None}


def peer_rate(messages: int) -> float | None:
    if not PEER_PYTHON.exists() or not PEER_BENCH.exists():
        return None
    out = subprocess.run([str(PEER_PYTHON), str(PEER_BENCH), str(messages)], capture_output=True, text=True,
                         timeout=600)
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


# ------------------------------------------------------------------ preloading a large store

def preload(data_dir: Path, total: int) -> None:
    """``total`` orders of the benchmark's shape, stored as the pipeline stores them, in bulk."""
    from gateway.config import load_config
    from gateway.runtime import Gateway
    from gateway.store import new_resource_id, schema
    from gateway.store.content import deflate
    from gateway.store.search_parameters import index_rows

    gateway = Gateway.from_config(load_config({"DATA_DIR": str(data_dir)}))
    result = gateway.pipeline.ingest(order("T", 0))
    assert result.code == "AA", result.ack
    engine = gateway.store.engine
    with engine.connect() as conn:
        def content(ref: str) -> dict:
            res_type, res_id = ref.split("/")[:2]
            row = conn.execute(schema.resources.select().where(schema.resources.c.res_type == res_type,
                                                               schema.resources.c.res_id == res_id)).first()
            return json.loads(row.content)          # the column type inflates it
        template_order = content(next(r for r in result_resources(gateway, result.log_id)
                                      if r.startswith("MedicationRequest/")))
        template_provenance = json.loads(conn.execute(schema.resources.select().where(
            schema.resources.c.res_type == "Provenance")).first().content)
        template_log = conn.execute(schema.message_log.select().where(
            schema.message_log.c.id == result.log_id)).first()._asdict()
        template_delivery = conn.execute(schema.deliveries.select()).first()._asdict()
        patient_template = content(template_order["subject"]["reference"])
        person_row = conn.execute(schema.resources.select().where(schema.resources.c.res_type == "Person")).first()
        person_template = json.loads(person_row.content) if person_row else None
    params, zone = gateway.store.params, gateway.store.zone
    raw = sqlite3.connect(gateway.config["DATABASE_URL"][len("sqlite:///"):], isolation_level=None)
    columns = {name: [c.name for c in table.columns] for name, table in schema.metadata.tables.items()}

    def insert_sql(name: str, row: dict) -> str:
        keys = [k for k in columns[name] if k in row]
        return f"INSERT INTO {name} ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})", keys

    batches: dict[str, list[dict]] = {}

    def add(name: str, row: dict) -> None:
        batches.setdefault(name, []).append(row)

    def store(resource: dict, stamp: str) -> None:
        body = deflate(json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode())   # as stored
        row = {"res_type": resource["resourceType"], "res_id": resource["id"], "version_id": 1,
               "last_updated": stamp, "deleted": False, "content": body}
        owner = (resource.get("meta", {}).get("tag") or [{}])[0].get("code")
        if "owner" in columns["resources"]:
            row["owner"] = owner
        add("resources", row)
        add("resource_versions", {**{k: v for k, v in row.items() if k != "owner"}, "method": "POST"})
        for search_type, rows in index_rows(params, resource, zone).items():
            for index_row in rows:
                add(schema.INDEX_TABLES[search_type].name, index_row)

    def flush() -> None:
        raw.execute("BEGIN IMMEDIATE")
        for name, rows in batches.items():
            sql, keys = insert_sql(name, rows[0])
            raw.executemany(sql, [[r.get(k) for k in keys] for r in rows])
        raw.execute("COMMIT")
        batches.clear()

    patient_ids = {"H000000": patient_template["id"]}     # the real message above stored patient 0 already
    started = time.perf_counter()
    for i in range(1, total + 1):
        stamp = (datetime(2026, 1, 1) + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        mrn = f"H{i % PATIENTS:06d}"
        if mrn not in patient_ids:
            number = i % PATIENTS
            patient = json.loads(json.dumps(patient_template).replace("H000000", mrn)
                                 .replace(resident_id(0), resident_id(number)))
            patient["id"] = patient_ids[mrn] = new_resource_id()
            store(patient, stamp)
            if person_template is not None:         # one Person per resident id links the Patient
                person = json.loads(json.dumps(person_template).replace(resident_id(0), resident_id(number))
                                    .replace(patient_template["id"], patient["id"]))
                person["id"] = new_resource_id()
                store(person, stamp)
        authored = (START + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%S+08:00")
        text = (json.dumps(template_order, ensure_ascii=False).replace("RXT-00000000", f"RXP-{i:08d}")
                .replace("T00000000", f"P{i:08d}"))
        resource = json.loads(text)
        resource["id"] = new_resource_id()
        resource["subject"]["reference"] = f"Patient/{patient_ids[mrn]}"
        resource["authoredOn"] = authored
        resource["meta"]["lastUpdated"] = stamp
        store(resource, stamp)
        provenance = json.loads(json.dumps(template_provenance).replace("T00000000", f"P{i:08d}"))
        provenance["id"] = new_resource_id()
        provenance["target"] = [{"reference": f"MedicationRequest/{resource['id']}/_history/1"}]
        store(provenance, stamp)
        raw_message = order("P", i)
        add("message_log", {**{k: v for k, v in template_log.items() if k != "id"},
                            "control_id": f"P{i:08d}", "received_at": stamp,
                            "raw": raw_message, "content_sha256": hashlib.sha256(raw_message).hexdigest()})
        add("deliveries", {**{k: v for k, v in template_delivery.items() if k != "id"},
                           "res_id": resource["id"], "status": "delivered"})
        if i % 5000 == 0:
            flush()
            print(f"  preloaded {i} orders ({i / (time.perf_counter() - started):.0f}/s)", flush=True)
    if batches:
        flush()
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    engine.dispose()


def result_resources(gateway, log_id: int) -> list[str]:
    return gateway.message_log.get(log_id).detail.get("resources", [])


def db_bytes(data_dir: Path, database_url: str | None = None) -> int:
    if database_url:
        from sqlalchemy import create_engine, text
        engine = create_engine(database_url)
        with engine.connect() as conn:
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
        engine.dispose()
        return int(size)
    return sum(p.stat().st_size for p in data_dir.iterdir() if p.is_file() and ".db" in p.name)


def checkpoint(data_dir: Path) -> None:
    for path in data_dir.glob("*.db"):
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()


# ------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1600, help="messages per measured run")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--transports", default="http,mllp")
    parser.add_argument("--stored", type=int, default=0, help="also run on a store preloaded with this many orders")
    parser.add_argument("--rounds", type=int, default=2, help="gateway/peer alternations per configuration")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--peer-messages", type=int, default=300)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lecheng-bench-ingest"))
    parser.add_argument("--processes", default="1", help="gateway processes (serve --processes), e.g. 1,2")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="postgresql: a throwaway PostgreSQL 15 started for the run (tests/postgres.py)")
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pipeline-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.database == "postgresql" and args.stored:
        raise SystemExit("--stored preloads SQLite files; use it with --database sqlite")
    if args.bare_server:
        bare_server(args.bare_server, args.threads)
        return
    if args.pipeline_server:
        pipeline_server(args.pipeline_server, args.threads, int(args.processes))
        return
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    transports = args.transports.split(",")
    print(f"# {datetime.now().strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}")

    bare = Server(None, args.threads, bare=True)
    ceiling = {c: load_run("http", bare.port, "", "B", 0, args.messages, c, bare) for c in concurrencies}
    bare.stop()
    for c, r in ceiling.items():
        print(f"bare Flask+waitress ceiling  c={c:<3} {r['rate']:7.0f} req/s  p50 {r['p50_ms']:.1f} ms  "
              f"p99 {r['p99_ms']:.1f} ms  load {r['load']:.1f}")
    for processes in [int(n) for n in args.processes.split(",")]:
        unstored = Server(None, args.threads, bare=True, pipeline_only=True, processes=processes)
        # warm-up: the socket is bound before the fork, so it waits while each process builds its gateway
        load_run("http", unstored.port, "", "V", 0, 400, 8, unstored)
        for c in concurrencies:
            r = load_run("http", unstored.port, "", "U", 0, args.messages, c, unstored)
            assert r["ok"] == r["messages"], f"the pipeline ceiling answered {r['failure']}"
            print(f"pipeline ceiling x{processes} (parse, map, validate, ACK; nothing stored)  c={c:<3} "
                  f"{r['rate']:7.0f} msg/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
                  f"server CPU {r['cpu_ms_per_msg']:.2f} ms/msg  load {r['load']:.1f}", flush=True)
        unstored.stop()

    postgres = None
    if args.database == "postgresql":
        from tests.postgres import PostgresServer
        postgres = PostgresServer()
    stores = [("empty", 0)] + ([(f"{args.stored:,} orders", args.stored)] if args.stored else [])
    configurations = [(label, stored, int(n)) for label, stored in stores for n in args.processes.split(",")]
    try:
        if args.stored:      # empty and preloaded stores alternate round by round (A, B, A, B): one machine state
            for round_ in range(args.rounds):
                for label, stored, processes in configurations:
                    run_store(args, label, stored, processes, concurrencies, transports, postgres, rounds=1,
                              round_label=round_ + 1)
            return
        for label, stored, processes in configurations:
            run_store(args, label, stored, processes, concurrencies, transports, postgres)
    finally:
        if postgres is not None:
            postgres.stop()


def run_store(args, label: str, stored: int, processes: int, concurrencies: list[int], transports: list[str],
              postgres, rounds: int | None = None, round_label: int | None = None) -> None:
    """One store (empty or preloaded) served by ``processes`` processes: every transport and concurrency."""
    label = f"{label} {args.database} x{processes}"
    database_url = postgres.new_database() if postgres is not None else None
    data_dir = Path(tempfile.mkdtemp(prefix="lecheng-bench-ingest-"))
    if stored:
        # keyed by the schema revision: a store preloaded by an older release would be migrated first
        from gateway.store.migrations import head_revision
        cached = Path(args.cache) / f"stored-{stored}-schema-{head_revision()}"
        if not (cached / "gateway.db").exists() and not any(cached.glob("*.db")):
            shutil.rmtree(cached, ignore_errors=True)
            cached.mkdir(parents=True)
            print(f"preloading {stored} orders into {cached} ...", flush=True)
            preload(cached, stored)
        shutil.rmtree(data_dir)
        shutil.copytree(cached, data_dir)
    server = Server(data_dir, args.threads, processes=processes, database_url=database_url)
    warm = load_run("http", server.port, server.token, "W", 0, 64, 8, server)
    assert warm["ok"] == warm["messages"], "warm-up messages were not all AA"
    checkpoint(data_dir)
    size_before, sent = db_bytes(data_dir, database_url), 0
    first = 1
    for transport in transports:
        for c in concurrencies:
            port = server.port if transport == "http" else server.mllp_port
            for round_ in range(rounds or args.rounds):
                r = load_run(transport, port, server.token, "N" if stored else "G", first, args.messages, c,
                             server)
                first += args.messages
                sent += r["messages"]
                peer = peer_rate(args.peer_messages)
                ratio = f"{r['rate'] / peer:.1f}x" if peer else "n/a"
                print(f"{label:>16} {transport:4} c={c:<3} round {round_label or round_ + 1}: {r['rate']:6.0f} msg/s "
                      f"(AA {r['ok']}/{r['messages']})  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
                      f"server CPU {r['cpu_ms_per_msg']:.2f} ms/msg  load {r['load']:.1f} | "
                      f"peer {peer or float('nan'):.0f} msg/s, ratio {ratio}"
                      + (f"  first failure: {r['failure']}" if r["failure"] else ""), flush=True)
    server.stop()
    checkpoint(data_dir)
    grown = db_bytes(data_dir, database_url) - size_before
    print(f"{label:>16} var/ grew {grown / max(1, sent) / 1024:.1f} kB per message ({sent} messages)")
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
