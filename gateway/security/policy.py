"""Who may call which endpoint: the one table every request is checked against.

Keyed on the Flask endpoint name and the HTTP method. An endpoint that is not in the table is
refused (403) for everyone, admins included, so a new endpoint is closed until someone declares
it here. Blueprints carry no access rules of their own.

Rule kinds:

* ``open``: no token needed (``/healthz``, ``/fhir/metadata``, discovery, ``/auth/token``);
* ``fhir``: a FHIR interaction on the ``resource_type`` of the URL, checked against the token's
  SMART scopes (``c r u d s``); organization rules are applied by the store (``gateway.store.access``);
* ``fhir-system``: a FHIR interaction across types (system history, transaction/batch): the token
  must hold the interaction on some type; each entry is checked by the store as it is written;
* ``ingest``: HL7 v2 and hospital exports: the token must allow creating; the message's sending
  facility (MSH-4) must be the client's organization (checked in the pipeline);
* ``audit``: the AuditEvent log: admins and regulators, read and search only;
* ``export``: Bulk Data ``$export`` and its status and files: admins and regulators (``system/*.rs``);
* ``admin``: admin role only;
* ``metrics``: ``/metrics``: an admin token, or the ``METRICS_TOKEN`` bearer secret. Prometheus
  scrapes every 15-60 s with a static credential; an admin client's secret in a scraper's config
  would hand every admin power to whoever reads that file, while the metrics secret opens counts
  and nothing else (no clinical data is in the metrics). Scrapes with that secret are not audited (no
  clinical data, and one AuditEvent per scrape would outgrow the clinical ones); refused ones are.
"""
from __future__ import annotations

from dataclasses import dataclass

from gateway.security.principal import Principal

LETTER = {"read": "r", "vread": "r", "history": "r", "search": "s", "create": "c", "update": "u", "delete": "d",
          "export": "r", "validate": "r"}
AUDIT_READERS = ("admin", "regulator")


@dataclass(frozen=True)
class Rule:
    kind: str
    interaction: str | None = None


OPEN = Rule("open")
ADMIN = Rule("admin")


def fhir(interaction: str) -> Rule:
    return Rule("fhir", interaction)


ENDPOINTS: dict[tuple[str, str], Rule] = {
    ("health", "GET"): OPEN,
    ("metrics", "GET"): Rule("metrics"),
    ("fhir.metadata", "GET"): OPEN,
    ("security.smart_configuration", "GET"): OPEN,
    ("security.smart_configuration_fhir", "GET"): OPEN,
    ("security.jwks", "GET"): OPEN,
    ("security.token", "POST"): OPEN,
    # FHIR REST (gateway/fhir_api)
    ("fhir.read", "GET"): fhir("read"),
    ("fhir.vread", "GET"): fhir("vread"),
    ("fhir.history", "GET"): fhir("history"),
    ("fhir.history_type", "GET"): fhir("history"),
    ("fhir.search", "GET"): fhir("search"),
    ("fhir.search", "POST"): fhir("search"),
    ("fhir.search_post", "POST"): fhir("search"),
    ("fhir.validate", "POST"): fhir("validate"),
    ("fhir.create", "POST"): fhir("create"),
    ("fhir.update", "PUT"): fhir("update"),
    ("fhir.conditional_update", "PUT"): fhir("update"),
    ("fhir.delete", "DELETE"): fhir("delete"),
    ("fhir.conditional_delete", "DELETE"): fhir("delete"),
    ("fhir.history_system", "GET"): Rule("fhir-system", "history"),
    ("fhir.bundle", "POST"): Rule("fhir-system", "write"),
    # the AuditEvent log (gateway/security/http_api.py)
    ("security.audit_search", "GET"): Rule("audit", "search"),
    ("security.audit_read", "GET"): Rule("audit", "read"),
    # Bulk Data export (gateway/fhir_api/bulk.py): jobs run in the background, outside the request,
    # so they cannot be narrowed to one organization; only clients that see everything may export
    ("fhir.export_system", "GET"): Rule("export"),
    ("fhir.export_patient", "GET"): Rule("export"),
    ("fhir.export_status", "GET"): Rule("export"),
    ("fhir.export_cancel", "DELETE"): Rule("export"),
    ("fhir.export_file", "GET"): Rule("export"),
    ("fhir.export_post", "POST"): Rule("export"),          # answered 405 (GET only) to those who may export
    ("fhir.export_group", "GET"): Rule("export"),         # answered 404 (no Groups) to those who may export
    ("fhir.export_group", "POST"): Rule("export"),
    # ingest
    ("ingest.receive_hl7v2", "POST"): Rule("ingest"),
    ("ingest.receive_document", "POST"): Rule("ingest"),      # hospital XML/CSV/JSON exports (gateway/ingest/documents.py)
}

