"""Which stored resources the current caller may see and change, and who sent what.

The security layer (``gateway.security``) decides; the store applies it, in one place for every
read and write path (read, vread, history, search, export, transactions), so a view written
tomorrow cannot forget it. Two context variables carry the decision for the current request or
message; nothing here knows about tokens or roles:

* ``sending_as(organization)``: resources written now are tagged with that organization
  (``meta.tag``, system :data:`ORGANIZATION_TAG`): the facility that sent them, searchable with
  ``_tag=<system>|<code>``. Every organization that wrote a version of a resource is tagged.
* ``restricted_to(AccessScope)``: reads see only resources tagged with the scope's organization,
  or (``routed``) those routed to it; writes may only touch resources its organization sent, only
  with the interactions it was granted. Without a scope the store is unrestricted (the ingest
  pipeline, which has its own MSH-4 rule, and regulators and admins).
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from sqlalchemy import and_, exists, false, or_, select

from gateway.store import schema

ORGANIZATION_TAG = "https://lecheng-fhir-gateway.org/fhir/sid/sending-organization"

# (organization, res_type) -> a SELECT of res_id routed to that organization (routing's outbox)
RoutedQuery = Callable[[str, str], Any]


@dataclass(frozen=True)
class AccessScope:
    organization: str
    routed: RoutedQuery | None = None            # set: sees what was routed to it, not what it sent
    allows: Callable[[str, str], bool] | None = None   # (res_type, letter c/u/d) for writes; None = any
    types: tuple[str, ...] = ()                  # resource types served (system-level reads of routed data)


_sender: ContextVar[str | None] = ContextVar("gateway_store_sender", default=None)
_scope: ContextVar[AccessScope | None] = ContextVar("gateway_store_scope", default=None)
_bound: ContextVar[str | None] = ContextVar("gateway_store_bound", default=None)


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
    token = _sender.set(organization)
    try:
        yield
    finally:
        _sender.reset(token)


@contextmanager
def restricted_to(scope: AccessScope | None) -> Iterator[None]:
    token = _scope.set(scope)
    try:
        yield
    finally:
        _scope.reset(token)


def set_for_request(organization: str | None, scope: AccessScope | None, bound: str | None = None) -> tuple:
    """For request hooks that cannot use a ``with`` block; pass the result to :func:`reset`."""
    return _sender.set(organization), _scope.set(scope), _bound.set(bound)


def reset(tokens: tuple) -> None:
    _sender.reset(tokens[0])
    _scope.reset(tokens[1])
    _bound.reset(tokens[2])


def current_scope() -> AccessScope | None:
    return _scope.get()


def owner_for_new(resource: dict) -> str | None:
    """The owner of a resource stored for the first time: the organization sending it now."""
    return _sender.get()


def organizations_of(resource: dict) -> set[str]:
    return {t.get("code") for t in (resource.get("meta") or {}).get("tag") or []
            if isinstance(t, dict) and t.get("system") == ORGANIZATION_TAG}


# ------------------------------------------------------------------ reads

def visible_condition(res_type_col, res_id_col, resource_type: str | None = None):
    """A SQL condition keeping only visible rows of a (res_type, res_id) table; None = no restriction."""
    scope = _scope.get()
    if scope is None:
        return None
    if scope.routed is not None:
        if resource_type is not None:
            return res_id_col.in_(scope.routed(scope.organization, resource_type))
        return _routed_any(scope, res_type_col, res_id_col)
    t = schema.idx_token
    return exists(select(t.c.res_id).where(t.c.res_type == res_type_col, t.c.res_id == res_id_col,
                                           t.c.param == "_tag", t.c.system == ORGANIZATION_TAG,
                                           t.c.code == scope.organization))


def visible_conditions(res_type_col, res_id_col, resource_type: str | None = None) -> list:
    """:func:`visible_condition` as a list to extend a WHERE with (empty = no restriction)."""
    condition = visible_condition(res_type_col, res_id_col, resource_type)
    return [] if condition is None else [condition]


def _routed_any(scope: AccessScope, res_type_col, res_id_col):
    """Routed rows of any type (system-level history): routing's query per type, ORed."""
    return or_(false(), *[and_(res_type_col == t, res_id_col.in_(scope.routed(scope.organization, t)))
                          for t in scope.types])


def is_visible(conn, resource: dict) -> bool:
    scope = _scope.get()
    if scope is None:
        return True
    if scope.routed is None:
        return scope.organization in organizations_of(resource)
    query = scope.routed(scope.organization, resource["resourceType"])
    return conn.execute(select(exists(query.where(query.selected_columns[0] == resource["id"])))).scalar()


# ------------------------------------------------------------------ writes

def before_write(conn, letter: str, resource: dict, existing: dict | None) -> None:
    """Check a write against the scope and tag the sender; raises AccessDenied. ``letter`` c/u/d.

    A hospital changes only what its organization sent; a routed reader (the prescription center)
    only what was routed to it."""
    from gateway.store.resources import AccessDenied  # a StoreError (403); resources imports this module
    scope = _scope.get()
    if scope is not None:
        if scope.allows is not None and not scope.allows(resource["resourceType"], letter):
            raise AccessDenied(f"this client's scopes do not allow {_VERB[letter]} {resource['resourceType']}")
        if existing is not None and not is_visible(conn, existing):
            raise AccessDenied(f"{resource['resourceType']}/{resource['id']} is not {scope.organization}'s: "
                               "a client may change only its own organization's data (or what was routed to it)")
        claimed = organizations_of(resource) - organizations_of(existing or {}) - {scope.organization}
        if claimed:
            raise AccessDenied(f"meta.tag claims organization(s) {', '.join(sorted(claimed))}; "
                               f"this client writes for {scope.organization} only")
    if letter != "d":
        _stamp(resource, existing)


def _stamp(resource: dict, existing: dict | None) -> None:
    organizations = organizations_of(existing or {}) | organizations_of(resource)
    sender = _sender.get()
    if sender:
        organizations.add(sender)
    if not organizations:
        return
    meta = dict(resource.get("meta") or {})       # a copy: the caller's dict is not changed
    tags = [t for t in meta.get("tag") or [] if not (isinstance(t, dict) and t.get("system") == ORGANIZATION_TAG)]
    tags += [{"system": ORGANIZATION_TAG, "code": code} for code in sorted(organizations)]
    meta["tag"] = tags
    resource["meta"] = meta


_VERB = {"c": "creating", "u": "updating", "d": "deleting"}
