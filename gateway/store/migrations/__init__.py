"""Schema migrations (Alembic): the database's tables are whatever ``versions/`` says, in order.

Every process checks the revision when it opens the store: one ``SELECT`` when the database is
current. Behind, it upgrades (``GATEWAY_SCHEMA_UPGRADE=auto``, the default: the embedded store just
works) or refuses to start, naming the command to run (``off``: production runs
``fhir-gateway db upgrade`` once per deployment, after its backup). A database *ahead* of this
gateway (written by a newer release) is always refused: an older gateway would write rows the
newer schema does not expect.

Several processes may start on one database at once: the upgrade runs inside one transaction that
first takes a lock (PostgreSQL: an advisory lock; SQLite: the write lock, ``BEGIN IMMEDIATE``), and
looks at the revision again once it holds it, so exactly one process migrates and the others find
the work done. PostgreSQL's DDL is transactional, so a failed migration leaves the old schema.

Databases created before migrations existed (``metadata.create_all``) have the tables and no
``alembic_version``: they are recognised and stamped with the revision their tables match.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

import gateway.security.tables  # noqa: F401,E402  (the audit tables are on the same metadata)
from gateway.store.schema import metadata  # noqa: E402

SCRIPT_LOCATION = Path(__file__).parent
log = logging.getLogger(__name__)
_LOCK_KEY = 0x4C43_4757    # "LCGW": the advisory lock that serialises schema changes on PostgreSQL


class SchemaError(RuntimeError):
    """The database's schema is not the one this gateway was built for; says what to do."""


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    return _scripts().get_current_head()


def known_revisions() -> list[str]:
    """Oldest first."""
    return [s.revision for s in reversed(list(_scripts().walk_revisions()))]


def current_revision(conn: Connection) -> str | None:
    """The revision recorded in the database; for a database made before migrations, the one its
    tables match; None when it is empty."""
    recorded = MigrationContext.configure(conn).get_current_revision()
    if recorded is not None:
        return recorded
    return _unversioned_revision(conn)


def _unversioned_revision(conn: Connection) -> str | None:
    tables = set(inspect(conn).get_table_names())
    if "resources" not in tables:
        return None
    if "export_jobs" in tables and "owner" in {c["name"] for c in inspect(conn).get_columns("export_jobs")}:
        return "0002"
    return "0001"


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _locked_connection(engine: Engine):
    # SQLite: BEGIN IMMEDIATE (gateway/store/schema.py) takes the write lock for the whole upgrade
    return engine.connect().execution_options(write=True)


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Brings the database to this gateway's head revision; returns (before, after)."""
    head = head_revision()
    with _locked_connection(engine) as conn, conn.begin():
        _lock(conn)
        before = current_revision(conn)
        _refuse_newer(before)
        if before is None:
            # an empty database: the tables as the models define them, recorded as head (Alembic's
            # recipe for new databases; tests/store/test_migrations.py proves both roads give one schema)
            metadata.create_all(conn)
            MigrationContext.configure(conn).stamp(_scripts(), head)
        elif before != head:
            if MigrationContext.configure(conn).get_current_revision() is None:
                MigrationContext.configure(conn).stamp(_scripts(), before)   # made before migrations: say what it is
            command.upgrade(_config(conn), head)
            log.info("database schema upgraded from revision %s to %s", before, head)
    return before, head


def _refuse_newer(revision: str | None) -> None:
    if revision is not None and revision not in known_revisions():
        raise SchemaError(f"the database's schema is at revision {revision}, which this gateway does not know "
                          f"(it knows up to {head_revision()}): a newer gateway release wrote it; run that release")


def prepare(engine: Engine, mode: str = "auto") -> None:
    """At start-up: nothing when current; upgrade (``auto``) or refuse (``off``) when behind."""
    if mode not in ("auto", "off"):
        raise SchemaError(f"GATEWAY_SCHEMA_UPGRADE must be auto or off, not {mode!r}")
    with engine.connect() as conn:
        try:
            recorded = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:      # no such table yet: an empty database, or one made before migrations
            conn.rollback()
            recorded = None
        if recorded == head_revision():
            return
        revision = recorded or current_revision(conn)
    _refuse_newer(revision)
    if mode == "off":
        raise SchemaError(f"the database's schema is at revision {revision or '(empty)'}, this gateway needs "
                          f"{head_revision()}: run `fhir-gateway db upgrade` (GATEWAY_SCHEMA_UPGRADE=off)")
    upgrade(engine)