# whole blueprints whose every endpoint has the same rule
BLUEPRINTS: dict[str, Rule] = {
    "admin": ADMIN,
    "routing_admin": ADMIN,     # /admin/deliveries (gateway/routing/admin.py)
    "message_admin": ADMIN,     # /admin/messages (gateway/ingest/admin.py)
    "console": Rule("console"),  # /console: its own sign-in (session of an admin client), gateway/console
}


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str           # OperationOutcome issue code: login, expired, forbidden
    message: str


def rule_for(endpoint: str | None, method: str, blueprint: str | None) -> Rule | None:
    if method == "HEAD":
        method = "GET"
    rule = ENDPOINTS.get((endpoint or "", method))
    if rule is None and blueprint in BLUEPRINTS:
        rule = BLUEPRINTS[blueprint]
    return rule


def authorize(rule: Rule | None, principal: Principal | None, view_args: dict | None) -> Refusal | None:
    """None when the request may go on; otherwise why not (401 without a valid token, 403 else)."""
    if rule is None:
        return Refusal(403, "forbidden", "this endpoint is not in the gateway's access policy")
    if rule.kind in ("open", "console"):     # the console checks its session cookie itself
        return None
    if principal is None:
        return Refusal(401, "login", "this endpoint needs a bearer token: get one from /auth/token")
    if rule.kind in ("admin", "metrics"):
        return None if principal.role == "admin" else Refusal(403, "forbidden", "admin clients only")
    if rule.kind == "audit":
        if principal.role not in AUDIT_READERS:
            return Refusal(403, "forbidden", "the audit log is readable by admin and regulator clients only")
        return None
    if rule.kind == "export":
        if principal.role not in AUDIT_READERS or not principal.permissions.allows("*", "r"):
            return Refusal(403, "forbidden", "bulk export is for admin and regulator clients with system/*.rs; "
                                             "other clients search what they may see")
        return None
    if rule.kind == "ingest":
        if not principal.permissions.allows_any("c"):
            return Refusal(403, "forbidden", f"a {principal.role} client cannot send messages (no create scope)")
        return None
    if rule.kind == "fhir-system":
        letters = "rs" if rule.interaction == "history" else "cud"
        if not any(principal.permissions.allows_any(letter) for letter in letters):
            return Refusal(403, "forbidden", f"the token's scopes ({principal.permissions.scope_text()}) do not "
                                             f"allow {rule.interaction}")
        return None
    resource_type = (view_args or {}).get("resource_type", "*")
    if resource_type == "AuditEvent":
        if rule.interaction not in ("read", "vread", "history", "search") or principal.role not in AUDIT_READERS:
            return Refusal(403, "forbidden", "AuditEvents are written by the gateway only and read by admin "
                                             "and regulator clients")
        return None
    letter = LETTER[rule.interaction or "read"]
    if rule.interaction == "validate":
        allowed = any(principal.permissions.allows(resource_type, l) for l in "cru")
    else:
        allowed = principal.permissions.allows(resource_type, letter)
    if not allowed:
        return Refusal(403, "forbidden", f"the token's scopes ({principal.permissions.scope_text()}) do not allow "
                                         f"{rule.interaction} on {resource_type}")
    return None
