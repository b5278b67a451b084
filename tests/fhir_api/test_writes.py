"""FHIR writes: create, update (incl. create-on-update), conditional create/update, delete, If-Match,
transaction and batch Bundles, Prefer, and profile validation refusing bad resources."""
from __future__ import annotations

import copy

import pytest

PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:oid:2.16.156.1", "value": "MRN-1"}],
           "name": [{"family": "Wang", "given": ["Li"]}], "gender": "female", "birthDate": "1980-01-02"}
PROFILE = "https://lecheng-fhir-gateway.org/fhir/StructureDefinition/lecheng-patient"


def patient(**changes) -> dict:
    body = copy.deepcopy(PATIENT)
    body.update(changes)
    return body


def test_create_assigns_id_and_answers_201_location_etag(client):
    response = client.post("/fhir/Patient", json=patient(id="client-chosen"))
    assert response.status_code == 201
    body = response.get_json()
    assert body["id"] != "client-chosen"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["profile"] == [PROFILE]
    assert response.headers["Location"] == f"http://localhost/fhir/Patient/{body['id']}/_history/1"
    assert response.headers["ETag"] == 'W/"1"'
    assert client.get(f"/fhir/Patient/{body['id']}").get_json() == body


def test_create_refuses_a_resource_breaking_its_profile_with_expression(client):
    response = client.post("/fhir/Patient", json=patient(gender="robot"))
    assert response.status_code == 422
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(i["severity"] == "error" and i.get("expression") == ["Patient.gender"] for i in outcome["issue"])
    assert client.get("/fhir/Patient").get_json()["total"] == 0


def test_create_refuses_structurally_invalid_json_with_400(client):
    response = client.post("/fhir/Patient", json=patient(birthDate=12))
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"]


def test_create_with_wrong_type_or_no_json_is_400(client):
    assert client.post("/fhir/Patient", json={"resourceType": "Practitioner"}).status_code == 400
    bad = client.post("/fhir/Patient", data=b"{nope", content_type="application/fhir+json")
    assert bad.status_code == 400 and bad.get_json()["resourceType"] == "OperationOutcome"
    assert client.post("/fhir/Patient", data=b"x", content_type="text/csv").status_code == 415


def test_update_makes_version_2_and_update_as_create_keeps_client_id(client):
    created = client.put("/fhir/Patient/p-1", json=patient(id="p-1"))
    assert created.status_code == 201 and created.get_json()["id"] == "p-1"
    updated = client.put("/fhir/Patient/p-1", json=patient(id="p-1", gender="male"))
    assert updated.status_code == 200
    assert updated.headers["ETag"] == 'W/"2"'
    assert updated.get_json()["gender"] == "male"
    assert client.get("/fhir/Patient/p-1/_history/1").get_json()["gender"] == "female"


def test_update_with_id_mismatch_or_missing_id_is_400(client):
    assert client.put("/fhir/Patient/p-1", json=patient(id="p-2")).status_code == 400
    assert client.put("/fhir/Patient/p-1", json=patient()).status_code == 400


def test_if_match_guards_updates_and_deletes(client):
    client.put("/fhir/Patient/p-1", json=patient(id="p-1"))
    stale = client.put("/fhir/Patient/p-1", json=patient(id="p-1", gender="male"), headers={"If-Match": 'W/"7"'})
    assert stale.status_code == 412
    assert stale.get_json()["issue"][0]["code"] == "conflict"
    ok = client.put("/fhir/Patient/p-1", json=patient(id="p-1", gender="male"), headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    assert client.delete("/fhir/Patient/p-1", headers={"If-Match": 'W/"1"'}).status_code == 412
    assert client.delete("/fhir/Patient/p-1", headers={"If-Match": 'W/"2"'}).status_code == 204


def test_conditional_create_returns_the_existing_match(client):
    first = client.post("/fhir/Patient", json=patient())
    again = client.post("/fhir/Patient", json=patient(gender="male"),
                        headers={"If-None-Exist": "identifier=urn:oid:2.16.156.1|MRN-1"})
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.get_json()["gender"] == "female"
    other = client.post("/fhir/Patient", json=patient(identifier=[{"system": "urn:oid:2.16.156.1", "value": "MRN-2"}]),
                        headers={"If-None-Exist": "identifier=urn:oid:2.16.156.1|MRN-2"})
    assert other.status_code == 201


def test_conditional_create_with_two_matches_is_412(client):
    client.post("/fhir/Patient", json=patient())
    client.post("/fhir/Patient", json=patient())
    response = client.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "identifier=MRN-1"})
    assert response.status_code == 412


