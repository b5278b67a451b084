"""What `fhir-gateway convert` prints is valid R4, whatever the message (issue 14, item 7): checked
with the R4 structure backend (fhirkit, base R4 4.0.1 only, no Lecheng profile), entry by entry."""
from __future__ import annotations

import json

import pytest

from conftest import SAMPLES
from gateway.cli import main
from gateway.validation import ProfileRegistry, Validator

HL7 = sorted(p.name for p in SAMPLES.glob("*.hl7") if not p.name.startswith("bad_"))


@pytest.fixture(scope="module")
def r4():
    return Validator(ProfileRegistry.load("profiles"))


def _convert(capsys, tmp_path, name: str) -> dict:
    document = [] if name.endswith(".hl7") else ["--mapping", name.rsplit(".", 1)[0]]
    main(["--data-dir", str(tmp_path), "convert", *document, str(SAMPLES / name)])
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", HL7)
def test_every_entry_of_a_converted_message_is_valid_r4(capsys, tmp_path, r4, name):
    bundle = _convert(capsys, tmp_path, name)
    errors = [(e["request"], i.diagnostics) for e in bundle["entry"]
              for i in r4.validate(e["resource"], base_only=True) if i.severity in ("fatal", "error")]
    assert errors == []
    assert [i.diagnostics for i in r4.validate(bundle, base_only=True) if i.severity in ("fatal", "error")] == []


def test_a_dispense_completes_its_order_with_a_conditional_patch_of_the_status(capsys, tmp_path):
    bundle = _convert(capsys, tmp_path, "rds_o13_dispense.hl7")
    (patch,) = [e for e in bundle["entry"] if e["request"]["method"] == "PATCH"]
    assert patch["request"]["url"].startswith("MedicationRequest?identifier=")
    assert patch["resource"] == {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "MedicationRequest.status"},
        {"name": "value", "valueCode": "completed"}]}]}
    assert "MedicationRequest" not in [e["resource"]["resourceType"] for e in bundle["entry"]]


# R4 4.0.1 http://terminology.hl7.org/CodeSystem/adverse-event-seriousness (issue 14, item 8)
R4_SERIOUSNESS = {"Serious", "Non-serious", "SeriousResultsInDeath", "SeriousIsLifeThreatening",
                  "SeriousResultsInHospitalization", "SeriousResultsInPersistentOrSignificantDisability",
                  "SeriousResultsInCongenitalAnomalyBirthDefect", "SeriousNeedsMedicalOrSurgicalIntervention"}
# codes of HL7 table 0203 (R4 v2-0203) the gateway may emit; NNxxx is the national-identifier pattern
V2_0203 = {"AN", "BR", "DL", "EI", "FILL", "MR", "PI", "PLAC", "PPN", "PRN", "SS", "VN", "UDI", "SNO"}


@pytest.mark.parametrize("name", HL7 + ["hospital_prescription.xml", "online_clinic_prescription.json"])
def test_seriousness_and_identifier_types_use_r4_codes(capsys, tmp_path, name):
    bundle = _convert(capsys, tmp_path, name)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        for coding in (resource.get("seriousness") or {}).get("coding", []):
            if coding["system"].endswith("/adverse-event-seriousness"):
                assert coding["code"] in R4_SERIOUSNESS
        identifiers = resource.get("identifier")
        for identifier in identifiers if isinstance(identifiers, list) else [identifiers] if identifiers else []:
            for coding in (identifier.get("type") or {}).get("coding", []):
                if coding.get("system") == "http://terminology.hl7.org/CodeSystem/v2-0203":
                    assert coding["code"] in V2_0203 or coding["code"].startswith("NN"), coding
