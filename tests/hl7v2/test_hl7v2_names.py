"""field_name: readable HL7 field names from hl7apy, kept off the hot path."""
from pathlib import Path

import pytest

import gateway.hl7v2.names as names
from gateway.hl7v2 import parse_message
from gateway.hl7v2.names import field_name

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"


@pytest.mark.parametrize("segment,field,expected", [
    ("MSH", 9, "Message Type"),
    ("MSH", 10, "Message Control ID"),
    ("MSH", 18, "Character Set"),
    ("RXE", 2, "Give Code"),
    ("PID", 3, "Patient Identifier List"),
])
def test_field_name_reads_hl7apy_definitions(segment, field, expected):
    assert field_name(segment, field) == expected


def test_field_name_follows_the_requested_version():
    assert field_name("PID", 3, "2.3") == "Patient ID Internal ID"
    assert field_name("PRT", 10, "2.8.2") == "Participation Device"


def test_field_withdrawn_in_a_version_falls_back_to_an_older_name():
    assert field_name("ERR", 1, "2.8") == "Error Code and Location"


def test_z_segments_and_unknown_fields_have_no_name():
    assert field_name("ZLC", 2) == ""
    assert field_name("MSH", 99) == ""
    assert field_name("XYZ", 1) == ""


def test_unknown_version_falls_back_to_a_known_one():
    assert field_name("MSH", 9, "2.9") == "Message Type"


def test_field_name_is_cached():
    field_name.cache_clear()
    field_name("MSH", 9)
    field_name("MSH", 9)
    assert field_name.cache_info().hits == 1


def test_good_messages_never_look_up_field_names(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("field_name called on the hot path")

    monkeypatch.setattr(names, "field_name", forbidden)
    for path in sorted(DATA.glob("*.hl7")):
        if not path.name.startswith("bad_"):
            parse_message(path.read_bytes())
