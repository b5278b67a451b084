"""The CapabilityStatement, generated from what is registered: never written by hand."""
from __future__ import annotations

from gateway import __version__
from gateway.store import SearchParameterRegistry

SEARCH_TYPE_DOC = {"token": "token", "string": "string", "date": "date", "reference": "reference"}
INTERACTIONS = ["read", "vread", "history-instance", "search-type"]


def capability_statement(params: SearchParameterRegistry, base_url: str, operations: list[dict],
                         profiles: dict[str, list[str]]) -> dict:
    resources = []
    for resource_type in params.resource_types():
        entry = {
            "type": resource_type,
            "interaction": [{"code": code} for code in INTERACTIONS],
            "versioning": "versioned",
            "readHistory": True,
            "searchParam": [
                {"name": "_id", "type": "token", "documentation": "Logical id of the resource"},
                {"name": "_lastUpdated", "type": "date", "documentation": "When the resource last changed"},
                *[{"name": p.name, "type": p.type, "documentation": p.doc}
                  for p in params.for_type(resource_type).values()],
            ],
        }
        if profiles.get(resource_type):
            entry["supportedProfile"] = profiles[resource_type]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "Lecheng FHIR gateway", "version": __version__},
        "implementation": {"description": "Lecheng pilot zone HL7 v2 / FHIR gateway", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{"mode": "server", "resource": resources, "operation": operations}],
    }
