"""The Validator's contract: which profiles apply, strictness, OperationOutcome, and never raising on bad data."""
from __future__ import annotations

import dataclasses

import fhirkit
import pytest

from gateway.validation import Issue, Validator, has_errors, operation_outcome

from .conftest import BASE, DEVICE_PROFILE, MR_PROFILE, PATIENT_PROFILE, load_example


def test_required_binding_violation_is_caught_though_the_structure_backend_accepts_it(validator):
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["status"] = "bogus"

    assert validator.validate(mr, base_only=True) == []
    assert [(i.severity, i.code, i.expression, i.profile) for i in validator.validate(mr)] == [
        ("error", "code-invalid", "MedicationRequest.status", MR_PROFILE)]


def test_base_only_skips_the_profiles(validator):
    mr = load_example("medicationrequest/invalid-imported-drug-without-approval.json")

    assert validator.validate(mr, base_only=True) == []


def test_structure_issues_come_first_and_carry_no_profile(validator):
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["authoredOn"] = "2026-03-15T09:25:00"          # a time without its offset
    mr.pop("requester")

    issues = validator.validate(mr)

    assert [(i.code, i.expression, i.profile) for i in issues] == [
        ("value", "MedicationRequest.authoredOn", None),
        ("required", "MedicationRequest.requester", MR_PROFILE)]


def test_meta_profile_selects_the_profile(validator):
    patient = load_example("patient/invalid-gender-hl7-code.json")
    patient["meta"]["profile"] = [PATIENT_PROFILE]

    assert [i.expression for i in validator.validate(patient)] == ["Patient.gender"]


def test_meta_profile_naming_an_unknown_profile_is_a_warning_and_replaces_the_default(validator):
    patient = load_example("patient/invalid-gender-hl7-code.json")
    patient["meta"]["profile"] = ["http://example.org/fhir/StructureDefinition/other-patient"]

    issues = validator.validate(patient)

    assert [(i.severity, i.code) for i in issues] == [("warning", "processing")]
    assert "http://example.org/fhir/StructureDefinition/other-patient is not known" in issues[0].diagnostics


def test_an_explicit_unknown_profile_is_an_error(validator):
    issues = validator.validate(load_example("patient/valid-patient.json"), profiles=[f"{BASE}/StructureDefinition/nope"])

    assert [(i.severity, i.code) for i in issues] == [("error", "processing")]


def test_explicit_profiles_replace_the_defaults(validator):
    patient = load_example("patient/invalid-gender-hl7-code.json")

    assert validator.validate(patient, profiles=[]) == []


def test_a_profile_for_another_resource_type_is_refused(validator):
    issues = validator.validate(load_example("patient/valid-patient.json"), profiles=[DEVICE_PROFILE])

    assert [(i.severity, i.code, i.expression) for i in issues] == [("error", "processing", "Patient")]
    assert "constrains Device, not Patient" in issues[0].diagnostics


def test_a_version_qualified_canonical_finds_the_profile(validator):
    issues = validator.validate(load_example("patient/invalid-gender-hl7-code.json"), profiles=[f"{PATIENT_PROFILE}|0.1.0"])

    assert [i.expression for i in issues] == ["Patient.gender"]


def test_strictness_warning_turns_a_profile_errors_into_warnings(registry):
    relaxed = Validator(registry, strictness={MR_PROFILE: "warning"})
    mr = load_example("medicationrequest/invalid-imported-drug-without-approval.json")

    issues = relaxed.validate(mr)

    assert [(i.severity, i.code, i.expression) for i in issues] == [("warning", "invariant", "MedicationRequest")]
    assert not has_errors(issues)


def test_strictness_warning_covers_the_extensions_the_profile_uses(registry):
    relaxed = Validator(registry, strictness={MR_PROFILE: "warning"})

    issues = relaxed.validate(load_example("medicationrequest/invalid-approval-kind.json"))

    assert [(i.severity, i.profile) for i in issues] == [("warning", f"{BASE}/StructureDefinition/pilot-zone-approval")]


def test_strictness_leaves_structure_errors_alone(registry):
    relaxed = Validator(registry, strictness={MR_PROFILE: "warning"})

    issues = relaxed.validate(load_example("medicationrequest/invalid-structure-unknown-element.json"))

    assert [i.severity for i in issues] == ["error"]


def test_strictness_accepts_only_error_or_warning(registry):
    with pytest.raises(ValueError, match="must be 'error' or 'warning'"):
        Validator(registry, strictness={MR_PROFILE: "ignore"})


def test_unknown_structure_backend_is_refused(registry):
    with pytest.raises(ValueError, match="unknown structure backend"):
        Validator(registry, structure_backend="hapi")


@pytest.mark.parametrize("thing", [None, [], "Patient", {"id": "x"}, {"resourceType": 5}])
def test_something_that_is_not_a_resource_is_fatal_not_an_exception(validator, thing):
    assert [(i.severity, i.code) for i in validator.validate(thing)] == [("fatal", "structure")]


