"""A gateway killed (SIGKILL) in the middle of a load leaves no message-log row that disagrees with the
store once it has restarted: every interrupted row is finished, and a row says ``processed`` exactly
when the message's resources are stored."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import orjson
from sqlalchemy import create_engine, text

from gateway.config import REPO_ROOT
from gateway.ingest.mllp import MllpDecoder, frame
from gateway.store.content import inflate, inflate_plain
from tests.conftest import sample
from tests.routing.conftest import free_port, wait_until

ORDER = sample("rde_o11_new_imported.hl7")


def _message(n: int) -> bytes:
    return (ORDER.replace(b"BSH20260315000001", f"CRASH{n:06d}".encode())
            .replace(b"BSH-RX-0001", f"CRASH-RX-{n:06d}".encode()))


def _start(tmp_path, mllp_port: int, http_port: int) -> subprocess.Popen:
    env = {**os.environ, "GATEWAY_DATA_DIR": str(tmp_path / "var"), "GATEWAY_RECOVER_AFTER_SECONDS": "1",
           "GATEWAY_ROUTES_FILE": str(tmp_path / "routes.yaml"), "PYTHONPATH": str(REPO_ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(http_port),
                               "--mllp-port", str(mllp_port), "--no-workers"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "ab"))

    def listening():
        try:
            socket.create_connection(("127.0.0.1", mllp_port), timeout=0.2).close()
            return True
        except OSError:
            return server.poll() is not None
    wait_until(listening, timeout=60, interval=0.1)
    assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
    return server


def _sender(mllp_port: int, numbers: range, stop: threading.Event) -> None:
    """One hospital connection sending orders one after another until the gateway dies."""
    try:
        with socket.create_connection(("127.0.0.1", mllp_port), timeout=10) as connection:
            for n in numbers:
                if stop.is_set():
                    return
                connection.sendall(frame(_message(n)))
                decoder, frames = MllpDecoder(), []
                while not frames:
                    data = connection.recv(65536)
                    if not data:
                        return
                    frames = decoder.feed(data)
    except OSError:
        return


def _query(db, statement: str) -> list[tuple]:
    """Rows from the store the server writes to: its SQLite file, or the PostgreSQL database of
    GATEWAY_DATABASE_URL (GATEWAY_TEST_STORE=postgresql)."""
    url = os.environ.get("GATEWAY_DATABASE_URL") or f"sqlite:///{db}"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(statement))]
    finally:
        engine.dispose()


def _rows(db) -> list[tuple]:
    """(id, control_id, status, detail) of every message-log row, the detail inflated."""
    return [(log_id, control_id, status, inflate_plain(bytes(detail)) if detail is not None else None)
            for log_id, control_id, status, detail in
            _query(db, "SELECT id, control_id, status, detail FROM message_log ORDER BY id")]


def _stored_sources(db) -> set[str]:
    """The messages whose resources are in the store: each wrote one Provenance naming its source."""
    contents = _query(db, "SELECT content FROM resources WHERE res_type = 'Provenance'")
    return {orjson.loads(inflate(bytes(row[0])))["meta"]["source"] for row in contents}


def _versions(db) -> set[str]:
    return {f"{t}/{i}/_history/{v}" for t, i, v in _query(db, "SELECT res_type, res_id, version_id FROM resource_versions")}


def test_sigkill_during_load_leaves_no_row_that_disagrees_with_the_store(tmp_path):
    (tmp_path / "routes.yaml").write_text("destinations: {}\nrules: []\n", encoding="utf-8")
    db = tmp_path / "var" / "gateway.db"
    interrupted: set[int] = set()
    sent = 0
    for _round in range(5):                    # until a kill lands on messages in flight
        mllp_port, http_port = free_port(), free_port()
        server = _start(tmp_path, mllp_port, http_port)
        stop = threading.Event()
        senders = [threading.Thread(target=_sender, args=(mllp_port, range(sent + i * 1000, sent + (i + 1) * 1000),
                                                          stop)) for i in range(6)]
        for thread in senders:
            thread.start()
        try:
            wait_until(lambda: len(_rows(db)) >= 60 + sent // 10, timeout=60, interval=0.05)
        finally:                                # the kill, or no server left behind when the wait fails
            os.kill(server.pid, signal.SIGKILL)
            server.wait(10)
            stop.set()
        for thread in senders:
            thread.join(15)
        sent += 6000
        interrupted |= {row[0] for row in _rows(db) if row[2] == "received"}
        if interrupted:
            break
    assert interrupted, "no kill landed while a message was being processed"

    # restart: the recovery sweep finishes what the kill interrupted
    mllp_port, http_port = free_port(), free_port()
    server = _start(tmp_path, mllp_port, http_port)
    try:
        wait_until(lambda: not any(row[2] == "received" for row in _rows(db)), timeout=60, interval=0.2,
                   describe=lambda: [row for row in _rows(db) if row[2] == "received"])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(15)

    rows = _rows(db)
    stored, versions = _stored_sources(db), _versions(db)
    for log_id, control_id, status, detail in rows:
        detail = orjson.loads(detail) if detail else {}
        source = f"urn:hl7v2:BOAO_SUPER_HOSPITAL:{control_id}"
        if status == "processed":
            assert detail["resources"] and set(detail["resources"]) <= versions, (log_id, detail)
            assert source in stored or detail.get("duplicate_of"), (log_id, control_id)
        else:
            assert source not in stored, (log_id, status, detail)
    recovered = [row for row in rows if row[0] in interrupted]
    assert {row[2] for row in recovered} == {"processed"}
    assert all("recovered" in orjson.loads(row[3]) for row in recovered)
