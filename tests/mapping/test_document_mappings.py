"""Hospitals' own XML, CSV and JSON exports through mapping files: the exact resources, compared
with reviewed expected output, and every problem located where it is in the document.

Golden files through ``golden.py`` (stable names for temporary ids; ``UPDATE_EXPECTED=1`` to review a change).
"""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import SAMPLES
from gateway.config import REPO_ROOT
from gateway.mapping.documents import DocumentUnit
from gateway.mapping.engine import DocumentLocation, DocumentProblem, MappingError, MappingSpec
from golden import MAPPINGS, TERMINOLOGY, ZONE, assert_matches_expected, stable_resources

BASE = "https://lecheng-fhir-gateway.org/fhir"


def _read(mapping: str, raw: bytes):
    return MAPPINGS.by_name[mapping].reader.read(raw)


def _mapped(mapping: str, unit: DocumentUnit) -> list[dict]:
    return stable_resources(MAPPINGS.by_name[mapping].run(unit, TERMINOLOGY, ZONE), unit=unit.label)


def _map_sample(mapping: str, sample: str) -> list[list[dict]]:
    """Every unit of a sample (one document, or one per CSV row), mapped."""
    read = _read(mapping, (SAMPLES / sample).read_bytes())
    assert read.problems == []
    assert all(unit.problems == [] for unit in read.units)
    return [_mapped(mapping, unit) for unit in read.units]


CASES = [("hospital_prescription", "hospital_prescription.xml"), ("device_first_use", "device_first_use.csv"),
         ("online_clinic_prescription", "online_clinic_prescription.json"),
         ("device_register_gb18030", "device_register_gb18030.csv")]


@pytest.mark.parametrize("mapping,sample", CASES, ids=[c[1] for c in CASES])
def test_mapping_matches_reviewed_output(mapping, sample):
    # one flat list (like the HL7 expected files); "unit" says which document or CSV row made it
    actual = [resource for unit in _map_sample(mapping, sample) for resource in unit]
    assert_matches_expected(actual, sample.rsplit(".", 1)[0], key_fields=("unit", "key"))


def test_a_second_hospital_layout_is_one_yaml_file_and_gives_the_same_fhir():
    first = _map_sample("hospital_prescription", "hospital_prescription.xml")
    second = _map_sample("hospital_prescription_erx2", "hospital_prescription_erx2.xml")
    assert second == first
    assert (REPO_ROOT / "mappings" / "hospital_prescription_erx2_xml.yaml").exists()


def test_csv_patient_has_the_identifier_the_hl7_pid_gives():
    """PID-3 'R55601^^^BOAO_RUIJIN_HOSPITAL^MR' (ORU sample) and the CSV row name one Patient."""
    patient = next(r for r in _map_sample("device_first_use", "device_first_use.csv")[0] if r["key"] == "patient")
    assert patient["identity"] == [[f"{BASE}/sid/BOAO_RUIJIN_HOSPITAL/mr", "R55601"]]
    assert patient["resource"]["identifier"][0]["type"]["coding"][0]["code"] == "MR"


def test_device_identity_contract_udi_serial_else_report():
    rows = _map_sample("device_first_use", "device_first_use.csv")
    with_serial = next(r for r in rows[0] if r["key"] == "device")
    assert with_serial["identity"] == [[f"{BASE}/sid/device-udi-serial", "00643169007222:SN-PMC-778812"]]
    assert with_serial["resource"]["udiCarrier"][0]["issuer"] == "http://hl7.org/fhir/NamingSystem/gs1-di"
    without_serial = next(r for r in rows[1] if r["key"] == "device")
    assert without_serial["identity"] == [[f"{BASE}/sid/BOAO_SUPER_HOSPITAL/device-first-use-report",
                                           "LC-DEV-2026-0102"]]
    # 04046963821004 fails the GS1 check digit: not a GTIN, so no issuer is claimed for it
    assert without_serial["resource"]["udiCarrier"] == [{"deviceIdentifier": "04046963821004",
                                                          "jurisdiction": "https://udi.nmpa.gov.cn"}]


def test_the_same_device_from_hl7_prt_and_csv_has_the_same_identity():
    from gateway.hl7v2 import parse_message
    message = parse_message((SAMPLES / "oru_r01_device_use.hl7").read_bytes())
    hl7 = MAPPINGS.for_message(message.message_type).run(message, TERMINOLOGY, ZONE)
    hl7_device = next(m for m in hl7.resources if m.key == "device")
    csv_device = next(r for r in _map_sample("device_first_use", "device_first_use.csv")[0] if r["key"] == "device")
    assert tuple(csv_device["identity"][0]) in hl7_device.identity
    assert hl7_device.resource["udiCarrier"][0]["issuer"] == csv_device["resource"]["udiCarrier"][0]["issuer"]


# ---------------------------------------------------------------- problems, located

def test_malformed_xml_names_line_and_column():
    read = _read("hospital_prescription", b'<?xml version="1.0"?>\n<Prescription xmlns="urn:hainan:his:rx:1">\n'
                                          b'  <Hospital code="X">A</Hospitl>\n</Prescription>')
    assert read.units == []
    (problem,) = read.problems
    assert problem.code == "structure"
    assert problem.location == DocumentLocation("line 3, column 33")
    assert "Opening and ending tag mismatch: Hospital" in problem.text


