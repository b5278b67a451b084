"""Two writers at once, on SQLite and on a real PostgreSQL (issue 13's race table as tests).

Each round releases two requests together through a barrier, on threads of one gateway app, and then
checks the store: one business identifier, one conditional-create match, one message (sender,
MSH-10, content) is one record; two updates of one resource give consecutive versions; a lost
``If-Match`` race is 412; nothing is ever a 500 or an AR. SQLite serialises writers (BEGIN
IMMEDIATE), so these pass there by construction; on PostgreSQL they hold because every write
transaction runs SERIALIZABLE and a conflict re-runs the whole message or request
(``ResourceStore.writing``).
"""
from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from conftest import sample
from gateway.store import schema
from tests.security.credentials import authenticated

ROUNDS = 8
FHIR_JSON = "application/fhir+json"


def together(*calls):
    """Run the calls at the same moment (a barrier), each on its own thread; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait(10)
        return call()
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result(60) for f in [pool.submit(run, c) for c in calls]]


def _count(app, res_type: str) -> int:
    r = schema.resources
    with app.extensions["gateway"].store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(r).where(r.c.res_type == res_type,
                                                                      r.c.deleted.is_(False))).scalar_one()


def _versions(app, res_type: str, res_id: str) -> list[int]:
    v = schema.resource_versions
    with app.extensions["gateway"].store.engine.connect() as conn:
        return sorted(conn.execute(select(v.c.version_id).where(v.c.res_type == res_type,
                                                                v.c.res_id == res_id)).scalars())


def _msa(response) -> str:
    return next(s for s in response.data.decode().split("\r") if s.startswith("MSA")).split("|")[1]


def _rde(order: str, control: str, mrn: str, facility: str = "BOAO_SUPER_HOSPITAL", code: str = "NW") -> bytes:
    raw = sample("rde_o11_new_imported.hl7")
    raw = raw.replace(b"BSH-RX-0001", order.encode()).replace(b"H0012345", mrn.encode())
    raw = raw.replace(b"BSH-RXNUM-0001", f"{order}-RXNUM".encode())
    resident_id = str(uuid.uuid5(uuid.NAMESPACE_OID, mrn).int)[:15]           # one patient, one ID
    raw = raw.replace(b"46010019900101123X", f"46{resident_id}X".encode())
    lines = raw.split(b"\r")
    msh = lines[0].split(b"|")
    msh[9] = control.encode()
    lines[0] = b"|".join(msh)
    raw = b"\r".join(lines).replace(b"|BOAO_SUPER_HOSPITAL|", f"|{facility}|".encode(), 1)
    if code != "NW":
        raw = raw.replace(b"\rORC|NW|", f"\rORC|{code}|".encode())
    return raw


def _post_hl7(test_client, raw: bytes):
    return test_client.post("/hl7v2", data=raw, content_type="x-application/hl7-v2+er7")


def _patient(mrn: str) -> dict:
    return {"resourceType": "Patient", "identifier": [
        {"system": "https://lecheng-fhir-gateway.org/fhir/sid/BOAO_SUPER_HOSPITAL/mrn", "value": mrn}],
        "name": [{"family": "王", "given": ["小明"]}], "gender": "male", "birthDate": "1990-01-01"}


def test_conditional_create_twice_makes_one_patient(both_stores_app):
    admin = authenticated(both_stores_app, "admin")
    for n in range(ROUNDS):
        mrn = f"RACE-CC-{n}"

        def create():
            return admin.post("/fhir/Patient", json=_patient(mrn), content_type=FHIR_JSON,
                              headers={"If-None-Exist": f"identifier={mrn}"})
        answers = together(create, create)
        assert sorted(a.status_code for a in answers) == [200, 201], [a.get_json() for a in answers]
        assert answers[0].get_json()["id"] == answers[1].get_json()["id"]
    assert _count(both_stores_app, "Patient") == ROUNDS


def test_two_puts_of_one_resource_give_consecutive_versions_never_500(both_stores_app):
    admin = authenticated(both_stores_app, "admin")
    for n in range(ROUNDS):
        res_id = f"race-put-{n}"

        def put(given):
            body = {**_patient(f"RACE-PUT-{n}"), "id": res_id, "name": [{"family": "王", "given": [given]}]}
            return lambda: admin.put(f"/fhir/Patient/{res_id}", json=body, content_type=FHIR_JSON)
        answers = together(put("甲"), put("乙"))
        assert sorted(a.status_code for a in answers) == [200, 201], [a.get_json() for a in answers]
        assert _versions(both_stores_app, "Patient", res_id) == [1, 2]


def test_two_deletes_at_once_are_both_204_and_one_delete_version(both_stores_app):
    """The second finds the resource deleted meanwhile: 204 (deleting again changes nothing), never
    a second history entry or a delivery of version "None"."""
    admin = authenticated(both_stores_app, "admin")
    for n in range(ROUNDS):
        created = admin.post("/fhir/Patient", json=_patient(f"RACE-DEL-{n}"), content_type=FHIR_JSON).get_json()
        path = f"/fhir/Patient/{created['id']}"
        answers = together(lambda: admin.delete(path), lambda: admin.delete(path))
        assert [a.status_code for a in answers] == [204, 204], [a.get_data(as_text=True) for a in answers]
        assert _versions(both_stores_app, "Patient", created["id"]) == [1, 2]
        history = admin.get(f"{path}/_history").get_json()
        assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]


def test_if_match_twice_is_200_and_412(both_stores_app):
    admin = authenticated(both_stores_app, "admin")
    for n in range(ROUNDS):
        created = admin.post("/fhir/Patient", json=_patient(f"RACE-IM-{n}"), content_type=FHIR_JSON).get_json()

        def update(given):
            body = {**created, "name": [{"family": "王", "given": [given]}]}
            return lambda: admin.put(f"/fhir/Patient/{created['id']}", json=body, content_type=FHIR_JSON,
                                     headers={"If-Match": 'W/"1"'})
        answers = together(update("甲"), update("乙"))
        assert sorted(a.status_code for a in answers) == [200, 412], [a.get_json() for a in answers]
        assert _versions(both_stores_app, "Patient", created["id"]) == [1, 2]


def test_the_same_message_twice_stores_one_order_and_one_patient(both_stores_app):
    hospital = authenticated(both_stores_app, "hospital")
    for n in range(ROUNDS):
        raw = _rde(f"RACE-DUP-{n}", f"RACE-DUP-MSG-{n}", f"RACE-DUP-MRN-{n}")
        answers = together(lambda: _post_hl7(hospital, raw), lambda: _post_hl7(hospital, raw))
        assert [_msa(a) for a in answers] == ["AA", "AA"], [a.data for a in answers]
        assert answers[0].data.split(b"\r")[1:] == answers[1].data.split(b"\r")[1:]   # the same ACK
    assert _count(both_stores_app, "MedicationRequest") == ROUNDS
    assert _count(both_stores_app, "Patient") == ROUNDS


def test_a_new_hospital_s_first_two_messages_make_one_organization(both_stores_app):
    for n in range(ROUNDS):
        facility = f"RACE_HOSP_{n}"
        hospital = authenticated(both_stores_app, "hospital", facility)
        first = _rde(f"RACE-ORG-{n}-A", f"RACE-ORG-MSG-{n}-A", f"RACE-ORG-MRN-{n}-A", facility)
        second = _rde(f"RACE-ORG-{n}-B", f"RACE-ORG-MSG-{n}-B", f"RACE-ORG-MRN-{n}-B", facility)
        answers = together(lambda: _post_hl7(hospital, first), lambda: _post_hl7(hospital, second))
        assert [_msa(a) for a in answers] == ["AA", "AA"], [a.data for a in answers]
    # each new hospital: one Organization (the sending facility); plus the prescriber's department, if any
    assert _count(both_stores_app, "Organization") == ROUNDS * _organizations_per_message(both_stores_app)
    assert _count(both_stores_app, "MedicationRequest") == 2 * ROUNDS


def _organizations_per_message(app) -> int:
    """How many Organizations one new hospital's first message makes (counted on a quiet store)."""
    r = schema.resources
    with app.extensions["gateway"].store.engine.connect() as conn:
        owners = conn.execute(select(r.c.owner, func.count()).where(r.c.res_type == "Organization")
                              .group_by(r.c.owner)).all()
    per_owner = {count for _owner, count in owners}
    assert len(per_owner) == 1, owners          # every hospital the same number: no duplicate anywhere
    return per_owner.pop()


