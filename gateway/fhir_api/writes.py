"""The FHIR write path: create, update, delete (plain, conditional, versioned) and Bundles.

One entry point for every write a FHIR client makes, :class:`FhirWriter`:

* ``write(WriteRequest)`` for a single interaction, in its own store transaction;
* ``transaction(bundle)``: all entries in one store transaction, ``urn:uuid:`` references rewritten
  to the ids the server assigns, all or nothing;
* ``batch(bundle)``: each entry on its own, each with its own outcome.

Every resource is validated (``gateway.validation``, the profiles in ``profiles/``) before it is
stored; errors refuse the write with an OperationOutcome whose ``expression`` points at the
element. Inside the transaction, the routing hook (``pipeline.on_stored``) sees what was written,
with a :class:`FhirOrigin` in place of the HL7 message, so FHIR writes are routed like HL7 ones.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl

from gateway.store import ResourceStore, SearchCriterion, SearchError, StoreError, StoreTransaction
from gateway.store.search import parse_search
from gateway.validation import Issue, Validator, operation_outcome

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class FhirOrigin:
    """Who wrote through the FHIR API, shaped like the fields routing reads from an HL7 message.

    ``sending_facility`` stays None until the security work knows the client's organization.
    """
    message_type: str = "FHIR"
    sending_facility: str | None = None
    sending_application: str | None = None
    control_id: str | None = None


class WriteError(Exception):
    """A write refused; ``outcome`` is the OperationOutcome to answer with ``status``."""

    def __init__(self, status: int, code: str, diagnostics: str, expression: str | None = None,
                 outcome: dict | None = None):
        super().__init__(diagnostics)
        self.status = status
        issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
        if expression:
            issue["expression"] = [expression]
        self.outcome = outcome or {"resourceType": "OperationOutcome", "issue": [issue]}


@dataclass
class WriteRequest:
    """One write interaction as a FHIR client sends it (alone, or as a Bundle entry)."""
    method: str                               # POST | PUT | DELETE
    resource_type: str
    resource_id: str | None = None
    resource: dict | None = None
    if_match: str | None = None               # W/"3"
    if_none_exist: str | None = None          # conditional create: a search query string
    conditional: str | None = None            # conditional update: PUT Type?query
    full_url: str | None = None               # a Bundle entry's fullUrl (urn:uuid:...)


@dataclass
class WriteResult:
    """What a write came to: the status, the stored version (None for a delete), warnings."""
    status: int
    resource_type: str
    resource_id: str
    version: str | None = None
    last_updated: str | None = None
    resource: dict | None = None
    warnings: list[Issue] = field(default_factory=list)

    @property
    def location(self) -> str:
        if self.version is None:
            return f"{self.resource_type}/{self.resource_id}"
        return f"{self.resource_type}/{self.resource_id}/_history/{self.version}"

    @property
    def etag(self) -> str | None:
        return f'W/"{self.version}"' if self.version is not None else None

    def outcome(self) -> dict:
        return operation_outcome(self.warnings)


OnStored = Callable[[StoreTransaction, list[tuple[Any, dict, str]], Any], Any]


class FhirWriter:
    """Validates and stores what FHIR clients write; see the module docstring."""

    def __init__(self, store: ResourceStore, validator: Validator, on_stored: Callable[[], OnStored | None]):
        self.store = store
        self.validator = validator
        self._on_stored = on_stored   # read at each write: routing may be wired after start-up

    # ------------------------------------------------------------------ single interactions

    def write(self, request: WriteRequest, origin: FhirOrigin | None = None) -> WriteResult:
        origin = origin or FhirOrigin()
        self._check_request(request)

        def unit(tx: StoreTransaction) -> tuple[WriteResult, Any]:
            written: list[tuple[Any, dict, str]] = []
            attempt = dataclasses.replace(request, resource=copy.deepcopy(request.resource))   # fresh each try
            result = self._apply(tx, attempt, written, "")
            return result, self._route(tx, written, origin)
        result, routed = self.store.writing(unit)
        for held in getattr(routed, "held", None) or []:
            result.warnings.append(Issue("warning", "informational", f"stored, held by routing: {held}"))
        return result

    # ------------------------------------------------------------------ Bundles

    def transaction(self, bundle: dict, origin: FhirOrigin | None = None) -> dict:
        """All entries or none; answers a transaction-response Bundle, raises WriteError on any failure."""
        origin = origin or FhirOrigin()
        checked = [self._entry_request(entry, i) for i, entry in enumerate(_entries(bundle))]
        for i, request in enumerate(checked):
            if request is not None:
                self._check_request(request, f"Bundle.entry[{i}]")
        # FHIR processing order: DELETE, POST, PUT, GET; the answer keeps the request order
        order = sorted(range(len(checked)), key=lambda i: _METHOD_ORDER[_method_of(bundle, i)])

        def unit(tx: StoreTransaction) -> list[WriteResult | dict | None]:
            # references are rewritten in place: each try starts from the entries as they came
            requests = [dataclasses.replace(r, resource=copy.deepcopy(r.resource)) if r is not None else None
                        for r in checked]
            results: list[WriteResult | dict | None] = [None] * len(requests)
            assigned = self._assign_ids(tx, requests)
            for request in requests:
                if request is not None and request.resource is not None:
                    _rewrite_references(request.resource, assigned)
            written: list[tuple[Any, dict, str]] = []
            for i in order:
                if requests[i] is None:
                    results[i] = self._read_entry(tx, _entries(bundle)[i], i)
                else:
                    results[i] = self._apply(tx, requests[i], written, f"Bundle.entry[{i}]")
            self._route(tx, written, origin)
            return results
        results = self.store.writing(unit)
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "transaction-response",
                "entry": [_response_entry(r) for r in results]}

    def batch(self, bundle: dict, origin: FhirOrigin | None = None) -> dict:
        """Each entry on its own; failures become that entry's OperationOutcome."""
        origin = origin or FhirOrigin()
        entries = []
        for i, entry in enumerate(_entries(bundle)):
            try:
                request = self._entry_request(entry, i)
                if request is None:
                    with self.store.write() as tx:
                        entries.append(_response_entry(self._read_entry(tx, entry, i)))
                    continue
                entries.append(_response_entry(self.write(request, origin)))
            except WriteError as exc:
                entries.append({"response": {"status": str(exc.status), "outcome": exc.outcome}})
            except StoreError as exc:
                entries.append({"response": {"status": str(exc.status), "outcome": _outcome(
                    exc.issue_code, str(exc))}})
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "batch-response", "entry": entries}

    # ------------------------------------------------------------------ steps

    def _check_request(self, request: WriteRequest, where: str = "") -> None:
        prefix = f"{where}." if where else ""
        if request.resource_type not in self.store.params.by_type:
            raise WriteError(404, "not-supported", f"resource type '{request.resource_type}' is not served here",
                             f"{prefix}request.url" if where else None)
        if request.resource_id is not None and not ID_PATTERN.match(request.resource_id):
            raise WriteError(400, "value", f"'{request.resource_id}' is not a valid FHIR id "
                             "(letters, digits, '-' and '.', at most 64)")
        if request.method == "DELETE":
            return
        body = request.resource
        if not isinstance(body, dict):
            raise WriteError(400, "required", f"{request.method} needs a {request.resource_type} resource",
                             f"{prefix}resource" if where else None)
        if body.get("resourceType") != request.resource_type:
            raise WriteError(400, "invalid", f"the body is a {body.get('resourceType')}, the URL names "
                             f"{request.resource_type}", f"{prefix}resource.resourceType" if where else "resourceType")
        if request.method == "PUT" and request.conditional is None:
            if body.get("id") is None:
                raise WriteError(400, "required", "an update must carry the resource id in the body",
                                 f"{request.resource_type}.id")
            if body.get("id") != request.resource_id:
                raise WriteError(400, "invalid", f"the body's id '{body.get('id')}' is not the URL's "
                                 f"'{request.resource_id}'", f"{request.resource_type}.id")

    def _apply(self, tx: StoreTransaction, request: WriteRequest, written: list, where: str) -> WriteResult:
        if request.method == "DELETE":
            return self._delete(tx, request, written)
        resource = dict(request.resource or {})
        if request.method == "POST":
            if request.if_none_exist:
                matches = tx.find(request.resource_type, self._criteria(request.resource_type, request.if_none_exist))
                if len(matches) > 1:
                    raise WriteError(412, "duplicate", f"If-None-Exist '{request.if_none_exist}' matches more "
                                     f"than one {request.resource_type}")
                if matches:
                    found = matches[0]
                    return WriteResult(200, found["resourceType"], found["id"], found["meta"]["versionId"],
                                       found["meta"]["lastUpdated"], found)
            resource["id"] = request.resource_id or str(uuid.uuid4())
            warnings = self._validate(resource, where)
            stored = tx.create(resource)
            written.append((None, stored, "create"))
            return _result(201, stored, warnings)
        # PUT
        resource_id = request.resource_id
        if request.conditional is not None:
            matches = tx.find(request.resource_type, self._criteria(request.resource_type, request.conditional))
            if len(matches) > 1:
                raise WriteError(412, "multiple-matches", f"the conditional update '{request.conditional}' matches "
                                 f"more than one {request.resource_type}")
            body_id = resource.get("id")
            if matches:
                resource_id = matches[0]["id"]
                if body_id is not None and body_id != resource_id:
                    raise WriteError(400, "invalid", f"the body's id '{body_id}' is not the id of the matching "
                                     f"{request.resource_type} ('{resource_id}')", f"{request.resource_type}.id")
            else:
                resource_id = body_id or str(uuid.uuid4())
                if not ID_PATTERN.match(resource_id):
                    raise WriteError(400, "value", f"'{resource_id}' is not a valid FHIR id",
                                     f"{request.resource_type}.id")
        resource["id"] = resource_id
        current = tx.current_version(request.resource_type, resource_id)
        warnings = self._validate(resource, where)
        stored = tx.update(resource, _version_of(request.if_match))
        # from what was written, not from ``current``: on PostgreSQL another PUT of a new id may commit
        # between that read and the write, which then (rightly) stores version 2 of its resource
        first = stored["meta"]["versionId"] == "1"
        created = first or (current is not None and current[1])
        written.append((None, stored, "create" if first else "update"))
        return _result(201 if created else 200, stored, warnings)

    def _delete(self, tx: StoreTransaction, request: WriteRequest, written: list) -> WriteResult:
        current = tx.current_version(request.resource_type, request.resource_id)
        if current is None:
            raise WriteError(404, "not-found", f"{request.resource_type}/{request.resource_id} is not known")
        if current[1]:   # already deleted: deleting again changes nothing
            if request.if_match is not None:
                raise WriteError(412, "conflict", f"{request.resource_type}/{request.resource_id} is deleted")
            return WriteResult(204, request.resource_type, request.resource_id)
        version = tx.delete(request.resource_type, request.resource_id, _version_of(request.if_match))
        if version is None:     # deleted by another request between the read above and this write
            return WriteResult(204, request.resource_type, request.resource_id)
        stub = {"resourceType": request.resource_type, "id": request.resource_id,
                "meta": {"versionId": str(version)}}
        written.append((None, stub, "delete"))
        return WriteResult(204, request.resource_type, request.resource_id, str(version))

    def _validate(self, resource: dict, where: str) -> list[Issue]:
        """The resource's issues; raises WriteError (400 structure, 422 profile) when any is an error."""
        issues = self.validator.validate(resource)
        errors = [i for i in issues if i.severity in ("fatal", "error")]
        if errors:
            if where:
                issues = Validator._with_prefix(issues, resource["resourceType"], f"{where}.resource")
            structural = any(i.code == "structure" for i in errors)
            raise WriteError(400 if structural else 422, "processing", "", outcome=operation_outcome(issues))
        if not (resource.get("meta") or {}).get("profile"):
            profiles = self.validator.registry.profiles_for(resource["resourceType"])
            if profiles:
                resource.setdefault("meta", {})["profile"] = list(profiles)
        return [i for i in issues if i.severity in ("warning", "information")]

    def _criteria(self, resource_type: str, query: str) -> list[SearchCriterion]:
        try:
            criteria = criteria_from_query(self.store, resource_type, query)
        except SearchError as exc:
            raise WriteError(400, "invalid", str(exc)) from exc
        if not criteria:
            raise WriteError(400, "invalid", f"the condition '{query}' has no search parameter")
        return criteria

    def _assign_ids(self, tx: StoreTransaction, requests: list[WriteRequest | None]) -> dict[str, str]:
        """fullUrl -> Type/id for every entry another entry may reference (urn:uuid: and absolute URLs)."""
        assigned: dict[str, str] = {}
        for request in requests:
            if request is None or request.method == "DELETE":
                continue
            if request.method == "POST":
                if request.if_none_exist:
                    found = tx.find(request.resource_type, self._criteria(request.resource_type, request.if_none_exist))
                    if len(found) == 1:
                        request.resource_id = None   # conditional create answered by the match
                        target = f"{request.resource_type}/{found[0]['id']}"
                        if request.full_url:
                            assigned[request.full_url] = target
                        continue
                request.resource_id = str(uuid.uuid4())
                target = f"{request.resource_type}/{request.resource_id}"
            elif request.conditional is not None:
                found = tx.find(request.resource_type, self._criteria(request.resource_type, request.conditional))
                if len(found) != 1:
                    continue
                target = f"{request.resource_type}/{found[0]['id']}"
            else:
                target = f"{request.resource_type}/{request.resource_id}"
            if request.full_url:
                assigned[request.full_url] = target
        return assigned

    def _entry_request(self, entry: Any, i: int) -> WriteRequest | None:
        """A Bundle entry as a WriteRequest; None for a GET (a read inside the Bundle)."""
        where = f"Bundle.entry[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            raise WriteError(400, "required", "every entry of a transaction or batch needs a request",
                             f"{where}.request")
        req = entry["request"]
        method = str(req.get("method", "")).upper()
        url = req.get("url")
        if method not in ("GET", "POST", "PUT", "DELETE") or not isinstance(url, str) or not url:
            raise WriteError(400, "not-supported", f"request method '{req.get('method')}' with url '{url}' "
                             "is not supported here (GET, POST, PUT, DELETE)", f"{where}.request")
        if method == "GET":
            return None
        path, _, query = url.partition("?")
        parts = [p for p in path.split("/") if p]
        resource = entry.get("resource")
        if method == "POST":
            if len(parts) != 1:
                raise WriteError(400, "invalid", f"POST url must be a resource type, not '{url}'", f"{where}.request.url")
            return WriteRequest("POST", parts[0], resource=resource, full_url=entry.get("fullUrl"),
                                if_none_exist=req.get("ifNoneExist"))
        if len(parts) == 1 and query and method == "PUT":
            return WriteRequest("PUT", parts[0], resource=resource, conditional=query,
                                full_url=entry.get("fullUrl"), if_match=req.get("ifMatch"))
        if len(parts) != 2:
            raise WriteError(400, "invalid", f"{method} url must be Type/id, not '{url}'", f"{where}.request.url")
        return WriteRequest(method, parts[0], parts[1], resource if method == "PUT" else None,
                            if_match=req.get("ifMatch"), full_url=entry.get("fullUrl"))

    def _read_entry(self, tx: StoreTransaction, entry: dict, i: int) -> dict:
        url = entry["request"]["url"]
        parts = [p for p in url.split("?")[0].split("/") if p]
        if len(parts) != 2:
            raise WriteError(400, "not-supported", f"GET '{url}' in a Bundle: only reads (Type/id) are supported",
                             f"Bundle.entry[{i}].request.url")
        resource = tx.read(parts[0], parts[1])
        if resource is None:
            raise WriteError(404, "not-found", f"{parts[0]}/{parts[1]} is not known")
        return {"resource": resource, "response": {"status": "200 OK", "etag": f'W/"{resource["meta"]["versionId"]}"',
                                                   "lastModified": resource["meta"]["lastUpdated"]}}

    def _route(self, tx: StoreTransaction, written: list, origin: FhirOrigin) -> Any:
        """The routing hook's answer (what it held), None when routing is not wired or nothing was written."""
        hook = self._on_stored()
        if hook is not None and written:
            return hook(tx, written, origin)
        return None


