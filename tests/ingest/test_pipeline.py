"""HL7 v2 in over HTTP, ACK out, resources stored: the core slice end to end."""
from __future__ import annotations

import pytest

from conftest import EXTERNAL, ack_segment, post_hl7, sample


PID = "PID|1||H0012345^^^BOAO_SUPER_HOSPITAL^MR||王^小明^^^^^L||19900101|M\r".encode()


def _search(client, query: str) -> dict:
    response = client.get(f"/fhir/{query}")
    assert response.status_code == 200, response.data
    return response.get_json()


def test_new_imported_order_is_accepted_and_searchable(client):
    response, ack = post_hl7(client, sample("rde_o11_new_imported.hl7"))
    assert response.status_code == 200
    assert ack_segment(ack, "MSA")[1:3] == ["AA", "BSH20260315000001"]
    bundle = _search(client, "MedicationRequest?identifier=BSH-RX-0001")
    assert bundle["total"] == 1
    order = bundle["entry"][0]["resource"]
    assert order["status"] == "active"
    assert order["meta"]["source"] == "urn:hl7v2:BOAO_SUPER_HOSPITAL:BSH20260315000001"
    patient = client.get(f"/fhir/{order['subject']['reference']}").get_json()
    assert patient["name"][0]["text"] == "王小明"


def test_ack_swaps_sender_and_receiver(client):
    _response, ack = post_hl7(client, sample("rde_o11_new_imported.hl7"))
    msh = ack_segment(ack, "MSH")
    assert msh[2:6] == ["LECHENG_GW", "HAINAN_EPC", "BOAO_HIS", "BOAO_SUPER_HOSPITAL"]
    assert msh[8].startswith("ACK^O11")


def test_missing_message_type_gets_ar_naming_msh9_and_only_the_log_entry(client, gateway):
    raw = sample("bad_missing_msg_type.hl7")
    _response, ack = post_hl7(client, raw)
    assert ack_segment(ack, "MSA")[1] == "AR"
    err = ack_segment(ack, "ERR")
    assert err[2].startswith("MSH^1^9")
    assert err[3].startswith("101^")
    assert _search(client, "Patient")["total"] == 0
    logged = gateway.message_log.recent(1)[0]
    assert logged.raw == raw and logged.status == "rejected"


def test_gb18030_order_makes_two_requests_for_one_patient(client):
    _response, ack = post_hl7(client, sample("rde_o11_two_orders_gb18030.hl7"))
    assert ack_segment(ack, "MSA")[1] == "AA"
    patients = _search(client, "Patient?identifier=P7788")
    assert patients["total"] == 1
    patient = patients["entry"][0]["resource"]
    assert patient["name"][0]["family"] == "李" and patient["name"][0]["given"] == ["娜"]
    orders = _search(client, f"MedicationRequest?patient=Patient/{patient['id']}")
    assert sorted(o["resource"]["identifier"][0]["value"] for o in orders["entry"]) == ["HMU-RX-1001", "HMU-RX-1002"]


