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
        data_dir = Path(config["DATA_DIR"])
        clients = ClientRegistry(config.get("CLIENTS_FILE") or data_dir / "clients.json")
        keys = SigningKeys(config.get("SIGNING_KEYS_FILE") or data_dir / "signing-keys.json")
        issuer = config.get("TOKEN_ISSUER") or (config.get("BASE_URL") or "").rstrip("/") or DEFAULT_ISSUER
        tokens = TokenService(clients, keys, engine, issuer, int(config.get("TOKEN_LIFETIME_SECONDS") or 300))
        return cls(config, clients, keys, tokens, AuditLog(engine, CANONICAL_BASE))


def clients_for_config(config: dict) -> ClientRegistry:
    """The registry alone, for ``fhir-gateway clients`` (no database needed)."""
    return ClientRegistry(config.get("CLIENTS_FILE") or Path(config["DATA_DIR"]) / "clients.json")


def keys_for_config(config: dict) -> SigningKeys:
    return SigningKeys(config.get("SIGNING_KEYS_FILE") or Path(config["DATA_DIR"]) / "signing-keys.json")
