"""The token endpoint (SMART Backend Services client credentials) and the bearer tokens it issues."""
from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import select

from gateway.security.keys import ALGORITHM
from gateway.security.tables import clients as clients_table
from tests.security.credentials import ASSERTION_TYPE, assertion, public_jwks, register, session_key, token_form

TOKEN_URL = "http://localhost/auth/token"


def basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


@pytest.fixture
def security(app):
    return app.extensions["security"]


@pytest.fixture
def secret_client(security):
    _client, secret = security.clients.add("boao-his", "BOAO_SUPER_HOSPITAL", "hospital")
    return "boao-his", secret


def test_client_secret_basic_gets_a_short_lived_es384_token_with_the_role_scopes(anonymous_client, secret_client,
                                                                                  security):
    response = anonymous_client.post("/auth/token", data={"grant_type": "client_credentials"},
                                     headers=basic(*secret_client))
    assert response.status_code == 200
    body = response.get_json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300 and body["scope"] == "system/*.cruds"
    assert response.headers["Cache-Control"] == "no-store"
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "ES384" and header["kid"] == security.keys.current().kid
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert (claims["sub"], claims["organization"], claims["role"]) == ("boao-his", "BOAO_SUPER_HOSPITAL", "hospital")
    assert claims["exp"] - claims["iat"] == 300