def test_xml_of_another_layout_is_refused_by_its_root():
    read = _read("hospital_prescription", (SAMPLES / "hospital_prescription_erx2.xml").read_bytes())
    (problem,) = read.problems
    assert problem.location == DocumentLocation("/ElectronicPrescription")
    assert "{http://www.hainan-his.cn/schema/erx/2.0}ElectronicPrescription" in problem.text


def test_missing_required_xml_value_is_named_by_xpath_and_line():
    raw = (SAMPLES / "hospital_prescription.xml").read_bytes().replace(b'<Dose value="2" unit="\xe5\x90\xb8"/>', b"")
    (unit,) = _read("hospital_prescription", raw).units
    assert [(str(p.location), p.text, p.code) for p in unit.problems] == [
        ("/rx:Prescription/rx:Items/rx:Item/rx:Dose/@value (line 11)", "required value missing", "required")]


@pytest.mark.parametrize("entities,use", [('<!ENTITY xxe SYSTEM "file://{secret}">', "&xxe;"),
                                          ('<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">', "&b;")],
                         ids=["external-entity", "entity-expansion"])
def test_xml_declaring_entities_is_refused_and_nothing_is_fetched(tmp_path, entities, use):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    raw = (f'<?xml version="1.0"?>\n<!DOCTYPE p [{entities.format(secret=secret)}]>\n'
           '<Prescription xmlns="urn:hainan:his:rx:1" id="X-1" issued="2026-03-18">'
           f'<Hospital code="H1">{use}</Hospital></Prescription>').encode()
    read = _read("hospital_prescription", raw)
    assert read.units == []
    assert read.problems == [DocumentProblem("documents that declare entities (<!ENTITY ...>) are not accepted",
                                             DocumentLocation("line 3"), "structure")]


def test_csv_row_missing_a_required_value_names_line_and_column():
    raw = (SAMPLES / "device_first_use.csv").read_bytes().replace(b"04046963821004", b"")
    units = _read("device_first_use", raw).units
    assert [u.problems for u in units] == [[], [DocumentProblem(
        "required value missing", DocumentLocation("line 3, column 'udi_di'"), "required")]]
    assert str(units[1].problems[0].location) + ": " + units[1].problems[0].text == \
        "line 3, column 'udi_di': required value missing"


def test_csv_without_a_required_column_is_refused_at_the_header():
    raw = b"report_id,hospital,patient_mrn,use_date,lot,serial,device_name,approval_no\nR1,H,M,2026-03-20,L,S,N,A\n"
    read = _read("device_first_use", raw)
    assert read.units == []
    assert read.problems == [DocumentProblem("the header has no such column",
                                             DocumentLocation("line 1, column 'udi_di'"), "required")]


def test_csv_values_are_type_checked_per_row():
    raw = (SAMPLES / "device_first_use.csv").read_bytes().replace(b"2026-03-22", b"22/03/2026")
    units = _read("device_first_use", raw).units
    assert units[1].problems == [DocumentProblem("Not a valid date.",
                                                 DocumentLocation("line 3, column 'use_date'"), "value")]


def test_csv_in_gb18030_is_read_with_the_declared_encoding():
    (rows,) = _map_sample("device_register_gb18030", "device_register_gb18030.csv")
    device = next(r["resource"] for r in rows if r["key"] == "device")
    assert device["deviceName"] == [{"name": "射频微针治疗仪", "type": "user-friendly-name"}]


def test_csv_bytes_that_are_not_the_declared_encoding_are_refused_with_their_line():
    raw = (SAMPLES / "device_first_use.csv").read_bytes() + "R9,H,M,2026-03-20,1,L,S,起搏器,M,US,A\n".encode("gb18030")
    read = _read("device_first_use", raw)
    (problem,) = read.problems
    assert problem.location == DocumentLocation("line 4")
    assert "is not utf-8" in problem.text


def test_json_that_fails_its_schema_is_named_by_json_pointer():
    document = json.loads((SAMPLES / "online_clinic_prescription.json").read_text(encoding="utf-8"))
    del document["items"][1]["dose"]["value"]
    document["items"][0]["line"] = "first"
    del document["patient"]["mrn"]
    (unit,) = _read("online_clinic_prescription", json.dumps(document).encode()).units
    assert sorted((str(p.location), p.text, p.code) for p in unit.problems) == [
        ("/items/0/line", "Not a valid integer.", "value"),
        ("/items/1/dose/value", "required value missing", "required"),
        ("/patient/mrn", "required value missing", "required")]


def test_json_that_is_not_json_names_line_and_column():
    read = _read("online_clinic_prescription", b'{\n  "prescriptionNo": "X",\n  "items": [1,,2]\n}')
    (problem,) = read.problems
    assert problem.location == DocumentLocation("line 3, column 15")
    assert problem.text.startswith("not JSON")


