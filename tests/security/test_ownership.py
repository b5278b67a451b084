"""Issue 12's reproductions: hospital B (HAINAN_MED_UNIV_HOSP1) tries to change hospital A's
(BOAO_SUPER_HOSPITAL) records with ordinary HL7 over HTTP and MLLP, with documents and with FHIR
writes. Each attack is answered (HL7 AE with ERR at the identifying field, FHIR 403/409 with an
OperationOutcome), and A's records are compared exactly, every version, before and after."""
from __future__ import annotations

import pytest

from gateway.ingest.mllp_handler import mllp_server
from gateway.security.mllp_binding import MllpBinding
from tests.conftest import ack_segment, post_hl7, sample
from tests.security.ownership_fixtures import BOAO, HMU, Sender, owned_by, owner_of, sent_by_hmu

NATIONAL_ID = "46010019900101123X"
PLACER = "https://lecheng-fhir-gateway.org/fhir/sid/BOAO_HIS/placer"
HMU_ORDER = ((b"BSH-RX-0001^BOAO_HIS", b"HMU-RX-0001^HMU_HIS"), (b"BSH-GRP-0001^BOAO_HIS", b"HMU-GRP-0001^HMU_HIS"))


@pytest.fixture
def boao(client_as):
    return client_as("hospital", BOAO)


@pytest.fixture
def hmu(client_as):
    return client_as("hospital", HMU)


@pytest.fixture
def victim(boao, gateway):
    """Hospital A's order BSH-RX-0001 and its patient, sent by A; the exact picture of what A owns."""
    _response, segments = post_hl7(boao, sample("rde_o11_new_imported.hl7"))
    assert ack_segment(segments, "MSA")[1] == "AA", segments
    picture = owned_by(gateway, BOAO)
    assert {t for t, _i in picture} >= {"MedicationRequest", "Patient", "Provenance"}
    return picture


@pytest.fixture(params=["http", "mllp"])
def attacker(request, app, gateway, hmu):
    """Hospital B's client, sending over HTTP or over an MLLP connection bound to it."""
    if request.param == "http":
        yield Sender("http", hmu)
        return
    app.extensions["security"].clients.add("hmu-engine", HMU, "hospital", secret=False,
                                           mllp_addresses=["127.0.0.1"])
    server = mllp_server(gateway.pipeline, "127.0.0.1", 0, MllpBinding(app.extensions["security"]))
    server.start()
    try:
        yield Sender("mllp", hmu, server.address)
    finally:
        server.stop()


def _order(client, number: str = "BSH-RX-0001") -> dict:
    bundle = client.get(f"/fhir/MedicationRequest?identifier={number}").get_json()
    assert bundle["total"] == 1, bundle
    return bundle["entry"][0]["resource"]


def _refused_at_orc2(segments, number: str) -> None:
    assert ack_segment(segments, "MSA")[1] == "AE", segments
    err = ack_segment(segments, "ERR")
    assert err[2].startswith("ORC^") and err[2].split("^")[2] == "2", err        # ORC-2, the order number
    assert err[3].startswith("205^")
    assert f"order number {number} belongs to another organization; nothing was stored" in err[8]


# ------------------------------------------------------------------ HL7 over HTTP and MLLP

def test_b_cancelling_as_itself_a_s_order_gets_ae_at_orc2_and_nothing_changes(victim, attacker, gateway, hmu, client):
    segments = attacker.send(sent_by_hmu(sample("rde_o11_cancel.hl7")))
    _refused_at_orc2(segments, "BSH-RX-0001")
    assert owned_by(gateway, BOAO) == victim
    assert owned_by(gateway, HMU) == {}                  # nothing of the message was stored
    order = _order(client)
    assert order["status"] == "active" and order["meta"]["versionId"] == "1"
    # B neither reads A's order or patient, nor finds A's patient by national ID
    assert hmu.get(f"/fhir/MedicationRequest/{order['id']}").status_code == 404
    assert hmu.get(f"/fhir/{order['subject']['reference']}").status_code == 404
    assert hmu.get(f"/fhir/Patient?identifier={NATIONAL_ID}").get_json()["total"] == 0
    logged = gateway.message_log.get(max(e.id for e in gateway.message_log.recent(5)))
    assert logged.sender_facility == HMU and logged.status == "error"


