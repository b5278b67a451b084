"""Seeded fuzzing of the ingest paths against a real server on loopback (tests/fuzzing.py makes the inputs):
5,000 mutated samples over HTTP (HL7 v2 and the hospitals' XML, CSV and JSON exports) and 1,000
HL7 messages over MLLP. Every input gets a well-formed answer within 5 s, every answer's message-log
row holds exactly the bytes sent, and the server is still up afterwards. ``bench/fuzz.py`` runs the
same with 100,000 inputs."""
from __future__ import annotations

import http.client
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests

from conftest import served
from gateway import create_app
from gateway.ingest.mllp_handler import mllp_server
from tests.fuzzing import Mutator, Verdict, for_mllp, logged_hashes, missing_log_rows, post, send_mllp
from tests.security.credentials import http_token, register

SEED = 14_11
HTTP_INPUTS = 5_000
MLLP_INPUTS = 1_000
SENDERS = 2           # concurrent senders; more only queue behind the GIL and stretch each answer
HUGE = 60_000       # bytes of a huge field: big enough to cross buffers, small enough for the CI budget


@pytest.fixture(scope="module")
def fuzzed_gateway(tmp_path_factory):
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("fuzz")), "TESTING": True,
                      "RATE_LIMIT": "1000000 per minute", "TOKEN_LIFETIME_SECONDS": 3600})
    register(app, "fuzz-admin", "admin")
    with served(app) as base:
        yield app, base, http_token(base, "fuzz-admin")


def test_mutated_samples_over_http_each_get_a_well_formed_answer_in_time_and_a_log_row(fuzzed_gateway):
    app, base, token = fuzzed_gateway
    mutator = Mutator(SEED, huge=HUGE)
    mutants = [mutator.document_mutant() if i % 4 == 0 else mutator.hl7_mutant() for i in range(HTTP_INPUTS)]
    host, port = urlsplit(base).hostname, urlsplit(base).port
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    verdict = Verdict()
    limit = int(app.config["MAX_MESSAGE_BYTES"])

    def connect():
        return http.client.HTTPConnection(host, port, timeout=30)
    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(lambda m: post(connect, m, headers, verdict, limit), mutants))

    assert verdict.sent == HTTP_INPUTS, verdict.problems[:20]
    assert verdict.problems == [], f"{len(verdict.problems)} problems, first: {verdict.problems[:20]}"
    assert missing_log_rows(app.extensions["gateway"].store.engine, verdict) == []
    assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    # the inputs reach every answer, so the fuzz is not all bounced at the door
    assert {"AA", "AE", "AR", "HTTP 200", "HTTP 400"} <= set(verdict.codes), verdict.codes


def test_mutated_hl7_over_mllp_each_get_one_ack_in_time_and_a_log_row(fuzzed_gateway):
    app, base, token = fuzzed_gateway
    gateway = app.extensions["gateway"]
    mutator = Mutator(SEED + 1, huge=HUGE)
    mutants = [mutator.hl7_mutant(original_mode=True) for _ in range(MLLP_INPUTS)]
    for mutant in mutants:
        mutant.data = for_mllp(mutant.data)
    server = mllp_server(gateway.pipeline, "127.0.0.1", 0)
    server.start()
    verdict = Verdict()
    try:
        def sender(share: list) -> None:
            sock = socket.create_connection(server.address, timeout=10)
            try:
                for mutant in share:
                    try:
                        send_mllp(sock, mutant, verdict)
                    except (OSError, ConnectionError):
                        sock.close()
                        sock = socket.create_connection(server.address, timeout=10)
            finally:
                sock.close()
        with ThreadPoolExecutor(SENDERS) as pool:
            list(pool.map(sender, [mutants[i::SENDERS] for i in range(SENDERS)]))
        assert verdict.problems == [], f"{len(verdict.problems)} problems, first: {verdict.problems[:20]}"
        assert verdict.sent == MLLP_INPUTS
        logged = logged_hashes(gateway.store.engine, "mllp")
        sent: dict[str, int] = {}
        for mutant in mutants:
            sent[mutant.sha256] = sent.get(mutant.sha256, 0) + 1
        assert {sha: n for sha, n in sent.items() if logged.get(sha, 0) < n} == {}, "inputs without a log row"
        # the listener still answers on a new connection
        send_mllp(socket.create_connection(server.address, timeout=10), mutator.hl7_mutant(original_mode=True),
                  Verdict())
    finally:
        server.stop()
    assert {"AA", "AE", "AR"} <= set(verdict.codes), verdict.codes
