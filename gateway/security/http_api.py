"""The security endpoints: the token endpoint, SMART discovery, the gateway's JWKS and the audit log.

Thin views: the token rules are in ``tokens``, the audit search in ``audit``; who may call these
is declared in ``policy`` like every other endpoint.
"""
from __future__ import annotations

from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from gateway.fhir_api.outcome import fhir_response, outcome_response
from gateway.security.audit import SEARCH_COLUMNS, AuditSearchError
from gateway.security.scopes import ROLE_SCOPES
from gateway.security.service import Security
from gateway.security.tokens import ASSERTION_ALGORITHMS, AuthError

AUDIT_CONTROL = {"_count", "_cursor", "_format", "_pretty", "_total", "_summary"}


def root_url() -> str:
    return (current_app.config.get("BASE_URL") or request.url_root).rstrip("/")


def supported_scopes() -> list[str]:
    """Every scope a client may ask for: the roles' own, and per served type (the store's registry and
    AuditEvent) read+search and, where clients may write, all of create/read/update/delete/search."""
    from gateway.web import gateway_of_app
    scopes = {s for role_scopes in ROLE_SCOPES.values() for s in role_scopes.split()}
    for resource_type in gateway_of_app().store.params.resource_types():
        scopes.update((f"system/{resource_type}.rs", f"system/{resource_type}.cruds"))
    scopes.add("system/AuditEvent.rs")
    return sorted(scopes)


def make_security_blueprint(security: Security, limiter: Limiter) -> Blueprint:
    bp = Blueprint("security", __name__)

    @bp.post("/auth/token")
    @limiter.limit(lambda: current_app.config.get("TOKEN_RATE_LIMIT") or "60 per minute",
                   key_func=get_remote_address)
    def token() -> Response:
        form = {k: request.form.get(k, "") for k in ("grant_type", "scope", "client_assertion_type",
                                                      "client_assertion")}
        urls = sorted({request.base_url, f"{root_url()}/auth/token"})
        try:
            grant = security.tokens.token_request(form, request.headers.get("Authorization"), urls)
        except AuthError as exc:
            g.refusal_text = f"{exc.error}: {exc.description}"
            response = jsonify(error=exc.error, error_description=exc.description)
            response.status_code = exc.status
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Basic realm="lecheng-fhir-gateway"'
            response.headers["Cache-Control"] = "no-store"
            return response
        g.token_client_id = grant.client.client_id
        g.token_client_org = grant.client.organization
        g.token_client_role = grant.client.role
        g.refusal_text = f"token issued, scope {grant.scope}"
        response = jsonify(grant.response())
        response.headers["Cache-Control"] = "no-store"
        response.headers["Pragma"] = "no-cache"
        return response

    def smart_configuration() -> Response:
        root = root_url()
        return jsonify({
            "issuer": security.tokens.issuer,
            "jwks_uri": f"{root}/.well-known/jwks.json",
            "token_endpoint": f"{root}/auth/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "scopes_supported": supported_scopes(),
            "capabilities": ["client-confidential-asymmetric", "client-confidential-symmetric",
                             "permission-v2", "permission-v1"],
        })

    bp.add_url_rule("/.well-known/smart-configuration", "smart_configuration", smart_configuration)
    bp.add_url_rule("/fhir/.well-known/smart-configuration", "smart_configuration_fhir", smart_configuration)

    @bp.get("/.well-known/jwks.json")
    def jwks() -> Response:
        return jsonify(security.keys.jwks())

    @bp.get("/fhir/AuditEvent")
    def audit_search() -> Response:
        config = current_app.config
        try:
            count = min(int(request.args.get("_count", config["DEFAULT_PAGE_SIZE"])), config["MAX_PAGE_SIZE"])
            if count < 0:
                raise ValueError
        except ValueError:
            return outcome_response(400, "invalid", "_count must be a whole number >= 0", "_count")
        summary = request.args.get("_summary")
        if summary not in (None, "false", "count"):
            return outcome_response(400, "not-supported", "the audit log takes _summary=count (or false) only",
                                    "_summary")
        if summary == "count":
            count = 0                      # the total only, as for every other type
        criteria = []
        for key in request.args:
            if key in AUDIT_CONTROL:
                continue
            if key != "date" and key not in SEARCH_COLUMNS:
                return outcome_response(400, "not-supported", f"unknown AuditEvent search parameter '{key}'; "
                                        f"known: date, {', '.join(sorted(SEARCH_COLUMNS))}")
            criteria += [(key, value) for value in request.args.getlist(key)]
        try:
            events, total, cursor = security.audit.search(criteria, count, request.args.get("_cursor"))
        except AuditSearchError as exc:
            return outcome_response(400, "invalid", str(exc), "date")
        base = f"{root_url()}/fhir/AuditEvent"
        query = [(k, v) for k in request.args for v in request.args.getlist(k) if k != "_cursor"]
        links = [{"relation": "self", "url": f"{base}?{urlencode(query)}"}]
        if cursor:
            links.append({"relation": "next", "url": f"{base}?{urlencode(query + [('_cursor', cursor)])}"})
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
                  "entry": [{"fullUrl": f"{base}/{e['id']}", "resource": e, "search": {"mode": "match"}}
                            for e in events]}
        if not bundle["entry"]:
            del bundle["entry"]            # an empty list is not valid FHIR JSON
        return fhir_response(bundle)

    @bp.get("/fhir/AuditEvent/<event_id>")
    def audit_read(event_id: str) -> Response:
        event = security.audit.read(event_id)
        if event is None:
            return outcome_response(404, "not-found", f"AuditEvent/{event_id} is not known")
        return fhir_response(event)

    return bp
