"""End to end: HL7 samples in, resources delivered to real receiving FHIR servers on loopback."""
from __future__ import annotations

import time

import orjson
import pytest
from sqlalchemy import select

from gateway.store import schema
from gateway.store.access import with_roles
from tests.conftest import SAMPLES, sample
from tests.routing.conftest import admin_client, fast_routes, wait_until
from tests.security.credentials import register

ROUTED_TYPES = {"MedicationRequest", "MedicationDispense", "AdverseEvent", "Device"}
IMPORTED_DRUGS = "https://lecheng-fhir-gateway.org/fhir/CodeSystem/imported-drug-catalogue"
IMPORTED_DEVICES = "https://lecheng-fhir-gateway.org/fhir/CodeSystem/imported-device-catalogue"
APPROVAL = "https://lecheng-fhir-gateway.org/fhir/StructureDefinition/pilot-zone-approval"
MR_PROFILE = "https://lecheng-fhir-gateway.org/fhir/StructureDefinition/lecheng-medicationrequest"


def expected_places(resource: dict) -> set[tuple[str, str]]:
    """Where the sample routes.yaml must send a resource, written out by hand: (receiver, base)."""
    res_type = resource["resourceType"]
    if res_type in ("MedicationRequest", "MedicationDispense"):
        return {("epc", "/fhir")}
    if res_type == "AdverseEvent":
        serious = any(c.get("code") in ("Serious", "serious") for c in (resource.get("seriousness") or {}).get("coding", []))
        return {("province", "/fhir")} | ({("nmpa", "/fhir")} if serious else set())
    if res_type == "Device":
        imported = any(c.get("system") == IMPORTED_DEVICES for c in (resource.get("type") or {}).get("coding", [])) \
            or any(e.get("url") == APPROVAL for e in resource.get("extension", []))
        return {("province", "/device-registry/fhir")} if imported else set()
    return set()


def stored_resources(gateway) -> list[dict]:
    with gateway.store.engine.connect() as conn:
        rows = conn.execute(select(schema.resources.c.content).where(
            schema.resources.c.res_type.in_(ROUTED_TYPES))).all()
    return [orjson.loads(row.content) for row in rows]


def post(gateway, raw: bytes) -> str:
    """Ingest one message through the real pipeline; returns its MSA segment."""
    ack = gateway.pipeline.ingest(raw).ack.decode("utf-8", "replace")
    return next(line for line in ack.split("\r") if line.startswith("MSA"))


def all_settled(gateway):
    counts = gateway.outbox.counts()
    return counts if counts and set(counts) <= {"delivered", "dead", "held"} else None


def test_samples_reach_their_destinations_and_only_those(receivers, sample_routes_env, make_gateway):
    app, _workers = make_gateway(sample_routes_env)
    gateway, client = app.extensions["gateway"], admin_client(app)
    register(app, "pharmacy-017", "pharmacy")       # HAIKOU_PHARMACY_017's dispense completes the order
    order = ["rde_o11_new_imported.hl7", "rde_o11_cancel.hl7"]       # the cancel needs its order first
    paths = [SAMPLES / name for name in order] + sorted(p for p in SAMPLES.glob("*.hl7") if p.name not in order)
    for path in paths:
        with with_roles(app.extensions["security"].clients.roles_of):
            msa = post(gateway, path.read_bytes())
        mapped = gateway.mappings.for_message(_message_type(path.read_bytes())) is not None
        assert msa.split("|")[1] == ("AA" if mapped else "AR"), (path.name, msa)
    resources = stored_resources(gateway)
    assert {r["resourceType"] for r in resources} >= {"MedicationRequest"}
    wait_until(lambda: all_settled(gateway))
    assert gateway.outbox.counts() == {"delivered": len(gateway.outbox.list(limit=1000))}

    expected: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for resource in resources:
        for place in expected_places(resource):
            expected.setdefault(place, set()).add((resource["resourceType"], resource["id"]))
            # a report travels with the suspect devices it names (the regulator resolves its references)
            for suspect in resource.get("suspectEntity", []) if resource["resourceType"] == "AdverseEvent" else []:
                ref = suspect["instance"]["reference"]
                if ref.startswith("Device/"):
                    expected[place].add(("Device", ref.split("/")[1]))
    for name, receiver in receivers.items():
        for base in ("/fhir", "/device-registry/fhir"):
            got = {(t, i) for (_b, t, i) in receiver.resources(base) if t in ROUTED_TYPES}
            assert got == expected.get((name, base), set()), (name, base)
    # the cancel made version 2 of the first order: both versions went to the EPC, in order
    cancelled = next(r for r in resources if r["resourceType"] == "MedicationRequest" and r["status"] == "cancelled")
    assert receivers["epc"].stored_versions("MedicationRequest", cancelled["id"]) == ["1", "2"]
    # the EPC destination uses OAuth2 client credentials: one token for every delivery
    assert receivers["epc"].state.token_requests == 1
    assert all(r["authorization"].startswith("Bearer ") for r in receivers["epc"].requests())


