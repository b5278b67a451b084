"""OAuth2 client credentials, the SMART Backend Services way, and the gateway's bearer tokens.

A client asks ``POST /auth/token`` with ``grant_type=client_credentials`` and proves who it is
with either

* a signed JWT client assertion (``client_assertion_type=urn:ietf:params:oauth:client-assertion-
  type:jwt-bearer``): RS384 or ES384, signed by a key in the client's registered JWKS, with
  ``iss`` = ``sub`` = its client id, ``aud`` = the token URL, ``exp`` at most five minutes ahead and
  a ``jti`` never used before (kept until the assertion expires, in the database, so every gateway
  process sees it); or
* ``client_secret_basic``: HTTP Basic with its client id and secret (the simpler option).

It gets a short-lived JWT (ES384, signed by the gateway's current key, ``kid`` in the header)
carrying its client id, organization, role and granted scopes. Every request re-checks the client
in the registry, so revoking a client stops its tokens at once. PyJWT and cryptography do all the
signing and checking; nothing here is hand-rolled crypto.
"""
from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from urllib.parse import unquote_plus

import jwt
from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from gateway.security.clients import Client, ClientRegistry
from gateway.security.keys import ALGORITHM, SigningKeys
from gateway.security.principal import Principal
from gateway.security.scopes import ScopeError, grant, parse_scopes
from gateway.security.tables import used_assertions

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300
LEEWAY = 30
VERIFIED_CACHE = 10_000


class AuthError(Exception):
    """An authentication failure: OAuth2 ``error`` code, a sentence saying why, the HTTP status."""

    def __init__(self, error: str, description: str, status: int = 401):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    expires_in: int
    scope: str
    client: Client

    def response(self) -> dict:
        return {"access_token": self.access_token, "token_type": "bearer", "expires_in": self.expires_in,
                "scope": self.scope}


