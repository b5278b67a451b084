"""JSON and XML on the wire: content negotiation for every answer, XML bodies in, exact round trips,
and hostile XML (DTDs, entities) refused with a clear 400."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import DATA, post_hl7, sample
from lxml import etree

from gateway.fhir_api.formats import FormatError, negotiate, parse_xml_resource, resource_to_xml
from test_writes import patient

FHIR = "{http://hl7.org/fhir}"
RESOURCE_FILES = sorted(p for p in [*(DATA / "expected").glob("*.json"), *(DATA / "validation").glob("*/*.json")]
                        if "invalid-structure" not in p.name)


def resources_in(path: Path) -> list[dict]:
    """A resource file, or a mapping's expected output (a list of {key, identity, resource})."""
    data = orjson.loads(path.read_bytes())
    return [item["resource"] for item in data] if isinstance(data, list) else [data]


def xml_of(response) -> etree._Element:
    return etree.fromstring(response.data)


@pytest.mark.parametrize("path", RESOURCE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_sample_resource_round_trips_through_xml_exactly(path: Path):
    for resource in resources_in(path):
        assert parse_xml_resource(resource_to_xml(resource)) == resource


def test_the_samples_cover_every_type_the_gateway_stores(gateway):
    covered = {r["resourceType"] for path in RESOURCE_FILES for r in resources_in(path)}
    assert set(gateway.store.params.resource_types()) <= covered | {"Provenance"}   # Provenance: next test


def test_every_stored_type_round_trips_through_xml_exactly(client, gateway):
    for name in ("rde_o11_new_imported.hl7", "rde_o11_two_orders_gb18030.hl7", "rde_o11_cancel.hl7"):
        post_hl7(client, sample(name))
    seen = set()
    for resource_type in gateway.store.params.resource_types():
        for entry in client.get(f"/fhir/{resource_type}?_count=100").get_json().get("entry", []):
            if entry["search"]["mode"] != "match":
                continue
            resource = entry["resource"]
            seen.add(resource["resourceType"])
            xml = client.get(f"/fhir/{resource_type}/{resource['id']}?_format=xml")
            assert xml.mimetype == "application/fhir+xml"
            assert parse_xml_resource(xml.data) == resource
    assert {"Patient", "Practitioner", "Organization", "MedicationRequest", "Provenance"} <= seen


def test_xml_keeps_lexical_values_element_order_and_attributes():
    resource = {"resourceType": "Patient", "id": "x", "meta": {"lastUpdated": "2026-11-23T11:22:10.508Z"},
                "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>王 李</p></div>'},
                "extension": [{"url": "https://example.org/e", "valueDecimal": 10}],
                "active": True, "name": [{"id": "n1", "family": "王", "given": ["A", "B"],
                                          "_given": [None, {"extension": [{"url": "u", "valueString": "s"}]}]}],
                "birthDate": "1975-06", "_birthDate": {"id": "bd"}}
    xml = resource_to_xml(resource)
    root = etree.fromstring(xml)
    assert [etree.QName(c).localname for c in root] == ["id", "meta", "text", "extension", "active", "name", "birthDate"]
    assert root.find(f"{FHIR}meta/{FHIR}lastUpdated").get("value") == "2026-11-23T11:22:10.508Z"
    assert root.find(f"{FHIR}extension").get("url") == "https://example.org/e"
    assert root.find(f"{FHIR}extension/{FHIR}valueDecimal").get("value") == "10"
    assert root.find(f"{FHIR}name").get("id") == "n1"
    assert root.find(f"{FHIR}birthDate").get("id") == "bd"
    assert parse_xml_resource(xml) == resource


def test_read_search_and_errors_follow_format_and_accept(client):
    created = client.post("/fhir/Patient", json=patient()).get_json()
    by_param = client.get(f"/fhir/Patient/{created['id']}?_format=xml")
    assert by_param.mimetype == "application/fhir+xml"
    assert xml_of(by_param).tag == f"{FHIR}Patient"
    by_accept = client.get("/fhir/Patient", headers={"Accept": "application/fhir+xml"})
    assert xml_of(by_accept).find(f"{FHIR}type").get("value") == "searchset"
    missing = client.get("/fhir/Patient/nope", headers={"Accept": "application/fhir+xml"})
    assert missing.status_code == 404 and xml_of(missing).tag == f"{FHIR}OperationOutcome"
    json_wins = client.get("/fhir/Patient?_format=json", headers={"Accept": "application/fhir+xml"})
    assert json_wins.mimetype == "application/fhir+json"
    assert client.get("/fhir/metadata?_format=application/fhir%2Bxml").mimetype == "application/fhir+xml"
    history = client.get(f"/fhir/Patient/{created['id']}/_history?_format=xml")
    assert xml_of(history).find(f"{FHIR}type").get("value") == "history"


def test_pretty_printing_indents_json_and_xml(client):
    created = client.post("/fhir/Patient", json=patient()).get_json()
    pretty = client.get(f"/fhir/Patient/{created['id']}?_pretty=true").data
    assert pretty.startswith(b'{\n  "') and orjson.loads(pretty) == created
    assert b"\n  <id" in client.get(f"/fhir/Patient/{created['id']}?_pretty=true&_format=xml").data
    assert b"\n" not in client.get(f"/fhir/Patient/{created['id']}").data


def test_unknown_format_is_406_operation_outcome(client):
    response = client.get("/fhir/Patient?_format=csv")
    assert response.status_code == 406
    assert response.get_json()["issue"][0]["expression"] == ["_format"]


def test_xml_body_creates_and_updates_like_json(client):
    body = resource_to_xml(patient())
    created = client.post("/fhir/Patient", data=body, content_type="application/fhir+xml",
                          headers={"Accept": "application/fhir+xml"})
    assert created.status_code == 201
    stored = parse_xml_resource(created.data)
    assert stored["name"] == [{"family": "Wang", "given": ["Li"]}]
    update = resource_to_xml({**patient(), "id": stored["id"], "gender": "male"})
    updated = client.put(f"/fhir/Patient/{stored['id']}", data=update, content_type="application/xml")
    assert updated.status_code == 200 and updated.get_json()["gender"] == "male"


def test_xml_body_breaking_the_profile_is_422_with_expression(client):
    body = resource_to_xml(patient(gender="robot"))
    response = client.post("/fhir/Patient", data=body, content_type="application/fhir+xml")
    assert response.status_code == 422
    assert any(i.get("expression") == ["Patient.gender"] for i in response.get_json()["issue"])


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&lol2;"/></name></Patient>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><name><family value="&xxe;"/></name></Patient>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_xml_with_a_dtd_is_refused_with_400(client, body):
    response = client.post("/fhir/Patient", data=body, content_type="application/fhir+xml")
    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "security" and "DTD" in issue["diagnostics"]
    assert client.get("/fhir/Patient").get_json()["total"] == 0


@pytest.mark.parametrize("body, words", [
    (b"<Patient xmlns='http://hl7.org/fhir'><name>", "well-formed"),
    (b"<Patient><id value='x'/></Patient>", "FHIR namespace"),
    (b"<Patient xmlns='http://hl7.org/fhir'><shoeSize value='42'/></Patient>", "Patient.shoeSize"),
    (b"<Patient xmlns='http://hl7.org/fhir'><active value='yes'/></Patient>", "not a boolean"),
    (b"<Patient xmlns='http://hl7.org/fhir'><gender value='male'/><gender value='female'/></Patient>",
     "more than once"),
    (b"<Spaceship xmlns='http://hl7.org/fhir'/>", "not a FHIR resource type"),
])
def test_malformed_xml_bodies_are_400_saying_why(client, body, words):
    response = client.post("/fhir/Patient", data=body, content_type="application/fhir+xml")
    assert response.status_code == 400
    assert words in response.get_json()["issue"][0]["diagnostics"]


def test_unsupported_content_type_is_415(client):
    assert client.post("/fhir/Patient", data=b"a,b", content_type="text/csv").status_code == 415


def test_accept_quality_values_pick_the_preferred_format():
    assert negotiate(None, "application/fhir+xml;q=0.5, application/fhir+json", None).name == "json"
    assert negotiate(None, "text/html, application/fhir+xml", None).name == "xml"
    assert negotiate(None, "*/*", None).name == "json"
    with pytest.raises(FormatError):
        negotiate("yaml", None, None)


def test_a_transaction_can_be_sent_and_answered_in_xml(client):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b1d3b3e-1111-4c3a-9e1a-000000000001",
         "resource": {"resourceType": "Organization", "name": "Boao Super Hospital"},
         "request": {"method": "POST", "url": "Organization"}},
        {"resource": {**patient(), "managingOrganization": {"reference": "urn:uuid:0b1d3b3e-1111-4c3a-9e1a-000000000001"}},
         "request": {"method": "POST", "url": "Patient"}}]}
    response = client.post("/fhir", data=resource_to_xml(bundle), content_type="application/fhir+xml",
                           headers={"Accept": "application/fhir+xml", "Prefer": "return=minimal"})
    assert response.status_code == 200
    answer = parse_xml_resource(response.data)
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created", "201 Created"]
    assert all("resource" not in e for e in answer["entry"])
    org = answer["entry"][0]["response"]["location"].split("/_history")[0]
    stored = client.get("/fhir/" + answer["entry"][1]["response"]["location"].split("/_history")[0])
    assert stored.get_json()["managingOrganization"] == {"reference": org}
