"""Who is calling: the authenticated client of a request or an MLLP connection."""
from __future__ import annotations

from dataclasses import dataclass

from gateway.security.scopes import Permissions


@dataclass(frozen=True)
class Principal:
    client_id: str
    organization: str
    role: str
    permissions: Permissions
    token_id: str | None = None

    @property
    def sees_everything(self) -> bool:
        """Regulators and admins read all organizations' data."""
        return self.role in ("regulator", "admin")

    @property
    def sends_for_any_organization(self) -> bool:
        """Only an admin (operators replaying messages) may send with another MSH-4 / organization."""
        return self.role == "admin"
