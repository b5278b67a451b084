"""Conformance kit: data-driven checks that a FHIR R4 server (and optionally its HL7 v2 endpoint)
behaves as the specification says. See ``conformance/README.md`` and ``conformance.runner``."""
from conformance.runner import CaseResult, Exchange, KitReport, load_cases, run_kit

__all__ = ["CaseResult", "Exchange", "KitReport", "load_cases", "run_kit"]
