"""Who owns each stored resource, who may see it, and who may change it: decided here, once.

**Ownership.** A resource belongs to the organization that first sent it: the ``owner`` column of
``resources`` (mirrored as the one ``meta.tag`` of system :data:`ORGANIZATION_TAG`), set when it is
first stored and never changed. A write from another organization never changes it, whatever the
route (HL7 over HTTP or MLLP, documents, FHIR create/update/conditional/transaction/batch):

* *matching* (identifiers of an inbound message, conditional writes, logical references, waiting
  references) only considers what the writer may see (:func:`matchable_conditions`), so another
  organization's record can neither be matched, updated nor made ambiguous (no "2 matches" dead end);
* *changing* a stored resource (:func:`before_write`) is for its owner, with deliberate exceptions
  that keep the owner: operators (admin FHIR writes; an admin's HL7 replay acts for the
  original sender, MSH-4, and is no exception); and, changing the status and nothing else, the
  organization a resource was routed to (the prescription center) and a pharmacy's dispense
  completing the order it fills (``DISPENSERS``: clients registered with the pharmacy role);
* *claiming*: an identifier of a clinical record (an order number, a dispense or report id) belongs
  to the organization whose record carries it; another organization's record may not carry it too
  (:class:`OwnershipConflict`: HL7 AE, FHIR 409). Shared copies (:data:`PER_ORGANIZATION_COPIES`:
  Patient, Organization, Practitioner, Medication, Device...) are kept per organization instead:
  each sender gets its own, matched within its organization, and a Patient seen by several
  organizations is linked by national ID (``gateway/store/persons.py``);
* *linking*: a client's write may not reference a stored record it cannot see (403);
* writing a version never widens who may read it: the tag is the owner's, not the writer's.

Known limit: an organization can still claim a clinical identifier *before* its rightful owner
first sends it (guessing another hospital's next order number and namespace); binding identifier
namespaces (ORC-2.2) to organizations would close that.

**Context.** Context variables carry the caller for the current request or message; nothing here
knows about tokens or roles:

* ``sending_as(organization)``: the organization a write is made for (the owner of what it creates);
* ``restricted_to(AccessScope)``: reads see only resources the scope's organization owns, plus
  (``routed``) those routed to it; writes only with the interactions it was granted. Without a
  scope reads are unrestricted (regulators, admins, the ingest pipeline, which writes as MSH-4);
* ``operating()``: an operator (admin) changes any resource without taking it over;
* ``with_roles(lookup)``: the roles of an organization's registered clients (``pharmacy``).
"""
from __future__ import annotations

from functools import lru_cache

import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from sqlalchemy import and_, bindparam, exists, false, or_, select

from gateway.store import schema

ORGANIZATION_TAG = "https://lecheng-fhir-gateway.org/fhir/sid/sending-organization"

# Shared reference data and people: each organization keeps its own copy, matched within it; the
# identifiers they carry (a facility code, a drug's approval number, a UDI, a hospital's MRN quoted
# by the pharmacy that dispenses its prescription) are quoted by many senders and claim nothing.
PER_ORGANIZATION_COPIES = frozenset({"Patient", "Person", "Organization", "Practitioner", "PractitionerRole",
                                     "Medication", "Device", "Location", "Substance", "Provenance"})
# the gateway's own records (owner NULL): regulators and admins read them, no organization writes them
GATEWAY_OWNED = frozenset({"Person"})
# a pharmacy's dispense moves the order it fills to its next status, and nothing else
DISPENSERS = {"pharmacy": {"MedicationRequest": frozenset({"completed"})}}
_DISPENSED_TYPES = frozenset(t for moves in DISPENSERS.values() for t in moves)

# (organization, res_type) -> a SELECT of res_id routed to that organization (routing's outbox)
RoutedQuery = Callable[[str, str], Any]
# organization -> the roles of its registered clients (gateway/security)
RolesLookup = Callable[[str], "frozenset[str] | set[str]"]


@dataclass(frozen=True)
class AccessScope:
    organization: str
    routed: RoutedQuery | None = None            # set: also sees what was routed to it
    allows: Callable[[str, str], bool] | None = None   # (res_type, letter c/u/d) for writes; None = any
    types: tuple[str, ...] = ()                  # resource types served (system-level reads of routed data)


_sender: ContextVar[str | None] = ContextVar("gateway_store_sender", default=None)
_scope: ContextVar[AccessScope | None] = ContextVar("gateway_store_scope", default=None)
_bound: ContextVar[str | None] = ContextVar("gateway_store_bound", default=None)
_operator: ContextVar[bool] = ContextVar("gateway_store_operator", default=False)
_roles: ContextVar[RolesLookup | None] = ContextVar("gateway_store_roles", default=None)


