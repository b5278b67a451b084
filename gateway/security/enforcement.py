"""Every HTTP request passes here: body limits, who is calling, rate limit, may they, and the audit.

Hooks run in this order (Flask keeps registration order):

1. ``guard_body``: oversized bodies (413), XML with a DTD or entity declarations, JSON nested deeper
   than ``MAX_JSON_DEPTH`` (400), before anything parses them;
2. ``authenticate``: the bearer token, if any, becomes ``g.principal``;
3. Flask-Limiter: per client (per source address without a token); 429 when over;
4. ``authorize``: :func:`gateway.security.policy.authorize` on the endpoint and method; the
   store is then restricted to what the client may see and write (``gateway.store.access``);
5. ``after_request`` / ``teardown_request``: one AuditEvent for the request with its outcome,
   written even when the view failed or the request was refused.
"""
from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

import orjson
from flask import Flask, Response, g, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from gateway.fhir_api.outcome import outcome_response
from gateway.security.audit import AuditRecord
from gateway.security.policy import OPEN, authorize, rule_for
from gateway.security.principal import Principal
from gateway.security.service import Security
from gateway.security.tokens import AuthError
from gateway.store import access

log = logging.getLogger(__name__)

NOT_AUDITED = {"health", "fhir.metadata", "security.smart_configuration", "security.smart_configuration_fhir",
               "security.jwks", "static"}
ACTIVITY = {
    "fhir.read": "read", "fhir.vread": "vread", "fhir.history": "history-instance",
    "fhir.history_type": "history-type", "fhir.history_system": "history-system", "fhir.search": "search-type",
    "fhir.search_post": "search-type", "fhir.create": "create", "fhir.update": "update",
    "fhir.conditional_update": "update", "fhir.delete": "delete", "fhir.conditional_delete": "delete",
    "fhir.bundle": "transaction", "fhir.validate": "operation", "security.audit_search": "search-type",
    "security.audit_read": "read", "security.token": "token", "ingest.receive_hl7v2": "hl7v2",
    "ingest.receive_document": "ingest", "fhir.export_system": "export", "fhir.export_patient": "export",
    "fhir.export_status": "export", "fhir.export_cancel": "export", "fhir.export_file": "export",
}
_LOCATION = re.compile(r"/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")
_DTD = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)


def install(app: Flask, security: Security) -> Limiter:
    """Register the hooks and the security blueprint on ``app``; returns its rate limiter."""
    app.extensions["security"] = security
    app.before_request(_guard_body)
    app.before_request(_authenticate)
    limiter = Limiter(
        key_func=_rate_key, app=app,
        application_limits=[app.config.get("RATE_LIMIT") or "6000 per minute"],
        application_limits_exempt_when=lambda: request.endpoint in NOT_AUDITED,
        storage_uri=app.config.get("REDIS_URL") or "memory://",
        headers_enabled=True, strategy="moving-window",
    )
    app.before_request(_authorize)
    app.after_request(_audit_response)
    app.teardown_request(_finish)
    app.register_error_handler(RateLimitExceeded, _too_many)
    from gateway.security.http_api import make_security_blueprint
    app.register_blueprint(make_security_blueprint(security, limiter))
    return limiter


def current_principal() -> Principal | None:
    return g.get("principal")


# ------------------------------------------------------------------ hooks

def _guard_body():
    limit = request.max_content_length
    if request.content_length is not None and limit is not None and request.content_length > limit:
        return outcome_response(413, "too-costly", f"the request body is {request.content_length} bytes; this "
                                                   f"gateway accepts at most {limit} bytes")
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    content_type = (request.mimetype or "").lower()
    if "xml" in content_type or "json" in content_type:
        body = request.get_data()          # cached for the view; size already bounded by MAX_CONTENT_LENGTH
        if ("xml" in content_type or body.lstrip()[:1] == b"<") and _DTD.search(body):
            return outcome_response(400, "security", "XML with a DTD or entity declarations is refused "
                                                     "(no DOCTYPE, no ENTITY)")
        if "json" in content_type and body:
            problem = _json_depth_problem(body, _max_depth())
            if problem:
                return outcome_response(400, "structure", problem)
    return None


def _max_depth() -> int:
    from flask import current_app
    return int(current_app.config.get("MAX_JSON_DEPTH") or 100)


