"""Hospitals' own XML, CSV and JSON exports in, FHIR out: the document pipeline; never raises.

    log raw -> read (parse, check the fields the mapping declares) -> map -> validate -> store
    (+ Provenance, routing hook) -> Bundle or OperationOutcome

The raw bytes are in the message log before anything is parsed, so a refused export can be fixed
and sent again, or replayed. Validation, storage, Provenance and the routing hook are the HL7
pipeline's own step (``Hl7Pipeline.store_mapped``); only reading differs (``gateway.mapping.documents``).

Answers (FHIR):

* **200** Bundle ``transaction-response`` for an XML or JSON document (all of it stored, or
  nothing); ``batch-response`` for a CSV file, whose rows are stored one by one: a bad row is an
  entry with status 422 and an OperationOutcome naming line and column, and the good rows are stored
  (a register export is a list of independent reports; refusing 499 good ones for one typo loses
  data). Each written resource is an entry with its ``location`` (``Type/id/_history/n``).
* **400** the bytes are not what the mapping reads: malformed XML (line, column), bytes that are not
  the declared encoding, not JSON, the wrong root element, a CSV header without a required column;
  **404** no mapping of that name; **413** over ``MAX_MESSAGE_BYTES``, or a CSV file of more rows than
  ``MAX_CSV_ROWS`` (``gateway.bounds``: counted before any row is read);
* **422** read, but nothing could be stored: a required value missing, a wrong value, a resource
  breaking its profile. Every issue has ``location`` (XPath, ``line 3, column 'udi_di'``, JSON
  pointer) and, when it is about a FHIR element, ``expression``.

Errors listed in one answer stop at ``MAX_ERRORS_REPORTED`` (the first N rows' or issues, then one
entry or issue counting the rest), so a file of bad rows gets an answer its sender can read.
"""
from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.bounds import csv_rows_over, first_and_count
from gateway.ingest.messagelog import MessageLog
from gateway.ingest.pipeline import Hl7Pipeline, provenance_record
from gateway.mapping.documents import DocumentOrigin, DocumentUnit
from gateway.mapping.engine import DocumentLocation, DocumentProblem, MappedResource, MappingSet, MappingSpec
from gateway.mapping.terminology import Terminology
from gateway.observability import about_message, count_message
from gateway.store.access import bound_organization, current_sender
from gateway.store.upsert import UpsertProblem, UpsertRejected

log = logging.getLogger(__name__)

_UPSERT_ISSUE = {"101": "required", "204": "not-found", "205": "duplicate"}   # HL7 0357 -> FHIR issue type
_HTTP = {200: "200 OK", 201: "201 Created", 422: "422 Unprocessable Entity"}


@dataclass
class UnitOutcome:
    """What became of one document, or one CSV row."""
    label: str
    written: list[tuple[Any, dict, str]] = field(default_factory=list)
    problems: list[DocumentProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)      # routing hold rules that matched: stored, not delivered


@dataclass
class DocumentResult:
    """The HTTP answer (``status``, ``body``: a Bundle or an OperationOutcome) and, for callers and tests, why."""
    status: int
    body: dict
    log_id: int
    log_status: str
    units: list[UnitOutcome] = field(default_factory=list)

    @property
    def resources(self) -> list[str]:
        return [_version_ref(r) for unit in self.units for _m, r, _a in unit.written]


