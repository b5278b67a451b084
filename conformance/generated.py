"""Cases generated from the server's own CapabilityStatement.

Nothing here names a resource type, an id or a version id: the types are those the statement
declares (or ``--types``), ids and version ids are what the server answered, and the test data are
the kit's fixtures (``conformance/fixtures.yaml``, two resources per type that differ in every
commonly searched element) created through FHIR ``create`` and deleted at the end of the run.

Each claimed search parameter is checked so that ignoring it is caught: the kit searches for the
value fixture ``a`` holds (restricted to the two fixtures with ``_id=a,b``) and requires exactly
``a`` back. The element a parameter reads comes from the R4 search parameter registry
(``r4-search-parameters.json``).
"""
from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, urljoin

import yaml

from conformance.runner import (GENERATORS, KIT_DIR, CaseFailed, CaseResult, CaseSkipped, KitContext,
                                check_fhir)

R4_PARAMETERS: dict[str, dict[str, dict]] = json.loads(
    (KIT_DIR / "r4-search-parameters.json").read_text(encoding="utf-8"))["parameters"]
FIXTURES_FILE = KIT_DIR / "fixtures.yaml"
SEARCH_SPEC = "http://hl7.org/fhir/R4/search.html"
HTTP_SPEC = "http://hl7.org/fhir/R4/http.html"
_REF = re.compile(r"\{ref:([A-Za-z]+):([ab])\}")
SPECIAL_PARAMS = {"_sort", "_has", "_include", "_revinclude", "_count", "_summary", "_elements", "_contained",
                  "_containedType", "_text", "_content", "_list", "_query", "_filter", "_type", "_format"}


class _Unresolvable(Exception):
    """A fixture refers to a type the kit could not create on this server."""


# ---------------------------------------------------------------------------------------------
# Test data


class Fixtures:
    """The kit's own test data on the server: ``a`` and ``b`` per type, made on first use through
    FHIR create, deleted (newest first) by :meth:`remove_all` when the run ends."""

    def __init__(self, ctx: KitContext) -> None:
        self.ctx = ctx
        path = Path(ctx.options.get("fixtures") or FIXTURES_FILE)
        self.templates: dict[str, dict] = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if ctx.options.get("fixtures"):     # the user's file adds to (and overrides) the kit's own
            self.templates = {**yaml.safe_load(FIXTURES_FILE.read_text(encoding="utf-8")), **self.templates}
        self.run = uuid.uuid4().hex[:10]
        self.made: dict[str, dict[str, dict]] = {}
        self.why_not: dict[str, str] = {}
        self.created: list[tuple[str, str]] = []
        self.create_exchanges: dict[str, list] = {}

    def pair(self, resource_type: str) -> tuple[dict, dict] | None:
        """The server's copies of fixtures a and b of ``resource_type``; None (see ``why_not``) when
        the kit has no template, the server does not claim create, or refused them."""
        if resource_type in self.made:
            return self.made[resource_type]["a"], self.made[resource_type]["b"]
        if resource_type in self.why_not:
            return None
        if resource_type not in self.templates:
            self.why_not[resource_type] = f"the kit has no test data for {resource_type} (give --fixtures)"
            return None
        if "create" not in self.ctx.interactions(resource_type):
            self.why_not[resource_type] = f"the server does not claim create for {resource_type}"
            return None
        self.why_not[resource_type] = "being created"        # guards a reference cycle
        made = {}
        for variant in ("a", "b"):
            try:
                body = self.render(self.templates[resource_type][variant], variant)
            except _Unresolvable as exc:
                self.why_not[resource_type] = str(exc)
                return None
            resource, problem = self.create(resource_type, body)
            if resource is None:
                self.why_not[resource_type] = problem
                return None
            made[variant] = resource
        self.made[resource_type] = made
        self.why_not.pop(resource_type, None)
        return made["a"], made["b"]

    def render(self, template: Any, variant: str, suffix: str = "") -> Any:
        """The template with ``{run}`` and ``{ref:Type:x}`` filled in; an element that refers to a
        type the server cannot hold is left out (when it is optional) rather than left dangling."""
        if isinstance(template, str):
            def one(match: re.Match) -> str:
                pair = self.pair(match.group(1))
                if pair is None:
                    raise _Unresolvable(f"needs a {match.group(1)} ({self.why_not.get(match.group(1))})")
                target = pair[0 if match.group(2) == "a" else 1]
                return f"{target['resourceType']}/{target['id']}"
            return _REF.sub(one, template.replace("{run}", self.run + suffix))
        if isinstance(template, list):
            out = []
            for item in template:
                try:
                    out.append(self.render(item, variant, suffix))
                except _Unresolvable:
                    continue
            return out
        if isinstance(template, dict):
            out = {}
            for key, value in template.items():
                try:
                    out[key] = self.render(value, variant, suffix)
                except _Unresolvable:
                    if key in ("resourceType", "status", "intent", "target", "code"):
                        raise
            return out
        return template

    def create(self, resource_type: str, body: dict) -> tuple[dict | None, str]:
        """POST one resource; returns the server's copy (read back when the answer has no body)."""
        exchange, document = self.ctx.fhir("POST", resource_type, {"Prefer": "return=representation"},
                                           json.dumps(body))
        self.create_exchanges.setdefault(resource_type, []).append(exchange)
        if exchange.status not in (200, 201):
            detail = ""
            if isinstance(document, dict) and document.get("resourceType") == "OperationOutcome":
                detail = "; ".join(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
                                   for i in document.get("issue", [])[:3])
            return None, f"the server refused the kit's {resource_type} (HTTP {exchange.status}{': ' + detail if detail else ''})"
        resource_id = (document or {}).get("id") if isinstance(document, dict) else None
        if not resource_id:
            location = {k.lower(): v for k, v in exchange.response_headers.items()}.get("location", "")
            match = re.search(rf"{resource_type}/([A-Za-z0-9\-.]{{1,64}})", location)
            resource_id = match.group(1) if match else None
        if not resource_id:
            return None, f"create of {resource_type} answered {exchange.status} without an id or Location"
        if not isinstance(document, dict) or document.get("resourceType") != resource_type:
            _, document = self.ctx.fhir("GET", f"{resource_type}/{resource_id}")
            if not isinstance(document, dict):
                return None, f"{resource_type}/{resource_id} was created but cannot be read back"
        self.created.append((resource_type, resource_id))
        return document, ""

    def remove_all(self) -> None:
        """Delete everything the kit created (newest first, so references are removed before targets)."""
        for resource_type, resource_id in reversed(self.created):
            if "delete" in self.ctx.interactions(resource_type):
                try:
                    self.ctx.fhir("DELETE", f"{resource_type}/{resource_id}")
                except Exception:       # cleanup is best effort: the run's verdict is already made
                    pass
        self.created.clear()


