"""SMART Backend Services and Bulk Data cases.

SMART: discovery (``.well-known/smart-configuration``), a signed client assertion
(``private_key_jwt``, RS384/ES384) exchanged for a token, assertions that must be refused (expired,
wrong ``aud``, replayed ``jti``), no or a forged token refused, a token narrowed by ``--scope`` (or
``system/<first type>.rs``) unable to read another type or to write, and a short-lived token refused
once it has expired. The client is the vendor's test client: ``--client-id``, ``--private-key`` PEM
and ``--kid`` (its public key registered with the server beforehand).

Bulk Data (https://hl7.org/fhir/uv/bulkdata/): kick-off, polling, the manifest, every NDJSON file
downloaded and every line a valid R4 resource of the file's type, and cancel.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import requests

from conformance.runner import GENERATORS, CaseFailed, CaseResult, CaseSkipped, Exchange, KitContext, _clip

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SMART_SPEC = "https://hl7.org/fhir/smart-app-launch/backend-services.html"
BULK_SPEC = "https://hl7.org/fhir/uv/bulkdata/export.html"


def _post_form(ctx: KitContext, result: CaseResult, url: str, form: dict) -> tuple[int, dict]:
    response = ctx.session.post(url, data=form, timeout=ctx.timeout)
    shown = {k: ("***" if k == "client_assertion" else v) for k, v in form.items()}
    result.exchanges.append(Exchange("POST", url, {"Content-Type": "application/x-www-form-urlencoded"},
                                     json.dumps(shown), response.status_code, dict(response.headers),
                                     _clip(response.text)))
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {}


def _raw_get(ctx: KitContext, result: CaseResult, url: str, token: str | None,
             headers: dict | None = None) -> requests.Response:
    sent = {"Accept": "application/fhir+json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    response = ctx.session.get(url, headers=sent, timeout=ctx.timeout)
    result.exchanges.append(Exchange("GET", url, {k: ("Bearer ***" if k == "Authorization" else v)
                                                  for k, v in sent.items()}, "", response.status_code,
                                     dict(response.headers), _clip(response.text)))
    return response


class SmartClient:
    """The vendor's registered backend client: signs client assertions with its private key."""

    def __init__(self, ctx: KitContext, token_url: str) -> None:
        import jwt  # PyJWT: only needed when a SMART client is given
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        self.jwt = jwt
        self.client_id = ctx.options["client_id"]
        with open(ctx.options["private_key"], "rb") as handle:
            self.key = load_pem_private_key(handle.read(), password=None)
        self.algorithm = "ES384" if isinstance(self.key, ec.EllipticCurvePrivateKey) else "RS384"
        self.kid = ctx.options.get("kid")
        self.token_url = token_url

    def assertion(self, audience: str | None = None, lifetime: int = 240, jti: str | None = None,
                  issued: int | None = None) -> str:
        now = issued if issued is not None else int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": audience or self.token_url,
                  "exp": now + lifetime, "iat": now, "jti": jti or uuid.uuid4().hex}
        headers = {"kid": self.kid} if self.kid else {}
        return self.jwt.encode(claims, self.key, algorithm=self.algorithm, headers=headers)

    def form(self, assertion: str, scope: str | None) -> dict:
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion}
        if scope:
            form["scope"] = scope
        return form


def fetch_token_with_key(fhir_base: str, client_id: str, private_key: str, kid: str | None,
                         scope: str | None, token_url: str | None = None, timeout: float = 15.0) -> str:
    """An access token by SMART Backend Services (private_key_jwt): the kit's own token for a run.
    Raises RuntimeError saying why not."""
    ctx = KitContext(fhir_base, None, None, Path("."), None, timeout)
    ctx.options = {"client_id": client_id, "private_key": private_key, "kid": kid}
    if not token_url:
        response = ctx.session.get(ctx.url(".well-known/smart-configuration"), timeout=timeout)
        if response.status_code != 200:
            raise RuntimeError(f"{ctx.url('.well-known/smart-configuration')} answered {response.status_code}")
        token_url = response.json().get("token_endpoint")
    client = SmartClient(ctx, token_url)
    response = ctx.session.post(token_url, data=client.form(client.assertion(), scope), timeout=timeout)
    if response.status_code != 200 or "access_token" not in response.text:
        raise RuntimeError(f"{token_url} answered {response.status_code}: {response.text[:300]}")
    return response.json()["access_token"]


