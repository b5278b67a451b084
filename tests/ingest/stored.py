"""What a gateway's store holds, in a form two stores can be compared in: ids and meta dropped,
references replaced by what they point at (the target's type and business identifiers).

Provenance and AuditEvent are records of the messages and of who read what, not clinical content: a
message split in two has two Provenances by design, so they are left out of the comparison."""
from __future__ import annotations

import json

import orjson
from sqlalchemy import select

from gateway.store import schema

RECORDS_OF_MESSAGES = {"Provenance", "AuditEvent"}


def stored_resources(gateway) -> list[dict]:
    """Every current clinical resource in ``gateway``'s store, id-free and in a stable order."""
    r = schema.resources
    with gateway.store.engine.connect() as conn:
        rows = conn.execute(select(r.c.res_type, r.c.res_id, r.c.content).where(r.c.deleted.is_(False))).all()
    resources = {f"{row.res_type}/{row.res_id}": orjson.loads(row.content) for row in rows
                 if row.res_type not in RECORDS_OF_MESSAGES}
    labels = {key: _label(resource) for key, resource in resources.items()}
    plain = [_without_ids(resource, labels) for resource in resources.values()]
    return sorted(plain, key=lambda resource: json.dumps(resource, sort_keys=True, ensure_ascii=False))


def _label(resource: dict) -> str:
    identifiers = resource.get("identifier") or []
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    keys = sorted(f"{i.get('system')}|{i.get('value')}" for i in identifiers)
    if keys:
        return f"{resource['resourceType']}[{', '.join(keys)}]"
    content = {k: v for k, v in resource.items() if k not in ("id", "meta")}
    return f"{resource['resourceType']}{json.dumps(_strip_references(content), sort_keys=True, ensure_ascii=False)}"


def _strip_references(node):
    if isinstance(node, dict):
        return {k: _strip_references(v) for k, v in node.items() if k != "reference"}
    if isinstance(node, list):
        return [_strip_references(v) for v in node]
    return node


def _without_ids(resource: dict, labels: dict[str, str]) -> dict:
    def walk(node):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "reference" and isinstance(value, str):
                    out[key] = labels.get(value.split("/_history/")[0], value)
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk({k: v for k, v in resource.items() if k not in ("id", "meta")})
