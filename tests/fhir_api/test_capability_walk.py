"""The CapabilityStatement is exactly true (issue 14, item 5): a walker reads /fhir/metadata of a
gateway loaded with every sample and exercises each claim over HTTP: every interaction, search
parameter (matching a stored resource by a value taken from it, where one has a value), include,
revinclude and operation; and every type the store holds (as /fhir/_history lists it) is readable.
"""
from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from conftest import DATA, post_hl7, sample

# rds_o13_dispense.hl7 is left out: a pharmacy completes only orders routed to it (a routing test's
# matter); the walk gets its MedicationDispense through the claimed create interaction
HL7_SAMPLES = ["rde_o11_new_imported.hl7", "rde_o11_two_orders_gb18030.hl7", "pex_p07_adverse_event.hl7", "pex_p07_death_unapproved_device.hl7", "oru_r01_device_use.hl7",
               "rde_o11_cancel.hl7"]
DOCUMENTS = [("device_first_use", "device_first_use.csv"), ("hospital_prescription", "hospital_prescription.xml")]
# a type no sample message fills yet gets one resource through the claimed create interaction
MINIMAL = {"Encounter": {"resourceType": "Encounter", "status": "finished", "identifier": [
               {"system": "https://lecheng-fhir-gateway.org/fhir/sid/BOAO_SUPER_HOSPITAL/visit", "value": "V-1"}],
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}},
           "MedicationDispense": json.loads((DATA / "validation" / "medicationdispense" / "valid-dispense.json")
                                            .read_text("utf-8")),
           "Location": {"resourceType": "Location", "status": "active", "name": "博鳌超级医院 ICU",
                        "address": {"city": "琼海市", "country": "CHN"}}}


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """One gateway loaded with every sample, its CapabilityStatement, and one stored resource per type."""
    from gateway import create_app
    from tests.security.credentials import authenticated
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("walk")), "TESTING": True})
    client = authenticated(app, "admin")
    for name in HL7_SAMPLES:
        response, ack = post_hl7(client, sample(name))
        assert response.status_code == 200 and ack[1][1] == "AA", (name, ack)
    for mapping, name in DOCUMENTS:
        response = client.post(f"/ingest/{mapping}", data=sample(name), content_type="application/octet-stream")
        assert response.status_code in (200, 201), (mapping, response.data[:500])
    statement = client.get("/fhir/metadata").get_json()
    return app, client, statement


def _bundle(client, url: str, status: int = 200) -> dict:
    response = client.get(url)
    assert response.status_code == status, (url, response.data[:500])
    body = response.get_json()
    assert body["resourceType"] == "Bundle", url
    return body


def _one_of(client, resource_type: str) -> dict:
    found = _bundle(client, f"/fhir/{resource_type}?_count=50")
    if found.get("entry"):
        # prefer the resource with the most elements: more parameters get a value to match on
        return max((e["resource"] for e in found["entry"]), key=lambda r: len(str(r)))
    created = client.post(f"/fhir/{resource_type}", json=MINIMAL[resource_type])
    assert created.status_code == 201, (resource_type, created.data[:500])
    return created.get_json()


def _values_at(node, path: tuple[str, ...]) -> list:
    items = [node]
    for name in path:
        nxt = []
        for item in items:
            if not isinstance(item, dict):
                continue
            keys = [k for k in item if k.startswith(name[:-3])] if name.endswith("[x]") else [name]
            for key in keys:
                value = item.get(key)
                nxt.extend(value if isinstance(value, list) else [value] if value is not None else [])
        items = nxt
    return items


def _search_value(param, resource: dict) -> str | None:
    """A value of ``param`` the resource must match, taken from the resource itself."""
    if param.column == "res_id":
        return resource["id"]
    if param.column == "last_updated":
        return "ge" + resource["meta"]["lastUpdated"][:4]
    for path in param.paths:
        for value in _values_at(resource, path):
            if param.type == "reference" and isinstance(value, dict) and "/" in str(value.get("reference", "")):
                target = value["reference"].split("/")[0]
                if not param.targets or target in param.targets:
                    return value["reference"]
            elif param.type == "token":
                if isinstance(value, str):
                    return value
                if isinstance(value, dict):
                    coding = (value.get("coding") or [value])[0]
                    if coding.get("system") and (coding.get("code") or coding.get("value")):
                        return f"{coding['system']}|{coding.get('code') or coding.get('value')}"
                    if coding.get("code"):
                        return coding["code"]
            elif param.type == "string":
                text = value if isinstance(value, str) else next(
                    (v for v in (value.get("family"), value.get("city"), value.get("text"), value.get("name"))
                     if isinstance(v, str)), None) if isinstance(value, dict) else None
                if text:
                    return text[:2]
            elif param.type == "date" and isinstance(value, str):
                return "ge" + value[:4]
            elif param.type == "uri" and isinstance(value, str):
                return value
    return None


