"""Client secrets are kept only as scrypt hashes.

Why scrypt (``hashlib.scrypt``, OpenSSL's implementation in the standard library): it is a
maintained, memory-hard KDF that needs no extra dependency. Argon2id would be the first choice for
human passwords; here every secret is 32 random bytes made by the gateway, so the KDF only has to
make a leaked ``clients.json`` useless, and n=2**14, r=8 (16 MiB, ~40 ms) does that while keeping a
token request cheap. The parameters are stored with each hash, so they can be raised later.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
_MAXMEM = 64 * 1024 * 1024


def new_secret() -> str:
    """A fresh client secret: 32 random bytes, URL-safe text.

    Never one that starts with ``-``: one secret in 64 would, and a command line then reads
    ``--client-secret -Xy...`` as an unknown option (the conformance kit's CLI failed so).
    """
    while True:
        secret = secrets.token_urlsafe(32)
        if not secret.startswith("-"):
            return secret


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64 without padding)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_MAXMEM, dklen=32)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)])


def verify_secret(secret: str, stored: str) -> bool:
    """Constant-time comparison against a stored hash; a malformed record never matches."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(secret.encode("utf-8"), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                                maxmem=_MAXMEM, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
