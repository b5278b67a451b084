"""A small FHIR R4 fake for the kit's own tests: correct by default, with named faults that a real
server might have, so the tests can show the kit catches each one."""
from __future__ import annotations

import re

from flask import Flask, Response, jsonify, request

FAULTS = ("paging_repeats", "unknown_id_200", "search_param_500", "missing_outcome_on_400")
DATE_VALUE = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?\d{4}(-\d{2}(-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def _order(number: int) -> dict:
    return {"resourceType": "MedicationRequest", "id": f"mr{number}",
            "meta": {"versionId": "1", "lastUpdated": f"2026-03-1{number}T09:30:00+08:00"},
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "PLAC"}]},
                            "system": "https://fake.example/placer", "value": f"RX-{number}"}],
            "status": "active", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": "https://fake.example/drugs", "code": f"D{number}"}],
                                          "text": f"Drug {number}"},
            "subject": {"reference": "Patient/p1"}, "requester": {"reference": "Practitioner/d1"},
            "authoredOn": f"2026-03-1{number}"}


def _outcome(status: int, code: str, text: str) -> Response:
    response = jsonify({"resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": code, "diagnostics": text}]})
    response.status_code = status
    response.content_type = "application/fhir+json"
    return response


def make_fake_fhir_app(faults: set[str] | frozenset[str] = frozenset()) -> Flask:
    """A fake FHIR server holding three MedicationRequests; each name in ``faults`` breaks one thing."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {unknown}")
    app = Flask("fake-fhir")
    orders = [_order(n) for n in (1, 2, 3)]
    by_id = {o["id"]: o for o in orders}
    params = [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"},
              {"name": "status", "type": "token"}, {"name": "authoredon", "type": "date"}]
    if "search_param_500" in faults:
        params.append({"name": "patient", "type": "reference"})

    @app.get("/fhir/metadata")
    def metadata():
        return jsonify({"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
                        "date": "2026-01-01", "fhirVersion": "4.0.1", "format": ["json"],
                        "rest": [{"mode": "server", "resource": [
                            {"type": "MedicationRequest", "searchParam": params,
                             "interaction": [{"code": c} for c in ("read", "vread", "history-instance",
                                                                   "search-type")]}]}]})

    def _known(resource_type: str) -> Response | None:
        return None if resource_type == "MedicationRequest" else \
            _outcome(404, "not-supported", f"{resource_type} is not served")

    def _bad_request(text: str) -> Response:
        if "missing_outcome_on_400" in faults:
            return Response("bad request", status=400, content_type="text/plain")
        return _outcome(400, "invalid", text)

    @app.get("/fhir/<resource_type>")
    def search(resource_type: str):
        if (problem := _known(resource_type)) is not None:
            return problem
        declared = {p["name"] for p in params} | {"_count", "_cursor"}
        unknown_params = [k for k in request.args if k not in declared]
        if unknown_params and "handling=strict" in request.headers.get("Prefer", ""):
            return _bad_request(f"unknown parameters {unknown_params}")
        if "patient" in request.args:
            return Response("Internal Server Error", status=500)
        matches = list(orders)
        for name in ("_lastUpdated", "authoredon"):
            if name in request.args and not DATE_VALUE.match(request.args[name]):
                return _bad_request(f"{name}: not a date")
        if "_id" in request.args:
            matches = [o for o in matches if o["id"] == request.args["_id"]]
        if "status" in request.args:
            matches = [o for o in matches if o["status"] == request.args["status"]]
        count = int(request.args.get("_count", 10))
        offset = int(request.args.get("_cursor", 0))
        start = offset - 1 if "paging_repeats" in faults and offset > 0 else offset
        page = matches[start:start + count]
        links = [{"relation": "self", "url": request.url}]
        if offset + count < len(matches):
            links.append({"relation": "next",
                          "url": f"{request.base_url}?_count={count}&_cursor={offset + count}"})
        return jsonify({"resourceType": "Bundle", "type": "searchset", "total": len(matches), "link": links,
                        "entry": [{"fullUrl": f"{request.host_url}fhir/MedicationRequest/{o['id']}",
                                   "resource": o, "search": {"mode": "match"}} for o in page]})

    @app.get("/fhir/<resource_type>/<resource_id>")
    def read(resource_type: str, resource_id: str):
        if (problem := _known(resource_type)) is not None:
            return problem
        if resource_id not in by_id:
            if "unknown_id_200" in faults:
                return _outcome(200, "not-found", "no such resource")
            return _outcome(404, "not-found", f"{resource_id} is not known")
        response = jsonify(by_id[resource_id])
        response.headers["ETag"] = 'W/"1"'
        return response

    @app.get("/fhir/<resource_type>/<resource_id>/_history/<version>")
    def vread(resource_type: str, resource_id: str, version: str):
        if (problem := _known(resource_type)) is not None:
            return problem
        if resource_id not in by_id or version != "1":
            return _outcome(404, "not-found", "no such version")
        return jsonify(by_id[resource_id])

    @app.get("/fhir/<resource_type>/<resource_id>/_history")
    def history(resource_type: str, resource_id: str):
        if (problem := _known(resource_type)) is not None:
            return problem
        if resource_id not in by_id:
            return _outcome(404, "not-found", "no such resource")
        return jsonify({"resourceType": "Bundle", "type": "history", "total": 1,
                        "entry": [{"resource": by_id[resource_id], "request": {"method": "PUT", "url":
                                   f"MedicationRequest/{resource_id}"}, "response": {"status": "200"}}]})

    return app
