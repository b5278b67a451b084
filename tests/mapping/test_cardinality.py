"""The engine knows each R4 element's cardinality (``gateway/mapping/cardinality.py``): it fits a
converter's result to the element, and refuses, when the file loads, a path R4 does not have or an
index R4 does not allow (issue 16)."""
from __future__ import annotations

import pytest

from conftest import SAMPLES
from gateway.hl7v2 import parse_message
from gateway.mapping.engine import MappingError, MappingSpec
from golden import MAPPINGS, TERMINOLOGY, ZONE

PEO = b"PEO|10010741^Conjunctivitis^MDR|H10.9^Conjunctivitis, unspecified^I10|20260401||||"   # up to PEO-7


def _pex_with_event_address(address: bytes):
    raw = SAMPLES.joinpath("pex_p07_adverse_event.hl7").read_bytes()
    assert PEO in raw
    return parse_message(raw.replace(PEO, PEO + address))


def test_one_address_from_peo7_is_the_locations_single_address():
    message = _pex_with_event_address(b"\xe5\x8d\x9a\xe9\xb3\x8c\xe8\xb7\xaf1\xe5\x8f\xb7^^\xe7\x90\xbc\xe6\xb5\xb7\xe5\xb8\x82^"
                                      b"\xe6\xb5\xb7\xe5\x8d\x97\xe7\x9c\x81^571434^CHN")
    result = MAPPINGS.for_message("PEX^P07").run(message, TERMINOLOGY, ZONE)
    assert result.errors == []
    location = next(m for m in result.resources if m.type == "Location")
    assert location.resource["address"] == {"line": ["博鳌路1号"], "city": "琼海市", "state": "海南省",
                                            "postalCode": "571434", "country": "CHN"}
    event = next(m for m in result.resources if m.type == "AdverseEvent")
    assert event.resource["location"] == {"reference": location.temp_id}


def test_two_addresses_into_the_single_address_are_a_mapping_error_naming_element_and_field():
    message = _pex_with_event_address("博鳌路1号^^琼海市~滨海大道88号^^海口市".encode())
    result = MAPPINGS.for_message("PEX^P07").run(message, TERMINOLOGY, ZONE)
    (error,) = result.errors
    assert error.text == ("Location.address: takes a single value (0..1 in R4), but PEO-7 gave 2; the mapping "
                          "must choose one (a repetition like 'PEO-7(1)', or another element)")
    assert (error.segment, error.field) == ("PEO", 7)


_JSON_REPORT = b'{"site": "H1", "report": {"id": "ADR-1"}}'


def _report_mapping(identifier_row: str) -> MappingSpec:
    import yaml
    return MappingSpec.from_dict(yaml.safe_load(f"""
name: adr_test
source: json
document: {{sender: site, fields: {{site: {{required: true}}, report.id: {{required: true}}}}}}
resources:
  - key: event
    type: AdverseEvent
    elements:
      {identifier_row}: {{fields: {{value: report.id, authority: $.site}}, as: identifier, args: {{kind: AE}}}}
      actuality: {{value: actual}}
"""), where="adr_test.yaml")


def test_a_list_converter_into_a_single_identifier_gives_that_identifier():
    spec = _report_mapping("identifier")
    (unit,) = spec.reader.read(_JSON_REPORT).units
    (event,) = spec.run(unit, TERMINOLOGY, ZONE).resources
    assert event.resource["identifier"] == {"system": "https://lecheng-fhir-gateway.org/fhir/sid/H1/adverse-event",
                                            "value": "ADR-1"}
    assert event.identity == [("https://lecheng-fhir-gateway.org/fhir/sid/H1/adverse-event", "ADR-1")]


@pytest.mark.parametrize("row,message", [
    ("identifier[0]", "adr_test.yaml: resource 'event', element 'identifier[0]': AdverseEvent.identifier is a "
                      "single element (0..1 in R4): write 'identifier', not 'identifier[0]'"),
    ("identifier[]", "adr_test.yaml: resource 'event', element 'identifier[]': AdverseEvent.identifier is a "
                     "single element (0..1 in R4): write 'identifier:', not 'identifier[]:'"),
    ("identifer", "adr_test.yaml: resource 'event', element 'identifer': 'AdverseEvent.identifer' is not an "
                  "element of R4 AdverseEvent (did you mean 'identifier'?)"),
    ("suspectEntity.instance", "adr_test.yaml: resource 'event', element 'suspectEntity.instance': "
                               "AdverseEvent.suspectEntity repeats (0..* in R4): write 'suspectEntity[0]' for one item, "
                               "or 'suspectEntity[]:' with for_each for one per group"),
])
def test_a_path_r4_does_not_allow_is_refused_when_the_file_loads(row, message):
    with pytest.raises(MappingError) as refused:
        _report_mapping(row)
    assert str(refused.value) == message


def test_a_single_value_into_a_repeating_element_is_a_one_item_list():
    spec = MappingSpec.from_dict({"name": "x", "source": "hl7v2", "message_types": [], "resources": [
        {"key": "p", "type": "Patient", "elements": {"identifier": {"value": {"system": "urn:x", "value": "1"}}}}]})
    result = spec.run(parse_message(SAMPLES.joinpath("rde_o11_cancel.hl7").read_bytes()), TERMINOLOGY, ZONE)
    assert result.resources[0].resource["identifier"] == [{"system": "urn:x", "value": "1"}]