def fixtures(ctx: KitContext) -> Fixtures:
    if ctx.fixtures is None:
        ctx.fixtures = Fixtures(ctx)
    return ctx.fixtures


# ---------------------------------------------------------------------------------------------
# Reading a search parameter's values out of a resource (the small part of FHIRPath the R4
# registry's expressions use for the elements the fixtures carry)


def parameter_definition(resource_type: str, name: str, declared_type: str | None) -> dict:
    """The registry entry (type and expression) of ``name`` on ``resource_type``; the server's
    declared type wins when it differs."""
    found = dict(R4_PARAMETERS.get(resource_type, {}).get(name) or R4_PARAMETERS["Resource"].get(name) or {})
    if declared_type:
        found["type"] = declared_type
    return found


def _walk(items: list, path: list[str]) -> list:
    for part in path:
        nxt = []
        for item in items:
            if not isinstance(item, dict):
                continue
            if part in item:
                value = item[part]
            else:   # a choice element named without its type: value -> valueQuantity, ...
                value = [v for k, v in item.items() if k.startswith(part) and k[len(part):][:1].isupper()]
                value = value[0] if len(value) == 1 else None
            if value is None:
                continue
            nxt.extend(value if isinstance(value, list) else [value])
        items = nxt
    return items


def element_values(resource: dict, expression: str) -> list | None:
    """The values ``expression`` selects in ``resource``; None when the expression uses FHIRPath the
    kit does not evaluate (that parameter is then only smoke-tested)."""
    if not expression:
        return None
    found = []
    for part in expression.split(" | "):
        part = part.strip()
        typed = re.fullmatch(r"\((\w+)\.([\w.]+) as (\w+)\)", part)
        if typed:
            base, path, kind = typed.groups()
            path = path.split(".")
            path[-1] += kind[0].upper() + kind[1:]
        else:
            match = re.fullmatch(r"(\w+)((?:\.\w+)*)(?:\.where\(resolve\(\) is (\w+)\))?", part)
            if not match:
                return None
            base, dotted, target = match.groups()
            path = [p for p in dotted.split(".") if p]
        if base not in (resource.get("resourceType"), "Resource", "DomainResource"):
            continue
        values = _walk([resource], path)
        if not typed and match.group(3):
            values = [v for v in values if isinstance(v, dict) and
                      str(v.get("reference", "")).startswith(match.group(3) + "/")]
        found.extend(values)
    return found


def search_values(values: Iterable, kind: str) -> list[str]:
    """Search strings that should match these element values, for a parameter of type ``kind``."""
    out: list[str] = []
    for value in values:
        if kind == "token":
            if isinstance(value, dict):
                codings = value.get("coding") if "coding" in value else [value]
                for coding in codings or []:
                    code = coding.get("code") or coding.get("value")
                    if code is not None:
                        out.append(f"{coding['system']}|{code}" if coding.get("system") else str(code))
            elif isinstance(value, bool):
                out.append("true" if value else "false")
            elif value is not None:
                out.append(str(value))
        elif kind == "string":
            if isinstance(value, dict):
                for key in ("family", "city", "text", "name", "line"):
                    if value.get(key):
                        text = value[key]
                        out.append(text[0] if isinstance(text, list) else text)
                        break
            elif isinstance(value, str):
                out.append(value)
        elif kind == "date":
            if isinstance(value, dict):
                value = value.get("start") or value.get("end")
            if isinstance(value, str):
                out.append(value[:10])
        elif kind == "reference":
            if isinstance(value, dict) and value.get("reference"):
                out.append(value["reference"])
        elif kind in ("number", "quantity"):
            if isinstance(value, dict) and "value" in value:
                out.append(str(value["value"]))
            elif isinstance(value, (int, float)):
                out.append(str(value))
        elif kind == "uri" and isinstance(value, str):
            out.append(value)
    return out


