"""Schema migrations (gateway/store/migrations): every road to this release's schema ends at the same
tables, a database from an earlier release is upgraded with its data, and a gateway never runs on a
schema it was not built for. On SQLite and on a real PostgreSQL."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, select, text

from gateway import create_app
from gateway.store import migrations
from gateway.store.schema import make_engine, metadata
from tests.security.credentials import authenticated

ROOT = Path(__file__).resolve().parents[2]
FHIR_GATEWAY = [sys.executable, "-m", "gateway.cli"]


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return request.getfixturevalue("postgres_server").new_database()


def _migrate(url: str, to: str) -> None:
    """Runs the migration scripts themselves (a new database otherwise takes the models' tables)."""
    engine = make_engine(url, schema_upgrade="none")
    with engine.begin() as conn:
        command.upgrade(migrations._config(conn), to)
    engine.dispose()


def _as_a_release_before_migrations(url: str) -> None:
    """The tables of revision 0001, as ``metadata.create_all`` made them: no ``alembic_version``."""
    _migrate(url, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    engine.dispose()
    return revision


def test_the_migration_scripts_build_exactly_the_models_tables(empty_database):
    """Differential: a new database takes ``create_all`` + stamp, an old one the scripts; a script that
    forgets a column, an index or a type shows here."""
    _migrate(empty_database, "head")
    engine = create_engine(empty_database)
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert differences == []


def test_a_new_database_is_made_current_at_start_up(empty_database):
    engine = make_engine(empty_database)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()
    assert _revision(empty_database) == migrations.head_revision()


def test_a_database_from_before_migrations_is_upgraded_with_its_data(empty_database, tmp_path):
    _as_a_release_before_migrations(empty_database)
    engine = create_engine(empty_database)
    with engine.begin() as conn:        # an order the earlier release stored (plain JSON, as it wrote)
        conn.execute(text("INSERT INTO resources (res_type, res_id, version_id, last_updated, deleted, content) "
                          "VALUES ('Organization', 'old-1', 1, '2026-01-01T00:00:00Z', false, "
                          + ("X'7b227265736f7572636554797065223a224f7267616e697a6174696f6e222c226964223a226f6c642d31227d')"
                             if engine.dialect.name == "sqlite" else
                             "convert_to('{\"resourceType\":\"Organization\",\"id\":\"old-1\"}', 'UTF8'))")))
    engine.dispose()
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "TESTING": True, "DATABASE_URL": empty_database})
    assert _revision(empty_database) == migrations.head_revision()
    columns = {c["name"] for c in inspect(app.extensions["gateway"].store.engine).get_columns("export_jobs")}
    assert {"owner", "lease_until"} <= columns
    admin = authenticated(app, "admin")
    assert admin.get("/fhir/Organization/old-1").get_json()["id"] == "old-1"
    app.extensions["gateway"].store.engine.dispose()


