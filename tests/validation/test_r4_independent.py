"""An independent R4 check (tests/r4check: Medplum's validator over the official R4 4.0.1 definitions,
plus required bindings from the same definitions) against our validator and our outputs.

1. Differential, every fixture of tests/data/validation: the two agree on valid / invalid, except
   where a fixture is invalid only by a Lecheng profile rule (base R4 allows it) or by a base R4 rule
   the independent check does not evaluate (reference target types); each such fixture is listed
   below with its reason, and the listed difference must hold exactly.
2. Every Bundle ``fhir-gateway convert`` prints for the samples and the external messages is valid R4,
   and so is every resource in it.
"""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.cli import main as gateway_cli

from .conftest import REPO, load_example, manifest

MANIFEST = manifest()
WHY = {case["file"]: case["why"] for case in MANIFEST["cases"]}
FIXTURES = MANIFEST["valid"] + MANIFEST["unprofiled"] + [case["file"] for case in MANIFEST["cases"]]

LECHENG = "invalid only by a Lecheng profile rule (profiles/); base R4 allows it"
REFERENCE_TARGET = ("invalid in base R4 by the reference's target type; the independent check does not "
                    "resolve references, so it cannot see it")

# fixture -> why our verdict (error) and the independent one (valid) legitimately differ
ONLY_OURS_REFUSES = {
    "medicationrequest/invalid-imported-drug-without-approval.json": LECHENG,      # lc-mr-1
    "medicationrequest/invalid-on-hold-imported-drug-without-approval.json": LECHENG,
    "medicationrequest/invalid-no-placer-number.json": LECHENG,                  # identifier:placer 1..1
    "medicationrequest/invalid-two-placer-numbers.json": LECHENG,
    "medicationrequest/invalid-identifier-without-system.json": LECHENG,          # R4 Identifier.system 0..1
    "medicationrequest/invalid-no-requester.json": LECHENG,                       # R4 requester 0..1
    "medicationrequest/invalid-no-authored-on.json": LECHENG,                     # R4 authoredOn 0..1
    "medicationrequest/invalid-subject-group.json": LECHENG,                      # R4 allows Reference(Group)
    "medicationrequest/invalid-medication-reference.json": LECHENG,               # R4 allows Reference(Medication)
    "medicationrequest/invalid-approval-kind.json": LECHENG,                      # pilot-zone-approval extension
    "medicationrequest/invalid-approval-without-number.json": LECHENG,
    "medicationrequest/invalid-approval-number-system.json": LECHENG,
    "medicationrequest/invalid-approval-unknown-part.json": LECHENG,
    "medicationrequest/invalid-extension-out-of-context.json": LECHENG,
    "patient/invalid-resident-id-format.json": LECHENG,
    "patient/invalid-resident-id-lowercase-x.json": LECHENG,
    "patient/invalid-resident-id-system.json": LECHENG,
    "patient/invalid-identifier-without-system.json": LECHENG,
    "patient/invalid-no-identifier.json": LECHENG,                                # R4 identifier 0..*
    "patient/invalid-identifier-without-value.json": LECHENG,
    "device/invalid-no-udi-no-identifier.json": LECHENG,
    "device/invalid-imported-device-without-approval.json": LECHENG,
    "device/invalid-udi-carrier-without-di.json": LECHENG,                        # R4 deviceIdentifier 0..1
    "device/invalid-patient-reference.json": REFERENCE_TARGET,                    # R4 Device.patient: Patient
    "device/invalid-approval-date-type.json": LECHENG,
    "adverseevent/invalid-no-suspect-entity.json": LECHENG,
    "adverseevent/invalid-no-seriousness.json": LECHENG,                          # R4 seriousness 0..1
    "adverseevent/invalid-seriousness-code.json": LECHENG,                        # R4 binding is example
    "adverseevent/invalid-no-date.json": LECHENG,
    "adverseevent/invalid-no-event.json": LECHENG,
    "adverseevent/invalid-suspect-instance-patient.json": REFERENCE_TARGET,       # R4: no Reference(Patient)
    "adverseevent/invalid-two-meddra-terms.json": LECHENG,
    "adverseevent/invalid-expected-as-string.json": LECHENG,
    "adverseevent/invalid-action-taken-code.json": LECHENG,
    "medicationdispense/invalid-completed-without-handover.json": LECHENG,
    "medicationdispense/invalid-no-quantity.json": LECHENG,
    "medicationdispense/invalid-no-subject.json": LECHENG,                        # R4 subject 0..1
    "medicationdispense/invalid-authorizing-prescription-type.json": REFERENCE_TARGET,
    "medicationdispense/invalid-no-identifier.json": LECHENG,
}


@pytest.mark.parametrize("name", FIXTURES)
def test_the_independent_r4_check_and_ours_agree_on_every_fixture(validator, r4check, name):
    resource = load_example(name)
    ours = [i for i in validator.validate(resource) if i.severity in ("error", "fatal")]
    theirs = r4check.errors(resource)
    if name in ONLY_OURS_REFUSES:
        assert ours and not theirs, (f"{name} ({WHY.get(name)}) is listed as: {ONLY_OURS_REFUSES[name]}; "
                                     f"ours: {[i.diagnostics for i in ours]}, independent: {theirs}")
    else:
        assert bool(ours) == bool(theirs), (name, WHY.get(name), [i.diagnostics for i in ours], theirs)


def test_every_listed_difference_is_a_fixture():
    assert set(ONLY_OURS_REFUSES) <= set(FIXTURES)


SAMPLES = sorted((REPO / "tests" / "data" / "samples").glob("*")) + sorted((REPO / "tests" / "data" / "external").glob("*.hl7"))
NOT_CONVERTIBLE = {"bad_missing_msg_type.hl7"}       # no MSH-9: convert prints no Bundle, only why
# Known R4 errors in what convert prints, each fixed elsewhere; the rest of that Bundle is still checked.
KNOWN_INVALID = {
    # issue 14 item 7 (helper `safety`): the status-only MedicationRequest of an RDS^O13 has only
    # identifier and status, and R4 requires intent, medication[x] and subject. (While it is in the
    # Bundle, Medplum also reports the Bundle's later urn:uuid references as invalid; they are not.)
    ("rds_o13_dispense.hl7", "MedicationRequest"): {"intent", "medication[x]", "subject"},
}


def _convert(path: Path, tmp_path, capsys) -> dict:
    args = ["--data-dir", str(tmp_path), "convert", str(path)]
    if path.suffix != ".hl7":
        args += ["--mapping", path.stem]              # document samples are named after their mapping
    gateway_cli(args)
    return orjson.loads(capsys.readouterr().out)


@pytest.mark.parametrize("path", [p for p in SAMPLES if p.name not in NOT_CONVERTIBLE], ids=lambda p: p.name)
def test_every_bundle_convert_prints_for_the_samples_is_valid_r4(r4check, tmp_path, capsys, path):
    bundle = _convert(path, tmp_path, capsys)
    assert bundle["entry"], "convert printed an empty Bundle"
    problems = []
    known = False
    for i, entry in enumerate(bundle["entry"]):
        resource = entry["resource"]
        missing = KNOWN_INVALID.get((path.name, resource["resourceType"]))
        errors = r4check.errors(resource)
        if missing is not None and errors:
            known = True
            assert {e["expression"][0].split(".", 1)[1] for e in errors} <= missing, errors
            continue
        problems += r4check.problems(resource, f"{path.name} entry[{i}] {resource['resourceType']}")
    if not known:
        problems += r4check.problems(bundle, f"{path.name} Bundle")
    assert problems == []