def test_conditional_update_updates_the_match_or_creates(client):
    created = client.put("/fhir/Patient?identifier=urn:oid:2.16.156.1|MRN-1", json=patient())
    assert created.status_code == 201
    pid = created.get_json()["id"]
    updated = client.put("/fhir/Patient?identifier=urn:oid:2.16.156.1|MRN-1", json=patient(gender="male"))
    assert updated.status_code == 200
    assert updated.get_json()["id"] == pid and updated.get_json()["meta"]["versionId"] == "2"
    client.post("/fhir/Patient", json=patient())
    assert client.put("/fhir/Patient?identifier=MRN-1", json=patient()).status_code == 412
    assert client.put("/fhir/Patient?shoe-size=42", json=patient()).status_code == 400


def test_delete_is_soft_read_gives_410_history_keeps_versions(client):
    client.put("/fhir/Patient/p-1", json=patient(id="p-1"))
    response = client.delete("/fhir/Patient/p-1")
    assert response.status_code == 204
    gone = client.get("/fhir/Patient/p-1")
    assert gone.status_code == 410 and gone.get_json()["resourceType"] == "OperationOutcome"
    history = client.get("/fhir/Patient/p-1/_history").get_json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "PUT"]
    assert "resource" not in history["entry"][0]
    assert history["entry"][0]["response"]["status"] == "204 No Content"
    assert client.delete("/fhir/Patient/p-1").status_code == 204     # already deleted: idempotent
    assert client.delete("/fhir/Patient/never").status_code == 404
    assert client.get("/fhir/Patient?identifier=MRN-1").get_json()["total"] == 0
    back = client.put("/fhir/Patient/p-1", json=patient(id="p-1"))
    assert back.status_code == 201 and back.get_json()["meta"]["versionId"] == "3"


def test_prefer_return_minimal_and_operation_outcome(client):
    minimal = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.data == b"" and minimal.headers["Location"]
    outcome = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    assert outcome.status_code == 201
    assert outcome.get_json()["resourceType"] == "OperationOutcome"
    deleted = client.delete(outcome.headers["Location"].split("/_history")[0].replace("http://localhost", ""),
                            headers={"Prefer": "return=OperationOutcome"})
    assert deleted.status_code == 200 and deleted.get_json()["issue"][0]["severity"] == "information"


def _transaction(kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": [
        {"fullUrl": "urn:uuid:0b1d3b3e-1111-4c3a-9e1a-000000000001",
         "resource": {"resourceType": "Organization", "name": "Boao Super Hospital"},
         "request": {"method": "POST", "url": "Organization"}},
        {"fullUrl": "urn:uuid:0b1d3b3e-1111-4c3a-9e1a-000000000002",
         "resource": {**patient(), "managingOrganization": {"reference": "urn:uuid:0b1d3b3e-1111-4c3a-9e1a-000000000001"}},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Encounter", "id": "enc-1", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": {"reference": "urn:uuid:0b1d3b3e-1111-4c3a-9e1a-000000000002"}},
         "request": {"method": "PUT", "url": "Encounter/enc-1"}},
    ]}


