"""Registered clients: who may call the gateway, for which organization, in which role.

The registry is one JSON file (``CLIENTS_FILE``, default ``<DATA_DIR>/clients.json``), edited with
``fhir-gateway clients add|list|revoke|rotate`` and re-read by running servers when it changes, so
a revoked client is refused at its next request. Each client is bound to exactly one organization
(a facility code such as ``BOAO_SUPER_HOSPITAL``, the value its HL7 messages carry in MSH-4) and one
role (``scopes.ROLES``). It authenticates with a secret (kept only as a scrypt hash) or with a
signed JWT checked against its registered JWKS (SMART Backend Services), or both.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from gateway.security.scopes import ROLES
from gateway.security.secret_hash import hash_secret, new_secret, verify_secret

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ORGANIZATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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
    """The clients file, cached in memory and re-read when its modification time changes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}
        self._stamp: tuple[int, int] | None = None

    # ------------------------------------------------------------------ reading

    def get(self, client_id: str) -> Client | None:
        return self._current().get(client_id)

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
        client = self.get(client_id)
        if client is None or not client.active or not client.secret_hash:
            return None
        return client if verify_secret(secret, client.secret_hash) else None

    def _current(self) -> dict[str, Client]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._clients = self._read() if stamp is not None else {}
                self._stamp = stamp
            return self._clients

    def _read(self) -> dict[str, Client]:
        data = orjson.loads(self.path.read_bytes() or b"{}")
        return {cid: Client(**record) for cid, record in (data.get("clients") or {}).items()}

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
        with self._editing() as clients:
            if client_id in clients and not replace:
                raise ClientError(f"client '{client_id}' exists; use rotate to give it a new secret")
            clients[client_id] = client
        return client, plain

    def revoke(self, client_id: str) -> Client:
        with self._editing() as clients:
            client = _existing(clients, client_id)
            client.status = "revoked"
        return client

    def rotate(self, client_id: str) -> str:
        """A new secret; the old one stops working at once (tokens already issued live out their minutes)."""
        plain = new_secret()
        with self._editing() as clients:
            client = _existing(clients, client_id)
            client.secret_hash = hash_secret(plain)
            client.status = "active"
        return plain

    def _editing(self):
        registry = self

        class _Edit:
            def __enter__(self_inner) -> dict[str, Client]:
                registry.path.parent.mkdir(parents=True, exist_ok=True)
                self_inner.lock = open(registry.path.with_suffix(".lock"), "a+")
                fcntl.flock(self_inner.lock, fcntl.LOCK_EX)
                self_inner.clients = registry._read() if registry.path.exists() else {}
                return self_inner.clients

            def __exit__(self_inner, exc_type, exc, tb) -> None:
                try:
                    if exc_type is None:
                        registry._write(self_inner.clients)
                finally:
                    fcntl.flock(self_inner.lock, fcntl.LOCK_UN)
                    self_inner.lock.close()

        return _Edit()

    def _write(self, clients: dict[str, Client]) -> None:
        data = {"clients": {cid: asdict(c) for cid, c in sorted(clients.items())}}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".clients-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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