def _matches(document: dict) -> list[str]:
    return [f"{(e.get('resource') or {}).get('resourceType')}/{(e.get('resource') or {}).get('id')}"
            for e in (document or {}).get("entry", []) or []
            if (e.get("search") or {}).get("mode", "match") == "match" and
            (e.get("resource") or {}).get("resourceType") != "OperationOutcome"]


def _searchset(ctx: KitContext, result: CaseResult, query: str, headers: dict | None = None) -> tuple[Any, str]:
    """GET a search; returns (document, problem) where problem is empty for a 200 searchset."""
    exchange, document = ctx.fhir("GET", query, headers)
    result.exchanges.append(exchange)
    try:
        check_fhir({"status": 200, "resourceType": "Bundle", "bundle_type": "searchset"}, exchange, document, {})
    except CaseFailed as exc:
        return document, str(exc)
    return document, ""


def _all_pages(ctx: KitContext, result: CaseResult, document: dict, limit: int = 20) -> list[str]:
    seen = _matches(document)
    for _ in range(limit):
        nxt = next((l.get("url") for l in document.get("link", []) or [] if l.get("relation") == "next"), None)
        if not nxt:
            break
        exchange, document = ctx.fhir("GET", urljoin(ctx.fhir_base + "/", nxt))
        if not isinstance(document, dict):
            break
        seen.extend(_matches(document))
    return seen


def expect_exactly(ctx: KitContext, result: CaseResult, name: str, query: str, wanted: set[str],
                   level: str = "SHALL", spec: str = SEARCH_SPEC, headers: dict | None = None) -> bool:
    """Search ``query`` and require exactly the ``wanted`` references (of the kit's pair) back."""
    document, problem = _searchset(ctx, result, query, headers)
    if problem:
        return result.check(name, False, f"{query}: {problem}", level, spec)
    got = set(_all_pages(ctx, result, document))
    if got == wanted:
        return result.check(name, True, level=level, spec=spec)
    if wanted < got:
        why = f"also returned {', '.join(sorted(got - wanted))} (the parameter was ignored or matched too much)"
    elif not got:
        why = f"returned nothing, expected {', '.join(sorted(wanted))}"
    else:
        why = f"returned {', '.join(sorted(got)) or 'nothing'}, expected {', '.join(sorted(wanted)) or 'nothing'}"
    return result.check(name, False, f"{query}: {why}", level, spec)


def _ref(resource: dict) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


# ---------------------------------------------------------------------------------------------
# Interactions