def test_wrong_json_types_are_reported_by_the_backend_without_breaking_the_profile_walk(validator):
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["status"] = 5
    mr["identifier"] = {"system": "x"}
    mr["dosageInstruction"][0]["timing"] = "weekly"

    issues = validator.validate(mr)

    assert has_errors(issues)
    assert all(i.profile is None for i in issues if i.expression and i.expression.startswith(
        ("MedicationRequest.status", "MedicationRequest.dosageInstruction")))


def test_validate_many_keeps_order_and_applies_each_resources_own_profile(validator):
    resources = [load_example("patient/invalid-gender-hl7-code.json"), load_example("device/valid-udi-device.json"),
                 load_example("medicationrequest/invalid-no-requester.json")]

    results = validator.validate_many(resources)

    assert [[i.expression for i in r] for r in results] == [["Patient.gender"], [], ["MedicationRequest.requester"]]


def test_bundle_entries_are_checked_against_their_profiles_with_bundle_paths(validator):
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:8d1c2b3a-7e6f-4a5b-8c9d-0e1f2a3b4c01", "resource": load_example("patient/valid-patient.json")},
        {"fullUrl": "urn:uuid:0b6f7c1e-3d2a-4f51-9a47-5c3e2d1f0a01",
         "resource": load_example("medicationrequest/invalid-no-requester.json")}]}

    issues = validator.validate(bundle)

    assert [(i.code, i.expression) for i in issues] == [("required", "Bundle.entry[1].resource.requester")]


def test_an_extension_outside_any_profile_is_checked_against_its_definition(validator):
    mr = load_example("medicationrequest/valid-domestic-drug.json")
    mr["extension"] = [{"url": f"{BASE}/StructureDefinition/pilot-zone-approval",
                        "extension": [{"url": "number", "valueIdentifier": {"system": f"{BASE}/sid/pilot-zone-approval",
                                                                            "value": "LC2026-A-0099"}}]}]

    issues = validator.validate(mr, profiles=[])

    assert [(i.code, i.expression, i.diagnostics.split(" is required")[0]) for i in issues] == [
        ("required", "MedicationRequest.extension[0].extension", "Extension.extension:kind")]


def test_contained_reference_target_is_resolved_for_the_type_check(validator):
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["contained"] = [{"resourceType": "Group", "id": "g1", "type": "person", "actual": True}]
    mr["subject"] = {"reference": "#g1"}

    issues = validator.validate(mr)

    assert [(i.code, i.expression) for i in issues] == [("structure", "MedicationRequest.subject.reference")]


@pytest.mark.parametrize("reference", ["urn:uuid:3f2e1d0c-9b8a-4765-8432-10fedcba9801", "requester#2", "Dr Zhang"])
def test_a_reference_that_names_no_type_is_not_judged(validator, reference):
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["requester"] = {"reference": reference}

    assert validator.validate(mr) == []


def test_reference_type_element_is_used_when_the_reference_names_no_type(validator):
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["requester"] = {"reference": "urn:uuid:3f2e1d0c-9b8a-4765-8432-10fedcba9801", "type": "Organization"}

    assert [(i.code, i.expression) for i in validator.validate(mr)] == [("structure", "MedicationRequest.requester.type")]


def test_an_absolute_reference_is_judged_by_its_type_segment(validator):
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["subject"] = {"reference": "https://fhir.example.org/r4/Group/ward-3/_history/2"}

    assert [(i.code, i.expression) for i in validator.validate(mr)] == [("structure", "MedicationRequest.subject.reference")]


def test_operation_outcome_of_no_issues_is_all_ok():
    assert operation_outcome([]) == {"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": "All OK"}]}


def test_operation_outcome_carries_severity_code_diagnostics_and_expression(validator):
    issues = validator.validate(load_example("medicationrequest/invalid-no-requester.json"))

    outcome = operation_outcome(issues)

    assert outcome["issue"] == [{"severity": "error", "code": "required", "diagnostics": issues[0].diagnostics,
                                 "expression": ["MedicationRequest.requester"]}]
    assert fhirkit.validate(outcome) == []


def test_has_errors_counts_fatal_and_error_but_not_warnings():
    assert has_errors([Issue("fatal", "structure", "x")])
    assert has_errors([Issue("warning", "invariant", "x"), Issue("error", "required", "y")])
    assert not has_errors([Issue("warning", "invariant", "x"), Issue("information", "informational", "y")])


def test_issue_is_an_immutable_value():
    issue = Issue("error", "required", "x", "Patient.gender")

    with pytest.raises(dataclasses.FrozenInstanceError):
        issue.severity = "warning"  # type: ignore[misc]
    assert issue == Issue("error", "required", "x", "Patient.gender", None)


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


@pytest.mark.parametrize("name", ["medicationrequest/valid-imported-drug.json", "patient/valid-patient.json",
                                  "device/valid-udi-device.json", "adverseevent/valid-adverse-event.json",
                                  "medicationdispense/valid-dispense.json"])
def test_any_element_replaced_by_a_wrong_json_type_gives_issues_never_an_exception(validator, name):
    original = load_example(name)
    for path in list(_paths(original))[1:]:
        for junk in (None, 7, "x", [], {}, [None], [7], True):
            broken = load_example(name)
            parent = broken
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = junk

            issues = validator.validate(broken)

            assert all(isinstance(i, Issue) for i in issues)
