"""Lecheng FHIR gateway: HL7 v2 and hospital exports in, validated FHIR R4 stored, searched and routed.

``create_app(config)`` builds a fresh Flask app (no module-level app, no import-time side effects);
the flow inside is ingest -> hl7v2 -> mapping -> validation -> store -> routing (see README).
"""
from __future__ import annotations

from typing import Any, Mapping

from flask import Flask

from gateway.config import load_config

__version__ = "0.1.0"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    from gateway.fhir_api import fhir_blueprint
    from gateway.ingest.http import ingest_blueprint
    from gateway.routing.admin import admin_blueprint
    from gateway.runtime import Gateway
    from gateway.security import install_security
    from gateway.web import register_common

    settings = load_config(config)
    app = Flask(__name__)
    app.config.update(settings)
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_MESSAGE_BYTES"]
    app.extensions["gateway"] = Gateway.from_config(settings)
    register_common(app)
    install_security(app)       # every endpoint: token, policy, organization rules, audit (gateway/security)
    app.register_blueprint(ingest_blueprint)
    app.register_blueprint(fhir_blueprint, url_prefix="/fhir")
    app.register_blueprint(admin_blueprint)          # /admin/deliveries (routing)
    from gateway.ingest.admin import message_admin_blueprint
    app.register_blueprint(message_admin_blueprint)  # /admin/messages (the message log)
    from gateway.console import install_console
    install_console(app)                             # /console: the operators' web pages
    return app