def test_b_completing_a_s_order_with_an_rds_gets_ae_and_nothing_changes(victim, attacker, gateway, client):
    segments = attacker.send(sent_by_hmu(sample("rds_o13_dispense.hl7")))
    _refused_at_orc2(segments, "BSH-RX-0001")
    assert owned_by(gateway, BOAO) == victim
    assert owned_by(gateway, HMU) == {}
    assert _order(client)["status"] == "active"


def test_b_updating_a_s_order_with_a_full_rde_gets_ae_and_nothing_changes(victim, attacker, gateway):
    segments = attacker.send(sent_by_hmu(sample("rde_o11_new_imported.hl7"), (b"ORC|NW|", b"ORC|XO|")))
    _refused_at_orc2(segments, "BSH-RX-0001")
    assert owned_by(gateway, BOAO) == victim
    assert owned_by(gateway, HMU) == {}


def test_b_naming_a_s_mrn_gets_its_own_patient_and_a_s_demographics_stay(victim, attacker, gateway, hmu, client):
    """The patient model (mappings/README.md): B's message makes B's Patient; A's is not touched."""
    raw = sent_by_hmu(sample("rde_o11_new_imported.hl7"), *HMU_ORDER,
                      (b"\xe7\x8e\x8b^\xe5\xb0\x8f\xe6\x98\x8e^^^^^L||19900101|M", b"Wong^Siu Ming^^^^^L||19910202|F"))
    segments = attacker.send(raw)
    assert ack_segment(segments, "MSA")[1] == "AA", segments
    assert owned_by(gateway, BOAO) == victim
    a_patient = next(v[-1][2] for (t, _i), v in victim.items() if t == "Patient")
    theirs = _order(hmu, "HMU-RX-0001")
    assert theirs["subject"]["reference"] != f"Patient/{a_patient['id']}"
    b_patient = hmu.get(f"/fhir/{theirs['subject']['reference']}").get_json()
    assert b_patient["name"][0]["family"] == "Wong" and b_patient["gender"] == "female"
    assert owner_of(gateway, "Patient", b_patient["id"]) == HMU
    assert hmu.get(f"/fhir/Patient/{a_patient['id']}").status_code == 404
    stored_a = client.get(f"/fhir/Patient/{a_patient['id']}").get_json()
    assert (stored_a["name"][0]["family"], stored_a["birthDate"], stored_a["gender"]) == ("王", "1990-01-01", "male")


def test_a_s_conditional_put_on_b_s_order_number_is_409_and_b_is_never_dead_ended(attacker, boao, gateway, client):
    """The 205 dead end: A claims B's order number through FHIR; B's next update must still work."""
    segments = attacker.send(sent_by_hmu(sample("rde_o11_new_imported.hl7"), *HMU_ORDER))
    assert ack_segment(segments, "MSA")[1] == "AA", segments
    b_order = _order(client, "HMU-RX-0001")
    before = owned_by(gateway, HMU)
    hmu_placer = "https://lecheng-fhir-gateway.org/fhir/sid/HMU_HIS/placer"
    claim = {**{k: v for k, v in b_order.items() if k not in ("id", "meta", "encounter")},
             "priority": "stat"}
    url = f"/fhir/MedicationRequest?identifier={hmu_placer}|HMU-RX-0001"
    # as in the issue, with B's Patient as subject: a record A may not see is not linked to (403)
    response = boao.put(url, json=claim, content_type="application/fhir+json")
    assert response.status_code == 403, response.get_json()
    assert "may not see" in response.get_json()["issue"][0]["diagnostics"]
    # with a subject of its own: B's order number is B's (409)
    response = boao.put(url, json={**claim, "subject": {"display": "A's patient"}, "requester": {"display": "A's doctor"}},
                        content_type="application/fhir+json")
    assert response.status_code == 409, response.get_json()
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "conflict"
    assert "HMU-RX-0001" in outcome["issue"][0]["diagnostics"]
    assert owned_by(gateway, HMU) == before and owned_by(gateway, BOAO) == {}
    # B's next message for its own order is applied, never answered AE 205
    segments = attacker.send(sent_by_hmu(sample("rde_o11_cancel.hl7"), *HMU_ORDER[:1]))
    assert ack_segment(segments, "MSA")[1] == "AA", segments
    cancelled = _order(client, "HMU-RX-0001")
    assert cancelled["id"] == b_order["id"] and cancelled["status"] == "cancelled"
    assert cancelled["meta"]["versionId"] == "2"


