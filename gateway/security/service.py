"""The security parts wired together once from configuration (like ``gateway.runtime.Gateway``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from gateway.security.audit import AuditLog
from gateway.security.clients import ClientRegistry
from gateway.security.keys import SigningKeys
from gateway.security.tokens import TokenService

CANONICAL_BASE = "https://lecheng-fhir-gateway.org/fhir"
DEFAULT_ISSUER = "urn:lecheng-fhir-gateway"


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
        tokens = TokenService(clients, keys, engine, issuer, int(config.get("TOKEN_LIFETIME_SECONDS") or 300))
        return cls(config, clients, keys, tokens, AuditLog(engine, CANONICAL_BASE))


def legacy_clients_file(config: dict) -> Path:
    """Where an earlier release kept its clients: imported into an empty ``clients`` table."""
    return Path(config.get("CLIENTS_FILE") or Path(config["DATA_DIR"]) / "clients.json")


def legacy_keys_file(config: dict) -> Path:
    return Path(config.get("SIGNING_KEYS_FILE") or Path(config["DATA_DIR"]) / "signing-keys.json")


def _engine(config: dict) -> Engine:
    from gateway.store.schema import make_engine
    if config["DATABASE_URL"].startswith("sqlite:///"):
        Path(config["DATABASE_URL"][len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return make_engine(config["DATABASE_URL"], config["SCHEMA_UPGRADE"])


def clients_for_config(config: dict) -> ClientRegistry:
    """The registry alone, for ``fhir-gateway clients`` (the database, without the rest of the gateway)."""
    return ClientRegistry(_engine(config), legacy_clients_file(config))


def keys_for_config(config: dict) -> SigningKeys:
    return SigningKeys(_engine(config), legacy_keys_file(config))
