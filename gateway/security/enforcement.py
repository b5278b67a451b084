"""Every HTTP request passes here: body limits, who is calling, rate limit, may they, and the audit.

Hooks run in this order (Flask keeps registration order):

1. ``guard_body``: oversized bodies (413), XML with a DTD or entity declarations, JSON nested deeper
   than ``MAX_JSON_DEPTH`` (400), before anything parses them, whatever Content-Type the body claims
   (XML and JSON are recognised by their first byte too); a refused body from a caller the endpoint
   admits is logged raw in the message log (``X-Message-Log-Id``, linked from the AuditEvent);
2. ``authenticate``: the bearer token, if any, becomes ``g.principal``;
3. Flask-Limiter: per client (per source address without a token); 429 when over;
4. ``authorize``: :func:`gateway.security.policy.authorize` on the endpoint and method; the
   store is then restricted to what the client may see and write (``gateway.store.access``);
5. ``after_request`` / ``teardown_request``: one AuditEvent for the request with its outcome,
   written even when the view failed or the request was refused.
"""
from __future__ import annotations

import codecs
import hmac
import logging
import re
from urllib.parse import urlsplit

import orjson
from flask import Flask, Response, g, request
from flask_limiter import HeaderNames, Limiter
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import RequestEntityTooLarge

from gateway.fhir_api.outcome import outcome_response
from gateway.security import rate_storage
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
_HEAD_BYTES = 4096
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
        storage_uri=app.config.get("REDIS_URL") or f"{rate_storage.SCHEME}://",   # thread-safe memory storage
        headers_enabled=True, strategy="moving-window",
        # the limiter would put Retry-After on every answer (a 200 that says "retry later"); it is
        # set only where it means something: 429 here, 202 while a bulk export runs
        header_name_mapping={HeaderNames.RETRY_AFTER: "X-RateLimit-Retry-After"},
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
    """Refuse what no view should parse, whatever Content-Type the sender claims: a body over the size
    limit, XML (by its first byte, or its Content-Type) with a DTD or entity declarations, JSON (by its
    first byte, or its Content-Type) nested deeper than ``MAX_JSON_DEPTH``. A refused body from a caller
    who may use the endpoint is logged raw (message log), so the sender's mistake can be shown to them."""
    limit = request.max_content_length
    if request.content_length is not None and limit is not None and request.content_length > limit:
        head = _head_of_unread_body()
        return _refuse_body(head, 413, "too-costly", f"the request body is {request.content_length} bytes; this "
                                                     f"gateway accepts at most {limit} bytes (MAX_MESSAGE_BYTES)")
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    content_type = (request.mimetype or "").lower()
    try:
        body = request.get_data()          # cached for the view; size bounded by MAX_CONTENT_LENGTH
    except RequestEntityTooLarge:          # a chunked body without Content-Length went over the limit
        return _refuse_body(b"", 413, "too-costly", f"the request body is over the {limit} bytes this gateway "
                                                    "accepts (MAX_MESSAGE_BYTES)")
    if not body:
        return None
    text = _dtd_searchable(body)
    first = text.lstrip()[:1]
    if ("xml" in content_type or first == b"<") and _DTD.search(text):
        return _refuse_body(body, 400, "security", "XML with a DTD or entity declarations is refused "
                                                   "(no DOCTYPE, no ENTITY)")
    if "json" in content_type or first in (b"{", b"["):
        problem = _json_depth_problem(body, _max_depth())
        if problem:
            return _refuse_body(body, 400, "structure", problem)
    return None


def _dtd_searchable(body: bytes) -> bytes:
    """The body as bytes a DTD pattern can match: UTF-16/32 (by BOM, or a NUL beside the first '<')
    decoded, so an XML parser that honours the BOM cannot be handed a DTD the guard did not see."""
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if body.startswith(bom):
            return body.decode(codec, "replace").encode("utf-8")
    if body[:2] == b"<\x00":
        return body.decode("utf-16-le", "replace").encode("utf-8")
    if body[:2] == b"\x00<":
        return body.decode("utf-16-be", "replace").encode("utf-8")
    return body[3:] if body.startswith(codecs.BOM_UTF8) else body


def _head_of_unread_body() -> bytes:
    """The first bytes of a body too large to read (enough for an MSH segment or an XML prolog)."""
    try:
        return request.environ["wsgi.input"].read(_HEAD_BYTES)
    except Exception:  # a closed or odd input stream: the refusal is logged without the bytes
        return b""


def _refuse_body(raw: bytes, status: int, code: str, text: str) -> Response:
    """The refusal as an OperationOutcome; logged raw when the caller may use this endpoint at all."""
    g.refusal_text = text
    headers = {}
    log_id = _log_refused_body(raw, status, text)
    if log_id is not None:
        headers["X-Message-Log-Id"] = str(log_id)
    return outcome_response(status, code, text, headers=headers)


def _log_refused_body(raw: bytes, status: int, text: str) -> int | None:
    """Message log row (status ``rejected``) for a body refused before any view read it. Only for a
    caller the endpoint would admit: anonymous bytes must not be able to fill the gateway's log."""
    _authenticate()
    principal = g.get("principal")
    if principal is None or request.endpoint is None:
        return None
    if authorize(rule_for(request.endpoint, request.method, request.blueprint), principal, request.view_args):
        return None
    try:
        from gateway.web import gateway_of_app
        message_log = gateway_of_app().message_log
        view_args = request.view_args or {}
        fmt = "hl7v2" if request.endpoint == "ingest.receive_hl7v2" else (
            view_args.get("mapping") or "fhir" if request.blueprint in ("ingest", "fhir") else request.blueprint)
        return message_log.refuse(raw, transport="http", format=str(fmt or "unknown")[:32], reason=text,
                                  http_status=status, refused_before_parsing=True,
                                  content_type=request.content_type or "")
    except Exception:  # the refusal still leaves; the log failure is loud in the server log
        log.exception("could not log the refused body of %s %s", request.method, request.path)
        return None


def _max_depth() -> int:
    from flask import current_app
    return int(current_app.config.get("MAX_JSON_DEPTH") or 100)


def _json_depth_problem(body: bytes, limit: int) -> str | None:
    """orjson parses (it refuses beyond 1024 levels itself); then an iterative walk bounds the depth."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc).lower():
            return f"the JSON body is nested deeper than {limit} levels"
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
    if rule is not None and rule.kind == "metrics" and _metrics_token_presented():
        g.not_audited = True      # a scrape with the metrics secret: no clinical data, not audited
        return None
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
        # an admin's FHIR writes are an operator's (any record, its owner kept); its messages act for MSH-4
        operator = principal.sends_for_any_organization and rule.kind != "ingest"
        g.access_tokens = access.set_for_request(principal.organization, scope, bound, operator,
                                                 _security().clients.roles_of)
    return None


def _metrics_token_presented() -> bool:
    from flask import current_app
    expected = str(current_app.config.get("METRICS_TOKEN") or "")
    header = request.headers.get("Authorization", "")
    return bool(expected) and header[:7].lower() == "bearer " and hmac.compare_digest(
        header[7:].strip().encode(), expected.encode())


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
    if endpoint in NOT_AUDITED or g.get("not_audited"):
        return
    principal: Principal | None = g.get("principal")
    client_id = principal.client_id if principal else g.get("token_client_id")
    view_args = request.view_args or {}
    activity = ACTIVITY.get(endpoint or "", "admin" if request.blueprint in ("admin", "message_admin", "console") else
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
