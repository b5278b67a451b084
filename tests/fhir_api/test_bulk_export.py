"""Bulk Data $export: kick-off rules, status polling, manifest, NDJSON files, _type/_since/_typeFilter,
the Patient compartment, cancel, and jobs surviving a restart."""
from __future__ import annotations

import time
from urllib.parse import quote

import orjson
import pytest
from conftest import post_hl7, sample
from sqlalchemy import insert

from gateway import create_app
from gateway.export import ExportRequest
from gateway.fhir_api.bulk import export_jobs
from gateway.store import schema
from gateway.validation import has_errors
from test_writes import patient

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def seed_patients(gateway, n: int) -> set[str]:
    ids = set()
    with gateway.store.write() as tx:
        for i in range(n):
            body = patient(id=f"p{i:05d}", identifier=[{"system": "urn:oid:2.16.156.1", "value": f"MRN-{i}"}])
            ids.add(tx.create(body)["id"])
    return ids


def load_orders(client) -> None:
    """Three orders for two patients, with their practitioners, organizations and encounters."""
    for name in ("rde_o11_new_imported.hl7", "rde_o11_two_orders_gb18030.hl7"):
        assert post_hl7(client, sample(name))[0].status_code == 200


def finish(client, location: str) -> tuple[int, dict | None]:
    path = location[location.index("/fhir/"):]
    for _ in range(400):
        response = client.get(path)
        if response.status_code != 202:
            return response.status_code, response.get_json()
        assert response.headers["X-Progress"]
        time.sleep(0.02)
    raise AssertionError("the export did not finish in 8 s")


def kick_off(client, url: str) -> str:
    response = client.get(url, headers=ASYNC)
    assert response.status_code == 202, response.get_json()
    assert response.data == b""
    return response.headers["Content-Location"]


def lines(client, url: str) -> list[dict]:
    response = client.get(url[url.index("/fhir/"):])
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+ndjson"
    return [orjson.loads(line) for line in response.data.splitlines()]


def test_kick_off_needs_prefer_respond_async(client):
    response = client.get("/fhir/$export")
    assert response.status_code == 400
    assert "respond-async" in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("query, expression", [
    ("_type=Spaceship", "_type"), ("_outputFormat=text/csv", "_outputFormat"),
    ("_since=yesterday", "_since"), ("_typeFilter=" + quote("Patient?shoe-size=42"), "_typeFilter"),
    ("_type=Patient&_typeFilter=" + quote("MedicationRequest?status=active"), "_typeFilter"),
    ("_elements=id", "_elements"),
])
def test_bad_kick_off_parameters_are_400_with_expression(client, query, expression):
    response = client.get(f"/fhir/$export?{query}", headers=ASYNC)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == [expression]


def test_system_export_of_500_patients_every_line_parses_and_validates(app, client, gateway):
    ids = seed_patients(gateway, 500)
    location = kick_off(client, "/fhir/$export?_type=Patient")
    status, manifest = finish(client, location)
    assert status == 200
    job_id = location.rsplit("/", 1)[1]
    assert manifest == {
        "transactionTime": manifest["transactionTime"], "request": "http://localhost/fhir/$export?_type=Patient",
        "requiresAccessToken": "security" in app.extensions, "error": [],
        "output": [{"type": "Patient", "url": f"http://localhost/fhir/bulkfiles/{job_id}/Patient.ndjson",
                    "count": 500}]}
    exported = lines(client, manifest["output"][0]["url"])
    assert {r["id"] for r in exported} == ids
    for resource in exported:
        assert not has_errors(gateway.validator.validate(resource)), resource["id"]


def test_export_of_everything_lists_one_file_per_type_with_counts(client, gateway):
    load_orders(client)
    status, manifest = finish(client, kick_off(client, "/fhir/$export"))
    assert status == 200
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts["MedicationRequest"] == 3
    for output in manifest["output"]:
        resources = lines(client, output["url"])
        assert len(resources) == output["count"]
        assert {r["resourceType"] for r in resources} == {output["type"]}
        stored = client.get(f"/fhir/{output['type']}?_count=1000").get_json()
        assert stored["total"] == output["count"]


