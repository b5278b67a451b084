"""One person treated by several organizations: each keeps its own Patient; a Person links them.

Hospitals, pharmacies and clinics each send their own demographics for the same human being, and
none may overwrite another's (gateway/store/access.py: a Patient is a per-organization copy). What
they share is the national person identifier (PID-3 type ``NNCHN``: HL7 table 0203 ``NN`` + the
ISO 3166 country code). The gateway keeps, as its own record (owner NULL), one FHIR ``Person`` per
national identifier whose ``link`` names every organization's Patient carrying it, with assurance
``level3`` (matched on an identity document number, not checked in person). This is the master
person index shape HAPI FHIR MDM and IHE PIX use: the sources stay untouched; the cross-reference
lives apart. Regulators and admins read Persons (``Person?identifier=...&_include=Person:link``);
an organization's client sees neither the Person nor another organization's Patient.

The Person is written inside the same transaction as the Patient version that names it, whatever
the route (HL7, documents, FHIR), because :class:`~gateway.store.resources.StoreTransaction` calls
:func:`link_patient` for every Patient it writes.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy import select

from gateway.store import access, schema

if TYPE_CHECKING:
    from gateway.store.resources import StoreTransaction

ASSURANCE = "level3"


def national_identifiers(patient: dict) -> list[dict]:
    """The Patient's national person identifiers (type NN + country code) with a system and value."""
    found = []
    for identifier in patient.get("identifier") or []:
        if not (isinstance(identifier, dict) and identifier.get("system") and identifier.get("value")):
            continue
        codes = [c.get("code") or "" for c in (identifier.get("type") or {}).get("coding") or [] if isinstance(c, dict)]
        if any(len(code) == 5 and code.startswith("NN") for code in codes):
            found.append(identifier)
    return found


def link_patient(tx: "StoreTransaction", patient: dict) -> dict | None:
    """Create or extend the Person of the Patient's national identifier; the Person written, or None."""
    identifiers = national_identifiers(patient)
    if not identifiers:
        return None
    target = f"Patient/{patient['id']}"
    with access.as_gateway():
        persons = _persons_with(tx, [(i["system"], i["value"]) for i in identifiers])
        if not persons:
            return tx.create({"resourceType": "Person", "active": True,
                              "identifier": [{k: v for k, v in i.items() if k in ("type", "system", "value")}
                                             for i in identifiers],
                              "link": [{"target": {"reference": target}, "assurance": ASSURANCE}]})
        person = persons[0]          # the first one stored; a second national id on the Patient joins it
        links = person.get("link") or []
        if any((link.get("target") or {}).get("reference") == target for link in links):
            return None
        known = {(i.get("system"), i.get("value")) for i in person.get("identifier") or []}
        extra = [i for i in identifiers if (i["system"], i["value"]) not in known]
        updated = {**person, "link": [*links, {"target": {"reference": target}, "assurance": ASSURANCE}],
                   "identifier": [*(person.get("identifier") or []),
                                  *[{k: v for k, v in i.items() if k in ("type", "system", "value")} for i in extra]]}
        return tx.update(updated)


@lru_cache(maxsize=8)
def _persons_query(count: int):
    """The Persons carrying any of ``count`` identifiers, built once (bind parameters s0, c0, ...)."""
    t, r = schema.idx_token, schema.resources
    ids = select(t.c.res_id).where(t.c.res_type == "Person", t.c.param == "identifier", schema.token_pairs_match(count))
    return select(r.c.content, r.c.last_updated, r.c.res_id).where(
        r.c.res_type == "Person", r.c.res_id.in_(ids), r.c.deleted.is_(False))


def _persons_with(tx: "StoreTransaction", tokens: list[tuple[str, str]]) -> list[dict]:
    tx.claim_identifiers("Person", tokens)        # two hospitals' first Patients of one person: one Person
    params = schema.token_pairs_params(tokens)
    # ordered here, not in SQL: ORDER BY last_updated made SQLite walk every Person through that index
    rows = tx.conn.execute(_persons_query(len(tokens)), params).all()
    from gateway.store.resources import _load
    return [_load(row.content) for row in sorted(rows, key=lambda row: (row.last_updated, row.res_id))]
