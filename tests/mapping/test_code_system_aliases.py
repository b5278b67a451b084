"""Code systems as hospitals write them (``aliases`` in ``mappings/code_systems.yaml``): MedDRA,
ICD-10, LOINC, SNOMED CT, NMPA approval numbers... become the same FHIR system as MDR, I10, LN, SCT,
CN-NMPA, with no warning (issue 16)."""
from __future__ import annotations

import pytest

from conftest import SAMPLES
from gateway.hl7v2 import parse_message
from golden import MAPPINGS, TERMINOLOGY, ZONE


@pytest.mark.parametrize("written,system", [
    ("MedDRA", "http://terminology.hl7.org/CodeSystem/mdr"),
    ("meddra", "http://terminology.hl7.org/CodeSystem/mdr"),
    ("ICD-10", "http://hl7.org/fhir/sid/icd-10"),
    ("ICD-10-CM", "http://hl7.org/fhir/sid/icd-10-cm"),
    ("icd10cn", "https://lecheng-fhir-gateway.org/fhir/CodeSystem/icd-10-cn"),
    ("GB/T 14396", "https://lecheng-fhir-gateway.org/fhir/CodeSystem/icd-10-cn"),
    ("LOINC", "http://loinc.org"),
    ("SNOMED CT", "http://snomed.info/sct"),
    ("snomed-ct", "http://snomed.info/sct"),
    ("RxNorm", "http://www.nlm.nih.gov/research/umls/rxnorm"),
    ("国药准字", "https://lecheng-fhir-gateway.org/fhir/sid/nmpa-approval-number"),
    ("NMPA", "https://lecheng-fhir-gateway.org/fhir/sid/nmpa-approval-number"),
    ("CFDA", "https://lecheng-fhir-gateway.org/fhir/sid/nmpa-approval-number"),
])
def test_an_alias_is_the_system_it_names(written, system):
    assert TERMINOLOGY.coding_system(written) == (system, True)


def test_an_unknown_name_is_still_local_and_flagged():
    assert TERMINOLOGY.coding_system("MedDRAx") == (
        "https://lecheng-fhir-gateway.org/fhir/CodeSystem/local/MedDRAx", False)


def test_a_report_coding_its_event_as_meddra_maps_without_a_warning():
    raw = SAMPLES.joinpath("pex_p07_adverse_event.hl7").read_bytes()
    assert b"^Conjunctivitis^MDR|" in raw
    message = parse_message(raw.replace(b"^Conjunctivitis^MDR|", b"^Conjunctivitis^MedDRA|"))
    result = MAPPINGS.for_message("PEX^P07").run(message, TERMINOLOGY, ZONE)
    event = next(m for m in result.resources if m.type == "AdverseEvent").resource
    assert event["event"]["coding"][0] == {"system": "http://terminology.hl7.org/CodeSystem/mdr",
                                           "code": "10010741", "display": "Conjunctivitis"}
    assert not [w for w in result.warnings if "MedDRA" in w]
