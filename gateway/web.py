"""What every blueprint shares: the Gateway handle, health, and error answers without stack traces."""
from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def gateway_of_app():
    """The :class:`gateway.runtime.Gateway` of the current app."""
    return current_app.extensions["gateway"]


def register_common(app: Flask) -> None:
    @app.get("/healthz")
    def health():
        return jsonify(status="ok")

    @app.get("/metrics")
    def metrics():
        """Prometheus text format (gateway/observability.py); who may scrape: gateway/security/policy.py."""
        from gateway.observability import scrape
        gateway = gateway_of_app()
        body, content_type = scrape(gateway.store.engine, gateway.config["DATABASE_URL"])
        return current_app.response_class(body, status=200, content_type=content_type)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        from gateway.fhir_api.outcome import outcome_response
        status = exc.code or 500
        if status == 404:     # a FHIR client learns what it asked for, not Werkzeug's wording
            return outcome_response(404, "not-found", f"{request.method} {request.path}: no such endpoint here")
        if status == 405:
            return outcome_response(405, "not-supported", f"{request.method} is not allowed on {request.path}")
        return outcome_response(status, "processing" if status >= 500 else "invalid", exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        # never a stack trace or an internal path in a response; the log has the details
        log.exception("unhandled error on %s %s", request.method, request.path)
        from gateway.fhir_api.outcome import outcome_response
        return outcome_response(500, "exception", "The gateway hit an internal error; it has been logged")

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response
