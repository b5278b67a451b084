"""PEX^P07 (adverse events), ORU^R01 (device use) and RDS^O13 (dispenses) through their mappings:
the exact resources, compared with reviewed expected output, and the rules behind them.

Golden files through ``golden.py`` (stable names for temporary ids; ``UPDATE_EXPECTED=1`` to review a change).
"""
from __future__ import annotations

import json

import pytest

from conftest import SAMPLES
from gateway.config import REPO_ROOT
from gateway.hl7v2 import parse_message
from gateway.mapping.engine import MappingSpec
from tests.mapping.golden import TERMINOLOGY, ZONE, assert_matches_expected, stable_resources   # also imported from tests/ingest

SPECS = {name: MappingSpec.from_file(REPO_ROOT / "mappings" / f"{name}.yaml")
         for name in ("pex_p07", "oru_r01", "rds_o13")}
BASE = "https://lecheng-fhir-gateway.org/fhir"

# the sample with a second PEO (injection-site reaction) naming two products: the same drug lot and
# the pen injector, a device (PCR-3 DEV, PCR-9 single use Y)
SECOND_EVENT = ("PEO|10022095^Injection site reaction^MDR|T88.7^Unspecified adverse effect of drug^I10|20260401||||||Y|N|"
                "|F||||注射部位红肿\r"
                "PCR|HNLC-D-0042^度普利尤单抗注射液 300 mg/2 mL (Dupilumab)^HNLC-IMPORT|N|BIO^Biologic^HNLC-CLASS"
                "|||||||||LOT2026A17||||||||H|WT|AW\r"
                "PCR|PEN-300^Prefilled pen injector^HNLC-DEVTYPE||DEV^Device^HNLC-CLASS||20250601|20270531|||Y"
                "|||PEN-LOT-77||||||||I|N\r").encode()


def two_event_report() -> bytes:
    return (SAMPLES / "pex_p07_adverse_event.hl7").read_bytes().rstrip(b"\r\n") + b"\r" + SECOND_EVENT


def _run(spec: str, raw: bytes):
    message = parse_message(raw)
    return SPECS[spec].run(message, TERMINOLOGY, ZONE)


def _mapped(spec: str, raw: bytes) -> list[dict]:
    return stable_resources(_run(spec, raw))


def _one(mapped: list[dict], key: str) -> dict:
    found = [r["resource"] for r in mapped if r["key"] == key]
    assert len(found) == 1, key
    return found[0]


@pytest.mark.parametrize("spec, name", [("pex_p07", "pex_p07_adverse_event"), ("oru_r01", "oru_r01_device_use"),
                                        ("rds_o13", "rds_o13_dispense"), ("pex_p07", "pex_p07_two_events")])
def test_mapping_matches_reviewed_output(spec, name):
    raw = two_event_report() if name == "pex_p07_two_events" else (SAMPLES / f"{name}.hl7").read_bytes()
    assert_matches_expected(_mapped(spec, raw), name)


# ------------------------------------------------------------------ PEX^P07

def test_adverse_event_fields_from_pes_and_peo():
    event = _one(_mapped("pex_p07", (SAMPLES / "pex_p07_adverse_event.hl7").read_bytes()), "adverse_event")
    assert event["identifier"] == {"system": f"{BASE}/sid/BOAO_HIS/adverse-event", "value": "AE-BSH-2026-0031"}
    assert event["date"] == "2026-04-01"                              # PEO-3 onset
    assert event["detected"] == "2026-04-01T16:00:00+08:00"           # PES-9 sender aware
    assert event["recordedDate"] == "2026-04-02"                      # PES-10 report date
    assert [c["system"] for c in event["event"]["coding"]] == ["http://terminology.hl7.org/CodeSystem/mdr",
                                                               "http://hl7.org/fhir/sid/icd-10"]
    assert event["seriousness"]["coding"][0]["code"] == "Non-serious"  # PEO-9 N
    assert [c["code"] for c in event["outcome"]["coding"]] == ["recovering", "R", "R"]   # PEO-12 R, PEO-11 R
    assert event["extension"] == [{"url": f"{BASE}/StructureDefinition/adverse-event-expected", "valueBoolean": True}]
    suspect = event["suspectEntity"][0]
    assert suspect["instance"]["reference"].startswith("suspect_medication#")
    assert suspect["causality"][0]["assessment"]["coding"][1] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0250", "code": "S", "display": "Somewhat probable"}


