"""The ownership matrix (issue 12): for every resource type the gateway stores, every other
organization's client tries to create, update, conditionally update, cancel, complete, delete and
link to hospital A's record through the FHIR API (plain, transaction and batch) and, for orders,
through HL7 over HTTP and MLLP. Only the owner, and operators (admin writes; admin replays act for
the original sender), change it; the documented exceptions (gateway/store/access.py) move an
order's status and nothing else. A's records are compared exactly after every attempt."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.ingest.mllp_handler import mllp_server
from gateway.security.mllp_binding import MllpBinding
from gateway.store.access import PER_ORGANIZATION_COPIES
from tests.conftest import ack_segment, post_hl7, sample
from tests.security.ownership_fixtures import BOAO, HMU, PHARMACY, Sender, owned_by, owner_of, sent_by_hmu

VALIDATION = Path(__file__).resolve().parents[1] / "data" / "validation"
BASE = "https://lecheng-fhir-gateway.org/fhir/sid"


def _example(path: str) -> dict:
    resource = orjson.loads((VALIDATION / path).read_bytes())
    resource.pop("id", None)
    resource.pop("meta", None)
    return resource


def _identifier(value: str) -> list[dict]:
    return [{"system": f"{BASE}/BOAO_SUPER_HOSPITAL/matrix", "value": value}]


EXAMPLES = {
    "AdverseEvent": lambda: _example("adverseevent/valid-adverse-event.json"),
    "Device": lambda: _example("device/valid-udi-device.json"),
    "Medication": lambda: _example("other/medication.json"),
    "MedicationDispense": lambda: _example("medicationdispense/valid-dispense.json"),
    "MedicationRequest": lambda: _example("medicationrequest/valid-domestic-drug.json"),
    "Organization": lambda: _example("other/organization.json"),
    "Patient": lambda: _example("patient/valid-patient.json"),
    "Practitioner": lambda: _example("other/practitioner.json"),
    "Encounter": lambda: {"resourceType": "Encounter", "status": "finished", "identifier": _identifier("V-1"),
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}},
    "Observation": lambda: {"resourceType": "Observation", "status": "final", "identifier": _identifier("OBS-1"),
                            "code": {"text": "device check"}},
    "Procedure": lambda: {"resourceType": "Procedure", "status": "completed", "identifier": _identifier("PR-1"),
                          "subject": {"display": "a patient"}},
    "PractitionerRole": lambda: {"resourceType": "PractitionerRole", "active": True, "identifier": _identifier("ROLE-1")},
    "Provenance": lambda: {"resourceType": "Provenance", "recorded": "2026-03-15T09:30:00+08:00",
                           "target": [{"display": "a message"}], "agent": [{"who": {"display": "BOAO_HIS"}}]},
    "Location": lambda: _example("other/location.json"),
    "DeviceUseStatement": lambda: {"resourceType": "DeviceUseStatement", "status": "completed",
                                   "identifier": _identifier("DUS-1"), "subject": {"display": "a patient"},
                                   "device": {"display": "a device"}},
}
ATTACKERS = [("hospital", HMU), ("pharmacy", PHARMACY), ("prescription-center", "HAINAN_EPC"), ("regulator", "HNMPA")]
FHIR = "application/fhir+json"


def test_the_matrix_covers_every_type_the_gateway_stores(gateway):
    assert set(gateway.store.params.resource_types()) == set(EXAMPLES) | {"Person"}   # Person: test_shared_patient


def _attempts(record: dict) -> list[tuple[str, str, str, dict | None]]:
    """(action, method, path, body) of every FHIR write at ``record``."""
    rtype, rid = record["resourceType"], record["id"]
    body = {k: v for k, v in record.items() if k != "meta"}
    content = {k: v for k, v in body.items() if k != "id"}
    changed = body | ({"text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}})
    attempts = [
        ("create with its identifiers", "POST", f"/fhir/{rtype}", content),
        ("update", "PUT", f"/fhir/{rtype}/{rid}", changed),
        ("delete", "DELETE", f"/fhir/{rtype}/{rid}", None),
        ("transaction update", "POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": changed, "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}]}),
        ("transaction delete", "POST", "/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": f"{rtype}/{rid}"}}]}),
        ("batch update", "POST", "/fhir", {"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": changed, "request": {"method": "PUT", "url": f"{rtype}/{rid}"}}]}),
        ("link (a Provenance naming it)", "POST", "/fhir/Provenance", {
            "resourceType": "Provenance", "recorded": "2026-03-15T09:30:00+08:00",
            "target": [{"reference": f"{rtype}/{rid}"}], "agent": [{"who": {"display": "B"}}]}),
    ]
    identifier = record.get("identifier")
    first = identifier[0] if isinstance(identifier, list) and identifier else identifier
    if isinstance(first, dict) and first.get("system"):
        query = f"identifier={first['system']}|{first['value']}"
        attempts.append(("conditional update", "PUT", f"/fhir/{rtype}?{query}", content))
        attempts.append(("transaction conditional update", "POST", "/fhir", {
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": content, "request": {"method": "PUT", "url": f"{rtype}?{query}"}}]}))
    if "status" in record:
        for action, status in (("cancel", "cancelled" if rtype != "Device" else "inactive"),
                               ("complete", "completed" if rtype != "Device" else "inactive")):
            attempts.append((action, "PUT", f"/fhir/{rtype}/{rid}", body | {"status": status}))
    return attempts


def _refused_or_own_copy(gateway, response, attacker_org: str, resource_type: str, action: str) -> bool:
    """True when the attempt was refused; a 201 (or 200) must be the attacker's own per-organization copy."""
    status = response.status_code
    if status == 200 and response.get_json().get("type") in ("batch-response", "transaction-response"):
        for entry in response.get_json()["entry"]:
            if entry["response"]["status"].split()[0] in ("200", "201"):
                own_type, own_id = entry["response"]["location"].split("/")[:2]
                assert own_type in PER_ORGANIZATION_COPIES, (action, own_type)
                assert owner_of(gateway, own_type, own_id) == attacker_org
            elif entry["response"]["status"].split()[0] not in ("403", "404", "409"):
                return False
        return True
    if status in (200, 201):            # a per-organization copy: the attacker's own, made or updated
        created = response.get_json()
        assert created["resourceType"] in PER_ORGANIZATION_COPIES, (action, created["resourceType"])
        assert owner_of(gateway, created["resourceType"], created["id"]) == attacker_org
        return True
    if status in (403, 404, 409):
        assert response.get_json()["resourceType"] == "OperationOutcome"
        return True
    return False


