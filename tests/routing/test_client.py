"""The destination HTTP client (``responses`` stands in for the server here) and the retry policy."""
from __future__ import annotations

import random
import time
from email.utils import formatdate

import orjson
import pytest
import responses
from responses import matchers

from gateway.routing.client import DestinationClient, retry_after_seconds
from gateway.routing.delivery import backoff_delay
from gateway.routing.routes import Auth, Destination, RetryPolicy

BASE = "https://epc.example.cn/fhir"
ORDER = {"resourceType": "MedicationRequest", "id": "mr1", "meta": {"versionId": "2"},
         "identifier": [{"system": "https://lecheng-fhir-gateway.org/fhir/sid/BOAO_HIS/placer", "value": "BSH-RX-0001"}],
         "subject": {"reference": "Patient/p1"}}
PATIENT = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1"}}


def client(**kwargs) -> DestinationClient:
    return DestinationClient(Destination(name="epc", base_url=BASE, **kwargs), "https://gw.example.cn/fhir")


def test_resource_mode_puts_by_id_or_conditionally_on_the_business_identifier():
    by_id = client().build(ORDER, "update", [], "epc/MedicationRequest/mr1/_history/2")
    assert (by_id.method, by_id.url, by_id.body) == ("PUT", f"{BASE}/MedicationRequest/mr1", ORDER)
    assert by_id.headers["X-Delivery-Key"] == "epc/MedicationRequest/mr1/_history/2"
    conditional = client(identity="identifier").build(ORDER, "create", [], "k")
    assert conditional.url == (f"{BASE}/MedicationRequest?identifier=https%3A%2F%2Flecheng-fhir-gateway.org%2Ffhir"
                               "%2Fsid%2FBOAO_HIS%2Fplacer%7CBSH-RX-0001")
    deletion = client().build(ORDER, "delete", [], "k")
    assert (deletion.method, deletion.body) == ("DELETE", None)


def test_transaction_mode_sends_the_resource_and_what_it_references():
    outgoing = client(mode="transaction").build(ORDER, "update", [PATIENT], "k")
    assert (outgoing.method, outgoing.url) == ("POST", BASE)
    bundle = outgoing.body
    assert bundle["type"] == "transaction"
    assert [(e["request"]["method"], e["request"]["url"], e["fullUrl"]) for e in bundle["entry"]] == [
        ("PUT", "Patient/p1", "https://gw.example.cn/fhir/Patient/p1"),
        ("PUT", "MedicationRequest/mr1", "https://gw.example.cn/fhir/MedicationRequest/mr1")]
    assert client(mode="transaction").build(ORDER, "update", [PATIENT], "k").body["id"] == bundle["id"]


def test_message_mode_sends_a_message_bundle_with_its_header_first():
    bundle = client(mode="message").build(ORDER, "update", [PATIENT], "epc/MedicationRequest/mr1/_history/2").body
    header = bundle["entry"][0]["resource"]
    assert bundle["type"] == "message"
    assert header["resourceType"] == "MessageHeader"
    assert header["eventCoding"]["code"] == "medicationrequest-update"
    assert header["focus"] == [{"reference": "https://gw.example.cn/fhir/MedicationRequest/mr1"}]
    assert header["destination"] == [{"name": "epc", "endpoint": BASE}]
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["MessageHeader", "MedicationRequest", "Patient"]
    # the same delivery sent again is the same message (receivers drop a message id they have seen)
    again = client(mode="message").build(ORDER, "update", [PATIENT], "epc/MedicationRequest/mr1/_history/2").body
    assert again["id"] == bundle["id"] and again["entry"][0]["resource"]["id"] == header["id"]


@responses.activate
@pytest.mark.parametrize("status, retryable", [(500, True), (502, True), (503, True), (408, True), (409, True),
                                               (429, True), (400, False), (404, False), (410, False), (422, False)])
