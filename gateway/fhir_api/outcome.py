"""FHIR answers: the one response helper every FHIR view uses, and OperationOutcome errors.

``fhir_response`` renders in the format the request negotiated (``_format``, ``Accept``,
``_pretty``; see ``formats``), so resources, Bundles and errors all come back in JSON or XML alike.
"""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, g, has_app_context, has_request_context, request

from gateway.bounds import first_and_count
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
    if body.get("resourceType") == "OperationOutcome":
        body = capped_outcome(body)
    fmt = requested_format()
    try:
        content = render(body, fmt)
    except FormatError as exc:  # a stored resource XML cannot express: say so, in JSON
        fmt = Negotiated("json", fmt.pretty)
        body, status = operation_outcome("error", exc.code, str(exc)), exc.status
        content = render(body, fmt)
    return Response(content, status=status, content_type=f"{fmt.mime}; charset=utf-8", headers=headers or {})


def capped_outcome(outcome: dict) -> dict:
    """An OperationOutcome with its first ``MAX_ERRORS_REPORTED`` issues and one more counting the rest
    (``gateway.bounds``): a resource with ten thousand bad elements gets an answer a client can read."""
    issues = outcome.get("issue")
    limit = int(current_app.config.get("MAX_ERRORS_REPORTED") or 0) if has_app_context() else 0
    if not isinstance(issues, list) or (len(issues) == limit + 1 and issues[-1].get("code") == "too-costly"):
        return outcome          # not a list, or already cut by the pipeline that built it
    shown, more = first_and_count(issues, limit)
    if not more:
        return outcome
    hidden = {issue.get("severity") for issue in issues[len(shown):] if isinstance(issue, dict)}
    severity = next((s for s in ("fatal", "error", "warning") if s in hidden), "information")
    return {**outcome, "issue": shown + [{
        "severity": severity, "code": "too-costly",
        "diagnostics": f"and {more} more issues (MAX_ERRORS_REPORTED lists the first {limit})"}]}


def outcome_response(status: int, code: str, diagnostics: str, expression: str | None = None,
                     headers: dict | None = None) -> Response:
    severity = "fatal" if status >= 500 else "error"
    return fhir_response(operation_outcome(severity, code, diagnostics, expression), status, headers)


def issues_response(status: int, outcome: dict) -> Response:
    """An OperationOutcome already built (e.g. from validation issues)."""
    return fhir_response(outcome, status)


__all__ = ["FHIR_JSON", "fhir_response", "issues_response", "operation_outcome", "outcome_response",
           "requested_format"]