def criteria_from_query(store: ResourceStore, resource_type: str, query: str) -> list[SearchCriterion]:
    """A search query string (``identifier=sys|v&status=active``) -> criteria, by the search engine's parser.

    Conditional writes and ``_typeFilter`` must match exactly what they say, so unlike a search
    (which may ignore an unknown parameter with a warning) an unknown one is an error here.
    """
    parsed = parse_search(store.params, resource_type, parse_qsl(query, keep_blank_values=True))
    if parsed.unknown:
        raise SearchError(f"unknown search parameter(s) for {resource_type}: {', '.join(parsed.unknown)}")
    return parsed.criteria


_METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3}


def _method_of(bundle: dict, i: int) -> str:
    return str(_entries(bundle)[i]["request"].get("method", "GET")).upper()


def _entries(bundle: dict) -> list:
    entries = bundle.get("entry")
    return entries if isinstance(entries, list) else []


def _version_of(if_match: str | None) -> str | None:
    """``W/"3"`` (or ``"3"``, ``3``) -> ``"3"``."""
    if if_match is None:
        return None
    text = if_match.strip()
    if text.startswith("W/"):
        text = text[2:]
    return text.strip('"')


def _result(status: int, stored: dict, warnings: list[Issue]) -> WriteResult:
    return WriteResult(status, stored["resourceType"], stored["id"], stored["meta"]["versionId"],
                       stored["meta"]["lastUpdated"], stored, warnings)


_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


def _response_entry(result: WriteResult | dict) -> dict:
    if isinstance(result, dict):
        return result
    response: dict[str, Any] = {"status": _STATUS_TEXT.get(result.status, str(result.status))}
    if result.version is not None:
        response["location"] = result.location
        response["etag"] = result.etag
    if result.last_updated:
        response["lastModified"] = result.last_updated
    if result.warnings:
        response["outcome"] = result.outcome()
    entry: dict[str, Any] = {"response": response}
    if result.resource is not None:
        entry = {"resource": result.resource, **entry}
    return entry


def _outcome(code: str, diagnostics: str) -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}


def _rewrite_references(node: Any, assigned: dict[str, str]) -> None:
    """Replace ``reference`` values naming a Bundle entry's fullUrl with the entry's Type/id."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if value in assigned:
                    node[key] = assigned[value]
                elif value.startswith("urn:uuid:") or value.startswith("urn:oid:"):
                    raise WriteError(400, "not-found", f"reference '{value}' names no entry of this transaction")
            else:
                _rewrite_references(value, assigned)
    elif isinstance(node, list):
        for item in node:
            _rewrite_references(item, assigned)
