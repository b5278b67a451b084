"""Who may do what: registered clients, SMART Backend Services tokens, scopes and organization
rules for every endpoint, and the audit trail (FHIR AuditEvent).

``install_security(app)`` is called by ``create_app``; the policy table is ``policy.ENDPOINTS``.
"""
from __future__ import annotations

from flask import Flask

from gateway.security.principal import Principal
from gateway.security.service import Security


def install_security(app: Flask) -> Security:
    """Build the security parts over the app's gateway database and enforce them on every request."""
    from gateway.security.enforcement import install
    security = Security.from_config(dict(app.config), app.extensions["gateway"].store.engine)
    install(app, security)
    return security


__all__ = ["Security", "Principal", "install_security"]