def _message_type(raw: bytes) -> str:
    fields = raw.split(b"\r", 1)[0].decode("utf-8", "replace").split("|")
    parts = fields[8].split("^") if len(fields) > 8 else [""]
    return "^".join(parts[:2])


@pytest.mark.parametrize("mode", ["resource", "transaction", "message"])
def test_destination_down_for_a_while_gets_everything_in_order_once_back(tmp_path, receivers, make_gateway, mode):
    epc = receivers["epc"]
    epc.require_token = False
    epc.stop()                                              # the prescription center goes away
    app, _workers = make_gateway(fast_routes(tmp_path, epc.url(), mode=mode))
    gateway, client = app.extensions["gateway"], admin_client(app)
    for name in ("rde_o11_new_imported.hl7", "rde_o11_two_orders_gb18030.hl7", "rde_o11_cancel.hl7"):
        assert post(gateway, sample(name)).startswith("MSA|AA")
    wait_until(lambda: all(d.attempts >= 2 for d in gateway.outbox.list() if d.version_id == 1))
    assert {d.status for d in gateway.outbox.list()} == {"failed", "pending"}   # v2 waits behind v1
    assert all(d.last_error.startswith("ConnectionError") for d in gateway.outbox.list(status="failed"))

    epc.start()                                             # back, on the same port
    wait_until(lambda: all_settled(gateway))
    assert gateway.outbox.counts() == {"delivered": 4}
    orders = {r["identifier"][0]["value"]: r for r in stored_resources(gateway)}
    assert epc.stored_versions("MedicationRequest", orders["BSH-RX-0001"]["id"]) == ["1", "2"]
    assert epc.stored_versions("MedicationRequest", orders["HMU-RX-1001"]["id"]) == ["1"]
    assert epc.stored_versions("MedicationRequest", orders["HMU-RX-1002"]["id"]) == ["1"]
    assert len(epc.requests()) == 4                          # no duplicates: one request per version
    if mode != "resource":                                   # Bundles carry what the order references
        patient = orders["BSH-RX-0001"]["subject"]["reference"].split("/")
        assert epc.stored_versions(patient[0], patient[1]) == ["1"]


def test_past_the_limit_goes_dead_and_a_replay_after_the_fix_delivers_once(tmp_path, receivers, make_gateway):
    epc = receivers["epc"]
    epc.require_token = False
    epc.fail(500)
    app, _workers = make_gateway(fast_routes(tmp_path, epc.url(), max_attempts=3))
    gateway, client = app.extensions["gateway"], admin_client(app)
    post(gateway, sample("rde_o11_new_imported.hl7"))
    (dead,) = wait_until(lambda: gateway.outbox.list(status="dead"))
    assert (dead.attempts, dead.last_status_code) == (3, 500)
    assert dead.last_error.startswith("gave up after 3 attempt(s)")
    assert "epc told to answer 500" in dead.last_error
    assert len(epc.requests()) == 3

    epc.heal()
    listed = client.get("/admin/deliveries?status=dead").get_json()
    assert [d["id"] for d in listed["deliveries"]] == [dead.id]
    assert listed["deliveries"][0]["lastStatusCode"] == 500
    response = client.post(f"/admin/deliveries/{dead.id}/replay")
    assert response.status_code == 200 and response.get_json()["status"] == "pending"
    wait_until(lambda: gateway.outbox.get(dead.id).status == "delivered")
    assert epc.stored_versions("MedicationRequest", dead.res_id) == ["1"]
    assert len(epc.requests()) == 4
    time.sleep(0.2)                                          # nothing else goes out afterwards
    assert len(epc.requests()) == 4
    again = client.post(f"/admin/deliveries/{dead.id}/replay")
    assert again.status_code == 409
    assert again.get_json()["issue"][0]["diagnostics"] == f"delivery {dead.id} was delivered already"


def test_a_4xx_is_not_retried(tmp_path, receivers, make_gateway):
    epc = receivers["epc"]
    epc.require_token = False
    epc.fail(422)
    app, _workers = make_gateway(fast_routes(tmp_path, epc.url()))
    gateway, client = app.extensions["gateway"], admin_client(app)
    post(gateway, sample("rde_o11_new_imported.hl7"))
    (dead,) = wait_until(lambda: gateway.outbox.list(status="dead"))
    assert (dead.attempts, dead.last_status_code) == (1, 422)
    assert dead.last_error == "HTTP 422: epc told to answer 422"
    time.sleep(0.2)
    assert len(epc.requests()) == 1


def test_retry_after_is_honoured(tmp_path, receivers, make_gateway):
    epc = receivers["epc"]
    epc.require_token = False
    epc.fail(429, times=1, retry_after="1")
    app, _workers = make_gateway(fast_routes(tmp_path, epc.url()))
    gateway, client = app.extensions["gateway"], admin_client(app)
    post(gateway, sample("rde_o11_new_imported.hl7"))
    wait_until(lambda: all_settled(gateway))
    first, second = epc.requests()
    assert second["at"] - first["at"] >= 0.95               # backoff alone would have retried in ~20 ms
    assert gateway.outbox.list()[0].attempts == 2


