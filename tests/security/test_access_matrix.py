"""Every endpoint x every kind of caller, with the exact status: no credentials, an expired token, a
forged token, a hospital of another organization, and each role. Organization rules included."""
from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import create_app
from gateway.security.keys import ALGORITHM
from gateway.store.access import sending_as
from tests.conftest import post_hl7, sample
from tests.security.credentials import authenticated, register

CALLERS = ["none", "expired", "forged", "other_hospital", "hospital", "pharmacy", "prescription-center",
           "regulator", "admin"]
OPEN = {c: 200 for c in CALLERS}


def _row(anonymous: int, other_hospital: int, hospital: int, pharmacy: int, center: int, regulator: int,
         admin: int) -> dict:
    return {"none": anonymous, "expired": anonymous, "forged": anonymous, "other_hospital": other_hospital,
            "hospital": hospital, "pharmacy": pharmacy, "prescription-center": center, "regulator": regulator,
            "admin": admin}


def _organization(app) -> str:
    """A fresh Organization sent by BOAO_SUPER_HOSPITAL (for update and delete rows)."""
    store = app.extensions["gateway"].store
    with sending_as("BOAO_SUPER_HOSPITAL"), store.write() as tx:
        return tx.create({"resourceType": "Organization", "name": "Ward"})["id"]


TRANSACTION = {"resourceType": "Bundle", "type": "transaction", "entry": []}
#           (name, method, path, json body or None, headers, expected statuses)
MATRIX = [
    ("health", "GET", "/healthz", None, {}, OPEN),
    ("metadata", "GET", "/fhir/metadata", None, {}, OPEN),
    ("smart-configuration", "GET", "/.well-known/smart-configuration", None, {}, OPEN),
    ("jwks", "GET", "/.well-known/jwks.json", None, {}, OPEN),
    ("read", "GET", "/fhir/MedicationRequest/{order}", None, {}, _row(401, 404, 200, 404, 200, 200, 200)),
    ("vread", "GET", "/fhir/MedicationRequest/{order}/_history/1", None, {}, _row(401, 404, 200, 404, 200, 200, 200)),
    ("history", "GET", "/fhir/MedicationRequest/{order}/_history", None, {}, _row(401, 404, 200, 404, 200, 200, 200)),
    ("history-type", "GET", "/fhir/MedicationRequest/_history", None, {}, _row(401, 200, 200, 200, 200, 200, 200)),
    ("history-system", "GET", "/fhir/_history", None, {}, _row(401, 200, 200, 200, 200, 200, 200)),
    ("search", "GET", "/fhir/MedicationRequest", None, {}, _row(401, 200, 200, 200, 200, 200, 200)),
    ("search-out-of-scope", "GET", "/fhir/Device", None, {}, _row(401, 200, 200, 403, 200, 200, 200)),
    ("search-post", "POST", "/fhir/MedicationRequest/_search", None, {}, _row(401, 200, 200, 200, 200, 200, 200)),
    ("validate", "POST", "/fhir/Patient/$validate", {"resourceType": "Patient"}, {},
     _row(401, 200, 200, 200, 200, 200, 200)),
    ("create", "POST", "/fhir/Organization", {"resourceType": "Organization", "name": "New"}, {},
     _row(401, 201, 201, 403, 403, 403, 201)),
    ("update", "PUT", "/fhir/Organization/{organization}", {"resourceType": "Organization", "id": "{organization}", "name": "Renamed"}, {},
     _row(401, 403, 200, 403, 403, 403, 200)),
    ("delete", "DELETE", "/fhir/Organization/{organization}", None, {}, _row(401, 403, 204, 403, 403, 403, 204)),
    ("transaction", "POST", "/fhir", TRANSACTION, {}, _row(401, 200, 200, 200, 200, 403, 200)),
    ("hl7v2", "POST", "/hl7v2", "hl7", {}, _row(401, 200, 200, 200, 403, 403, 200)),
    ("audit-search", "GET", "/fhir/AuditEvent", None, {}, _row(401, 403, 403, 403, 403, 200, 200)),
    ("audit-read", "GET", "/fhir/AuditEvent/{audit}", None, {}, _row(401, 403, 403, 403, 403, 200, 200)),
    ("audit-write", "POST", "/fhir/AuditEvent", {"resourceType": "AuditEvent"}, {},
     _row(401, 403, 403, 403, 403, 403, 403)),
    ("export", "GET", "/fhir/$export", None, {"Prefer": "respond-async"}, _row(401, 403, 403, 403, 403, 202, 202)),
    ("admin-deliveries", "GET", "/admin/deliveries", None, {}, _row(401, 403, 403, 403, 403, 403, 200)),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("matrix")), "TESTING": True,
                      "RATE_LIMIT": "100000 per minute"})
    clients = {role: authenticated(app, role) for role in
               ("hospital", "pharmacy", "prescription-center", "regulator", "admin")}
    clients["other_hospital"] = authenticated(app, "hospital", "BOAO_RUIJIN_HOSPITAL")
    clients["none"] = app.test_client()
    security = app.extensions["security"]
    register(app, "matrix-expired", "admin")
    now = int(time.time())
    claims = {"iss": security.tokens.issuer, "aud": security.tokens.issuer, "sub": "matrix-expired",
              "organization": "LECHENG_GW", "role": "admin", "scope": "system/*.cruds", "iat": now - 900,
              "exp": now - 600, "jti": "expired"}
    key = security.keys.current()
    for name, signer, exp in (("expired", key.private_key, now - 600),
                              ("forged", ec.generate_private_key(ec.SECP384R1()), now + 600)):
        token = jwt.encode({**claims, "exp": exp}, signer, algorithm=ALGORITHM, headers={"kid": key.kid})
        clients[name] = app.test_client()
        clients[name].environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    post_hl7(clients["hospital"], sample("rde_o11_new_imported.hl7"))
    order = clients["admin"].get("/fhir/MedicationRequest").get_json()["entry"][0]["resource"]["id"]
    audit = clients["admin"].get("/fhir/AuditEvent?_count=1").get_json()["entry"][0]["resource"]["id"]
    return app, clients, {"order": order, "audit": audit}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("name, method, path, body, headers, expected", MATRIX, ids=[row[0] for row in MATRIX])
