"""The CapabilityStatement, generated from what is registered: never written by hand.

Interactions and operations come from the Flask routes the ``fhir`` blueprint really has (an
endpoint that is not registered is not claimed); resource types and search parameters from the
store's registry; profiles from ``profiles/``; formats from ``formats``. AuditEvent is served by
the security blueprint from its own table (read and search only, its parameters from
``gateway.security.audit.SEARCH_PARAMETERS``); it is listed when those routes are registered.
``tests/fhir_api/test_capability_walk.py`` exercises every claim against a loaded gateway.
"""
from __future__ import annotations

from flask import Flask

from gateway import __version__
from gateway.fhir_api.formats import SUPPORTED_FORMATS
from gateway.store import SearchParameterRegistry

# blueprint endpoint -> the interaction it implements (type level unless listed as system)
TYPE_INTERACTIONS = {"read": "read", "vread": "vread", "update": "update", "delete": "delete",
                     "history": "history-instance", "history_type": "history-type", "create": "create",
                     "search": "search-type"}
SYSTEM_INTERACTIONS = {"bundle": ["transaction", "batch"], "history_system": ["history-system"]}
OPERATIONS = {  # endpoint -> (name, definition, level)
    "validate": ("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate", "type"),
    "export_system": ("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export", "system"),
    "export_patient": ("export", "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export", "Patient"),
}


def registered_endpoints(app: Flask, blueprint: str = "fhir") -> set[str]:
    prefix = f"{blueprint}."
    return {rule.endpoint[len(prefix):] for rule in app.url_map.iter_rules() if rule.endpoint.startswith(prefix)}


def capability_statement(params: SearchParameterRegistry, base_url: str, profiles: dict[str, list[str]],
                         app: Flask) -> dict:
    endpoints = registered_endpoints(app)
    interactions = [code for endpoint, code in TYPE_INTERACTIONS.items() if endpoint in endpoints]
    resources = []
    for resource_type in params.resource_types():
        entry = {
            "type": resource_type,
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": "update" in endpoints,
            "conditionalCreate": "create" in endpoints,
            "conditionalRead": "not-supported",
            "conditionalUpdate": "conditional_update" in endpoints,
            "conditionalDelete": "not-supported",
            **search_capability(params, resource_type),
        }
        if profiles.get(resource_type):
            entry["supportedProfile"] = profiles[resource_type]
        entry["operation"] = [{"name": name, "definition": definition}
                              for endpoint, (name, definition, level) in OPERATIONS.items()
                              if endpoint in endpoints and level in ("type", resource_type)]
        if not entry["operation"]:
            del entry["operation"]
        resources.append(entry)
    audit = audit_capability(app)
    if audit is not None:
        resources.append(audit)
        resources.sort(key=lambda r: r["type"])
    system_operations = [{"name": name, "definition": definition}
                         for endpoint, (name, definition, level) in OPERATIONS.items()
                         if endpoint in endpoints and level == "system"]
    rest = {"mode": "server", "resource": resources,
            "interaction": [{"code": code} for endpoint, codes in SYSTEM_INTERACTIONS.items()
                            if endpoint in endpoints for code in codes]}
    if system_operations:
        rest["operation"] = system_operations
    security = security_capability(app, base_url)
    if security:
        rest["security"] = security
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "Lecheng FHIR gateway", "version": __version__},
        "implementation": {"description": "Lecheng pilot zone HL7 v2 / FHIR gateway", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": list(SUPPORTED_FORMATS),
        "rest": [rest],
    }


def audit_capability(app: Flask) -> dict | None:
    """AuditEvent as the security blueprint serves it: read and search, never written by clients."""
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    if "security.audit_search" not in endpoints:
        return None
    from gateway.security.audit import SEARCH_PARAMETERS
    interactions = [code for endpoint, code in (("security.audit_read", "read"), ("security.audit_search",
                                                                                  "search-type"))
                    if endpoint in endpoints]
    return {"type": "AuditEvent", "interaction": [{"code": code} for code in interactions],
            "versioning": "no-version", "readHistory": False, "updateCreate": False,
            "conditionalCreate": False, "conditionalRead": "not-supported", "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": [{"name": name, "type": kind, "documentation": doc}
                            for name, (kind, doc) in SEARCH_PARAMETERS.items()]}


def security_capability(app: Flask, base_url: str) -> dict | None:
    """SMART Backend Services, declared only when the security blueprint's token endpoint is registered."""
    if "security.token" not in {rule.endpoint for rule in app.url_map.iter_rules()}:
        return None
    root = base_url[: -len("/fhir")] if base_url.endswith("/fhir") else base_url
    return {
        "cors": False,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                 "code": "SMART-on-FHIR"}],
                     "text": "OAuth2 client credentials (SMART Backend Services); bearer tokens on every request"}],
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                       "extension": [{"url": "token", "valueUri": f"{root}/auth/token"}]}],
        "description": f"Discovery: {base_url}/.well-known/smart-configuration. Scopes are SMART v2 system scopes "
                       "(system/MedicationRequest.rs, ...), cut down to the client's role and organization.",
    }


def search_capability(params: SearchParameterRegistry, resource_type: str) -> dict:
    """searchInclude, searchRevInclude and searchParam of a type, from the search-parameter registry."""
    declared = params.for_type(resource_type)
    references = [p.name for p in declared.values() if p.type == "reference"]
    revincludes = [f"{p.resource_type}:{p.name}" for p in params.references_to(resource_type)]
    search_params = [{"name": p.name, "type": p.type, "documentation": p.doc} for p in declared.values()]
    search_params.append({"name": "_sort", "type": "special", "documentation":
                          f"Sort keys, comma separated, '-' for descending; any of: {', '.join(declared)}"})
    if revincludes:
        search_params.append({"name": "_has", "type": "special", "documentation":
                              "Reverse chaining, _has:Type:reference:parameter=value; Type:reference one of "
                              + ", ".join(revincludes)})
    found = {"searchParam": search_params}
    if references:
        found["searchInclude"] = [*(f"{resource_type}:{name}" for name in references), f"{resource_type}:*"]
    if revincludes:
        found["searchRevInclude"] = revincludes
    return found