def test_two_peo_groups_make_two_events_each_with_its_own_products():
    mapped = _mapped("pex_p07", two_event_report())
    events = [r["resource"] for r in mapped if r["key"] == "adverse_event"]
    assert [e["identifier"]["value"] for e in events] == ["AE-BSH-2026-0031", "AE-BSH-2026-0031/2"]
    assert [len(e["suspectEntity"]) for e in events] == [1, 2]
    medications = [r for r in mapped if r["key"] == "suspect_medication"]
    devices = [r for r in mapped if r["key"] == "suspect_device"]
    # the same drug lot in both events is one Medication; the pen is a Device
    assert len(medications) == 1 and len(devices) == 1
    med_ref = f"suspect_medication#{mapped.index(medications[0])}"
    dev_ref = f"suspect_device#{mapped.index(devices[0])}"
    assert [s["instance"]["reference"] for e in events for s in e["suspectEntity"]] == [med_ref, med_ref, dev_ref]
    second = events[1]
    assert second["seriousness"]["coding"][0]["code"] == "Serious"       # PEO-9 Y
    assert second["outcome"]["coding"][0]["code"] == "resolved"          # PEO-12 F
    assert second["suspectEntity"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] == "WT"
    assert second["suspectEntity"][0]["causality"][0]["method"]["coding"][0]["code"] == "AW"
    device = devices[0]["resource"]
    assert (device["lotNumber"], device["manufactureDate"], device["expirationDate"]) == (
        "PEN-LOT-77", "2025-06-01", "2027-05-31")


def test_unknown_outcome_code_is_an_error_naming_the_field():
    raw = (SAMPLES / "pex_p07_adverse_event.hl7").read_bytes().replace(b"|A|N|Y|R|R|", b"|A|N|Y|R|Q|")
    result = _run("pex_p07", raw)
    assert [(e.segment, e.field, e.code) for e in result.errors] == [("PEO", 12, "103")]


# ------------------------------------------------------------------ ORU^R01

def test_device_follows_the_identity_contract():
    device = next(r for r in _mapped("oru_r01", (SAMPLES / "oru_r01_device_use.hl7").read_bytes())
                  if r["key"] == "device")
    assert device["identity"] == [[f"{BASE}/sid/device-udi-serial", "00643169007222:SN-PMC-778812"],
                                  [f"{BASE}/sid/device/BOAO_RUIJIN_HOSPITAL", "BRJ-DEV-7781"]]
    assert device["resource"]["udiCarrier"] == [{
        "deviceIdentifier": "00643169007222", "issuer": "http://hl7.org/fhir/NamingSystem/gs1-di",
        "jurisdiction": "https://udi.nmpa.gov.cn",
        "carrierHRF": "(01)00643169007222(11)250911(17)270910(10)LOT-MC2A-0911(21)SN-PMC-778812"}]


def test_obx18_equipment_becomes_a_device_the_observation_names():
    raw = (SAMPLES / "oru_r01_device_use.hl7").read_bytes().replace(
        b"|F|||20260320110000", b"|F|||20260320110000||||PROG-0042^BOAO_RUIJIN_HOSPITAL").split(b"PRT|")[0]
    mapped = _mapped("oru_r01", raw)
    equipment = next(r for r in mapped if r["key"] == "equipment")
    assert equipment["resource"]["identifier"] == [{"system": f"{BASE}/sid/device/BOAO_RUIJIN_HOSPITAL",
                                                    "value": "PROG-0042"}]
    assert _one(mapped, "observation")["device"] == {"reference": f"equipment#{mapped.index(equipment)}"}
    assert not [r for r in mapped if r["key"] == "device"]


