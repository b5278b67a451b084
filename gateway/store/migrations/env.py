"""Alembic's entry point. The gateway passes its own connection (``config.attributes``), already in
the transaction that holds the schema lock (gateway/store/migrations/__init__.py); run by hand
(``alembic -c gateway/store/migrations/alembic.ini revision --autogenerate -m ...``) it connects to
GATEWAY_DATABASE_URL, or the embedded ./var/gateway.db."""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

import gateway.security.tables  # noqa: F401  (the audit tables are on the same metadata)
from gateway.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    engine = create_engine(os.environ.get("GATEWAY_DATABASE_URL") or "sqlite:///var/gateway.db")
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():       # joins the caller's transaction: one commit for every step
        context.run_migrations()
