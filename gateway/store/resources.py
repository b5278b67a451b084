"""Versioned resource store with declared-parameter search indexes.

Every write makes a new version (kept in ``resource_versions``; the current version's JSON is
stored once, in ``resources``, see ``schema.version_content``) and re-indexes the resource from
``search_parameters.yaml``. Writes happen inside :meth:`ResourceStore.write`, one database
transaction, so the ingest pipeline (and routing's outbox) commit all of a message or none of it.
"""
from __future__ import annotations

import contextvars
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from hashlib import blake2b
from random import getrandbits, uniform
from typing import Callable, Iterable, Iterator, TypeVar
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, true, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from gateway.store import access, schema
from gateway.store.content import deflate
from gateway.store.group_commit import LeaderBatches
from gateway.store.search import (CursorCodec, IncludeSpec, SearchCriterion, SearchPage, SortKey,
                                  run_search)
from gateway.store.search_parameters import SearchParameterRegistry, UnstorableIndexValue, index_rows


class StoreError(Exception):
    """A request the store cannot satisfy; ``status`` is the HTTP status a FHIR API should answer."""
    status = 400
    issue_code = "processing"


class UnstorableValue(StoreError):
    """A searchable value the store refuses alike on SQLite and PostgreSQL: longer than it keeps
    (``search_parameters.INDEX_VALUE_MAX_CHARS``, issue ``too-long``) or holding a NUL, which
    PostgreSQL text cannot; ``expression`` names the element."""
    status = 400

    def __init__(self, message: str, expression: str, issue_code: str):
        super().__init__(message)
        self.expression = expression
        self.issue_code = issue_code


class WriteConflict(StoreError):
    """Concurrent writers kept conflicting until the attempts ran out: nothing was stored; the
    client may send it again (HTTP 409, HL7 AR 207, never remembered as the answer to a resend)."""
    status = 409
    issue_code = "transient"


class ResourceNotFound(StoreError):
    status = 404
    issue_code = "not-found"


class ResourceGone(StoreError):
    status = 410
    issue_code = "deleted"


class VersionConflict(StoreError):
    status = 412
    issue_code = "conflict"


class AccessDenied(StoreError):
    """A write outside the caller's organization or scopes (gateway/store/access.py)."""
    status = 403
    issue_code = "forbidden"


class OwnershipConflict(StoreError):
    """A record would carry identifiers another organization's record of its type carries (access.py)."""
    status = 409
    issue_code = "conflict"

    def __init__(self, resource_type: str, tokens: list[tuple[str, str]]):
        self.resource_type = resource_type
        self.tokens = tokens
        numbers = ", ".join(f"{value} ({system})" for system, value in tokens)
        super().__init__(f"{resource_type} identifier {numbers} belongs to another organization; nothing was stored")


_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"   # in ASCII order
_ID_LENGTH = 21                     # 62**21 > 2**125: 48 bits of milliseconds and 77 random bits


