"""`fhir-gateway serve` as a new user starts it: in a directory of their own, with the default
DATA_DIR=./var, behind waitress (issue 14, items 3 and 6). A regulator downloads a whole Bulk
export, searches a Chinese name with raw UTF-8 in the request line (as curl sends it), and every
refusal waitress makes itself is an OperationOutcome."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
import requests

from gateway.config import REPO_ROOT
from tests.conftest import sample
from tests.routing.conftest import free_port, wait_until

MAX_BODY = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The gateway started in a fresh directory with no GATEWAY_* settings but a small body limit."""
    workdir = tmp_path_factory.mktemp("relative")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(PYTHONPATH=str(REPO_ROOT), GATEWAY_MAX_MESSAGE_BYTES=str(MAX_BODY))
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--no-workers"],
                               env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        secret = None
        deadline = time.monotonic() + 60
        while secret is None and time.monotonic() < deadline:
            line = process.stdout.readline().decode("utf-8", "replace")
            if not line and process.poll() is not None:
                raise AssertionError("serve exited")
            found = re.search(r"client_id=(\S+) client_secret=(\S+)", line)
            if found:
                secret = found.groups()
        assert secret is not None

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return process.poll() is not None
        wait_until(listening, timeout=30, interval=0.1)
        base = f"http://127.0.0.1:{port}"
        token = requests.post(f"{base}/auth/token", auth=secret, data={"grant_type": "client_credentials"},
                              timeout=10).json()["access_token"]
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        for name in ("rde_o11_new_imported.hl7", "pex_p07_adverse_event.hl7"):
            answer = session.post(f"{base}/hl7v2", data=sample(name),
                                  headers={"Content-Type": "x-application/hl7-v2+er7"}, timeout=30)
            assert b"MSA|AA" in answer.content
        yield {"base": base, "session": session, "token": token, "workdir": workdir, "port": port}
    finally:
        process.terminate()
        process.wait(15)


def test_data_dir_is_under_the_working_directory(server):
    assert (server["workdir"] / "var" / "gateway.db").is_file()


def test_a_full_bulk_export_downloads_from_a_relative_data_dir(server):
    base, session = server["base"], server["session"]
    kick = session.get(f"{base}/fhir/$export", headers={"Prefer": "respond-async"}, timeout=10)
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    manifest = wait_until(lambda: (r := session.get(status_url, timeout=10)).status_code == 200 and r.json(),
                          timeout=60, interval=0.2)
    assert {o["type"] for o in manifest["output"]} >= {"Patient", "MedicationRequest", "AdverseEvent"}
    for output in manifest["output"]:
        file = session.get(output["url"], timeout=10)
        assert file.status_code == 200, (output, file.text[:300])
        lines = file.content.decode("utf-8").splitlines()
        assert len(lines) == output["count"]
        assert all(f'"resourceType":"{output["type"]}"' in line.replace(" ", "") for line in lines)
    assert (server["workdir"] / "var" / "exports").is_dir()


def _raw_request(server, request: bytes) -> tuple[str, dict, bytes]:
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as connection:
        connection.sendall(request)
        data = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return status_line, headers, body


def test_a_raw_utf8_query_is_read_as_the_name_it_spells(server):
    request = ("GET /fhir/Patient?name=王 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               f"Authorization: Bearer {server['token']}\r\n\r\n").encode("utf-8")
    status, headers, body = _raw_request(server, request)
    assert status.startswith("HTTP/1.1 200"), body[:300]
    bundle = requests.models.complexjson.loads(body)
    assert bundle["total"] == 1 and bundle["entry"][0]["resource"]["name"][0]["family"] == "王"
    assert "retry-after" not in headers


def test_waitress_413_is_an_operation_outcome(server):
    request = (b"POST /hl7v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
               b"Content-Type: x-application/hl7-v2+er7\r\n"
               + f"Authorization: Bearer {server['token']}\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode())
    status, headers, body = _raw_request(server, request)    # refused on the header, before any body
    assert status.startswith("HTTP/1.1 413")
    assert headers["content-type"].startswith("application/fhir+json")
    outcome = requests.models.complexjson.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "too-costly"


def test_a_request_line_waitress_cannot_read_is_an_operation_outcome(server):
    status, headers, body = _raw_request(server, b"GET /fhir/Patient?x=1 HTTP/1.1 extra\r\nHost: x\r\n\r\n")
    assert re.match(r"HTTP/1\.[01] 400", status)
    assert headers["content-type"].startswith("application/fhir+json")
    assert requests.models.complexjson.loads(body)["resourceType"] == "OperationOutcome"


def test_an_answer_that_is_not_a_refusal_carries_no_retry_after(server):
    answer = server["session"].get(f"{server['base']}/fhir/Patient", timeout=10)
    assert answer.status_code == 200 and "Retry-After" not in answer.headers


def test_fhirpy_and_fhirclient_run_the_readme_regulator_searches(server):
    """The README's regulator examples through two ordinary FHIR clients, a Chinese name included."""
    from fhirclient import client as smart_client
    from fhirclient.models.patient import Patient
    from fhirpy import SyncFHIRClient
    base = f"{server['base']}/fhir"
    fhir = SyncFHIRClient(base, authorization=f"Bearer {server['token']}")
    (patient,) = fhir.resources("Patient").search(name="王").fetch()
    assert patient["name"][0]["family"] == "王"
    events = fhir.resources("AdverseEvent").search(**{"substance:Medication.code": "HNLC-D-0042",
                                                      "date": "ge2026-04-01"}).fetch()
    assert len(events) == 1
    with_reports = fhir.resources("Patient").search(**{"_has:AdverseEvent:subject:seriousness": "Non-serious"}).fetch()
    assert [p["id"] for p in with_reports] == [patient["id"]]
    smart = smart_client.FHIRClient(settings={"app_id": "regulator-tool", "api_base": base})
    smart.server.session.headers["Authorization"] = f"Bearer {server['token']}"
    found = list(Patient.where(struct={"name": "王"}).perform_resources_iter(smart.server))
    assert [p.id for p in found] == [patient["id"]]