class DocumentPipeline:
    def __init__(self, config: dict, message_log: MessageLog, mappings: MappingSet, terminology: Terminology,
                 zone, writer: Hl7Pipeline):
        self.config = config
        self.log = message_log
        self.mappings = mappings
        self.terminology = terminology
        self.zone = zone
        self.writer = writer          # its store step: validate, store, Provenance, routing hook

    def ingest(self, raw: bytes, mapping_name: str, transport: str = "http") -> DocumentResult:
        """Never raises: every failure is an OperationOutcome, and the raw bytes are already logged."""
        spec = self.mappings.by_name.get(mapping_name)
        source = spec.source if spec is not None else "unknown"
        limit = int(self.config["MAX_MESSAGE_BYTES"])
        log_id = self.log.receive(raw[:limit], transport=f"{transport}-{source}"[:16],
                                  format=(spec.name if spec is not None else "unknown")[:32])
        with about_message(log_id):
            result = self._ingest_or_500(raw, spec, mapping_name, log_id, limit)
        count_message(bound_organization() or current_sender(), spec.name if spec is not None else "unknown",
                      result.log_status, None)
        return result

    def _ingest_or_500(self, raw: bytes, spec: MappingSpec | None, mapping_name: str, log_id: int,
                       limit: int) -> DocumentResult:
        try:
            return self._ingest(raw, spec, mapping_name, log_id, limit)
        except Exception:  # the last line of defence: keep the document for replay, say so
            log.exception("document %s (mapping %s) failed inside the gateway", log_id, mapping_name)
            text = (f"the gateway could not process this document now; it is kept (log id {log_id}) "
                    "and can be replayed")
            return self._refuse(log_id, 500, [DocumentProblem(text, None, "exception")], "error")

    def reprocess(self, log_id: int, raw: bytes, mapping_name: str) -> DocumentResult:
        """Run a logged document through again, in place (an operator's replay, or start-up finishing
        what a crash interrupted). Never raises; upserts make a second pass store nothing new."""
        spec = self.mappings.by_name.get(mapping_name)
        try:
            return self._ingest(raw, spec, mapping_name, log_id, int(self.config["MAX_MESSAGE_BYTES"]))
        except Exception:
            log.exception("document %s (mapping %s) failed inside the gateway on replay", log_id, mapping_name)
            return self._refuse(log_id, 500, [DocumentProblem(
                f"the gateway could not process this document (log id {log_id}) on replay", None, "exception")],
                "error")

    def _refuse(self, log_id: int, status: int, problems: list[DocumentProblem],
                log_status: str = "rejected") -> DocumentResult:
        cap = self._error_cap()
        self.log.finish(log_id, log_status, None, _capped_detail({"errors": [str(p) for p in problems]}, cap))
        return DocumentResult(status, outcome(problems, cap=cap), log_id, log_status)

    def _error_cap(self) -> int:
        return int(self.config.get("MAX_ERRORS_REPORTED") or 0)

    # ------------------------------------------------------------------ steps

    def _ingest(self, raw: bytes, spec: MappingSpec | None, mapping_name: str, log_id: int,
                limit: int) -> DocumentResult:
        if spec is None:
            known = ", ".join(sorted(n for n, s in self.mappings.by_name.items() if s.source != "hl7v2"))
            return self._refuse(log_id, 404, [DocumentProblem(
                f"no mapping named '{mapping_name}' (document mappings: {known})", None, "not-found")])
        if spec.source == "hl7v2":
            return self._refuse(log_id, 400, [DocumentProblem(
                f"mapping '{spec.name}' reads HL7 v2 messages: POST them to /hl7v2", None, "not-supported")])
        if len(raw) > limit:
            return self._refuse(log_id, 413, [DocumentProblem(
                f"the document is {len(raw)} bytes; this gateway takes at most {limit} (MAX_MESSAGE_BYTES); "
                "its first bytes are kept in the message log", None, "too-long")])
        if spec.source == "csv":
            row_limit = int(self.config.get("MAX_CSV_ROWS") or 0)
            lines = csv_rows_over(raw, row_limit, getattr(spec.reader, "delimiter", ","),
                                  getattr(spec.reader, "encoding", "utf-8"))
            if lines is not None:
                return self._refuse(log_id, 413, [DocumentProblem(
                    f"the file has more than {row_limit} rows ({lines} lines); this gateway takes at most {row_limit} "
                    "in one file (MAX_CSV_ROWS): send it in several files; nothing was stored", None, "too-costly")])
        read = spec.reader.read(raw)
        if read.problems:
            return self._refuse(log_id, 400, read.problems)
        digest = hashlib.sha256(raw).hexdigest()[:16]
        first = read.units[0].origin
        identity = {"sender_application": first.sending_application, "sender_facility": first.sending_facility,
                    "control_id": digest, "message_type": first.message_type}
        units = [self._unit(spec, unit, digest) for unit in read.units]
        stored = [u for u in units if u.written]
        failed = [u for u in units if u.problems]
        detail = {"errors": [str(p) for u in failed for p in u.problems],
                  "warnings": [w for u in units for w in u.warnings],
                  "resources": [_version_ref(r) for u in stored for _m, r, _a in u.written]}
        cap = self._error_cap()
        detail = _capped_detail(detail, cap)
        if not stored:
            self.log.finish(log_id, "error", None, detail, identity=identity)
            return DocumentResult(422, outcome([p for u in failed for p in u.problems], cap=cap), log_id, "error",
                                  units)
        status = "error" if failed else "on-hold" if any(u.held for u in stored) else "processed"
        self.log.finish(log_id, status, None, detail, identity=identity)
        bundle_type = "batch-response" if spec.source == "csv" else "transaction-response"
        return DocumentResult(200, response_bundle(bundle_type, units, cap), log_id, status, units)

    def _unit(self, spec: MappingSpec, unit: DocumentUnit, digest: str) -> UnitOutcome:
        result = UnitOutcome(unit.label)
        if unit.problems:
            result.problems = list(unit.problems)
            return result
        mapped = spec.run(unit, self.terminology, self.zone)
        result.warnings = list(mapped.warnings)
        if mapped.errors:
            result.problems = [e if isinstance(e, DocumentProblem) else DocumentProblem(e.text)
                               for e in mapped.errors]
            return result
        if not mapped.resources:
            result.problems = [DocumentProblem(f"nothing in {unit.label} could be turned into a resource by "
                                               f"mapping '{spec.name}'", None, "required")]
            return result
        bound = bound_organization()        # a hospital sends only as itself (gateway/security)
        if bound is not None and unit.origin.sending_facility not in (None, bound):
            result.problems = [DocumentProblem(f"sending facility '{unit.origin.sending_facility}' is not this "
                                               f"client's organization '{bound}'; nothing was stored", None,
                                               "forbidden")]
            return result
        suffix = f":{unit.label.replace(' ', '-')}" if unit.label != "document" else ""
        origin = replace(unit.origin, control_id=digest + suffix)
        source = f"urn:{spec.source}:{origin.sending_facility or 'unknown'}:{origin.control_id}"
        try:
            stored = self.writer.store_mapped(
                mapped.resources, source, origin,
                lambda changed: self._provenance(origin, unit, changed, source))
        except UpsertRejected as exc:
            result.problems = [_upsert_problem(p) for p in exc.result.problems]
            result.warnings += exc.result.warnings
            return result
        result.written = stored.written
        result.warnings += stored.warnings
        result.warnings += [f"{p.text}" for p in stored.unresolved]
        result.held = list(stored.held)
        result.warnings += [f"held for review, not delivered: {reason}" for reason in stored.held]
        return result

    def _provenance(self, origin: DocumentOrigin, unit: DocumentUnit, changed: list[dict], source: str) -> dict:
        base = self.terminology.canonical_base
        facility = origin.sending_facility or "unknown"
        return provenance_record(
            base, changed, source, facility, f"{origin.message_type} export from {facility}",
            {"system": f"{base}/sid/document/{facility}", "value": origin.control_id},
            f"{origin.message_type} {unit.label} (sha256 {origin.control_id.split(':')[0]}...)")


