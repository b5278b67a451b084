"""Shared fixtures for the validation tests: the real profiles/ directory and the examples."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from gateway.validation import ProfileRegistry, Validator

REPO = Path(__file__).resolve().parents[2]
PROFILES = REPO / "profiles"
EXAMPLES = REPO / "tests" / "data" / "validation"
BASE = "https://lecheng-fhir-gateway.org/fhir"
MR_PROFILE = f"{BASE}/StructureDefinition/lecheng-medicationrequest"
PATIENT_PROFILE = f"{BASE}/StructureDefinition/lecheng-patient"
DEVICE_PROFILE = f"{BASE}/StructureDefinition/lecheng-device"
PILOT_EXTENSION = f"{BASE}/StructureDefinition/pilot-zone-approval"


def load_example(name: str) -> dict:
    """A fresh copy of an example resource from tests/data/validation."""
    return copy.deepcopy(json.loads((EXAMPLES / name).read_text(encoding="utf-8")))


def manifest() -> dict:
    return yaml.safe_load((EXAMPLES / "cases.yaml").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def registry() -> ProfileRegistry:
    return ProfileRegistry.load(PROFILES)


@pytest.fixture(scope="session")
def validator(registry: ProfileRegistry) -> Validator:
    return Validator(registry)
