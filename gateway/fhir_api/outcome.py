"""OperationOutcome answers: every FHIR API error is one, with the right HTTP status."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Response

FHIR_JSON = "application/fhir+json; charset=utf-8"


def operation_outcome(severity: str, code: str, diagnostics: str, expression: str | None = None) -> dict:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def fhir_response(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, content_type=FHIR_JSON, headers=headers or {})


def outcome_response(status: int, code: str, diagnostics: str, expression: str | None = None) -> Response:
    severity = "fatal" if status >= 500 else "error"
    return fhir_response(operation_outcome(severity, code, diagnostics, expression), status)
