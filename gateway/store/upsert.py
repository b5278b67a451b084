"""Apply resources made from one inbound message to the store, by business identifier.

An HL7 feed never knows our resource ids: it knows order numbers, MRNs and UDIs. Each resource the
mapping produced is matched to a stored one by those identifiers and then created, updated (merged)
or refused, following the rules its mapping file declares (``lifecycle``):

* ``terminal``: statuses a message may not move a resource out of (a late NW after a cancel);
* ``status_only_without``: when none of these segments came, only the status changes;
* ``same_reference``: an element that must not change (an order number reused for another patient);
* ``create_only_when``: the resource must be new (a renewal carries a new order number);
* ``status_only: true``: only the status of the matched resource changes (a dispense completing its
  order); with ``if_unknown: skip`` a resource nobody stored is left alone instead of refusing the message;
* ``must_resolve``: logical references (by identifier) that should name a stored resource; one that
  does not is kept as it is (the number stays on the reference), the rest of the message is stored,
  and the answer is AE naming the field (a dispense for an order the gateway has not seen).
  When the resource it names is stored later, the waiting reference is linked then (a new version
  of the dispense): a token search parameter on ``<reference>.identifier`` beside the reference
  parameter (``search_parameters.yaml``) is what lets the store find the waiting resources.

Anything shaped like the mapping engine's ``MappedResource`` can be applied; the store does not
import the mapping package.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Protocol

import orjson
from sqlalchemy import bindparam, select

from gateway.store import access, schema
from gateway.store.resources import AccessDenied, OwnershipConflict, StoreTransaction, UnstorableValue


class MappedLike(Protocol):
    key: str
    type: str
    resource: dict
    temp_id: str
    identity: list[tuple[str, str]]
    lifecycle: dict
    status_only: bool
    create_only: bool
    deletions: list[str]


@dataclass
class UpsertProblem:
    """Why one resource of the message could not be applied (becomes an AE ERR)."""
    mapped: Any
    text: str
    code: str                     # HL7 table 0357: 204 unknown key identifier, 205 duplicate key identifier
    element: str | None = None    # FHIR element the problem is about, for the ERR location


@dataclass
class UpsertResult:
    written: list[tuple[Any, dict, str]] = field(default_factory=list)   # (mapped, stored resource, action)
    problems: list[UpsertProblem] = field(default_factory=list)
    unresolved: list[UpsertProblem] = field(default_factory=list)  # stored, but a reference names nothing stored
    warnings: list[str] = field(default_factory=list)


class UpsertRejected(Exception):
    """Raised inside the write transaction so nothing of the message is stored."""

    def __init__(self, result: UpsertResult):
        super().__init__("; ".join(p.text for p in result.problems))
        self.result = result


Check = Callable[[Any, dict], "tuple[list[UpsertProblem], list[str]]"]


def apply_mapped(tx: StoreTransaction, mapped_resources: list[MappedLike], source: str,
                 check: Check | None = None) -> UpsertResult:
    """Create or update every mapped resource; raises UpsertRejected (rolling back) on any problem.

    ``check(mapped, resource)`` sees each resource exactly as it is about to be stored (merged with
    the stored version, references resolved) and returns (problems, warnings): a cancel that does
    not repeat the order's approval is judged on the order it produces, not on the message alone."""
    result = UpsertResult()
    real_refs: dict[str, str] = {}
    for mapped in mapped_resources:
        resource = _copy(mapped.resource)
        _replace_references(resource, real_refs, tx)
        resource.setdefault("meta", {})["source"] = source
        try:
            stored, action = _apply_one(tx, mapped, resource, result, check)
        except UnstorableValue as exc:      # HL7 ERR-3 102 "data type error" at the field it came from
            result.problems.append(UpsertProblem(mapped, str(exc), "102", exc.expression.split(".", 1)[-1]))
            continue
        if stored is not None:
            real_refs[mapped.temp_id] = f"{stored['resourceType']}/{stored['id']}"
            result.written.append((mapped, stored, action))
            result.unresolved.extend(_unresolved(mapped, stored))
            if action in ("create", "update"):
                _link_waiting(tx, stored, result)
    if result.problems:
        raise UpsertRejected(result)
    return result


def _checked(mapped: MappedLike, resource: dict, result: UpsertResult, check: Check | None) -> bool:
    if check is None:
        return True
    problems, warnings = check(mapped, resource)
    result.problems.extend(problems)
    result.warnings.extend(warnings)
    return not problems