@pytest.mark.parametrize("resource_type", sorted(EXAMPLES))
def test_only_the_owner_changes_a_record_through_the_fhir_api(resource_type, client_as, client, gateway):
    boao = client_as("hospital", BOAO)
    created = boao.post(f"/fhir/{resource_type}", json=EXAMPLES[resource_type](), content_type=FHIR)
    assert created.status_code == 201, created.get_json()
    record = created.get_json()
    routed_to_center = False
    for role, organization in ATTACKERS:
        attacker = client_as(role, organization)
        for action, method, path, body in _attempts(record):
            before = owned_by(gateway, BOAO)
            response = attacker.open(path, method=method, json=body, content_type=FHIR)
            if role == "prescription-center" and resource_type == "MedicationRequest":
                after = owned_by(gateway, BOAO)
                if after != before:
                    # the exception: an order routed to the prescription center may change status, only that
                    routed_to_center = True
                    versions = after[("MedicationRequest", record["id"])]
                    assert len(versions) == len(before[("MedicationRequest", record["id"])]) + 1, action
                    assert {k: v for k, v in versions[-1][2].items() if k not in ("meta", "status")} == \
                        {k: v for k, v in versions[-2][2].items() if k not in ("meta", "status")}, action
                    assert owner_of(gateway, resource_type, record["id"]) == BOAO
                    assert {k: v for k, v in after.items() if k[0] != "MedicationRequest"} == \
                        {k: v for k, v in before.items() if k[0] != "MedicationRequest"}
                    continue
            assert _refused_or_own_copy(gateway, response, organization, resource_type, action), \
                (role, action, response.status_code, response.get_data(as_text=True)[:300])
            assert owned_by(gateway, BOAO) == before, (role, action)
    if resource_type == "MedicationRequest":
        assert routed_to_center                     # routes.yaml sends every order to the center
    # the owner, then an operator, change it; it stays A's, with A's tag only
    current = boao.get(f"/fhir/{resource_type}/{record['id']}").get_json()
    mine = {k: v for k, v in current.items() if k != "meta"} | {"language": "zh-CN"}
    assert boao.put(f"/fhir/{resource_type}/{record['id']}", json=mine, content_type=FHIR).status_code == 200
    operated = mine | {"language": "en"}
    assert client.put(f"/fhir/{resource_type}/{record['id']}", json=operated, content_type=FHIR).status_code == 200
    stored = boao.get(f"/fhir/{resource_type}/{record['id']}").get_json()
    assert stored["language"] == "en" and owner_of(gateway, resource_type, record["id"]) == BOAO
    assert [t["code"] for t in stored["meta"]["tag"]] == [BOAO]


