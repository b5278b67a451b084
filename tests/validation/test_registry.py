"""ProfileRegistry: loading profiles/, canonical lookups, and offline value set membership."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.validation import ProfileError, ProfileRegistry

from .conftest import BASE, MR_PROFILE, PROFILES

IMPORTED_DRUGS = f"{BASE}/ValueSet/imported-drugs"
MEDICATIONS = f"{BASE}/ValueSet/lecheng-medications"


def test_get_finds_a_profile_by_canonical_and_by_canonical_with_version(registry):
    assert registry.get(MR_PROFILE)["name"] == "LechengMedicationRequest"
    assert registry.get(f"{MR_PROFILE}|0.1.0") is registry.get(MR_PROFILE)


def test_get_finds_value_sets_and_code_systems(registry):
    assert registry.get("http://hl7.org/fhir/ValueSet/medicationrequest-status|4.0.1")["resourceType"] == "ValueSet"
    assert registry.get(f"{BASE}/CodeSystem/approval-kind")["content"] == "complete"


def test_get_returns_none_for_an_unknown_canonical(registry):
    assert registry.get(f"{BASE}/StructureDefinition/unknown") is None


def test_profiles_for_a_type_without_a_lecheng_profile_is_empty(registry):
    assert registry.profiles_for("Practitioner") == []


def test_a_code_in_a_complete_code_system_is_in_its_value_set(registry):
    assert registry.value_set_contains(f"{BASE}/ValueSet/approval-kind", f"{BASE}/CodeSystem/approval-kind", "REUSE") is True


def test_a_code_missing_from_a_complete_code_system_is_not_in_its_value_set(registry):
    assert registry.value_set_contains(f"{BASE}/ValueSet/approval-kind", f"{BASE}/CodeSystem/approval-kind", "RENEW") is False


def test_a_code_from_another_system_is_not_in_the_value_set(registry):
    assert registry.value_set_contains(IMPORTED_DRUGS, "http://hl7.org/fhir/sid/icd-10", "HNLC-D-0042") is False


def test_an_unlisted_code_of_a_fragment_catalogue_cannot_be_judged_locally(registry):
    assert registry.value_set_contains(IMPORTED_DRUGS, f"{BASE}/CodeSystem/imported-drug-catalogue", "HNLC-D-0042") is True
    assert registry.value_set_contains(IMPORTED_DRUGS, f"{BASE}/CodeSystem/imported-drug-catalogue", "HNLC-D-9999") is None


def test_a_value_set_importing_another_contains_its_codes(registry):
    assert registry.value_set_contains(MEDICATIONS, f"{BASE}/CodeSystem/imported-drug-catalogue", "HNLC-D-0042") is True


def test_a_whole_external_system_accepts_its_codes_as_unknown(registry):
    assert registry.value_set_contains(MEDICATIONS, f"{BASE}/sid/nmpa-approval-number", "H20203001") is None


def test_a_code_without_system_is_looked_up_among_all_codes(registry):
    vs = "http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1"
    assert registry.value_set_contains(vs, None, "female") is True
    assert registry.value_set_contains(vs, None, "F") is False


def test_a_value_set_that_is_not_local_cannot_be_judged(registry):
    assert registry.value_set_contains("http://snomed.info/sct?fhir_vs", "http://snomed.info/sct", "22298006") is None


def test_load_reads_subdirectories(registry):
    assert registry.get("http://hl7.org/fhir/ValueSet/units-of-time") is not None


def test_load_of_a_missing_directory_fails(tmp_path: Path):
    with pytest.raises(ProfileError, match="does not exist"):
        ProfileRegistry.load(tmp_path / "nowhere")


def test_load_refuses_a_file_that_is_not_json(tmp_path: Path):
    (tmp_path / "broken.json").write_text("{not json")

    with pytest.raises(ProfileError, match="not JSON"):
        ProfileRegistry.load(tmp_path)


def test_load_refuses_a_resource_that_is_not_a_conformance_resource(tmp_path: Path):
    (tmp_path / "patient.json").write_text(json.dumps({"resourceType": "Patient", "id": "x"}))

    with pytest.raises(ProfileError, match="Patient is not a conformance resource"):
        ProfileRegistry.load(tmp_path)


def test_load_refuses_two_files_with_the_same_canonical_and_version(tmp_path: Path):
    text = (PROFILES / "ValueSet-approval-kind.json").read_text(encoding="utf-8")
    (tmp_path / "a.json").write_text(text, encoding="utf-8")
    (tmp_path / "b.json").write_text(text, encoding="utf-8")

    with pytest.raises(ProfileError, match="two resources claim"):
        ProfileRegistry.load(tmp_path)


def test_load_refuses_an_unsupported_discriminator(tmp_path: Path):
    sd = json.loads((PROFILES / "StructureDefinition-lecheng-patient.json").read_text(encoding="utf-8"))
    sd["differential"]["element"][1]["slicing"]["discriminator"] = [{"type": "profile", "path": "$this"}]
    (tmp_path / "p.json").write_text(json.dumps(sd))

    with pytest.raises(ProfileError, match="discriminator type 'profile' is not supported"):
        ProfileRegistry.load(tmp_path)
