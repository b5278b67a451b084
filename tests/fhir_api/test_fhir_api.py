"""The FHIR API minimum: metadata, read, vread, history, search, paging, errors as OperationOutcome."""
from __future__ import annotations

from conftest import post_hl7, sample


def _load(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    post_hl7(client, sample("rde_o11_two_orders_gb18030.hl7"))


def test_metadata_lists_every_registered_search_parameter(client, gateway):
    statement = client.get("/fhir/metadata").get_json()
    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for resource_type in gateway.store.params.by_type:
        declared = {p["name"] for p in resources[resource_type]["searchParam"] if p["type"] != "special"}
        assert set(gateway.store.params.for_type(resource_type)) == declared
        assert {"_id", "_lastUpdated", "_tag", "_profile"} <= declared


def test_unknown_resource_id_is_404_operation_outcome(client):
    response = client.get("/fhir/Patient/nope")
    assert response.status_code == 404
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_unknown_type_is_404_operation_outcome(client):
    response = client.get("/fhir/Spaceship")
    assert response.status_code == 404
    assert response.get_json()["issue"][0]["code"] == "not-supported"


def test_search_by_status_and_intent(client):
    _load(client)
    bundle = client.get("/fhir/MedicationRequest?status=active&intent=order").get_json()
    assert bundle["total"] == 3


def test_search_by_code_with_system(client):
    _load(client)
    system = "https://lecheng-fhir-gateway.org/fhir/sid/nmpa-approval-number"
    bundle = client.get(f"/fhir/MedicationRequest?code={system}|H20203001").get_json()
    assert [e["resource"]["identifier"][0]["value"] for e in bundle["entry"]] == ["HMU-RX-1001"]
    assert client.get("/fhir/MedicationRequest?code=other|H20203001").get_json()["total"] == 0


def test_search_authoredon_prefixes(client):
    _load(client)   # 2026-03-15T09:25+08:00 and two at 2026-03-16T10:15+08:00
    count = lambda q: client.get(f"/fhir/MedicationRequest?authoredon={q}").get_json()["total"]  # noqa: E731
    assert count("2026-03-15") == 1
    assert count("eq2026-03") == 3
    assert count("ge2026-03-16") == 2
    assert count("lt2026-03-16") == 1
    assert count("gt2026-03-15T09:25:00%2B08:00") == 2
    assert count("le2026-03-14") == 0


def test_search_by_requester_and_patient_name_and_birthdate(client):
    _load(client)
    practitioner = client.get("/fhir/Practitioner?name=陈").get_json()["entry"][0]["resource"]
    assert client.get(f"/fhir/MedicationRequest?requester=Practitioner/{practitioner['id']}").get_json()["total"] == 2
    assert client.get("/fhir/Patient?name=王").get_json()["total"] == 1
    assert client.get("/fhir/Patient?birthdate=1975-06-12").get_json()["total"] == 1
    assert client.get("/fhir/Patient?birthdate=ge1980").get_json()["total"] == 1


def test_paging_with_next_links_returns_each_once(client):
    _load(client)
    seen, url = [], "/fhir/MedicationRequest?_count=1"
    while url:
        bundle = client.get(url).get_json()
        seen += [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        url = url and url[url.index("/fhir/"):]
    assert len(seen) == 3 == len(set(seen))


def test_unknown_search_parameter_is_reported_or_refused_when_strict(client):
    bundle = client.get("/fhir/Patient?shoe-size=42").get_json()
    assert bundle["entry"][-1]["resource"]["resourceType"] == "OperationOutcome"
    strict = client.get("/fhir/Patient?shoe-size=42", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


def test_bad_date_search_value_is_400(client):
    response = client.get("/fhir/MedicationRequest?authoredon=yesterday")
    assert response.status_code == 400
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_history_lists_both_versions_after_a_cancel(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    post_hl7(client, sample("rde_o11_cancel.hl7"))
    order = client.get("/fhir/MedicationRequest?identifier=BSH-RX-0001").get_json()["entry"][0]["resource"]
    history = client.get(f"/fhir/MedicationRequest/{order['id']}/_history").get_json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["cancelled", "active"]
    assert client.get(f"/fhir/MedicationRequest/{order['id']}").headers["ETag"] == 'W/"2"'
