"""Organizations: a hospital sends only as itself (MSH-4), sees what it sent; a pharmacy or the
prescription center sees what was routed to it; regulators and admins see everything."""
from __future__ import annotations

import pytest

from gateway.store.access import ORGANIZATION_TAG
from tests.conftest import ack_segment, post_hl7, sample

BOAO = "BOAO_SUPER_HOSPITAL"
RUIJIN = "BOAO_RUIJIN_HOSPITAL"
ORDER_MESSAGE = "rde_o11_new_imported.hl7"          # MSH-4 = BOAO_SUPER_HOSPITAL


def _total(test_client, query: str) -> int:
    response = test_client.get(query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["total"]


@pytest.fixture
def boao(client_as):
    return client_as("hospital", BOAO)


@pytest.fixture
def ruijin(client_as):
    return client_as("hospital", RUIJIN)


@pytest.fixture
def stored_order(boao, client):
    response, segments = post_hl7(boao, sample(ORDER_MESSAGE))
    assert ack_segment(segments, "MSA")[1] == "AA", response.data
    bundle = client.get("/fhir/MedicationRequest").get_json()
    assert bundle["total"] == 1
    return bundle["entry"][0]["resource"]


def test_a_hospital_sending_as_another_gets_ar_naming_msh4_and_nothing_is_stored(ruijin, client, gateway):
    response, segments = post_hl7(ruijin, sample(ORDER_MESSAGE))
    assert response.status_code == 200 and response.headers["X-Ack-Code"] == "AR"
    err = ack_segment(segments, "ERR")
    assert err[2] == "MSH^1^4^1"
    assert f"MSH-4 sending facility '{BOAO}' is not this client's organization '{RUIJIN}'" in "|".join(err)
    assert "nothing was stored" in "|".join(err)
    assert ack_segment(segments, "MSA")[1] == "AR"
    for resource_type in ("MedicationRequest", "Patient", "Provenance"):
        assert _total(client, f"/fhir/{resource_type}") == 0
    entry = gateway.message_log.get(int(response.headers["X-Message-Log-Id"]))     # the raw message is kept
    assert entry.status == "rejected" and entry.raw == sample(ORDER_MESSAGE)


def test_a_resend_under_another_hospitals_msh4_does_not_return_that_hospitals_ack(boao, ruijin):
    post_hl7(boao, sample(ORDER_MESSAGE))
    response, segments = post_hl7(ruijin, sample(ORDER_MESSAGE))
    assert ack_segment(segments, "MSA")[1] == "AR"


def test_what_a_hospital_sends_is_tagged_with_its_organization(stored_order, client):
    assert {"system": ORGANIZATION_TAG, "code": BOAO} in stored_order["meta"]["tag"]
    assert _total(client, f"/fhir/MedicationRequest?_tag={ORGANIZATION_TAG}|{BOAO}") == 1
    assert _total(client, f"/fhir/MedicationRequest?_tag={ORGANIZATION_TAG}|{RUIJIN}") == 0
    provenance = client.get("/fhir/Provenance").get_json()["entry"][0]["resource"]
    assert {"system": ORGANIZATION_TAG, "code": BOAO} in provenance["meta"]["tag"]


def test_a_hospital_reads_and_searches_only_its_own_data(stored_order, boao, ruijin):
    path = f"/fhir/MedicationRequest/{stored_order['id']}"
    assert boao.get(path).status_code == 200
    assert _total(boao, "/fhir/MedicationRequest") == 1
    assert _total(boao, "/fhir/Patient") == 1
    assert ruijin.get(path).status_code == 404
    assert ruijin.get(f"{path}/_history/1").status_code == 404
    assert _total(ruijin, "/fhir/MedicationRequest") == 0
    assert _total(ruijin, "/fhir/Patient") == 0
    assert ruijin.get("/fhir/_history").get_json()["total"] == 0
    assert ruijin.get(f"/fhir/MedicationRequest?_id={stored_order['id']}&_include=MedicationRequest:subject"
                      ).get_json().get("entry", []) == []


def test_regulators_and_admins_see_every_organization(stored_order, client_as, client):
    regulator = client_as("regulator")
    assert _total(regulator, "/fhir/MedicationRequest") == 1
    assert regulator.get(f"/fhir/MedicationRequest/{stored_order['id']}").status_code == 200
    assert _total(client, "/fhir/MedicationRequest") == 1


def test_a_pharmacy_sees_only_what_was_routed_to_it(stored_order, client_as):
    pharmacy = client_as("pharmacy")           # HAIKOU_PHARMACY_017: no route delivers orders to it
    assert _total(pharmacy, "/fhir/MedicationRequest") == 0
    assert pharmacy.get(f"/fhir/MedicationRequest/{stored_order['id']}").status_code == 404


def test_the_prescription_center_sees_the_orders_routed_to_it(stored_order, client_as):
    center = client_as("prescription-center")  # HAINAN_EPC: routes.yaml delivers every order there
    assert _total(center, "/fhir/MedicationRequest") == 1
    assert center.get(f"/fhir/MedicationRequest/{stored_order['id']}").status_code == 200


def test_a_hospital_cannot_change_another_hospitals_resource(stored_order, boao, ruijin):
    path = f"/fhir/MedicationRequest/{stored_order['id']}"
    changed = {**stored_order, "priority": "urgent"}
    refused = ruijin.put(path, json=changed, content_type="application/fhir+json")
    assert refused.status_code in (403, 404)
    assert ruijin.delete(path).status_code in (403, 404)
    assert boao.put(path, json=changed, content_type="application/fhir+json").status_code == 200


def test_a_write_claiming_another_organization_tag_is_refused(boao):
    organization = {"resourceType": "Organization", "name": "Claimed",
                    "meta": {"tag": [{"system": ORGANIZATION_TAG, "code": RUIJIN}]}}
    response = boao.post("/fhir/Organization", json=organization, content_type="application/fhir+json")
    assert response.status_code == 403
    assert RUIJIN in response.get_json()["issue"][0]["diagnostics"]


def test_an_admin_may_send_for_any_facility(client):
    response, segments = post_hl7(client, sample(ORDER_MESSAGE))
    assert ack_segment(segments, "MSA")[1] == "AA"
