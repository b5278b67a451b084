"""$validate over HTTP answers the same OperationOutcome as `fhir-gateway validate`."""
from __future__ import annotations

import json

from conftest import DATA
from gateway.cli import main

EXAMPLES = DATA / "validation" / "medicationrequest"


def _example(prefix: str):
    return sorted(EXAMPLES.glob(f"{prefix}*.json"))[0]


def test_http_validate_and_cli_validate_agree_on_an_invalid_resource(client, capsys, tmp_path):
    path = _example("invalid")
    over_http = client.post("/fhir/MedicationRequest/$validate", data=path.read_bytes(),
                            content_type="application/fhir+json").get_json()
    code = main(["--data-dir", str(tmp_path), "validate", str(path)])
    from_cli = json.loads(capsys.readouterr().out)
    assert code == 1
    assert over_http == from_cli
    assert any(issue["severity"] == "error" for issue in over_http["issue"])
    assert all(issue.get("expression") for issue in over_http["issue"] if issue["severity"] == "error")


def test_valid_resource_validates_clean_over_http(client):
    outcome = client.post("/fhir/MedicationRequest/$validate", data=_example("valid").read_bytes(),
                          content_type="application/fhir+json").get_json()
    assert [i["severity"] for i in outcome["issue"]] == ["information"]


def test_validate_refuses_a_body_of_another_type(client):
    response = client.post("/fhir/MedicationRequest/$validate", data=b'{"resourceType": "Patient"}',
                           content_type="application/fhir+json")
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["resourceType"]
