"""FHIR REST views. Thin: they parse the HTTP request, call the store, validator or writer, and
shape the answer through ``outcome.fhir_response`` (JSON or XML as negotiated); rules live in the
modules they call."""
from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, request

from gateway.fhir_api.capability import capability_statement
from gateway.fhir_api.formats import FormatError, format_name, negotiate, parse_body
from gateway.fhir_api.outcome import fhir_response, outcome_response
from gateway.fhir_api.writes import FhirOrigin, FhirWriter, WriteError, WriteRequest, WriteResult
from gateway.store import SearchCriterion, SearchError, StoreError
from gateway.web import gateway_of_app

fhir_blueprint = Blueprint("fhir", __name__)



def _base_url() -> str:
    return (current_app.config.get("BASE_URL") or request.url_root.rstrip("/")).rstrip("/") + "/fhir"


def _known_type(resource_type: str) -> Response | None:
    if resource_type not in gateway_of_app().store.params.by_type:
        return outcome_response(404, "not-supported", f"resource type '{resource_type}' is not served here")
    return None


@fhir_blueprint.before_request
def _negotiate_format():
    try:
        negotiate(request.args.get("_format"), request.headers.get("Accept"), request.args.get("_pretty"))
    except FormatError as exc:
        return outcome_response(exc.status, exc.code, str(exc), exc.expression)
    return None


@fhir_blueprint.errorhandler(FormatError)
def _format_error(exc: FormatError) -> Response:
    return outcome_response(exc.status, exc.code, str(exc), exc.expression)


@fhir_blueprint.errorhandler(WriteError)
def _write_error(exc: WriteError) -> Response:
    return fhir_response(exc.outcome, exc.status)


@fhir_blueprint.errorhandler(StoreError)
def _store_error(exc: StoreError) -> Response:
    return outcome_response(exc.status, exc.issue_code, str(exc), getattr(exc, "expression", None))


@fhir_blueprint.get("/metadata")
def metadata() -> Response:
    gw = gateway_of_app()
    profiles = {t: gw.validator.registry.profiles_for(t) for t in gw.store.params.resource_types()}
    return fhir_response(capability_statement(gw.store.params, _base_url(), profiles, current_app))


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
    return _history_bundle(resource_type, resource_id)


@fhir_blueprint.get("/<resource_type>/_history")
def history_type(resource_type: str) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    return _history_bundle(resource_type, None)


@fhir_blueprint.get("/_history")
def history_system() -> Response:
    return _history_bundle(None, None)


def _history_bundle(resource_type: str | None, resource_id: str | None) -> Response:
    """A history Bundle (newest first, deletions included) with _since, _count and next links."""
    from gateway.fhir_api.history import history_bundle
    return fhir_response(history_bundle(gateway_of_app().store, _base_url(), resource_type, resource_id,
                                        request.args, current_app.config))


@fhir_blueprint.post("/<resource_type>/$validate")
def validate(resource_type: str) -> Response:
    from gateway.validation import operation_outcome
    body = parse_body(request.get_data(), request.content_type)
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        body = next((p.get("resource") for p in body.get("parameter", []) if p.get("name") == "resource"), None)
    if not isinstance(body, dict) or body.get("resourceType") != resource_type:
        return outcome_response(400, "invalid", f"the body must be a {resource_type} resource "
                                "(or Parameters with a 'resource' parameter)", "resourceType")
    profile = request.args.get("profile")
    issues = gateway_of_app().validator.validate(body, [profile] if profile else None)
    return fhir_response(operation_outcome(issues))


# ---------------------------------------------------------------------------- writes

def _writer() -> FhirWriter:
    gw = gateway_of_app()
    return FhirWriter(gw.store, gw.validator, lambda: gw.pipeline.on_stored)


def _origin() -> FhirOrigin:
    """Who is writing; the security work fills in the client's organization."""
    return FhirOrigin()


@fhir_blueprint.post("/<resource_type>")
def create(resource_type: str) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    body = parse_body(request.get_data(), request.content_type)
    result = _writer().write(WriteRequest("POST", resource_type, resource=body,
                                          if_none_exist=request.headers.get("If-None-Exist")), _origin())
    return _write_response(result)


@fhir_blueprint.put("/<resource_type>/<resource_id>")
def update(resource_type: str, resource_id: str) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    body = parse_body(request.get_data(), request.content_type)
    result = _writer().write(WriteRequest("PUT", resource_type, resource_id, body,
                                          if_match=request.headers.get("If-Match")), _origin())
    return _write_response(result)