@contextmanager
def bound_to(organization: str | None) -> Iterator[None]:
    """Messages and documents sent now must come from this organization (MSH-4 / sending facility):
    set for a hospital's HTTP ingest request or its MLLP connection; None = any (admins)."""
    token = _bound.set(organization)
    try:
        yield
    finally:
        _bound.reset(token)


def bound_organization() -> str | None:
    return _bound.get()


def current_sender() -> str | None:
    return _sender.get()


@contextmanager
def sending_as(organization: str | None) -> Iterator[None]:
    """Writes made now are for ``organization``: it owns what they create, and they match and change
    only what it may (an inbound message acts for its MSH-4, also when an admin replays it)."""
    token, operator = _sender.set(organization), _operator.set(False)
    try:
        yield
    finally:
        _operator.reset(operator)
        _sender.reset(token)


@contextmanager
def operating() -> Iterator[None]:
    """An operator's writes (admin FHIR writes): any resource, its owner kept."""
    token = _operator.set(True)
    try:
        yield
    finally:
        _operator.reset(token)


@contextmanager
def as_gateway() -> Iterator[None]:
    """The gateway's own writes (the Person index, gateway/store/persons.py): no caller's scope or
    organization applies; what it creates is owned by nobody."""
    tokens = _sender.set(None), _scope.set(None), _operator.set(True)
    try:
        yield
    finally:
        _operator.reset(tokens[2])
        _scope.reset(tokens[1])
        _sender.reset(tokens[0])


@contextmanager
def with_roles(lookup: RolesLookup | None) -> Iterator[None]:
    token = _roles.set(lookup)
    try:
        yield
    finally:
        _roles.reset(token)


@contextmanager
def restricted_to(scope: AccessScope | None) -> Iterator[None]:
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)


def set_for_request(organization: str | None, scope: AccessScope | None, bound: str | None = None,
                    operator: bool = False, roles: RolesLookup | None = None) -> tuple:
    """For request hooks that cannot use a ``with`` block; pass the result to :func:`reset`."""
    return (_sender.set(organization), _scope.set(scope), _bound.set(bound), _operator.set(operator),
            _roles.set(roles))


def reset(tokens: tuple) -> None:
    for var, token in zip((_sender, _scope, _bound, _operator, _roles), tokens):
        var.reset(token)


def current_scope() -> AccessScope | None:
    return _scope.get()


def owner_for_new(resource: dict) -> str | None:
    """The owner of a resource stored for the first time: the organization sending it now."""
    if resource.get("resourceType") in GATEWAY_OWNED:
        return None
    return _sender.get()


def organizations_of(resource: dict) -> set[str]:
    return {t.get("code") for t in (resource.get("meta") or {}).get("tag") or []
            if isinstance(t, dict) and t.get("system") == ORGANIZATION_TAG}


def _writer() -> str | None:
    """The organization the current write is for."""
    scope = _scope.get()
    return scope.organization if scope is not None else _sender.get()


def owned_by(organization, res_type_col, res_id_col):
    """The row's resource is owned by ``organization`` (a value or a bindparam)."""
    r = schema.resources.alias("owned")
    return exists(select(r.c.res_id).where(r.c.res_type == res_type_col, r.c.res_id == res_id_col,
                                           r.c.owner == organization))


def owner_of(conn, resource_type: str, resource_id: str) -> str | None:
    r = schema.resources
    return conn.execute(select(r.c.owner).where(r.c.res_type == resource_type, r.c.res_id == resource_id)).scalar()


# ------------------------------------------------------------------ reads

def visible_condition(res_type_col, res_id_col, resource_type: str | None = None):
    """A SQL condition keeping only visible rows of a (res_type, res_id) table; None = no restriction."""
    scope = _scope.get()
    if scope is None:
        return None
    owned = owned_by(scope.organization, res_type_col, res_id_col)
    if scope.routed is not None:
        if resource_type is not None:
            return or_(owned, res_id_col.in_(scope.routed(scope.organization, resource_type)))
        return or_(owned, _routed_any(scope, res_type_col, res_id_col))
    return owned


def visible_conditions(res_type_col, res_id_col, resource_type: str | None = None) -> list:
    """:func:`visible_condition` as a list to extend a WHERE with (empty = no restriction)."""
    condition = visible_condition(res_type_col, res_id_col, resource_type)
    return [] if condition is None else [condition]


def matchable_conditions(res_type_col, res_id_col, resource_type: str | None = None,
                         purpose: str = "change") -> list:
    """What a write may match by identifier or search (conditional writes, an inbound message's
    identifiers, logical references): what the writer may see; for a message, what its sending
    organization owns. A pharmacy's dispense also finds the orders it fills, to reference them
    (``purpose`` "reference") or move their status ("status"), never to change them otherwise
    ("change"). Empty = anything."""
    if _scope.get() is not None:
        return visible_conditions(res_type_col, res_id_col, resource_type)
    sender = _sender.get()
    if _operator.get() or sender is None:
        return []
    if purpose != "change" and resource_type in _DISPENSED_TYPES and resource_type in _dispensed_by(sender):
        return []
    return [owned_by(sender, res_type_col, res_id_col)]


