"""Registered clients: who may call the gateway, for which organization, in which role.

The registry is the database's ``clients`` table, shared by every process of a deployment, edited
with ``fhir-gateway clients add|list|revoke|rotate`` and re-read by running servers when it changes,
so a revoked client is refused at its next request, at every process. Each client is bound to exactly one organization
(a facility code such as ``BOAO_SUPER_HOSPITAL``, the value its HL7 messages carry in MSH-4) and one
role (``scopes.ROLES``). It authenticates with a secret (kept only as a scrypt hash) or with a
signed JWT checked against its registered JWKS (SMART Backend Services), or both.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from gateway.security.scopes import ROLES
from gateway.security.shared_secrets import insert_ignoring_duplicates
from gateway.security.table_cache import TableCache
from gateway.security.tables import clients as clients_table
from gateway.security.secret_hash import hash_secret, new_secret, verify_secret

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ORGANIZATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
log = logging.getLogger(__name__)


class ClientError(ValueError):
    """A registry change that cannot be made (unknown client, bad role, duplicate id...)."""


@dataclass
class Client:
    client_id: str
    organization: str
    role: str
    secret_hash: str | None = None
    jwks: dict | None = None                        # public keys for signed client assertions
    mllp_addresses: list[str] = field(default_factory=list)   # source addresses / networks bound to it
    tls_subjects: list[str] = field(default_factory=list)      # TLS client certificate subject CNs
    status: str = "active"
    created: str = ""
    description: str = ""

    @property
    def active(self) -> bool:
        return self.status == "active"

    def matches_address(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for entry in self.mllp_addresses:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        return False

    def public_view(self) -> dict[str, Any]:
        """What ``clients list`` shows: never the hash."""
        view = {k: v for k, v in asdict(self).items() if k not in ("secret_hash", "jwks")}
        view["auth"] = [a for a, present in (("client_secret_basic", self.secret_hash),
                                             ("private_key_jwt", self.jwks)) if present]
        return view


class ClientRegistry:
    """The ``clients`` table, cached in memory. A look at most ``REFRESH_SECONDS`` after the last one
    uses the cache; a later one compares one counter (the row count and highest ``changed``) and
    re-reads the rows only when an edit happened. So an edit made here counts at once, one made at
    another process or machine within ``REFRESH_SECONDS`` (a request with a token already issued),
    and issuing a token always looks afresh: a revoked or rotated secret gets no new token anywhere."""

    def __init__(self, engine: Engine, legacy_file: str | os.PathLike | None = None):
        self.engine = engine
        self._cache: TableCache[dict[str, Client]] = TableCache(
            engine, _STAMP, lambda conn: {row.client_id: _client(row) for row in conn.execute(select(clients_table))}, {})
        if legacy_file is not None:
            self._import(Path(legacy_file))

    # ------------------------------------------------------------------ reading

    def get(self, client_id: str) -> Client | None:
        """A client not in the cache is looked for afresh (registered a moment ago elsewhere)."""
        return self._current().get(client_id) or self._current(fresh=True).get(client_id)

    def all(self) -> list[Client]:
        return sorted(self._current().values(), key=lambda c: c.client_id)

    def by_address(self, address: str) -> list[Client]:
        return [c for c in self._current().values() if c.active and c.matches_address(address)]

    def roles_of(self, organization: str) -> frozenset[str]:
        """The roles of an organization's active clients (a pharmacy's dispenses complete orders)."""
        return frozenset(c.role for c in self._current().values() if c.active and c.organization == organization)

    def by_tls_subject(self, subject: str) -> list[Client]:
        return [c for c in self._current().values() if c.active and subject in c.tls_subjects]

    def authenticate_secret(self, client_id: str, secret: str) -> Client | None:
        client = self._current(fresh=True).get(client_id)
        if client is None or not client.active or not client.secret_hash:
            return None
        return client if verify_secret(secret, client.secret_hash) else None

    def fresh(self, client_id: str) -> Client | None:
        """``get`` after looking at the table now (issuing a token)."""
        return self._current(fresh=True).get(client_id)

    def _current(self, fresh: bool = False) -> dict[str, Client]:
        return self._cache.get(fresh)

    # ------------------------------------------------------------------ changing

    def add(self, client_id: str, organization: str, role: str, *, secret: bool = True, jwks: dict | None = None,
            mllp_addresses: list[str] | None = None, tls_subjects: list[str] | None = None,
            description: str = "", replace: bool = False) -> tuple[Client, str | None]:
        """Register a client; returns it and its new secret (shown once, stored only hashed)."""
        if not _CLIENT_ID.match(client_id):
            raise ClientError(f"client id '{client_id}' must be 1-64 letters, digits, '.', '_' or '-'")
        if not _ORGANIZATION.match(organization):
            raise ClientError(f"organization '{organization}' must be a facility code (letters, digits, . _ -)")
        if role not in ROLES:
            raise ClientError(f"role '{role}' is not one of {', '.join(ROLES)}")
        if jwks is not None:
            _check_jwks(jwks)
        for entry in mllp_addresses or []:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ClientError(f"MLLP address '{entry}' is not an IP address or network") from exc
        plain = new_secret() if secret else None
        client = Client(client_id, organization, role, hash_secret(plain) if plain else None, jwks,
                        list(mllp_addresses or []), list(tls_subjects or []), "active",
                        datetime.now(timezone.utc).isoformat(timespec="seconds"), description)
        try:
            with self._editing() as conn:
                exists = conn.execute(select(clients_table.c.client_id).where(
                    clients_table.c.client_id == client_id)).first() is not None
                if exists and not replace:
                    raise ClientError(f"client '{client_id}' exists; use rotate to give it a new secret")
                if exists:
                    conn.execute(delete(clients_table).where(clients_table.c.client_id == client_id))
                conn.execute(insert(clients_table).values(**_row(client), changed=_next_change(conn)))
        except IntegrityError as exc:          # the same id added at the same moment elsewhere
            raise ClientError(f"client '{client_id}' exists; use rotate to give it a new secret") from exc
        return client, plain

    def revoke(self, client_id: str) -> Client:
        with self._editing() as conn:
            self._change(conn, client_id, status="revoked")
        return self.get(client_id)

    def rotate(self, client_id: str) -> str:
        """A new secret; the old one stops working at once (tokens already issued live out their minutes)."""
        plain = new_secret()
        with self._editing() as conn:
            self._change(conn, client_id, secret_hash=hash_secret(plain), status="active")
        return plain

    def _change(self, conn: Connection, client_id: str, **values: Any) -> None:
        changed = conn.execute(update(clients_table).where(clients_table.c.client_id == client_id)
                               .values(**values, changed=_next_change(conn))).rowcount
        if not changed:
            raise ClientError(f"no client '{client_id}'")

    def _editing(self):
        """One write transaction (SQLite: the write lock at BEGIN) per edit."""
        registry = self

        class _Edit:
            def __enter__(self_inner) -> Connection:
                self_inner.conn = registry.engine.connect().execution_options(write=True)
                self_inner.tx = self_inner.conn.begin()
                return self_inner.conn

            def __exit__(self_inner, exc_type, exc, tb) -> None:
                try:
                    if exc_type is None:
                        self_inner.tx.commit()
                    else:
                        self_inner.tx.rollback()
                finally:
                    self_inner.conn.close()
                    registry._cache.invalidate()        # this process sees its own edit at once

        return _Edit()

    def _import(self, path: Path) -> None:
        """Clients an earlier release kept in a JSON file, imported once into an empty table."""
        if not path.is_file():
            return
        with self.engine.connect() as conn:
            if conn.execute(_STAMP).one()[0]:
                return
        records = (orjson.loads(path.read_bytes() or b"{}").get("clients") or {})
        rows = [{**_row(Client(**record)), "changed": 0} for record in records.values()]
        with self._editing() as conn:
            insert_ignoring_duplicates(conn, clients_table, rows)
        log.info("%d clients imported from %s into the database; the file is no longer read", len(rows), path)


_STAMP = select(func.count(), func.coalesce(func.max(clients_table.c.changed), 0)).select_from(clients_table)


def _next_change(conn: Connection) -> int:
    return conn.execute(select(func.coalesce(func.max(clients_table.c.changed), 0))).scalar_one() + 1


def _row(client: Client) -> dict[str, Any]:
    record = asdict(client)
    record["jwks"] = orjson.dumps(client.jwks).decode() if client.jwks is not None else None
    record["mllp_addresses"] = orjson.dumps(client.mllp_addresses).decode()
    record["tls_subjects"] = orjson.dumps(client.tls_subjects).decode()
    return record


def _client(row) -> Client:  # noqa: ANN001 - a Row of clients_table
    return Client(row.client_id, row.organization, row.role, row.secret_hash,
                  orjson.loads(row.jwks) if row.jwks else None, orjson.loads(row.mllp_addresses),
                  orjson.loads(row.tls_subjects), row.status, row.created, row.description)


def _existing(clients: dict[str, Client], client_id: str) -> Client:
    if client_id not in clients:
        raise ClientError(f"no client '{client_id}'")
    return clients[client_id]


def _check_jwks(jwks: Any) -> None:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ClientError("a JWKS must be an object with a non-empty 'keys' list")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC") or "d" in key:
            raise ClientError("JWKS keys must be public RSA or EC keys (kty RSA/EC, no private part)")