def _capped_detail(detail: dict, cap: int) -> dict:
    """The message log's detail with its error list cut like the answer (the raw bytes are kept)."""
    errors, more = first_and_count(detail.get("errors") or [], cap)
    if more:
        detail = {**detail, "errors": errors, "errors_not_listed": more}
    return detail


def _version_ref(resource: dict) -> str:
    return f"{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"


def _upsert_problem(problem: UpsertProblem) -> DocumentProblem:
    mapped: MappedResource = problem.mapped
    where = mapped.source_of(f"{mapped.type}.{problem.element}") if problem.element else None
    if where is None:
        where = mapped.source_of(f"{mapped.type}.identifier")
    text = problem.text
    if problem.element and not text.startswith(mapped.type):
        text = f"{mapped.type}.{problem.element}: {text}"
    return DocumentProblem(text, where if isinstance(where, DocumentLocation) else None,
                           _UPSERT_ISSUE.get(problem.code, "invalid"))


def _expression(problem: DocumentProblem) -> str | None:
    """'Device.lotNumber: ...' -> 'Device.lotNumber' (the FHIR element a problem is about)."""
    head = problem.text.split(":", 1)[0]
    return head if head[:1].isupper() and "." in head and " " not in head else None


def _issue(problem: DocumentProblem, severity: str = "error") -> dict:
    issue: dict[str, Any] = {"severity": severity, "code": problem.code, "diagnostics": str(problem)}
    if problem.location is not None:
        issue["location"] = [str(problem.location)]
    expression = _expression(problem)
    if expression:
        issue["expression"] = [expression]
    return issue


def outcome(problems: list[DocumentProblem], warnings: list[str] | None = None, cap: int = 0) -> dict:
    """The problems as issues: the first ``cap`` of them (0: all), then one issue counting the rest."""
    shown, more = first_and_count(problems, cap)
    issues = [_issue(p) for p in shown]
    if more:
        issues.append({"severity": "error", "code": "too-costly",
                       "diagnostics": f"and {more} more errors like these (MAX_ERRORS_REPORTED lists the first {cap})"})
    issues += [{"severity": "warning", "code": "informational", "diagnostics": w} for w in warnings or ()]
    return {"resourceType": "OperationOutcome", "id": str(uuid.uuid4()), "issue": issues}


def response_bundle(bundle_type: str, units: list[UnitOutcome], cap: int = 0) -> dict:
    """Every written resource with its location; a failed CSV row as an entry with status 422, for the
    first ``cap`` failed rows (0: all), then one 422 entry counting the rest and naming their lines."""
    entries = []
    failed = 0
    not_listed: list[str] = []
    for unit in units:
        if unit.problems and not unit.written:
            failed += 1
            if cap > 0 and failed > cap:
                not_listed.append(unit.label)
                continue
        first = len(entries)
        for _mapped, resource, action in unit.written:
            meta = resource.get("meta", {})
            entries.append({"response": {
                "status": _HTTP[201 if action == "create" else 200],
                "location": _version_ref(resource), "etag": f'W/"{meta.get("versionId")}"',
                "lastModified": meta.get("lastUpdated")}})
        if unit.problems:
            entries.append({"response": {"status": _HTTP[422], "outcome": outcome(unit.problems, unit.warnings)}})
        elif unit.warnings and len(entries) > first:
            entries[first]["response"]["outcome"] = outcome([], unit.warnings)
    if not_listed:
        span = not_listed[0] if len(not_listed) == 1 else f"{not_listed[0]} to {not_listed[-1]}"
        entries.append({"response": {"status": _HTTP[422], "outcome": outcome([DocumentProblem(
            f"{len(not_listed)} more rows were not stored ({span}); their errors are not listed here "
            f"(MAX_ERRORS_REPORTED lists the first {cap}); the file is kept in the message log", None,
            "too-costly")])}})
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": bundle_type, "entry": entries}
