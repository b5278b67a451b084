"""The gateway with fault switches: a WSGI wrapper that breaks ONE thing a real server might get
wrong (a status code, an ignored parameter, paging that repeats a match, a lying total, a bad ACK,
an expired token accepted, ...), so a test can show the conformance kit catches each fault with
the case meant for it. The gateway itself is the correct reference; every fault is one edit of a
request on its way in or of an answer on its way out.

``FAULTS`` maps each fault to (the case that must catch it, the level: SHALL faults must FAIL that
case, SHOULD faults must make it WARN, what the fault is, a phrase of the name of the check inside
the case that reports it).
"""
from __future__ import annotations

import io
import json
import re
from typing import Callable, Iterable
from urllib.parse import parse_qsl, urlencode

Fault = tuple[str, str, str, str]

FAULTS: dict[str, Fault] = {
    # metadata and plain REST
    "metadata_wrong_fhir_version": ("metadata-capabilitystatement", "SHALL", "CapabilityStatement.fhirVersion says 3.0.2", 'GET metadata'),
    "create_answers_200": ("capability-interactions", "SHALL", "create answers 200 instead of 201 Created", 'create answers 201'),
    "create_without_location": ("capability-interactions", "SHALL", "create answers without a Location header", 'Location'),
    "read_wrong_id": ("capability-interactions", "SHALL", "read returns the resource under another id", 'read returns the resource'),
    "vread_returns_current": ("capability-interactions", "SHALL", "vread of an old version returns the current one", 'vread of the old version'),
    "update_not_saved": ("capability-interactions", "SHALL", "update answers 200 but stores nothing", 'update keeps the change'),
    "update_keeps_version": ("capability-interactions", "SHALL", "update answers with the old versionId", 'new versionId'),
    "history_wrong_bundle_type": ("capability-interactions", "SHALL", "history answers a searchset Bundle", 'history Bundle'),
    "history_only_current": ("capability-interactions", "SHALL", "instance history holds only the current version", 'holds both versions'),
    "delete_not_deleting": ("capability-interactions", "SHALL", "delete answers 204 but the resource stays readable", 'read after delete is not 200'),
    "accepts_unparseable_body": ("capability-interactions", "SHALL", "a create whose body is not JSON is accepted (201)", 'unparseable body'),
    "accepts_wrong_type_body": ("capability-interactions", "SHALL", "a create of another resource type is accepted", 'another resource type'),
    "search_type_500": ("capability-interactions", "SHALL", "a plain search of a type answers 500", 'search-type answers'),
    "missing_etag": ("capability-interactions", "SHOULD", "read answers without an ETag", 'ETag'),
    "plain_json_content_type": ("capability-interactions", "SHOULD", "resources served as application/json", 'application/fhir+json'),
    "deleted_is_404": ("capability-interactions", "SHOULD", "a deleted resource reads as 404, not 410 Gone", '410 Gone'),
    "unknown_id_200": ("read-unknown-id", "SHALL", "read of an unknown id answers 200", 'read'),
    "not_found_without_outcome": ("read-unknown-id", "SHALL", "404 with an empty body, no OperationOutcome", 'read'),
    "unknown_type_500": ("unknown-resource-type", "SHALL", "an unknown resource type answers 500", 'NoSuchResourceType'),
    "bad_date_200": ("search-bad-date", "SHALL", "a malformed date value answers an empty searchset", 'not-a-date'),
    # search parameters
    "ignores_gender": ("search-parameters", "SHALL", "Patient?gender is claimed but ignored", 'Patient?gender'),
    "ignores_family": ("search-parameters", "SHALL", "Patient?family is claimed but ignored", 'Patient?family'),
    "ignores_birthdate": ("search-parameters", "SHALL", "Patient?birthdate is claimed but ignored", 'Patient?birthdate'),
    "ignores_patient_reference": ("search-parameters", "SHALL", "Observation?patient is claimed but ignored", 'Observation?patient'),
    "ignores_identifier": ("search-parameters", "SHALL", "identifier is claimed but ignored on every type", '?identifier'),
    "ignores_id": ("search-parameters", "SHALL", "_id is claimed but ignored", '?_id'),
    "date_prefix_ignored": ("search-parameters", "SHALL", "date prefixes (lt, gt, ...) are dropped: searched as eq", 'prefix'),
    "string_exact_only": ("search-parameters", "SHALL", "string parameters match whole values only (no prefix match)", 'prefix, any case'),
    "token_not_ignored": ("search-parameters", "SHOULD", "the :not modifier is dropped", ':not'),
    # result parameters and paging
    "count_ignored": ("search-result-parameters", "SHALL", "_count is ignored", '_count=1'),
    "paging_repeats": ("search-result-parameters", "SHALL", "the next link repeats the first page", 'next links'),
    "paging_drops": ("search-result-parameters", "SHALL", "a page loses its match but keeps the next link", '_count=1'),
    "total_lies": ("search-result-parameters", "SHALL", "Bundle.total is one more than the matches", 'Bundle.total'),
    "include_ignored": ("search-result-parameters", "SHALL", "_include is claimed but ignored", '_include'),
    "revinclude_ignored": ("search-result-parameters", "SHALL", "_revinclude is claimed but ignored", '_revinclude'),
    "sort_ignored": ("search-result-parameters", "SHALL", "_sort is claimed but ignored", '_sort'),
    "self_link_claims_ignored_parameter": ("search-result-parameters", "SHALL",
                                           "the self link names a parameter the search ignored", "self link"),
    "summary_count_ignored": ("search-result-parameters", "SHOULD", "_summary=count returns the resources", '_summary=count'),
    "elements_ignored": ("search-result-parameters", "SHOULD", "_elements returns whole resources", '_elements'),
    "strict_handling_ignored": ("search-result-parameters", "SHOULD", "Prefer: handling=strict is ignored", 'handling=strict'),
    "validate_accepts_everything": ("profile-rules", "SHALL", "$validate reports no error, whatever the resource",
                                    "is refused"),
    "validate_refuses_valid_examples": ("profile-rules", "SHALL", "$validate reports an error for valid resources",
                                        "valid example"),
    "invalid_resource_in_search": ("profile-validation", "SHALL", "a search answer holds a resource that is not valid R4", 'valid R4'),
    # HL7 v2
    "ack_wrong_msa2": ("hl7-good-message-aa", "SHALL", "the ACK's MSA-2 is not the message's MSH-10", 'send'),
    "ack_rejects_good_message": ("hl7-good-message-aa", "SHALL", "a good message gets AE", 'send'),
    "malformed_gets_aa": ("hl7-malformed-message-ar", "SHALL", "a message without MSH-9 gets AA", 'send'),
    "malformed_ack_without_err": ("hl7-malformed-message-ar", "SHALL", "an AR without an ERR segment", 'send'),
    "duplicate_gets_new_ack": ("hl7-duplicate-same-ack", "SHALL", "a resent message gets a different ACK", 'second send'),
    "original_mode_gets_ca": ("hl7-message-types-and-modes", "SHALL", "an original-mode message gets a commit ACK (CA)",
                              "original mode"),
    "adverse_event_rejected": ("hl7-message-types-and-modes", "SHALL", "a good PEX^P07 gets AR", "PEX^P07"),
    "ack_to_wrong_receiver": ("hl7-message-types-and-modes", "SHOULD", "the ACK's MSH-6 is not the sender",
                              "addressed back"),
    "garbage_acknowledged": ("hl7-malformed-framing", "SHALL", "a body that is not HL7 gets an AA ACK", "not HL7"),
    # SMART Backend Services and Bulk Data
    "token_accepted_after_expiry": ("smart-backend-services", "SHALL", "an expired access token is still accepted",
                                    "expired access token"),
    "scope_not_enforced": ("smart-backend-services", "SHALL", "a token may read types outside its scope",
                           "may not search"),
    "no_token_accepted": ("smart-backend-services", "SHALL", "a request without a token is answered", "without a token"),
    "invalid_export_line": ("bulk-data-export", "SHALL", "an export file holds a line that is not a valid resource",
                            "every line"),
    "export_without_content_location": ("bulk-data-export", "SHALL", "the kick-off 202 has no Content-Location",
                                        "kick-off"),
    "export_cancel_refused": ("bulk-data-export", "SHALL", "DELETE on an export status URL is refused (405)",
                              "cancel"),
}