def test_patient_export_keeps_the_patient_compartment_only(client):
    load_orders(client)
    status, manifest = finish(client, kick_off(client, "/fhir/Patient/$export"))
    assert status == 200
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts["MedicationRequest"] == 3
    assert counts["Patient"] == client.get("/fhir/Patient").get_json()["total"]
    assert "Practitioner" not in counts and "Organization" not in counts
    refused = client.get("/fhir/Patient/$export?_type=Practitioner", headers=ASYNC)
    assert refused.status_code == 400


def test_type_filter_and_since_narrow_the_export(client, gateway):
    load_orders(client)
    url = "/fhir/$export?_type=MedicationRequest,Patient&_typeFilter=" + quote(
        "MedicationRequest?identifier=HMU-RX-1001") + "," + quote("MedicationRequest?identifier=BSH-RX-0001")
    status, manifest = finish(client, kick_off(client, url))
    by_type = {o["type"]: o for o in manifest["output"]}
    numbers = sorted(r["identifier"][0]["value"] for r in lines(client, by_type["MedicationRequest"]["url"]))
    assert numbers == ["BSH-RX-0001", "HMU-RX-1001"]
    assert by_type["Patient"]["count"] == client.get("/fhir/Patient").get_json()["total"]
    later = finish(client, kick_off(client, "/fhir/$export?_since=2999-01-01T00:00:00Z"))
    assert later == (200, {**later[1], "output": []})


def test_type_filter_uses_the_search_engine_chains_included(client):
    load_orders(client)
    query = "MedicationRequest?subject:Patient.birthdate=1975-06-12"
    expected = client.get(f"/fhir/{query}").get_json()["total"]
    assert expected > 0
    status, manifest = finish(client, kick_off(client, "/fhir/$export?_type=MedicationRequest&_typeFilter="
                                               + quote(query)))
    assert manifest["output"][0]["count"] == expected


def test_status_of_a_queued_job_is_202_with_progress(app, client, gateway):
    job_id = "00000000-0000-4000-8000-000000000001"
    _insert_job(gateway, job_id, owner="another-live-process", lease_until=time.time() + 3600)
    response = client.get(f"/fhir/bulkstatus/{job_id}")
    assert response.status_code == 202
    assert response.headers["X-Progress"] == "accepted"


def test_a_restarted_gateway_resumes_unfinished_jobs(app, gateway, tmp_path):
    seed_patients(gateway, 3)
    job_id = "00000000-0000-4000-8000-000000000002"
    _insert_job(gateway, job_id)                      # accepted, then the process "died"
    restarted = create_app({"DATA_DIR": str(tmp_path), "TESTING": True})
    with restarted.test_request_context("/fhir/bulkstatus/" + job_id):
        jobs = export_jobs()                          # what the first status poll does after a restart
    jobs.wait(job_id, 10)
    job = jobs.get(job_id)
    assert job.status == "completed"
    assert [(o.type, o.count) for o in job.output] == [("Patient", 3)]
    assert len((jobs.job_dir(job_id) / "Patient.ndjson").read_bytes().splitlines()) == 3


def test_a_job_another_live_process_runs_is_left_to_it_and_taken_over_once_its_lease_runs_out(gateway, tmp_path):
    """Two processes of one deployment: the first export request in the second used to restart every
    unfinished job, including those the first was running (its files deleted under it: a 500)."""
    from gateway.export import ExportJobs
    seed_patients(gateway, 2)
    job_id = "00000000-0000-4000-8000-000000000003"
    _insert_job(gateway, job_id, owner="pid-of-another-live-process", lease_until=time.time() + 3600)
    other = ExportJobs(gateway.store, gateway.store.engine, tmp_path / "exports", lease_seconds=0.6)
    assert other.resume_unfinished() == []
    assert other.get(job_id).status == "accepted"
    with gateway.store.engine.begin() as conn:       # that process died: it stops renewing
        conn.execute(schema.export_jobs.update().where(schema.export_jobs.c.id == job_id).values(
            lease_until=time.time() - 1))
    assert other.resume_unfinished() == [job_id]
    other.wait(job_id, 10)
    assert other.get(job_id).status == "completed"
    assert [(o.type, o.count) for o in other.get(job_id).output] == [("Patient", 2)]