def test_an_admin_replay_acts_for_the_original_sender(victim, client, gateway):
    """An operator re-sending A's cancel (MSH-4 A) changes A's order: the replay acts for A."""
    _response, segments = post_hl7(client, sample("rde_o11_cancel.hl7"))
    assert ack_segment(segments, "MSA")[1] == "AA", segments
    order = _order(client)
    assert order["status"] == "cancelled" and order["meta"]["versionId"] == "2"
    assert owner_of(gateway, "MedicationRequest", order["id"]) == BOAO
    assert order["meta"]["tag"] == [{"system": "https://lecheng-fhir-gateway.org/fhir/sid/sending-organization",
                                     "code": BOAO}]


def test_a_registered_pharmacy_s_dispense_completes_the_order_and_changes_only_its_status(victim, client_as, client,
                                                                                         gateway):
    """The deliberate exception: a pharmacy's dispense moves the order's status, nothing else, and the
    order stays A's (its tag too: the pharmacy gains no sight of A's other records)."""
    pharmacy = client_as("pharmacy")
    _response, segments = post_hl7(pharmacy, sample("rds_o13_dispense.hl7"))
    assert ack_segment(segments, "MSA")[1] == "AA", segments
    order = _order(client)
    before = next(v[-1][2] for (t, _i), v in victim.items() if t == "MedicationRequest")
    assert order["status"] == "completed" and order["meta"]["versionId"] == "2"
    assert {k: v for k, v in order.items() if k not in ("meta", "status")} == \
        {k: v for k, v in before.items() if k not in ("meta", "status")}
    assert owner_of(gateway, "MedicationRequest", order["id"]) == BOAO
    assert [t["code"] for t in order["meta"]["tag"]] == [BOAO]
    a_patient = next(v[-1][2] for (t, _i), v in victim.items() if t == "Patient")
    assert owned_by(gateway, BOAO)[("Patient", a_patient["id"])] == victim[("Patient", a_patient["id"])]


# ------------------------------------------------------------------ documents

def test_b_s_document_naming_a_s_device_and_report_numbers_gets_b_s_own_records(client_as, gateway):
    """Documents carry the sending hospital in their identifiers (and the bound client must be that
    hospital), so B can only make its own records; a Device (a per-organization copy) stays A's."""
    ruijin = client_as("hospital", "BOAO_RUIJIN_HOSPITAL")
    register = sample("device_first_use.csv")
    header, ruijin_row = register.split(b"\n")[0], register.split(b"\n")[1]
    response = ruijin.post("/ingest/device_first_use", data=header + b"\n" + ruijin_row + b"\n",
                           content_type="application/octet-stream")
    assert response.status_code == 200, response.get_json()
    before = owned_by(gateway, "BOAO_RUIJIN_HOSPITAL")
    attack = header + b"\n" + ruijin_row.replace(b"BOAO_RUIJIN_HOSPITAL", HMU.encode()) + b"\n"
    hmu = client_as("hospital", HMU)
    response = hmu.post("/ingest/device_first_use", data=attack, content_type="application/octet-stream")
    assert response.status_code == 200, response.get_json()
    assert owned_by(gateway, "BOAO_RUIJIN_HOSPITAL") == before
    devices = hmu.get("/fhir/Device").get_json()
    assert devices["total"] == 1 and owner_of(gateway, "Device", devices["entry"][0]["resource"]["id"]) == HMU
    # and B sending the document as A is refused before anything is stored
    response = hmu.post("/ingest/device_first_use", data=header + b"\n" + ruijin_row + b"\n",
                        content_type="application/octet-stream")
    assert response.status_code == 422
    assert owned_by(gateway, "BOAO_RUIJIN_HOSPITAL") == before