def test_the_same_placer_number_in_two_messages_is_one_order(both_stores_app):
    hospital = authenticated(both_stores_app, "hospital")
    for n in range(ROUNDS):
        mrn = f"RACE-PLC-MRN-{n}"
        first = _rde(f"RACE-PLC-{n}", f"RACE-PLC-MSG-{n}-A", mrn)
        second = _rde(f"RACE-PLC-{n}", f"RACE-PLC-MSG-{n}-B", mrn).replace(b"300|", b"600|", 1)
        answers = together(lambda: _post_hl7(hospital, first), lambda: _post_hl7(hospital, second))
        assert [_msa(a) for a in answers] == ["AA", "AA"], [a.data for a in answers]
    assert _count(both_stores_app, "MedicationRequest") == ROUNDS
    assert _count(both_stores_app, "Patient") == ROUNDS


def test_two_hl7_updates_of_one_order_are_both_stored_never_ar(both_stores_app):
    hospital = authenticated(both_stores_app, "hospital")
    for n in range(ROUNDS):
        mrn = f"RACE-UPD-MRN-{n}"
        assert _msa(_post_hl7(hospital, _rde(f"RACE-UPD-{n}", f"RACE-UPD-MSG-{n}-0", mrn))) == "AA"
        first = _rde(f"RACE-UPD-{n}", f"RACE-UPD-MSG-{n}-A", mrn, code="XO").replace(b"300|", b"450|", 1)
        second = _rde(f"RACE-UPD-{n}", f"RACE-UPD-MSG-{n}-B", mrn, code="XO").replace(b"300|", b"600|", 1)
        answers = together(lambda: _post_hl7(hospital, first), lambda: _post_hl7(hospital, second))
        assert [_msa(a) for a in answers] == ["AA", "AA"], [a.data for a in answers]
        order_id = hospital.get(f"/fhir/MedicationRequest?identifier=RACE-UPD-{n}").get_json()["entry"][0][
            "resource"]["id"]
        assert _versions(both_stores_app, "MedicationRequest", order_id) == [1, 2, 3]
        assert _post_hl7(hospital, first).data.split(b"\r")[1:] == answers[0].data.split(b"\r")[1:]  # resend: same ACK