def test_a_long_job_keeps_renewing_its_lease_so_nobody_takes_it_over(gateway, tmp_path, monkeypatch):
    from gateway.export import ExportJobs, jobs as jobs_module
    seed_patients(gateway, 1)
    owner = ExportJobs(gateway.store, gateway.store.engine, tmp_path / "exports", lease_seconds=0.6)
    release = __import__("threading").Event()
    real_export = ExportJobs._export_type

    def slow_export(self, *args):
        release.wait(10)                              # a job that takes several lease periods
        return real_export(self, *args)
    monkeypatch.setattr(ExportJobs, "_export_type", slow_export)
    job_id = owner.kick_off(ExportRequest("system", "http://localhost/fhir/$export", ["Patient"]))
    time.sleep(2.0)                                   # > 3 lease periods: renewed, never expired
    other = ExportJobs(gateway.store, gateway.store.engine, tmp_path / "exports", lease_seconds=0.6)
    assert other.resume_unfinished() == []
    release.set()
    owner.wait(job_id, 10)
    assert owner.get(job_id).status == "completed"
    assert jobs_module.UNFINISHED == ("accepted", "in-progress")


def test_cancel_removes_the_job_and_its_files(client, gateway, tmp_path):
    seed_patients(gateway, 5)
    location = kick_off(client, "/fhir/$export")
    status, manifest = finish(client, location)
    path = location[location.index("/fhir/"):]
    response = client.delete(path)
    assert response.status_code == 202
    assert client.get(path).status_code == 404
    assert client.delete(path).status_code == 404
    url = manifest["output"][0]["url"]
    assert client.get(url[url.index("/fhir/"):]).status_code == 404
    assert not (tmp_path / "exports" / path.rsplit("/", 1)[1]).exists()


def test_an_export_is_its_own_clients_and_the_admins_only(client, client_as, gateway):
    seed_patients(gateway, 3)
    nmpa, province = client_as("regulator", "NMPA"), client_as("regulator", "HAINAN_MPA")
    location = kick_off(nmpa, "/fhir/$export")
    status, manifest = finish(nmpa, location)
    assert status == 200
    path = location[location.index("/fhir/"):]
    file_path = manifest["output"][0]["url"][manifest["output"][0]["url"].index("/fhir/"):]
    assert province.get(path).status_code == 404            # another regulator's job is not found
    assert province.get(file_path).status_code == 404
    assert province.delete(path).status_code == 404
    assert client.get(path).status_code == 200              # the admin (operator) sees every job
    assert nmpa.get(file_path).status_code == 200
    assert nmpa.delete(path).status_code == 202


def test_unknown_job_and_file_are_404_operation_outcomes(client):
    assert client.get("/fhir/bulkstatus/nope").get_json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/bulkfiles/nope/Patient.ndjson").status_code == 404


def _insert_job(gateway, job_id: str, owner: str | None = None, lease_until: float | None = None) -> None:
    request = ExportRequest("system", "http://localhost/fhir/$export", ["Patient"])
    with gateway.store.engine.begin() as conn:
        conn.execute(insert(schema.export_jobs).values(
            id=job_id, status="accepted", kind="system", request_url=request.request_url,
            params=request.to_json(), transaction_time="2026-11-23T00:00:00.000Z", created_at=time.time(),
            progress="accepted", output=b"[]", owner=owner, lease_until=lease_until))


def test_two_machines_share_export_files_through_export_dir_and_say_so_when_they_do_not(tmp_path, monkeypatch):
    """A job run at machine A, downloaded at machine B (one database): with one EXPORT_DIR both
    serve the file; with each its own, B names the setting instead of a bare 404."""
    from tests.security.credentials import authenticated
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    shared = {"DATABASE_URL": url, "TESTING": True, "EXPORT_DIR": str(tmp_path / "mounted")}
    a = create_app({**shared, "DATA_DIR": str(tmp_path / "a")})
    b = create_app({**shared, "DATA_DIR": str(tmp_path / "b")})
    lonely = create_app({"DATABASE_URL": url, "TESTING": True, "DATA_DIR": str(tmp_path / "c")})
    seed_patients(a.extensions["gateway"], 3)
    at_a, at_b, at_c = (authenticated(app, "admin") for app in (a, b, lonely))
    status, manifest = finish(at_a, kick_off(at_a, "/fhir/$export?_type=Patient"))
    assert status == 200
    path = manifest["output"][0]["url"].replace("http://localhost", "")
    assert len(lines(at_b, manifest["output"][0]["url"])) == 3
    missing = at_c.get(path)
    assert missing.status_code == 404 and "EXPORT_DIR" in missing.get_json()["issue"][0]["diagnostics"]
