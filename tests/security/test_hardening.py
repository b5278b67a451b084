"""Hostile input against a real server on loopback: bodies too large, XML bombs, deep JSON, floods;
the gateway refuses each with an OperationOutcome and stays healthy; no stack trace ever leaves."""
from __future__ import annotations

import pytest
import requests

from conftest import served
from gateway import create_app
from tests.security.credentials import http_token, register

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<prescription><patient>&lol9;</patient></prescription>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"""
DEEP_XML = b"<a>" * 100_000 + b"</a>" * 100_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("hardening")), "TESTING": True,
                      "RATE_LIMIT": "400 per minute"})
    register(app, "hardening-admin", "admin")
    with served(app) as base:
        yield app, base, {"Authorization": f"Bearer {http_token(base, 'hardening-admin')}"}


def _healthy(base: str) -> None:
    assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}


def _issue(response) -> dict:
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    return response.json()["issue"][0]


def test_a_50_mb_body_is_refused_with_413_before_it_is_read(server):
    app, base, auth = server
    body = b"x" * (50 * 1024 * 1024)
    response = requests.post(f"{base}/hl7v2", data=body, headers=auth, timeout=30)
    assert response.status_code == 413
    assert "at most 10485760 bytes" in _issue(response)["diagnostics"]
    _healthy(base)


@pytest.mark.parametrize("path, content_type", [
    ("/ingest/hospital_prescription", "application/xml"),
    ("/fhir/Patient", "application/fhir+xml"),
])
@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["billion-laughs", "external-entity"])
def test_xml_with_a_dtd_is_refused_with_400(server, path, content_type, document):
    app, base, auth = server
    response = requests.post(f"{base}{path}", data=document, headers={**auth, "Content-Type": content_type},
                             timeout=10)
    assert response.status_code == 400
    assert _issue(response)["diagnostics"] == "XML with a DTD or entity declarations is refused (no DOCTYPE, no ENTITY)"
    assert b"root:" not in response.content
    _healthy(base)


def test_a_100000_deep_xml_bomb_is_refused_with_400(server):
    app, base, auth = server
    response = requests.post(f"{base}/fhir/Patient", data=DEEP_XML,
                             headers={**auth, "Content-Type": "application/fhir+xml"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    _healthy(base)


def test_json_nested_deeper_than_the_limit_is_refused_with_400(server):
    app, base, auth = server
    body = '{"resourceType":"Patient","extension":' + '[{"extension":' * 200 + "[]" + "}]" * 200 + "}"
    response = requests.post(f"{base}/fhir/Patient", data=body,
                             headers={**auth, "Content-Type": "application/fhir+json"}, timeout=10)
    assert response.status_code == 400
    assert _issue(response)["diagnostics"] == "the JSON body is nested deeper than 100 levels"
    _healthy(base)


def test_an_internal_error_answers_500_without_a_stack_trace_or_path_and_is_audited(server, monkeypatch):
    app, base, auth = server
    store = app.extensions["gateway"].store

    def broken(*args, **kwargs):
        raise RuntimeError("boom in /work/main/gateway/store/secret.py")
    monkeypatch.setattr(store, "read", broken)
    response = requests.get(f"{base}/fhir/Patient/p1", headers=auth, timeout=10)
    assert response.status_code == 500
    assert b"/work" not in response.content and b"Traceback" not in response.content
    assert _issue(response)["diagnostics"] == "The gateway hit an internal error; it has been logged"
    monkeypatch.undo()
    events = requests.get(f"{base}/fhir/AuditEvent?entity=Patient/p1", headers=auth, timeout=10).json()
    assert events["entry"][0]["resource"]["outcome"] == "8"


def test_a_client_over_its_rate_limit_gets_429_and_others_are_not_held_up(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "RATE_LIMIT": "3 per minute"})
    register(app, "greedy", "regulator")
    register(app, "patient-one", "regulator")
    greedy, other = app.test_client(), app.test_client()
    from tests.security.credentials import token_for
    greedy.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token_for(greedy, 'greedy')}"
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token_for(other, 'patient-one')}"
    statuses = [greedy.get("/fhir/Patient").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = greedy.get("/fhir/Patient")
    assert refused.get_json()["issue"][0]["code"] == "throttled" and refused.headers["Retry-After"]
    assert other.get("/fhir/Patient").status_code == 200
    security = app.extensions["security"]
    throttled, total, _ = security.audit.search([("agent", "greedy"), ("outcome", "4")], 10, None)
    assert total == 2 and "rate limit" in throttled[0]["outcomeDesc"]


DEEP_JSON = ('{"resourceType":"Patient","extension":' + '[{"extension":' * 200 + "[]" + "}]" * 200 + "}").encode()


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None])
@pytest.mark.parametrize("path", ["/fhir/Patient", "/ingest/online_clinic_prescription", "/hl7v2"])
def test_deep_json_is_refused_whatever_content_type_it_claims(server, path, content_type):
    app, base, auth = server
    headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
    response = requests.post(f"{base}{path}", data=DEEP_JSON, headers=headers, timeout=10)
    assert response.status_code == 400
    assert _issue(response)["diagnostics"] == "the JSON body is nested deeper than 100 levels"


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None])
@pytest.mark.parametrize("document", [BILLION_LAUGHS, b"\xef\xbb\xbf" + EXTERNAL_ENTITY,
                                      b"\xff\xfe" + EXTERNAL_ENTITY.decode().encode("utf-16-le")],
                         ids=["billion-laughs", "utf8-bom", "utf16"])
def test_a_dtd_is_refused_whatever_content_type_it_claims(server, content_type, document):
    app, base, auth = server
    headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
    response = requests.post(f"{base}/ingest/hospital_prescription", data=document, headers=headers, timeout=10)
    assert response.status_code == 400
    assert _issue(response)["code"] == "security"


def _logged(app, response):
    return app.extensions["gateway"].message_log.get(int(response.headers["X-Message-Log-Id"]))


def test_bodies_refused_before_parsing_are_logged_raw_and_audited_with_their_log_id(server):
    app, base, auth = server
    dtd = requests.post(f"{base}/ingest/hospital_prescription", data=BILLION_LAUGHS,
                        headers={**auth, "Content-Type": "text/plain"}, timeout=10)
    deep = requests.post(f"{base}/fhir/Patient", data=DEEP_JSON, headers=auth, timeout=10)
    big = requests.post(f"{base}/hl7v2", data=b"MSH|^~\\&|HIS|BOAO_SUPER_HOSPITAL|" + b"x" * (11 * 1024 * 1024),
                        headers=auth, timeout=30)
    assert (dtd.status_code, deep.status_code, big.status_code) == (400, 400, 413)
    assert _logged(app, dtd).raw == BILLION_LAUGHS and _logged(app, dtd).status == "rejected"
    assert _logged(app, dtd).format == "hospital_prescription"
    assert _logged(app, deep).raw == DEEP_JSON and _logged(app, deep).detail["errors"] == [
        "the JSON body is nested deeper than 100 levels"]
    head = _logged(app, big)
    assert head.format == "hl7v2" and head.raw.startswith(b"MSH|^~\\&|HIS|BOAO_SUPER_HOSPITAL|")
    assert len(head.raw) == 4096 and head.detail["http_status"] == 413
    events = requests.get(f"{base}/fhir/AuditEvent?outcome=4&_count=100", headers=auth, timeout=10).json()
    described = {e["resource"].get("outcomeDesc") for e in events["entry"]}
    assert "XML with a DTD or entity declarations is refused (no DOCTYPE, no ENTITY)" in described


def test_an_anonymous_refused_body_is_answered_but_not_logged(server):
    app, base, auth = server
    before = len(app.extensions["gateway"].message_log.recent(1000))
    response = requests.post(f"{base}/hl7v2", data=DEEP_JSON, timeout=10)
    assert response.status_code == 400 and "X-Message-Log-Id" not in response.headers
    assert len(app.extensions["gateway"].message_log.recent(1000)) == before