def test_endpoint_by_caller(world, name, method, path, body, headers, expected, caller):
    app, clients, ids = world
    values = dict(ids, organization=_organization(app) if "{organization}" in path else "")
    kwargs: dict = {"headers": headers}
    if body == "hl7":
        kwargs.update(data=sample("rde_o11_new_imported.hl7"), content_type="x-application/hl7-v2+er7")
    elif body is not None:
        body = {k: v.format(**values) if isinstance(v, str) else v for k, v in body.items()}
        kwargs.update(json=body, content_type="application/fhir+json")
    response = clients[caller].open(path.format(**values), method=method, **kwargs)
    assert response.status_code == expected[caller], response.get_data(as_text=True)[:300]
    if response.status_code in (401, 403, 404, 500) and path.startswith("/fhir"):
        assert response.get_json()["resourceType"] == "OperationOutcome"


def test_every_registered_endpoint_is_in_the_policy_or_refused(world):
    """An endpoint nobody declared is refused for everyone, admins included (deny by default)."""
    from flask import Blueprint
    from gateway.security.policy import BLUEPRINTS, ENDPOINTS
    app, clients, _ = world
    declared = {endpoint for endpoint, _method in ENDPOINTS}
    undeclared = {rule.endpoint for rule in app.url_map.iter_rules()
                  if rule.endpoint not in declared and rule.endpoint.split(".")[0] not in BLUEPRINTS}
    assert undeclared <= {"static"}
    fresh = create_app({"DATA_DIR": app.config["DATA_DIR"] + "-fresh", "TESTING": True})
    extra = Blueprint("extra", __name__)
    extra.add_url_rule("/extra", "extra", lambda: "should not be reachable")
    fresh.register_blueprint(extra)
    response = authenticated(fresh, "admin").get("/extra")
    assert response.status_code == 403
    assert response.get_json()["issue"][0]["diagnostics"] == "this endpoint is not in the gateway's access policy"
