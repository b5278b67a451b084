"""The security tables, on the store's shared ``metadata``: audit records, used assertion ids, clients,
signing keys and secrets.

Created, like every table, by the schema migrations (gateway/store/migrations).
"""
from __future__ import annotations

from sqlalchemy import Column, Index, Integer, LargeBinary, String, Table, Text

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

# ------------------------------------------------------------ shared by every process of a deployment
# Registered clients, the token-signing keys and the gateway's own secrets live in the database, so
# every process on every machine of a deployment honours the same clients, tokens, cursors and
# console sessions without shared files (gateway/security/clients.py, keys.py, secrets.py).
# ``changed``: a counter bumped by every edit, so a process sees an edit by another at its next look.
clients = Table(
    "clients", metadata,
    Column("client_id", String(64), primary_key=True),
    Column("organization", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("secret_hash", String(255)),                     # scrypt (gateway/security/secret_hash.py)
    Column("jwks", Text),                                    # JSON: public keys for signed client assertions
    Column("mllp_addresses", Text, nullable=False),         # JSON list of addresses / networks
    Column("tls_subjects", Text, nullable=False),           # JSON list of certificate subject CNs
    Column("status", String(16), nullable=False),           # active | revoked
    Column("created", String(40), nullable=False),
    Column("description", Text, nullable=False),
    Column("changed", Integer, nullable=False),
)

signing_keys = Table(
    "signing_keys", metadata,
    Column("kid", String(32), primary_key=True),
    Column("seq", Integer, nullable=False, unique=True),    # the newest signs; order of creation
    Column("created", String(40), nullable=False),
    Column("private_pem", Text, nullable=False),
)

gateway_secrets = Table(
    "gateway_secrets", metadata,
    Column("name", String(64), primary_key=True),           # search-cursor, console-session
    Column("value", LargeBinary, nullable=False),
    Column("created", String(40), nullable=False),
)
