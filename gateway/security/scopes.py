"""SMART on FHIR v2 system scopes, and what each role may be granted.

A scope names a resource type (or ``*``) and interactions, one letter each, in this order:
``c`` create, ``r`` read (read, vread, history), ``u`` update, ``d`` delete, ``s`` search. So
``system/MedicationRequest.cruds`` is everything on orders and ``system/*.rs`` reads everything.
The v1 forms ``.read`` (= ``rs``), ``.write`` (= ``cud``) and ``.*`` are understood too. Scopes with
a v2 query part (``system/Observation.rs?category=...``) are not supported and are not granted.

A token carries the intersection of what the client asked for and what its role allows; the
organization rules (own data, routed data) are applied on top of it, in ``policy``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

LETTERS = "cruds"
ROLES = ("hospital", "pharmacy", "prescription-center", "regulator", "admin")

_SCOPE = re.compile(r"^system/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|[cruds]+)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}

ROLE_SCOPES: dict[str, str] = {
    # sends its own orders (HL7 v2, hospital exports, FHIR) and reads what it sent
    "hospital": "system/*.cruds",
    # reads the orders routed to it; records its dispenses
    "pharmacy": "system/MedicationRequest.rs system/Patient.rs system/Practitioner.rs system/Organization.rs "
                "system/Encounter.rs system/Medication.rs system/Provenance.rs system/MedicationDispense.cruds",
    # reads what is routed to it and updates the status of those orders
    "prescription-center": "system/*.rs system/MedicationRequest.u",
    # reads everything, writes nothing
    "regulator": "system/*.rs",
    "admin": "system/*.cruds",
}


class ScopeError(ValueError):
    """A scope request that cannot be granted (OAuth2 ``invalid_scope``)."""


@dataclass(frozen=True)
class Permissions:
    """What a token allows: (resource type or '*', letter) pairs."""
    pairs: frozenset[tuple[str, str]]

    def allows(self, resource_type: str, letter: str) -> bool:
        return (resource_type, letter) in self.pairs or ("*", letter) in self.pairs

    def allows_any(self, letter: str) -> bool:
        """Any resource type with this interaction (e.g. 'c' for HL7 v2 ingest)."""
        return any(l == letter for _t, l in self.pairs)

    def scope_text(self) -> str:
        by_type: dict[str, set[str]] = {}
        for resource_type, letter in self.pairs:
            by_type.setdefault(resource_type, set()).add(letter)
        return " ".join(f"system/{t}.{''.join(l for l in LETTERS if l in letters)}"
                        for t, letters in sorted(by_type.items(), key=lambda kv: (kv[0] != "*", kv[0])))


def parse_scopes(text: str) -> Permissions:
    """Parse a space-separated scope string; raises ScopeError naming the first unusable scope."""
    pairs: set[tuple[str, str]] = set()
    for scope in text.split():
        match = _SCOPE.match(scope)
        if not match:
            raise ScopeError(f"scope '{scope}' is not a SMART system scope this gateway grants "
                             "(system/<Type|*>.<cruds>)")
        resource_type, letters = match.groups()
        letters = _V1.get(letters, letters)
        if any(letters.count(l) > 1 for l in letters) or letters != "".join(l for l in LETTERS if l in letters):
            raise ScopeError(f"scope '{scope}': interactions must be distinct and in the order c r u d s")
        pairs.update((resource_type, letter) for letter in letters)
    return Permissions(frozenset(pairs))


def role_permissions(role: str) -> Permissions:
    return parse_scopes(ROLE_SCOPES[role])


def grant(role: str, requested: str | None) -> Permissions:
    """The requested scopes cut down to the role's; no request = everything the role has."""
    allowed = role_permissions(role)
    if not requested or not requested.strip():
        return allowed
    wanted = parse_scopes(requested)
    granted: set[tuple[str, str]] = set()
    for resource_type, letter in wanted.pairs:
        for allowed_type, allowed_letter in allowed.pairs:
            if allowed_letter != letter:
                continue
            if allowed_type == "*" or allowed_type == resource_type:
                granted.add((resource_type, letter))
            elif resource_type == "*":
                granted.add((allowed_type, letter))
    if not granted:
        raise ScopeError(f"none of the requested scopes ({requested.strip()}) is allowed for a {role} client; "
                         f"a {role} may have: {ROLE_SCOPES[role]}")
    return Permissions(frozenset(granted))