def new_resource_id() -> str:
    """A time-ordered id of 21 letters and digits: 48 bits of Unix milliseconds, then 77 random bits
    (as in a version 7 UUID, RFC 9562), written in base 62, fixed width, so ids sort by time.

    Ids written close in time sort together, so the primary keys and every index that starts with
    (type, id) (versions, the index tables, the outbox) grow at their right edge; random ids put
    each new resource on a random leaf page of each, dirtying pages all over a file larger than the
    page cache. 21 characters instead of a UUID's 36: an id is written in every index row and every
    reference to it, about 40 times per stored order, so the 15 characters saved are 1.5 kB of each
    message's share of the store."""
    value = (time.time_ns() // 1_000_000) << 77 | getrandbits(77)
    digits = []
    for _ in range(_ID_LENGTH):
        value, digit = divmod(value, 62)
        digits.append(_ID_ALPHABET[digit])
    return "".join(reversed(digits))


def now_instant() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _dump(resource: dict) -> bytes:
    return orjson.dumps(resource)


def _load(content: bytes) -> dict:
    return orjson.loads(content)


@dataclass
class HistoryEntry:
    resource: dict          # for a deletion: only resourceType, id and meta
    method: str             # POST, PUT or DELETE
    deleted: bool


@dataclass
class HistoryPage:
    entries: list[HistoryEntry]
    total: int
    next_cursor: str | None


class StoreTransaction:
    """Reads and writes inside one database transaction."""

    def __init__(self, store: "ResourceStore", conn: Connection):
        self.store = store
        self.conn = conn
        self._claimed: set[int] = set()

    def claim(self, keys: Iterable[str]) -> None:
        """Hold these identities (``Type|system|value``, a conditional write's criteria, a message's
        sender and control id) until this transaction ends, so a concurrent writer deciding on the
        same identity waits for it and then sees what it committed: one business identifier, one
        conditional-create match, one message, one record. On PostgreSQL, transaction-scoped advisory
        locks taken in one sorted order (HAPI FHIR claims a match URL under a unique index to the
        same end); on SQLite the one write lock taken at BEGIN already holds everything."""
        if self.conn.dialect.name != "postgresql":
            return
        new = sorted({_lock_key(key) for key in keys} - self._claimed)
        if new:
            self.conn.execute(_ADVISORY_LOCKS, {"keys": new})
            self._claimed.update(new)

    def claim_identifiers(self, resource_type: str, tokens: Iterable[tuple[str | None, str]]) -> None:
        self.claim(_identity_keys(resource_type, tokens))

    def read(self, resource_type: str, resource_id: str) -> dict | None:
        row = self.conn.execute(_READ_CURRENT, {"res_type_": resource_type, "res_id_": resource_id}).first()
        if row is None or row.deleted:
            return None
        resource = _load(row.content)
        return resource if access.is_visible(self.conn, resource) else None      # batch reads, conditional writes

    def find_by_identifier(self, resource_type: str, tokens: list[tuple[str, str]],
                           param: str = "identifier", purpose: str = "change") -> list[dict]:
        """Current resources carrying any of the (system, value) identifiers, among those the writer
        may match (its organization's: gateway/store/access.py)."""
        tokens = schema.storable_tokens(tokens)
        if not tokens:
            return []
        kind, owner = access.matchable_owner(resource_type, purpose)
        if kind != "scoped" and all(system is not None for system, _value in tokens):
            params = {"rt": resource_type, "param": param, **({"owner": owner} if kind == "owned" else {}),
                      **schema.token_pairs_params(tokens)}
            query = _identifier_query(len(tokens), kind == "owned")
            return [_load(row.content) for row in
                    self._found_or_claimed(query, _identity_keys(resource_type, tokens), params)]
        t = schema.idx_token
        matches = schema.token_match(tokens)
        ids = select(t.c.res_id).where(t.c.res_type == resource_type, t.c.param == param, matches).distinct()
        r = schema.resources
        query = select(r.c.content).where(
            r.c.res_type == resource_type, r.c.res_id.in_(ids), r.c.deleted.is_(False),
            *access.matchable_conditions(r.c.res_type, r.c.res_id, resource_type, purpose))
        return [_load(row.content) for row in self._found_or_claimed(query, _identity_keys(resource_type, tokens))]

    def _found_or_claimed(self, query, keys: list[str], params: dict | None = None) -> list:
        """Rows of a lookup a write decides on. Found: what it found (a record that exists is
        changed under its version's primary key, so no claim is needed, and messages naming the
        same hospital or prescriber never queue behind each other). Not found: the identities are
        claimed and the lookup made again, so of two writers about to create the same record the
        second waits and then finds the first's."""
        rows = self.conn.execute(query, params).all()
        if rows or self.conn.dialect.name != "postgresql":
            return rows
        self.claim(keys)
        return self.conn.execute(query, params).all()

    def create(self, resource: dict) -> dict:
        resource = dict(resource)
        resource["id"] = resource.get("id") or new_resource_id()
        access.before_write(self.conn, "c", resource, None)
        return self._linked(self._write(resource, 1, "POST", insert_current=True))

    def update(self, resource: dict, expected_version: str | None = None) -> dict:
        """A new version; creates the resource (version 1) when the id is new (FHIR update-as-create)."""
        row = self.conn.execute(select(schema.resources.c.version_id, schema.resources.c.content,
                                       schema.resources.c.deleted, schema.resources.c.owner).where(
            schema.resources.c.res_type == resource["resourceType"],
            schema.resources.c.res_id == resource["id"])).first()
        if expected_version is not None and (row is None or str(row.version_id) != str(expected_version)):
            raise VersionConflict(f"{resource['resourceType']}/{resource['id']} is not at version {expected_version}")
        resource = dict(resource)
        existing = _load(row.content) if row is not None and not row.deleted else None
        if existing is not None:
            access.before_write(self.conn, "u", resource, existing, row.owner)
        else:
            access.before_write(self.conn, "c", resource, None)
        if row is None:
            return self._linked(self._write(resource, 1, "PUT", insert_current=True))
        return self._linked(self._write(resource, row.version_id + 1, "PUT", insert_current=False))

    def _linked(self, stored: dict) -> dict:
        """A Patient is linked to the other organizations' Patients of its person (store/persons.py)."""
        if stored["resourceType"] == "Patient":
            from gateway.store.persons import link_patient
            link_patient(self, stored)
        return stored

    def claimed_elsewhere(self, resource_type: str, tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Which of the identifiers another organization's record of this type carries (access.py)."""
        self.claim_identifiers(resource_type, tokens)
        return access.claimed_elsewhere(self.conn, resource_type, tokens, access.current_sender())

    def current_version(self, resource_type: str, resource_id: str) -> tuple[int, bool] | None:
        """(version, deleted) of a resource, None when the id was never used."""
        row = self.conn.execute(select(schema.resources.c.version_id, schema.resources.c.deleted).where(
            schema.resources.c.res_type == resource_type, schema.resources.c.res_id == resource_id)).first()
        return None if row is None else (row.version_id, bool(row.deleted))

    def find(self, resource_type: str, criteria: list["SearchCriterion"], limit: int = 2) -> list[dict]:
        """Current resources matching search criteria, seen from inside this transaction (conditional writes)."""
        from gateway.store.search import build_conditions
        r = schema.resources
        conditions = [r.c.res_type == resource_type, r.c.deleted.is_(False),
                      *build_conditions(self.store, resource_type, criteria)]
        conditions += access.matchable_conditions(r.c.res_type, r.c.res_id, resource_type)
        query = select(r.c.content).where(*conditions).order_by(r.c.res_id).limit(limit)
        key = f"{resource_type}?" + "&".join(sorted(repr(c) for c in criteria))
        return [_load(row.content) for row in self._found_or_claimed(query, [key])]

    def delete(self, resource_type: str, resource_id: str, expected_version: str | None = None) -> int | None:
        """Soft delete: a history entry marked deleted; the indexes go. Returns the new version or None."""
        row = self.conn.execute(select(schema.resources.c.version_id, schema.resources.c.content,
                                       schema.resources.c.deleted, schema.resources.c.owner).where(
            schema.resources.c.res_type == resource_type, schema.resources.c.res_id == resource_id)).first()
        if expected_version is not None and (row is None or str(row.version_id) != str(expected_version)):
            raise VersionConflict(f"{resource_type}/{resource_id} is not at version {expected_version}")
        if row is None or row.deleted:
            return None
        access.before_write(self.conn, "d", _load(row.content), _load(row.content), row.owner)
        version = row.version_id + 1
        stamp = now_instant()
        self.conn.execute(_SUPERSEDE, {"res_type_": resource_type, "res_id_": resource_id})
        self.conn.execute(update(schema.resources).where(
            schema.resources.c.res_type == resource_type, schema.resources.c.res_id == resource_id).values(
            version_id=version, last_updated=stamp, deleted=True))
        self.conn.execute(insert(schema.resource_versions).values(
            res_type=resource_type, res_id=resource_id, version_id=version, last_updated=stamp, deleted=True,
            method="DELETE", content=row.content))
        self._unindex(resource_type, resource_id)
        return version

    def _write(self, resource: dict, version: int, method: str, insert_current: bool) -> dict:
        stamp = now_instant()
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = stamp
        resource["meta"] = meta
        try:        # before anything is written: a refused value leaves the transaction as it was
            index = index_rows(self.store.params, resource, self.store.zone)
        except UnstorableIndexValue as exc:
            raise UnstorableValue(str(exc), exc.expression, exc.issue_code) from None
        content = _dump(resource)
        row = dict(res_type=resource["resourceType"], res_id=resource["id"], version_id=version,
                   last_updated=stamp, deleted=False, content=content)
        if insert_current:      # the owner is decided once, when the resource is first stored
            _INSERT_CURRENT.run(self.conn, row | {"content": deflate(content),
                                                  "owner": access.owner_for_new(resource)})
        else:                   # the version it replaces keeps its JSON in resource_versions from now on
            self.conn.execute(_SUPERSEDE, {"res_type_": row["res_type"], "res_id_": row["res_id"]})
            self.conn.execute(_UPDATE_CURRENT, {"res_type_": row["res_type"], "res_id_": row["res_id"],
                                                "version_id": version, "last_updated": stamp, "deleted": False,
                                                "content": content})
        _INSERT_VERSION.run(self.conn, row | {"content": schema.CURRENT_CONTENT, "method": method})
        if not insert_current:          # a resource written for the first time has no index rows yet
            self._unindex(row["res_type"], row["res_id"])
        for search_type, table_rows in index.items():
            if table_rows:
                _INDEX_INSERTS[search_type].run(self.conn, table_rows)
        return resource

    def _unindex(self, resource_type: str, resource_id: str) -> None:
        for statement in _UNINDEX_STATEMENTS:
            self.conn.execute(statement, {"res_type_": resource_type, "res_id_": resource_id})


# built once: constructing the statement per write cost more than running it (``insert().values()``
# per call was 6% of a message's time in py-spy); the inserts run as driver SQL (schema.DriverInsert)
_INDEX_INSERTS = {search_type: schema.DriverInsert(table) for search_type, table in schema.INDEX_TABLES.items()}
_INSERT_CURRENT = schema.DriverInsert(schema.resources)
_INSERT_VERSION = schema.DriverInsert(schema.resource_versions)
_READ_CURRENT = select(schema.resources.c.content, schema.resources.c.deleted).where(
    schema.resources.c.res_type == bindparam("res_type_"), schema.resources.c.res_id == bindparam("res_id_"))
_UPDATE_CURRENT = update(schema.resources).where(
    schema.resources.c.res_type == bindparam("res_type_"), schema.resources.c.res_id == bindparam("res_id_"))
_SUPERSEDE = update(schema.resource_versions).where(
    schema.resource_versions.c.res_type == bindparam("res_type_"),
    schema.resource_versions.c.res_id == bindparam("res_id_"),
    func.length(schema.resource_versions.c.content) == 0,
).values(content=select(schema.resources.c.content).where(
    schema.resources.c.res_type == bindparam("res_type_"),
    schema.resources.c.res_id == bindparam("res_id_")).scalar_subquery())
_UNINDEX_STATEMENTS = [delete(t).where(t.c.res_type == bindparam("res_type_"), t.c.res_id == bindparam("res_id_"))
                       for t in schema.INDEX_TABLES.values()]


@lru_cache(maxsize=32)
def _identifier_query(count: int, owned: bool):
    """find_by_identifier's lookup for ``count`` (system, value) pairs, built once with bind
    parameters (rt, param, s0.., c0.., codes, owner): building it per lookup, access conditions
    included, was about a tenth of a message's time. Same SQL as schema.token_match writes."""
    t, r = schema.idx_token, schema.resources
    ids = select(t.c.res_id).where(t.c.res_type == bindparam("rt"), t.c.param == bindparam("param"),
                                   schema.token_pairs_match(count)).distinct()
    conditions = [r.c.res_type == bindparam("rt"), r.c.res_id.in_(ids), r.c.deleted.is_(False)]
    if owned:
        conditions.append(access.owned_by(bindparam("owner"), r.c.res_type, r.c.res_id))
    return select(r.c.content).where(*conditions)


# one statement for all of a claim's locks, taken in the order given (sorted, so claims never deadlock)
_ADVISORY_LOCKS = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")


def _identity_keys(resource_type: str, tokens: Iterable[tuple[str | None, str]]) -> list[str]:
    """The claim keys of a type's business identifiers: one key per (system, value), whoever owns it."""
    return [f"{resource_type}|{system or ''}|{value}" for system, value in tokens]


def _lock_key(key: str) -> int:
    """A signed 64-bit advisory lock key for an identity (two identities sharing one only wait longer)."""
    return int.from_bytes(blake2b(key.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


# PostgreSQL SQLSTATEs that mean "a concurrent writer got there first": serialization_failure,
# deadlock_detected, unique_violation (an identity claimed by a transaction that committed meanwhile)
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01", "23505"})
WRITE_ATTEMPTS = 8
UNITS_PER_BATCH = 32        # SQLite: units of work sharing one transaction at most (ResourceStore.writing)
_RUN_ALONE = object()       # a unit whose shared transaction failed as a whole: its caller runs it again
T = TypeVar("T")


def is_write_conflict(exc: BaseException) -> bool:
    """A database error that re-running the whole unit of work can get past."""
    original = getattr(exc, "orig", None)
    return getattr(original, "sqlstate", None) in _CONFLICT_SQLSTATES


class ResourceStore:
    def __init__(self, engine: Engine, params: SearchParameterRegistry, zone: ZoneInfo | None = None,
                 cursor_secret: str | bytes | None = None):
        self.engine = engine
        self.params = params
        self.zone = zone or ZoneInfo("UTC")
        # search cursors are signed; without a configured secret they are valid for this process only
        self.cursors = CursorCodec(cursor_secret or secrets.token_bytes(32))
        # SQLite: concurrent units of work share a transaction (writing); PostgreSQL runs them side by side
        self._batches = (LeaderBatches(self._run_batch, UNITS_PER_BATCH) if engine.dialect.name == "sqlite"
                         else None)

    @contextmanager
    def write(self) -> Iterator[StoreTransaction]:
        """One write transaction. On SQLite writers take the one write lock at BEGIN (IMMEDIATE), so
        what a transaction reads stays true until it commits. On PostgreSQL (READ COMMITTED) writers
        run side by side: an identity looked up and found absent is held with
        :meth:`StoreTransaction.claim`, and a version read as current that another writer replaced
        meanwhile fails on the versions table's primary key, which :meth:`writing` answers by
        running the whole unit again. (SERIALIZABLE was tried first: its predicate locks on shared
        index pages made unrelated messages abort each other until the retries ran out.)"""
        with self.engine.connect().execution_options(write=True) as conn:
            with conn.begin():
                yield StoreTransaction(self, conn)

    def writing(self, unit: Callable[[StoreTransaction], T], attempts: int = WRITE_ATTEMPTS) -> T:
        """Run ``unit`` in one :meth:`write` transaction and commit it; when a concurrent writer
        conflicts (PostgreSQL: serialization failure, deadlock, a unique key claimed meanwhile), roll
        back and run the whole unit again, so it decides on what is committed now (HAPI FHIR and
        Medplum retry the same way). ``unit`` must build everything it writes afresh each time.
        Raises WriteConflict when the attempts run out.

        On SQLite, units that arrive while another runs share one transaction (group commit, as
        the message log and audit rows do: ``group_commit.LeaderBatches``). The first caller leads:
        it runs every queued unit in turn, each under a savepoint of its own and in its caller's
        context (contextvars: the sender, the access scope, the message being logged), commits once,
        and wakes their callers, each with its own result or error. Writers queue for SQLite's one
        write lock anyway; sharing the commit means a message's pages are written to the WAL once
        per batch rather than once per message, and one BEGIN serves them all. One unit's error
        rolls back its savepoint only; a batch whose commit fails has each unit run again alone."""
        if self._batches is not None:
            outcome = self._batches.submit((unit, contextvars.copy_context(), attempts))
            if outcome is not _RUN_ALONE:
                return outcome
        return self._writing_alone(unit, attempts)

    def _writing_alone(self, unit: Callable[[StoreTransaction], T], attempts: int) -> T:
        for attempt in range(1, attempts + 1):
            try:
                with self.write() as tx:
                    return unit(tx)
            except DBAPIError as exc:
                if not is_write_conflict(exc):
                    raise
                if attempt == attempts:
                    raise WriteConflict(f"concurrent writes conflicted {attempts} times; nothing was stored, "
                                        "send it again") from exc
                time.sleep(uniform(0, 0.002 * 2 ** attempt))      # de-synchronise the writers that collided
        raise AssertionError("unreachable")

    def _run_batch(self, batch: list) -> None:
        """Runs a batch of :meth:`writing` units (``(unit, context, attempts)`` payloads) in one transaction."""
        if len(batch) == 1:           # alone: exactly what writing() does without company, no savepoint
            pending = batch[0]
            unit, context, attempts = pending.payload
            try:
                pending.result = context.run(self._writing_alone, unit, attempts)
            except Exception as exc:  # noqa: BLE001 - re-raised in its caller
                pending.error = exc
            return
        try:
            with self.engine.connect().execution_options(write=True) as conn, conn.begin():
                for pending in batch:
                    unit, context, _attempts = pending.payload
                    savepoint = conn.begin_nested()
                    try:
                        pending.result = context.run(unit, StoreTransaction(self, conn))
                    except Exception as exc:  # noqa: BLE001 - this unit's writes go, its neighbours' stay
                        savepoint.rollback()
                        pending.result, pending.error = (_RUN_ALONE, None) if is_write_conflict(exc) else (None, exc)
                    else:
                        savepoint.commit()
        except Exception:  # noqa: BLE001 - BEGIN or COMMIT failed: nothing of the batch is stored
            for pending in batch:
                pending.result, pending.error = _RUN_ALONE, None

    # ------------------------------------------------------------------ reads

    def read(self, resource_type: str, resource_id: str) -> dict:
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.resources.c.content, schema.resources.c.deleted).where(
                schema.resources.c.res_type == resource_type, schema.resources.c.res_id == resource_id)).first()
            if row is not None:
                self._check_visible(conn, resource_type, resource_id)
        if row is None:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        if row.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} has been deleted")
        return _load(row.content)

    def _check_visible(self, conn: Connection, resource_type: str, resource_id: str) -> None:
        """Outside the caller's organization (gateway/store/access.py) a resource is answered as unknown."""
        if access.current_scope() is None:
            return
        r = schema.resources
        row = conn.execute(select(r.c.content).where(r.c.res_type == resource_type, r.c.res_id == resource_id)).first()
        if row is None or not access.is_visible(conn, _load(row.content)):
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known (or not visible to this client)")

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> dict:
        if not str(version_id).isdigit():
            raise ResourceNotFound(f"version '{version_id}' of {resource_type}/{resource_id} is not known")
        v = schema.resource_versions
        with self.engine.connect() as conn:
            row = conn.execute(select(schema.version_content(), v.c.deleted).where(
                v.c.res_type == resource_type, v.c.res_id == resource_id, v.c.version_id == int(version_id))).first()
            if row is not None:
                self._check_visible(conn, resource_type, resource_id)
        if row is None:
            raise ResourceNotFound(f"version {version_id} of {resource_type}/{resource_id} is not known")
        if row.deleted:
            raise ResourceGone(f"version {version_id} of {resource_type}/{resource_id} is a deletion")
        return _load(row.content)

    def history(self, resource_type: str, resource_id: str) -> list[tuple[dict, str, bool]]:
        """(resource, method, deleted) for every version, newest first."""
        v = schema.resource_versions
        with self.engine.connect() as conn:
            rows = conn.execute(select(schema.version_content(), v.c.method, v.c.deleted, v.c.version_id,
                                       v.c.last_updated).where(
                v.c.res_type == resource_type, v.c.res_id == resource_id).order_by(v.c.version_id.desc())).all()
        if not rows:
            raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
        result = []
        for row in rows:
            resource = _load(row.content)
            if row.deleted:
                resource = {"resourceType": resource_type, "id": resource_id,
                            "meta": {"versionId": str(row.version_id), "lastUpdated": row.last_updated}}
            result.append((resource, row.method, row.deleted))
        return result

    def history_page(self, resource_type: str | None = None, resource_id: str | None = None,
                     since: str | None = None, count: int = 50, cursor: str | None = None) -> "HistoryPage":
        """Versions newest first at system (no type), type or instance level, deletions included.

        The cursor pins the newest ``last_updated`` seen by the first page, so versions written while
        a client pages do not shift the pages it has not read yet.
        """
        v = schema.resource_versions
        conditions = []
        if resource_type is not None:
            conditions.append(v.c.res_type == resource_type)
        if resource_id is not None:
            conditions.append(v.c.res_id == resource_id)
        if since is not None:
            conditions.append(v.c.last_updated > since)
        conditions += access.visible_conditions(v.c.res_type, v.c.res_id, resource_type)
        offset, till = 0, None
        if cursor:
            till, _, offset_text = cursor.rpartition("|")
            offset = int(offset_text) if offset_text.isdigit() else 0
        with self.engine.connect() as conn:
            if till is None:
                till = conn.execute(select(func.max(v.c.last_updated)).where(*conditions)).scalar_one()
            if till is None:
                if resource_id is not None:
                    raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
                return HistoryPage([], 0, None)
            conditions.append(v.c.last_updated <= till)
            total = conn.execute(select(func.count()).select_from(v).where(*conditions)).scalar_one()
            rows = conn.execute(select(v.c.res_type, v.c.res_id, schema.version_content(), v.c.method, v.c.deleted,
                                       v.c.version_id, v.c.last_updated).where(*conditions)
                                .order_by(v.c.last_updated.desc(), v.c.res_type, v.c.res_id, v.c.version_id.desc())
                                .offset(offset).limit(count)).all()
        entries = []
        for row in rows:
            if row.deleted:
                resource = {"resourceType": row.res_type, "id": row.res_id,
                            "meta": {"versionId": str(row.version_id), "lastUpdated": row.last_updated}}
            else:
                resource = _load(row.content)
            entries.append(HistoryEntry(resource, row.method, bool(row.deleted)))
        next_offset = offset + len(rows)
        return HistoryPage(entries, total, f"{till}|{next_offset}" if next_offset < total and rows else None)

    def iter_current(self, resource_type: str, criteria_sets: list[list[SearchCriterion]] | None = None,
                     since: str | None = None, patient_compartment: bool = False,
                     page_size: int = 500) -> Iterator[bytes]:
        """The stored JSON of every current resource of a type, a page at a time (keyset on id), so an
        export of any size holds one page in memory. ``criteria_sets`` are ORed (``_typeFilter``);
        ``patient_compartment`` keeps Patients and resources referencing a Patient."""
        from gateway.store.search import build_conditions
        r = schema.resources
        base = [r.c.res_type == resource_type, r.c.deleted.is_(False)]
        if since is not None:
            base.append(r.c.last_updated > since)
        if criteria_sets:
            base.append(or_(*[and_(*build_conditions(self, resource_type, criteria)) if criteria else true()
                              for criteria in criteria_sets]))
        base += access.visible_conditions(r.c.res_type, r.c.res_id, resource_type)
        if patient_compartment and resource_type != "Patient":
            ref = schema.idx_reference
            base.append(r.c.res_id.in_(select(ref.c.res_id).where(
                ref.c.res_type == resource_type, ref.c.target.like("Patient/%"))))
        last_id = None
        while True:
            conditions = list(base)
            if last_id is not None:
                conditions.append(r.c.res_id > last_id)
            with self.engine.connect() as conn:
                rows = conn.execute(select(r.c.res_id, r.c.content).where(*conditions)
                                    .order_by(r.c.res_id).limit(page_size)).all()
            for row in rows:
                yield row.content
            if len(rows) < page_size:
                return
            last_id = rows[-1].res_id

    def search(self, resource_type: str, criteria: list[SearchCriterion], count: int = 50,
               cursor: str | None = None, *, sort: list[SortKey] | None = None, total: str | None = None,
               includes: list[IncludeSpec] | None = None) -> SearchPage:
        """Current resources matching all criteria, a page at a time (keyset cursor, see gateway.store.search)."""
        return run_search(self, resource_type, criteria, count, cursor, sort, total, includes)