def test_transaction_rewrites_urn_uuid_references_to_assigned_ids(client):
    response = client.post("/fhir", json=_transaction())
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created", "201 Created"]
    org_id = answer["entry"][0]["resource"]["id"]
    patient_body = answer["entry"][1]["resource"]
    assert patient_body["managingOrganization"]["reference"] == f"Organization/{org_id}"
    encounter = client.get("/fhir/Encounter/enc-1").get_json()
    assert encounter["subject"]["reference"] == f"Patient/{patient_body['id']}"
    assert answer["entry"][1]["fullUrl"] == f"http://localhost/fhir/Patient/{patient_body['id']}"


def test_transaction_is_atomic_when_one_entry_breaks_its_profile(client):
    bundle = _transaction()
    bundle["entry"][1]["resource"]["gender"] = "robot"
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 422
    issues = response.get_json()["issue"]
    assert any(i.get("expression") == ["Bundle.entry[1].resource.gender"] for i in issues)
    assert client.get("/fhir/Organization").get_json()["total"] == 0
    assert client.get("/fhir/Encounter/enc-1").status_code == 404


def test_transaction_with_dangling_urn_reference_is_400_and_stores_nothing(client):
    bundle = _transaction()
    bundle["entry"][2]["resource"]["subject"]["reference"] = "urn:uuid:not-in-bundle"
    assert client.post("/fhir", json=bundle).status_code == 400
    assert client.get("/fhir/Organization").get_json()["total"] == 0


def test_batch_gives_each_entry_its_own_outcome(client):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": patient(gender="robot"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": "Patient/never"}},
        {"request": {"method": "GET", "url": "Patient/never"}},
    ]}
    answer = client.post("/fhir", json=bundle).get_json()
    assert answer["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created", "422", "404", "404"]
    assert answer["entry"][1]["response"]["outcome"]["issue"][0]["expression"] == ["Patient.gender"]
    assert client.get("/fhir/Patient").get_json()["total"] == 1


def test_post_to_base_needs_a_transaction_or_batch_bundle(client):
    assert client.post("/fhir", json=patient()).status_code == 400


def test_writes_call_the_routing_hook_inside_the_transaction(client, gateway):
    seen = []

    def on_stored(tx, written, origin):
        seen.append((origin.message_type, origin.sending_facility,
                     [(m, r["resourceType"], r["meta"]["versionId"], action) for m, r, action in written],
                     tx.read("Patient", written[0][1]["id"]) is not None))

    gateway.pipeline.on_stored = on_stored
    created = client.put("/fhir/Patient/p-1", json=patient(id="p-1")).get_json()
    client.put("/fhir/Patient/p-1", json=patient(id="p-1", gender="male"))
    client.delete("/fhir/Patient/p-1")
    assert seen == [("FHIR", None, [(None, "Patient", "1", "create")], True),
                    ("FHIR", None, [(None, "Patient", "2", "update")], True),
                    ("FHIR", None, [(None, "Patient", "3", "delete")], False)]
    assert created["id"] == "p-1"


def test_a_failing_routing_hook_rolls_the_write_back(client, gateway):
    def on_stored(tx, written, origin):
        raise RuntimeError("outbox unavailable")

    gateway.pipeline.on_stored = on_stored
    response = client.post("/fhir/Patient", json=patient())
    assert response.status_code == 500
    assert response.get_json()["resourceType"] == "OperationOutcome"
    gateway.pipeline.on_stored = None
    assert client.get("/fhir/Patient").get_json()["total"] == 0


@pytest.mark.parametrize("bad_id", ["has space", "x" * 65, "ü"])
def test_invalid_ids_are_refused(client, bad_id):
    assert client.put(f"/fhir/Patient/{bad_id}", json=patient(id=bad_id)).status_code == 400


def test_what_routing_holds_comes_back_as_a_warning(client, gateway):
    class Held:
        held = ["Patient/x: waiting for review"]

    gateway.pipeline.on_stored = lambda tx, written, origin: Held()
    response = client.post("/fhir/Patient", json=patient(), headers={"Prefer": "return=OperationOutcome"})
    assert response.status_code == 201
    assert response.get_json()["issue"] == [{"severity": "warning", "code": "informational",
                                             "diagnostics": "stored, held by routing: Patient/x: waiting for review"}]
