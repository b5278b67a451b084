"""RDE samples through the mapping: the exact resources, compared with reviewed expected output
(``golden.py``: stable names for temporary ids; ``UPDATE_EXPECTED=1`` to review a change)."""
from __future__ import annotations

import pytest

from conftest import EXTERNAL, SAMPLES
from gateway.hl7v2 import parse_message
from golden import MAPPINGS, TERMINOLOGY, ZONE, assert_matches_expected, stable_resources


def _mapped(path) -> list[dict]:
    message = parse_message(path.read_bytes())
    return stable_resources(MAPPINGS.for_message(message.message_type).run(message, TERMINOLOGY, ZONE))


@pytest.mark.parametrize("path", [SAMPLES / "rde_o11_new_imported.hl7", SAMPLES / "rde_o11_two_orders_gb18030.hl7",
                                  SAMPLES / "rde_o11_cancel.hl7", EXTERNAL / "RDE-O11-02.hl7"],
                         ids=lambda p: p.name)
def test_mapping_matches_reviewed_output(path):
    assert_matches_expected(_mapped(path), path.stem)


def test_new_imported_order_fields():
    order = next(r["resource"] for r in _mapped(SAMPLES / "rde_o11_new_imported.hl7") if r["key"] == "order")
    assert order["status"] == "active" and order["intent"] == "order"
    assert order["authoredOn"] == "2026-03-15T09:25:00+08:00"
    assert order["dosageInstruction"][0]["text"] == "首剂 600 mg，之后每两周 300 mg & 皮下注射"  # \T\ -> &
    assert order["dosageInstruction"][0]["timing"]["repeat"] == {
        "frequency": 1, "period": 2, "periodUnit": "wk",
        "boundsPeriod": {"start": "2026-03-15T09:00:00+08:00", "end": "2026-04-26T09:00:00+08:00"}}
    assert order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"] == {
        "value": 300, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"}
    assert order["dispenseRequest"]["quantity"] == {
        "value": 6, "unit": "prefilled syringe",
        "system": "https://lecheng-fhir-gateway.org/fhir/CodeSystem/hnlc-unit", "code": "PFS"}
    assert order["dispenseRequest"]["numberOfRepeatsAllowed"] == 2
    assert order["reasonCode"][0]["coding"][0] == {"system": "http://hl7.org/fhir/sid/icd-10", "code": "L20.9",
                                                   "display": "特应性皮炎 Atopic dermatitis"}
    approval = order["extension"][0]
    assert approval["url"] == "https://lecheng-fhir-gateway.org/fhir/StructureDefinition/pilot-zone-approval"
    assert approval["extension"][0]["valueIdentifier"]["value"] == "LC2026-A-0042"


def test_resident_id_keeps_its_own_system_and_patient_key_is_the_mrn():
    patient = next(r for r in _mapped(SAMPLES / "rde_o11_new_imported.hl7") if r["key"] == "patient")
    systems = [i["system"] for i in patient["resource"]["identifier"]]
    assert "https://lecheng-fhir-gateway.org/fhir/sid/cn-resident-id" in systems
    assert patient["identity"] == [["https://lecheng-fhir-gateway.org/fhir/sid/BOAO_SUPER_HOSPITAL/mr", "H0012345"]]


def test_old_style_rxe1_timing_in_v24():
    orders = [r["resource"] for r in _mapped(SAMPLES / "rde_o11_two_orders_gb18030.hl7") if r["key"] == "order"]
    assert [o["dosageInstruction"][0]["timing"]["repeat"]["frequency"] for o in orders] == [1, 2]
    assert orders[0]["dosageInstruction"][0]["timing"]["repeat"]["boundsPeriod"] == {"start": "2026-03-16"}


def test_two_orders_by_one_doctor_make_one_practitioner():
    keys = [r["key"] for r in _mapped(SAMPLES / "rde_o11_two_orders_gb18030.hl7")]
    assert keys.count("requester") == 1 and keys.count("order") == 2


def test_identifier_without_authority_is_dropped_not_systemless():
    raw = (SAMPLES / "rde_o11_new_imported.hl7").read_bytes().replace(
        b"H0012345^^^BOAO_SUPER_HOSPITAL^MR~", b"H0012345~")
    message = parse_message(raw)
    result = MAPPINGS.for_message("RDE^O11").run(message, TERMINOLOGY, ZONE)
    patient = next(m for m in result.resources if m.key == "patient")
    assert all(i.get("system") for i in patient.resource["identifier"])
    assert any("no assigning authority" in w for w in result.warnings)


def test_explicit_null_marks_the_element_for_deletion_and_empty_leaves_it():
    header = b"MSH|^~\\&|BOAO_HIS|BOAO_SUPER_HOSPITAL|GW|EPC|20260316080000||RDE^O11^RDE_O11|N1|P|2.5\r"
    body = b"PID|1||H1^^^BOAO_SUPER_HOSPITAL^MR\rORC|XO|RX-9^BOAO_HIS\rRXE||D1^Drug^HNLC-IMPORT|1||mg^mg^UCUM||||||||||||||||%s\r"
    nulled = MAPPINGS.for_message("RDE^O11").run(parse_message(header + body % b'""'), TERMINOLOGY, ZONE)
    empty = MAPPINGS.for_message("RDE^O11").run(parse_message(header + body % b""), TERMINOLOGY, ZONE)
    order_nulled = next(m for m in nulled.resources if m.key == "order")
    order_empty = next(m for m in empty.resources if m.key == "order")
    assert order_nulled.deletions == ["note"] and "note" not in order_nulled.resource
    assert order_empty.deletions == []
