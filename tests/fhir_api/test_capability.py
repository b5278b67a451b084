"""The CapabilityStatement claims exactly what the gateway registers: interactions, operations, formats."""
from __future__ import annotations

from flask import Blueprint, Flask

from gateway.fhir_api.capability import capability_statement

ALL_TYPE_INTERACTIONS = ["read", "vread", "update", "delete", "history-instance", "history-type", "create",
                         "search-type"]


def test_every_type_lists_read_write_history_and_search_interactions(client, gateway):
    statement = client.get("/fhir/metadata").get_json()
    rest = statement["rest"][0]
    assert {r["type"] for r in rest["resource"]} == {*gateway.store.params.resource_types(), "AuditEvent"}
    for resource in (r for r in rest["resource"] if r["type"] != "AuditEvent"):
        assert [i["code"] for i in resource["interaction"]] == ALL_TYPE_INTERACTIONS
        assert resource["versioning"] == "versioned-update"
        assert resource["updateCreate"] is True and resource["conditionalCreate"] is True
        assert resource["conditionalUpdate"] is True and resource["conditionalDelete"] == "not-supported"
    assert [i["code"] for i in rest["interaction"]] == ["transaction", "batch", "history-system"]


def test_operations_and_formats_are_declared(client):
    statement = client.get("/fhir/metadata").get_json()
    rest = statement["rest"][0]
    assert rest["operation"] == [{"name": "export",
                                  "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert by_type["Patient"]["operation"] == [
        {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
        {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}]
    assert [o["name"] for o in by_type["Practitioner"]["operation"]] == ["validate"]
    assert statement["format"] == ["application/fhir+json", "application/fhir+xml", "json", "xml"]


def test_an_interaction_without_a_route_is_not_claimed(gateway):
    app = Flask("partial")
    blueprint = Blueprint("fhir", "partial")
    blueprint.add_url_rule("/<t>/<i>", "read", lambda t, i: "")
    blueprint.add_url_rule("/<t>/$validate", "validate", lambda t: "", methods=["POST"])
    app.register_blueprint(blueprint, url_prefix="/fhir")
    statement = capability_statement(gateway.store.params, "http://x/fhir", {}, app)
    rest = statement["rest"][0]
    assert {tuple(i["code"] for i in r["interaction"]) for r in rest["resource"]} == {("read",)}
    assert rest["interaction"] == [] and "operation" not in rest
    assert all(r["updateCreate"] is False for r in rest["resource"])
    assert "security" not in rest          # no token endpoint registered, no SMART claimed


def test_smart_backend_services_are_declared_with_the_token_endpoint(anonymous_client):
    rest = anonymous_client.get("/fhir/metadata", base_url="https://gw.example.cn").get_json()["rest"][0]
    security = rest["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    (oauth,) = security["extension"]
    assert oauth["extension"] == [{"url": "token", "valueUri": "https://gw.example.cn/auth/token"}]
    discovery = anonymous_client.get("/fhir/.well-known/smart-configuration", base_url="https://gw.example.cn")
    assert discovery.get_json()["token_endpoint"] == "https://gw.example.cn/auth/token"


def test_capability_statement_is_served_as_xml_too(client):
    response = client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert response.status_code == 200 and response.mimetype == "application/fhir+xml"
    assert b"<fhirVersion value=\"4.0.1\"/>" in response.data


def test_audit_event_is_listed_as_read_and_search_only(client):
    rest = client.get("/fhir/metadata").get_json()["rest"][0]
    (audit,) = [r for r in rest["resource"] if r["type"] == "AuditEvent"]
    assert [i["code"] for i in audit["interaction"]] == ["read", "search-type"]
    assert {"date", "agent", "entity-type", "outcome"} <= {p["name"] for p in audit["searchParam"]}