def test_a_conflict_that_outlasts_the_retries_is_ar_207_and_a_resend_is_processed_not_answered_again(both_stores_app,
                                                                                                   monkeypatch):
    """Writers that keep colliding get AR 207 (send again); the resend is stored, never answered with the
    remembered AR, and a FHIR write that keeps colliding is 409 with an OperationOutcome."""
    from gateway.store import resources
    store = both_stores_app.extensions["gateway"].store
    real_write, collisions = store.write, []

    class SerializationFailure(Exception):        # what psycopg raises: SQLSTATE 40001
        sqlstate = "40001"

    @contextmanager
    def colliding():
        collisions.append(1)
        raise OperationalError("COMMIT", {}, SerializationFailure())
        yield  # noqa: unreachable: a generator, for contextmanager

    hospital = authenticated(both_stores_app, "hospital")
    raw = _rde("RACE-TRANSIENT", "RACE-TRANSIENT-MSG", "RACE-TRANSIENT-MRN")
    monkeypatch.setattr(store, "write", colliding)
    monkeypatch.setattr(resources.time, "sleep", lambda _s: None)
    refused = _post_hl7(hospital, raw)
    assert _msa(refused) == "AR" and b"|207^" in refused.data
    assert len(collisions) == resources.WRITE_ATTEMPTS
    admin = authenticated(both_stores_app, "admin")
    answer = admin.post("/fhir/Patient", json=_patient("RACE-TRANSIENT-FHIR"), content_type=FHIR_JSON)
    assert answer.status_code == 409 and answer.get_json()["resourceType"] == "OperationOutcome"
    monkeypatch.setattr(store, "write", real_write)
    again = _post_hl7(hospital, raw)
    assert _msa(again) == "AA", again.data
    assert _count(both_stores_app, "MedicationRequest") == 1
