"""History Bundles at instance, type and system level: ``_since``, ``_count``, paging links.

Each entry carries the version (or, for a deletion, no resource) with ``request`` (how it was
written) and ``response`` (what it answered), as R4 says a ``history`` Bundle must.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Mapping
from urllib.parse import urlencode

from gateway.fhir_api.writes import WriteError
from gateway.store import HistoryPage, ResourceStore


def parse_instant(value: str, name: str = "_since") -> str:
    """A FHIR instant (or a date) -> the store's ``2026-03-15T01:25:00.000Z`` form, for string comparison."""
    text = value.strip()
    try:
        if len(text) == 10:
            moment = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise ValueError("an instant needs a time zone")
    except ValueError as exc:
        raise WriteError(400, "invalid", f"{name} '{value}' is not a FHIR instant "
                         f"(e.g. 2026-03-15T09:25:00+08:00): {exc}", name) from exc
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def history_bundle(store: ResourceStore, base: str, resource_type: str | None, resource_id: str | None,
                   args: Mapping, config: Mapping) -> dict:
    try:
        count = min(int(args.get("_count", config["DEFAULT_PAGE_SIZE"])), config["MAX_PAGE_SIZE"])
        if count < 1:
            raise ValueError
    except ValueError as exc:
        raise WriteError(400, "invalid", "_count must be a whole number >= 1", "_count") from exc
    since = parse_instant(args["_since"]) if args.get("_since") else None
    page: HistoryPage = store.history_page(resource_type, resource_id, since, count, args.get("_cursor"))
    path = "/".join(p for p in (resource_type, resource_id, "_history") if p)
    query = [(k, v) for k in args for v in args.getlist(k) if k != "_cursor"] if hasattr(args, "getlist") \
        else [(k, v) for k, v in args.items() if k != "_cursor"]
    links = [{"relation": "self", "url": f"{base}/{path}" + (f"?{urlencode(query)}" if query else "")}]
    if page.next_cursor:
        links.append({"relation": "next", "url": f"{base}/{path}?{urlencode(query + [('_cursor', page.next_cursor)])}"})
    entries = []
    for item in page.entries:
        r = item.resource
        rid, rtype, meta = r["id"], r["resourceType"], r["meta"]
        entry: dict = {"fullUrl": f"{base}/{rtype}/{rid}",
                       "request": {"method": item.method,
                                   "url": rtype if item.method == "POST" else f"{rtype}/{rid}"},
                       "response": {"status": "204 No Content" if item.deleted else
                                    ("201 Created" if item.method == "POST" else "200 OK"),
                                    "etag": f'W/"{meta["versionId"]}"', "lastModified": meta["lastUpdated"]}}
        if not item.deleted:
            entry["resource"] = r
        entries.append(entry)
    return {"resourceType": "Bundle", "type": "history", "total": page.total, "link": links, "entry": entries}
