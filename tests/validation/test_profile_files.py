"""The files in profiles/ themselves: valid conformance resources, with paths that exist in R4.

The element-path check asks fhirkit (an independent R4 4.0.1 implementation) rather than the
validator's own model: for each differential path it builds a minimal instance holding that
element and requires that fhirkit does not call any part of it an unknown element.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import fhirkit
import pytest
from fhir.resources.R4B import get_fhir_model_class

from gateway.validation import ProfileError, ProfileRegistry
from gateway.validation.model import r4_model
from gateway.validation.profile import differential_paths
from gateway.validation.registry import _walk

from .conftest import BASE, PROFILES

FILES = sorted(PROFILES.rglob("*.json"))
RESOURCES = {p.relative_to(PROFILES).as_posix(): json.loads(p.read_text(encoding="utf-8")) for p in FILES}
STRUCTURE_DEFINITIONS = {n: r for n, r in RESOURCES.items() if r["resourceType"] == "StructureDefinition"}
_UNRESTRICTED_CHOICE_GUESSES = ("CodeableConcept", "Reference", "Quantity", "String", "Boolean", "DateTime",
                                "Period", "Coding", "Identifier")


@pytest.mark.parametrize("name", RESOURCES)
def test_profile_file_is_a_conformance_resource(name):
    assert RESOURCES[name]["resourceType"] in ("StructureDefinition", "ValueSet", "CodeSystem")


@pytest.mark.parametrize("name", RESOURCES)
def test_profile_file_is_valid_r4_per_fhirkit(name):
    assert [str(i) for i in fhirkit.validate(RESOURCES[name])] == []


@pytest.mark.parametrize("name", RESOURCES)
def test_profile_file_is_valid_per_fhir_resources_models(name):
    res = RESOURCES[name]
    get_fhir_model_class(res["resourceType"]).model_validate(res)


@pytest.mark.parametrize("name", RESOURCES)
def test_profile_file_has_canonical_url_version_and_status(name):
    res = RESOURCES[name]
    assert res["url"].startswith(("http://", "https://"))
    assert res["version"]
    assert res["status"] in ("draft", "active", "retired")
    assert res["url"].rsplit("/", 1)[1] == res["id"]


@pytest.mark.parametrize("name", STRUCTURE_DEFINITIONS)
def test_structure_definition_constrains_r4_core(name):
    sd = STRUCTURE_DEFINITIONS[name]
    assert sd["url"] == f"{BASE}/StructureDefinition/{sd['id']}"
    assert (sd["version"], sd["status"], sd["fhirVersion"]) == ("0.1.0", "active", "4.0.1")
    assert sd["derivation"] == "constraint"
    assert sd["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{sd['type']}"


def _fhirkit_unknown_elements(sd: dict, path: str, narrowed: dict[str, tuple[str, ...]]) -> list[str]:
    """Issues fhirkit raises for an instance that holds just this element path."""
    parts = path.split(".")
    root, names = parts[0], parts[1:]
    guesses: dict[int, int] = {}
    as_list: set[int] = set()
    for _ in range(4 * len(names) + 4):
        keys, walked = [], root
        for i, part in enumerate(names):
            walked = f"{walked}.{part}"
            if part.endswith("[x]"):
                options = narrowed.get(walked) or _UNRESTRICTED_CHOICE_GUESSES
                code = options[min(guesses.get(i, 0), len(options) - 1)]
                keys.append(part[:-3] + code[0].upper() + code[1:])
            else:
                keys.append(part)
        top: dict = {}
        current = top
        for i, key in enumerate(keys):
            child: object = "x" if i == len(keys) - 1 else {}
            current[key] = [child] if i in as_list else child
            current = child  # type: ignore[assignment]
        if root == "Extension":
            top["url"] = "http://example.org/extension"
            instance, prefix = {"resourceType": "Basic", "code": {"text": "x"}, "extension": [top]}, "Basic.extension[0]"
        else:
            instance, prefix = dict(top, resourceType=root), root
        issues = fhirkit.validate(instance)
        changed = False
        unknown = []
        for issue in issues:
            if not issue.path.startswith(prefix):
                continue
            depth = len(re.sub(r"\[\d+\]", "", issue.path[len(prefix):]).strip(".").split(".")) - 1
            if issue.message.startswith("expected an array") and depth not in as_list:
                as_list.add(depth)
                changed = True
            elif issue.message == "unknown element":
                if depth < len(names) and names[depth].endswith("[x]") and \
                        f"{root}.{'.'.join(names[:depth + 1])}" not in narrowed and \
                        guesses.get(depth, 0) < len(_UNRESTRICTED_CHOICE_GUESSES) - 1:
                    guesses[depth] = guesses.get(depth, 0) + 1
                    changed = True
                else:
                    unknown.append(str(issue))
        if not changed:
            return unknown
    return ["could not build an instance for " + path]


@pytest.mark.parametrize("name", STRUCTURE_DEFINITIONS)
def test_every_differential_path_exists_in_r4_per_fhirkit(name):
    sd = STRUCTURE_DEFINITIONS[name]
    problems = {path: found for path, narrowed in differential_paths(sd)
                if path != sd["type"] and (found := _fhirkit_unknown_elements(sd, path, narrowed))}
    assert problems == {}


@pytest.mark.parametrize("name", STRUCTURE_DEFINITIONS)
def test_every_differential_path_exists_in_the_r4_model(name):
    sd = STRUCTURE_DEFINITIONS[name]
    model = r4_model()
    missing = [path for path, narrowed in differential_paths(sd) if model.resolve(path, narrowed) is None]
    assert missing == []


def test_path_check_notices_an_element_r4_does_not_have():
    sd = {"type": "MedicationRequest"}
    assert _fhirkit_unknown_elements(sd, "MedicationRequest.dosageInstruction.timing.repeat.periodUnits", {})
    assert r4_model().resolve("MedicationRequest.dosageInstruction.timing.repeat.periodUnits") is None


def test_every_required_or_extensible_binding_has_a_local_value_set(registry):
    assert registry.unresolved_bindings() == []


def test_every_invariant_runs_on_the_fast_fhirpath_path(registry):
    slow = [(url, rule.id, c.key) for url in _profile_urls(registry)
            for rule in _walk(registry.compiled(url).root) for c in rule.constraints if c.invariant.engine != "fast"]
    assert slow == []


def test_each_lecheng_profile_is_the_default_for_its_resource_type(registry):
    for resource_type, profile_id in [("MedicationRequest", "lecheng-medicationrequest"), ("Device", "lecheng-device"),
                                      ("AdverseEvent", "lecheng-adverseevent"),
                                      ("MedicationDispense", "lecheng-medicationdispense"), ("Patient", "lecheng-patient")]:
        assert registry.profiles_for(resource_type) == [f"{BASE}/StructureDefinition/{profile_id}"]


def test_extension_definitions_declare_where_they_may_be_used(registry):
    contexts = {url.rsplit("/", 1)[1]: p.contexts for url, p in registry.extensions.items()}
    assert contexts == {"pilot-zone-approval": ("MedicationRequest", "Device"),
                        "adverse-event-expected": ("AdverseEvent",),
                        "adverse-event-action-taken": ("AdverseEvent.suspectEntity",)}


def test_core_value_sets_keep_their_r4_canonical_urls(registry):
    core = [r for n, r in RESOURCES.items() if n.startswith("core-valuesets/")]
    assert core
    for vs in core:
        assert vs["url"] == f"http://hl7.org/fhir/ValueSet/{vs['id']}"
        assert vs["version"] == "4.0.1"
        assert registry.get(f"{vs['url']}|4.0.1") is vs or registry.get(f"{vs['url']}|4.0.1") == vs


def test_a_profile_path_r4_does_not_have_stops_loading(tmp_path: Path):
    sd = dict(STRUCTURE_DEFINITIONS["StructureDefinition-lecheng-patient.json"])
    sd["differential"] = {"element": [{"id": "Patient.nickName", "path": "Patient.nickName", "min": 1}]}
    (tmp_path / "bad.json").write_text(json.dumps(sd))

    with pytest.raises(ProfileError, match="Patient.nickName is not an element"):
        ProfileRegistry.load(tmp_path)


def test_an_invariant_with_a_syntax_error_stops_loading(tmp_path: Path):
    sd = dict(STRUCTURE_DEFINITIONS["StructureDefinition-lecheng-patient.json"])
    sd["differential"] = {"element": [{"id": "Patient", "path": "Patient", "constraint": [
        {"key": "bad-1", "severity": "error", "human": "broken", "expression": "name.where(family = )"}]}]}
    (tmp_path / "bad.json").write_text(json.dumps(sd))

    with pytest.raises(ProfileError, match="bad-1"):
        ProfileRegistry.load(tmp_path)


def _profile_urls(registry: ProfileRegistry) -> list[str]:
    return [r["url"] for r in registry.resources() if r["resourceType"] == "StructureDefinition"]
