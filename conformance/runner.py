"""The conformance kit: prove, before go-live, that a FHIR R4 server and its HL7 v2 endpoint behave
as the specifications say.

The kit is data-driven. Every check is one YAML file under ``conformance/cases/`` holding the case
id, a title, the spec section it comes from (``spec``), why it matters (``why``) and either

* ``steps``: HTTP requests against the FHIR base (or HL7 v2 messages sent to the HL7 endpoint),
  each with an ``expect`` block (status codes, resourceType, Bundle type, link relations, headers,
  simple ``json: {dotted.path: value}`` and ``contains`` checks, ACK codes) and an optional
  ``capture`` block whose values (``{order_id}``) later steps of the same case may use; or
* ``generator``: a named check whose requests depend on the server's own answers (the
  CapabilityStatement's search parameters, the ``next`` links of a paged search, the resources to
  validate against the profiles). Its parameters still live in the YAML file.

A case may declare ``setup`` (HL7 v2 samples from ``conformance/samples/`` to send first, so the
server holds data; nothing is sent when no HL7 endpoint is given), ``requires: [hl7]`` (skipped
without an HL7 endpoint) and ``resource_types`` (the steps run once per listed type the
CapabilityStatement declares, with ``{type}`` set). A case that finds no data to work on is
*skipped* with the reason, never passed silently.

Nothing here knows the Lecheng gateway: any FHIR R4 server can be checked.

    report = run_kit("http://127.0.0.1:8080/fhir", hl7="mllp://127.0.0.1:2575")
    report.ok, report.failed   # then conformance.report.write_html / write_junit
"""
from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin, urlparse

import requests
import yaml

KIT_DIR = Path(__file__).resolve().parent
CASES_DIR = KIT_DIR / "cases"
SAMPLES_DIR = KIT_DIR / "samples"
BODY_LIMIT = 20_000
FHIR_JSON = "application/fhir+json"
HL7_CONTENT_TYPE = "x-application/hl7-v2+er7"
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MISSING = object()


@dataclass
class Exchange:
    """One request and its answer, kept so a failing case shows the vendor exactly what happened."""
    method: str
    url: str
    request_headers: dict[str, str] = field(default_factory=dict)
    request_body: str = ""
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: str = ""


@dataclass
class Check:
    """One assertion inside a case. ``level`` is the spec's strength: a failed SHALL check fails the
    case, a failed SHOULD check is a warning (``warn``) that does not fail the run."""
    name: str
    status: str                 # pass | fail | warn | skip
    message: str = ""
    level: str = "SHALL"
    spec: str = ""


