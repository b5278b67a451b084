"""A small receiving FHIR server on loopback, for the demo, the routing tests and the routing bench.

It plays a destination the way real ones behave where it matters for delivery: ``PUT Type/id`` and
conditional ``PUT Type?identifier=system|value`` (create once, update after; the same version sent
again makes no new version, as a no-op update does in HAPI and most servers), transaction Bundles of such PUTs, and
FHIR messages (``POST $process-message``, a message id seen before is acknowledged, not processed
again). It keeps everything it was sent, so a test counts exact deliveries, and it can be told to
fail (500, 429 with Retry-After, 400), to be slow, or to go away and come back on the same port.
Any path prefix works as a base (``/fhir``, ``/device-registry/fhir``), each a separate store.
It also issues OAuth2 client-credentials tokens at ``/oauth/token``.
"""
from __future__ import annotations

import base64
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from flask import Flask, Response, request
from werkzeug.serving import WSGIRequestHandler, make_server


@dataclass
class Faults:
    status: int | None = None          # answer this status instead of working
    times: int = -1                    # ... this many times (-1: until cleared)
    retry_after: str | None = None     # with this Retry-After header
    delay: float = 0.0                 # seconds to wait before answering
    only: str | None = None            # fail only requests whose path or body mentions this


@dataclass
class ReceiverState:
    received: list[dict] = field(default_factory=list)                  # every request, in arrival order
    versions: dict[tuple[str, str, str], list[dict]] = field(default_factory=dict)   # (base, type, id) -> contents
    by_identifier: dict[tuple[str, str, str], str] = field(default_factory=dict)     # (base, type, token) -> id
    messages: set[str] = field(default_factory=set)
    tokens: dict[str, float] = field(default_factory=dict)               # issued token -> expiry
    token_requests: int = 0