def smart_configuration(ctx: KitContext, result: CaseResult) -> dict | None:
    url = ctx.url(".well-known/smart-configuration")
    response = _raw_get(ctx, result, url, None, {"Accept": "application/json"})
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def gen_smart_backend(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """SMART Backend Services: discovery, private_key_jwt, refused assertions and tokens, scopes."""
    config = smart_configuration(ctx, result)
    claims_smart = "SMART-on-FHIR" in json.dumps((ctx.capability() or {}).get("rest", [{}])[0].get("security", {}))
    if config is None:
        if claims_smart:
            result.check("smart-configuration is served", False,
                         "the CapabilityStatement claims SMART-on-FHIR but GET .well-known/smart-configuration "
                         "did not answer 200 JSON", spec=f"{SMART_SPEC}#discovery-requirements")
            return
        raise CaseSkipped("the server offers no .well-known/smart-configuration and claims no SMART security")
    spec = "https://hl7.org/fhir/smart-app-launch/conformance.html"
    result.check("smart-configuration names a token_endpoint", bool(config.get("token_endpoint")),
                 "token_endpoint is missing", spec=spec)
    result.check("grant_types_supported includes client_credentials",
                 "client_credentials" in (config.get("grant_types_supported") or []),
                 f"grant_types_supported {config.get('grant_types_supported')}", spec=spec)
    result.check("token_endpoint_auth_methods_supported includes private_key_jwt",
                 "private_key_jwt" in (config.get("token_endpoint_auth_methods_supported") or []),
                 f"token_endpoint_auth_methods_supported {config.get('token_endpoint_auth_methods_supported')}",
                 spec=spec)
    algorithms = config.get("token_endpoint_auth_signing_alg_values_supported") or []
    result.check("signing algorithms include RS384 or ES384", bool({"RS384", "ES384"} & set(algorithms)),
                 f"token_endpoint_auth_signing_alg_values_supported {algorithms}", spec=spec)
    result.check("scopes_supported is listed", bool(config.get("scopes_supported")), "no scopes_supported",
                 level="SHOULD", spec=spec)
    types = [t for t in ctx.types() if "search-type" in ctx.interactions(t)]
    if types:
        response = _raw_get(ctx, result, ctx.url(f"{types[0]}?_count=1"), None)
        result.check(f"a search of {types[0]} without a token is 401", response.status_code == 401,
                     f"GET {types[0]} without Authorization: HTTP {response.status_code}",
                     spec=f"{SMART_SPEC}#access-token")
        response = _raw_get(ctx, result, ctx.url(f"{types[0]}?_count=1"), "forged." + uuid.uuid4().hex + ".token")
        result.check(f"a search of {types[0]} with a forged token is 401", response.status_code == 401,
                     f"GET {types[0]} with a forged token: HTTP {response.status_code}",
                     spec=f"{SMART_SPEC}#access-token")
    if not (ctx.options.get("client_id") and ctx.options.get("private_key") and config.get("token_endpoint")):
        result.skip_check("signed client assertion, refused assertions, scopes",
                          "give --client-id, --private-key (PEM) and --kid of a backend client registered "
                          "with the server")
        return
    client = SmartClient(ctx, config["token_endpoint"])
    scope = ctx.options.get("scope") or (f"system/{types[0]}.rs" if types else "system/*.rs")
    status, body = _post_form(ctx, result, client.token_url, client.form(client.assertion(), scope))
    token = body.get("access_token") if status == 200 else None
    granted = body
    if not result.check("a signed client assertion gets an access token", bool(token),
                        f"POST {client.token_url}: HTTP {status} {body}", spec=f"{SMART_SPEC}#response"):
        return
    result.check("the token response says token_type bearer", str(body.get("token_type", "")).lower() == "bearer",
                 f"token_type {body.get('token_type')!r}", spec=f"{SMART_SPEC}#response")
    result.check("the token response gives expires_in", isinstance(body.get("expires_in"), int),
                 f"expires_in {body.get('expires_in')!r}", spec=f"{SMART_SPEC}#response")
    result.check("the token response gives the granted scope", bool(body.get("scope")),
                 "no scope in the token response", spec=f"{SMART_SPEC}#response")
    refusals = {
        "an expired assertion": client.assertion(issued=int(time.time()) - 900, lifetime=60),
        "an assertion for another audience": client.assertion(audience="https://other.example/token"),
    }
    replayed = client.assertion()
    _post_form(ctx, result, client.token_url, client.form(replayed, scope))
    refusals["a replayed assertion (same jti)"] = replayed
    for what, assertion in refusals.items():
        status, body = _post_form(ctx, result, client.token_url, client.form(assertion, scope))
        result.check(f"{what} is refused", status in (400, 401) and "access_token" not in body,
                     f"{what}: HTTP {status} {json.dumps(body)[:200]}", spec=f"{SMART_SPEC}#signature-verification")
    if types:
        allowed = scope.split()[0].split("/", 1)[-1].split(".")[0]
        target = allowed if allowed in types else types[0]
        response = _raw_get(ctx, result, ctx.url(f"{target}?_count=1"), token)
        result.check(f"the {scope!r} token may search {target}", response.status_code == 200,
                     f"GET {target} with a {scope!r} token: HTTP {response.status_code}", spec=f"{SMART_SPEC}#scopes")
        others = [t for t in types if t != target]
        if allowed != "*" and others:
            response = _raw_get(ctx, result, ctx.url(f"{others[0]}?_count=1"), token)
            result.check(f"the {scope!r} token may not search {others[0]}", response.status_code in (401, 403),
                         f"GET {others[0]} with a {scope!r} token: HTTP {response.status_code}",
                         spec="https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html")
        if "create" in ctx.interactions(target) and not any(c in scope for c in (".c", ".*", "write")):
            response = ctx.session.post(ctx.url(target), data=json.dumps({"resourceType": target}), timeout=ctx.timeout,
                                        headers={"Authorization": f"Bearer {token}",
                                                 "Content-Type": "application/fhir+json"})
            result.exchanges.append(Exchange("POST", ctx.url(target), {"Authorization": "Bearer ***"}, "",
                                             response.status_code, dict(response.headers), _clip(response.text)))
            result.check(f"the read-only {scope!r} token may not create {target}", response.status_code in (401, 403),
                         f"POST {target} with a {scope!r} token: HTTP {response.status_code}",
                         spec="https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html")
        lifetime = granted.get("expires_in") if isinstance(granted.get("expires_in"), int) else None
        wait = float(case.get("max_expiry_wait", 5))
        if lifetime is not None and lifetime <= wait:
            time.sleep(lifetime + 1.5)
            response = _raw_get(ctx, result, ctx.url(f"{target}?_count=1"), token)
            result.check("an expired access token is refused", response.status_code == 401,
                         f"GET {target} {lifetime + 1.5:.1f} s after a token of expires_in {lifetime}: "
                         f"HTTP {response.status_code}", spec=f"{SMART_SPEC}#access-token")
        else:
            result.skip_check("an expired access token is refused",
                              f"tokens live {lifetime} s; the kit waits at most {wait} s")


# ---------------------------------------------------------------------------------------------
# Bulk Data


def _claims_export(ctx: KitContext) -> bool:
    for rest in (ctx.capability() or {}).get("rest", []) or []:
        for operation in rest.get("operation", []) or []:
            if operation.get("name") == "export" or "bulkdata" in str(operation.get("definition", "")):
                return True
    return False


def _kick_off(ctx: KitContext, result: CaseResult, prefer: bool = True) -> requests.Response:
    headers = {"Accept": "application/fhir+json"}
    if prefer:
        headers["Prefer"] = "respond-async"
    if ctx.token:
        headers["Authorization"] = f"Bearer {ctx.token}"
    url = ctx.url("$export")
    response = ctx.session.get(url, headers=headers, timeout=ctx.timeout)
    result.exchanges.append(Exchange("GET", url, {k: ("Bearer ***" if k == "Authorization" else v)
                                                  for k, v in headers.items()}, "", response.status_code,
                                     dict(response.headers), _clip(response.text)))
    return response


def gen_bulk_export(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """Bulk Data system export: kick-off, polling, manifest, NDJSON files, every line valid, cancel."""
    if not _claims_export(ctx):
        raise CaseSkipped("the CapabilityStatement claims no $export operation")
    from conformance.generated import fixtures
    for resource_type in ctx.types()[:3]:
        fixtures(ctx).pair(resource_type)          # something to export
    response = _kick_off(ctx, result, prefer=False)
    result.check("a kick-off without Prefer: respond-async is refused", 400 <= response.status_code < 500,
                 f"$export without Prefer: HTTP {response.status_code}", level="SHOULD",
                 spec=f"{BULK_SPEC}#headers")
    response = _kick_off(ctx, result)
    status_url = response.headers.get("Content-Location")
    if not result.check("kick-off answers 202 Accepted with a Content-Location",
                        response.status_code == 202 and bool(status_url),
                        f"$export: HTTP {response.status_code}, Content-Location {status_url!r}",
                        spec=f"{BULK_SPEC}#response---success"):
        return
    deadline, manifest, polls = time.monotonic() + float(case.get("max_wait", 60)), None, 0
    while time.monotonic() < deadline:
        polls += 1
        poll = _raw_get(ctx, result, status_url, ctx.token)
        if poll.status_code == 202:
            time.sleep(min(float(poll.headers.get("Retry-After", "0.5") or 0.5), 2.0))
            continue
        result.check("the status request ends in 200 with the manifest", poll.status_code == 200,
                     f"GET {status_url}: HTTP {poll.status_code}", spec=f"{BULK_SPEC}#response---complete-status")
        try:
            manifest = poll.json()
        except ValueError:
            manifest = None
        break
    result.notes.append(f"polled the export status {polls} time(s)")
    if not result.check("the manifest is JSON", isinstance(manifest, dict),
                        "no JSON manifest within the time allowed", spec=f"{BULK_SPEC}#response---complete-status"):
        return
    for key, kind in (("transactionTime", str), ("request", str), ("requiresAccessToken", bool), ("output", list)):
        result.check(f"the manifest has {key}", isinstance(manifest.get(key), kind),
                     f"manifest.{key} is {manifest.get(key)!r}", spec=f"{BULK_SPEC}#response---complete-status")
    outputs = manifest.get("output") or []
    lines = 0
    for item in outputs:
        kind, url = item.get("type"), item.get("url")
        token = ctx.token if manifest.get("requiresAccessToken") else None
        response = _raw_get(ctx, result, url, token, {"Accept": "application/fhir+ndjson"})
        if not result.check(f"{kind} file downloads", response.status_code == 200,
                            f"GET {url}: HTTP {response.status_code}", spec=f"{BULK_SPEC}#file-request"):
            continue
        problems = []
        for number, line in enumerate(response.text.splitlines(), 1):
            if not line.strip():
                continue
            lines += 1
            try:
                resource = json.loads(line)
            except ValueError:
                problems.append(f"line {number} is not JSON")
                continue
            if not isinstance(resource, dict) or resource.get("resourceType") != kind:
                problems.append(f"line {number} is not a {kind}")
                continue
            problems.extend(f"line {number} ({kind}/{resource.get('id')}): {p}" for p in _base_problems(ctx, resource))
        result.check(f"every line of the {kind} file is a valid {kind}", not problems,
                     f"{url}: " + "; ".join(problems[:5]), spec=f"{BULK_SPEC}#file-request")
    result.notes.append(f"{len(outputs)} file(s), {lines} line(s)")
    response = _kick_off(ctx, result)
    second = response.headers.get("Content-Location")
    if response.status_code == 202 and second:
        cancel = ctx.session.delete(second, headers={"Authorization": f"Bearer {ctx.token}"} if ctx.token else {},
                                    timeout=ctx.timeout)
        result.exchanges.append(Exchange("DELETE", second, {}, "", cancel.status_code, dict(cancel.headers),
                                         _clip(cancel.text)))
        result.check("cancel (DELETE the status URL) answers 202", cancel.status_code == 202,
                     f"DELETE {second}: HTTP {cancel.status_code}", spec=f"{BULK_SPEC}#bulk-data-delete-request")
        after = _raw_get(ctx, result, second, ctx.token)
        result.check("a cancelled export's status is 404", after.status_code in (404, 410),
                     f"GET {second} after DELETE: HTTP {after.status_code}", level="SHOULD",
                     spec=f"{BULK_SPEC}#bulk-data-delete-request")


def _base_problems(ctx: KitContext, resource: dict) -> list[str]:
    """Base R4 structure problems of one resource (gateway.validation when installed)."""
    try:
        validator, _ = ctx.validator()
    except CaseSkipped:
        return []
    return [f"{i.expression}: {i.diagnostics}" for i in validator.validate(resource, base_only=True)
            if i.severity in ("fatal", "error")]


GENERATORS.update({"smart_backend": gen_smart_backend, "bulk_export": gen_bulk_export})