def gen_interactions(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """Every interaction the CapabilityStatement claims for every declared type, on the kit's data."""
    if ctx.capability() is None:
        raise CaseFailed("GET metadata did not return a CapabilityStatement")
    data = fixtures(ctx)
    for resource_type in ctx.types():
        claimed = ctx.interactions(resource_type)
        versioning = (ctx.declared_resources().get(resource_type) or {}).get("versioning", "versioned")
        if "search-type" in claimed:
            _, problem = _searchset(ctx, result, f"{resource_type}?_count=1")
            result.check(f"{resource_type} search-type answers a searchset", not problem, problem,
                         spec=f"{HTTP_SPEC}#search")
        if "history-type" in claimed:
            exchange, document = ctx.fhir("GET", f"{resource_type}/_history?_count=5")
            result.exchanges.append(exchange)
            ok = exchange.status == 200 and isinstance(document, dict) and document.get("type") == "history"
            result.check(f"{resource_type} history-type is a history Bundle", ok,
                         f"GET {resource_type}/_history: HTTP {exchange.status}, "
                         f"type {(document or {}).get('type') if isinstance(document, dict) else None}",
                         spec=f"{HTTP_SPEC}#history")
        if "create" in claimed:
            _check_create_refusals(ctx, result, resource_type)
        pair = data.pair(resource_type) if "create" in claimed else None
        if pair is None:
            reason = data.why_not.get(resource_type, "the server does not claim create")
            result.skip_check(f"{resource_type} read/vread/update/history/delete", reason)
            result.notes.append(f"{resource_type}: no test data ({reason})")
            continue
        a, _b = pair
        create = data.create_exchanges[resource_type][0]
        headers = {k.lower(): v for k, v in create.response_headers.items()}
        result.check(f"{resource_type} create answers 201 Created", create.status == 201,
                     f"POST {resource_type}: HTTP {create.status}, expected 201", spec=f"{HTTP_SPEC}#create")
        location = headers.get("location", "")
        result.check(f"{resource_type} create returns a Location with the new id", f"{resource_type}/{a['id']}" in location,
                     f"POST {resource_type}: Location {location!r} does not name {resource_type}/{a['id']}",
                     spec=f"{HTTP_SPEC}#create")
        version = (a.get("meta") or {}).get("versionId")
        if "read" in claimed:
            _check_read(ctx, result, a)
        if "vread" in claimed and version:
            exchange, document = ctx.fhir("GET", f"{resource_type}/{a['id']}/_history/{quote(str(version))}")
            result.exchanges.append(exchange)
            got = ((document or {}).get("meta") or {}).get("versionId") if isinstance(document, dict) else None
            result.check(f"{resource_type} vread of the version the server gave", exchange.status == 200 and got == version,
                         f"GET {resource_type}/{a['id']}/_history/{version}: HTTP {exchange.status}, versionId {got!r}",
                         spec=f"{HTTP_SPEC}#vread")
        updated = None
        if "update" in claimed:
            updated = _check_update(ctx, result, a, versioning)
        if "history-instance" in claimed:
            exchange, document = ctx.fhir("GET", f"{resource_type}/{a['id']}/_history")
            result.exchanges.append(exchange)
            entries = (document or {}).get("entry", []) if isinstance(document, dict) else []
            ok = exchange.status == 200 and isinstance(document, dict) and document.get("type") == "history"
            result.check(f"{resource_type} history-instance is a history Bundle", ok and bool(entries),
                         f"GET {resource_type}/{a['id']}/_history: HTTP {exchange.status}, {len(entries)} entries",
                         spec=f"{HTTP_SPEC}#history")
            if updated and versioning != "no-version" and ok:
                versions = [((e.get("resource") or {}).get("meta") or {}).get("versionId") for e in entries]
                result.check(f"{resource_type} history-instance holds both versions, newest first",
                             len(entries) >= 2 and versions[0] == updated, f"history versions {versions}, "
                             f"expected {updated!r} first and {version!r} after it", spec=f"{HTTP_SPEC}#history")
        if "delete" in claimed:
            _check_delete(ctx, result, resource_type, data)


def _check_read(ctx: KitContext, result: CaseResult, resource: dict) -> None:
    resource_type, rid = resource["resourceType"], resource["id"]
    exchange, document = ctx.fhir("GET", f"{resource_type}/{rid}")
    result.exchanges.append(exchange)
    ok = exchange.status == 200 and isinstance(document, dict) and document.get("resourceType") == resource_type \
        and document.get("id") == rid
    result.check(f"{resource_type} read returns the resource with its id", ok,
                 f"GET {resource_type}/{rid}: HTTP {exchange.status}", spec=f"{HTTP_SPEC}#read")
    headers = {k.lower(): v for k, v in exchange.response_headers.items()}
    version = ((document or {}).get("meta") or {}).get("versionId") if isinstance(document, dict) else None
    etag = headers.get("etag")
    result.check(f"{resource_type} read sends ETag W/\"versionId\"", bool(etag) and (not version or etag == f'W/"{version}"'),
                 f"GET {resource_type}/{rid}: ETag {etag!r}, meta.versionId {version!r}", level="SHOULD",
                 spec=f"{HTTP_SPEC}#versioning")
    result.check(f"{resource_type} read sends Last-Modified", "last-modified" in headers,
                 f"GET {resource_type}/{rid}: no Last-Modified header", level="SHOULD", spec=f"{HTTP_SPEC}#read")
    kind = headers.get("content-type", "")
    result.check(f"{resource_type} read is served as application/fhir+json", kind.startswith("application/fhir+json"),
                 f"Content-Type {kind!r}", level="SHOULD", spec="http://hl7.org/fhir/R4/http.html#mime-type")


def _check_update(ctx: KitContext, result: CaseResult, resource: dict, versioning: str) -> str | None:
    resource_type, rid = resource["resourceType"], resource["id"]
    old = (resource.get("meta") or {}).get("versionId")
    body = {k: v for k, v in resource.items() if k != "meta"}
    kept = {k: v for k, v in (resource.get("meta") or {}).items() if k in ("tag", "security", "profile")}
    if kept:        # tags and labels are the client's; versionId and lastUpdated are the server's
        body["meta"] = kept
    body["language"] = "en"
    exchange, document = ctx.fhir("PUT", f"{resource_type}/{rid}", {"Prefer": "return=representation"},
                                  json.dumps(body))
    result.exchanges.append(exchange)
    if not result.check(f"{resource_type} update answers 200", exchange.status in (200, 201),
                        f"PUT {resource_type}/{rid}: HTTP {exchange.status}", spec=f"{HTTP_SPEC}#update"):
        return None
    if not isinstance(document, dict) or document.get("resourceType") != resource_type:
        exchange, document = ctx.fhir("GET", f"{resource_type}/{rid}")
    new = ((document or {}).get("meta") or {}).get("versionId") if isinstance(document, dict) else None
    result.check(f"{resource_type} update keeps the change", isinstance(document, dict) and document.get("language") == "en",
                 f"after PUT {resource_type}/{rid} the resource does not carry the change", spec=f"{HTTP_SPEC}#update")
    if versioning != "no-version" and old:
        result.check(f"{resource_type} update makes a new versionId", bool(new) and new != old,
                     f"versionId {old!r} before, {new!r} after the update", spec=f"{HTTP_SPEC}#versioning")
        if "vread" in ctx.interactions(resource_type) and new and new != old:
            exchange, document = ctx.fhir("GET", f"{resource_type}/{rid}/_history/{quote(str(old))}")
            result.exchanges.append(exchange)
            got = ((document or {}).get("meta") or {}).get("versionId") if isinstance(document, dict) else None
            result.check(f"{resource_type} vread of the old version still gives the old version",
                         exchange.status == 200 and got == old and "language" not in (document or {}),
                         f"GET {resource_type}/{rid}/_history/{old}: HTTP {exchange.status}, versionId {got!r}",
                         spec=f"{HTTP_SPEC}#vread")
    exchange, current = ctx.fhir("GET", f"{resource_type}/{rid}")
    if exchange.status == 200 and isinstance(current, dict) and current.get("id") == rid:
        resource.clear()
        resource.update(current)        # later cases search for what the server now holds
    return new


def _check_create_refusals(ctx: KitContext, result: CaseResult, resource_type: str) -> None:
    exchange, document = ctx.fhir("POST", resource_type, None, "{ this is not JSON")
    result.exchanges.append(exchange)
    ok = exchange.status in (400, 415, 422) and isinstance(document, dict) and \
        document.get("resourceType") == "OperationOutcome"
    result.check(f"{resource_type} create of an unparseable body is 400 with an OperationOutcome", ok,
                 f"POST {resource_type} with a body that is not JSON: HTTP {exchange.status}",
                 spec=f"{HTTP_SPEC}#Status-Codes")
    other = "Basic" if resource_type != "Basic" else "Binary"
    exchange, document = ctx.fhir("POST", resource_type, None, json.dumps({"resourceType": other}))
    result.exchanges.append(exchange)
    result.check(f"{resource_type} create of another resource type is refused", 400 <= (exchange.status or 0) < 500,
                 f"POST {resource_type} with a {other} body: HTTP {exchange.status}, expected 400/422",
                 spec=f"{HTTP_SPEC}#create")


def _check_delete(ctx: KitContext, result: CaseResult, resource_type: str, data: Fixtures) -> None:
    try:
        body = data.render(data.templates[resource_type]["a"], "a", suffix="-del")
    except _Unresolvable as exc:
        result.skip_check(f"{resource_type} delete", str(exc))
        return
    made, problem = data.create(resource_type, body)
    if made is None:
        result.skip_check(f"{resource_type} delete", problem)
        return
    exchange, _ = ctx.fhir("DELETE", f"{resource_type}/{made['id']}")
    result.exchanges.append(exchange)
    if not result.check(f"{resource_type} delete answers 200/202/204", exchange.status in (200, 202, 204),
                        f"DELETE {resource_type}/{made['id']}: HTTP {exchange.status}", spec=f"{HTTP_SPEC}#delete"):
        return
    exchange, _ = ctx.fhir("GET", f"{resource_type}/{made['id']}")
    result.exchanges.append(exchange)
    result.check(f"{resource_type} read after delete is not 200", exchange.status in (404, 410),
                 f"GET {resource_type}/{made['id']} after DELETE: HTTP {exchange.status}", spec=f"{HTTP_SPEC}#delete")
    result.check(f"{resource_type} read after delete is 410 Gone", exchange.status == 410,
                 f"GET {resource_type}/{made['id']} after DELETE: HTTP {exchange.status}, R4 says 410 Gone",
                 level="SHOULD", spec=f"{HTTP_SPEC}#read")


# ---------------------------------------------------------------------------------------------
# Search parameters


def _declared_params(ctx: KitContext, resource_type: str) -> list[dict]:
    entry = ctx.declared_resources().get(resource_type) or {}
    return [p for p in entry.get("searchParam", []) or [] if p.get("name")]


def _distinct(values_a: list[str], values_b: list[str]) -> str | None:
    lowered = {v.lower() for v in values_b}
    return next((v for v in values_a if v.lower() not in lowered), None)


def gen_search_parameters(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """Every claimed search parameter must select: a search for fixture a's value returns a, not b."""
    if ctx.capability() is None:
        raise CaseFailed("GET metadata did not return a CapabilityStatement")
    data = fixtures(ctx)
    probes = case.get("probe_values", {})
    for resource_type in ctx.types():
        if "search-type" not in ctx.interactions(resource_type):
            continue
        pair = data.pair(resource_type)
        for param in _declared_params(ctx, resource_type):
            name, kind = param["name"], param.get("type")
            if name in SPECIAL_PARAMS:
                continue
            where = f"{resource_type}?{name}"
            definition = parameter_definition(resource_type, name, kind)
            kind = definition.get("type", kind)
            if pair is None:
                if kind in probes:
                    _, problem = _searchset(ctx, result, f"{resource_type}?{name}={quote(probes[kind], safe='|:/')}",
                                            {"Prefer": "handling=strict"})
                    result.check(f"{where} ({kind}) is accepted", not problem, f"{where}: {problem}")
                result.skip_check(f"{where} selects", data.why_not.get(resource_type, "no test data"))
                continue
            a, b = pair
            _check_parameter(ctx, result, resource_type, name, kind, definition, a, b)


def _check_parameter(ctx: KitContext, result: CaseResult, resource_type: str, name: str, kind: str,
                     definition: dict, a: dict, b: dict) -> None:
    where = f"{resource_type}?{name}"
    both = f"_id={a['id']},{b['id']}"
    ra, rb = _ref(a), _ref(b)
    if name == "_id":
        expect_exactly(ctx, result, f"{where} selects", f"{resource_type}?_id={a['id']}", {ra})
        return
    if name == "_lastUpdated":
        expect_exactly(ctx, result, f"{where}=lt2000-01-01 matches neither",
                       f"{resource_type}?{both}&_lastUpdated=lt2000-01-01", set())
        since = (datetime.now(timezone.utc) - timedelta(days=2)).strftime("%Y-%m-%d")
        expect_exactly(ctx, result, f"{where}=ge(two days ago) matches both",
                       f"{resource_type}?{both}&_lastUpdated=ge{since}", {ra, rb})
        return
    expression = definition.get("expression")
    if not expression and (name in a or name in b):
        expression = f"{resource_type}.{name}"      # not in the R4 registry: the element of that name
    if not expression:
        result.skip_check(f"{where} selects", f"{where} is not in the R4 search parameter registry and names "
                                              "no element; the kit does not know what it searches")
        return
    values_a = element_values(a, expression)
    values_b = element_values(b, expression)
    if values_a is None or values_b is None:
        result.skip_check(f"{where} selects", f"the kit cannot evaluate {expression!r}")
        return
    sa, sb = search_values(values_a, kind), search_values(values_b, kind)
    value = _distinct(sa, sb)
    if value is None:
        result.skip_check(f"{where} selects", "the kit's test data do not differ in this parameter")
        return
    encoded = quote(value, safe="|:/")
    expect_exactly(ctx, result, f"{where} ({kind}) selects", f"{resource_type}?{both}&{name}={encoded}", {ra})
    if kind == "token" and "|" in value:
        code = value.split("|", 1)[1]
        if _distinct([code], [v.split("|")[-1] for v in sb]):
            expect_exactly(ctx, result, f"{where} code without system selects",
                           f"{resource_type}?{both}&{name}={quote(code)}", {ra})
        expect_exactly(ctx, result, f"{where}:not excludes", f"{resource_type}?{both}&{name}:not={encoded}",
                       {rb}, level="SHOULD", spec=f"{SEARCH_SPEC}#token")
    elif kind == "token":
        expect_exactly(ctx, result, f"{where}:not excludes", f"{resource_type}?{both}&{name}:not={encoded}",
                       {rb}, level="SHOULD", spec=f"{SEARCH_SPEC}#token")
    elif kind == "string":
        prefix = value[:max(3, len(value) // 2)]
        if not any(v.lower().startswith(prefix.lower()) for v in sb):
            expect_exactly(ctx, result, f"{where} matches a prefix, any case",
                           f"{resource_type}?{both}&{name}={quote(prefix.upper())}", {ra}, spec=f"{SEARCH_SPEC}#string")
        expect_exactly(ctx, result, f"{where}:exact", f"{resource_type}?{both}&{name}:exact={encoded}", {ra},
                       level="SHOULD", spec=f"{SEARCH_SPEC}#string")
        expect_exactly(ctx, result, f"{where}:exact is case-sensitive",
                       f"{resource_type}?{both}&{name}:exact={quote(value.swapcase())}", set(),
                       level="SHOULD", spec=f"{SEARCH_SPEC}#string")
        inner = value[1:-1] if len(value) > 4 else value
        if not any(inner.lower() in v.lower() for v in sb):
            expect_exactly(ctx, result, f"{where}:contains", f"{resource_type}?{both}&{name}:contains={quote(inner)}",
                           {ra}, level="SHOULD", spec=f"{SEARCH_SPEC}#string")
    elif kind == "date":
        day = value[:10]
        later = _distinct(sb, sa)
        expect_exactly(ctx, result, f"{where} eq (day precision)", f"{resource_type}?{both}&{name}=eq{day}", {ra},
                       spec=f"{SEARCH_SPEC}#prefix")
        if later and later[:10] > day:
            middle = _midpoint(day, later[:10])
            for prefix, wanted, level in (("lt", {ra}, "SHALL"), ("le", {ra}, "SHALL"), ("gt", {rb}, "SHALL"),
                                          ("ge", {rb}, "SHALL"), ("ne", {rb}, "SHOULD"), ("eb", {ra}, "SHOULD"),
                                          ("sa", {rb}, "SHOULD")):
                stamp = day if prefix == "ne" else middle
                expect_exactly(ctx, result, f"{where} prefix {prefix}", f"{resource_type}?{both}&{name}={prefix}{stamp}",
                               wanted, level=level, spec=f"{SEARCH_SPEC}#prefix")
    elif kind == "reference":
        target_id = value.rsplit("/", 1)[-1]
        if "/" in value and _distinct([target_id], [v.rsplit("/", 1)[-1] for v in sb]):
            expect_exactly(ctx, result, f"{where} by bare id", f"{resource_type}?{both}&{name}={quote(target_id)}",
                           {ra}, level="SHOULD", spec=f"{SEARCH_SPEC}#reference")
    elif kind in ("number", "quantity"):
        other = _distinct(sb, sa)
        if other and float(other) > float(value):
            expect_exactly(ctx, result, f"{where} prefix gt", f"{resource_type}?{both}&{name}=gt{value}", {rb},
                           spec=f"{SEARCH_SPEC}#prefix")
            expect_exactly(ctx, result, f"{where} prefix lt", f"{resource_type}?{both}&{name}=lt{other}", {ra},
                           spec=f"{SEARCH_SPEC}#prefix")
    # :missing on a parameter fixture a has: neither is missing it
    expect_exactly(ctx, result, f"{where}:missing=true", f"{resource_type}?{both}&{name}:missing=true",
                   set() if sb else {rb}, level="SHOULD", spec=f"{SEARCH_SPEC}#missing")


def _midpoint(first: str, second: str) -> str:
    start, end = datetime.fromisoformat(first), datetime.fromisoformat(second)
    return (start + (end - start) / 2).strftime("%Y-%m-%d")


# ---------------------------------------------------------------------------------------------
# _include, _revinclude, _sort, _count, _summary, _elements, unknown parameters


def gen_search_features(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """The search result parameters on the kit's data: each claimed _include/_revinclude, _sort,
    _count paging, _summary, _elements, and an unknown parameter with and without handling=strict."""
    if ctx.capability() is None:
        raise CaseFailed("GET metadata did not return a CapabilityStatement")
    data = fixtures(ctx)
    declared = ctx.declared_resources()
    tried_unknown = False
    for resource_type in ctx.types():
        if "search-type" not in ctx.interactions(resource_type):
            continue
        if not tried_unknown:
            tried_unknown = True
            _check_unknown_parameter(ctx, result, resource_type)
        pair = data.pair(resource_type)
        if pair is None:
            result.skip_check(f"{resource_type} _include/_sort/_count/_summary/_elements",
                              data.why_not.get(resource_type, "no test data"))
            continue
        a, b = pair
        entry = declared.get(resource_type) or {}
        both = f"_id={a['id']},{b['id']}"
        for include in entry.get("searchInclude", []) or []:
            if include.endswith(":*") or include == "*":
                continue
            _check_include(ctx, result, resource_type, include, a)
        for revinclude in entry.get("searchRevInclude", []) or []:
            _check_revinclude(ctx, result, resource_type, revinclude, a, data)
        _check_sort(ctx, result, resource_type, a, b)
        _check_count(ctx, result, resource_type, a, b)
        document, problem = _searchset(ctx, result, f"{resource_type}?{both}&_summary=count")
        result.check(f"{resource_type} _summary=count gives the total and no resources",
                     not problem and document.get("total") == 2 and not _matches(document),
                     f"_summary=count: {problem or 'total ' + str(document.get('total')) + ', ' + str(len(_matches(document))) + ' entries'}",
                     level="SHOULD", spec=f"{SEARCH_SPEC}#summary")
        document, problem = _searchset(ctx, result, f"{resource_type}?{both}&_elements=id")
        resources = [e.get("resource") or {} for e in (document or {}).get("entry", []) or []] if not problem else []
        extra = sorted({k for r in resources for k in r if k not in ("resourceType", "id", "meta")})
        result.check(f"{resource_type} _elements=id leaves out the other elements", not problem and resources and not extra,
                     f"_elements=id: {problem or 'still carries ' + ', '.join(extra)}", level="SHOULD",
                     spec=f"{SEARCH_SPEC}#elements")
        tagged = all(any(t.get("code") == "SUBSETTED" for t in (r.get("meta") or {}).get("tag", []) or [])
                     for r in resources)
        result.check(f"{resource_type} _elements results are tagged SUBSETTED", not problem and resources and tagged,
                     "_elements=id: resources are not tagged SUBSETTED", level="SHOULD", spec=f"{SEARCH_SPEC}#elements")


def _check_unknown_parameter(ctx: KitContext, result: CaseResult, resource_type: str) -> None:
    query = f"{resource_type}?conformance-kit-unknown-parameter=1"
    document, problem = _searchset(ctx, result, query)
    result.check(f"{resource_type}: an unknown parameter is ignored without handling=strict", not problem,
                 f"{query}: {problem}", level="SHOULD", spec=f"{SEARCH_SPEC}#errors")
    if not problem:
        self_link = next((l.get("url", "") for l in document.get("link", []) or [] if l.get("relation") == "self"), "")
        # "servers SHALL return the parameters that were actually used to process a search" (search.html#errors)
        result.check(f"{resource_type}: the self link leaves out the ignored parameter",
                     "conformance-kit-unknown-parameter" not in self_link,
                     f"self link {self_link!r} names the ignored parameter, as if the search had used it",
                     spec=f"{SEARCH_SPEC}#errors")
    exchange, document = ctx.fhir("GET", query, {"Prefer": "handling=strict"})
    result.exchanges.append(exchange)
    ok = 400 <= (exchange.status or 0) < 500 and isinstance(document, dict) and \
        document.get("resourceType") == "OperationOutcome"
    result.check(f"{resource_type}: an unknown parameter with handling=strict is 4xx with an OperationOutcome", ok,
                 f"{query} with Prefer: handling=strict: HTTP {exchange.status}", level="SHOULD",
                 spec=f"{SEARCH_SPEC}#errors")
    exchange, _ = ctx.fhir("GET", f"{resource_type}?_count=not-a-number")
    result.exchanges.append(exchange)
    result.check(f"{resource_type}: a malformed _count is not a server error", (exchange.status or 500) < 500,
                 f"_count=not-a-number: HTTP {exchange.status}", spec=f"{HTTP_SPEC}#Status-Codes")


def _check_include(ctx: KitContext, result: CaseResult, resource_type: str, include: str, a: dict) -> None:
    parts = include.split(":")
    if len(parts) < 2 or parts[0] != resource_type:
        return
    definition = parameter_definition(resource_type, parts[1], None)
    values = element_values(a, definition.get("expression", "")) or []
    targets = search_values(values, "reference")
    if len(parts) == 3:
        targets = [t for t in targets if t.startswith(parts[2] + "/")]
    name = f"{resource_type} _include={include}"
    if not targets:
        result.skip_check(name, "the kit's test data have no such reference")
        return
    document, problem = _searchset(ctx, result, f"{resource_type}?_id={a['id']}&_include={include}")
    included = {f"{(e.get('resource') or {}).get('resourceType')}/{(e.get('resource') or {}).get('id')}"
                for e in (document or {}).get("entry", []) or [] if (e.get("search") or {}).get("mode") == "include"}
    missing = [t for t in targets if t not in included]
    result.check(name, not problem and not missing,
                 f"_include={include}: {problem or 'did not include ' + ', '.join(missing)}",
                 spec=f"{SEARCH_SPEC}#include")


def _check_revinclude(ctx: KitContext, result: CaseResult, resource_type: str, revinclude: str, a: dict,
                      data: Fixtures) -> None:
    parts = revinclude.split(":")
    if len(parts) < 2 or parts[0] not in ctx.declared_resources():
        return
    source_type = parts[0]
    name = f"{resource_type} _revinclude={revinclude}"
    source = data.pair(source_type) if source_type in data.templates else None
    if source is None:
        return
    definition = parameter_definition(source_type, parts[1], None)
    values = search_values(element_values(source[0], definition.get("expression", "")) or [], "reference")
    if _ref(a) not in values:
        return      # the kit's data do not link these two: nothing to show
    document, problem = _searchset(ctx, result, f"{resource_type}?_id={a['id']}&_revinclude={revinclude}")
    included = {f"{(e.get('resource') or {}).get('resourceType')}/{(e.get('resource') or {}).get('id')}"
                for e in (document or {}).get("entry", []) or [] if (e.get("search") or {}).get("mode") == "include"}
    result.check(name, not problem and _ref(source[0]) in included,
                 f"_revinclude={revinclude}: {problem or 'did not include ' + _ref(source[0])}",
                 spec=f"{SEARCH_SPEC}#revinclude")


def _check_sort(ctx: KitContext, result: CaseResult, resource_type: str, a: dict, b: dict) -> None:
    params = _declared_params(ctx, resource_type)
    level = "SHALL" if any(p["name"] == "_sort" for p in params) else "SHOULD"
    for param in params:
        if param.get("type") != "date" or param["name"] in SPECIAL_PARAMS or param["name"] == "_lastUpdated":
            continue
        definition = parameter_definition(resource_type, param["name"], "date")
        va = search_values(element_values(a, definition.get("expression", "")) or [], "date")
        vb = search_values(element_values(b, definition.get("expression", "")) or [], "date")
        if not va or not vb or va[0] >= vb[0]:
            continue
        both = f"_id={a['id']},{b['id']}"
        for sort, wanted in ((param["name"], [_ref(a), _ref(b)]), ("-" + param["name"], [_ref(b), _ref(a)])):
            document, problem = _searchset(ctx, result, f"{resource_type}?{both}&_sort={sort}")
            got = _matches(document) if not problem else []
            result.check(f"{resource_type} _sort={sort} orders the matches", got == wanted,
                         f"_sort={sort}: {problem or 'order ' + ', '.join(got) + ', expected ' + ', '.join(wanted)}",
                         level=level, spec=f"{SEARCH_SPEC}#sort")
        return


def _check_count(ctx: KitContext, result: CaseResult, resource_type: str, a: dict, b: dict) -> None:
    query = f"{resource_type}?_id={a['id']},{b['id']}&_count=1"
    document, problem = _searchset(ctx, result, query)
    if not result.check(f"{resource_type} _count=1 gives one match per page", not problem and len(_matches(document)) == 1,
                        f"{query}: {problem or str(len(_matches(document))) + ' matches on the first page'}",
                        spec=f"{SEARCH_SPEC}#count"):
        return
    links = any(l.get("relation") == "next" for l in document.get("link", []) or [])
    seen = _all_pages(ctx, result, document)
    if links:       # the server pages: its next links must deliver the whole result, each match once
        result.check(f"{resource_type} next links of a _count=1 search give each match once",
                     sorted(seen) == sorted([_ref(a), _ref(b)]), f"{query}: pages held {', '.join(seen)}",
                     spec=f"{HTTP_SPEC}#paging")
    else:           # one page of two matches and no link to the rest: clients cannot reach it
        result.check(f"{resource_type} a page holding part of the matches links to the rest (next)", False,
                     f"{query}: the page holds {', '.join(seen)} of 2 matches and has no next link",
                     level="SHOULD", spec=f"{HTTP_SPEC}#paging")
    # a server may leave the total out of a paged result unless asked (_total, as HAPI FHIR does)
    counted, problem = _searchset(ctx, result, f"{query}&_total=accurate")
    total = None if problem else counted.get("total")
    result.check(f"{resource_type} Bundle.total counts every match, not the page", total in (None, 2),
                 f"{query}&_total=accurate: total {total}, 2 matches", spec=f"{SEARCH_SPEC}#total")


GENERATORS.update({
    "interactions": gen_interactions,
    "search_parameters": gen_search_parameters,
    "search_features": gen_search_features,
})
