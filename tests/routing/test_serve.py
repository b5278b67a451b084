"""`fhir-gateway serve` delivers what it stores: a message in over MLLP, the order out to the EPC."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

from gateway.config import REPO_ROOT
from gateway.ingest.mllp import MllpDecoder, frame
from tests.conftest import sample
from tests.routing.conftest import EPC_CLIENT, free_port, wait_until


def test_serve_runs_delivery_workers(tmp_path, receivers, sample_routes_env):
    http_port, mllp_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_DATA_DIR": str(tmp_path), "GATEWAY_DELIVERY_POLL_MS": "50",
           "GATEWAY_ROUTES_FILE": str(sample_routes_env),
           "PYTHONPATH": str(REPO_ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(http_port),
                               "--mllp-port", str(mllp_port)], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    try:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", mllp_port), timeout=0.2).close()
                return True
            except OSError:
                return server.poll() is not None          # stop waiting if it died
        wait_until(listening, timeout=30, interval=0.1)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
        with socket.create_connection(("127.0.0.1", mllp_port), timeout=10) as connection:
            connection.sendall(frame(sample("rde_o11_new_imported.hl7")))
            decoder, frames = MllpDecoder(), []
            while not frames:
                frames = decoder.feed(connection.recv(65536))
        assert b"\rMSA|CA|BSH20260315000001" in frames[0].payload     # MSH-15 AL: the accept ACK
        epc = receivers["epc"]
        requests = wait_until(lambda: epc.requests(), timeout=15)
        assert [(r["method"], r["path"].rsplit("/", 1)[0]) for r in requests] == [("PUT", "/fhir/MedicationRequest")]
        assert epc.state.token_requests == 1 and EPC_CLIENT[0] in epc.clients
    finally:
        server.terminate()
        server.wait(15)