def test_index_rows_of_an_earlier_release_are_keyed_by_the_upgrade_and_still_found(empty_database, tmp_path):
    """0004 copies every index row into the keyed tables (rows that repeat, or have no system, too),
    and a search finds what it found before; the downgrade gives the rows back as they were."""
    _migrate(empty_database, "0003")
    engine = create_engine(empty_database)
    patient = b'{"resourceType":"Patient","id":"old-2","identifier":[{"value":"A1"},{"value":"A1"}]}'
    rows = [("identifier", None, "A1"), ("identifier", None, "A1"), ("identifier", "urn:mrn", "A1"),
            ("gender", None, "male")]
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO resources (res_type, res_id, version_id, last_updated, deleted, content) "
                          "VALUES ('Patient', 'old-2', 1, '2026-01-01T00:00:00Z', false, :content)"),
                     {"content": patient})
        for param, system, code in rows:
            conn.execute(text("INSERT INTO idx_token (res_type, res_id, param, system, code) "
                              "VALUES ('Patient', 'old-2', :param, :system, :code)"),
                         {"param": param, "system": system, "code": code})
    engine.dispose()
    _migrate(empty_database, "head")
    engine = create_engine(empty_database)
    with engine.connect() as conn:
        copied = conn.execute(text("SELECT param, system, code, seq FROM idx_token ORDER BY seq")).all()
        if engine.dialect.name == "sqlite":
            definition = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'idx_token'")).scalar()
            assert definition.rstrip().endswith("WITHOUT ROWID")
    engine.dispose()
    assert sorted(((p, s, c) for p, s, c, _seq in copied), key=str) == sorted(rows, key=str)
    assert sorted(seq for *_row, seq in copied) == [0, 1, 2, 3]
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "TESTING": True, "DATABASE_URL": empty_database})
    admin = authenticated(app, "admin")
    for query in ("identifier=A1", "identifier=urn:mrn|A1", "identifier=|A1", "gender=male"):
        found = admin.get(f"/fhir/Patient?{query}").get_json()
        assert [e["resource"]["id"] for e in found.get("entry", [])] == ["old-2"], query
    app.extensions["gateway"].store.engine.dispose()
    _migrate_down(empty_database, "0003")
    engine = create_engine(empty_database)
    with engine.connect() as conn:
        back = [tuple(row) for row in conn.execute(text("SELECT param, system, code FROM idx_token"))]
        assert "seq" not in {c["name"] for c in inspect(conn).get_columns("idx_token")}
    engine.dispose()
    assert sorted(back, key=str) == sorted(rows, key=str)


def test_message_log_rows_of_an_earlier_release_read_and_filter_by_ack_after_the_upgrade(empty_database, tmp_path):
    """0005: a row written with a plain ACK and text detail keeps both readable, gets its ack_code,
    and the browser's ACK filter finds it; new rows are stored deflated; the downgrade inflates."""
    _migrate(empty_database, "0004")
    engine = create_engine(empty_database)
    ack = b"MSH|^~\\&|LECHENG_GW|HAINAN_EPC|HIS|H1|20260101||ACK|1|P|2.5\rMSA|AE|C1\rERR|^^^0&x&HL70357|||E"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO message_log (received_at, transport, format, control_id, content_sha256, raw, "
                          "status, ack, detail) VALUES ('2026-01-01T00:00:00.000Z', 'http', 'hl7v2', 'C1', 'x', "
                          ":raw, 'error', :ack, :detail)"),
                     {"raw": b"MSH|^~\\&|HIS|H1", "ack": ack, "detail": '{"errors":["PID-3 missing"]}'})
    engine.dispose()
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "TESTING": True, "DATABASE_URL": empty_database})
    admin = authenticated(app, "admin")
    listed = admin.get("/admin/messages?ack=AE").get_json()
    assert [(m["control_id"], m["ack_code"]) for m in listed["messages"]] == [("C1", "AE")]
    assert admin.get("/admin/messages?ack=AA").get_json()["messages"] == []
    one = admin.get(f"/admin/messages/{listed['messages'][0]['id']}").get_json()
    assert one["errors"] == ["PID-3 missing"] and one["ack"].startswith("MSH|")
    store = app.extensions["gateway"].store.engine
    log = app.extensions["gateway"].message_log
    log.finish(log.receive(b"MSH|^~\\&|HIS|H1|x", transport="http"), "processed", ack.replace(b"AE", b"AA"),
               {"warnings": ["w" * 300]})
    with store.connect() as conn:
        stored = conn.execute(text("SELECT ack, detail, ack_code FROM message_log ORDER BY id DESC")).first()
    assert bytes(stored.ack)[:1] == b"\x00" and len(stored.ack) < len(ack)          # deflated
    assert bytes(stored.detail)[:1] == b"\x00" and len(stored.detail) < 300 and stored.ack_code == "AA"
    store.dispose()
    _migrate_down(empty_database, "0004")
    engine = create_engine(empty_database)
    with engine.connect() as conn:
        acks = [bytes(r.ack) for r in conn.execute(text("SELECT ack FROM message_log ORDER BY id"))]
        details = [r.detail for r in conn.execute(text("SELECT detail FROM message_log ORDER BY id"))]
    engine.dispose()
    assert acks == [ack, ack.replace(b"AE", b"AA")]
    assert [d if isinstance(d, str) else bytes(d).decode() for d in details] == [
        '{"errors":["PID-3 missing"]}', '{"warnings":["' + "w" * 300 + '"]}']


