"""The fast FHIRPath path gives fhirpathpy's answers, and hands over what it does not implement."""
from __future__ import annotations

import pytest

from gateway.validation.fhirpath import FhirPathSyntaxError, compile_invariant, evaluate_with_fhirpathpy
from gateway.validation.profile import values_at
from gateway.validation.registry import _walk

from .conftest import load_example, manifest

EXAMPLES = manifest()["valid"] + [c["file"] for c in manifest()["cases"]]
MR = "medicationrequest/valid-imported-drug.json"


def _profile_invariants(registry):
    for res in registry.resources():
        if res["resourceType"] != "StructureDefinition" or res["type"] == "Extension":
            continue
        for rule in _walk(registry.compiled(res["url"]).root):
            for c in rule.constraints:
                yield res["type"], rule.path, c


def test_every_profile_invariant_agrees_with_fhirpathpy_on_every_example(registry):
    checked = 0
    for name in EXAMPLES:
        resource = load_example(name)
        for resource_type, path, constraint in _profile_invariants(registry):
            if resource["resourceType"] != resource_type:
                continue
            inner = path.split(".", 1)[1] if "." in path else "$this"
            for node in values_at(resource, inner):
                fast = constraint.invariant(node, resource)
                reference = evaluate_with_fhirpathpy(constraint.invariant.expression, node, resource)
                assert fast == reference, (name, constraint.key)
                checked += 1
    assert checked > 50


@pytest.mark.parametrize("expression", [
    "medication.coding.code",                                   # a choice element resolved by the model
    "MedicationRequest.status = 'active'",                       # type-qualified path
    "identifier.where(type.coding.where(code = 'PLAC').exists()).value",
    "identifier.count() = 2",
    "identifier.all(system.exists())",
    "identifier.select(system).isDistinct()",
    "identifier.value.first()",
    "identifier.value.last()",
    "identifier[1].value",
    "(status | intent | status).count()",
    "status != 'active'",
    "dosageInstruction.doseAndRate.dose.value = 300",
    "extension.extension.where(url = 'kind').value.code",
    "extension.extension.where(url = 'date').value",
    "authoredOn.startsWith('2026-03') and authoredOn.endsWith('+08:00')",
    "reasonCode.coding.display.matches('^特应性')",
    "status.length() = 6",
    "status.empty().not()",
    "priority.exists() implies priority = 'stat'",
    "{} implies false",
    "false implies {}",
    "true and {}",
    "false and {}",
    "true or {}",
    "{} or false",
    "true xor false",
    "{} xor true",
    "%resource.id.exists()",
    "$this.status = 'active'",
    "dosageInstruction.text = 'x\\'y'",
])
def test_fast_path_matches_fhirpathpy(expression):
    mr = load_example(MR)
    invariant = compile_invariant(expression, "MedicationRequest")

    assert invariant.engine == "fast"
    assert invariant(mr, mr) == evaluate_with_fhirpathpy(expression, mr, mr)


@pytest.mark.parametrize("expression", [
    "authoredOn > @2026-03-01",
    "dispenseRequest.quantity.value + 1 = 3",
    "medication.ofType(CodeableConcept).coding.exists()",
    "status in ('active' | 'on-hold')",
    "dosageInstruction.doseAndRate.dose.value > 299.5",
])
def test_expressions_beyond_the_fast_subset_run_on_fhirpathpy(expression):
    mr = load_example(MR)
    invariant = compile_invariant(expression, "MedicationRequest")

    assert invariant.engine == "fhirpathpy"
    assert invariant(mr, mr) == evaluate_with_fhirpathpy(expression, mr, mr)


def test_an_invariant_on_an_element_sees_the_element_as_its_context():
    invariant = compile_invariant("value.matches('^[0-9]{17}[0-9X]$')", "Identifier", resource_type="Patient")

    assert invariant({"system": "s", "value": "46010019900101123X"}, {}) == [True]
    assert invariant({"system": "s", "value": "4601001990010112"}, {}) == [False]


@pytest.mark.parametrize("expression", ["name.where(family = )", "name.(", "name..family", "name given", "name.where(family = 'x'"])
def test_a_syntax_error_is_refused_instead_of_evaluating_to_nothing(expression):
    with pytest.raises(FhirPathSyntaxError):
        compile_invariant(expression, "Patient")