class TokenService:
    def __init__(self, clients: ClientRegistry, keys: SigningKeys, engine: Engine, issuer: str, lifetime: int,
                 refused_clients: frozenset[str] = frozenset()):
        self.clients = clients
        self.refused_clients = refused_clients     # never honoured here, whatever the registry says (production: the demo client)
        self.keys = keys
        self.engine = engine
        self.issuer = issuer
        self.lifetime = int(lifetime)
        self._verified: dict[str, dict] = {}     # token -> claims, until it expires (the client is re-checked)

    # ------------------------------------------------------------------ the token endpoint

    def token_request(self, form: dict[str, str], authorization: str | None, token_urls: list[str]) -> TokenGrant:
        """Authenticate the client of a token request and issue its token; raises AuthError."""
        if form.get("grant_type") != "client_credentials":
            raise AuthError("unsupported_grant_type", "grant_type must be client_credentials", 400)
        if form.get("client_assertion") or form.get("client_assertion_type"):
            if authorization:
                raise AuthError("invalid_request", "use one client authentication method, not two", 400)
            client = self._client_from_assertion(form, token_urls)
        elif authorization and authorization[:6].lower() == "basic ":
            client = self._client_from_basic(authorization[6:])
        else:
            raise AuthError("invalid_client", "no client authentication: send a signed client_assertion "
                                              "(private_key_jwt) or HTTP Basic client_id:client_secret")
        if client.client_id in self.refused_clients:
            raise AuthError("invalid_client", f"client {client.client_id} is not honoured by this gateway")
        try:
            permissions = grant(client.role, form.get("scope"))
        except ScopeError as exc:
            raise AuthError("invalid_scope", str(exc), 400) from exc
        token = self.issue(client, permissions.scope_text())
        return TokenGrant(token, self.lifetime, permissions.scope_text(), client)

    def issue(self, client: Client, scope: str) -> str:
        now = int(time.time())
        key = self.keys.current()
        claims = {"iss": self.issuer, "aud": self.issuer, "sub": client.client_id, "client_id": client.client_id,
                  "organization": client.organization, "role": client.role, "scope": scope,
                  "iat": now, "nbf": now, "exp": now + self.lifetime, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "at+jwt"})

    def _client_from_basic(self, encoded: str) -> Client:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
            client_id, secret = decoded.split(":", 1)
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise AuthError("invalid_client", "the Basic credentials are not base64 of client_id:client_secret") from exc
        client = self.clients.authenticate_secret(unquote_plus(client_id), unquote_plus(secret))
        if client is None:
            raise AuthError("invalid_client", "unknown client, wrong secret, or the client is revoked")
        return client

    def _client_from_assertion(self, form: dict[str, str], token_urls: list[str]) -> Client:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise AuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}", 400)
        assertion = form.get("client_assertion") or ""
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError("invalid_client", f"the client assertion is not a JWT: {exc}") from exc
        if header.get("alg") not in ASSERTION_ALGORITHMS:
            raise AuthError("invalid_client", f"client assertions must be signed with RS384 or ES384, "
                                              f"not {header.get('alg')}")
        client = self.clients.fresh(str(unverified.get("iss", "")))
        if client is None or not client.active or not client.jwks:
            raise AuthError("invalid_client", "the assertion's iss is not an active client with a registered JWKS")
        key = _key_for(client, header)
        try:
            claims = jwt.decode(assertion, key, algorithms=[header["alg"]], audience=token_urls, leeway=LEEWAY,
                                options={"require": ["iss", "sub", "aud", "exp", "jti"]})
        except jwt.PyJWTError as exc:
            raise AuthError("invalid_client", f"the client assertion was refused: {exc}") from exc
        if claims["sub"] != client.client_id:
            raise AuthError("invalid_client", "the assertion's sub must equal its iss (the client id)")
        if claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME + LEEWAY:
            raise AuthError("invalid_client", "the assertion's exp is more than five minutes ahead")
        self._spend_jti(client.client_id, str(claims["jti"]), int(claims["exp"]))
        return client

    def _spend_jti(self, client_id: str, jti: str, expires_at: int) -> None:
        """Each assertion is good once: its jti is recorded until it expires; a second use is refused."""
        if not jti or len(jti) > 255:
            raise AuthError("invalid_client", "the assertion's jti must be 1-255 characters")
        now = int(time.time())
        with self.engine.connect().execution_options(write=True) as conn, conn.begin():
            conn.execute(delete(used_assertions).where(used_assertions.c.expires_at < now - LEEWAY))
            try:
                conn.execute(insert(used_assertions).values(client_id=client_id, jti=jti, expires_at=expires_at))
            except IntegrityError:
                raise AuthError("invalid_client", "this client assertion (jti) has been used before") from None

    # ------------------------------------------------------------------ bearer tokens

    def principal(self, token: str) -> Principal:
        """The caller behind a bearer token; raises AuthError (401 ``invalid_token``)."""
        claims = self._verified.get(token)
        if claims is None or claims["exp"] <= time.time():
            claims = self._verify(token)
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()
            self._verified[token] = claims
        client = self.clients.get(claims["sub"])
        if client is None or not client.active or client.client_id in self.refused_clients:
            raise AuthError("invalid_token", "the token's client is revoked or no longer registered")
        if client.organization != claims.get("organization") or client.role != claims.get("role"):
            raise AuthError("invalid_token", "the client's registration changed since this token was issued")
        return Principal(client.client_id, client.organization, client.role, parse_scopes(claims["scope"]),
                         claims["jti"])

    def _verify(self, token: str) -> dict:
        """Signature, issuer, audience and expiry checked by PyJWT; the claims, or AuthError."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise AuthError("invalid_token", "the bearer token is not a JWT") from exc
        key = self.keys.by_kid(str(kid)) if kid else None
        if key is None:
            raise AuthError("invalid_token", "the bearer token was not signed by a key of this gateway")
        try:
            claims = jwt.decode(token, key.private_key.public_key(), algorithms=[ALGORITHM], audience=self.issuer,
                                issuer=self.issuer, options={"require": ["exp", "iat", "sub", "jti", "scope"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("invalid_token", "the access token has expired; ask /auth/token for a new one") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("invalid_token", f"the bearer token is not valid: {exc}") from exc
        return claims


def _key_for(client: Client, header: dict):
    keys = client.jwks.get("keys", []) if client.jwks else []
    kid = header.get("kid")
    candidates = [k for k in keys if kid is None or k.get("kid") == kid]
    if len(candidates) != 1:
        raise AuthError("invalid_client", f"no single key with kid '{kid}' in the client's registered JWKS")
    try:
        return jwt.PyJWK(candidates[0], header["alg"]).key
    except jwt.PyJWTError as exc:
        raise AuthError("invalid_client", f"the registered key '{kid}' cannot check {header['alg']}: {exc}") from exc
