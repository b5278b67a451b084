"""Search over HTTP: ``GET /fhir/<type>?...`` and ``POST /fhir/<type>/_search`` -> a searchset Bundle.

Thin: the query is parsed and run by ``gateway.store.search``; here we only read the request, apply
the lenient/strict rule for unknown parameters (``Prefer: handling``), subset resources for
``_summary`` / ``_elements`` and write the Bundle with its ``self`` / ``next`` / ``previous`` links.
"""
from __future__ import annotations

from urllib.parse import urlencode

from flask import Response, current_app, request

from gateway.fhir_api.elements import subset
from gateway.fhir_api.outcome import fhir_response, outcome_response
from gateway.fhir_api.views import _base_url, _known_type, fhir_blueprint
from gateway.store.search import SearchError, parse_search
from gateway.web import gateway_of_app


@fhir_blueprint.get("/<resource_type>")
def search(resource_type: str) -> Response:
    return _search(resource_type, list(request.args.items(multi=True)))


@fhir_blueprint.post("/<resource_type>/_search")
def search_post(resource_type: str) -> Response:
    """Search with the parameters in an ``application/x-www-form-urlencoded`` body (and the URL)."""
    return _search(resource_type, list(request.args.items(multi=True)) + list(request.form.items(multi=True)))


def _search(resource_type: str, pairs: list[tuple[str, str]]) -> Response:
    if (problem := _known_type(resource_type)) is not None:
        return problem
    store = gateway_of_app().store
    config = current_app.config
    try:
        query = parse_search(store.params, resource_type, pairs, config["DEFAULT_PAGE_SIZE"], config["MAX_PAGE_SIZE"])
    except SearchError as exc:
        return outcome_response(400, "invalid", str(exc), exc.expression)
    if query.unknown and _prefers_strict():
        return outcome_response(400, "not-supported", f"unknown search parameter(s) for {resource_type}: "
                                f"{', '.join(query.unknown)}", query.unknown[0])
    counting = query.summary == "count"
    try:
        page = store.search(resource_type, query.criteria, 0 if counting else query.count, query.cursor,
                            sort=query.sort, total="accurate" if counting else query.total,
                            includes=query.includes)
    except SearchError as exc:
        return outcome_response(400, "invalid", str(exc), exc.expression)

    base = f"{_base_url()}/{resource_type}"
    # the links carry only the parameters the search used: an ignored one is left out (search.html#errors)
    ignored = set(query.unknown)
    used = [(k, v) for k, v in pairs if k not in ignored]
    kept = [(k, v) for k, v in used if k != "_cursor"]
    links = [{"relation": "self", "url": f"{base}?{urlencode(used)}"}]
    if page.next_cursor:
        links.append({"relation": "next", "url": f"{base}?{urlencode(kept + [('_cursor', page.next_cursor)])}"})
    if page.previous_cursor:
        links.append({"relation": "previous",
                      "url": f"{base}?{urlencode(kept + [('_cursor', page.previous_cursor)])}"})
    entries = [_entry(r, "match", query.summary, query.elements) for r in page.resources]
    entries += [_entry(r, "include", query.summary, None) for r in page.included]
    if query.unknown:
        entries.append({"resource": {"resourceType": "OperationOutcome", "issue": [
            {"severity": "warning", "code": "not-supported",
             "diagnostics": f"unknown search parameter '{key}' for {resource_type}: ignored", "expression": [key]}
            for key in query.unknown]}, "search": {"mode": "outcome"}})
    bundle: dict = {"resourceType": "Bundle", "type": "searchset"}
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return fhir_response(bundle)


def _entry(resource: dict, mode: str, summary: str | None, elements: list[str] | None) -> dict:
    return {"fullUrl": f"{_base_url()}/{resource['resourceType']}/{resource['id']}",
            "resource": subset(resource, summary, elements), "search": {"mode": mode}}


def _prefers_strict() -> bool:
    """``Prefer: handling=strict`` (search.html#errors); lenient is the default."""
    return any(item.strip().replace(" ", "") == "handling=strict"
               for part in request.headers.getlist("Prefer") for item in part.replace(";", ",").split(","))