# ------------------------------------------------------------------ RDS^O13

def test_dispense_points_at_its_order_by_placer_number_and_completes_it():
    mapped = _mapped("rds_o13", (SAMPLES / "rds_o13_dispense.hl7").read_bytes())
    dispense = _one(mapped, "dispense")
    assert dispense["authorizingPrescription"] == [{"type": "MedicationRequest", "identifier": {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]},
        "system": f"{BASE}/sid/BOAO_HIS/placer", "value": "BSH-RX-0001"}}]
    order = next(r for r in mapped if r["key"] == "order")
    assert order["resource"]["status"] == "completed"
    medication = _one(mapped, "medication")
    assert medication["batch"] == {"lotNumber": "LOT2026A17", "expirationDate": "2027-12-31"}


def test_a_dispense_that_does_not_complete_the_order_leaves_its_status_alone():
    raw = (SAMPLES / "rds_o13_dispense.hl7").read_bytes().replace(b"|PH017-DISP-0042^EPC_PHARM||CM|",
                                                                    b"|PH017-DISP-0042^EPC_PHARM||IP|")
    keys = [r["key"] for r in _mapped("rds_o13", raw)]
    assert "order" not in keys and "dispense" in keys


# ------------------------------------------------------------------ the engine features they use

NESTED = {
    "name": "nested", "message_types": ["ZZZ^Z01"],
    "groups": {"outer": {"start": "ZXA", "members": ["ZXB", "ZXC"]}, "inner": {"start": "ZXB", "members": ["ZXC"]}},
    "resources": [
        {"key": "thing", "type": "Basic", "for_each": "inner", "when": {"not": {"present": "ZXB-3"}},
         "required": ["identifier"],
         "elements": {"identifier[]": {"from": "ZXB-1", "as": "entity_identifier"}}},
        {"key": "report", "type": "Basic", "for_each": "outer",
         "elements": {
             "identifier[]": {"from": "ZXA-1", "as": "entity_identifier"},
             "extension[]": {"for_each": "inner", "elements": {
                 "url": {"from": "ZXB-2"}, "valueString": {"from": "ZXC-1"},
                 "valueReference": {"ref": "thing"}}}}},
    ]}


def test_rows_for_each_nested_group_with_refs_to_the_resource_of_the_same_group():
    spec = MappingSpec.from_dict(NESTED)
    raw = ("MSH|^~\\&|APP|FAC|GW|EPC|20260401||ZZZ^Z01|1|P|2.5\r"
           "ZXA|R1\rZXB|T1|u1\rZXC|first\rZXB|T2|u2|skip\r"
           "ZXA|R2\rZXB|T3|u3\rZXC|third\r").encode()
    result = spec.run(parse_message(raw), TERMINOLOGY, ZONE)
    things = {m.temp_id: m.resource["identifier"][0]["value"] for m in result.resources if m.key == "thing"}
    assert sorted(things.values()) == ["T1", "T3"]              # T2's ZXB-3 is present: not made
    reports = [m.resource for m in result.resources if m.key == "report"]
    rows = [[(x["url"], x.get("valueString"), things.get(x.get("valueReference", {}).get("reference")))
             for x in r["extension"]] for r in reports]
    assert rows == [[("u1", "first", "T1"), ("u2", None, None)], [("u3", "third", "T3")]]


def test_a_for_each_row_naming_an_unknown_group_fails_when_loaded():
    broken = json.loads(json.dumps(NESTED))
    broken["resources"][1]["elements"]["extension[]"]["for_each"] = "nowhere"
    with pytest.raises(ValueError, match="unknown group 'nowhere'"):
        MappingSpec.from_dict(broken)
