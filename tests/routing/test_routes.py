"""routes.yaml: the sample file, what each rule matches, and the start-up errors a mistake gives."""
from __future__ import annotations

import pytest

from gateway.routing import Router, RoutesError, load_routes
from gateway.routing.routes import parse_routes
from tests.routing.conftest import SAMPLE_ROUTES

APPROVAL = {"url": "https://lecheng-fhir-gateway.org/fhir/StructureDefinition/pilot-zone-approval",
            "extension": [{"url": "number", "valueString": "LC2026-A-0042"}]}
IMPORTED_DRUG = {"coding": [{"system": "https://lecheng-fhir-gateway.org/fhir/CodeSystem/imported-drug-catalogue",
                             "code": "HNLC-D-0042"}]}
DOMESTIC_DRUG = {"coding": [{"system": "https://lecheng-fhir-gateway.org/fhir/sid/nmpa-approval-number",
                             "code": "H20203001"}]}
SERIOUS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                       "code": "serious"}]}
NON_SERIOUS = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                           "code": "non-serious"}]}


@pytest.fixture(scope="module")
def router():
    return Router(load_routes(SAMPLE_ROUTES, environ={}))


def decide(router, resource):
    targets, holds = router.decide(resource, "RDE^O11", "BOAO_SUPER_HOSPITAL")
    return sorted(targets), len(holds)


@pytest.mark.parametrize("resource, destinations, held", [
    ({"resourceType": "MedicationRequest", "status": "active", "medicationCodeableConcept": DOMESTIC_DRUG},
     ["prescription-center"], 0),
    ({"resourceType": "MedicationRequest", "status": "active", "medicationCodeableConcept": IMPORTED_DRUG,
      "extension": [APPROVAL]}, ["prescription-center"], 0),
    ({"resourceType": "MedicationRequest", "status": "active", "medicationCodeableConcept": IMPORTED_DRUG},
     ["prescription-center"], 1),
    ({"resourceType": "MedicationRequest", "status": "cancelled", "medicationCodeableConcept": IMPORTED_DRUG},
     ["prescription-center"], 0),
    ({"resourceType": "MedicationDispense", "status": "completed"}, ["prescription-center"], 0),
    ({"resourceType": "AdverseEvent", "seriousness": SERIOUS}, ["national-regulator", "provincial-regulator"], 0),
    ({"resourceType": "AdverseEvent", "seriousness": NON_SERIOUS}, ["provincial-regulator"], 0),
    ({"resourceType": "AdverseEvent"}, ["provincial-regulator"], 0),
    ({"resourceType": "Device", "type": {"coding": [
        {"system": "https://lecheng-fhir-gateway.org/fhir/CodeSystem/imported-device-catalogue",
         "code": "HNLC-M-0101"}]}}, ["device-registry"], 0),
    ({"resourceType": "Device", "extension": [APPROVAL]}, ["device-registry"], 0),
    ({"resourceType": "Device", "type": {"text": "infusion pump"}}, [], 0),
    ({"resourceType": "Patient"}, [], 0),
], ids=["domestic-order", "imported-with-approval", "imported-without-approval-held", "cancelled-not-held",
        "dispense", "serious-ae", "non-serious-ae", "ae-no-seriousness", "catalogue-device", "approved-device",
        "domestic-device", "patient"])
def test_sample_rules(router, resource, destinations, held):
    assert decide(router, resource) == (destinations, held)


def test_sample_destinations(router):
    destinations = router.routes.destinations
    assert {name: (d.organization, d.mode, d.auth.type) for name, d in destinations.items()} == {
        "prescription-center": ("HAINAN_EPC", "resource", "oauth2"),
        "provincial-regulator": ("HNMPA", "message", "bearer"),
        "national-regulator": ("NMPA", "transaction", "none"),
        "device-registry": ("HNMPA", "resource", "none"),
    }
    assert destinations["prescription-center"].base_url == "http://127.0.0.1:9101/fhir"   # the ${VAR:-default}


def test_environment_variables_fill_the_file():
    routes = load_routes(SAMPLE_ROUTES, environ={"EPC_FHIR_BASE": "https://epc.example.cn/fhir/",
                                                 "EPC_CLIENT_SECRET": "s3cret"})
    epc = routes.destinations["prescription-center"]
    assert (epc.base_url, epc.auth.client_secret) == ("https://epc.example.cn/fhir", "s3cret")


