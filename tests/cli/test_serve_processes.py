"""`fhir-gateway serve --processes 2` on one PostgreSQL database (issue 13 build 4): both processes
answer on the one port and share tokens, search cursors and the store; a process SIGKILLed in the
middle of a load is started again, and every message answered AA is stored exactly once (an
interface engine resends what got no answer, as engines do)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import create_engine, func, select

from gateway.config import REPO_ROOT
from gateway.store import schema
from tests.routing.conftest import free_port, wait_until
from tests.store.test_write_races import _rde

MESSAGES = 80


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _send_until_answered(session, base: str, raw: bytes) -> bytes:
    """POST until an ACK comes back: a connection cut by the kill is resent, as engines do."""
    deadline = time.monotonic() + 60
    while True:
        try:
            answer = session.post(f"{base}/hl7v2", data=raw, timeout=30,
                                  headers={"Content-Type": "x-application/hl7-v2+er7"})
            if answer.status_code == 200:
                return answer.content
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "no answer within 60 s"
        time.sleep(0.2)


def test_two_processes_share_one_store_and_a_killed_one_loses_nothing(postgres_server, tmp_path):
    url = postgres_server.new_database()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(PYTHONPATH=str(REPO_ROOT), GATEWAY_DATABASE_URL=url, GATEWAY_RECOVER_AFTER_SECONDS="2")
    supervisor = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--data-dir", str(tmp_path / "var"), "serve",
                                   "--port", str(port), "--processes", "2", "--no-workers"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        secret, pids = None, None
        deadline = time.monotonic() + 60
        while (secret is None or pids is None) and time.monotonic() < deadline:
            line = supervisor.stdout.readline()
            assert line or supervisor.poll() is None, "serve exited"
            if found := re.search(r"client_id=(\S+) client_secret=(\S+)", line):
                secret = found.groups()
            if found := re.search(r"2 gateway processes on \S+ \(pids (\d+), (\d+)\)", line):
                pids = [int(found.group(1)), int(found.group(2))]
        assert secret and pids
        base = f"http://127.0.0.1:{port}"

        def token():
            answer = requests.post(f"{base}/auth/token", auth=secret, data={"grant_type": "client_credentials"},
                                   timeout=10)
            return answer.json()["access_token"] if answer.status_code == 200 else None
        wait_until(lambda: _answers(base), timeout=60, interval=0.2)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token()}"
        messages = [_rde(f"MP-{n}", f"MP-MSG-{n}", f"MP-MRN-{n}") for n in range(MESSAGES)]
        killed = []

        def send(n: int) -> bytes:
            if n == MESSAGES // 3 and not killed:
                os.kill(pids[1], signal.SIGKILL)          # mid-load: requests in flight there are cut
                killed.append(pids[1])
            return _send_until_answered(session, base, messages[n])
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(send, range(MESSAGES)))
        assert all(b"MSA|AA|" in a for a in answers), [a for a in answers if b"MSA|AA|" not in a][:2]

        assert (_count(url, "MedicationRequest"), _count(url, "Patient")) == (MESSAGES, MESSAGES)          # each AA'd message stored exactly once
        # what the killed process was in the middle of is finished by the recovery sweep, storing nothing twice
        wait_until(lambda: _no_received(url), timeout=90, interval=0.5)
        assert _count(url, "MedicationRequest") == MESSAGES

        # the killed process was started again, and a token and a cursor from one process serve at any
        wait_until(lambda: len(_children(supervisor.pid)) == 2, timeout=30, interval=0.2)
        children = _children(supervisor.pid)
        assert killed[0] not in children
        for _ in range(12):                       # a dozen pages, each from whichever process accepts it
            page = session.get(f"{base}/fhir/MedicationRequest?_count=7", timeout=30).json()
            seen = set()
            while True:
                seen |= {e["resource"]["id"] for e in page.get("entry", [])}
                link = next((ln["url"] for ln in page["link"] if ln["relation"] == "next"), None)
                if link is None:
                    break
                answer = session.get(link, timeout=30)
                assert answer.status_code == 200, answer.text
                page = answer.json()
            assert len(seen) == MESSAGES
        assert all(_cpu_seconds(pid) > 0.5 for pid in children)   # both processes did real work
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(30)
        except subprocess.TimeoutExpired:
            supervisor.kill()
    assert supervisor.returncode == 0


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _count(url: str, res_type: str) -> int:
    engine = create_engine(url)
    with engine.connect() as conn:
        r = schema.resources
        count = conn.execute(select(func.count()).select_from(r).where(r.c.res_type == res_type)).scalar_one()
    engine.dispose()
    return count


def _no_received(url: str) -> bool:
    engine = create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(schema.message_log).where(
            schema.message_log.c.status == "received")).scalar_one()
    engine.dispose()
    return count == 0
