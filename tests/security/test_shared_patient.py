"""A person treated by two hospitals (mappings/README.md, "Patients across organizations"): each
hospital keeps and reads its own Patient; the gateway's Person, linking both by national ID, is what
a regulator reads to see the person across hospitals."""
from __future__ import annotations

import pytest

from tests.conftest import ack_segment, post_hl7, sample
from tests.security.ownership_fixtures import BOAO, HMU, owned_by, owner_of, sent_by_hmu

NATIONAL = "https://lecheng-fhir-gateway.org/fhir/sid/cn-resident-id|46010019900101123X"
B_VISIT = sent_by_hmu(sample("rde_o11_new_imported.hl7"),
                      (b"H0012345^^^BOAO_SUPER_HOSPITAL^MR", b"M778^^^HAINAN_MED_UNIV_HOSP1^MR"),
                      (b"\xe7\x8e\x8b^\xe5\xb0\x8f\xe6\x98\x8e^^^^^L", b"Wang^Xiaoming^^^^^L"),
                      (b"\xe6\xbb\xa8\xe6\xb5\xb7\xe5\xa4\xa7\xe9\x81\x9388\xe5\x8f\xb7", b"Haifu Road 1"),
                      (b"BSH-RX-0001^BOAO_HIS", b"HMU-RX-0001^HMU_HIS"), (b"BSH-GRP-0001^BOAO_HIS", b"HMU-GRP-0001^HMU_HIS"))


@pytest.fixture
def both(client_as, gateway):
    """A's and B's messages for the same person (same national ID, each hospital's own MRN)."""
    boao, hmu = client_as("hospital", BOAO), client_as("hospital", HMU)
    for sender, raw in ((boao, sample("rde_o11_new_imported.hl7")), (hmu, B_VISIT)):
        _response, segments = post_hl7(sender, raw)
        assert ack_segment(segments, "MSA")[1] == "AA", segments
    return boao, hmu


def _patients(client) -> list[dict]:
    return [e["resource"] for e in client.get("/fhir/Patient").get_json().get("entry", [])]


def test_each_hospital_reads_its_own_patient_only_in_its_own_version(both, gateway):
    boao, hmu = both
    (a_patient,), (b_patient,) = _patients(boao), _patients(hmu)
    assert a_patient["id"] != b_patient["id"]
    assert a_patient["name"][0]["family"] == "王" and a_patient["address"][0]["line"] == ["滨海大道88号"]
    assert b_patient["name"][0]["family"] == "Wang" and b_patient["address"][0]["line"] == ["Haifu Road 1"]
    assert (a_patient["meta"]["versionId"], b_patient["meta"]["versionId"]) == ("1", "1")
    assert owner_of(gateway, "Patient", a_patient["id"]) == BOAO and owner_of(gateway, "Patient", b_patient["id"]) == HMU
    assert boao.get(f"/fhir/Patient/{b_patient['id']}").status_code == 404
    assert hmu.get(f"/fhir/Patient/{a_patient['id']}").status_code == 404
    assert boao.get(f"/fhir/Patient?identifier={NATIONAL}").get_json()["total"] == 1   # its own only
    # and neither hospital sees the Person that links them
    for hospital in both:
        assert hospital.get("/fhir/Person").get_json()["total"] == 0


def test_a_regulator_sees_one_person_linking_both_hospitals_patients(both, client_as):
    boao, hmu = both
    (a_patient,), (b_patient,) = _patients(boao), _patients(hmu)
    regulator = client_as("regulator")
    bundle = regulator.get(f"/fhir/Person?identifier={NATIONAL}&_include=Person:link").get_json()
    persons = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    included = {e["resource"]["id"]: e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"}
    assert len(persons) == 1
    assert [link["target"]["reference"] for link in persons[0]["link"]] == \
        [f"Patient/{a_patient['id']}", f"Patient/{b_patient['id']}"]
    assert {link["assurance"] for link in persons[0]["link"]} == {"level3"}
    assert "tag" not in persons[0]["meta"]                       # the gateway's own record
    assert included[a_patient["id"]]["name"][0]["family"] == "王"
    assert included[b_patient["id"]]["name"][0]["family"] == "Wang"
    assert regulator.get(f"/fhir/Patient?identifier={NATIONAL}").get_json()["total"] == 2


def test_a_later_message_from_either_hospital_changes_only_its_own_patient(both, gateway, client_as):
    boao, hmu = both
    a_before = owned_by(gateway, BOAO)
    _response, segments = post_hl7(hmu, B_VISIT.replace(b"Wang^Xiaoming", b"Wang^Xiao Ming").replace(
        b"HMU-RX-0001^HMU_HIS", b"HMU-RX-0002^HMU_HIS").replace(b"|BSH20260315000001|", b"|HMU-2|"))
    assert ack_segment(segments, "MSA")[1] == "AA", segments
    assert owned_by(gateway, BOAO) == a_before
    (b_patient,) = _patients(hmu)
    assert b_patient["name"][0]["given"] == ["Xiao Ming"] and b_patient["meta"]["versionId"] == "2"
    person = client_as("regulator").get(f"/fhir/Person?identifier={NATIONAL}").get_json()["entry"][0]["resource"]
    assert len(person["link"]) == 2 and person["meta"]["versionId"] == "2"     # no duplicate link


def test_a_patient_written_through_fhir_joins_the_same_person(both, client_as):
    sanya = client_as("hospital", "SANYA_PEOPLES_HOSPITAL")
    national_system, national_value = NATIONAL.split("|")
    response = sanya.post("/fhir/Patient", json={
        "resourceType": "Patient", "name": [{"family": "Wang"}],
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NNCHN"}]},
                        "system": national_system, "value": national_value}]}, content_type="application/fhir+json")
    assert response.status_code == 201, response.get_json()
    person = client_as("regulator").get(f"/fhir/Person?identifier={NATIONAL}").get_json()["entry"][0]["resource"]
    assert person["link"][-1]["target"]["reference"] == f"Patient/{response.get_json()['id']}"
    assert len(person["link"]) == 3


def test_no_client_writes_a_person(both, client_as):
    boao, _hmu = both
    regulator = client_as("regulator")
    person = regulator.get(f"/fhir/Person?identifier={NATIONAL}").get_json()["entry"][0]["resource"]
    forged = {"resourceType": "Person", "link": [{"target": {"reference": person["link"][0]["target"]["reference"]}}]}
    response = boao.post("/fhir/Person", json=forged, content_type="application/fhir+json")
    assert response.status_code == 403 and response.get_json()["resourceType"] == "OperationOutcome"
    changed = {k: v for k, v in person.items() if k != "meta"} | {"link": person["link"][:1]}
    assert boao.put(f"/fhir/Person/{person['id']}", json=changed,
                    content_type="application/fhir+json").status_code == 403
    assert regulator.get(f"/fhir/Person/{person['id']}").get_json() == person
