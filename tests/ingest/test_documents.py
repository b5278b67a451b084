"""Hospitals' own XML, CSV and JSON exports over HTTP: POST /ingest/<mapping> in, FHIR Bundle or
OperationOutcome out, the raw bytes always in the message log, resources searchable after."""
from __future__ import annotations

import json

from conftest import ack_segment, post_hl7, sample

BASE = "https://lecheng-fhir-gateway.org/fhir"
UDI_SERIAL = f"{BASE}/sid/device-udi-serial"


def _post(client, mapping: str, raw: bytes):
    response = client.post(f"/ingest/{mapping}", data=raw, content_type="application/octet-stream")
    return response, response.get_json()


def _search(client, query: str) -> dict:
    response = client.get(f"/fhir/{query}")
    assert response.status_code == 200, response.data
    return response.get_json()


def _logged(gateway, response):
    return gateway.message_log.get(int(response.headers["X-Message-Log-Id"]))


def _variant(name: str, old: bytes, new: bytes) -> bytes:
    raw = sample(name)
    assert old in raw, old
    return raw.replace(old, new)


def test_xml_prescription_is_stored_and_answered_with_each_location(client, gateway):
    response, bundle = _post(client, "hospital_prescription", sample("hospital_prescription.xml"))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert bundle["type"] == "transaction-response"
    assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created"] * 4
    assert [e["response"]["location"].split("/")[0] for e in bundle["entry"]] == \
        ["Organization", "Patient", "Practitioner", "MedicationRequest"]
    order = _search(client, "MedicationRequest?identifier=SYH-EP-20260318-0007-1")["entry"][0]["resource"]
    assert bundle["entry"][3]["response"]["location"] == f"MedicationRequest/{order['id']}/_history/1"
    assert order["meta"]["profile"] == [f"{BASE}/StructureDefinition/lecheng-medicationrequest"]
    assert order["meta"]["source"].startswith("urn:xml:SANYA_PEOPLES_HOSPITAL:")
    patient = client.get(f"/fhir/{order['subject']['reference']}").get_json()
    assert patient["name"][0]["text"] == "黄丽"
    logged = _logged(gateway, response)
    assert logged.raw == sample("hospital_prescription.xml")
    assert (logged.transport, logged.format, logged.status) == ("http-xml", "hospital_prescription", "processed")
    assert (logged.message_type, logged.sender_facility) == ("xml:hospital_prescription", "SANYA_PEOPLES_HOSPITAL")


def test_the_same_document_twice_changes_nothing(client):
    _response, first = _post(client, "hospital_prescription", sample("hospital_prescription.xml"))
    response, second = _post(client, "hospital_prescription", sample("hospital_prescription.xml"))
    assert response.status_code == 200
    assert [e["response"]["status"] for e in second["entry"]] == ["200 OK"] * 4
    assert [e["response"]["location"] for e in second["entry"]] == [e["response"]["location"] for e in first["entry"]]


def test_second_xml_layout_updates_nothing_the_first_layout_stored(client):
    """The same prescription in the eRx 2.0 layout is the same FHIR: every resource unchanged."""
    _post(client, "hospital_prescription", sample("hospital_prescription.xml"))
    response, bundle = _post(client, "hospital_prescription_erx2", sample("hospital_prescription_erx2.xml"))
    assert response.status_code == 200
    assert [e["response"]["status"] for e in bundle["entry"]] == ["200 OK"] * 4


def test_json_prescription_makes_an_order_per_item_for_the_hl7_patient(client):
    _response, ack = post_hl7(client, sample("rde_o11_two_orders_gb18030.hl7"))
    assert ack_segment(ack, "MSA")[1] == "AA"
    response, bundle = _post(client, "online_clinic_prescription", sample("online_clinic_prescription.json"))
    assert response.status_code == 200 and bundle["type"] == "transaction-response"
    patients = _search(client, "Patient?identifier=P7788")
    assert patients["total"] == 1                      # the same MRN system from PID-3 and from the JSON
    orders = _search(client, f"MedicationRequest?patient=Patient/{patients['entry'][0]['resource']['id']}")
    assert orders["total"] == 4
    assert _search(client, "Practitioner?identifier=D2002")["total"] == 1