def _migrate_down(url: str, to: str) -> None:
    engine = make_engine(url, schema_upgrade="none")
    with engine.begin() as conn:
        command.downgrade(migrations._config(conn), to)
    engine.dispose()


def test_with_upgrades_off_a_database_behind_is_refused_naming_the_command(empty_database, tmp_path):
    _migrate(empty_database, "0001")
    with pytest.raises(migrations.SchemaError, match="run `fhir-gateway db upgrade`"):
        create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "DATABASE_URL": empty_database,
                    "SCHEMA_UPGRADE": "off"})
    assert _revision(empty_database) == "0001"          # nothing was changed behind the operator's back


def test_a_database_written_by_a_newer_release_is_refused_in_every_mode(empty_database, tmp_path):
    make_engine(empty_database).dispose()
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    for mode in ("auto", "off"):
        with pytest.raises(migrations.SchemaError, match="0099.*newer gateway release"):
            create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "DATABASE_URL": empty_database,
                        "SCHEMA_UPGRADE": mode})


def _cli(url: str, data_dir: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os
    env = {**os.environ, "GATEWAY_DATABASE_URL": url, **(env_extra or {})}
    return subprocess.run([*FHIR_GATEWAY, "--data-dir", str(data_dir), *args], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=120)


def test_db_current_and_db_upgrade_from_the_command_line(empty_database, tmp_path):
    _as_a_release_before_migrations(empty_database)
    before = _cli(empty_database, tmp_path, "db", "current")
    assert before.returncode == 1 and "revision 0001" in before.stdout and "db upgrade" in before.stdout
    upgraded = _cli(empty_database, tmp_path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from 0001 to {migrations.head_revision()}" in upgraded.stdout
    again = _cli(empty_database, tmp_path, "db", "upgrade")
    assert again.returncode == 0 and "already at revision" in again.stdout
    assert _cli(empty_database, tmp_path, "db", "current").returncode == 0


def test_serve_refuses_a_database_behind_with_a_message_not_a_traceback(empty_database, tmp_path):
    _migrate(empty_database, "0001")
    served = _cli(empty_database, tmp_path, "serve", "--port", "0", env_extra={"GATEWAY_SCHEMA_UPGRADE": "off"})
    assert served.returncode == 2
    assert "run `fhir-gateway db upgrade`" in served.stderr and "Traceback" not in served.stderr


def test_three_upgrades_at_once_on_an_old_database_migrate_it_once(empty_database, tmp_path):
    """A deploy script on three machines: one migrates, the others wait for its lock and find it done."""
    _as_a_release_before_migrations(empty_database)
    import os
    env = {**os.environ, "GATEWAY_DATABASE_URL": empty_database}
    runs = [subprocess.Popen([*FHIR_GATEWAY, "--data-dir", str(tmp_path / f"p{n}"), "db", "upgrade"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
            for n in range(3)]
    outcomes = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err[-1500:] for _out, err in outcomes]
    said = [out for out, _err in outcomes]
    assert sum("upgraded from 0001" in out for out in said) == 1
    assert sum("already at revision" in out for out in said) == 2
    engine = create_engine(empty_database)
    with engine.connect() as conn:
        assert conn.execute(select(text("count(*)")).select_from(text("alembic_version"))).scalar() == 1
    engine.dispose()


def test_a_misspelt_upgrade_setting_is_refused_not_taken_for_auto(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    with pytest.raises(migrations.SchemaError, match="must be auto or off, not 'no'"):
        create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "SCHEMA_UPGRADE": "no"})
    assert not (tmp_path / "gateway.db").exists() or _revision(f"sqlite:///{tmp_path / 'gateway.db'}") is None