class Receiver:
    def __init__(self, name: str = "receiver", *, clients: dict[str, str] | None = None,
                 token_lifetime: int = 3600, require_token: bool = False):
        self.name = name
        self.clients = clients or {}
        self.token_lifetime = token_lifetime
        self.require_token = require_token
        self.state = ReceiverState()
        self.faults = Faults()
        self.lock = threading.Lock()
        self.app = self._make_app()
        self._server = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0) -> "Receiver":
        self._server = make_server("127.0.0.1", port or self.port, self.app, threaded=True,
                                   request_handler=_KeepAliveHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"receiver-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go away: the port refuses connections until :meth:`start` again (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def url(self, base: str = "/fhir") -> str:
        return f"http://127.0.0.1:{self.port}{base}"

    def fail(self, status: int, times: int = -1, retry_after: str | None = None, only: str | None = None) -> None:
        with self.lock:
            self.faults = Faults(status, times, retry_after, self.faults.delay, only)

    def slow(self, seconds: float) -> None:
        with self.lock:
            self.faults.delay = seconds

    def heal(self) -> None:
        with self.lock:
            self.faults = Faults()

    # ------------------------------------------------------------------ what it got

    def stored_versions(self, res_type: str, res_id: str, base: str = "/fhir") -> list[str]:
        """Gateway versionIds of the contents stored for one resource, in the order they were stored."""
        with self.lock:
            return [c.get("meta", {}).get("versionId") for c in self.state.versions.get((base, res_type, res_id), [])]

    def resources(self, base: str | None = None) -> dict[tuple[str, str, str], list[dict]]:
        with self.lock:
            return {k: list(v) for k, v in self.state.versions.items() if base is None or k[0] == base}

    def requests(self) -> list[dict]:
        with self.lock:
            return list(self.state.received)

    def reset(self) -> None:
        with self.lock:
            self.state = ReceiverState()

    # ------------------------------------------------------------------ the server

    def _make_app(self) -> Flask:
        app = Flask(f"receiver-{self.name}")

        @app.post("/oauth/token")
        def token():
            return self._token()

        @app.route("/<path:path>", methods=["GET", "PUT", "POST", "DELETE"])
        def fhir(path: str):
            return self._fhir("/" + path)

        return app

    def _token(self) -> Response:
        client_id, secret = request.form.get("client_id"), request.form.get("client_secret")
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        with self.lock:
            self.state.token_requests += 1
            if request.form.get("grant_type") != "client_credentials" or self.clients.get(client_id) != secret:
                return _json({"error": "invalid_client"}, 401)
            token = secrets.token_urlsafe(16)
            self.state.tokens[token] = time.time() + self.token_lifetime
        return _json({"access_token": token, "token_type": "Bearer", "expires_in": self.token_lifetime,
                      "scope": request.form.get("scope", "")}, 200)

    def _fhir(self, path: str) -> Response:
        with self.lock:
            faults = self.faults
            concerned = faults.only is None or faults.only in request.path or faults.only.encode() in request.data
            if faults.status is not None and faults.times != 0 and concerned:
                if faults.times > 0:
                    faults.times -= 1
                fail = (faults.status, faults.retry_after)
            else:
                fail = None
            delay = faults.delay
        if delay:
            time.sleep(delay)
        body = orjson.loads(request.data) if request.data else None
        record = {"method": request.method, "path": path, "query": request.query_string.decode(),
                  "body": body, "authorization": request.headers.get("Authorization"),
                  "delivery_key": request.headers.get("X-Delivery-Key"),
                  "worker": request.headers.get("X-Gateway-Worker"), "at": time.time()}
        with self.lock:
            self.state.received.append(record)
            if self.require_token and not self._authorized(record["authorization"]):
                return _outcome(401, "security", "a valid bearer token is required")
        if fail is not None:
            response = _outcome(fail[0], "transient" if fail[0] >= 500 or fail[0] == 429 else "invalid",
                                f"{self.name} told to answer {fail[0]}")
            if fail[1] is not None:
                response.headers["Retry-After"] = fail[1]
            return response
        with self.lock:
            return self._apply(path, request.method, record["query"], body)

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        expiry = self.state.tokens.get(header[7:])
        return expiry is not None and expiry > time.time()

    def _apply(self, path: str, method: str, query: str, body: Any) -> Response:
        parts = path.rstrip("/").split("/")
        if method == "POST" and parts[-1] == "$process-message":
            return self._message("/".join(parts[:-1]), body)
        if method == "POST" and isinstance(body, dict) and body.get("resourceType") == "Bundle":
            return self._transaction("/".join(parts), body)
        if method == "PUT" and parts[-1][:1].isupper() and query.startswith("identifier="):
            base, res_type = "/".join(parts[:-1]), parts[-1]
            status = self._put_by_identifier(base, res_type, unquote(query[len("identifier="):]), body)
            return _json(body, status)
        if method == "PUT" and len(parts) >= 3 and parts[-2][:1].isupper():
            base, res_type, res_id = "/".join(parts[:-2]), parts[-2], parts[-1]
            return _json(body, self._put(base, res_type, res_id, body))
        if method == "DELETE" and len(parts) >= 3:
            self.state.versions.setdefault(("/".join(parts[:-2]), parts[-2], parts[-1]), []).append(
                {"resourceType": parts[-2], "id": parts[-1], "deleted": True})
            return Response(status=204)
        return _outcome(400, "not-supported", f"{method} {path} is not something this receiver does")

    def _put(self, base: str, res_type: str, res_id: str, resource: dict) -> int:
        history = self.state.versions.setdefault((base, res_type, res_id), [])
        if history and _content(history[-1]) == _content(resource):
            return 200                            # no-op update: no new version
        history.append(resource)
        return 201 if len(history) == 1 else 200

    def _put_by_identifier(self, base: str, res_type: str, token: str, resource: dict) -> int:
        res_id = self.state.by_identifier.setdefault((base, res_type, token), resource["id"])
        return self._put(base, res_type, res_id, resource)

    def _transaction(self, base: str, bundle: dict) -> Response:
        out = []
        for entry in bundle.get("entry") or []:
            url = (entry.get("request") or {}).get("url", "")
            resource = entry.get("resource")
            if "?identifier=" in url:
                res_type, token = url.split("?identifier=", 1)
                status = self._put_by_identifier(base, res_type, unquote(token), resource)
            else:
                res_type, res_id = url.split("/", 1)
                status = self._put(base, res_type, res_id, resource)
            out.append({"response": {"status": str(status)}})
        return _json({"resourceType": "Bundle", "type": "transaction-response", "entry": out}, 200)

    def _message(self, base: str, bundle: dict) -> Response:
        if bundle.get("type") != "message" or not bundle.get("entry"):
            return _outcome(400, "invalid", "not a message Bundle")
        header = bundle["entry"][0].get("resource") or {}
        if header.get("resourceType") != "MessageHeader":
            return _outcome(400, "invalid", "the first entry of a message must be its MessageHeader")
        if bundle["id"] not in self.state.messages:
            self.state.messages.add(bundle["id"])
            for entry in bundle["entry"][1:]:
                resource = entry["resource"]
                self._put(base, resource["resourceType"], resource["id"], resource)
        return _json({"resourceType": "Bundle", "type": "message", "entry": [{"resource": {
            "resourceType": "MessageHeader", "response": {"identifier": header.get("id"), "code": "ok"}}}]}, 200)


class _KeepAliveHandler(WSGIRequestHandler):
    """HTTP/1.1 with keep-alive, as real FHIR servers answer (werkzeug's default is HTTP/1.0)."""
    protocol_version = "HTTP/1.1"


def _content(resource: dict) -> Any:
    return {k: v for k, v in resource.items() if k != "meta"} | {"v": (resource.get("meta") or {}).get("versionId")}


def _json(body: Any, status: int) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/fhir+json")


def _outcome(status: int, code: str, text: str) -> Response:
    return _json({"resourceType": "OperationOutcome",
                  "issue": [{"severity": "error", "code": code, "diagnostics": text}]}, status)