def test_csv_rows_each_make_a_device_with_its_approval(client, gateway):
    response, bundle = _post(client, "device_first_use", sample("device_first_use.csv"))
    assert response.status_code == 200 and bundle["type"] == "batch-response"
    assert [e["response"]["location"].split("/")[0] for e in bundle["entry"]] == \
        ["Organization", "Patient", "Device", "DeviceUseStatement"] * 2
    device = _search(client, f"Device?identifier={UDI_SERIAL}|00643169007222:SN-PMC-778812")["entry"][0]["resource"]
    assert device["extension"][0]["extension"][0]["valueIdentifier"]["value"] == "LC2026-D-0101"
    assert device["meta"]["profile"] == [f"{BASE}/StructureDefinition/lecheng-device"]
    assert device["meta"]["source"].endswith(":line-2")
    # the DI of row 3 is not a GTIN: stored, with the profile's warning on that row's first entry
    warnings = bundle["entry"][4]["response"]["outcome"]["issue"]
    assert [i["severity"] for i in warnings] == ["warning"] and "lc-dev-2" in warnings[0]["diagnostics"]
    assert _logged(gateway, response).status == "processed"


def test_csv_in_gb18030_over_http(client):
    response, _bundle = _post(client, "device_register_gb18030", sample("device_register_gb18030.csv"))
    assert response.status_code == 200
    device = _search(client, f"Device?identifier={UDI_SERIAL}|00850009261014:SN-MN-000417")["entry"][0]["resource"]
    assert device["deviceName"][0]["name"] == "射频微针治疗仪"


def test_csv_with_one_bad_row_stores_the_good_row_and_names_the_bad_one(client, gateway):
    raw = _variant("device_first_use.csv", b"04046963821004", b"")
    response, bundle = _post(client, "device_first_use", raw)
    assert response.status_code == 200
    assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created"] * 4 + ["422 Unprocessable Entity"]
    issue = bundle["entry"][4]["response"]["outcome"]["issue"][0]
    assert issue == {"severity": "error", "code": "required", "location": ["line 3, column 'udi_di'"],
                     "diagnostics": "line 3, column 'udi_di': required value missing"}
    assert _search(client, "Device")["total"] == 1
    logged = _logged(gateway, response)
    assert logged.raw == raw and logged.status == "error"
    assert logged.detail["errors"] == ["line 3, column 'udi_di': required value missing"]


def test_csv_whose_only_row_is_bad_is_422_and_kept(client, gateway):
    raw = b"\n".join(sample("device_first_use.csv").split(b"\n")[:2]).replace(b",00643169007222,", b",,") + b"\n"
    response, outcome = _post(client, "device_first_use", raw)
    assert response.status_code == 422
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i["diagnostics"] for i in outcome["issue"]] == ["line 2, column 'udi_di': required value missing"]
    assert _search(client, "Device")["total"] == 0
    assert _logged(gateway, response).raw == raw


def test_malformed_xml_is_400_with_line_and_column_and_kept(client, gateway):
    raw = _variant("hospital_prescription.xml", b"</Prescriber>", b"</Prescribr>")
    response, outcome = _post(client, "hospital_prescription", raw)
    assert response.status_code == 400
    (issue,) = outcome["issue"]
    assert issue["code"] == "structure" and issue["location"] == ["line 8, column 43"]
    assert "Opening and ending tag mismatch: Prescriber" in issue["diagnostics"]
    logged = _logged(gateway, response)
    assert (logged.raw, logged.status) == (raw, "rejected")
    assert _search(client, "Patient")["total"] == 0


def test_xml_missing_a_required_value_is_422_naming_its_xpath(client, gateway):
    raw = _variant("hospital_prescription.xml", b' mrn="S300451"', b"")
    response, outcome = _post(client, "hospital_prescription", raw)
    assert response.status_code == 422
    assert outcome["issue"] == [{"severity": "error", "code": "required",
                                 "location": ["/rx:Prescription/rx:Patient/@mrn (line 2)"],
                                 "diagnostics": "/rx:Prescription/rx:Patient/@mrn (line 2): required value missing"}]
    assert _logged(gateway, response).raw == raw


