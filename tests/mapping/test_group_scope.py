"""A group reads its own segments and those of the groups that enclose it, never a sibling's
(issue 12): mapping-level reproductions of orders and devices that took another group's data."""
from __future__ import annotations

from conftest import DATA
from gateway.hl7v2 import parse_message
from golden import MAPPINGS, TERMINOLOGY, ZONE

GROUPS = DATA / "groups"
APPROVAL = "https://lecheng-fhir-gateway.org/fhir/StructureDefinition/pilot-zone-approval"


def _mapped(name: str):
    message = parse_message((GROUPS / name).read_bytes())
    result = MAPPINGS.for_message(message.message_type).run(message, TERMINOLOGY, ZONE)
    assert result.errors == []
    return result.resources


def _order(resources, number: str):
    return next(m for m in resources if m.type == "MedicationRequest"
                and any(i["value"] == number for i in m.resource["identifier"]))


def test_a_bare_cancel_after_a_full_order_is_status_only_and_carries_nothing_of_the_other_order():
    resources = _mapped("rde_o11_new_7001_then_bare_cancel_7002.hl7")
    cancel = _order(resources, "QH-ORD-7002")
    assert cancel.status_only
    assert cancel.resource == {
        "resourceType": "MedicationRequest",
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "PLAC"}]},
                        "system": "https://lecheng-fhir-gateway.org/fhir/sid/BOAO_HIS/placer",
                        "value": "QH-ORD-7002"}],
        "status": "cancelled", "intent": "order",
        "subject": cancel.resource["subject"],              # the message's patient and visit (message level)
        "encounter": cancel.resource["encounter"],
        "authoredOn": "2026-04-11T09:56:00+08:00"}
    patient = next(m for m in resources if m.type == "Patient")
    assert cancel.resource["subject"] == {"reference": patient.temp_id}


def test_the_full_order_before_the_bare_cancel_keeps_its_own_data():
    order = _order(_mapped("rde_o11_new_7001_then_bare_cancel_7002.hl7"), "QH-ORD-7001").resource
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "H20051889"
    assert order["dosageInstruction"][0]["route"]["coding"][0]["code"] == "PO"
    assert order["dosageInstruction"][0]["timing"]["code"]["coding"][0]["code"] == "QD"
    assert order["dispenseRequest"]["quantity"]["value"] == 28


def test_an_order_group_without_rxr_has_no_route_not_the_first_groups():
    resources = _mapped("rde_o11_three_orders_dc_without_route.hl7")
    routes = {number: [d.get("route", {}).get("coding", [{}])[0].get("code")
                       for d in _order(resources, number).resource.get("dosageInstruction", [])]
              for number in ("QH-ORD-8001", "QH-ORD-8002", "QH-ORD-8003")}
    assert routes["QH-ORD-8001"] == ["PO"] and routes["QH-ORD-8002"] == ["SL"]
    assert routes["QH-ORD-8003"] in ([], [None])
    discontinued = _order(resources, "QH-ORD-8003").resource
    assert "timing" not in (discontinued.get("dosageInstruction") or [{}])[0]     # no TQ1 of its own either


def test_a_zlc_after_the_drug_pcr_is_not_the_device_pcrs_approval():
    resources = _mapped("pex_p07_zlc_after_drug_then_device.hl7")
    device = next(m for m in resources if m.type == "Device").resource
    assert "extension" not in device
    assert device["type"]["coding"][0]["code"] == "PUMP-200"


def test_an_imported_device_after_another_pcrs_zlc_has_no_approval_of_its_own():
    device = next(m for m in _mapped("pex_p07_zlc_after_drug_then_imported_device.hl7") if m.type == "Device")
    assert not any(e["url"] == APPROVAL for e in device.resource.get("extension", []))