def test_which_answers_are_worth_another_try(status, retryable):
    responses.put(f"{BASE}/MedicationRequest/mr1", status=status, json={
        "resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "no"}]})
    c = client()
    result = c.send(c.build(ORDER, "update", [], "k"))
    assert (result.ok, result.status, result.retryable, result.error) == (False, status, retryable, f"HTTP {status}: no")


@responses.activate
def test_retry_after_seconds_and_dates():
    responses.put(f"{BASE}/MedicationRequest/mr1", status=429, headers={"Retry-After": "7"})
    c = client()
    assert c.send(c.build(ORDER, "update", [], "k")).retry_after == 7.0
    now = time.time()
    assert retry_after_seconds(formatdate(now + 120, usegmt=True), now) == pytest.approx(120, abs=1)
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_network_errors_are_retryable():
    c = DestinationClient(Destination(name="epc", base_url="http://127.0.0.1:9/fhir", timeout=0.5))
    result = c.send(c.build(ORDER, "update", [], "k"))
    assert (result.ok, result.status, result.retryable) == (False, None, True)
    assert result.error.startswith("ConnectionError: ")


@responses.activate
def test_bearer_token_is_sent():
    responses.put(f"{BASE}/MedicationRequest/mr1", status=200,
                  match=[matchers.header_matcher({"Authorization": "Bearer tok"})])
    c = client(auth=Auth("bearer", token="tok"))
    assert c.send(c.build(ORDER, "update", [], "k")).ok


OAUTH = Auth("oauth2", token_url="https://epc.example.cn/oauth/token", client_id="gw", client_secret="sec",
             scope="system/MedicationRequest.write")


@responses.activate
def test_oauth2_client_credentials_token_is_cached_until_it_expires():
    token = responses.post(OAUTH.token_url, json={"access_token": "t1", "token_type": "Bearer", "expires_in": 3600})
    put = responses.put(f"{BASE}/MedicationRequest/mr1", status=200,
                        match=[matchers.header_matcher({"Authorization": "Bearer t1"})])
    c = client(auth=OAUTH)
    for _ in range(3):
        assert c.send(c.build(ORDER, "update", [], "k")).ok
    assert (token.call_count, put.call_count) == (1, 3)
    form = dict(pair.split("=") for pair in responses.calls[0].request.body.split("&"))
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == "system%2FMedicationRequest.write"


@responses.activate
def test_oauth2_token_near_expiry_is_renewed_and_a_401_gets_one_fresh_token():
    responses.post(OAUTH.token_url, json={"access_token": "short", "token_type": "Bearer", "expires_in": 10})
    responses.post(OAUTH.token_url, json={"access_token": "t2", "token_type": "Bearer", "expires_in": 3600})
    responses.post(OAUTH.token_url, json={"access_token": "t3", "token_type": "Bearer", "expires_in": 3600})
    responses.put(f"{BASE}/MedicationRequest/mr1", status=200,
                  match=[matchers.header_matcher({"Authorization": "Bearer short"})])
    responses.put(f"{BASE}/MedicationRequest/mr1", status=401,
                  match=[matchers.header_matcher({"Authorization": "Bearer t2"})])
    responses.put(f"{BASE}/MedicationRequest/mr1", status=200,
                  match=[matchers.header_matcher({"Authorization": "Bearer t3"})])
    c = client(auth=OAUTH)
    assert c.send(c.build(ORDER, "update", [], "k")).ok   # "short" is still good for 10 s
    assert c.send(c.build(ORDER, "update", [], "k")).ok   # now within the renewal margin: t2 fetched; it is
    tokens = [call.request.headers.get("Authorization")   # refused (revoked), so t3 is fetched and sent once
              for call in responses.calls if call.request.method == "PUT"]
    assert tokens == ["Bearer short", "Bearer t2", "Bearer t3"]


@responses.activate
def test_refused_client_credentials_are_not_retried():
    responses.post(OAUTH.token_url, status=401, json={"error": "invalid_client"})
    c = client(auth=OAUTH)
    result = c.send(c.build(ORDER, "update", [], "k"))
    assert (result.ok, result.retryable) == (False, False)
    assert result.error.startswith("token endpoint refused the client credentials: invalid_client")


def test_backoff_doubles_with_jitter_up_to_the_cap_and_follows_retry_after():
    policy = RetryPolicy(max_attempts=10, max_age=3600, backoff_base=2, backoff_cap=60)
    rand = random.Random(7)
    for attempts, ceiling in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (6, 60), (9, 60)]:
        delays = [backoff_delay(policy, attempts, rand=rand) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4          # jittered, not one value
    assert backoff_delay(policy, 1, retry_after=30) == 30
    assert backoff_delay(policy, 1, retry_after=10 ** 6) == 3600
