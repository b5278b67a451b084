"""HTTP to a destination's FHIR server: build the request its mode asks for, send it, classify the answer.

Every request is idempotent at the receiver, so a retry (or a redelivery after a crash) never
duplicates: ``resource`` mode PUTs ``Type/id`` (or conditionally on the business identifier,
``PUT Type?identifier=system|value``, which creates once and updates after); ``transaction`` mode
sends a transaction Bundle of such PUTs; ``message`` mode sends a message Bundle whose id is derived
from the delivery, so a resend is recognisably the same message.

Outcomes: 2xx delivered; network errors, timeouts, 5xx, 408, 409 and 429 are worth another try
(``Retry-After`` honoured); any other 4xx will not get better by retrying, so it goes to the dead
letters at once with the server's diagnostics.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import orjson
import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from gateway.routing.routes import Auth, Destination

RETRYABLE_STATUS = frozenset({408, 409, 429})
FHIR_JSON = "application/fhir+json"
MESSAGE_EVENTS = "https://lecheng-fhir-gateway.org/fhir/CodeSystem/message-events"
BUNDLE_NAMESPACE = uuid.UUID("6f0f7f0e-5a43-4d51-9c43-3c6f1c1de0a5")
TOKEN_MARGIN = 30.0       # seconds before expiry a cached token is renewed


@dataclass(frozen=True)
class SendResult:
    ok: bool
    status: int | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None


@dataclass(frozen=True)
class Outgoing:
    method: str
    url: str
    body: dict | None
    headers: dict


class ClientCredentials:
    """OAuth2 client-credentials token for one destination, fetched with authlib and cached until
    shortly before it expires; shared by all worker threads."""

    def __init__(self, auth: Auth, timeout: float):
        self.auth = auth
        self.timeout = timeout
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.time() >= self._expires_at - TOKEN_MARGIN:
                session = OAuth2Session(self.auth.client_id, self.auth.client_secret, scope=self.auth.scope or None)
                try:
                    token = session.fetch_token(self.auth.token_url, grant_type="client_credentials",
                                                timeout=self.timeout)
                finally:
                    session.close()
                self._token = token["access_token"]
                expires_at = token.get("expires_at")
                self._expires_at = float(expires_at) if expires_at else time.time() + 300
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None


class DestinationClient:
    def __init__(self, destination: Destination, gateway_base: str = "urn:lecheng-gateway"):
        self.destination = destination
        self.gateway_base = gateway_base.rstrip("/")
        self._local = threading.local()
        self._credentials = (ClientCredentials(destination.auth, destination.timeout)
                             if destination.auth.type == "oauth2" else None)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            # proxies from the environment resolved once, not by scanning os.environ on every request
            session.proxies = requests.utils.get_environ_proxies(self.destination.base_url)
            session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            session.trust_env = False
        return session

    # ------------------------------------------------------------------ requests

    def build(self, resource: dict, action: str, related: list[dict], delivery_key: str,
              worker: str = "") -> Outgoing:
        """The request delivering one resource version (``related``: what it references, for Bundles).
        ``X-Delivery-Key`` names the version and destination, ``X-Gateway-Worker`` who sent it (for
        the receiver's logs)."""
        dest = self.destination
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "X-Delivery-Key": delivery_key}
        if worker:
            headers["X-Gateway-Worker"] = worker
        if dest.mode == "resource":
            if action == "delete":
                return Outgoing("DELETE", f"{dest.base_url}/{self._target(resource)}", None, headers)
            return Outgoing("PUT", f"{dest.base_url}/{self._target(resource)}", resource, headers)
        if dest.mode == "transaction":
            entries = [self._entry(r, "update") for r in related]
            entries.append(self._entry(resource, action))
            bundle = {"resourceType": "Bundle", "id": str(uuid.uuid5(BUNDLE_NAMESPACE, delivery_key)),
                      "type": "transaction", "entry": entries}
            return Outgoing("POST", dest.base_url, bundle, headers)
        return Outgoing("POST", f"{dest.base_url}/$process-message",
                        self._message(resource, action, related, delivery_key), headers)

    def _target(self, resource: dict) -> str:
        """``Type/id``, or ``Type?identifier=system|value`` for conditional writes."""
        if self.destination.identity == "identifier":
            ident = next((i for i in resource.get("identifier") or []
                          if isinstance(i, dict) and i.get("system") and i.get("value")), None)
            if ident is not None:
                token = f"{ident['system']}|{ident['value']}"
                return f"{resource['resourceType']}?identifier={quote(token, safe='')}"
        return f"{resource['resourceType']}/{resource['id']}"

    def _full_url(self, resource: dict) -> str:
        return f"{self.gateway_base}/{resource['resourceType']}/{resource['id']}"

    def _entry(self, resource: dict, action: str) -> dict:
        target = self._target(resource)
        if action == "delete":
            return {"request": {"method": "DELETE", "url": target}}
        return {"fullUrl": self._full_url(resource), "resource": resource, "request": {"method": "PUT", "url": target}}

    def _message(self, resource: dict, action: str, related: list[dict], delivery_key: str) -> dict:
        event = f"{resource['resourceType'].lower()}-{action}"
        header = {
            "resourceType": "MessageHeader",
            "id": str(uuid.uuid5(BUNDLE_NAMESPACE, "header:" + delivery_key)),
            "eventCoding": {"system": MESSAGE_EVENTS, "code": event},
            "destination": [{"name": self.destination.name, "endpoint": self.destination.base_url}],
            "source": {"name": "Lecheng FHIR gateway", "endpoint": self.gateway_base},
            "focus": [{"reference": self._full_url(resource)}],
        }
        entries = [{"fullUrl": f"urn:uuid:{header['id']}", "resource": header}]
        entries.append({"fullUrl": self._full_url(resource), "resource": resource})
        entries += [{"fullUrl": self._full_url(r), "resource": r} for r in related]
        return {"resourceType": "Bundle", "id": str(uuid.uuid5(BUNDLE_NAMESPACE, delivery_key)),
                "type": "message", "timestamp": _now_instant(), "entry": entries}

    # ------------------------------------------------------------------ sending

    def send(self, outgoing: Outgoing) -> SendResult:
        try:
            response = self._send_once(outgoing)
            if response.status_code == 401 and self._credentials is not None:
                self._credentials.invalidate()          # an expired or revoked token: one fresh try
                response = self._send_once(outgoing)
        except OAuthError as exc:
            return SendResult(False, None, f"token endpoint refused the client credentials: {exc}", retryable=False)
        except requests.Timeout:
            return SendResult(False, None, f"no answer from {outgoing.url} within {self.destination.timeout:g} s",
                              retryable=True)
        except requests.RequestException as exc:
            return SendResult(False, None, f"{type(exc).__name__}: {_short(str(exc))}", retryable=True)
        return classify(response)

    def _send_once(self, outgoing: Outgoing) -> requests.Response:
        headers = dict(outgoing.headers)
        auth = self.destination.auth
        if auth.type == "bearer":
            headers["Authorization"] = f"Bearer {auth.token}"
        elif self._credentials is not None:
            headers["Authorization"] = f"Bearer {self._credentials.token()}"
        data = orjson.dumps(outgoing.body) if outgoing.body is not None else None
        return self._session().request(outgoing.method, outgoing.url, data=data, headers=headers,
                                       timeout=self.destination.timeout, allow_redirects=False)


def classify(response: requests.Response) -> SendResult:
    status = response.status_code
    if 200 <= status < 300:
        return SendResult(True, status)
    retryable = status >= 500 or status in RETRYABLE_STATUS
    return SendResult(False, status, f"HTTP {status}: {_diagnostics(response)}", retryable=retryable,
                      retry_after=retry_after_seconds(response.headers.get("Retry-After")))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _diagnostics(response: requests.Response) -> str:
    """The OperationOutcome's diagnostics when there is one, else the start of the body."""
    text = response.text or response.reason or ""
    try:
        body = orjson.loads(response.content)
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            parts = [i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
                     for i in body.get("issue") or [] if isinstance(i, dict)]
            text = "; ".join(p for p in parts if p) or text
    except orjson.JSONDecodeError:
        pass
    return _short(text)


def _short(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _now_instant() -> str:
    stamp = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"