def test_a_zlc_inside_the_device_pcr_is_its_approval():
    raw = (GROUPS / "pex_p07_zlc_after_drug_then_imported_device.hl7").read_bytes().rstrip(b"\r")
    zlc = b"ZLC|1|LC2026-D-0007|FIRST_USE|20260301|HNMPA^Hainan Medical Products Administration"
    message = parse_message(raw + b"\r" + zlc + b"\r")
    result = MAPPINGS.for_message("PEX^P07").run(message, TERMINOLOGY, ZONE)
    device = next(m for m in result.resources if m.type == "Device").resource
    approval = next(e for e in device["extension"] if e["url"] == APPROVAL)
    assert approval["extension"][0]["valueIdentifier"]["value"] == "LC2026-D-0007"


def test_message_level_segments_stay_reachable_from_every_group():
    resources = _mapped("rde_o11_three_orders_dc_without_route.hl7")
    encounter = next(m for m in resources if m.type == "Encounter")
    patient = next(m for m in resources if m.type == "Patient")
    for number in ("QH-ORD-8001", "QH-ORD-8002", "QH-ORD-8003"):
        order = _order(resources, number).resource
        assert order["subject"] == {"reference": patient.temp_id}
        assert order["encounter"] == {"reference": encounter.temp_id}


# ------------------------------------------------------------------ documents: the same rule for items

from gateway.mapping.engine import MappingSpec  # noqa: E402

_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<Prescription xmlns="urn:hainan:his:rx:1" id="SYH-EP-1">
  <Items>
    <Item line="1"><Drug approval="H20180052"/><Route>INH</Route><Note>first</Note></Item>
    <Item line="2"><Drug approval="H20030233"/></Item>
  </Items>
</Prescription>"""


def _document_mapping(source: str, select: str, route_path: str, **document) -> MappingSpec:
    return MappingSpec.from_dict({
        "name": f"scope_{source}", "source": source,
        "document": {"sender": "/rx:Prescription/@id" if source == "xml" else "$.prescriptionNo", **document},
        "groups": {"item": {"select": select}},
        "resources": [{"key": "order", "type": "MedicationRequest", "for_each": "item", "elements": {
            "status": {"value": "active"}, "intent": {"value": "order"},
            "note[0].text": {"from": route_path}}}]}, where="scope.yaml")


def _notes(spec: MappingSpec, raw: bytes) -> list[list[str]]:
    unit = spec.reader.read(raw).units[0]
    result = spec.run(unit, TERMINOLOGY, ZONE)
    return [[n["text"] for n in m.resource.get("note", [])] for m in result.resources]


def test_an_xml_item_does_not_read_a_siblings_element_through_an_absolute_path():
    spec = _document_mapping("xml", "rx:Items/rx:Item", "/rx:Prescription/rx:Items/rx:Item/rx:Route",
                             namespaces={"rx": "urn:hainan:his:rx:1"})
    assert _notes(spec, _XML) == [["INH"], []]


def test_an_xml_item_does_not_read_a_sibling_through_parent_steps():
    spec = _document_mapping("xml", "rx:Items/rx:Item", "../rx:Item[1]/rx:Note",
                             namespaces={"rx": "urn:hainan:his:rx:1"})
    assert _notes(spec, _XML) == [["first"], []]


def test_an_xml_item_still_reads_the_document_level_values():
    spec = _document_mapping("xml", "rx:Items/rx:Item", "/rx:Prescription/@id",
                             namespaces={"rx": "urn:hainan:his:rx:1"})
    assert _notes(spec, _XML) == [["SYH-EP-1"], ["SYH-EP-1"]]


_JSON = b'{"prescriptionNo": "OC-1", "items": [{"route": "PO", "note": "first"}, {"drug": "H20030233"}]}'


def test_a_json_item_does_not_read_a_siblings_value_through_an_absolute_path():
    spec = _document_mapping("json", "items[*]", "$.items[0].route")
    assert _notes(spec, _JSON) == [["PO"], []]
    assert _notes(_document_mapping("json", "items[*]", "$.items[*].note"), _JSON) == [["first"], []]
    assert _notes(_document_mapping("json", "items[*]", "$.prescriptionNo"), _JSON) == [["OC-1"], ["OC-1"]]
