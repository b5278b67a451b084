"""The gateway's own token-signing keys (ES384), with ``kid`` so they can be rotated.

Kept in ``SIGNING_KEYS_FILE`` (default ``<DATA_DIR>/signing-keys.json``, mode 0600), shared by every
gateway process on the machine and re-read when it changes. The newest key signs; the previous
ones still verify (and stay in the published JWKS) until they are rotated out, so tokens issued
just before a rotation keep working for their few minutes. ``fhir-gateway keys rotate`` adds a key.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ALGORITHM = "ES384"
KEPT_KEYS = 3


@dataclass(frozen=True)
class SigningKey:
    kid: str
    created: str
    private_key: ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict:
        jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}


class SigningKeys:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = []
        self._stamp: tuple[int, int] | None = None

    def current(self) -> SigningKey:
        keys = self._load()
        if not keys:
            self._edit(lambda existing: existing or [_new_key()])
            keys = self._load()
        return keys[-1]

    def by_kid(self, kid: str) -> SigningKey | None:
        return next((k for k in self._load() if k.kid == kid), None)

    def jwks(self) -> dict:
        self.current()
        return {"keys": [k.public_jwk() for k in reversed(self._load())]}

    def rotate(self) -> SigningKey:
        self._edit(lambda existing: (existing + [_new_key()])[-KEPT_KEYS:])
        return self._load()[-1]

    def _load(self) -> list[SigningKey]:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return []
        with self._lock:
            if stamp != self._stamp:
                self._keys = _parse(self.path.read_bytes())
                self._stamp = stamp
            return self._keys

    def _edit(self, change) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                existing = _parse(self.path.read_bytes()) if self.path.exists() else []
                keys = change(existing)
                if keys is existing:
                    return
                data = {"keys": [{"kid": k.kid, "created": k.created, "private_pem": k.private_key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()).decode("ascii")} for k in keys]}
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".signing-keys-")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
                os.chmod(tmp, 0o600)
                os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _new_key() -> SigningKey:
    return SigningKey(uuid.uuid4().hex[:16], datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      ec.generate_private_key(ec.SECP384R1()))


def _parse(content: bytes) -> list[SigningKey]:
    data = orjson.loads(content or b"{}")
    return [SigningKey(k["kid"], k["created"], serialization.load_pem_private_key(k["private_pem"].encode(), None))
            for k in data.get("keys", [])]
