"""The security tables, on the store's shared ``metadata``: audit records and used assertion ids.

Created, like every table, by the schema migrations (gateway/store/migrations).
"""
from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table

from gateway.store.content import StoredJson
from gateway.store.schema import metadata

audit_events = Table(
    "audit_events", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("recorded", String(40), nullable=False),
    Column("client_id", String(64)),
    Column("organization", String(64)),
    Column("role", String(32)),
    Column("action", String(1), nullable=False),          # C R U D E
    Column("subtype", String(32), nullable=False),        # read, search-type, create, ..., hl7v2, token, admin
    Column("outcome", String(2), nullable=False),         # 0 success, 4 minor failure, 8 serious failure, 12 major
    Column("status", Integer),                            # HTTP status (or null for MLLP)
    Column("entity_type", String(64)),
    Column("entity_id", String(64)),
    Column("address", String(64)),
    Column("content", StoredJson, nullable=False),         # the AuditEvent JSON
    Index("ix_audit_recorded", "recorded"),
    Index("ix_audit_client", "client_id"),
    Index("ix_audit_entity", "entity_type", "entity_id"),
)

used_assertions = Table(
    "used_assertions", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", Integer, nullable=False),
    Index("ix_used_assertions_expiry", "expires_at"),
)
