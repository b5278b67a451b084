"""The gateway's own random secrets (the search-cursor HMAC key, the console's session key), one per
deployment, in the database: every process on every machine signs and checks with the same one.

Made on first use. Two processes making it at once both insert; the database keeps one (primary
key, ``ON CONFLICT DO NOTHING``) and both read back that one. A key file an earlier release kept
in ``DATA_DIR`` is imported as the value, so cursors and sessions it issued stay valid.
"""
from __future__ import annotations

import logging
import secrets
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from gateway.security.tables import gateway_secrets

log = logging.getLogger(__name__)


def insert_ignoring_duplicates(conn: Connection, table, rows: list[dict]) -> None:
    """INSERT that skips rows whose primary key exists (another process got there first)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    conn.execute(insert(table).on_conflict_do_nothing(), rows)


def shared_secret(engine: Engine, name: str, legacy_file: Path | None = None) -> bytes:
    """The deployment's secret called ``name``; made (or imported from ``legacy_file``) on first use."""
    query = select(gateway_secrets.c.value).where(gateway_secrets.c.name == name)
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    if value is not None:
        return bytes(value)
    imported = legacy_file.read_bytes().strip() if legacy_file is not None and legacy_file.is_file() else b""
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        insert_ignoring_duplicates(conn, gateway_secrets, [{
            "name": name, "value": imported or secrets.token_hex(32).encode(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}])
        value = bytes(conn.execute(query).scalar_one())
    if imported and value == imported:
        log.info("secret %s imported from %s into the database; the file is no longer read", name, legacy_file)
    return value
