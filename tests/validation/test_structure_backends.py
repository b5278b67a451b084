"""The two structure backends: fhirkit (R4 4.0.1, default) and fhir.resources (R4B models)."""
from __future__ import annotations

import pytest

from gateway.validation.structure import FhirkitBackend, FhirResourcesBackend, structure_backend

from .conftest import load_example, manifest

VALID = manifest()["valid"] + manifest()["unprofiled"]


def _break_unknown_element(r: dict) -> None:
    r["prescriptionNumber"] = "BSH-RXNUM-0001"


def _break_missing_status(r: dict) -> None:
    r.pop("status")


def _break_integer_type(r: dict) -> None:
    r["dispenseRequest"]["numberOfRepeatsAllowed"] = "six"


def _break_nested_unknown_element(r: dict) -> None:
    r["dosageInstruction"][0]["timing"]["repeat"]["every"] = 2


def _break_choice_conflict(r: dict) -> None:
    r["medicationReference"] = {"reference": "Medication/2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f01"}


BREAKS = {
    "unknown element": (_break_unknown_element, "MedicationRequest.prescriptionNumber"),
    "missing mandatory element": (_break_missing_status, "MedicationRequest.status"),
    "string for an integer": (_break_integer_type, "MedicationRequest.dispenseRequest.numberOfRepeatsAllowed"),
    "unknown nested element": (_break_nested_unknown_element, "MedicationRequest.dosageInstruction[0].timing.repeat.every"),
    "two choice types": (_break_choice_conflict, "MedicationRequest.medication"),
}


@pytest.fixture(scope="module", params=["fhirkit", "fhir.resources"])
def backend(request):
    return structure_backend(request.param)


@pytest.mark.parametrize("name", VALID)
def test_backend_accepts_every_valid_example(backend, name):
    assert backend.check(load_example(name)) == []


@pytest.mark.parametrize("what", BREAKS)
def test_backends_agree_on_where_a_structure_error_is(what):
    breaker, expression = BREAKS[what]
    mr = load_example("medicationrequest/valid-imported-drug.json")
    breaker(mr)

    for backend in (FhirkitBackend(), FhirResourcesBackend()):
        found = backend.check(mr)
        assert expression in {i.expression for i in found if i.severity == "error"}, (backend.name, found)


def test_backends_agree_that_a_missing_mandatory_element_is_a_required_issue():
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr.pop("status")

    for backend in (FhirkitBackend(), FhirResourcesBackend()):
        assert [(i.code, i.expression) for i in backend.check(mr)] == [("required", "MedicationRequest.status")]


def test_fhirkit_holds_json_types_to_r4_where_the_r4b_models_coerce():
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["dispenseRequest"]["numberOfRepeatsAllowed"] = "6"

    assert [i.expression for i in FhirkitBackend().check(mr)] == ["MedicationRequest.dispenseRequest.numberOfRepeatsAllowed"]
    assert FhirResourcesBackend().check(mr) == []


def test_fhirkit_rejects_a_time_without_offset_as_a_value_issue():
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["authoredOn"] = "2026-03-15T09:25:00"

    assert [(i.code, i.expression) for i in FhirkitBackend().check(mr)] == [("value", "MedicationRequest.authoredOn")]


def test_neither_backend_checks_required_bindings():
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["status"] = "bogus"

    assert FhirkitBackend().check(mr) == []
    assert FhirResourcesBackend().check(mr) == []


@pytest.mark.parametrize("backend_name", ["fhirkit", "fhir.resources"])
def test_unknown_resource_type_is_fatal_or_error_with_the_type_named(backend_name):
    issues = structure_backend(backend_name).check({"resourceType": "Prescription", "id": "x"})

    assert issues and issues[0].severity in ("fatal", "error")
    assert "Prescription" in issues[0].diagnostics


def test_fhirkit_reads_decimal_values_the_json_encoder_cannot_write():
    from decimal import Decimal
    mr = load_example("medicationrequest/valid-imported-drug.json")
    mr["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = Decimal("300.0")

    assert FhirkitBackend().check(mr) == []


@pytest.mark.parametrize("backend_name", ["fhirkit", "fhir.resources"])
def test_python_values_that_are_not_json_are_fatal_not_an_exception(backend_name):
    patient = load_example("patient/valid-patient.json")
    patient["birthDate"] = {1990, 1, 1}

    issues = structure_backend(backend_name).check(patient)

    assert issues and issues[0].severity in ("fatal", "error")
