"""Test credentials: register clients in a gateway's registry and get real tokens from /auth/token.

Fixture clients authenticate with a signed client assertion (SMART Backend Services, ES384) made
with one key per test session, so no test pays for scrypt; the secret path has its own tests.
"""
from __future__ import annotations

import time
import uuid
from functools import lru_cache

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KID = "test-key-1"

ORGANIZATIONS = {
    "hospital": "BOAO_SUPER_HOSPITAL",
    "pharmacy": "HAIKOU_PHARMACY_017",
    "prescription-center": "HAINAN_EPC",
    "regulator": "HNMPA",
    "admin": "LECHENG_GW",
}


@lru_cache(maxsize=1)
def session_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def public_jwks(key: ec.EllipticCurvePrivateKey | None = None, kid: str = KID) -> dict:
    jwk = ECAlgorithm.to_jwk((key or session_key()).public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": kid, "alg": "ES384", "use": "sig"}]}


def register(app, client_id: str, role: str, organization: str | None = None, **kwargs):
    """Add a JWKS client (no secret) to the app's registry; returns the Client."""
    security = app.extensions["security"]
    client, _secret = security.clients.add(client_id, organization or ORGANIZATIONS[role], role,
                                           secret=False, jwks=kwargs.pop("jwks", None) or public_jwks(),
                                           replace=True, **kwargs)
    return client


def assertion(client_id: str, audience: str, key=None, kid: str = KID, lifetime: int = 240,
              jti: str | None = None, algorithm: str = "ES384") -> str:
    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience, "exp": now + lifetime,
              "jti": jti or uuid.uuid4().hex, "iat": now}
    return jwt.encode(claims, key or session_key(), algorithm=algorithm, headers={"kid": kid})


def token_form(client_id: str, audience: str = "http://localhost/auth/token", scope: str | None = None,
               **kwargs) -> dict:
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(client_id, audience, **kwargs)}
    if scope:
        form["scope"] = scope
    return form


def token_for(test_client, client_id: str, scope: str | None = None) -> str:
    """A real access token from the app's /auth/token (Flask test client)."""
    response = test_client.post("/auth/token", data=token_form(client_id, scope=scope))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


def authenticated(app, role: str, organization: str | None = None, client_id: str | None = None,
                  scope: str | None = None):
    """A Flask test client whose every request carries a bearer token for a new client of ``role``."""
    client_id = client_id or f"test-{role}-{(organization or ORGANIZATIONS[role]).lower()}"
    register(app, client_id, role, organization)
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token_for(test_client, client_id, scope)}"
    return test_client


def http_token(base_url: str, client_id: str, scope: str | None = None) -> str:
    """A token from a live server's /auth/token (requests over loopback)."""
    import requests
    form = token_form(client_id, audience=f"{base_url}/auth/token", scope=scope)
    response = requests.post(f"{base_url}/auth/token", data=form, timeout=10)
    response.raise_for_status()
    return response.json()["access_token"]