# ------------------------------------------------------------------ HL7: orders over HTTP and MLLP

ORDER_MESSAGES = {
    "update": lambda raw: raw.replace(b"ORC|NW|", b"ORC|XO|"),
    "cancel": lambda _raw: sample("rde_o11_cancel.hl7"),
    "complete": lambda _raw: sample("rds_o13_dispense.hl7"),
    "create (a renewal naming it)": lambda raw: raw.replace(b"ORC|NW|BSH-RX-0001^BOAO_HIS", b"ORC|RF|BSH-RX-0001^BOAO_HIS"),
}


def _as(organization: str, raw: bytes) -> bytes:
    msh, rest = raw.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[3] = organization.encode()
    return b"|".join(fields) + b"\r" + rest


@pytest.fixture(params=["http", "mllp"])
def transport(request):
    return request.param


@pytest.mark.parametrize("role, organization", [("hospital", HMU), ("pharmacy", PHARMACY)])
@pytest.mark.parametrize("action", sorted(ORDER_MESSAGES))
def test_only_the_owner_changes_an_order_through_hl7(action, role, organization, transport, app, gateway, client_as,
                                                     client):
    boao = client_as("hospital", BOAO)
    _response, segments = post_hl7(boao, sample("rde_o11_new_imported.hl7"))
    assert ack_segment(segments, "MSA")[1] == "AA"
    before = owned_by(gateway, BOAO)
    http_client = client_as(role, organization)
    if transport == "http":
        sender = Sender("http", http_client)
        server = None
    else:
        app.extensions["security"].clients.add(f"{organization.lower()}-engine", organization, role, secret=False,
                                               mllp_addresses=["127.0.0.1"])
        server = mllp_server(gateway.pipeline, "127.0.0.1", 0, MllpBinding(app.extensions["security"]))
        server.start()
        sender = Sender("mllp", http_client, server.address)
    try:
        raw = _as(organization, ORDER_MESSAGES[action](sample("rde_o11_new_imported.hl7")))
        segments = sender.send(raw)
    finally:
        if server is not None:
            server.stop()
    code = ack_segment(segments, "MSA")[1]
    order = client.get("/fhir/MedicationRequest?identifier=BSH-RX-0001").get_json()["entry"][0]["resource"]
    if role == "pharmacy" and action == "complete":
        # the exception: a registered pharmacy's dispense moves the order's status, nothing else
        assert code == "AA", segments
        assert order["status"] == "completed" and owner_of(gateway, "MedicationRequest", order["id"]) == BOAO
        previous = before[("MedicationRequest", order["id"])][-1][2]
        assert {k: v for k, v in order.items() if k not in ("meta", "status")} == \
            {k: v for k, v in previous.items() if k not in ("meta", "status")}
        return
    assert code == "AE", segments
    err = ack_segment(segments, "ERR")
    assert err[2].startswith("ORC^") and "belongs to another organization; nothing was stored" in err[8], err
    assert owned_by(gateway, BOAO) == before
    assert owned_by(gateway, organization) == {}


def test_an_admin_replay_of_the_owner_s_message_succeeds_for_the_owner(client, client_as, gateway):
    boao = client_as("hospital", BOAO)
    post_hl7(boao, sample("rde_o11_new_imported.hl7"))
    _response, segments = post_hl7(client, sample("rde_o11_cancel.hl7"))       # admin, MSH-4 = A
    assert ack_segment(segments, "MSA")[1] == "AA"
    order = boao.get("/fhir/MedicationRequest?identifier=BSH-RX-0001").get_json()["entry"][0]["resource"]
    assert order["status"] == "cancelled" and owner_of(gateway, "MedicationRequest", order["id"]) == BOAO
    # and an admin sending B's message acts for B: it cannot touch A's order either
    _response, segments = post_hl7(client, sent_by_hmu(sample("rde_o11_new_imported.hl7"), (b"ORC|NW|", b"ORC|XO|")))
    assert ack_segment(segments, "MSA")[1] == "AE"