def _json_depth_problem(body: bytes, limit: int) -> str | None:
    """orjson parses (it refuses beyond 1024 levels itself); then an iterative walk bounds the depth."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None          # the view answers malformed JSON with its own, more precise, message
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return f"the JSON body is nested deeper than {limit} levels"
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return None


def _authenticate():
    g.principal = None
    g.auth_error = None
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer " and request.endpoint != "security.token":
        try:
            g.principal = _security().tokens.principal(header[7:].strip())
        except AuthError as exc:
            g.auth_error = exc


def _rate_key() -> str:
    principal = g.get("principal")
    return f"client:{principal.client_id}" if principal else f"address:{request.remote_addr}"


def _authorize():
    rule = rule_for(request.endpoint, request.method, request.blueprint)
    if request.endpoint is None:
        return None           # no such URL: Flask answers 404/405 (an OperationOutcome), audited
    principal = g.principal
    if rule is not OPEN and g.auth_error is not None and rule is not None:
        g.refusal_text = g.auth_error.description
        expired = "expired" in g.auth_error.description
        response = outcome_response(401, "expired" if expired else "login", g.auth_error.description)
        response.headers["WWW-Authenticate"] = (f'Bearer realm="lecheng-fhir-gateway", error="invalid_token", '
                                                f'error_description="{g.auth_error.description}"')
        return response
    refusal = authorize(rule, principal, request.view_args)
    if refusal is not None:
        g.refusal_text = refusal.message
        response = outcome_response(refusal.status, refusal.code, refusal.message)
        if refusal.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="lecheng-fhir-gateway"'
        return response
    if principal is not None:
        scope = None
        if rule.kind in ("fhir", "fhir-system") and not principal.sees_everything:
            scope = _store_scope(principal)
        bound = None if principal.sends_for_any_organization or rule.kind != "ingest" else principal.organization
        g.access_tokens = access.set_for_request(principal.organization, scope, bound)
    return None


def _store_scope(principal: Principal) -> access.AccessScope:
    routed = None
    if principal.role in ("pharmacy", "prescription-center"):
        from gateway.routing.outbox import routed_resource_ids_query
        routed = routed_resource_ids_query
    types = tuple(_security_gateway_types())
    return access.AccessScope(principal.organization, routed, principal.permissions.allows, types)


def _security_gateway_types() -> list[str]:
    from gateway.web import gateway_of_app
    return gateway_of_app().store.params.resource_types()


def _too_many(exc: RateLimitExceeded) -> Response:
    g.refusal_text = f"rate limit {exc.description} exceeded"
    response = outcome_response(429, "throttled", f"too many requests from this client ({exc.description}); "
                                                  "slow down and retry after the Retry-After seconds")
    response.headers["Retry-After"] = "60"
    return response


def _audit_response(response: Response) -> Response:
    try:
        _write_audit(response.status_code, response)
    except Exception:  # the audit must not turn an answered request into a 500; it is logged loudly
        log.exception("could not write the AuditEvent for %s %s", request.method, request.path)
    return response


def _finish(exc: BaseException | None) -> None:
    tokens = g.pop("access_tokens", None)
    if tokens is not None:
        access.reset(tokens)
    if not g.get("audited"):
        try:
            _write_audit(500, None, str(type(exc).__name__) if exc else "the request did not complete")
        except Exception:
            log.exception("could not write the AuditEvent for %s %s", request.method, request.path)


def _write_audit(status: int, response: Response | None, failure: str | None = None) -> None:
    g.audited = True
    endpoint = request.endpoint
    if endpoint in NOT_AUDITED:
        return
    principal: Principal | None = g.get("principal")
    client_id = principal.client_id if principal else g.get("token_client_id")
    view_args = request.view_args or {}
    activity = ACTIVITY.get(endpoint or "", "admin" if request.blueprint in ("admin", "message_admin") else
                            ("ingest" if request.blueprint == "ingest" else "other"))
    entity_type = view_args.get("resource_type") or ("AuditEvent" if endpoint and "audit" in endpoint else None)
    entity_id = view_args.get("resource_id") or view_args.get("event_id")
    ack = response.headers.get("X-Ack-Code") if response is not None else None
    if response is not None and entity_id is None and response.headers.get("Location"):
        match = _LOCATION.search(urlsplit(response.headers["Location"]).path)
        if match:
            entity_type, entity_id = match.groups()
    text = failure or g.get("refusal_text") or f"HTTP {status}"
    if ack:
        text = f"ACK {ack}" + (f": {g.get('ack_text')}" if g.get("ack_text") else "")
    effective = status if not ack or ack == "AA" else 422
    _security().audit.record(AuditRecord(
        activity=activity, outcome_status=effective, outcome_text=text, client_id=client_id,
        organization=principal.organization if principal else g.get("token_client_org"),
        role=principal.role if principal else g.get("token_client_role"),
        address=request.remote_addr, entity_type=entity_type, entity_id=entity_id,
        query=request.query_string.decode("utf-8", "replace") if activity in ("search-type", "history-type",
                                                                               "history-system") else None,
        description=f"{request.method} {request.path}"[:500],
        message_log_id=response.headers.get("X-Message-Log-Id") if response is not None else None))


def _security() -> Security:
    from flask import current_app
    return current_app.extensions["security"]
