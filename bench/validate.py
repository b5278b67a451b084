"""Validation throughput: validations/second per resource type, base structure and with profiles.

    python bench/validate.py [--seconds 1.0] [--repeat 3]

For the example MedicationRequest, Patient, Device, AdverseEvent and MedicationDispense
(tests/data/validation) it measures, in one process and one thread:

- base only, fhirkit (R4 4.0.1; the default backend) and fhir.resources (R4B pydantic models);
- the profile layer alone (the compiled differential walk, bindings, invariants);
- fhirkit + profiles: what `Validator.validate()` costs on the ingest path.

Then one HL7 order message's worth of resources (MedicationRequest + Patient with profiles,
Practitioner + Organization + Medication structure only), as the ingest pipeline validates them.
Each figure is the best of `--repeat` runs of `--seconds` each: other processes on a shared machine
only ever make a run slower, so the best run is the closest to what the code costs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.validation import ProfileRegistry, Validator  # noqa: E402

EXAMPLES = ROOT / "tests" / "data" / "validation"
RESOURCES = {
    "MedicationRequest": "medicationrequest/valid-imported-drug.json",
    "Patient": "patient/valid-patient.json",
    "Device": "device/valid-udi-device.json",
    "AdverseEvent": "adverseevent/valid-adverse-event.json",
    "MedicationDispense": "medicationdispense/valid-dispense.json",
}
MESSAGE = ["medicationrequest/valid-imported-drug.json", "patient/valid-patient.json", "other/practitioner.json",
           "other/organization.json", "other/medication.json"]


def load(name: str) -> dict:
    return json.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def rate(work: Callable[[], object], seconds: float, repeat: int) -> float:
    """Best calls/second over `repeat` timed runs of about `seconds` each."""
    best = 0.0
    for _ in range(repeat):
        calls = 0
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            for _ in range(50):
                work()
            calls += 50
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, calls / (now - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (the best is reported)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    registry = ProfileRegistry.load(ROOT / "profiles")
    load_ms = (time.perf_counter() - t0) * 1000
    fhirkit = Validator(registry)
    pydantic = Validator(registry, structure_backend="fhir.resources")
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPU(s); "
          f"profiles loaded and compiled in {load_ms:.0f} ms; best of {args.repeat} x {args.seconds:g} s\n")

    columns = ["base fhirkit", "base fhir.resources", "profiles only", "fhirkit + profiles", "fhir.resources + profiles"]
    print(f"{'validations/s':20s}" + "".join(f"{c:>27s}" for c in columns))
    for resource_type, name in RESOURCES.items():
        resource = load(name)
        assert fhirkit.validate(resource) == [], f"{name} should be valid"
        figures = [
            rate(lambda: fhirkit.validate(resource, base_only=True), args.seconds, args.repeat),
            rate(lambda: pydantic.validate(resource, base_only=True), args.seconds, args.repeat),
            rate(lambda: fhirkit.check_profiles(resource), args.seconds, args.repeat),
            rate(lambda: fhirkit.validate(resource), args.seconds, args.repeat),
            rate(lambda: pydantic.validate(resource), args.seconds, args.repeat),
        ]
        print(f"{resource_type:20s}" + "".join(f"{f:27,.0f}" for f in figures))

    message = [load(n) for n in MESSAGE]

    def one_message() -> None:
        for resource in message:
            fhirkit.validate(resource)

    per_message = rate(one_message, args.seconds, args.repeat)
    print(f"\nOne RDE^O11 message's resources ({len(message)}: MedicationRequest and Patient with profiles; "
          f"Practitioner, Organization, Medication structure only), fhirkit + profiles:")
    print(f"  {per_message:,.0f} messages/s = {per_message * len(message):,.0f} resources/s on one core "
          f"({1e6 / per_message:,.0f} us per message)")


if __name__ == "__main__":
    main()