@dataclass
class CaseResult:
    """The outcome of one case: ``pass``, ``warn`` (only SHOULD checks failed), ``fail``, ``skip``
    (with the reason) or ``error``; ``checks`` lists every single assertion made."""
    id: str
    title: str
    spec: str
    why: str
    status: str
    message: str = ""
    exchanges: list[Exchange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    duration: float = 0.0
    source: str = ""
    checks: list[Check] = field(default_factory=list)
    level: str = "SHALL"
    area: str = ""              # what a reader groups it under: FHIR search, HL7 v2 messaging, ...

    def check(self, name: str, ok: bool, message: str = "", level: str | None = None, spec: str = "") -> bool:
        """Record one assertion; a failure is ``fail`` at SHALL level and ``warn`` at SHOULD level."""
        level = level or self.level
        status = "pass" if ok else ("fail" if level == "SHALL" else "warn")
        self.checks.append(Check(name, status, "" if ok else message, level, spec))
        return ok

    def skip_check(self, name: str, reason: str) -> None:
        self.checks.append(Check(name, "skip", reason))

    def failures(self, status: str = "fail") -> list[Check]:
        return [c for c in self.checks if c.status == status]


@dataclass
class KitReport:
    """Every case result of one run, with what was tested (the FHIR base and HL7 endpoint)."""
    fhir_base: str
    hl7: str | None
    started: str
    duration: float
    results: list[CaseResult]

    def _ids(self, *statuses: str) -> list[str]:
        return [r.id for r in self.results if r.status in statuses]

    @property
    def passed(self) -> list[str]:
        return self._ids("pass")

    @property
    def failed(self) -> list[str]:
        """Failed or errored case ids: both mean the server is not shown to conform."""
        return self._ids("fail", "error")

    @property
    def skipped(self) -> list[str]:
        return self._ids("skip")

    @property
    def warned(self) -> list[str]:
        """Cases where only SHOULD checks failed: reported, not failing the run."""
        return self._ids("warn")

    @property
    def ok(self) -> bool:
        return not self.failed

    def check_counts(self) -> dict[str, int]:
        """How many single assertions passed, failed, warned and were skipped over the whole run."""
        counts = {"pass": 0, "fail": 0, "warn": 0, "skip": 0}
        for result in self.results:
            for check in result.checks:
                counts[check.status] += 1
        return counts

    def result(self, case_id: str) -> CaseResult:
        return next(r for r in self.results if r.id == case_id)


class CaseFailed(Exception):
    """An expectation was not met."""


class CaseSkipped(Exception):
    """The case cannot run here (no HL7 endpoint, no data, no validator): not a pass, not a fail."""


# ---------------------------------------------------------------------------------------------
# Loading cases


def load_cases(cases_dir: str | Path = CASES_DIR) -> list[dict]:
    """Read every ``*.yaml`` case, checked for the keys the runner needs, in ``order`` then id order."""
    cases = []
    for path in sorted(Path(cases_dir).glob("*.yaml")):
        case = yaml.safe_load(path.read_text(encoding="utf-8"))
        missing = [k for k in ("id", "title", "spec") if not case.get(k)]
        if missing or not (case.get("steps") or case.get("generator")):
            raise ValueError(f"{path}: a case needs id, title, spec and steps or generator (missing {missing})")
        if case.get("generator") and case["generator"] not in GENERATORS:
            raise ValueError(f"{path}: unknown generator {case['generator']!r}")
        case["_source"] = path.name
        cases.append(case)
    ids = [c["id"] for c in cases]
    if len(ids) != len(set(ids)):
        raise ValueError(f"duplicate case ids in {cases_dir}")
    return sorted(cases, key=lambda c: (c.get("order", 1000), c["id"]))


# ---------------------------------------------------------------------------------------------
# Small helpers


def substitute(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ``{name}`` in strings (recursively in lists and dicts); unknown names are an error."""
    if isinstance(value, str):
        def one(match: re.Match) -> str:
            if match.group(1) not in variables:
                raise CaseFailed(f"variable {{{match.group(1)}}} was never captured")
            return str(variables[match.group(1)])
        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def dig(document: Any, path: str) -> Any:
    """Follow a dotted path (``entry.0.resource.id``) into JSON; ``_MISSING`` when it is absent."""
    current = document
    for part in str(path).split("."):
        if isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            if -len(current) <= index < len(current):
                current = current[index]
                continue
            return _MISSING
        if isinstance(current, dict) and part in current:
            current = current[part]
            continue
        return _MISSING
    return current


def _clip(text: str) -> str:
    return text if len(text) <= BODY_LIMIT else text[:BODY_LIMIT] + f"\n... ({len(text) - BODY_LIMIT} more characters)"


def _decode(raw: bytes) -> str:
    for encoding in ("utf-8", "gb18030"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")


def hl7_segments(text: str) -> list[list[str]]:
    """ER7 text split into segments and fields (field separator taken from MSH-1)."""
    separator = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    lines = [line for line in re.split(r"[\r\n]+", text.strip("\x0b\x1c\r\n")) if line]
    return [line.split(separator) for line in lines]


def hl7_field(segments: list[list[str]], segment: str, number: int) -> str | None:
    """Field ``number`` of the first ``segment`` (MSH counted as the standard does: MSH-1 is '|')."""
    for fields in segments:
        if fields[0] == segment:
            index = number - 1 if segment == "MSH" else number
            return fields[index] if index < len(fields) else ""
    return None


# ---------------------------------------------------------------------------------------------
# The context of one run: transports, captured CapabilityStatement


class KitContext:
    """What every case shares: the endpoints, an HTTP session, the server's CapabilityStatement."""

    def __init__(self, fhir_base: str, hl7: str | None, token: str | None, samples_dir: Path,
                 profiles_dir: Path | None, timeout: float) -> None:
        self.fhir_base = fhir_base.rstrip("/")
        self.hl7 = hl7
        self.token = token
        self.samples_dir = samples_dir
        self.profiles_dir = profiles_dir
        self.timeout = timeout
        self.session = requests.Session()
        self._capability: dict | None = None
        self._validator: Any = None
        self.options: dict[str, Any] = {}       # --types, --fixtures, SMART client, --profiles claims
        self.fixtures: Any = None               # conformance.generated.Fixtures, made on first use
        self.capability_error: Exception | None = None

    # FHIR over HTTP --------------------------------------------------------------------------
    def url(self, path: str) -> str:
        if urlparse(path).scheme in ("http", "https"):
            return path
        return f"{self.fhir_base}/{path.lstrip('/')}"

    def fhir(self, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | str | None = None) -> tuple[Exchange, Any]:
        """Send one request; returns the exchange and the parsed JSON body (None if not JSON)."""
        sent = {"Accept": FHIR_JSON}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            sent["Content-Type"] = FHIR_JSON
        sent.update(headers or {})
        url = self.url(path)
        exchange = Exchange(method.upper(), url, {k: ("Bearer ***" if k == "Authorization" else v)
                                                  for k, v in sent.items()},
                            _clip(body.decode("utf-8", "replace") if isinstance(body, bytes) else body or ""))
        response = self.session.request(method.upper(), url, headers=sent, data=body, timeout=self.timeout,
                                        allow_redirects=False)
        exchange.status = response.status_code
        exchange.response_headers = dict(response.headers)
        exchange.response_body = _clip(response.text)
        try:
            document = response.json()
        except ValueError:
            document = None
        return exchange, document

    def capability(self) -> dict | None:
        """The server's CapabilityStatement, fetched once; None when the server has none."""
        if self._capability is None:
            try:
                _, document = self.fhir("GET", "metadata")
            except requests.RequestException as exc:
                document, self.capability_error = None, exc
            self._capability = document if isinstance(document, dict) else {}
        if self._capability.get("resourceType") != "CapabilityStatement":
            return None
        return self._capability

    def declared_resources(self) -> dict[str, dict]:
        """Resource type -> its CapabilityStatement.rest.resource entry (server mode)."""
        statement = self.capability() or {}
        found: dict[str, dict] = {}
        for rest in statement.get("rest", []) or []:
            if rest.get("mode", "server") == "server":
                for entry in rest.get("resource", []) or []:
                    if entry.get("type"):
                        found[entry["type"]] = entry
        return found

    def types(self) -> list[str]:
        """The resource types under test: ``--types`` when given, else every type the
        CapabilityStatement declares (the kit assumes none of its own)."""
        declared = self.declared_resources()
        wanted = self.options.get("types")
        if wanted:
            return [t for t in wanted if not declared or t in declared]
        return sorted(declared)

    def interactions(self, resource_type: str) -> set[str]:
        """The interaction codes the CapabilityStatement claims for ``resource_type``."""
        entry = self.declared_resources().get(resource_type) or {}
        return {i.get("code") for i in entry.get("interaction", []) or [] if i.get("code")}

    # HL7 v2 ----------------------------------------------------------------------------------
    def send_hl7(self, raw: bytes) -> tuple[Exchange, str]:
        """Send one ER7 message over HTTP(S) POST or MLLP; returns the exchange and the ACK text."""
        if not self.hl7:
            raise CaseSkipped("no HL7 endpoint given (--hl7)")
        shown = _clip(_decode(raw).replace("\r", "\n"))
        parsed = urlparse(self.hl7)
        if parsed.scheme in ("http", "https"):
            headers = {"Content-Type": HL7_CONTENT_TYPE}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            exchange = Exchange("POST", self.hl7, {"Content-Type": HL7_CONTENT_TYPE}, shown)
            response = self.session.post(self.hl7, data=raw, headers=headers, timeout=self.timeout)
            exchange.status = response.status_code
            exchange.response_headers = dict(response.headers)
            ack = _decode(response.content)
        elif parsed.scheme == "mllp":
            exchange = Exchange("MLLP", self.hl7, {}, shown)
            ack = _decode(self._mllp(parsed.hostname or "127.0.0.1", parsed.port or 2575, raw))
        else:
            raise CaseFailed(f"HL7 endpoint {self.hl7!r}: use http(s)://... or mllp://host:port")
        exchange.response_body = _clip(ack.replace("\r", "\n"))
        return exchange, ack.strip("\x0b\x1c\r\n")

    def _mllp(self, host: str, port: int, raw: bytes) -> bytes:
        """One message over MLLP with python-hl7's client (a client that is not the server's own)."""
        from hl7.client import MLLPClient
        with MLLPClient(host, port) as client:
            client.socket.settimeout(self.timeout)
            received = client.send_message(raw)
            while b"\x1c" not in received:
                try:
                    chunk = client.socket.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                received += chunk
        return received

    def sample(self, name: str) -> bytes:
        path = self.samples_dir / name
        if not path.is_file():
            raise CaseFailed(f"sample {name!r} is not in {self.samples_dir}")
        return path.read_bytes()

    def validator(self) -> Any:
        """The profile validator (``gateway.validation``), loaded once; CaseSkipped when absent."""
        if self._validator is None:
            try:
                from gateway.validation import ProfileRegistry, Validator
            except ImportError as exc:
                raise CaseSkipped(f"profile validation unavailable: gateway.validation cannot be imported ({exc})")
            directory = self.profiles_dir or _default_profiles_dir()
            if directory is None:
                raise CaseSkipped("profile validation unavailable: no profiles/ directory found")
            self._validator = (Validator(ProfileRegistry.load(str(directory))), directory)
        return self._validator


def _default_profiles_dir() -> Path | None:
    for candidate in (Path.cwd() / "profiles", KIT_DIR.parent / "profiles"):
        if candidate.is_dir():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------
# Checks


def check_fhir(expect: dict, exchange: Exchange, document: Any, variables: dict[str, Any]) -> None:
    """Apply one step's ``expect`` block to a FHIR answer; raises CaseFailed with the first miss."""
    expect = substitute(expect, variables)
    if "status" in expect:
        wanted = expect["status"] if isinstance(expect["status"], list) else [expect["status"]]
        if exchange.status not in wanted:
            raise CaseFailed(f"HTTP status {exchange.status}, expected {' or '.join(map(str, wanted))}")
    needs_json = any(k in expect for k in ("resourceType", "bundle_type", "json", "json_exists",
                                           "link_relations", "min_entries"))
    if needs_json and not isinstance(document, dict):
        raise CaseFailed("the body is not a JSON resource")
    if "resourceType" in expect:
        wanted = expect["resourceType"] if isinstance(expect["resourceType"], list) else [expect["resourceType"]]
        if document.get("resourceType") not in wanted:
            raise CaseFailed(f"resourceType {document.get('resourceType')!r}, expected {' or '.join(wanted)}")
    if "bundle_type" in expect and document.get("type") != expect["bundle_type"]:
        raise CaseFailed(f"Bundle.type {document.get('type')!r}, expected {expect['bundle_type']!r}")
    for relation in expect.get("link_relations", []):
        if relation not in [link.get("relation") for link in document.get("link", []) or []]:
            raise CaseFailed(f"Bundle.link has no relation {relation!r}")
    if "min_entries" in expect and len(document.get("entry", []) or []) < expect["min_entries"]:
        raise CaseFailed(f"Bundle has {len(document.get('entry', []) or [])} entries, expected at least "
                         f"{expect['min_entries']}")
    for path, wanted in (expect.get("json") or {}).items():
        found = dig(document, path)
        if found is _MISSING:
            raise CaseFailed(f"{path} is absent, expected {wanted!r}")
        if found != wanted and str(found) != str(wanted):
            raise CaseFailed(f"{path} is {found!r}, expected {wanted!r}")
    for path in expect.get("json_exists", []):
        if dig(document, path) is _MISSING:
            raise CaseFailed(f"{path} is absent")
    lowered = {k.lower(): v for k, v in exchange.response_headers.items()}
    for name in expect.get("headers_present", []):
        if not lowered.get(name.lower()):
            raise CaseFailed(f"response header {name} is missing")
    for name, pattern in (expect.get("header_matches") or {}).items():
        if not re.fullmatch(pattern, lowered.get(name.lower(), "")):
            raise CaseFailed(f"response header {name} is {lowered.get(name.lower())!r}, expected /{pattern}/")
    for text in expect.get("contains", []):
        if text not in exchange.response_body:
            raise CaseFailed(f"the body does not contain {text!r}")


def check_ack(expect: dict, sent: bytes, ack: str, variables: dict[str, Any]) -> None:
    """Apply an ``expect`` block to an HL7 ACK (MSA-1 code, MSA-2 echo, ERR, identity)."""
    expect = substitute(expect, variables)
    segments = hl7_segments(ack)
    if not segments or segments[0][0] != "MSH":
        raise CaseFailed("the answer is not an HL7 message (no MSH segment)")
    code = hl7_field(segments, "MSA", 1)
    if code is None:
        raise CaseFailed("the ACK has no MSA segment")
    if "ack_code" in expect:
        wanted = expect["ack_code"] if isinstance(expect["ack_code"], list) else [expect["ack_code"]]
        if code not in wanted:
            raise CaseFailed(f"MSA-1 is {code!r}, expected {' or '.join(wanted)}")
    if expect.get("msa2_equals_msh10"):
        control_id = hl7_field(hl7_segments(_decode(sent)), "MSH", 10)
        if hl7_field(segments, "MSA", 2) != control_id:
            raise CaseFailed(f"MSA-2 is {hl7_field(segments, 'MSA', 2)!r}, expected MSH-10 {control_id!r}")
    if expect.get("err_segment") and not any(fields[0] == "ERR" for fields in segments):
        raise CaseFailed("the ACK has no ERR segment saying what was wrong")
    if "ack_equals" in expect and ack != expect["ack_equals"]:
        raise CaseFailed("the ACK differs from the first one for the same message")


def capture_values(capture: dict, document: Any, exchange: Exchange, ack: str | None,
                   sent: bytes | None) -> dict[str, Any]:
    """Values for later steps: JSON paths, ``header.Name``, ``ack`` and ``ack.MSA.2``-style fields."""
    found = {}
    for name, path in (capture or {}).items():
        if path == "ack":
            value = ack
        elif path.startswith("ack.") and ack is not None:
            _, segment, number = path.split(".")
            value = hl7_field(hl7_segments(ack), segment, int(number))
        elif path.startswith("sent.") and sent is not None:
            _, segment, number = path.split(".")
            value = hl7_field(hl7_segments(_decode(sent)), segment, int(number))
        elif path.startswith("header."):
            lowered = {k.lower(): v for k, v in exchange.response_headers.items()}
            value = lowered.get(path[len("header."):].lower())
        else:
            value = dig(document, path)
        if value is None or value is _MISSING:
            raise CaseFailed(f"could not capture {name} from {path}")
        found[name] = value
    return found


# ---------------------------------------------------------------------------------------------
# Running a case


def _run_setup(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """Send the case's setup samples (only when an HL7 endpoint is given; the data may already be there)."""
    for item in case.get("setup", []) or []:
        if "hl7_sample" in item:
            if not ctx.hl7:
                result.notes.append(f"setup: {item['hl7_sample']} not sent (no HL7 endpoint); using the data "
                                    "the server already holds")
                continue
            exchange, ack = ctx.send_hl7(ctx.sample(item["hl7_sample"]))
            result.exchanges.append(exchange)
            code = hl7_field(hl7_segments(ack), "MSA", 1)
            result.notes.append(f"setup: sent {item['hl7_sample']}, ACK {code}")


def _run_steps(ctx: KitContext, case: dict, result: CaseResult, variables: dict[str, Any]) -> None:
    """Run the steps once (for one ``{type}``); each step is one check. A failed SHALL step stops
    the remaining steps (they depend on it); a failed ``level: SHOULD`` step is a warning."""
    prefix = f"{variables['type']}: " if variables.get("type") else ""
    for number, step in enumerate(case["steps"], 1):
        try:
            label = substitute(step.get("name", f"step {number}"), variables)
        except CaseFailed:
            label = step.get("name", f"step {number}")
        level = step.get("level") or result.level
        try:
            if "hl7" in step:
                sent = ctx.sample(step["hl7"]["sample"])
                exchange, ack = ctx.send_hl7(sent)
                result.exchanges.append(exchange)
                if exchange.status is not None and exchange.status >= 300:
                    raise CaseFailed(f"HTTP status {exchange.status} from the HL7 endpoint")
                check_ack(step.get("expect", {}), sent, ack, variables)
                variables.update(capture_values(step.get("capture"), None, exchange, ack, sent))
                result.check(prefix + label, True)
                continue
            request = substitute(step["request"], variables)
            body = request.get("body")
            if "body_from_sample" in request:
                body = ctx.sample(request["body_from_sample"])
            elif isinstance(body, (dict, list)):
                body = json.dumps(body)
            exchange, document = ctx.fhir(request.get("method", "GET"), request["path"],
                                          request.get("headers"), body)
            result.exchanges.append(exchange)
            if step.get("skip_if_empty") and exchange.status == 200 and isinstance(document, dict) \
                    and not [e for e in document.get("entry", []) or []
                             if (e.get("search") or {}).get("mode") != "outcome"]:
                raise CaseSkipped(f"{label}: the server holds no data for {request['path']} "
                                  "(it does not claim create, or refused the kit's test data; give --hl7 "
                                  "or --fixtures so the kit can load some)")
            check_fhir(step.get("expect", {}), exchange, document, variables)
            variables.update(capture_values(step.get("capture"), document, exchange, None, None))
            result.check(prefix + label, True)
        except CaseFailed as exc:
            result.check(prefix + label, False, f"{prefix}{label}: {exc}", level=level)
            if level == "SHALL":
                return


def _types_for(ctx: KitContext, case: dict) -> list[str | None]:
    listed = case.get("resource_types")
    if not listed:
        return [None]
    if listed == "declared":        # every type under test: the CapabilityStatement's, or --types
        types = ctx.types()
        if not types and ctx.capability_error is not None:
            raise ctx.capability_error
        if not types:
            raise CaseSkipped("the CapabilityStatement declares no resource types")
        return list(types)
    declared = ctx.declared_resources()
    if not declared:
        return list(listed)
    present = [t for t in listed if t in declared]
    if not present:
        raise CaseSkipped(f"the CapabilityStatement declares none of {', '.join(listed)}")
    return present


def run_case(ctx: KitContext, case: dict) -> CaseResult:
    """Run one case; every outcome (including a crash or refused connection) becomes a CaseResult.

    The case's status follows its checks: any failed SHALL check -> ``fail``; only failed SHOULD
    checks -> ``warn``; nothing could be checked -> ``skip`` with the reason; else ``pass``."""
    result = CaseResult(case["id"], case["title"], case["spec"], (case.get("why") or "").strip(), "pass",
                        source=case.get("_source", ""), level=case.get("level", "SHALL"),
                        area=case.get("area", ""))
    started = time.monotonic()
    skipped = ""
    try:
        if "hl7" in (case.get("requires") or []) and not ctx.hl7:
            raise CaseSkipped("needs an HL7 endpoint (--hl7 URL or mllp://host:port)")
        _run_setup(ctx, case, result)
        if case.get("generator"):
            GENERATORS[case["generator"]](ctx, case, result)
        else:
            ran, skips = 0, []
            for resource_type in _types_for(ctx, case):
                variables = {"type": resource_type} if resource_type else {}
                try:
                    _run_steps(ctx, case, result, variables)
                    ran += 1
                except CaseSkipped as exc:
                    skips.append(str(exc))
            result.notes.extend(f"skipped: {s}" for s in skips)
            if not ran:
                raise CaseSkipped("; ".join(skips))
    except CaseSkipped as exc:
        skipped = str(exc)
    except CaseFailed as exc:
        result.check(case["id"], False, str(exc))
    except (requests.RequestException, OSError) as exc:
        result.status, result.message = "error", f"could not talk to the server: {exc}"
    except Exception as exc:  # a kit bug or a wild answer must not hide the other cases
        result.status, result.message = "error", f"{type(exc).__name__}: {exc}"
    if result.status != "error":
        failed, warned = result.failures("fail"), result.failures("warn")
        passed = [c for c in result.checks if c.status == "pass"]
        if failed:
            result.status = "fail"
            result.message = "; ".join(c.message for c in failed[:8]) + \
                (f" (and {len(failed) - 8} more)" if len(failed) > 8 else "")
        elif skipped and not passed and not warned:
            result.status, result.message = "skip", skipped
        elif warned:
            result.status = "warn"
            result.message = "SHOULD: " + "; ".join(c.message for c in warned[:8])
        if skipped and result.status != "skip":
            result.notes.append(f"stopped early: {skipped}")
    result.duration = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------
# Generated cases: requests that depend on the server's own answers


def _is_match(entry: dict) -> bool:
    return (entry.get("search") or {}).get("mode", "match") == "match" and \
        (entry.get("resource") or {}).get("resourceType") != "OperationOutcome"


def gen_paging(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """Walk ``next`` links with a small page size: each match exactly once, and ``total`` agrees.

    The type walked is ``resource_type`` when the case names one, else the first type under test
    holding at least two resources (the kit creates its own where the server claims create)."""
    from conformance.generated import fixtures
    count = int(case.get("count", 1))
    candidates = [case["resource_type"]] if case.get("resource_type") else ctx.types()
    for resource_type in candidates:
        if "search-type" not in ctx.interactions(resource_type) and ctx.capability() is not None:
            continue
        fixtures(ctx).pair(resource_type)
        if _walk_pages(ctx, case, result, resource_type, count):
            return
    raise CaseSkipped(f"no type under test holds two resources to page through ({', '.join(candidates)}); "
                      "the server refused the kit's test data or does not claim create")


def _walk_pages(ctx: KitContext, case: dict, result: CaseResult, resource_type: str, count: int) -> bool:
    url: str | None = f"{resource_type}?_count={count}"
    seen: list[str] = []
    total, pages, limit, linked = None, 0, int(case.get("max_pages", 200)), False
    while url:
        pages += 1
        if pages > limit:
            result.notes.append(f"{resource_type}: stopped after {limit} pages (the server holds more)")
            break
        exchange, document = ctx.fhir("GET", url)
        result.exchanges.append(exchange)
        check_fhir({"status": 200, "resourceType": "Bundle", "bundle_type": "searchset"}, exchange, document, {})
        if pages == 1:
            total = document.get("total")
        matches = [e for e in document.get("entry", []) or [] if _is_match(e)]
        if len(matches) > count:
            raise CaseFailed(f"{resource_type} page {pages} has {len(matches)} matches, more than _count={count}")
        for entry in matches:
            resource = entry.get("resource") or {}
            seen.append(f"{resource.get('resourceType')}/{resource.get('id')}")
        nxt = next((link.get("url") for link in document.get("link", []) or [] if link.get("relation") == "next"), None)
        url = urljoin(ctx.fhir_base + "/", nxt) if nxt else None
        linked = linked or bool(nxt)
    if len(seen) < 2 and (total is None or total < 2):
        return False
    result.notes.append(f"{resource_type}: {pages} page(s), {len(seen)} match(es), total {total}")
    repeated = sorted({ref for ref in seen if seen.count(ref) > 1})
    result.check(f"{resource_type}: no match on more than one page", not repeated,
                 f"entries seen on more than one page: {', '.join(repeated)}")
    if not linked and total is not None and total > len(seen):
        result.check(f"{resource_type}: a page holding part of the matches links to the rest (next)", False,
                     f"Bundle.total is {total}, the page holds {len(seen)} and has no next link", level="SHOULD")
    elif pages <= limit:
        result.check(f"{resource_type}: Bundle.total equals the matches on all pages",
                     total is None or total == len(seen), f"Bundle.total is {total} but the pages held {len(seen)} matches")
    return True


def gen_profile_validation(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """Resources the server returns are valid R4, and valid against each profile their meta.profile
    claims (or ``--validate-profile`` asks for); error/fatal issues fail. A resource is never held to
    a profile it does not claim."""
    validator, directory = ctx.validator()
    registry = validator.registry
    asked = list(ctx.options.get("validate_profiles") or [])
    problems, checked = [], 0
    for resource_type in ctx.types():
        if "search-type" not in ctx.interactions(resource_type):
            continue
        exchange, document = ctx.fhir("GET", f"{resource_type}?_count={int(case.get('count', 20))}")
        result.exchanges.append(exchange)
        check_fhir({"status": 200, "resourceType": "Bundle"}, exchange, document, {})
        for entry in document.get("entry", []) or []:
            if not _is_match(entry):
                continue
            resource = entry["resource"]
            checked += 1
            claimed = [p for p in (resource.get("meta") or {}).get("profile", []) or [] if isinstance(p, str)]
            known = [p.split("|")[0] for p in claimed if registry.compiled(p.split("|")[0]) is not None]
            for url in sorted(set(claimed) - set(known)):
                result.notes.append(f"{resource_type}/{resource.get('id')} claims {url}, which the kit does not "
                                    "have (give --profiles DIR); checked as base R4 only")
            wanted = [p for p in known + asked if (registry.compiled(p) or None) and
                      registry.compiled(p).type == resource_type]
            issues = [i for i in validator.validate(resource, profiles=wanted) if i.severity in ("fatal", "error")]
            what = f"{resource_type}/{resource.get('id')} is valid R4" + (f" and {', '.join(wanted)}" if wanted else "")
            result.check(what, not issues, f"{resource_type}/{resource.get('id')}: " + "; ".join(
                f"{i.expression}: {i.diagnostics}" for i in issues[:5]))
    result.notes.append(f"validated {checked} resource(s) (base R4, plus the profiles in {directory} they claim)")
    if not checked:
        raise CaseSkipped("the server returned no resources to validate")


GENERATORS: dict[str, Callable[[KitContext, dict, CaseResult], None]] = {
    "paging": gen_paging,
    "profile_validation": gen_profile_validation,
}


# ---------------------------------------------------------------------------------------------
# Entry point


def run_kit(fhir_base: str, hl7: str | None = None, token: str | None = None,
            cases_dir: str | Path = CASES_DIR, samples_dir: str | Path = SAMPLES_DIR,
            profiles_dir: str | Path | None = None, timeout: float = 15.0,
            only: list[str] | None = None, **options: Any) -> KitReport:
    """Run every case (or those in ``only``) against ``fhir_base`` and the optional HL7 endpoint.

    ``options``: ``types`` (resource types to test instead of all declared), ``fixtures`` (a YAML
    file of test data in the shape of ``conformance/fixtures.yaml``), ``client_id`` /
    ``private_key`` / ``kid`` / ``scope`` (SMART Backend Services client), ``validate_profiles``
    (profile URLs every resource is checked against, besides those its meta.profile claims)."""
    ctx = KitContext(fhir_base, hl7, token, Path(samples_dir), Path(profiles_dir) if profiles_dir else None,
                     timeout)
    ctx.options = {k: v for k, v in options.items() if v is not None}
    started, clock = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    try:
        results = [run_case(ctx, case) for case in load_cases(cases_dir) if not only or case["id"] in only]
    finally:
        if ctx.fixtures is not None:
            ctx.fixtures.remove_all()
    ctx.session.close()
    return KitReport(ctx.fhir_base, hl7, started, time.monotonic() - clock, results)


# The generators that read the CapabilityStatement (interactions, search parameters, SMART, Bulk
# Data, profiles, HL7) live in their own modules and register themselves in GENERATORS.
from conformance import generated  # noqa: E402,F401
from conformance import smart_bulk  # noqa: E402,F401
from conformance import hl7_cases  # noqa: E402,F401
from conformance import profile_rules  # noqa: E402,F401