def test_one_stuck_resource_holds_up_no_other(tmp_path, receivers, make_gateway):
    epc = receivers["epc"]
    epc.require_token = False
    epc.fail(503, only="HMU-RX-1001")                       # the EPC chokes on one order only
    app, _workers = make_gateway(fast_routes(tmp_path, epc.url()))
    gateway, client = app.extensions["gateway"], admin_client(app)
    post(gateway, sample("rde_o11_two_orders_gb18030.hl7"))
    post(gateway, sample("rde_o11_new_imported.hl7"))
    post(gateway, sample("rde_o11_cancel.hl7"))
    wait_until(lambda: gateway.outbox.counts().get("delivered") == 3)
    stuck = [d for d in gateway.outbox.list() if d.status != "delivered"]
    assert len(stuck) == 1 and stuck[0].status == "failed" and stuck[0].last_status_code == 503
    orders = {r["identifier"][0]["value"]: r for r in stored_resources(gateway)}
    assert stuck[0].res_id == orders["HMU-RX-1001"]["id"]
    assert epc.stored_versions("MedicationRequest", orders["BSH-RX-0001"]["id"]) == ["1", "2"]


def test_imported_drug_without_approval_is_held_then_released_once(receivers, sample_routes_env, make_gateway):
    app, _workers = make_gateway(sample_routes_env, PROFILE_STRICTNESS=f"{MR_PROFILE}=warning")
    gateway, client = app.extensions["gateway"], admin_client(app)
    without_approval = b"\r".join(s for s in sample("rde_o11_new_imported.hl7").split(b"\r")
                                  if not s.startswith(b"ZLC"))
    ack = gateway.pipeline.ingest(without_approval).ack.decode()
    assert "MSA|AA|BSH20260315000001" in ack
    assert "held for review, not delivered: MedicationRequest/" in ack
    assert gateway.message_log.recent(1)[0].status == "on-hold"
    (held,) = gateway.outbox.list()
    assert (held.status, held.destination) == ("held", "prescription-center")
    assert held.last_error == ("imported drug (HNLC-IMPORT catalogue) ordered without a pilot-zone approval "
                               "(rule imported-drug-without-approval)")
    time.sleep(0.3)
    assert receivers["epc"].requests() == []

    assert client.post(f"/admin/deliveries/{held.id}/replay").status_code == 200   # an operator releases it
    wait_until(lambda: gateway.outbox.get(held.id).status == "delivered")
    assert receivers["epc"].stored_versions("MedicationRequest", held.res_id) == ["1"]
    assert len(receivers["epc"].requests()) == 1


def test_orders_with_approval_and_cancellations_are_not_held(receivers, sample_routes_env, make_gateway):
    app, _workers = make_gateway(sample_routes_env)
    gateway, client = app.extensions["gateway"], admin_client(app)
    post(gateway, sample("rde_o11_new_imported.hl7"))
    post(gateway, sample("rde_o11_cancel.hl7"))
    assert [m.status for m in gateway.message_log.recent(2)] == ["processed", "processed"]
    wait_until(lambda: gateway.outbox.counts() == {"delivered": 2})


def test_too_old_goes_dead_whatever_the_attempt_count(tmp_path, receivers, make_gateway):
    epc = receivers["epc"]
    epc.require_token = False
    epc.fail(503)
    app, _workers = make_gateway(fast_routes(tmp_path, epc.url(), max_attempts=1000, max_age=0.3))
    gateway = app.extensions["gateway"]
    post(gateway, sample("rde_o11_new_imported.hl7"))
    (dead,) = wait_until(lambda: gateway.outbox.list(status="dead"))
    assert 1 <= dead.attempts < 1000 and dead.last_status_code == 503
    assert dead.last_error.startswith(f"gave up after {dead.attempts} attempt(s) over ")
    assert dead.last_error.endswith("last: HTTP 503: epc told to answer 503")


def test_a_held_hospital_document_leaves_its_log_entry_on_hold(tmp_path, receivers, make_gateway):
    """Holds reach the message log for XML/CSV/JSON exports as they do for HL7 (one status per document)."""
    epc = receivers["epc"]
    epc.require_token = False
    hold_json = """
  - name: online-clinic-under-review
    resource: MedicationRequest
    message_type: ["json:*"]
    hold: online clinic prescriptions are reviewed before release
"""
    app, _workers = make_gateway(fast_routes(tmp_path, epc.url(), extra=hold_json))
    gateway, client = app.extensions["gateway"], admin_client(app)
    response = client.post("/ingest/online_clinic_prescription",
                           data=sample("online_clinic_prescription.json"), content_type="application/json")
    assert response.status_code == 200
    assert gateway.message_log.recent(1)[0].status == "on-hold"
    held = gateway.outbox.list()
    assert [d.status for d in held] == ["held", "held"]

    response = client.post("/ingest/hospital_prescription", data=sample("hospital_prescription.xml"),
                           content_type="application/xml")
    assert response.status_code == 200
    assert gateway.message_log.recent(1)[0].status == "processed"
