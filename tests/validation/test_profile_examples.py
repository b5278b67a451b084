"""Every Lecheng profile against its example resources (tests/data/validation/cases.yaml).

Valid examples conform with no issue at all; each invalid example is a valid one broken in one
way and must be reported with exactly the listed issues: severity, issue code and FHIRPath.
"""
from __future__ import annotations

import pytest

from .conftest import load_example, manifest

MANIFEST = manifest()


@pytest.mark.parametrize("name", MANIFEST["valid"])
def test_valid_example_conforms_to_its_profile(validator, name):
    assert validator.validate(load_example(name)) == []


@pytest.mark.parametrize("name", MANIFEST["unprofiled"])
def test_resource_without_lecheng_profile_is_checked_for_structure_only(validator, name):
    assert validator.validate(load_example(name)) == []


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=[c["file"] for c in MANIFEST["cases"]])
def test_broken_example_reports_exactly_the_expected_issues(validator, case):
    issues = validator.validate(load_example(case["file"]))

    found = sorted((i.severity, i.code, i.expression) for i in issues)
    expected = sorted((e["severity"], e["code"], e["expression"]) for e in case["expect"])
    assert found == expected, case["why"]


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=[c["file"] for c in MANIFEST["cases"]])
def test_broken_example_diagnostics_say_what_is_wrong(validator, case):
    diagnostics = [i.diagnostics for i in validator.validate(load_example(case["file"]))]

    for expected in case["expect"]:
        assert any(expected["says"] in d for d in diagnostics), (expected["says"], diagnostics)


def test_every_profile_has_a_valid_and_a_broken_example(registry):
    names = {n.split("/")[0] for n in MANIFEST["valid"]}
    broken = {c["file"].split("/")[0] for c in MANIFEST["cases"]}
    profiled = {t.lower() for t in ("MedicationRequest", "Device", "AdverseEvent", "MedicationDispense", "Patient")
                if registry.profiles_for(t)}

    assert profiled <= names
    assert profiled <= broken
