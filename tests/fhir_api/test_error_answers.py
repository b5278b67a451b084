"""Right status, FHIR body (issue 14, item 6): the answers a regulator's FHIR client gets for the
kick-offs this gateway does not offer, unknown URLs, and Retry-After only where it means something."""
from __future__ import annotations

import pytest

from conftest import post_hl7, sample


def _outcome(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.data
    assert response.mimetype == "application/fhir+json"
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == code
    return outcome


@pytest.mark.parametrize("role", ["admin", "regulator"])
@pytest.mark.parametrize("path", ["/fhir/$export", "/fhir/Patient/$export"])
def test_post_kick_off_is_405_get_only(client_as, role, path):
    response = client_as(role).post(path, json={"resourceType": "Parameters"}, headers={"Prefer": "respond-async"})
    _outcome(response, 405, "not-supported")
    assert response.headers["Allow"] == "GET"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_group_export_says_there_are_no_groups(client_as, method):
    response = client_as("regulator").open("/fhir/Group/g1/$export", method=method, headers={"Prefer": "respond-async"})
    outcome = _outcome(response, 404, "not-supported")
    assert "Patient/$export" in outcome["issue"][0]["diagnostics"]


def test_an_unknown_url_is_a_fhir_not_found_naming_it(client):
    outcome = _outcome(client.get("/fhir/Patient/p1/_history/1/extra"), 404, "not-found")
    assert "/fhir/Patient/p1/_history/1/extra" in outcome["issue"][0]["diagnostics"]
    assert "Werkzeug" not in str(outcome) and "requested URL" not in str(outcome)


def test_only_refusals_and_running_exports_carry_retry_after(client):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    search = client.get("/fhir/MedicationRequest")
    assert search.status_code == 200 and "Retry-After" not in search.headers
    kick = client.get("/fhir/$export", headers={"Prefer": "respond-async"})
    assert kick.status_code == 202 and "Retry-After" not in kick.headers
    status = client.get(kick.headers["Content-Location"].split("localhost", 1)[1])
    if status.status_code == 202:             # still running: poll again in one second, as it says
        assert status.headers["Retry-After"] == "1"
    else:
        assert status.status_code == 200 and "Retry-After" not in status.headers