def test_every_claimed_interaction_search_include_and_revinclude_works(walked):
    app, client, statement = walked
    params = app.extensions["gateway"].store.params
    rest = statement["rest"][0]
    matched, exercised = [], []
    for entry in rest["resource"]:
        resource_type = entry["type"]
        codes = [i["code"] for i in entry["interaction"]]
        if resource_type == "AuditEvent":
            events = _bundle(client, "/fhir/AuditEvent?_count=5")
            assert events["entry"], "every request above was audited"
            event = events["entry"][0]["resource"]
            assert client.get(f"/fhir/AuditEvent/{event['id']}").get_json()["id"] == event["id"]
            for sp in entry["searchParam"]:
                value = {"date": "ge2000-01-01", "entity": f"{resource_type}/x"}.get(sp["name"], "x")
                _bundle(client, f"/fhir/AuditEvent?{sp['name']}={quote(value)}")
                exercised.append(f"AuditEvent.{sp['name']}")
            continue
        resource = _one_of(client, resource_type)
        rid, vid = resource["id"], resource["meta"]["versionId"]
        if "read" in codes:
            assert client.get(f"/fhir/{resource_type}/{rid}").get_json()["id"] == rid
        if "vread" in codes:
            assert client.get(f"/fhir/{resource_type}/{rid}/_history/{vid}").status_code == 200
        if "history-instance" in codes:
            assert _bundle(client, f"/fhir/{resource_type}/{rid}/_history")["type"] == "history"
        if "history-type" in codes:
            assert _bundle(client, f"/fhir/{resource_type}/_history").get("entry")
        if "search-type" in codes:
            assert _bundle(client, f"/fhir/{resource_type}")["total"] >= 1
        for sp in entry["searchParam"]:
            name = sp["name"]
            if name == "_sort":
                _bundle(client, f"/fhir/{resource_type}?_sort=-_lastUpdated")
                continue
            if name == "_has":
                source, ref = entry["searchRevInclude"][0].split(":")
                _bundle(client, f"/fhir/{resource_type}?_has:{source}:{ref}:_id=x")
                continue
            param = params.get(resource_type, name)
            assert param is not None, f"{resource_type}.{name} claimed but not in the registry"
            value = _search_value(param, resource)
            exercised.append(f"{resource_type}.{name}")
            if value is None:
                _bundle(client, f"/fhir/{resource_type}?{name}:missing=true")
                continue
            found = _bundle(client, f"/fhir/{resource_type}?{name}={quote(value, safe='|/')}&_count=1000")
            assert rid in [e["resource"]["id"] for e in found.get("entry", [])], (resource_type, name, value)
            matched.append(f"{resource_type}.{name}")
        for include in entry.get("searchInclude", []):
            bundle = _bundle(client, f"/fhir/{resource_type}?_id={rid}&_include={include}")
            param_name = include.split(":")[1]
            target = _search_value(params.get(resource_type, param_name), resource) if param_name != "*" else None
            if target and client.get(f"/fhir/{target}").status_code == 200:      # it names a stored resource
                assert any(e["search"]["mode"] == "include" for e in bundle["entry"]), (resource_type, include)
        for revinclude in entry.get("searchRevInclude", []):
            source, ref = revinclude.split(":")
            assert params.get(source, ref) is not None, revinclude
            targets = params.get(source, ref).targets
            assert not targets or resource_type in targets, f"{revinclude} cannot point at {resource_type}"
            _bundle(client, f"/fhir/{resource_type}?_id={rid}&_revinclude={revinclude}")
        if "update" in codes:
            update = client.put(f"/fhir/{resource_type}/{rid}", json=resource)
            assert update.status_code in (200, 201), (resource_type, update.data[:500])
        if "create" in codes and "delete" in codes:
            copy = {k: v for k, v in resource.items() if k not in ("id", "meta")}
            if isinstance(copy.get("identifier"), list):      # a new business identity, not the stored one's
                copy["identifier"] = [{**i, "value": f"{i.get('value')}-walk"} for i in copy["identifier"]
                                      if not str(i.get("system")).endswith("cn-resident-id")]
                if not copy["identifier"]:
                    del copy["identifier"]
            elif isinstance(copy.get("identifier"), dict):
                copy["identifier"] = {**copy["identifier"], "value": f"{copy['identifier'].get('value')}-walk"}
            created = client.post(f"/fhir/{resource_type}", json=copy)
            assert created.status_code == 201, (resource_type, created.data[:500])
            assert client.delete(f"/fhir/{resource_type}/{created.get_json()['id']}").status_code in (200, 204)
        for operation in entry.get("operation", []):
            if operation["name"] == "validate":
                answer = client.post(f"/fhir/{resource_type}/$validate", json=resource)
                assert answer.status_code == 200, (resource_type, answer.data[:500])
            elif operation["name"] == "export":
                answer = client.get(f"/fhir/{resource_type}/$export", headers={"Prefer": "respond-async"})
                assert answer.status_code == 202
    # most claims are matched against real data, not only answered
    assert len(matched) >= 0.7 * len(exercised), sorted(set(exercised) - set(matched))

    system = [i["code"] for i in rest["interaction"]]
    assert _bundle(client, "/fhir/_history")["type"] == "history" if "history-system" in system else True
    for kind in ("batch", "transaction"):
        if kind in system:
            answer = client.post("/fhir", json={"resourceType": "Bundle", "type": kind, "entry": [
                {"request": {"method": "GET", "url": "Patient?_count=1"}}] if kind == "batch" else [
                {"fullUrl": "urn:uuid:9f0c4b5e-0000-4000-8000-000000000001",
                 "resource": MINIMAL["Location"], "request": {"method": "POST", "url": "Location"}}]})
            assert answer.status_code == 200, (kind, answer.data[:500])
    for operation in rest.get("operation", []):
        assert client.get("/fhir/$export", headers={"Prefer": "respond-async"}).status_code == 202, operation


