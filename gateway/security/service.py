"""The security parts wired together once from configuration (like ``gateway.runtime.Gateway``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from gateway.security.audit import AuditLog
from gateway.security.cli import DEMO_CLIENT_ID
from gateway.security.clients import ClientRegistry
from gateway.security.keys import SigningKeys
from gateway.security.tokens import TokenService

CANONICAL_BASE = "https://lecheng-fhir-gateway.org/fhir"
DEFAULT_ISSUER = "urn:lecheng-fhir-gateway"
log = logging.getLogger(__name__)


@dataclass
class Security:
    config: dict
    clients: ClientRegistry
    keys: SigningKeys
    tokens: TokenService
    audit: AuditLog

    @property
    def production(self) -> bool:
        return str(self.config.get("ENVIRONMENT", "")).lower() == "production"

    @classmethod
    def from_config(cls, config: dict, engine: Engine) -> "Security":
        clients = ClientRegistry(engine, legacy_clients_file(config))
        keys = SigningKeys(engine, legacy_keys_file(config))
        issuer = config.get("TOKEN_ISSUER") or (config.get("BASE_URL") or "").rstrip("/") or DEFAULT_ISSUER
        production = str(config.get("ENVIRONMENT", "")).lower() == "production"
        tokens = TokenService(clients, keys, engine, issuer, int(config.get("TOKEN_LIFETIME_SECONDS") or 300),
                              refused_clients=frozenset({DEMO_CLIENT_ID}) if production else frozenset())
        security = cls(config, clients, keys, tokens, AuditLog(engine, CANONICAL_BASE))
        if production:
            _revoke_demo_client(clients)
        return security


def _revoke_demo_client(clients: ClientRegistry) -> None:
    """Clients live in the database: a development gateway once started on the database production
    now uses left its demo admin client there. Production revokes it, and its token service refuses
    it even if a development gateway on that database makes it again later."""
    demo = clients.fresh(DEMO_CLIENT_ID)
    if demo is not None and demo.active:
        clients.revoke(DEMO_CLIENT_ID)
        log.warning("revoked the demo client %s, left in this database by a gateway outside production",
                    DEMO_CLIENT_ID)


def legacy_clients_file(config: dict) -> Path:
    """Where an earlier release kept its clients: imported into an empty ``clients`` table."""
    return Path(config.get("CLIENTS_FILE") or Path(config["DATA_DIR"]) / "clients.json")


def legacy_keys_file(config: dict) -> Path:
    return Path(config.get("SIGNING_KEYS_FILE") or Path(config["DATA_DIR"]) / "signing-keys.json")


def _engine(config: dict) -> Engine:
    from gateway.store.schema import make_engine
    return make_engine(config["DATABASE_URL"], config["SCHEMA_UPGRADE"])


def clients_for_config(config: dict) -> ClientRegistry:
    """The registry alone, for ``fhir-gateway clients`` (the database, without the rest of the gateway)."""
    return ClientRegistry(_engine(config), legacy_clients_file(config))


def keys_for_config(config: dict) -> SigningKeys:
    return SigningKeys(_engine(config), legacy_keys_file(config))