def _apply_one(tx: StoreTransaction, mapped: MappedLike, resource: dict,
               result: UpsertResult, check: Check | None) -> tuple[dict | None, str]:
    purpose = "status" if mapped.status_only else "change"     # what the sender may match (access.py)
    matches = tx.find_by_identifier(mapped.type, mapped.identity, purpose=purpose) if mapped.identity else []
    lifecycle = mapped.lifecycle or {}
    label = f"{mapped.type} {', '.join(v for _s, v in mapped.identity) or mapped.key}"
    if len({m["id"] for m in matches}) > 1:
        ids = ", ".join(sorted(f"{mapped.type}/{m['id']}" for m in matches))
        result.problems.append(UpsertProblem(mapped, f"{label}: the identifiers in this message match "
                                             f"{len(matches)} different stored resources ({ids}); refusing to guess",
                                             "205", "identifier"))
        return None, ""
    if mapped.create_only and matches:
        result.problems.append(UpsertProblem(mapped, f"{label}: already exists; a renewal (ORC-1 RF) must carry a "
                                             "new order number and name the prior order in ORC-8", "205", "identifier"))
        return None, ""
    if not matches:
        foreign = tx.claimed_elsewhere(mapped.type, mapped.identity) if mapped.status_only else []
        if foreign:             # another organization's order: neither changed, nor a reason to guess
            result.problems.append(_foreign(mapped, foreign))
            return None, ""
        if mapped.status_only and lifecycle.get("if_unknown") == "skip":
            return None, ""
        if mapped.status_only:
            result.problems.append(UpsertProblem(mapped, f"{label}: no stored order has this number, so its status "
                                                 "cannot change; send the full order (with RXE/RXO)", "204", "identifier"))
            return None, ""
        resource.pop("id", None)
        if not _checked(mapped, resource, result, check):
            return None, ""
        return _owned_write(tx.create, resource, mapped, result), "create"

    existing = matches[0]
    guarded = lifecycle.get("same_reference")
    if guarded and existing.get(guarded) and resource.get(guarded) and \
            existing[guarded].get("reference") != resource[guarded].get("reference"):
        result.problems.append(UpsertProblem(mapped, f"{label}: this number already belongs to "
                                             f"{existing[guarded].get('reference')}, not to the {guarded} of this message",
                                             "205", guarded))
        return None, ""
    terminal = set(lifecycle.get("terminal") or ())
    if existing.get("status") in terminal and resource.get("status") != existing.get("status"):
        result.warnings.append(f"{label} is already {existing['status']}; this message (status "
                               f"{resource.get('status')}) cannot re-open it and was not applied to it")
        return existing, "unchanged"
    merged = _merge(existing, resource, mapped.status_only, mapped.deletions)
    if _content(merged) == _content(existing):
        return existing, "unchanged"
    if not _checked(mapped, merged, result, check):
        return None, ""
    return _owned_write(tx.update, merged, mapped, result), "update"


def _owned_write(write: Callable[[dict], dict], resource: dict, mapped: MappedLike,
                 result: UpsertResult) -> dict | None:
    """``write(resource)``, with the store's ownership refusals (gateway/store/access.py) turned into
    the message's problems: an identifier another organization's record carries, or a record the
    sender may not change. The store refuses before it writes, so the transaction stays usable."""
    try:
        return write(resource)
    except OwnershipConflict as exc:
        result.problems.append(_foreign(mapped, exc.tokens))
    except AccessDenied as exc:
        result.problems.append(UpsertProblem(mapped, str(exc), "205", "identifier"))
    return None


def _foreign(mapped: MappedLike, tokens: list[tuple[str, str]]) -> UpsertProblem:
    numbers = ", ".join(value for _system, value in tokens)
    kind = _KINDS.get(mapped.type, f"{mapped.type} identifier")
    return UpsertProblem(mapped, f"{kind} {numbers} belongs to another organization; nothing was stored",
                         "205", "identifier")


_KINDS = {"MedicationRequest": "order number", "MedicationDispense": "dispense number",
          "AdverseEvent": "report number", "Encounter": "visit number"}


def _merge(existing: dict, incoming: dict, status_only: bool, deletions: list[str]) -> dict:
    """Elements the message gave replace the stored ones; elements it left empty stay; HL7's explicit
    null ("") deletes; identifiers are merged, never erased."""
    merged = _copy(existing)
    if status_only:
        if "status" in incoming:
            merged["status"] = incoming["status"]
    else:
        for key, value in incoming.items():
            if key in ("id", "meta", "identifier"):
                continue
            merged[key] = value
        for path in deletions:
            merged.pop(path.split(".", 1)[0].split("[", 1)[0], None)
    if isinstance(incoming.get("identifier"), dict):     # a single Identifier (R4 AdverseEvent)
        merged["identifier"] = incoming["identifier"]
    known = {(i.get("system"), i.get("value")) for i in _identifier_list(merged)}
    for ident in _identifier_list(incoming):
        if (ident.get("system"), ident.get("value")) not in known:
            merged.setdefault("identifier", []).append(ident)
    merged.setdefault("meta", {})["source"] = incoming.get("meta", {}).get("source")
    return merged


def _identifier_list(resource: dict) -> list:
    identifiers = resource.get("identifier") or []
    return identifiers if isinstance(identifiers, list) else []