def test_cancel_makes_version_two_of_the_same_order(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    _response, ack = post_hl7(client, sample("rde_o11_cancel.hl7"))
    assert ack_segment(ack, "MSA")[1] == "AA"
    orders = _search(client, "MedicationRequest?identifier=BSH-RX-0001")
    assert orders["total"] == 1
    order = orders["entry"][0]["resource"]
    assert order["status"] == "cancelled"
    assert order["meta"]["versionId"] == "2"
    first = client.get(f"/fhir/MedicationRequest/{order['id']}/_history/1").get_json()
    assert first["status"] == "active"
    # what the cancel did not carry stays (the approval extension came only with the new order)
    assert order["extension"][0]["url"].endswith("/pilot-zone-approval")


def test_late_new_order_does_not_reopen_a_cancelled_one(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    post_hl7(client, sample("rde_o11_cancel.hl7"))
    resent = sample("rde_o11_new_imported.hl7").replace(b"BSH20260315000001", b"BSH20260315000001-R")
    _response, ack = post_hl7(client, resent)
    assert ack_segment(ack, "MSA")[1] == "AA"
    assert any("cannot re-open" in "|".join(s) for s in ack if s[0] == "ERR")
    order = _search(client, "MedicationRequest?identifier=BSH-RX-0001")["entry"][0]["resource"]
    assert order["status"] == "cancelled" and order["meta"]["versionId"] == "2"


def test_same_message_twice_changes_nothing_and_gets_the_same_ack(client):
    first, _ = post_hl7(client, sample("rde_o11_new_imported.hl7"))
    second, _ = post_hl7(client, sample("rde_o11_new_imported.hl7"))
    assert first.data == second.data
    order = _search(client, "MedicationRequest?identifier=BSH-RX-0001")["entry"][0]["resource"]
    assert order["meta"]["versionId"] == "1"
    assert _search(client, "Provenance")["total"] == 1


def test_control_id_reused_with_other_content_is_processed_with_a_warning(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    other = sample("rde_o11_cancel.hl7").replace(b"BSH20260316000009", b"BSH20260315000001")
    _response, ack = post_hl7(client, other)
    assert ack_segment(ack, "MSA")[1] == "AA"
    assert any("was used before" in "|".join(s) for s in ack if s[0] == "ERR")
    assert _search(client, "MedicationRequest?status=cancelled")["total"] == 1


def test_status_only_message_for_unknown_order_is_ae(client):
    status_only = (b"MSH|^~\\&|BOAO_HIS|BOAO_SUPER_HOSPITAL|LECHENG_GW|HAINAN_EPC|20260316080000||RDE^O11^RDE_O11|"
                   b"S1|P|2.5\r" + PID + b"ORC|DC|NOPE-1^BOAO_HIS\r")
    _response, ack = post_hl7(client, status_only)
    assert ack_segment(ack, "MSA")[1] == "AE"
    assert "no stored order" in ack_segment(ack, "ERR")[8]


def test_status_only_message_changes_only_the_status(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    status_only = (b"MSH|^~\\&|BOAO_HIS|BOAO_SUPER_HOSPITAL|LECHENG_GW|HAINAN_EPC|20260316080000||RDE^O11^RDE_O11|"
                   b"S2|P|2.5\r" + PID + b"ORC|DC|BSH-RX-0001^BOAO_HIS\r")
    _response, ack = post_hl7(client, status_only)
    assert ack_segment(ack, "MSA")[1] == "AA"
    order = _search(client, "MedicationRequest?identifier=BSH-RX-0001")["entry"][0]["resource"]
    assert order["status"] == "stopped"
    assert order["dosageInstruction"][0]["timing"]["code"]["coding"][0]["code"] == "Q2W"


def test_order_number_reused_for_another_patient_is_ae(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    other_patient = sample("rde_o11_new_imported.hl7").replace(b"BSH20260315000001", b"X2").replace(
        b"H0012345^^^BOAO_SUPER_HOSPITAL^MR", b"H0099999^^^BOAO_SUPER_HOSPITAL^MR")
    _response, ack = post_hl7(client, other_patient)
    assert ack_segment(ack, "MSA")[1] == "AE"
    err = ack_segment(ack, "ERR")
    assert err[3].startswith("205^") and "already belongs to" in err[8]


def test_two_stored_orders_matching_one_message_is_ae(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    filler = (b"MSH|^~\\&|BOAO_HIS|BOAO_SUPER_HOSPITAL|LECHENG_GW|HAINAN_EPC|20260316080000||RDE^O11^RDE_O11|"
              b"F1|P|2.5\r" + PID + b"ORC|NW|BSH-RX-0777^BOAO_HIS|PH-9^EPC_PHARM||||||20260316080000|||D1001^ZHANG^XJ\r"
              b"RXE||HNLC-D-0042^Dupilumab^HNLC-IMPORT|300||mg^mg^UCUM\r"
              b"ZLC|1|LC2026-A-0042|FIRST_USE|20260301|HNMPA^Hainan Medical Products Administration\r")
    assert ack_segment(post_hl7(client, filler)[1], "MSA")[1] == "AA"
    both = filler.replace(b"F1|", b"F2|").replace(b"BSH-RX-0777", b"BSH-RX-0001")
    _response, ack = post_hl7(client, both)
    assert ack_segment(ack, "MSA")[1] == "AE"
    assert "2 different stored resources" in ack_segment(ack, "ERR")[8]


def test_training_message_is_refused_and_not_stored(client):
    training = sample("rde_o11_new_imported.hl7").replace(b"|BSH20260315000001|P|", b"|BSH20260315000001|T|")
    _response, ack = post_hl7(client, training)
    assert ack_segment(ack, "MSA")[1] == "AR"
    assert ack_segment(ack, "ERR")[3].startswith("202^")
    assert _search(client, "MedicationRequest")["total"] == 0


def test_unknown_message_type_is_refused_at_once(client):
    adt = b"MSH|^~\\&|HIS|H1|GW|EPC|20260316080000||ADT^A01^ADT_A01|A1|P|2.5\rPID|1||1^^^H1^MR\r"
    _response, ack = post_hl7(client, adt)
    assert ack_segment(ack, "MSA")[1] == "AR"
    assert ack_segment(ack, "ERR")[3].startswith("200^")


def test_bad_date_is_ae_naming_the_field(client):
    bad = sample("rde_o11_new_imported.hl7").replace(b"|20260315092500|", b"|2026-03-15|")
    _response, ack = post_hl7(client, bad)
    assert ack_segment(ack, "MSA")[1] == "AE"
    err = ack_segment(ack, "ERR")
    assert err[2].startswith("ORC^") and err[2].split("^")[2] == "9"
    assert err[3].startswith("102^")


def test_declared_utf8_with_gb18030_bytes_is_rejected_not_mangled(client):
    raw = sample("rde_o11_two_orders_gb18030.hl7").replace(b"GB 18030-2000", b"UNICODE UTF-8")
    _response, ack = post_hl7(client, raw)
    assert ack_segment(ack, "MSA")[1] in ("AR", "AE")
    assert "MSH^1^18" in ack_segment(ack, "ERR")[2]
    assert _search(client, "Patient")["total"] == 0


def test_external_maximal_messages_are_accepted_with_every_order(client):
    for name, orders in (("RDE-O11-01.hl7", 1), ("RDE-O11-02.hl7", 2)):
        _response, ack = post_hl7(client, (EXTERNAL / name).read_bytes())
        assert ack_segment(ack, "MSA")[1] == "AA", ack
    assert _search(client, "MedicationRequest")["total"] == 2   # 1163422591 (in both) and 1422591
    offsets = _search(client, "MedicationRequest?identifier=1422591")["entry"][0]["resource"]["authoredOn"]
    assert offsets == "2022-11-04T06:27:26+02:15"


def test_provenance_records_message_and_unmapped_segments(client):
    post_hl7(client, (EXTERNAL / "RDE-O11-02.hl7").read_bytes())
    provenance = _search(client, "Provenance")["entry"][0]["resource"]
    assert provenance["entity"][0]["what"]["identifier"]["value"] == "MSG00001"
    kept = provenance["extension"][0]["valueString"]
    assert kept.startswith("SFT|") and "\rIN1|" in kept and "\rGT1|" in kept


def test_http_body_in_any_declared_charset_is_taken_as_bytes(client):
    response = client.post("/hl7v2", data=sample("rde_o11_two_orders_gb18030.hl7"), content_type="text/plain")
    assert response.headers["X-Ack-Code"] == "AA"
    assert "charset=gb18030" in response.headers["Content-Type"]


def test_explicit_null_in_a_change_deletes_the_stored_element(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    original = sample("rde_o11_new_imported.hl7")
    start = original.index(b"\rRXE|") + 1
    end = original.index(b"\r", start)
    fields = original[start:end].split(b"|")
    fields[21] = b'""'                                  # RXE-21 special dispensing instructions -> note
    change = (original[:start] + b"|".join(fields) + original[end:]).replace(
        b"ORC|NW|", b"ORC|XO|").replace(b"BSH20260315000001", b"BSH20260315000002")
    _response, ack = post_hl7(client, change)
    assert ack_segment(ack, "MSA")[1] == "AA"
    order = _search(client, "MedicationRequest?identifier=BSH-RX-0001")["entry"][0]["resource"]
    assert order["meta"]["versionId"] == "2" and "note" not in order
    first = client.get(f"/fhir/MedicationRequest/{order['id']}/_history/1").get_json()
    assert first["note"] == [{"text": "冷链 2-8℃"}]


def test_imported_drug_without_zlc_approval_is_ae_naming_the_approval(client):
    raw = sample("rde_o11_new_imported.hl7")
    without = raw[:raw.index(b"\rZLC|") + 1]
    _response, ack = post_hl7(client, without)
    assert ack_segment(ack, "MSA")[1] == "AE"
    assert "pilot-zone approval" in ack_segment(ack, "ERR")[8]
    assert _search(client, "MedicationRequest")["total"] == 0
    _response, ack = post_hl7(client, raw)
    assert ack_segment(ack, "MSA")[1] == "AA"


def test_stored_resources_name_the_profile_they_conform_to(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    order = _search(client, "MedicationRequest")["entry"][0]["resource"]
    assert order["meta"]["profile"] == [
        "https://lecheng-fhir-gateway.org/fhir/StructureDefinition/lecheng-medicationrequest"]


OMP = ("MSH|^~\\&|BOAO_HIS|BOAO_SUPER_HOSPITAL|LECHENG_GW|HAINAN_EPC|20260320100000||OMP^O09^OMP_O09|OMP1|P|2.5|||AL|NE|CHN|UNICODE UTF-8\r"
       "PID|1||H0012345^^^BOAO_SUPER_HOSPITAL^MR||王^小明^^^^^L||19900101|M\r"
       "ORC|NW|BSH-RX-0501^BOAO_HIS|||||||20260320095500|||D1001^张^学军^^^^^^BOAO_SUPER_HOSPITAL^^^^EI\r"
       "TQ1|1||BID^twice a day^HL70335|||||||\r"
       "RXO|H20203001^阿托伐他汀钙片 20 mg^CN-NMPA|20||mg^milligram^UCUM|||||||28|TAB^tablet^HNLC-UNIT|1\r"
       "RXR|PO^Oral^HL70162\r").encode("utf-8")


def test_omp_o09_pharmacy_order_maps_through_the_same_mapping(client):
    _response, ack = post_hl7(client, OMP)
    assert ack_segment(ack, "MSA")[1] == "AA", ack
    order = _search(client, "MedicationRequest?identifier=BSH-RX-0501")["entry"][0]["resource"]
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "H20203001"
    assert order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 20
    assert order["dispenseRequest"]["quantity"]["value"] == 28
    assert order["dispenseRequest"]["numberOfRepeatsAllowed"] == 1
    assert order["dosageInstruction"][0]["timing"]["repeat"]["frequency"] == 2


def test_renewal_is_a_new_request_pointing_at_the_prior_one(client):
    post_hl7(client, OMP)
    renewal = OMP.replace(b"|OMP1|", b"|OMP2|").replace(b"ORC|NW|BSH-RX-0501^BOAO_HIS||||||",
                                                        b"ORC|RF|BSH-RX-0502^BOAO_HIS||||||BSH-RX-0501^BOAO_HIS")
    _response, ack = post_hl7(client, renewal)
    assert ack_segment(ack, "MSA")[1] == "AA", ack
    prior = _search(client, "MedicationRequest?identifier=BSH-RX-0501")["entry"][0]["resource"]
    renewed = _search(client, "MedicationRequest?identifier=BSH-RX-0502")["entry"][0]["resource"]
    assert renewed["priorPrescription"]["reference"] == f"MedicationRequest/{prior['id']}"
    assert prior["meta"]["versionId"] == "1"


def test_renewal_reusing_the_prior_order_number_is_ae(client):
    post_hl7(client, OMP)
    renewal = OMP.replace(b"|OMP1|", b"|OMP3|").replace(b"ORC|NW|", b"ORC|RF|")
    _response, ack = post_hl7(client, renewal)
    assert ack_segment(ack, "MSA")[1] == "AE"
    assert "renewal" in ack_segment(ack, "ERR")[8]


@pytest.mark.parametrize("name", ["rde_o11_new_imported.hl7", "rde_o11_two_orders_gb18030.hl7"])
def test_every_order_sample_sent_twice_changes_nothing(client, name):
    first, _ = post_hl7(client, sample(name))
    before = {e["resource"]["id"]: e["resource"]["meta"]["versionId"]
              for t in ("MedicationRequest", "Patient", "Practitioner", "Organization", "Provenance")
              for e in _search(client, t)["entry"]}
    second, _ = post_hl7(client, sample(name))
    after = {e["resource"]["id"]: e["resource"]["meta"]["versionId"]
             for t in ("MedicationRequest", "Patient", "Practitioner", "Organization", "Provenance")
             for e in _search(client, t)["entry"]}
    assert first.data == second.data and before == after
