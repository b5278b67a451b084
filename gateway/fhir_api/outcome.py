"""FHIR answers: the one response helper every FHIR view uses, and OperationOutcome errors.

``fhir_response`` renders in the format the request negotiated (``_format``, ``Accept``,
``_pretty``; see ``formats``), so resources, Bundles and errors all come back in JSON or XML alike.
"""
from __future__ import annotations

from typing import Any

from flask import Response, g, has_request_context, request

from gateway.fhir_api.formats import FormatError, Negotiated, negotiate, render

FHIR_JSON = "application/fhir+json; charset=utf-8"


def operation_outcome(severity: str, code: str, diagnostics: str, expression: str | None = None) -> dict:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def requested_format() -> Negotiated:
    """The format this request asked for (JSON when it asked for nothing served, or outside a request)."""
    if not has_request_context():
        return Negotiated()
    if "fhir_format" not in g:
        try:
            g.fhir_format = negotiate(request.args.get("_format"), request.headers.get("Accept"),
                                      request.args.get("_pretty"))
        except FormatError:
            g.fhir_format = Negotiated("json", request.args.get("_pretty") == "true")
    return g.fhir_format


def fhir_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    fmt = requested_format()
    try:
        content = render(body, fmt)
    except FormatError as exc:  # a stored resource XML cannot express: say so, in JSON
        fmt = Negotiated("json", fmt.pretty)
        body, status = operation_outcome("error", exc.code, str(exc)), exc.status
        content = render(body, fmt)
    return Response(content, status=status, content_type=f"{fmt.mime}; charset=utf-8", headers=headers or {})


def outcome_response(status: int, code: str, diagnostics: str, expression: str | None = None,
                     headers: dict | None = None) -> Response:
    severity = "fatal" if status >= 500 else "error"
    return fhir_response(operation_outcome(severity, code, diagnostics, expression), status, headers)


def issues_response(status: int, outcome: dict) -> Response:
    """An OperationOutcome already built (e.g. from validation issues)."""
    return fhir_response(outcome, status)


__all__ = ["FHIR_JSON", "fhir_response", "issues_response", "operation_outcome", "outcome_response",
           "requested_format"]
