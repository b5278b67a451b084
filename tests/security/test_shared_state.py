"""Clients, signing keys and the gateway's secrets live in the database (issue 13 build 4): two
gateways with nothing in common but their database (two machines) honour each other's clients,
tokens, revocations and cursors, and a data directory from an earlier release is imported. A
process looks at another's edits at most REFRESH_SECONDS late, except when issuing a token (at
once) and when a token names a key it does not know yet (at once)."""
from __future__ import annotations

import base64
import time

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import create_app
from gateway.security.table_cache import REFRESH_SECONDS
from gateway.security.secret_hash import hash_secret
from gateway.store.search import CursorCodec

FORM = {"grant_type": "client_credentials"}


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request, tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return request.getfixturevalue("postgres_server").new_database(with_schema=True)


def _machine(tmp_path, name: str, url: str):
    return create_app({"DATA_DIR": str(tmp_path / name), "DATABASE_URL": url, "TESTING": True})


def _basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def _token(app, client_id: str, secret: str):
    return app.test_client().post("/auth/token", data=FORM, headers=_basic(client_id, secret))


def test_two_machines_on_one_database_share_clients_tokens_and_revocations(tmp_path, shared_url):
    a, b = _machine(tmp_path, "a", shared_url), _machine(tmp_path, "b", shared_url)
    _client, secret = a.extensions["security"].clients.add("his-1", "BOAO_SUPER_HOSPITAL", "hospital")
    issued = _token(b, "his-1", secret)                 # registered at A, signs in at B
    assert issued.status_code == 200
    bearer = {"Authorization": f"Bearer {issued.get_json()['access_token']}"}
    assert a.test_client().get("/fhir/Patient", headers=bearer).status_code == 200     # B's token at A
    assert a.extensions["security"].keys.jwks() == b.extensions["security"].keys.jwks()
    b.extensions["security"].clients.revoke("his-1")                                     # revoked at B
    assert _token(a, "his-1", secret).status_code == 401           # A issues it nothing more, at once
    refused_after = _seconds_until(lambda: a.test_client().get("/fhir/Patient", headers=bearer).status_code == 401)
    assert refused_after <= REFRESH_SECONDS + 0.5                  # its token is refused at A within the window
    rotated = a.extensions["security"].keys.rotate()
    assert _seconds_until(lambda: b.extensions["security"].keys.current().kid == rotated.kid) <= REFRESH_SECONDS + 0.5
    _client, other_secret = a.extensions["security"].clients.add("his-3", "BOAO_SUPER_HOSPITAL", "hospital")
    fresh = _token(a, "his-3", other_secret).get_json()["access_token"]       # signed with A's new key
    assert b.test_client().get("/fhir/Patient", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


def _seconds_until(condition, limit: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, "never happened"
        time.sleep(0.05)
    return time.monotonic() - started


def test_the_same_client_added_at_two_machines_is_one_client(tmp_path, shared_url):
    a, b = _machine(tmp_path, "a", shared_url), _machine(tmp_path, "b", shared_url)
    a.extensions["security"].clients.add("his-2", "BOAO_SUPER_HOSPITAL", "hospital")
    from gateway.security.clients import ClientError
    with pytest.raises(ClientError, match="exists"):
        b.extensions["security"].clients.add("his-2", "HAIKOU_PHARMACY_017", "pharmacy")
    assert a.extensions["security"].clients.get("his-2").organization == "BOAO_SUPER_HOSPITAL"


def test_a_data_directory_from_an_earlier_release_is_imported_once(tmp_path, shared_url):
    """clients.json, signing-keys.json and search-cursor.key as an earlier release wrote them: the
    client's secret still works, the old key still verifies, old cursors stay valid."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "clients.json").write_bytes(orjson.dumps({"clients": {"his-old": {
        "client_id": "his-old", "organization": "BOAO_SUPER_HOSPITAL", "role": "hospital",
        "secret_hash": hash_secret("old-secret-value"), "jwks": None, "mllp_addresses": ["10.0.0.0/8"],
        "tls_subjects": [], "status": "active", "created": "2026-01-01T00:00:00+00:00", "description": ""}}}))
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    (old / "signing-keys.json").write_bytes(orjson.dumps({"keys": [
        {"kid": "oldkid0000000001", "created": "2026-01-01T00:00:00+00:00", "private_pem": pem}]}))
    (old / "search-cursor.key").write_bytes(b"0f" * 32)
    app = create_app({"DATA_DIR": str(old), "DATABASE_URL": shared_url, "TESTING": True})
    security = app.extensions["security"]
    assert _token(app, "his-old", "old-secret-value").status_code == 200
    assert security.clients.get("his-old").mllp_addresses == ["10.0.0.0/8"]
    assert security.keys.current().kid == "oldkid0000000001"
    old_cursor = CursorCodec(b"0f" * 32).encode("fingerprint", False, ["1980"], "p1")   # issued before the upgrade
    assert app.extensions["gateway"].store.cursors.decode(old_cursor, "fingerprint", 1) == (False, ["1980"], "p1")
    # a second start, and a machine without the files, find the same; nothing is imported twice
    (old / "clients.json").write_bytes(orjson.dumps({"clients": {}}))
    again = _machine(tmp_path, "new-machine", shared_url)
    assert again.extensions["security"].clients.get("his-old") is not None
    assert [k["kid"] for k in again.extensions["security"].keys.jwks()["keys"]] == ["oldkid0000000001"]
    assert again.extensions["gateway"].store.cursors.decode(old_cursor, "fingerprint", 1)[2] == "p1"


def test_processes_making_the_first_key_and_rotating_at_once_keep_a_consistent_key_set(tmp_path, shared_url):
    """Four registries (four processes) on one empty table: the first key is made once, or made twice
    and both kept, never an error; rotations at once each add a key and the newest three stay."""
    import threading
    from gateway.security.keys import KEPT_KEYS, SigningKeys
    from gateway.store.schema import make_engine
    engines = [make_engine(shared_url) for _ in range(4)]
    registries = [SigningKeys(engine) for engine in engines]
    barrier = threading.Barrier(len(registries))
    errors: list[BaseException] = []

    def first_then_rotate(keys: SigningKeys) -> None:
        try:
            barrier.wait()
            keys.current()
            barrier.wait()
            keys.rotate()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_then_rotate, args=(keys,)) for keys in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    fresh = SigningKeys(engines[0])
    kids = [key["kid"] for key in fresh.jwks()["keys"]]
    assert len(kids) == KEPT_KEYS == len(set(kids))
    assert all(keys._load(fresh=True)[-1].kid == kids[0] for keys in registries)   # one newest key for all
    for engine in engines:
        engine.dispose()