def test_every_type_the_store_holds_is_readable_and_claimed(walked):
    _app, client, statement = walked
    claimed = {r["type"] for r in statement["rest"][0]["resource"]}
    held: dict[str, str] = {}
    url = "/fhir/_history?_count=1000"
    history = _bundle(client, url)
    newest: dict[str, dict] = {}                 # history is newest first
    for entry in history.get("entry", []):
        newest.setdefault(entry["fullUrl"].split("/_history")[0], entry)
    for full_url, entry in newest.items():
        if entry["request"]["method"] != "DELETE":
            resource_type, rid = full_url.split("/")[-2:]
            held.setdefault(resource_type, rid)
    assert {"Location", "DeviceUseStatement", "AdverseEvent", "Device"} <= set(held)
    for resource_type, rid in held.items():
        assert resource_type in claimed, f"{resource_type} is stored but not in the CapabilityStatement"
        assert client.get(f"/fhir/{resource_type}/{rid}").status_code == 200, resource_type


def test_no_revinclude_is_claimed_that_cannot_point_at_the_type(walked):
    _app, _client, statement = walked
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert "Encounter:subject" not in by_type["AdverseEvent"].get("searchRevInclude", [])
    assert "MedicationRequest:requester" not in by_type["AdverseEvent"].get("searchRevInclude", [])
    assert "AdverseEvent:location" in by_type["AdverseEvent"]["searchInclude"] and "Location" in by_type


def test_smart_configuration_offers_a_scope_for_every_served_type(walked):
    _app, client, statement = walked
    scopes = set(client.get("/.well-known/smart-configuration").get_json()["scopes_supported"])
    for entry in statement["rest"][0]["resource"]:
        assert f"system/{entry['type']}.rs" in scopes, entry["type"]


def test_location_and_device_use_statement_export(walked):
    _app, client, _statement = walked
    kick = client.get("/fhir/$export?_type=DeviceUseStatement,Location", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202, kick.data
