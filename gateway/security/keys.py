"""The gateway's own token-signing keys (ES384), with ``kid`` so they can be rotated.

Kept in the database's ``signing_keys`` table, shared by every gateway process of a deployment
and re-read when it changes (a key file an earlier release kept in ``DATA_DIR`` is imported once). The newest key signs; the previous
ones still verify (and stay in the published JWKS) until they are rotated out, so tokens issued
just before a rotation keep working for their few minutes. ``fhir-gateway keys rotate`` adds a key.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.security.table_cache import TableCache
from gateway.security.tables import signing_keys

ALGORITHM = "ES384"
KEPT_KEYS = 3
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created: str
    private_key: ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict:
        jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


class SigningKeys:
    """The ``signing_keys`` table, cached (gateway/security/table_cache.py), and compared at once when
    a token names a key not in the cache (made by another process's rotation): another process's new
    key signs here within ``REFRESH_SECONDS`` and verifies here at once."""

    def __init__(self, engine: Engine, legacy_file: str | os.PathLike | None = None):
        self.engine = engine
        self._cache: TableCache[list[SigningKey]] = TableCache(engine, _STAMP, _read_keys, [])
        if legacy_file is not None:
            self._import(Path(legacy_file))

    def current(self) -> SigningKey:
        keys = self._load()
        if not keys:
            self._add([_new_key()], only_if_none=True)
            keys = self._load(fresh=True)
        return keys[-1]

    def by_kid(self, kid: str) -> SigningKey | None:
        found = next((k for k in self._load() if k.kid == kid), None)
        return found or next((k for k in self._load(fresh=True) if k.kid == kid), None)

    def jwks(self) -> dict:
        self.current()
        return {"keys": [k.public_jwk() for k in reversed(self._load())]}

    def rotate(self) -> SigningKey:
        self._add([_new_key()])
        return self._load()[-1]

    def _load(self, fresh: bool = False) -> list[SigningKey]:
        return self._cache.get(fresh)

    def _add(self, keys: list[SigningKey], only_if_none: bool = False) -> None:
        """Appends keys and keeps the newest KEPT_KEYS, in one write transaction (SQLite: the write
        lock; PostgreSQL: two rotations at once collide on the unique ``seq`` and the later one
        is tried again)."""
        for attempt in range(5):
            try:
                with self.engine.connect().execution_options(write=True) as conn, conn.begin():
                    newest = conn.execute(select(func.coalesce(func.max(signing_keys.c.seq), 0))).scalar_one()
                    if only_if_none and newest:
                        return                 # another process made the first key meanwhile
                    conn.execute(insert(signing_keys), [
                        {"kid": k.kid, "seq": newest + n, "created": k.created, "private_pem": _pem(k)}
                        for n, k in enumerate(keys, start=1)])
                    conn.execute(delete(signing_keys).where(signing_keys.c.seq <= newest + len(keys) - KEPT_KEYS))
                self._cache.invalidate()           # this process sees its own change at once
                return
            except IntegrityError:
                if attempt == 4:
                    raise

    def _import(self, path: Path) -> None:
        """Keys an earlier release kept in a JSON file: imported once into an empty table, so the
        tokens it signed still verify."""
        if not path.is_file():
            return
        with self.engine.connect() as conn:
            if conn.execute(_STAMP).one()[0]:
                return
        keys = _parse(path.read_bytes())
        if keys:
            self._add(keys, only_if_none=True)
            log.info("%d signing keys imported from %s into the database; the file is no longer read",
                     len(keys), path)


_STAMP = select(func.count(), func.coalesce(func.max(signing_keys.c.seq), 0)).select_from(signing_keys)


def _read_keys(conn) -> list[SigningKey]:  # noqa: ANN001 - a Connection
    rows = conn.execute(select(signing_keys).order_by(signing_keys.c.seq)).all()
    return [SigningKey(r.kid, r.created, serialization.load_pem_private_key(r.private_pem.encode(), None))
            for r in rows]


def _pem(key: SigningKey) -> str:
    return key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode("ascii")


def _new_key() -> SigningKey:
    return SigningKey(uuid.uuid4().hex[:16], datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      ec.generate_private_key(ec.SECP384R1()))


def _parse(content: bytes) -> list[SigningKey]:
    data = orjson.loads(content or b"{}")
    return [SigningKey(k["kid"], k["created"], serialization.load_pem_private_key(k["private_pem"].encode(), None))
            for k in data.get("keys", [])]