def test_json_failing_its_schema_is_422_with_json_pointers_and_kept(client, gateway):
    document = json.loads(sample("online_clinic_prescription.json"))
    del document["items"][0]["dose"]
    raw = json.dumps(document, ensure_ascii=False).encode()
    response, outcome = _post(client, "online_clinic_prescription", raw)
    assert response.status_code == 422
    assert [(i["location"], i["code"]) for i in outcome["issue"]] == [(["/items/0/dose"], "required")]
    assert _logged(gateway, response).raw == raw
    assert _search(client, "MedicationRequest")["total"] == 0


def test_a_resource_breaking_its_profile_is_422_with_expression_and_location(client):
    raw = _variant("hospital_prescription.xml", b'idCard="460200198807070021"', b'idCard="46020019880707"')
    response, outcome = _post(client, "hospital_prescription", raw)
    assert response.status_code == 422
    errors = [i for i in outcome["issue"] if i["severity"] == "error"]
    assert [i["expression"] for i in errors] == [["Patient.identifier[1]"]]
    assert "lc-pat-1" in errors[0]["diagnostics"]
    assert errors[0]["location"] == ["/rx:Prescription/rx:Patient/@mrn (line 4)"]   # the row filling identifier
    assert _search(client, "MedicationRequest")["total"] == 0      # one document: all or nothing


def test_unknown_mapping_is_404_and_an_hl7_mapping_400_both_kept(client, gateway):
    response, outcome = _post(client, "no_such_export", b"a,b\n1,2\n")
    assert response.status_code == 404 and outcome["issue"][0]["code"] == "not-found"
    assert "device_first_use" in outcome["issue"][0]["diagnostics"]
    assert _logged(gateway, response).raw == b"a,b\n1,2\n"
    response, outcome = _post(client, "rde_o11", sample("rde_o11_new_imported.hl7"))
    assert response.status_code == 400 and "/hl7v2" in outcome["issue"][0]["diagnostics"]
    assert _logged(gateway, response).status == "rejected"


def test_a_document_over_the_size_limit_is_413_and_its_head_kept(gateway):
    gateway.documents.config = {**gateway.documents.config, "MAX_MESSAGE_BYTES": 100}
    raw = sample("device_first_use.csv")
    result = gateway.documents.ingest(raw, "device_first_use")
    assert result.status == 413
    assert gateway.message_log.get(result.log_id).raw == raw[:100]


def test_the_routing_hook_sees_the_document_type_and_sender(gateway, client):
    seen = []
    gateway.pipeline.on_stored = lambda tx, written, origin: seen.append(
        (origin.message_type, origin.sending_facility, [r["resourceType"] for _m, r, _a in written]))
    _post(client, "device_first_use", sample("device_first_use.csv"))
    assert seen == [("csv:device_first_use", "BOAO_RUIJIN_HOSPITAL",
                     ["Organization", "Patient", "Device", "DeviceUseStatement"]),
                    ("csv:device_first_use", "BOAO_SUPER_HOSPITAL",
                     ["Organization", "Patient", "Device", "DeviceUseStatement"])]


def test_device_from_hl7_twice_then_the_csv_row_is_one_device(client):
    """The device identity contract: ORU^R01 PRT (UDI DI + serial) and the CSV row are one Device."""
    for _ in range(2):
        _response, ack = post_hl7(client, sample("oru_r01_device_use.hl7"))
        assert ack_segment(ack, "MSA")[1] == "AA"
    response, _bundle = _post(client, "device_first_use", sample("device_first_use.csv"))
    assert response.status_code == 200
    devices = _search(client, f"Device?identifier={UDI_SERIAL}|00643169007222:SN-PMC-778812")
    assert devices["total"] == 1
    device = devices["entry"][0]["resource"]
    assert {i["value"] for i in device["identifier"]} >= {"00643169007222:SN-PMC-778812", "LC-DEV-2026-0101"}
    assert device["extension"][0]["url"] == f"{BASE}/StructureDefinition/pilot-zone-approval"
    assert _search(client, "Patient?identifier=R55601")["total"] == 1
    assert _search(client, "Device?patient=Patient/" + device["patient"]["reference"].split("/")[1])["total"] == 1
