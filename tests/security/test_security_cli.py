"""fhir-gateway clients / keys, the demo client serve prints, and the conformance kit getting a token."""
from __future__ import annotations

import base64
import io
import re

from sqlalchemy import create_engine, text

from conftest import served
from gateway import create_app
from gateway.cli import main
from gateway.config import load_config
from gateway.conformance_cli import main as conformance_main
from gateway.security.cli import announce_demo_client


def _basic(client_id: str, secret: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def _table_text(data_dir, table: str) -> str:
    """Everything a table holds, as text: what a copy of the database would give away."""
    engine = create_engine(load_config({"DATA_DIR": str(data_dir)})["DATABASE_URL"])
    with engine.connect() as conn:
        held = repr(conn.execute(text(f"SELECT * FROM {table}")).all())
    engine.dispose()
    return held


def test_clients_add_list_rotate_revoke(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path)]
    assert main([*data, "clients", "add", "boao-his", "--organization", "BOAO_SUPER_HOSPITAL", "--role",
                 "hospital", "--mllp-address", "10.1.2.0/24"]) == 0
    secret = re.search(r"client_secret: (\S+)", capsys.readouterr().out).group(1)
    assert secret not in _table_text(tmp_path, "clients") and "scrypt" in _table_text(tmp_path, "clients")
    assert main([*data, "clients", "add", "x", "--organization", "BAD CODE", "--role", "hospital"]) == 2
    assert "facility code" in capsys.readouterr().err
    assert main([*data, "clients", "list"]) == 0
    listed = capsys.readouterr().out
    assert "boao-his" in listed and "BOAO_SUPER_HOSPITAL" in listed and "mllp=10.1.2.0/24" in listed
    assert secret not in listed and "scrypt" not in listed
    app = create_app({"DATA_DIR": str(tmp_path)})
    anonymous = app.test_client()
    form = {"grant_type": "client_credentials"}
    assert anonymous.post("/auth/token", data=form, headers=_basic("boao-his", secret)).status_code == 200
    assert main([*data, "clients", "rotate", "boao-his"]) == 0
    new_secret = re.search(r"new client_secret for boao-his: (\S+)", capsys.readouterr().out).group(1)
    assert anonymous.post("/auth/token", data=form, headers=_basic("boao-his", secret)).status_code == 401
    assert anonymous.post("/auth/token", data=form, headers=_basic("boao-his", new_secret)).status_code == 200
    assert main([*data, "clients", "revoke", "boao-his"]) == 0
    assert anonymous.post("/auth/token", data=form, headers=_basic("boao-his", new_secret)).status_code == 401
    assert main([*data, "keys", "rotate"]) == 0
    assert len(create_app({"DATA_DIR": str(tmp_path)}).extensions["security"].keys.jwks()["keys"]) == 2  # first + rotated


def test_the_demo_client_is_printed_outside_production_only(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "dev")})
    out = io.StringIO()
    secret = announce_demo_client(app, out)
    assert f"client_id=demo-admin client_secret={secret}" in out.getvalue()
    assert f"curl -s -u demo-admin:{secret} -d grant_type=client_credentials http://127.0.0.1:8080/auth/token" \
        in out.getvalue()
    response = app.test_client().post("/auth/token", data={"grant_type": "client_credentials"},
                                      headers=_basic("demo-admin", secret))
    assert response.status_code == 200
    production = create_app({"DATA_DIR": str(tmp_path / "prod"), "ENVIRONMENT": "production"})
    out = io.StringIO()
    assert announce_demo_client(production, out) is None and out.getvalue() == ""
    demo = production.extensions["security"].clients.get("demo-admin")
    assert demo is None or not demo.active          # the dev gateway's one, if they share a database: revoked
    refused = production.test_client().post("/auth/token", data={"grant_type": "client_credentials"},
                                            headers=_basic("demo-admin", secret))
    assert refused.status_code == 401


def test_production_revokes_a_demo_client_a_development_gateway_left_in_its_database(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    development = create_app({"DATA_DIR": str(tmp_path / "dev"), "DATABASE_URL": url})
    secret = announce_demo_client(development, io.StringIO())
    production = create_app({"DATA_DIR": str(tmp_path / "prod"), "DATABASE_URL": url, "ENVIRONMENT": "production"})
    assert production.extensions["security"].clients.get("demo-admin").status == "revoked"
    for app in (production, development):          # the revocation holds for both
        response = app.test_client().post("/auth/token", data={"grant_type": "client_credentials"},
                                          headers=_basic("demo-admin", secret))
        assert response.status_code == 401
    again = announce_demo_client(development, io.StringIO())    # the development gateway makes it anew
    assert _token_status(development, again) == 200
    assert _token_status(production, again) == 401             # production still refuses it
    token = development.test_client().post("/auth/token", data={"grant_type": "client_credentials"},
                                           headers=_basic("demo-admin", again)).get_json()["access_token"]
    at_production = production.test_client().get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    assert at_production.status_code == 401                    # and the token the development one issued


def _token_status(app, secret: str) -> int:
    return app.test_client().post("/auth/token", data={"grant_type": "client_credentials"},
                                  headers=_basic("demo-admin", secret)).status_code


def test_serve_still_refuses_a_public_address_outside_production(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path), "serve", "--host", "0.0.0.0"]) == 2
    assert "GATEWAY_ENVIRONMENT=production" in capsys.readouterr().err


def test_conformance_kit_gets_its_token_with_client_credentials(tmp_path, capsys):
    app = create_app({"DATA_DIR": str(tmp_path)})
    _client, secret = app.extensions["security"].clients.add("kit", "LECHENG_GW", "admin")
    with served(app) as root:
        base = f"{root}/fhir"
        assert conformance_main(["conformance", "--fhir-base", base, "--client-id", "kit",
                                 "--client-secret", secret]) == 0
        assert conformance_main(["conformance", "--fhir-base", base, "--client-id", "kit",
                                 "--client-secret", "wrong"]) == 2
        assert "could not get a token" in capsys.readouterr().err


def test_a_new_secret_never_starts_with_a_dash(monkeypatch):
    """One secret in 64 started with '-', and `--client-secret -Xy...` is then an unknown option."""
    from gateway.security import secret_hash

    drawn = iter(["-starts-with-a-dash", "Ok-secret"])
    monkeypatch.setattr(secret_hash.secrets, "token_urlsafe", lambda _n: next(drawn))
    assert secret_hash.new_secret() == "Ok-secret"
