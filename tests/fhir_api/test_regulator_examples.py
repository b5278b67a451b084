"""The README's examples as a regulator runs them, with real FHIR clients (fhirpy, fhirclient) against
`fhir-gateway serve` started the way the README starts it: in a directory of its own, on the default
`DATA_DIR=./var` (a relative path), behind waitress. The hospital's messages go in first; then the
regulator searches (a non-ASCII name among them) and downloads a whole Bulk export."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import requests

from conftest import SAMPLES

CLI = [sys.executable, "-m", "gateway.cli"]
# the sample PEX^P07 reports a non-serious event; R4 4.0.1 spells the code "Non-serious", earlier
# gateway versions "non-serious" (issue 14 item 8): a regulator's query names both
NON_SERIOUS = "Non-serious,non-serious"
LOADED = ["rde_o11_new_imported.hl7", "rde_o11_two_orders_gb18030.hl7", "oru_r01_device_use.hl7",
          "pex_p07_adverse_event.hl7"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _token(base: str, client_id: str, secret: str) -> str:
    response = requests.post(f"{base}/auth/token", data={"grant_type": "client_credentials"},
                             auth=(client_id, secret), timeout=10)
    response.raise_for_status()
    return response.json()["access_token"]


@pytest.fixture(scope="module")
def gateway_in_a_directory(tmp_path_factory):
    """(FHIR base, regulator token): `serve` run from a fresh directory with no DATA_DIR set."""
    workdir = tmp_path_factory.mktemp("relative")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    added = subprocess.run([*CLI, "clients", "add", "hnmpa-regulator", "--organization", "HNMPA", "--role", "regulator"],
                           cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    regulator_secret = re.search(r"secret\S*[:=]\s*(\S+)", added.stdout + added.stderr, re.IGNORECASE).group(1)
    port = _free_port()
    server = subprocess.Popen([*CLI, "serve", "--port", str(port), "--no-workers"], cwd=workdir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        admin_secret = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            admin_secret = admin_secret or (re.search(r"client_secret=(\S+)", line) or [None, None])[1]
            if "Lecheng FHIR gateway on" in line:
                break
        assert admin_secret, "serve did not print the demo client"
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                requests.get(f"{base}/healthz", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert (workdir / "var" / "gateway.db").exists(), "DATA_DIR is ./var, relative to where serve runs"
        hospital = {"Authorization": f"Bearer {_token(base, 'demo-admin', admin_secret)}"}
        for name in LOADED:
            answer = requests.post(f"{base}/hl7v2", data=(SAMPLES / name).read_bytes(), headers=hospital, timeout=30)
            assert answer.headers["X-Ack-Code"] == "AA", (name, answer.text)
        yield f"{base}/fhir", _token(base, "hnmpa-regulator", regulator_secret)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


def test_fhirpy_runs_the_readme_searches_including_a_chinese_name(gateway_in_a_directory):
    from fhirpy import SyncFHIRClient
    base, token = gateway_in_a_directory
    fhir = SyncFHIRClient(base, authorization=f"Bearer {token}")

    wang = fhir.resources("Patient").search(name="王").fetch_all()
    assert [p["name"][0]["family"] for p in wang] == ["王"]

    order = fhir.resources("MedicationRequest").search(identifier="BSH-RX-0001").fetch_all()
    assert [o["identifier"][0]["value"] for o in order if o["identifier"][0]["value"] == "BSH-RX-0001"]

    serious = fhir.resources("Patient").search(**{"_has:AdverseEvent:subject:seriousness": NON_SERIOUS}) \
        .revinclude("AdverseEvent", "subject").fetch_raw()
    types = sorted(e["resource"]["resourceType"] for e in serious["entry"])
    assert types.count("Patient") == 1 and "AdverseEvent" in types

    events = fhir.resources("AdverseEvent").search(date__ge="2026-01-01", date__lt="2027-01-01") \
        .include("AdverseEvent", "subject").fetch_raw()
    assert {e["resource"]["resourceType"] for e in events["entry"]} == {"AdverseEvent", "Patient"}

    mrn = "https://lecheng-fhir-gateway.org/fhir/sid/BOAO_SUPER_HOSPITAL/mr|H0012345"
    by_patient = fhir.resources("MedicationRequest").search(**{"patient.identifier": mrn}) \
        .sort("-authoredon").limit(20).fetch()
    assert by_patient and all(o["subject"]["reference"] == by_patient[0]["subject"]["reference"] for o in by_patient)


def test_fhirclient_runs_the_readme_searches_including_a_chinese_name(gateway_in_a_directory):
    from fhirclient import client
    from fhirclient.models.adverseevent import AdverseEvent
    from fhirclient.models.patient import Patient
    base, token = gateway_in_a_directory
    smart = client.FHIRClient(settings={"app_id": "hnmpa-regulator", "api_base": base})
    smart.server.session.headers["Authorization"] = f"Bearer {token}"

    wang = Patient.where(struct={"name": "王"}).perform_resources(smart.server)
    assert [p.name[0].family for p in wang] == ["王"]
    assert Patient.read(wang[0].id, smart.server).name[0].given[0] == "小明"

    events = AdverseEvent.where(struct={"seriousness": NON_SERIOUS}).perform_resources(smart.server)
    assert events and all(e.seriousness.coding[0].code.lower() == "non-serious" for e in events)


def test_a_regulator_downloads_a_whole_bulk_export(gateway_in_a_directory):
    base, token = gateway_in_a_directory
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {token}"
    kick_off = http.get(f"{base}/$export?_type=MedicationRequest,Patient,AdverseEvent",
                        headers={"Prefer": "respond-async", "Accept": "application/fhir+json"}, timeout=10)
    assert kick_off.status_code == 202, kick_off.text
    status_url = kick_off.headers["Content-Location"]
    for _ in range(300):
        status = http.get(status_url, timeout=10)
        if status.status_code != 202:
            break
        time.sleep(0.1)
    assert status.status_code == 200, status.text
    manifest = status.json()
    downloaded = {}
    for item in manifest["output"]:
        file = http.get(item["url"], headers={"Accept": "application/fhir+ndjson"}, timeout=30)
        assert file.status_code == 200, (item["url"], file.status_code, file.text[:300])
        lines = [orjson.loads(line) for line in file.content.splitlines() if line]
        assert {r["resourceType"] for r in lines} == {item["type"]}
        downloaded[item["type"]] = downloaded.get(item["type"], 0) + len(lines)
    assert downloaded["MedicationRequest"] == 3 and downloaded["Patient"] >= 2 and downloaded["AdverseEvent"] >= 1
