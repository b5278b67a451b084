"""Bulk Data Access 2.0 ``$export`` over HTTP: kick-off, status polling, files, cancel.

    GET /fhir/$export?_type=..&_since=..&_typeFilter=..      Prefer: respond-async  -> 202 + Content-Location
    GET /fhir/Patient/$export?...                            (the Patient compartment only)
    GET /fhir/bulkstatus/<job>   -> 202 + X-Progress while running, 200 + manifest when done
    DELETE /fhir/bulkstatus/<job> -> 202; the job and its files are gone (404 afterwards)
    GET /fhir/bulkfiles/<job>/<Type>.ndjson -> application/fhir+ndjson

The IG defines system, Patient and Group level kick-offs; this gateway stores no Groups, so it
offers the first two. The work runs in ``gateway.export`` on a background thread per job.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import orjson
from flask import Response, current_app, request, send_file

from gateway.export import ExportJob, ExportJobs, ExportRequest
from gateway.fhir_api.formats import NDJSON_MIME
from gateway.fhir_api.history import parse_instant
from gateway.fhir_api.outcome import fhir_response, outcome_response
from gateway.fhir_api.views import _base_url, fhir_blueprint
from gateway.fhir_api.writes import WriteError, criteria_from_query
from gateway.security.enforcement import current_principal
from gateway.store import SearchError
from gateway.web import gateway_of_app

OUTPUT_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
UNSUPPORTED_PARAMS = ("_elements", "patient", "includeAssociatedData", "_typeFilter:")


def export_jobs() -> ExportJobs:
    """The app's export jobs, made on first use. At every export request (kick-off, status poll,
    download, cancel) unfinished jobs whose process stopped renewing them are taken over here."""
    app = current_app._get_current_object()
    jobs = app.extensions.get("bulk_export")
    if jobs is None:
        gw = gateway_of_app()
        jobs = ExportJobs(gw.store, gw.store.engine, app.config.get("EXPORT_DIR")
                          or Path(app.config["DATA_DIR"]) / "exports")
        app.extensions["bulk_export"] = jobs
    jobs.resume_unfinished()
    return jobs


@fhir_blueprint.get("/$export")
def export_system() -> Response:
    types = sorted(gateway_of_app().store.params.resource_types())
    return _kick_off("system", types)


@fhir_blueprint.get("/Patient/$export")
def export_patient() -> Response:
    return _kick_off("patient", patient_compartment_types())


@fhir_blueprint.post("/$export")
@fhir_blueprint.post("/Patient/$export")
def export_post() -> Response:
    """The IG lets a server offer the POST kick-off (a Parameters body); this one offers GET only."""
    response = outcome_response(405, "not-supported", "start a bulk export with GET (query parameters "
                                "_type, _since, _typeFilter, _outputFormat); POST with Parameters is not offered")
    response.headers["Allow"] = "GET"
    return response


@fhir_blueprint.route("/Group/<group_id>/$export", methods=["GET", "POST"])
def export_group(group_id: str) -> Response:
    return outcome_response(404, "not-supported", f"no Group/{group_id}: this gateway stores no Groups, so it "
                            "offers the system ($export) and Patient (Patient/$export) kick-offs only")


def patient_compartment_types() -> list[str]:
    """Patient, and every type with a reference search parameter that can point at a Patient."""
    params = gateway_of_app().store.params
    types = {"Patient"}
    for resource_type in params.resource_types():
        for p in params.for_type(resource_type).values():
            if p.type == "reference" and (not p.targets or "Patient" in p.targets):
                types.add(resource_type)
    return sorted(types)


def _kick_off(kind: str, allowed: list[str]) -> Response:
    if "respond-async" not in request.headers.get("Prefer", ""):
        return outcome_response(400, "invalid", "a bulk export needs the header 'Prefer: respond-async'")
    output_format = request.args.get("_outputFormat")
    if output_format and output_format not in OUTPUT_FORMATS:
        return outcome_response(400, "not-supported", f"_outputFormat '{output_format}' is not offered; "
                                "use application/fhir+ndjson", "_outputFormat")
    for name in request.args:
        if name in UNSUPPORTED_PARAMS:
            return outcome_response(400, "not-supported", f"the export parameter '{name}' is not supported here", name)
    types = allowed
    if request.args.get("_type"):
        types = [t.strip() for value in request.args.getlist("_type") for t in value.split(",") if t.strip()]
        unknown = [t for t in types if t not in allowed]
        if unknown:
            return outcome_response(400, "not-supported", f"_type {', '.join(unknown)}: not exported at this level "
                                    f"(offered: {', '.join(allowed)})", "_type")
        types = list(dict.fromkeys(types))
    try:
        since = parse_instant(request.args["_since"]) if request.args.get("_since") else None
        filters = _type_filters(types)
    except WriteError as exc:
        return fhir_response(exc.outcome, exc.status)
    principal = current_principal()
    owner = principal.client_id if principal is not None else None
    job_id = export_jobs().kick_off(ExportRequest(kind, request.url, types, since, filters, owner))
    return Response(status=202, headers={"Content-Location": f"{_base_url()}/bulkstatus/{job_id}"})


def _type_filters(types: list[str]) -> dict:
    """``_typeFilter=MedicationRequest%3Fstatus%3Dactive`` -> {type: [criteria, ...]} (ORed per type)."""
    filters: dict[str, list] = {}
    raw_pairs = (pair.partition("=") for pair in request.query_string.decode("latin-1").split("&"))
    for value in (v for k, _, v in raw_pairs if unquote(k) == "_typeFilter"):
        # commas between the raw (still encoded) queries separate filters; commas inside are %2C
        for item in value.split(","):
            text = unquote(item.replace("+", " ").strip())
            resource_type, sep, query = text.partition("?")
            if not sep or not query:
                raise WriteError(400, "invalid", f"_typeFilter '{text}' must be Type?search-parameters", "_typeFilter")
            if resource_type not in types:
                raise WriteError(400, "invalid", f"_typeFilter names {resource_type}, which this export does not "
                                 "include", "_typeFilter")
            try:
                criteria = criteria_from_query(gateway_of_app().store, resource_type, query)
            except SearchError as exc:
                raise WriteError(400, "invalid", f"_typeFilter '{text}': {exc}", "_typeFilter") from exc
            filters.setdefault(resource_type, []).append(criteria)
    return filters


@fhir_blueprint.get("/bulkstatus/<job_id>")
def export_status(job_id: str) -> Response:
    job = _visible_job(job_id)
    if job is None:
        return outcome_response(404, "not-found", f"no export job {job_id} (unknown, or cancelled)")
    if job.status in ("accepted", "in-progress"):
        return Response(status=202, headers={"X-Progress": job.progress, "Retry-After": "1"})
    if job.status == "failed":
        return outcome_response(500, "exception", job.error or "the export failed")
    base = _base_url()
    manifest = {
        "transactionTime": job.transaction_time,
        "request": job.request.request_url,
        # the files are served under /fhir like everything else: a token when the security layer is on
        "requiresAccessToken": "security" in current_app.extensions,
        "output": [{"type": o.type, "url": f"{base}/bulkfiles/{job.id}/{o.file}", "count": o.count}
                   for o in job.output],
        "error": [],
    }
    return Response(orjson.dumps(manifest), status=200, content_type="application/json")


@fhir_blueprint.delete("/bulkstatus/<job_id>")
def export_cancel(job_id: str) -> Response:
    if _visible_job(job_id) is None or not export_jobs().cancel(job_id):
        return outcome_response(404, "not-found", f"no export job {job_id} (unknown, or already cancelled)")
    return fhir_response({"resourceType": "OperationOutcome", "issue": [{
        "severity": "information", "code": "informational", "diagnostics": f"export job {job_id} cancelled"}]}, 202)


@fhir_blueprint.get("/bulkfiles/<job_id>/<name>")
def export_file(job_id: str, name: str) -> Response:
    job = _visible_job(job_id)
    path = export_jobs().file_path(job, name) if job is not None else None
    if path is None:
        return outcome_response(404, "not-found", f"no export file {name} for job {job_id}")
    if not path.is_file():          # listed in the job's manifest, yet not in this process's EXPORT_DIR
        return outcome_response(404, "not-found", f"export file {name} of job {job_id} is not in this gateway's "
                                "EXPORT_DIR: the job ran at another machine; EXPORT_DIR must be storage every "
                                "machine of the deployment mounts")
    return send_file(path, mimetype=NDJSON_MIME, conditional=True)


def _visible_job(job_id: str) -> ExportJob | None:
    """A job, if the caller may see it: its own client's, or any for an admin; others' jobs are 'not found'
    (a regulator's export of every hospital's data is not another client's to read or cancel)."""
    job = export_jobs().get(job_id)
    principal = current_principal()
    if job is None or principal is None or principal.role == "admin" or job.request.owner in (None, principal.client_id):
        return job
    return None
