"""FHIR REST views. Thin: they parse the HTTP request, call the store or validator, and shape the
answer; rules live in the modules they call."""
from __future__ import annotations

from urllib.parse import urlencode

import orjson
from flask import Blueprint, Response, current_app, request

from gateway.fhir_api.capability import capability_statement
from gateway.fhir_api.outcome import fhir_response, outcome_response
from gateway.store import SearchCriterion, SearchError, StoreError
from gateway.web import gateway_of_app

fhir_blueprint = Blueprint("fhir", __name__)

CONTROL_PARAMS = {"_count", "_cursor", "_format", "_total", "_pretty"}
JSON_FORMATS = {"json", "application/json", "application/fhir+json"}


def _base_url() -> str:
    return (current_app.config.get("BASE_URL") or request.url_root.rstrip("/")).rstrip("/") + "/fhir"


def _known_type(resource_type: str) -> Response | None:
    if resource_type not in gateway_of_app().store.params.by_type:
        return outcome_response(404, "not-supported", f"resource type '{resource_type}' is not served here")
    return None


@fhir_blueprint.before_request
def _only_json():
    wanted = request.args.get("_format")
    if wanted and wanted not in JSON_FORMATS:
        return outcome_response(406, "not-supported", f"_format '{wanted}' is not served; use json")
    return None


@fhir_blueprint.get("/metadata")
def metadata() -> Response:
    gw = gateway_of_app()
    profiles = {t: gw.validator.registry.profiles_for(t) for t in gw.store.params.resource_types()}
    operations = [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}]
    return fhir_response(capability_statement(gw.store.params, _base_url(), operations, profiles))


@fhir_blueprint.get("/<resource_type>/<resource_id>")
def read(resource_type: str, resource_id: str) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    try:
        resource = gateway_of_app().store.read(resource_type, resource_id)
    except StoreError as exc:
        return outcome_response(exc.status, exc.issue_code, str(exc))
    return fhir_response(resource, headers=_version_headers(resource))


@fhir_blueprint.get("/<resource_type>/<resource_id>/_history/<version_id>")
def vread(resource_type: str, resource_id: str, version_id: str) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    try:
        resource = gateway_of_app().store.vread(resource_type, resource_id, version_id)
    except StoreError as exc:
        return outcome_response(exc.status, exc.issue_code, str(exc))
    return fhir_response(resource, headers=_version_headers(resource))


@fhir_blueprint.get("/<resource_type>/<resource_id>/_history")
def history(resource_type: str, resource_id: str) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    try:
        versions = gateway_of_app().store.history(resource_type, resource_id)
    except StoreError as exc:
        return outcome_response(exc.status, exc.issue_code, str(exc))
    base = _base_url()
    entries = []
    for resource, method, deleted in versions:
        entry = {"fullUrl": f"{base}/{resource_type}/{resource_id}",
                 "request": {"method": method, "url": f"{resource_type}/{resource_id}" if method != "POST" else resource_type},
                 "response": {"status": "204" if deleted else ("201" if method == "POST" else "200"),
                              "lastModified": resource["meta"]["lastUpdated"]}}
        if not deleted:
            entry["resource"] = resource
        entries.append(entry)
    return fhir_response({"resourceType": "Bundle", "type": "history", "total": len(entries),
                          "link": [{"relation": "self", "url": request.url}], "entry": entries})


@fhir_blueprint.get("/<resource_type>")
def search(resource_type: str) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    gw = gateway_of_app()
    config = current_app.config
    try:
        count = min(int(request.args.get("_count", config["DEFAULT_PAGE_SIZE"])), config["MAX_PAGE_SIZE"])
        if count < 0:
            raise ValueError
    except ValueError:
        return outcome_response(400, "invalid", "_count must be a whole number >= 0", "_count")
    known = gw.store.params.for_type(resource_type)
    criteria, ignored = [], []
    for key in request.args:
        if key in CONTROL_PARAMS:
            continue
        name, _, modifier = key.partition(":")
        if name not in known and name not in ("_id", "_lastUpdated"):
            ignored.append(key)
            continue
        for value in request.args.getlist(key):
            criteria.append(SearchCriterion(name, [v for v in value.split(",") if v], modifier or None))
    if ignored and "handling=strict" in request.headers.get("Prefer", ""):
        return outcome_response(400, "not-supported", f"unknown search parameter(s): {', '.join(ignored)}")
    try:
        page = gw.store.search(resource_type, criteria, count, request.args.get("_cursor"))
    except SearchError as exc:
        return outcome_response(400, "invalid", str(exc))
    base = _base_url()
    query = [(k, v) for k in request.args for v in request.args.getlist(k) if k != "_cursor"]
    links = [{"relation": "self", "url": f"{base}/{resource_type}?{urlencode(query + _cursor_param())}"}]
    if page.next_cursor:
        links.append({"relation": "next",
                      "url": f"{base}/{resource_type}?{urlencode(query + [('_cursor', page.next_cursor)])}"})
    entries = [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
               for r in page.resources]
    if ignored:
        entries.append({"resource": {"resourceType": "OperationOutcome", "issue": [{
            "severity": "warning", "code": "not-supported",
            "diagnostics": f"unknown search parameter(s) ignored: {', '.join(ignored)}"}]},
            "search": {"mode": "outcome"}})
    return fhir_response({"resourceType": "Bundle", "type": "searchset", "total": page.total,
                          "link": links, "entry": entries})


def _cursor_param() -> list[tuple[str, str]]:
    cursor = request.args.get("_cursor")
    return [("_cursor", cursor)] if cursor else []


@fhir_blueprint.post("/<resource_type>/$validate")
def validate(resource_type: str) -> Response:
    from gateway.validation import operation_outcome
    try:
        body = orjson.loads(request.get_data())
    except orjson.JSONDecodeError as exc:
        return outcome_response(400, "structure", f"the body is not JSON: {exc}")
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        body = next((p.get("resource") for p in body.get("parameter", []) if p.get("name") == "resource"), None)
    if not isinstance(body, dict) or body.get("resourceType") != resource_type:
        return outcome_response(400, "invalid", f"the body must be a {resource_type} resource "
                                "(or Parameters with a 'resource' parameter)", "resourceType")
    profile = request.args.get("profile")
    issues = gateway_of_app().validator.validate(body, [profile] if profile else None)
    return fhir_response(operation_outcome(issues))


def _version_headers(resource: dict) -> dict:
    meta = resource.get("meta", {})
    return {"ETag": f'W/"{meta.get("versionId", "")}"', "Last-Modified": meta.get("lastUpdated", "")}