def matchable_owner(resource_type: str | None = None, purpose: str = "change") -> tuple[str, str | None]:
    """:func:`matchable_conditions` said as data, for statements built once: ("any", None) = no
    restriction, ("owned", organization) = what that organization owns, ("scoped", None) = a FHIR
    API caller's visibility (build the conditions with matchable_conditions)."""
    if _scope.get() is not None:
        return "scoped", None
    sender = _sender.get()
    if _operator.get() or sender is None:
        return "any", None
    if purpose != "change" and resource_type in _DISPENSED_TYPES and resource_type in _dispensed_by(sender):
        return "any", None
    return "owned", sender


def _routed_any(scope: AccessScope, res_type_col, res_id_col):
    """Routed rows of any type (system-level history): routing's query per type, ORed."""
    return or_(false(), *[and_(res_type_col == t, res_id_col.in_(scope.routed(scope.organization, t)))
                          for t in scope.types])


def is_visible(conn, resource: dict) -> bool:
    scope = _scope.get()
    if scope is None:
        return True
    tags = organizations_of(resource)
    owner = next(iter(tags)) if len(tags) == 1 else owner_of(conn, resource["resourceType"], resource["id"])
    if owner is not None and owner == scope.organization:
        return True
    return scope.routed is not None and _routed_to(conn, scope.organization, scope, resource)


def _routed_to(conn, organization: str, scope: AccessScope, resource: dict) -> bool:
    query = scope.routed(organization, resource["resourceType"])
    return bool(conn.execute(select(exists(query.where(query.selected_columns[0] == resource["id"])))).scalar())


def _dispensed_by(organization: str | None) -> dict[str, frozenset[str]]:
    """Resource type -> the statuses ``organization``'s dispenses may move it to (its clients' roles)."""
    lookup = _roles.get()
    if organization is None or lookup is None:
        return {}
    moves: dict[str, frozenset[str]] = {}
    for role in lookup(organization) or ():
        for resource_type, statuses in DISPENSERS.get(role, {}).items():
            moves[resource_type] = moves.get(resource_type, frozenset()) | statuses
    return moves


# ------------------------------------------------------------------ writes

_UNKNOWN = object()


def before_write(conn, letter: str, resource: dict, existing: dict | None, owner: Any = _UNKNOWN) -> None:
    """Check a write against ownership and the scope, and tag the owner; raises AccessDenied or
    OwnershipConflict (both StoreErrors: 403, 409). ``letter`` c/u/d; ``existing`` the current
    version and ``owner`` its stored owner, when the caller has read it already."""
    from gateway.store.resources import AccessDenied, OwnershipConflict  # resources imports this module
    scope = _scope.get()
    resource_type = resource["resourceType"]
    if scope is not None and scope.allows is not None and not scope.allows(resource_type, letter):
        raise AccessDenied(f"this client's scopes do not allow {_VERB[letter]} {resource_type}")
    if resource_type in GATEWAY_OWNED and not _operator.get() and _writer() is not None:
        raise AccessDenied(f"{resource_type} records are the gateway's own (links between organizations' "
                           "records); no client writes them")
    if existing is None:
        owner = owner_for_new(resource)
    elif owner is _UNKNOWN:
        owner = owner_of(conn, resource_type, resource["id"])
    if existing is not None and not _may_change(conn, letter, resource, existing, owner):
        raise AccessDenied(f"{resource_type}/{resource['id']} belongs to {owner or 'the gateway'}: a record is "
                           f"changed only by the organization that sent it; nothing was stored")
    hidden = hidden_references(conn, resource) if letter != "d" else []
    if hidden:
        raise AccessDenied(f"{resource_type}.{hidden[0][0]} references {hidden[0][1]}, a record this client "
                           "may not see: a record links only to what its writer may read; nothing was stored")
    claimed = organizations_of(resource) - {owner}
    if claimed:
        raise AccessDenied(f"meta.tag claims organization(s) {', '.join(sorted(claimed))}; "
                           f"this record belongs to {owner or 'the gateway'}")
    if letter == "d":
        return
    conflicts = claim_conflicts(conn, resource, existing, owner)
    if conflicts:
        raise OwnershipConflict(resource_type, conflicts)
    _stamp(resource, owner)