def test_message_type_and_sender_patterns():
    routes = parse_routes("""
destinations:
  a: {base_url: "http://127.0.0.1:1/fhir"}
rules:
  - name: csv-from-boao
    resource: Device
    message_type: ["csv:*", "ORU^R01"]
    sender: BOAO_*
    to: a
""")
    router = Router(routes)
    device = {"resourceType": "Device"}
    assert router.decide(device, "csv:device_first_use", "BOAO_RUIJIN_HOSPITAL")[0] == {"a": ["csv-from-boao"]}
    assert router.decide(device, "ORU^R01", "BOAO_SUPER_HOSPITAL")[0] == {"a": ["csv-from-boao"]}
    assert router.decide(device, "ORU^R01", "SANYA_PEOPLES_HOSPITAL")[0] == {}
    assert router.decide(device, "xml:hospital_prescription", "BOAO_SUPER_HOSPITAL")[0] == {}
    assert router.decide(device, None, None)[0] == {}


GOOD_DESTINATION = 'destinations:\n  a: {base_url: "http://127.0.0.1:1/fhir"}\n'


@pytest.mark.parametrize("text, message", [
    (GOOD_DESTINATION + "rules:\n  - name: r\n    resource: MedicationRequest\n    to: nowhere\n",
     "test.yaml:4: rule r: destination 'nowhere' is not defined under destinations (defined: a)"),
    (GOOD_DESTINATION + "rules:\n  - name: r\n    resource: MedicationRequest\n    where: \"status = \"\n    to: a\n",
     "test.yaml:4: rule r: where is not valid FHIRPath: "),
    (GOOD_DESTINATION + "rules:\n  - name: r\n    resource: Prescription\n    to: a\n",
     "test.yaml:4: rule r: 'Prescription' is not a FHIR R4 resource type"),
    (GOOD_DESTINATION + "rules:\n  - name: r\n    resource: Device\n    to: a\n    when: x\n",
     "test.yaml:4: a rule: unknown key(s) when; allowed: hold, message_type, name, resource, sender, to, where"),
    (GOOD_DESTINATION + "rules:\n  - name: r\n    resource: Device\n",
     "test.yaml:4: rule r: says neither where to send (to:) nor why to hold (hold:)"),
    (GOOD_DESTINATION + "rules:\n  - name: r\n    resource: Device\n    to: a\n    hold: why\n",
     "test.yaml:4: rule r: a rule either sends (to:) or holds (hold:), not both"),
    (GOOD_DESTINATION + "rules:\n  - name: r\n    where: \"status = 'active'\"\n    to: a\n",
     "test.yaml:4: rule r: a where condition needs resource: (the type it is about)"),
    (GOOD_DESTINATION + "rules:\n  - {name: r, resource: Device, to: a}\n  - {name: r, resource: Device, to: a}\n",
     "test.yaml:5: rule name 'r' is used twice (first at line 4)"),
    ("destinations:\n  a:\n    base_url: ftp://x\n", "test.yaml:3: destination a: base_url must be an http(s) URL"),
    ("destinations:\n  a:\n    base_url: http://x\n    mode: batch\n",
     "test.yaml:3: destination a: mode must be one of resource, transaction, message, not 'batch'"),
    ("destinations:\n  a:\n    base_url: http://x\n    auth: {type: oauth2, client_id: c, client_secret: s}\n",
     "test.yaml:4: destination a: auth.token_url is required"),
    ("destinations:\n  a:\n    base_url: ${NOT_SET_ANYWHERE}\n",
     "test.yaml:3: destination a: base_url: environment variable NOT_SET_ANYWHERE is not set"),
    ("destinations:\n  a:\n    base_url: http://x\n    retry: {max_attempts: 0}\n",
     "test.yaml:4: retry.max_attempts must be a number >= 1, not 0"),
    ("rules: [\n", "test.yaml:2: not valid YAML"),
], ids=["unknown-destination", "bad-fhirpath", "unknown-type", "unknown-key", "no-action", "send-and-hold",
        "where-without-type", "duplicate-name", "bad-url", "bad-mode", "oauth2-without-token-url", "unset-env",
        "bad-retry", "bad-yaml"])
def test_mistakes_stop_start_up_with_file_and_line(text, message):
    with pytest.raises(RoutesError) as caught:
        parse_routes(text, "test.yaml", environ={})
    assert str(caught.value).startswith(message)


def test_a_missing_routes_file_is_an_error_and_an_empty_setting_routes_nothing(tmp_path):
    with pytest.raises(RoutesError, match="cannot read the routes file"):
        load_routes(tmp_path / "absent.yaml")
    assert load_routes("").rules == ()