def _unresolved(mapped: MappedLike, stored: dict) -> list[UpsertProblem]:
    """``must_resolve`` references of the stored resource that still name only an identifier."""
    problems = []
    for element in (mapped.lifecycle or {}).get("must_resolve") or ():
        value = stored.get(element)
        for ref in value if isinstance(value, list) else [value] if value else []:
            if isinstance(ref, dict) and "reference" not in ref and isinstance(ref.get("identifier"), dict):
                ident = ref["identifier"]
                target = ref.get("type", "resource")
                problems.append(UpsertProblem(mapped, (
                    f"{stored['resourceType']}/{stored['id']} is stored, but no stored {target} has the identifier "
                    f"{ident.get('value')} ({ident.get('system')}); it keeps the number in {element}.identifier "
                    "until that resource is known"), "204", element))
    return problems


def _link_waiting(tx: StoreTransaction, stored: dict, result: UpsertResult) -> None:
    """Resources whose logical reference names ``stored`` by identifier (stored before it: a dispense
    before its order) get the literal reference now, as a new version written with this message."""
    identifiers = [(i["system"], i["value"]) for i in _identifier_list(stored) if i.get("system") and i.get("value")]
    if not identifiers:
        return
    params = tx.store.params
    query, pairs = _waiting_query(len(identifiers)), schema.token_pairs_params(identifiers)
    for reference in params.references_to(stored["resourceType"]):
        for path in reference.paths:
            waiting = next((p for p in params.by_type.get(reference.resource_type, {}).values()
                            if p.type == "token" and (*path, "identifier") in p.paths), None)
            if waiting is None:
                continue
            ids = tx.conn.execute(query, {"rt": reference.resource_type, "param": waiting.name, **pairs}).scalars().all()
            for res_id in dict.fromkeys(ids):
                # linked on behalf of the waiting record's owner, and only to what that owner may match
                with access.sending_as(access.owner_of(tx.conn, reference.resource_type, res_id)):
                    current = tx.read(reference.resource_type, res_id)
                    if current is None:
                        continue
                    linked = _copy(current)
                    _replace_references(linked, {}, tx)
                    if linked == current:
                        continue
                    updated = tx.update(linked)
                result.written.append((None, updated, "update"))
                result.warnings.append(f"{reference.resource_type}/{res_id} was waiting for "
                                       f"{stored['resourceType']} {identifiers[0][1]}; it is linked now")


@lru_cache(maxsize=16)
def _waiting_query(count: int):
    """The records of type ``rt`` whose token parameter ``param`` holds any of ``count`` (system,
    value) pairs, built once per count: built per message, it was a tenth of a message's Python time.
    No DISTINCT: it made SQLite read the type's token rows in id order instead of seeking the codes."""
    t = schema.idx_token
    return select(t.c.res_id).where(t.c.res_type == bindparam("rt"), t.c.param == bindparam("param"),
                                    schema.token_pairs_match(count))


def _copy(resource: dict) -> dict:
    """A deep copy of JSON data; an orjson round trip is several times faster than copy.deepcopy."""
    return orjson.loads(orjson.dumps(resource))


def _content(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != "meta"}


def _replace_references(node: Any, real_refs: dict[str, str], tx: StoreTransaction) -> None:
    """urn:uuid references -> the stored ids; logical references (by identifier) -> literal when known."""
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref.startswith("urn:uuid:"):
            if ref in real_refs:
                node["reference"] = real_refs[ref]
            else:
                node.pop("reference")
        elif ref is None and isinstance(node.get("identifier"), dict) and set(node) <= {"identifier", "type", "display"}:
            target = _resolve_identifier(tx, node["identifier"], node.get("type"))
            if target:
                node["reference"] = target
        for value in node.values():
            if isinstance(value, (dict, list)):
                _replace_references(value, real_refs, tx)
    elif isinstance(node, list):
        for item in node:
            _replace_references(item, real_refs, tx)


def _resolve_identifier(tx: StoreTransaction, identifier: dict, resource_type: str | None = None) -> str | None:
    """The one stored resource (of ``resource_type`` when the reference says) with this identifier."""
    t = schema.idx_token
    if not identifier.get("system") or not identifier.get("value"):
        return None
    conditions = [t.c.param == "identifier", t.c.system == identifier["system"], t.c.code == identifier["value"]]
    if isinstance(resource_type, str):
        conditions.append(t.c.res_type == resource_type)
    # only what the sender may match: another organization's record is neither linked nor revealed
    conditions += access.matchable_conditions(t.c.res_type, t.c.res_id,
                                              resource_type if isinstance(resource_type, str) else None, "reference")
    rows = tx.conn.execute(select(t.c.res_type, t.c.res_id).where(*conditions).distinct()).all()
    return f"{rows[0].res_type}/{rows[0].res_id}" if len(rows) == 1 else None