def test_wrong_secret_unknown_client_and_no_credentials_are_invalid_client_401(anonymous_client, secret_client):
    for headers in (basic("boao-his", "wrong"), basic("nobody", secret_client[1]), {}):
        response = anonymous_client.post("/auth/token", data={"grant_type": "client_credentials"}, headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"] == "invalid_client"


def test_secret_is_stored_only_as_a_scrypt_hash(security, secret_client):
    with security.clients.engine.connect() as conn:
        held = repr(conn.execute(select(clients_table)).all())      # what a copy of the database gives away
    assert secret_client[1] not in held
    assert "'scrypt$16384$8$1$" in held


def test_other_grant_types_are_refused(anonymous_client, secret_client):
    response = anonymous_client.post("/auth/token", data={"grant_type": "password"}, headers=basic(*secret_client))
    assert response.status_code == 400
    assert response.get_json()["error"] == "unsupported_grant_type"


def test_requested_scopes_are_cut_to_the_role(anonymous_client, app):
    register(app, "pharmacy-1", "pharmacy")
    response = anonymous_client.post("/auth/token", data=token_form("pharmacy-1", scope="system/*.rs"))
    assert response.status_code == 200
    granted = set(response.get_json()["scope"].split())
    assert "system/MedicationRequest.rs" in granted and "system/MedicationDispense.rs" in granted
    assert not any(s.startswith("system/*") for s in granted)
    response = anonymous_client.post("/auth/token", data=token_form("pharmacy-1", scope="system/Device.c"))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_scope"
    response = anonymous_client.post("/auth/token", data=token_form("pharmacy-1", scope="patient/*.read"))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_scope"


def test_v1_scope_names_are_understood(anonymous_client, app):
    register(app, "regulator-1", "regulator")
    response = anonymous_client.post("/auth/token", data=token_form("regulator-1", scope="system/*.read"))
    assert response.get_json()["scope"] == "system/*.rs"


def test_rs384_assertion_with_a_registered_rsa_key_is_accepted(anonymous_client, app):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    register(app, "rsa-client", "hospital", jwks={"keys": [{**jwk, "kid": "rsa-1", "alg": "RS384"}]})
    form = token_form("rsa-client", key=key, kid="rsa-1", algorithm="RS384")
    assert anonymous_client.post("/auth/token", data=form).status_code == 200


@pytest.mark.parametrize("change, reason", [
    ({"audience": "http://elsewhere/auth/token"}, "Audience"),
    ({"lifetime": -120}, "expired"),
    ({"lifetime": 3600}, "five minutes"),
    ({"kid": "unknown-kid"}, "unknown-kid"),
    ({"key": ec.generate_private_key(ec.SECP384R1())}, "Signature verification failed"),
])
def test_bad_client_assertions_are_refused_with_the_reason(anonymous_client, app, change, reason):
    register(app, "jwt-client", "hospital")
    form = token_form("jwt-client", **{"audience": TOKEN_URL, **change})
    response = anonymous_client.post("/auth/token", data=form)
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"
    assert reason in response.get_json()["error_description"]


def test_hs256_and_es256_assertions_are_refused(anonymous_client, app):
    register(app, "jwt-client", "hospital")
    hs = jwt.encode({"iss": "jwt-client", "sub": "jwt-client", "aud": TOKEN_URL, "exp": int(time.time()) + 60,
                     "jti": "x"}, "a-shared-secret-of-at-least-32-bytes!", algorithm="HS256")
    for bad in (hs, assertion("jwt-client", TOKEN_URL, key=ec.generate_private_key(ec.SECP256R1()),
                              algorithm="ES256")):
        response = anonymous_client.post("/auth/token", data={"grant_type": "client_credentials",
                                                              "client_assertion_type": ASSERTION_TYPE,
                                                              "client_assertion": bad})
        assert response.status_code == 401
        assert "RS384 or ES384" in response.get_json()["error_description"]


def test_a_client_assertion_is_good_once(anonymous_client, app):
    register(app, "jwt-client", "hospital")
    form = token_form("jwt-client", jti="only-once")
    assert anonymous_client.post("/auth/token", data=form).status_code == 200
    replay = anonymous_client.post("/auth/token", data=form)
    assert replay.status_code == 401
    assert "used before" in replay.get_json()["error_description"]


def _claims(security, **override) -> dict:
    now = int(time.time())
    return {"iss": security.tokens.issuer, "aud": security.tokens.issuer, "sub": "admin-1", "client_id": "admin-1",
            "organization": "LECHENG_GW", "role": "admin", "scope": "system/*.cruds", "iat": now - 600,
            "nbf": now - 600, "exp": now - 300, "jti": "j1", **override}


def test_expired_forged_and_tampered_tokens_are_401(anonymous_client, app, security):
    register(app, "admin-1", "admin")
    key = security.keys.current()
    expired = jwt.encode(_claims(security), key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
    forged = jwt.encode(_claims(security, exp=int(time.time()) + 300), ec.generate_private_key(ec.SECP384R1()),
                        algorithm=ALGORITHM, headers={"kid": key.kid})
    good = security.tokens.issue(security.clients.get("admin-1"), "system/*.rs")
    head, payload, signature = good.split(".")
    raised = base64.urlsafe_b64encode(json.dumps(
        {**jwt.decode(good, options={"verify_signature": False}), "scope": "system/*.cruds"}).encode()).rstrip(b"=")
    tampered = ".".join([head, raised.decode(), signature])
    cases = {expired: "expired", forged: "not valid", tampered: "not valid", "not-a-jwt": "not a JWT"}
    for token, reason in cases.items():
        response = anonymous_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, reason
        assert reason in response.get_json()["issue"][0]["diagnostics"]
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert anonymous_client.get("/fhir/Patient", headers={"Authorization": f"Bearer {good}"}).status_code == 200


def test_revoking_a_client_stops_its_tokens_at_once(client_as, app):
    hospital = client_as("hospital")
    assert hospital.get("/fhir/Patient").status_code == 200
    app.extensions["security"].clients.revoke("test-hospital-boao_super_hospital")
    response = hospital.get("/fhir/Patient")
    assert response.status_code == 401
    assert "revoked" in response.get_json()["issue"][0]["diagnostics"]


def test_rotating_the_signing_key_keeps_earlier_tokens_valid_and_publishes_both(client, anonymous_client,
                                                                                 app, security):
    first = security.keys.current().kid
    second = security.keys.rotate().kid
    assert client.get("/fhir/Patient").status_code == 200          # token signed with the first key
    kids = [k["kid"] for k in anonymous_client.get("/.well-known/jwks.json").get_json()["keys"]]
    assert kids == [second, first]
    register(app, "after-rotation", "regulator")
    response = anonymous_client.post("/auth/token", data=token_form("after-rotation"))
    assert jwt.get_unverified_header(response.get_json()["access_token"])["kid"] == second


def test_jwks_verifies_issued_tokens(anonymous_client, client, security):
    jwks = anonymous_client.get("/.well-known/jwks.json").get_json()
    token = client.environ_base["HTTP_AUTHORIZATION"].split()[1]
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == jwt.get_unverified_header(token)["kid"]))
    claims = jwt.decode(token, key.key, algorithms=["ES384"], audience=security.tokens.issuer)
    assert claims["role"] == "admin"
    assert "d" not in jwks["keys"][0]


def test_smart_configuration_is_published_at_the_root_and_under_fhir(anonymous_client):
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        body = anonymous_client.get(path).get_json()
        assert body["token_endpoint"] == "http://localhost/auth/token"
        assert body["jwks_uri"] == "http://localhost/.well-known/jwks.json"
        assert body["token_endpoint_auth_methods_supported"] == ["private_key_jwt", "client_secret_basic"]
        assert body["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
        assert "client-confidential-asymmetric" in body["capabilities"]
        assert "permission-v2" in body["capabilities"]


def test_session_key_matches_public_jwks():
    assert public_jwks()["keys"][0]["x"] == public_jwks(session_key())["keys"][0]["x"]