@fhir_blueprint.put("/<resource_type>")
def conditional_update(resource_type: str) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    query = urlencode([(k, v) for k, v in request.args.items(multi=True) if k not in ("_format", "_pretty")])
    if not query:
        return outcome_response(400, "invalid", "a conditional update needs search parameters (PUT Type?param=value)")
    body = parse_body(request.get_data(), request.content_type)
    result = _writer().write(WriteRequest("PUT", resource_type, resource=body, conditional=query,
                                          if_match=request.headers.get("If-Match")), _origin())
    return _write_response(result)


@fhir_blueprint.delete("/<resource_type>/<resource_id>")
def delete(resource_type: str, resource_id: str) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    result = _writer().write(WriteRequest("DELETE", resource_type, resource_id,
                                          if_match=request.headers.get("If-Match")), _origin())
    headers = {"ETag": result.etag} if result.etag else {}
    if _prefer_return() == "OperationOutcome":
        return fhir_response(_deleted_outcome(result), 200, headers)
    return Response(status=204, headers=headers)


@fhir_blueprint.post("/")
@fhir_blueprint.post("")
def bundle() -> Response:
    body = parse_body(request.get_data(), request.content_type)
    if body.get("resourceType") != "Bundle" or body.get("type") not in ("transaction", "batch"):
        return outcome_response(400, "invalid", "POST to the base takes a Bundle of type transaction or batch",
                                "Bundle.type")
    too_many = _too_many_entries(body)
    if too_many is not None:
        return too_many
    writer = _writer()
    answer = writer.transaction(body, _origin()) if body["type"] == "transaction" else writer.batch(body, _origin())
    minimal = _prefer_return() == "minimal"
    for entry in answer["entry"]:
        if minimal:
            entry.pop("resource", None)
        location = entry.get("response", {}).get("location")
        if location:
            entry["fullUrl"] = f"{_base_url()}/{location.split('/_history/')[0]}"
    return fhir_response(answer)


def _too_many_entries(bundle: dict) -> Response | None:
    """A transaction is one store transaction every other writer waits for, a batch one request the
    client waits on: over MAX_TRANSACTION_ENTRIES / MAX_BATCH_ENTRIES (``gateway.bounds``) the Bundle is
    refused whole with 413, before any entry is read, and logged raw."""
    kind = bundle["type"]
    key = "MAX_TRANSACTION_ENTRIES" if kind == "transaction" else "MAX_BATCH_ENTRIES"
    limit = int(current_app.config.get(key) or 0)
    entries = bundle.get("entry")
    count = len(entries) if isinstance(entries, list) else 0
    if limit <= 0 or count <= limit:
        return None
    text = (f"the {kind} has {count} entries; this gateway takes at most {limit} in one {kind} ({key}): "
            f"send them in several Bundles; nothing was stored")
    log_id = gateway_of_app().message_log.refuse(request.get_data(), transport="http", format=f"fhir-{kind}",
                                                 reason=text, http_status=413)
    g.refusal_text = text
    return outcome_response(413, "too-costly", text, "Bundle.entry", headers={"X-Message-Log-Id": str(log_id)})


def _prefer_return() -> str:
    """``Prefer: return=minimal|representation|OperationOutcome`` (representation when absent)."""
    for part in request.headers.get("Prefer", "").split(";"):
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key == "return" and value in ("minimal", "representation", "OperationOutcome"):
                return value
    return "representation"


def _write_response(result: WriteResult) -> Response:
    headers = {"Location": f"{_base_url()}/{result.location}", "ETag": result.etag or "",
               "Last-Modified": result.last_updated or ""}
    wanted = _prefer_return()
    if wanted == "minimal":
        return Response(status=result.status, headers=headers)
    if wanted == "OperationOutcome":
        return fhir_response(result.outcome(), result.status, headers)
    return fhir_response(result.resource, result.status, headers)


def _deleted_outcome(result: WriteResult) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [{
        "severity": "information", "code": "informational",
        "diagnostics": f"{result.resource_type}/{result.resource_id} deleted"
                       + (f" (version {result.version})" if result.version else " (it was already deleted)")}]}


def _version_headers(resource: dict) -> dict:
    meta = resource.get("meta", {})
    return {"ETag": f'W/"{meta.get("versionId", "")}"', "Last-Modified": meta.get("lastUpdated", "")}


from gateway.fhir_api import bulk as _bulk  # noqa: E402,F401  (registers $export on the blueprint)