def test_b_s_xml_prescription_never_touches_a_s_records(client_as, gateway):
    sanya = client_as("hospital", "SANYA_PEOPLES_HOSPITAL")
    xml = sample("hospital_prescription.xml")
    assert sanya.post("/ingest/hospital_prescription", data=xml,
                      content_type="application/octet-stream").status_code == 200
    before = owned_by(gateway, "SANYA_PEOPLES_HOSPITAL")
    hmu = client_as("hospital", HMU)
    response = hmu.post("/ingest/hospital_prescription", data=xml.replace(b"SANYA_PEOPLES_HOSPITAL", HMU.encode()),
                        content_type="application/octet-stream")
    assert response.status_code == 200, response.get_json()
    assert owned_by(gateway, "SANYA_PEOPLES_HOSPITAL") == before
    assert hmu.get("/fhir/MedicationRequest").get_json()["total"] == 1


# ------------------------------------------------------------------ FHIR writes

def _fhir_attacks(order: dict) -> list[tuple[str, str, str, dict | None, tuple[int, ...]]]:
    """(what, method, path, body, statuses it may get): every FHIR write route at A's order."""
    changed = {**order, "status": "cancelled"}
    changed.pop("meta")
    linked = {k: v for k, v in changed.items() if k != "id"}            # naming A's patient and doctor
    new = {k: v for k, v in linked.items() if k != "encounter"} | {"subject": {"display": "B's patient"},
                                                                    "requester": {"display": "B's doctor"}}
    placer = f"{PLACER}|BSH-RX-0001"
    entry_put = {"resource": changed, "request": {"method": "PUT", "url": f"MedicationRequest/{order['id']}"}}
    entry_cond = {"resource": new, "request": {"method": "PUT", "url": f"MedicationRequest?identifier={placer}"}}
    entry_post = {"resource": new, "request": {"method": "POST", "url": "MedicationRequest"}}
    entry_delete = {"request": {"method": "DELETE", "url": f"MedicationRequest/{order['id']}"}}
    return [
        ("create with A's order number", "POST", "/fhir/MedicationRequest", new, (409,)),
        ("create linked to A's patient", "POST", "/fhir/MedicationRequest",
         linked | {"identifier": [{**i, "system": i["system"].replace("BOAO", "HMU"), "value": "HMU-" + i["value"]}
                                  for i in order["identifier"]]}, (403,)),
        ("update", "PUT", f"/fhir/MedicationRequest/{order['id']}", changed, (403,)),
        ("conditional update", "PUT", f"/fhir/MedicationRequest?identifier={placer}", new, (409,)),
        ("delete", "DELETE", f"/fhir/MedicationRequest/{order['id']}", None, (403,)),
        ("transaction update", "POST", "/fhir", {"resourceType": "Bundle", "type": "transaction",
                                                 "entry": [entry_put]}, (403,)),
        ("transaction conditional", "POST", "/fhir", {"resourceType": "Bundle", "type": "transaction",
                                                      "entry": [entry_cond]}, (409,)),
        ("transaction create", "POST", "/fhir", {"resourceType": "Bundle", "type": "transaction",
                                                 "entry": [entry_post]}, (409,)),
        ("transaction delete", "POST", "/fhir", {"resourceType": "Bundle", "type": "transaction",
                                                 "entry": [entry_delete]}, (403, 404)),
    ]


