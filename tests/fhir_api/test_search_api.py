"""Search over HTTP: the searchset Bundle (links, match/include/outcome entries, total), _summary,
_elements, POST _search, errors as OperationOutcome, and the CapabilityStatement's search part."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

SYS = "https://hospital-a.example/mrn"


@pytest.fixture
def loaded(gateway):
    with gateway.store.write() as tx:
        for i, (family, birth, gender) in enumerate([("Wang", "1980-05-01", "female"), ("Zhang", "1975-06-12", "male"),
                                                     ("Li", "1990-01-01", "female"), ("Chen", "1985-03-03", "male")]):
            tx.update({"resourceType": "Patient", "id": f"p{i}", "identifier": [{"system": SYS, "value": f"A{i}"}],
                       "name": [{"family": family, "given": ["X"]}], "birthDate": birth, "gender": gender,
                       "text": {"status": "generated", "div": f"<div xmlns=\"http://www.w3.org/1999/xhtml\">{family}</div>"},
                       "contact": [{"name": {"family": "Kin"}}]})
        for i, (patient, status) in enumerate([("p0", "active"), ("p0", "completed"), ("p1", "active")]):
            tx.update({"resourceType": "MedicationRequest", "id": f"m{i}", "status": status, "intent": "order",
                       "subject": {"reference": f"Patient/{patient}"}, "authoredOn": f"2026-03-1{i}",
                       "medicationCodeableConcept": {"coding": [{"code": "H1"}]}})
    return gateway


def _path(url: str) -> str:
    return url[url.index("/fhir/"):]


def _link(bundle: dict, relation: str) -> str | None:
    return next((_path(link["url"]) for link in bundle["link"] if link["relation"] == relation), None)


def test_pages_follow_next_and_previous_links_in_sort_order(client, loaded):
    bundle = client.get("/fhir/Patient?_sort=-birthdate&_count=1&_total=accurate").get_json()
    assert bundle["total"] == 4 and _link(bundle, "previous") is None
    order, pages = [], []
    while True:
        pages.append(bundle)
        order += [e["resource"]["id"] for e in bundle["entry"]]
        if not _link(bundle, "next"):
            break
        bundle = client.get(_link(bundle, "next")).get_json()
    assert order == ["p2", "p3", "p0", "p1"]
    back = client.get(_link(pages[-1], "previous")).get_json()
    assert [e["resource"]["id"] for e in back["entry"]] == ["p0"]
    self_query = parse_qs(urlsplit(pages[1]["link"][0]["url"]).query)
    assert self_query["_sort"] == ["-birthdate"] and "_cursor" in self_query


def test_include_entries_are_marked_include(client, loaded):
    bundle = client.get("/fhir/MedicationRequest?status=active&_include=MedicationRequest:patient&_sort=_id").get_json()
    modes = [(e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"]) for e in bundle["entry"]]
    assert modes == [("MedicationRequest", "m0", "match"), ("MedicationRequest", "m2", "match"),
                     ("Patient", "p0", "include"), ("Patient", "p1", "include")]
    assert bundle["total"] == 2
    assert bundle["entry"][2]["fullUrl"].endswith("/fhir/Patient/p0")


def test_revinclude_and_has(client, loaded):
    bundle = client.get("/fhir/Patient?_has:MedicationRequest:patient:status=completed"
                        "&_revinclude=MedicationRequest:patient").get_json()
    assert [(e["resource"]["id"], e["search"]["mode"]) for e in bundle["entry"]] == \
        [("p0", "match"), ("m0", "include"), ("m1", "include")]


def test_chained_search_over_http(client, loaded):
    bundle = client.get(f"/fhir/MedicationRequest?patient.identifier={SYS}|A1").get_json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["m2"]


def test_unknown_parameter_is_an_outcome_entry_or_400_when_strict(client, loaded):
    bundle = client.get("/fhir/Patient?gender=male&shoe-size=42").get_json()
    assert bundle["total"] == 2
    outcome = bundle["entry"][-1]
    assert outcome["search"] == {"mode": "outcome"}
    assert outcome["resource"]["issue"] == [{"severity": "warning", "code": "not-supported",
                                             "diagnostics": "unknown search parameter 'shoe-size' for Patient: ignored",
                                             "expression": ["shoe-size"]}]
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert self_link.endswith("/fhir/Patient?gender=male")          # the ignored parameter is not claimed as used
    strict = client.get("/fhir/Patient?gender=male&shoe-size=42", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert strict.get_json()["issue"][0]["code"] == "not-supported"


@pytest.mark.parametrize("query, expression", [("name:below=x", "name:below"), ("_sort=shoe-size", "_sort"),
                                               ("_cursor=forged", "_cursor"), ("birthdate=yesterday", None)])
def test_unusable_search_is_400_operation_outcome(client, loaded, query, expression):
    response = client.get(f"/fhir/Patient?{query}")
    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["severity"] == "error" and issue["code"] == "invalid"
    assert issue.get("expression", [None]) == [expression]


def test_summary_count_gives_the_total_only(client, loaded):
    bundle = client.get("/fhir/Patient?gender=female&_summary=count").get_json()
    assert bundle["total"] == 2 and "entry" not in bundle


def test_summary_true_keeps_summary_elements_and_tags_subsetted(client, loaded):
    patient = client.get("/fhir/Patient?_id=p0&_summary=true").get_json()["entry"][0]["resource"]
    assert set(patient) == {"resourceType", "id", "meta", "identifier", "name", "birthDate", "gender"}
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
            "display": "subsetted"} in patient["meta"]["tag"]


def test_elements_keeps_only_the_named_elements(client, loaded):
    patient = client.get("/fhir/Patient?_id=p0&_elements=name,gender").get_json()["entry"][0]["resource"]
    assert set(patient) == {"resourceType", "id", "meta", "name", "gender"}
    order = client.get("/fhir/MedicationRequest?_id=m0&_elements=medication").get_json()["entry"][0]["resource"]
    assert "medicationCodeableConcept" in order and "subject" not in order


def test_total_none_leaves_total_out(client, loaded):
    bundle = client.get("/fhir/Patient?_total=none").get_json()
    assert "total" not in bundle and len(bundle["entry"]) == 4


def test_total_is_counted_on_request_only_unless_one_page_holds_every_match(client, loaded):
    """As HAPI FHIR: counting a wide search costs more than its page, so ``_total=accurate`` asks for it;
    a first page holding every match says how many for free; ``_count=0`` is a request for the total."""
    assert "total" not in client.get("/fhir/Patient?_count=2").get_json()
    assert client.get("/fhir/Patient?_count=2&_total=accurate").get_json()["total"] == 4
    assert client.get("/fhir/Patient?_count=10").get_json()["total"] == 4
    assert client.get("/fhir/Patient?_count=0").get_json()["total"] == 4
    second = client.get(_link(client.get("/fhir/Patient?_count=2").get_json(), "next")).get_json()
    assert "total" not in second and len(second["entry"]) == 2


def test_post_search_with_a_form_body(client, loaded):
    response = client.post("/fhir/Patient/_search", data={"gender": "female", "_sort": "birthdate"})
    assert [e["resource"]["id"] for e in response.get_json()["entry"]] == ["p0", "p2"]


def test_capability_statement_declares_search_params_includes_and_sort(client, gateway):
    statement = client.get("/fhir/metadata").get_json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    registry = gateway.store.params
    for resource_type in registry.resource_types():
        declared = {p["name"]: p for p in resources[resource_type]["searchParam"]}
        for name, param in registry.for_type(resource_type).items():
            assert declared[name]["type"] == param.type and declared[name]["documentation"] == param.doc
        assert declared["_sort"]["type"] == "special"
    assert "MedicationRequest:patient" in resources["MedicationRequest"]["searchInclude"]
    assert "MedicationRequest:patient" in resources["Patient"]["searchRevInclude"]
    assert declared["_lastUpdated"]["type"] == "date"


def test_searchset_in_xml_keeps_modes_and_links(client, loaded):
    response = client.get("/fhir/MedicationRequest?_id=m0&_include=MedicationRequest:patient&_format=xml")
    assert response.status_code == 200
    assert response.content_type.startswith("application/fhir+xml")
    body = response.get_data(as_text=True)
    assert '<type value="searchset"/>' in body
    assert body.count('<mode value="match"/>') == 1 and body.count('<mode value="include"/>') == 1
