"""Ordinary FHIR tools against a real gateway on loopback: fhirclient (SMART client-py), fhirpy and
plain HTTP (requests) read, search, create, update, delete and read history, unmodified."""
from __future__ import annotations

import pytest
import requests

from conftest import served
from test_writes import patient


@pytest.fixture
def base_url(app):
    with served(app) as base:
        yield f"{base}/fhir"


@pytest.fixture
def authorization(client) -> str | None:
    """The Authorization header the suite's test client carries (a real token once security is on)."""
    return client.environ_base.get("HTTP_AUTHORIZATION")


@pytest.fixture
def http(authorization) -> requests.Session:
    session = requests.Session()
    if authorization:
        session.headers["Authorization"] = authorization
    return session


def test_fhirclient_create_read_search_update_delete(base_url, authorization, http):
    from fhirclient import client
    from fhirclient.models.fhirdate import FHIRDate
    from fhirclient.models.patient import Patient
    smart = client.FHIRClient(settings={"app_id": "lecheng-tests", "api_base": base_url})
    if authorization:
        smart.server.session.headers["Authorization"] = authorization
    created = Patient(patient())
    answer = created.create(smart.server)
    assert answer["resourceType"] == "Patient" and answer["meta"]["versionId"] == "1"
    pid = answer["id"]

    read = Patient.read(pid, smart.server)
    assert read.name[0].family == "Wang" and read.birthDate.isostring == "1980-01-02"

    found = list(Patient.where(struct={"identifier": "urn:oid:2.16.156.1|MRN-1"}).perform_resources_iter(smart.server))
    assert [p.id for p in found] == [pid]

    read.gender = "male"
    read.birthDate = FHIRDate("1981-02-03")
    updated = read.update(smart.server)
    assert updated["meta"]["versionId"] == "2" and updated["gender"] == "male"
    assert Patient.read(pid, smart.server).birthDate.isostring == "1981-02-03"

    read.delete(smart.server)
    assert http.get(f"{base_url}/Patient/{pid}", timeout=5).status_code == 410


def test_fhirpy_create_read_search_update_delete_history(base_url, authorization):
    from fhirpy import SyncFHIRClient
    fhir = SyncFHIRClient(base_url, authorization=authorization)
    resource = fhir.resource("Patient", **{k: v for k, v in patient().items() if k != "resourceType"})
    resource.save()
    pid = resource.id
    assert resource.meta["versionId"] == "1"

    fetched = fhir.reference("Patient", pid).to_resource()
    assert fetched["name"][0]["family"] == "Wang"
    assert [p.id for p in fhir.resources("Patient").search(identifier="MRN-1").fetch_all()] == [pid]
    assert fhir.resources("Patient").search(name="Wang").count() == 1

    fetched["gender"] = "male"
    fetched.save()
    assert fhir.reference("Patient", pid).to_resource()["meta"]["versionId"] == "2"

    history = fhir.execute(f"Patient/{pid}/_history", method="get")
    assert [e["resource"]["gender"] for e in history["entry"]] == ["male", "female"]

    fetched.delete()
    assert fhir.resources("Patient").search(_id=pid).count() == 0


def test_plain_http_with_xml_and_conditional_create(base_url, http):
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+xml",
               "If-None-Exist": "identifier=urn:oid:2.16.156.1|MRN-1"}
    first = http.post(f"{base_url}/Patient", json=patient(), headers=headers, timeout=5)
    assert first.status_code == 201 and first.headers["Content-Type"].startswith("application/fhir+xml")
    again = http.post(f"{base_url}/Patient", json=patient(), headers=headers, timeout=5)
    assert again.status_code == 200
    location = first.headers["Location"]
    assert location.startswith(f"{base_url}/Patient/") and location.endswith("/_history/1")
    history = http.get(f"{base_url}/Patient/_history", timeout=5).json()
    assert history["total"] == 1
    assert http.get(f"{base_url}/metadata", timeout=5).json()["fhirVersion"] == "4.0.1"