@pytest.mark.parametrize("index", range(9))
def test_every_fhir_write_route_at_a_s_order_is_refused_and_changes_nothing(victim, hmu, client, gateway, index):
    order = _order(client)
    what, method, path, body, statuses = _fhir_attacks(order)[index]
    response = hmu.open(path, method=method, json=body, content_type="application/fhir+json")
    assert response.status_code in statuses, (what, response.status_code, response.get_json())
    if response.status_code >= 400:
        assert response.get_json()["resourceType"] == "OperationOutcome"
    assert owned_by(gateway, BOAO) == victim, what
    assert owned_by(gateway, HMU) == {}, what


def test_a_batch_of_attacks_refuses_each_entry_and_changes_nothing(victim, hmu, client, gateway):
    order = _order(client)
    entries = []
    for _what, method, path, body, _statuses in _fhir_attacks(order):
        if path == "/fhir":
            entries += body["entry"]
        else:
            request = {"method": method, "url": path.removeprefix("/fhir/")}
            entries.append({"request": request, **({"resource": body} if body else {})})
    response = hmu.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                        content_type="application/fhir+json")
    assert response.status_code == 200
    statuses = [e["response"]["status"] for e in response.get_json()["entry"]]
    assert all(s.split()[0] in ("403", "404", "409") for s in statuses), statuses
    assert owned_by(gateway, BOAO) == victim
    assert owned_by(gateway, HMU) == {}


def test_writing_a_version_never_widens_who_reads_it(victim, boao, hmu, client_as, client):
    """The owner's own update, an operator's update and a pharmacy's dispense keep one tag: A's."""
    order = _order(client)
    changed = {k: v for k, v in order.items() if k != "meta"} | {"priority": "urgent"}
    assert client.put(f"/fhir/MedicationRequest/{order['id']}", json=changed,
                      content_type="application/fhir+json").status_code == 200
    stored = _order(client)
    assert [t["code"] for t in stored["meta"]["tag"]] == [BOAO]
    assert hmu.get(f"/fhir/MedicationRequest/{order['id']}").status_code == 404
    assert boao.get(f"/fhir/MedicationRequest/{order['id']}").status_code == 200


def test_b_s_dispense_waiting_for_an_order_number_is_never_linked_to_a_s_order(boao, hmu, gateway, client):
    """"Link": a hospital's dispense naming an order number nobody has sent yet waits; when A then
    sends that order, A's message does not link (nor otherwise change) B's record, and B's record
    does not reach A's order. A pharmacy's waiting dispense is linked (tests/ingest/test_reports_over_http.py)."""
    rds = sent_by_hmu(sample("rds_o13_dispense.hl7"), (b"BSH-RX-0001^BOAO_HIS", b"BSH-RX-0009^BOAO_HIS"))
    _response, segments = post_hl7(hmu, rds)
    assert ack_segment(segments, "MSA")[1] == "AE" and ack_segment(segments, "ERR")[3].startswith("204^")
    waiting = owned_by(gateway, HMU)
    assert any(t == "MedicationDispense" for t, _i in waiting)
    order = sample("rde_o11_new_imported.hl7").replace(b"BSH-RX-0001^BOAO_HIS", b"BSH-RX-0009^BOAO_HIS")
    _response, segments = post_hl7(boao, order)
    assert ack_segment(segments, "MSA")[1] == "AA", segments
    assert not any("is linked now" in "|".join(s) for s in segments if s[0] == "ERR")
    assert owned_by(gateway, HMU) == waiting
    assert _order(client, "BSH-RX-0009")["meta"]["versionId"] == "1"