def _may_change(conn, letter: str, resource: dict, existing: dict, owner: str | None) -> bool:
    writer = _writer()
    if _operator.get() or (writer is None and _scope.get() is None):
        return True                          # an operator, or the gateway itself (no caller)
    if owner is not None and owner == writer:
        return True
    if letter != "u" or _content(resource, "status") != _content(existing, "status"):
        return False                         # the exceptions below move a status, nothing else
    scope = _scope.get()
    if scope is not None and scope.routed is not None and _routed_to(conn, scope.organization, scope, existing):
        return True                          # the prescription center updating an order routed to it
    return resource.get("status") in _dispensed_by(writer).get(resource["resourceType"], ())


def hidden_references(conn, resource: dict) -> list[tuple[str, str]]:
    """(element, Type/id) of the literal references a client's write makes to stored records it may
    not see (reads restricted by a scope: FHIR clients). A reference to nothing stored is not judged."""
    scope = _scope.get()
    if scope is None:
        return []
    r = schema.resources
    hidden = []
    for element, reference in _literal_references(resource, ""):
        target_type, target_id = reference.split("/")[:2]
        if target_type == resource["resourceType"] and target_id == resource.get("id"):
            continue
        visible = visible_condition(r.c.res_type, r.c.res_id, target_type)
        row = conn.execute(select(r.c.res_id, visible.label("visible")).where(
            r.c.res_type == target_type, r.c.res_id == target_id, r.c.deleted.is_(False))).first()
        if row is not None and not row.visible:
            hidden.append((element, reference))
    return hidden


_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")


def _literal_references(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        reference = node.get("reference")
        if isinstance(reference, str) and _REFERENCE.match(reference):
            yield path or "reference", reference
        for key, value in node.items():
            if isinstance(value, (dict, list)) and key not in ("meta", "contained"):
                yield from _literal_references(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for item in node:
            yield from _literal_references(item, path)


def _content(resource: dict, *ignored: str) -> dict:
    return {k: v for k, v in resource.items() if k not in ("meta", *ignored)}


def claimed_tokens(resource: dict) -> list[tuple[str, str]]:
    """The identifiers a record claims for its owner (none for per-organization copies)."""
    if resource.get("resourceType") in PER_ORGANIZATION_COPIES:
        return []
    identifiers = resource.get("identifier") or []
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    return [(i["system"], i["value"]) for i in identifiers
            if isinstance(i, dict) and isinstance(i.get("system"), str) and isinstance(i.get("value"), str)]


def claim_conflicts(conn, resource: dict, existing: dict | None, owner: str | None) -> list[tuple[str, str]]:
    """The identifiers of ``resource`` (not already on ``existing``) that another organization's
    record of the same type carries."""
    tokens = set(claimed_tokens(resource)) - set(claimed_tokens(existing or {}))
    if not tokens or owner is None:
        return []
    return claimed_elsewhere(conn, resource["resourceType"], sorted(tokens), owner, resource.get("id"))


def claimed_elsewhere(conn, resource_type: str, tokens: list[tuple[str, str]], organization: str | None,
                      except_id: str | None = None) -> list[tuple[str, str]]:
    """Which of ``tokens`` a current ``resource_type`` of another organization than ``organization`` carries."""
    tokens = schema.storable_tokens(tokens)
    if not tokens or resource_type in PER_ORGANIZATION_COPIES:
        return []
    params = {"rt": resource_type, **schema.token_pairs_params(tokens)}
    if organization:
        params["organization"] = organization
    if except_id is not None:
        params["except_id"] = except_id
    rows = conn.execute(_claimed_query(len(tokens), bool(organization), except_id is not None), params).all()
    return sorted((row.system, row.code) for row in rows)


@lru_cache(maxsize=64)
def _claimed_query(count: int, by_organization: bool, except_one: bool):
    """claimed_elsewhere's statement, built once per shape and run with bind parameters (building it
    per message was 6% of a message's time)."""
    t, r = schema.idx_token, schema.resources
    conditions = [t.c.res_type == bindparam("rt"), t.c.param == "identifier", schema.token_pairs_match(count),
                  r.c.res_type == t.c.res_type, r.c.res_id == t.c.res_id, r.c.deleted.is_(False),
                  or_(r.c.owner.is_(None), r.c.owner != bindparam("organization")) if by_organization
                  else r.c.owner.isnot(None)]
    if except_one:
        conditions.append(r.c.res_id != bindparam("except_id"))
    return select(t.c.system, t.c.code).where(*conditions).distinct()


def _stamp(resource: dict, owner: str | None) -> None:
    """The owner's tag, and only it: writing a version never widens who may read it."""
    meta = dict(resource.get("meta") or {})       # a copy: the caller's dict is not changed
    tags = [t for t in meta.get("tag") or [] if not (isinstance(t, dict) and t.get("system") == ORGANIZATION_TAG)]
    if owner:
        tags.append({"system": ORGANIZATION_TAG, "code": owner})
    if tags:
        meta["tag"] = tags
    else:
        meta.pop("tag", None)
    resource["meta"] = meta


_VERB = {"c": "creating", "u": "updating", "d": "deleting"}
