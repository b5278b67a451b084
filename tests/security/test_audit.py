"""Every access to clinical data leaves one AuditEvent (who, what, when, outcome, address), refused
requests included; admins and regulators search them at /fhir/AuditEvent."""
from __future__ import annotations

import base64

from tests.conftest import post_hl7, sample


def _events(client, query: str = "") -> list[dict]:
    bundle = client.get(f"/fhir/AuditEvent?_count=100{query}").get_json()
    return [e["resource"] for e in bundle.get("entry", [])]


def test_each_request_of_a_session_has_its_audit_event_in_order(app, client, anonymous_client, client_as):
    security = app.extensions["security"]
    before = security.audit.count()         # the admin's token request is audited too
    hospital = client_as("hospital")
    post_hl7(hospital, sample("rde_o11_new_imported.hl7"))
    order_id = hospital.get("/fhir/MedicationRequest").get_json()["entry"][0]["resource"]["id"]
    hospital.get(f"/fhir/MedicationRequest/{order_id}")
    hospital.get("/fhir/MedicationRequest?status=active")
    anonymous_client.get("/fhir/Patient")                 # refused: no token
    hospital.get("/fhir/AuditEvent")                      # refused: not an audit reader
    hospital.get("/fhir/NoSuchType/1")                    # unknown type
    hospital.get("/healthz")                              # not clinical data: not audited
    anonymous_client.get("/fhir/metadata")                # public: not audited
    events = list(reversed(_events(client)))[before:]
    rows = [(e["subtype"][0]["code"], e["outcome"], e["entity"][0].get("description"),
             e["agent"][0]["who"].get("identifier", {}).get("value")) for e in events]
    assert rows == [
        ("token", "0", "POST /auth/token", "test-hospital-boao_super_hospital"),
        ("hl7v2", "0", "POST /hl7v2", "test-hospital-boao_super_hospital"),
        ("search-type", "0", "GET /fhir/MedicationRequest", "test-hospital-boao_super_hospital"),
        ("read", "0", f"GET /fhir/MedicationRequest/{order_id}", "test-hospital-boao_super_hospital"),
        ("search-type", "0", "GET /fhir/MedicationRequest", "test-hospital-boao_super_hospital"),
        ("search-type", "4", "GET /fhir/Patient", None),
        ("search-type", "4", "GET /fhir/AuditEvent", "test-hospital-boao_super_hospital"),
        ("read", "4", "GET /fhir/NoSuchType/1", "test-hospital-boao_super_hospital"),
    ]
    read = events[3]
    assert read["action"] == "R" and read["entity"][0]["what"] == {"reference": f"MedicationRequest/{order_id}"}
    assert read["agent"][0]["network"] == {"address": "127.0.0.1", "type": "2"}
    assert read["agent"][1]["who"]["identifier"]["value"] == "BOAO_SUPER_HOSPITAL"
    assert base64.b64decode(events[4]["entity"][0]["query"]) == b"status=active"
    assert events[5]["outcomeDesc"] == "this endpoint needs a bearer token: get one from /auth/token"
    assert events[1]["outcomeDesc"].startswith("ACK AA")


def test_a_refused_write_is_audited_with_its_reason(client_as, client):
    regulator = client_as("regulator")
    response = regulator.post("/fhir/Patient", json={"resourceType": "Patient"}, content_type="application/fhir+json")
    assert response.status_code == 403
    event = _events(client, "&agent=test-regulator-hnmpa&subtype=create")[0]
    assert event["outcome"] == "4" and event["action"] == "C"
    assert "do not allow create on Patient" in event["outcomeDesc"]


def test_audit_search_parameters(client, client_as):
    client_as("pharmacy").get("/fhir/MedicationRequest")
    assert {e["agent"][0]["who"]["identifier"]["value"] for e in _events(client, "&role=pharmacy")} == \
        {"test-pharmacy-haikou_pharmacy_017"}
    assert _events(client, "&organization=HAIKOU_PHARMACY_017&entity-type=MedicationRequest")[0]["action"] == "E"
    assert _events(client, "&date=ge2000-01-01&outcome=0")
    assert _events(client, "&date=lt2000-01-01") == []
    event = _events(client)[0]
    assert client.get(f"/fhir/AuditEvent/{event['id']}").get_json() == event
    assert client.get("/fhir/AuditEvent/no-such-id").status_code == 404
    counted = client.get("/fhir/AuditEvent?role=pharmacy&entity-type=MedicationRequest&_summary=count").get_json()
    assert counted["total"] == 1 and "entry" not in counted
    assert client.get("/fhir/AuditEvent?_summary=text").status_code == 400
    unknown = client.get("/fhir/AuditEvent?shoe=1")
    assert unknown.status_code == 400 and "unknown AuditEvent search parameter 'shoe'" in \
        unknown.get_json()["issue"][0]["diagnostics"]


def test_only_admins_and_regulators_read_the_audit_log_and_nobody_writes_it(client, client_as):
    assert client_as("regulator").get("/fhir/AuditEvent").status_code == 200
    for role in ("hospital", "pharmacy", "prescription-center"):
        assert client_as(role).get("/fhir/AuditEvent").status_code == 403
    event = {"resourceType": "AuditEvent"}
    assert client.post("/fhir/AuditEvent", json=event, content_type="application/fhir+json").status_code == 403
