"""Routing fixtures: real receiving FHIR servers on loopback, a gateway routed to them, a real redis-server."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from gateway import create_app
from gateway.config import REPO_ROOT
from gateway.routing import make_workers
from gateway.routing.receiver import Receiver

SAMPLE_ROUTES = REPO_ROOT / "routes.yaml"
EPC_CLIENT = ("lecheng-gateway", "epc-secret")


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, describe=None):
    """Poll until ``predicate()`` is truthy; returns its value, or fails the test with what it last saw
    (and ``describe()``, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            state = f"; {describe()}" if describe else ""
            pytest.fail(f"condition not met within {timeout} s (last value {value!r}{state})")
        time.sleep(interval)


def admin_client(app):
    """A test client with the admin role once the security work requires tokens; plain before."""
    try:
        from tests.security.credentials import authenticated
    except ImportError:
        return app.test_client()
    return authenticated(app, "admin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def receivers():
    """The prescription center (OAuth2 client credentials), the provincial regulator (also hosting the
    device registry under /device-registry/fhir) and the national regulator."""
    started = {"epc": Receiver("epc", clients=dict([EPC_CLIENT]), require_token=True).start(),
               "province": Receiver("province").start(),
               "nmpa": Receiver("nmpa").start()}
    yield started
    for receiver in started.values():
        receiver.stop()


@pytest.fixture
def sample_routes_env(receivers, monkeypatch):
    """The repository's routes.yaml, pointed at the loopback receivers through its ${VAR} settings."""
    epc, province, nmpa = receivers["epc"], receivers["province"], receivers["nmpa"]
    monkeypatch.setenv("EPC_FHIR_BASE", epc.url())
    monkeypatch.setenv("EPC_TOKEN_URL", epc.url("/oauth/token"))
    monkeypatch.setenv("EPC_CLIENT_ID", EPC_CLIENT[0])
    monkeypatch.setenv("EPC_CLIENT_SECRET", EPC_CLIENT[1])
    monkeypatch.setenv("HNMPA_FHIR_BASE", province.url())
    monkeypatch.setenv("HNMPA_DEVICE_BASE", province.url("/device-registry/fhir"))
    monkeypatch.setenv("NMPA_FHIR_BASE", nmpa.url())
    return SAMPLE_ROUTES


def fast_routes(tmp_path: Path, base_url: str, *, max_attempts: int = 50, max_age: float = 3600,
                timeout: float = 2.0, mode: str = "resource", extra: str = "") -> Path:
    """A routes file with one destination and retries in tens of milliseconds (tests wait for them)."""
    path = tmp_path / "routes.yaml"
    path.write_text(f"""
destinations:
  epc:
    base_url: {base_url}
    organization: HAINAN_EPC
    mode: {mode}
    timeout: {timeout}
    retry: {{max_attempts: {max_attempts}, max_age: {max_age}, backoff_base: 0.02, backoff_cap: 0.2}}
rules:
  - name: everything-clinical
    resource: [MedicationRequest, MedicationDispense, AdverseEvent, Device]
    to: epc
{extra}""", encoding="utf-8")
    return path


@pytest.fixture
def make_gateway(tmp_path):
    """make_gateway(routes_file, **config) -> (app, workers started with fast polling); stopped after."""
    made = []

    def make(routes_file, threads: int = 2, **config):
        app = create_app({"DATA_DIR": str(tmp_path / f"gw{len(made)}"), "TESTING": True,
                          "ROUTES_FILE": str(routes_file), "DELIVERY_POLL_MS": 20, **config})
        gateway = app.extensions["gateway"]
        workers = make_workers(gateway.config, gateway.store.engine, gateway.routes, threads).start()
        made.append(workers)
        return app, workers

    yield make
    for workers in made:
        workers.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on 127.0.0.1, on a free port, for this test session."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required (apt-get install redis-server; .ci/run does it)"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)