def test_a_converter_error_is_located_in_the_document():
    raw = (SAMPLES / "hospital_prescription.xml").read_bytes().replace(b"<Gender>F</Gender>", b"<Gender>Q</Gender>")
    (unit,) = _read("hospital_prescription", raw).units
    result = MAPPINGS.by_name["hospital_prescription"].run(unit, TERMINOLOGY, ZONE)
    (error,) = result.errors
    assert error.code == "code-invalid"
    assert str(error.location) == "/rx:Prescription/rx:Patient/rx:Gender (line 6)"
    assert error.text == "Patient.gender: 'Q' is not a known value of HL7 table 0001"


# ---------------------------------------------------------------- mapping files checked when loaded

def _spec(text: str) -> MappingSpec:
    return MappingSpec.from_dict(yaml.safe_load(text), where="test.yaml")


def test_a_csv_column_the_mapping_did_not_declare_is_a_load_error():
    with pytest.raises(MappingError, match="column 'udi' is not declared"):
        _spec("""
name: t
source: csv
document: {sender: h, fields: {h: {}}}
resources: [{key: d, type: Device, elements: {lotNumber: {from: udi}}}]
""")


def test_a_bad_xpath_is_a_load_error():
    with pytest.raises(MappingError, match="is not an XPath"):
        _spec("""
name: t
source: xml
document: {sender: "@code", namespaces: {rx: "urn:x"}}
resources: [{key: d, type: Device, elements: {lotNumber: {from: "rx:Lot[["}}}]
""")


def test_a_document_mapping_must_name_its_sender():
    with pytest.raises(MappingError, match="needs 'document: {sender: <path>}'"):
        _spec("""
name: t
source: json
resources: [{key: d, type: Device, elements: {lotNumber: {from: lot}}}]
""")


def test_nested_rows_and_refs_work_on_documents_as_on_hl7():
    """The engine's general features on a JSON source: a nested ``for_each`` row (one item per inner
    group inside the resource's group) and a ``ref`` to the resource made for the same item."""
    spec = _spec("""
name: t
source: json
document:
  sender: site
  fields: {site: {required: true}, "reports[*].id": {required: true}, "reports[*].devices[*].di": {}}
groups:
  report: {select: "reports[*]"}
  device: {select: "reports[*].devices[*]"}       # found from the root, like every group
resources:
  - key: device
    type: Device
    for_each: device
    elements:
      identifier: {fields: {value: di, authority: $.site}, as: identifier, args: {kind: EI}}
  - key: event
    type: AdverseEvent
    for_each: report
    elements:
      identifier: {fields: {value: id, authority: $.site}, as: identifier, args: {kind: AE}}
      suspectEntity[]:
        for_each: device
        elements:
          instance: {ref: device}
""")
    raw = json.dumps({"site": "H1", "reports": [{"id": "R1", "devices": [{"di": "D1"}, {"di": "D2"}]},
                                                {"id": "R2", "devices": [{"di": "D3"}]}]}).encode()
    (unit,) = spec.reader.read(raw).units
    result = spec.run(unit, TERMINOLOGY, ZONE)
    devices = {m.temp_id: m.resource["identifier"][0]["value"] for m in result.resources if m.type == "Device"}
    events = [m.resource for m in result.resources if m.type == "AdverseEvent"]
    assert [[devices[s["instance"]["reference"]] for s in e["suspectEntity"]] for e in events] == [["D1", "D2"], ["D3"]]
    assert [e["identifier"]["system"] for e in events] == [f"{BASE}/sid/H1/adverse-event"] * 2   # 0..1 in R4


def test_conditions_read_document_paths():
    """``present``, ``when: {field, in}`` and ``when: {absent}`` on CSV columns, compiled when loaded."""
    spec = _spec("""
name: t
source: csv
document: {sender: h, fields: {h: {}, kind: {}, lot: {}, serial: {}}}
resources:
  - key: d
    type: Device
    present: [lot]
    elements:
      lotNumber: {from: lot}
      serialNumber: {from: serial, when: {field: kind, in: [SERIALISED]}}
      status: [{value: inactive, when: {absent: serial}}, {value: active}]
""")
    units = spec.reader.read(b"h,kind,lot,serial\nH,SERIALISED,L1,S1\nH,BULK,L2,S2\nH,SERIALISED,,S3\nH,BULK,L4,\n").units
    made = [[m.resource for m in spec.run(unit, TERMINOLOGY, ZONE).resources] for unit in units]
    assert made == [[{"resourceType": "Device", "lotNumber": "L1", "serialNumber": "S1", "status": "active"}],
                    [{"resourceType": "Device", "lotNumber": "L2", "status": "active"}],
                    [],
                    [{"resourceType": "Device", "lotNumber": "L4", "status": "inactive"}]]


def test_a_condition_naming_an_undeclared_column_is_a_load_error():
    with pytest.raises(MappingError, match="condition: column 'kind' is not declared"):
        _spec("""
name: t
source: csv
document: {sender: h, fields: {h: {}}}
resources: [{key: d, type: Device, elements: {status: {value: active, when: {field: kind, in: [X]}}}}]
""")