def _drop(query: str, names: Iterable[str]) -> str:
    names = set(names)
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k.split(":")[0] not in names])


class FaultyGateway:
    """WSGI app: the gateway, with ``fault`` (a key of ``FAULTS``) switched on."""

    def __init__(self, app: Callable, fault: str, fresh_token: Callable[[], str] | None = None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self.app, self.fault = app, fault
        self.fresh_token = fresh_token      # an all-powerful token, for the faults that accept what they should not
        self.first_ids: dict[str, str] = {}      # resource path -> first versionId seen (vread fault)
        self.acks: dict[bytes, int] = {}
        self.pretend_deleted: set[str] = set()

    # ------------------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        fault, path, method = self.fault, environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        query = environ.get("QUERY_STRING", "")
        pairs = parse_qsl(query, keep_blank_values=True)
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        fhir = path.startswith("/fhir/")
        parts = path[len("/fhir/"):].split("/") if fhir else []
        # --- answers made up without asking the gateway
        if fault == "accepts_unparseable_body" and method == "POST" and fhir and body.startswith(b"{ this"):
            return self._reply(start_response, 201, {"resourceType": parts[0], "id": "x"})
        if fault == "accepts_wrong_type_body" and method == "POST" and fhir and len(parts) == 1:
            try:
                sent_type = json.loads(body).get("resourceType")
            except (ValueError, AttributeError):
                sent_type = None
            if sent_type and sent_type != parts[0]:
                return self._reply(start_response, 201, {"resourceType": parts[0], "id": "x"})
        if fault == "search_type_500" and method == "GET" and fhir and len(parts) == 1 and \
                dict(pairs).get("_count") == "1" and len(pairs) == 1:
            return self._reply(start_response, 500, {"resourceType": "OperationOutcome",
                                                    "issue": [{"severity": "fatal", "code": "exception"}]})
        if fault == "unknown_type_500" and fhir and parts[0] == "NoSuchResourceType":
            return self._reply(start_response, 500, None)
        if fault == "delete_not_deleting" and method == "DELETE" and fhir:
            return self._reply(start_response, 204, None)
        if fault == "garbage_acknowledged" and path == "/hl7v2" and not body.startswith(b"MSH"):
            ack = b"MSH|^~\\&|GW|GW|X|X|20260101000000||ACK|1|P|2.5\rMSA|AA|1"
            start_response("200 OK", [("Content-Type", "x-application/hl7-v2+er7"), ("Content-Length", str(len(ack)))])
            return [ack]
        if fault == "export_cancel_refused" and method == "DELETE" and "bulkstatus" in path:
            return self._reply(start_response, 405, {"resourceType": "OperationOutcome",
                                                    "issue": [{"severity": "error", "code": "not-supported"}]})
        if fault == "no_token_accepted" and fhir and "HTTP_AUTHORIZATION" not in environ and self.fresh_token:
            environ["HTTP_AUTHORIZATION"] = f"Bearer {self.fresh_token()}"
        if fault == "update_not_saved" and method == "PUT" and fhir:
            method, body = "GET", b""
            environ["REQUEST_METHOD"] = "GET"
        # --- requests changed on their way in
        if fhir and method == "GET":
            dropped = {"ignores_gender": ["gender"] if parts[:1] == ["Patient"] else [],
                       "ignores_family": ["family"] if parts[:1] == ["Patient"] else [],
                       "ignores_birthdate": ["birthdate"] if parts[:1] == ["Patient"] else [],
                       "ignores_patient_reference": ["patient"] if parts[:1] == ["Observation"] else [],
                       "ignores_identifier": ["identifier"], "count_ignored": ["_count"],
                       "include_ignored": ["_include"], "revinclude_ignored": ["_revinclude"],
                       "sort_ignored": ["_sort"], "summary_count_ignored": ["_summary"],
                       "elements_ignored": ["_elements"]}.get(fault, [])
            if fault == "ignores_id" and any(k == "_id" and "," not in v for k, v in pairs):
                dropped = ["_id"]
            if dropped:
                query = _drop(query, dropped)
            if fault == "date_prefix_ignored":
                query = urlencode([(k, re.sub(r"^(lt|gt|le|ge)(\d)", r"\2", v) if k in ("birthdate", "date", "authoredon",
                                                                                       "recorded", "_lastUpdated") else v)
                                   for k, v in pairs])
            if fault == "string_exact_only":
                query = urlencode([(f"{k}:exact" if k in ("family", "given", "name") else k, v) for k, v in pairs])
            if fault == "token_not_ignored":
                query = urlencode([(k.replace(":not", ""), v) for k, v in pairs])
            if fault == "strict_handling_ignored":
                environ.pop("HTTP_PREFER", None)
            if fault == "paging_repeats" and any(k == "_cursor" for k, _ in pairs):
                query = _drop(query, ["_cursor"])
            if fault == "bad_date_200" and "not-a-date" in query:
                query = _drop(query, ["_lastUpdated"])
            if fault == "deleted_is_404" and path in self.pretend_deleted:
                return self._reply(start_response, 404, {"resourceType": "OperationOutcome",
                                                        "issue": [{"severity": "error", "code": "not-found"}]})
            environ["QUERY_STRING"] = query
        if fault == "deleted_is_404" and method == "DELETE":
            self.pretend_deleted.add(path)
        if fault == "vread_returns_current" and fhir and len(parts) == 4 and parts[2] == "_history":
            environ["PATH_INFO"] = "/fhir/" + "/".join(parts[:2])
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        # --- the gateway answers; answers changed on their way out
        captured: dict = {}

        def capture(status: str, headers: list, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None
        content = self._call(environ, capture)
        status, headers = captured["status"], captured["headers"]
        code = int(status.split()[0])
        if self.fresh_token and ((fault == "token_accepted_after_expiry" and code == 401 and b"expired" in content)
                                 or (fault == "scope_not_enforced" and code == 403)):
            environ["HTTP_AUTHORIZATION"] = f"Bearer {self.fresh_token()}"
            environ["wsgi.input"] = io.BytesIO(body)
            content = self._call(environ, capture)
            status, headers = captured["status"], captured["headers"]
        status, headers, content = self._after(environ, parts, method, pairs, body, status, headers, content)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"] + [("Content-Length", str(len(content)))]
        start_response(status, headers)
        return [content]

    def _call(self, environ: dict, capture: Callable) -> bytes:
        chunks = self.app(environ, capture)
        try:
            return b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()

    # ------------------------------------------------------------------------------------------
    def _after(self, environ, parts, method, pairs, body, status, headers, content):
        fault = self.fault
        code = int(status.split()[0])
        is_json = any(k.lower() == "content-type" and "json" in v for k, v in headers)
        document = None
        if is_json and content:
            try:
                document = json.loads(content)
            except ValueError:
                document = None
        changed = False
        if fault == "metadata_wrong_fhir_version" and parts == ["metadata"] and document:
            document["fhirVersion"], changed = "3.0.2", True
        if fault == "create_answers_200" and method == "POST" and code == 201 and len(parts) == 1:
            status = "200 OK"
        if fault == "create_without_location" and method == "POST" and code == 201:
            headers = [(k, v) for k, v in headers if k.lower() != "location"]
        if fault == "read_wrong_id" and method == "GET" and len(parts) == 2 and document and code == 200:
            document["id"], changed = document.get("id", "") + "-other", True
        if fault == "update_keeps_version" and method == "PUT" and document and code in (200, 201):
            self._old_version(document)
            changed = True
        if fault == "update_keeps_version" and method == "GET" and len(parts) == 2 and document and code == 200:
            self._old_version(document)
            changed = True
        if fault == "history_wrong_bundle_type" and "_history" in parts and document and \
                document.get("type") == "history":
            document["type"], changed = "searchset", True
        if fault == "history_only_current" and len(parts) == 3 and parts[2] == "_history" and document:
            document["entry"], changed = (document.get("entry") or [])[:1], True
        if fault == "missing_etag":
            headers = [(k, v) for k, v in headers if k.lower() != "etag"]
        if fault == "plain_json_content_type":
            headers = [(k, "application/json" if k.lower() == "content-type" and "fhir+json" in v else v)
                       for k, v in headers]
        if fault == "unknown_id_200" and code == 404 and len(parts) == 2 and "conformance-kit-no-such-id" in parts[1]:
            status, document, changed = "200 OK", {"resourceType": parts[0], "id": parts[1]}, True
        if fault == "not_found_without_outcome" and code == 404:
            content, document = b"", None
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
        if document and document.get("resourceType") == "Bundle" and document.get("type") == "searchset":
            matches = [e for e in document.get("entry", []) or [] if (e.get("search") or {}).get("mode") == "match"]
            has_next = any(l.get("relation") == "next" for l in document.get("link", []) or [])
            if fault == "paging_drops" and has_next and matches:
                document["entry"] = [e for e in document["entry"] if e is not matches[0]]
                changed = True
            if fault == "self_link_claims_ignored_parameter" and "conformance-kit-unknown-parameter" in \
                    environ.get("QUERY_STRING", ""):
                for link in document.get("link", []) or []:
                    if link.get("relation") == "self":
                        link["url"] += "&conformance-kit-unknown-parameter=1"
                changed = True
            if fault == "total_lies" and isinstance(document.get("total"), int):
                document["total"] += 1
                changed = True
            if fault == "invalid_resource_in_search" and matches and parts[:1] == ["Patient"]:
                bad = dict(matches[0]["resource"], gender="robot", birthDate="yesterday")
                document["entry"][0] = dict(matches[0], resource=bad)
                changed = True
        if fault in ("validate_accepts_everything", "validate_refuses_valid_examples") and parts[-1:] == ["$validate"]:
            severity = "information" if fault == "validate_accepts_everything" else "error"
            status, changed = ("200 OK" if severity == "information" else "422 Unprocessable Entity"), True
            document = {"resourceType": "OperationOutcome",
                        "issue": [{"severity": severity, "code": "informational" if severity == "information"
                                   else "invalid", "diagnostics": "seeded fault"}]}
        if fault == "export_without_content_location" and code == 202:
            headers = [(k, v) for k, v in headers if k.lower() != "content-location"]
        if fault == "invalid_export_line" and any("ndjson" in v for k, v in headers if k.lower() == "content-type"):
            first = json.loads(content.splitlines()[0]) if content.strip() else {"resourceType": "Patient"}
            bad = {"resourceType": first.get("resourceType"), "id": "bad-line", "meta": {"lastUpdated": "yesterday"}}
            content = content.rstrip(b"\n") + b"\n" + json.dumps(bad).encode() + b"\n"
        if changed:
            content = json.dumps(document).encode("utf-8") if document is not None else b""
        if environ.get("PATH_INFO") == "/hl7v2" and content.startswith(b"MSH"):
            content = self._ack_fault(body, content)
        return status, headers, content

    def _old_version(self, document: dict) -> None:
        meta = document.setdefault("meta", {})
        key = f"{document.get('resourceType')}/{document.get('id')}"
        self.first_ids.setdefault(key, meta.get("versionId"))
        meta["versionId"] = self.first_ids[key]

    def _ack_fault(self, sent: bytes, ack: bytes) -> bytes:
        fault = self.fault
        segments = ack.split(b"\r")
        sent_msh = sent.split(b"\r")[0].split(sent[3:4] or b"|")
        original_mode = len(sent_msh) < 15 or not sent_msh[14]
        out = []
        for segment in segments:
            fields = segment.split(b"|")
            if fault == "ack_to_wrong_receiver" and fields[0] == b"MSH" and len(fields) > 5:
                fields[5] = b"SOMEONE_ELSE"
            if fields[0] == b"MSA":
                if fault == "original_mode_gets_ca" and original_mode and fields[1] == b"AA":
                    fields[1] = b"CA"
                if fault == "adverse_event_rejected" and b"|PEX^P07" in sent.split(b"\r")[0] and fields[1] in (b"AA", b"CA"):
                    fields[1] = b"AR"
                if fault == "ack_wrong_msa2" and len(fields) > 2:
                    fields[2] = fields[2] + b"X"
                if fault == "ack_rejects_good_message" and fields[1] in (b"AA", b"CA"):
                    fields[1] = b"AE"
                if fault in ("malformed_gets_aa", "malformed_ack_without_err") and fields[1] in (b"AR", b"AE"):
                    fields[1] = b"AA" if fault == "malformed_gets_aa" else fields[1]
                if fault == "duplicate_gets_new_ack":
                    count = self.acks.get(sent, 0)
                    self.acks[sent] = count + 1
                    fields.append(str(count).encode())
            if fault == "malformed_ack_without_err" and fields[0] == b"ERR":
                continue
            out.append(b"|".join(fields))
        return b"\r".join(out)

    @staticmethod
    def _reply(start_response: Callable, code: int, document: dict | None) -> list[bytes]:
        content = json.dumps(document).encode() if document is not None else b""
        reason = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found", 405: "Method Not Allowed",
                  500: "Internal Server Error"}[code]
        headers = [("Content-Length", str(len(content)))]
        if document is not None:
            headers.append(("Content-Type", "application/fhir+json"))
        start_response(f"{code} {reason}", headers)
        return [content]
