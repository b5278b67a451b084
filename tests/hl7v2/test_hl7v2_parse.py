"""parse_message: structure, delimiters, terminators, header, paths, groups, garbage."""
from pathlib import Path

import pytest

from gateway.hl7v2 import EXPLICIT_NULL, Delimiters, Hl7ParseError, parse_message

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"

MSH = "MSH|^~\\&|BOAO_HIS|BOAO_SUPER_HOSPITAL|LECHENG_GW|HAINAN_EPC|20260315093000||RDE^O11^RDE_O11|CTRL1|P|2.5"


def hl7(*segments: str, sep: str = "\r") -> str:
    return sep.join(segments) + sep


# ---- delimiters -----------------------------------------------------------------------

def test_standard_delimiters_are_read_from_msh1_and_msh2():
    msg = parse_message(hl7(MSH))
    assert msg.delimiters == Delimiters("|", "^", "~", "\\", "&", None)


def test_non_default_delimiters_split_fields_components_repetitions_and_subcomponents():
    # field '*', component ':', repetition '!', escape '/', sub-component '@'
    text = hl7("MSH*:!/@*HIS*HOSP*GW*EPC*20260315**ADT:A01:ADT_A01*C2*P*2.5",
               "PID*1**A1:::AUTH@1.2.3:MR!B2:::OTHER:NI**DOE:JOHN")
    msg = parse_message(text)
    assert msg.delimiters == Delimiters("*", ":", "!", "/", "@", None)
    assert msg.message_type == "ADT^A01"
    pid = msg.segment("PID")
    assert pid.value(3, rep=1, comp=4, sub=2) == "1.2.3"
    assert pid.value(3, rep=2, comp=1) == "B2"
    assert pid.value(5, comp=2) == "JOHN"


def test_non_default_escape_character_resolves_the_escapes_of_that_message():
    text = hl7("MSH*:!/@*HIS*HOSP*GW*EPC*20260315**ADT:A01*C2*P*2.5",
               "NTE*1**pipe | star /F/ colon /S/ bang /R/ at /T/ slash /E/")
    assert parse_message(text).get("NTE-3") == "pipe | star * colon : bang ! at @ slash /"


def test_truncation_character_in_msh2_is_read_for_v27_and_later():
    msg = parse_message(hl7("MSH|^~\\&#|A|B|C|D|20260315||ADT^A01|C3|P|2.7"))
    assert msg.delimiters.truncation == "#"
    assert msg.segment("MSH").value(2) == "^~\\&#"


def test_msh1_is_the_field_separator_and_msh2_is_returned_raw_never_unescaped():
    msh = parse_message(hl7(MSH)).segment("MSH")
    assert msh.value(1) == "|"
    assert msh.value(2) == "^~\\&"
    assert msh.field(2) == [[["^~\\&"]]]
    assert msh.raw_field(2) == "^~\\&"


def test_msh_numbering_is_off_by_one_so_msh3_is_the_sending_application():
    msh = parse_message(hl7(MSH)).segment("MSH")
    assert msh.value(3) == "BOAO_HIS"
    assert msh.value(9, comp=2) == "O11"
    assert msh.value(12) == "2.5"


# ---- fields, repetitions, components, sub-components -----------------------------------

def test_field_returns_repetitions_of_components_of_subcomponents():
    pid = parse_message(hl7(MSH, "PID|1||A1^^^AUTH&1.2&ISO^MR~B2^^^OTHER^NI")).segment("PID")
    assert pid.field(3) == [
        [["A1"], [""], [""], ["AUTH", "1.2", "ISO"], ["MR"]],
        [["B2"], [""], [""], ["OTHER"], ["NI"]],
    ]


def test_value_defaults_to_first_repetition_component_and_subcomponent():
    pid = parse_message(hl7(MSH, "PID|1||A1^^^AUTH&1.2&ISO^MR~B2")).segment("PID")
    assert pid.value(3) == "A1"
    assert pid.value(3, comp=4) == "AUTH"
    assert pid.value(3, comp=4, sub=3) == "ISO"
    assert pid.value(3, rep=2) == "B2"


def test_missing_repetition_component_or_subcomponent_reads_as_none():
    pid = parse_message(hl7(MSH, "PID|1||A1^^^AUTH")).segment("PID")
    assert pid.value(3, rep=2) is None
    assert pid.value(3, comp=2) is None
    assert pid.value(3, comp=9) is None
    assert pid.value(3, comp=4, sub=2) is None


def test_empty_and_absent_fields_read_as_none_and_empty_list():
    pid = parse_message(hl7(MSH, "PID|1||||")).segment("PID")
    assert pid.value(2) is None
    assert pid.field(2) == []
    assert pid.value(40) is None
    assert pid.field(40) == []


def test_field_with_only_separators_counts_as_empty():
    pid = parse_message(hl7(MSH, "PID|1||^^~^")).segment("PID")
    assert pid.field(3) == []


def test_trailing_separators_add_no_fields():
    with_trailing = parse_message(hl7(MSH, "PID|1||A1|||||")).segment("PID")
    without = parse_message(hl7(MSH, "PID|1||A1")).segment("PID")
    assert len(with_trailing) == len(without) == 3


def test_segment_length_counts_msh_fields_in_standard_numbering():
    assert len(parse_message(hl7(MSH)).segment("MSH")) == 12


def test_explicit_null_is_returned_verbatim_as_two_quotes():
    pid = parse_message(hl7(MSH, 'PID|1||A1||""|""^^')).segment("PID")
    assert pid.value(5) == EXPLICIT_NULL == '""'
    assert pid.field(5) == [[['""']]]
    assert pid.value(6) == '""'


def test_explicit_null_is_not_the_same_as_empty():
    pid = parse_message(hl7(MSH, 'PID|1||A1||""|')).segment("PID")
    assert pid.value(5) == '""'
    assert pid.value(6) is None


def test_trailing_blanks_are_dropped_but_leading_blanks_kept():
    pid = parse_message(hl7(MSH, "PID|1||A1   ^^^AUTH  || 12 ")).segment("PID")
    assert pid.value(3) == "A1"
    assert pid.value(3, comp=4) == "AUTH"
    assert pid.value(5) == " 12"


def test_blank_padded_field_reads_as_empty():
    assert parse_message(hl7(MSH, "PID|1|    ")).segment("PID").value(2) is None


def test_raw_field_is_as_on_the_wire_with_escapes():
    rxe = parse_message(hl7(MSH, "RXE||D1^A \\T\\ B")).segment("RXE")
    assert rxe.raw_field(2) == "D1^A \\T\\ B"
    assert rxe.value(2, comp=2) == "A & B"


def test_field_numbers_start_at_one():
    pid = parse_message(hl7(MSH, "PID|1")).segment("PID")
    with pytest.raises(ValueError):
        pid.value(0)


# ---- paths ---------------------------------------------------------------------------

def test_message_get_reads_a_terse_path_on_the_first_segment_of_that_name():
    msg = parse_message(hl7(MSH, "PID|1||A1^^^AUTH&1.2&ISO^MR~B2^^^OTHER&9.9&ISO^NI"))
    assert msg.get("PID-3(2).4.2") == "9.9"
    assert msg.get("PID-3.4") == "AUTH"
    assert msg.get("PID-3(2)") == "B2"
    assert msg.get("MSH-9.2") == "O11"


def test_message_get_returns_none_for_absent_segment_or_empty_value():
    msg = parse_message(hl7(MSH, "PID|1||"))
    assert msg.get("PV1-2") is None
    assert msg.get("PID-3") is None


def test_segment_get_accepts_relative_and_segment_qualified_paths():
    pid = parse_message(hl7(MSH, "PID|1||A1^^^AUTH")).segment("PID")
    assert pid.get("3.4") == pid.get("PID-3.4") == "AUTH"


def test_malformed_path_is_a_value_error():
    msg = parse_message(hl7(MSH))
    with pytest.raises(ValueError):
        msg.get("PID:3")


# ---- segment terminators and framing -----------------------------------------------------

@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_segments_split_on_cr_lf_or_crlf(sep):
    msg = parse_message(hl7(MSH, "PID|1||A1", "PV1|1|O", sep=sep))
    assert [s.name for s in msg.segments] == ["MSH", "PID", "PV1"]
    assert msg.get("PV1-2") == "O"


def test_stray_lf_in_a_cr_terminated_message_is_text_not_a_segment_break():
    msg = parse_message(hl7(MSH, "OBX|1|TX|NOTE||line one\nline two", "PV1|1|O"))
    assert [s.name for s in msg.segments] == ["MSH", "OBX", "PV1"]
    assert msg.get("OBX-5") == "line one\nline two"


def test_empty_lines_between_segments_are_skipped():
    msg = parse_message(MSH + "\r\r\rPID|1\r\r")
    assert [s.name for s in msg.segments] == ["MSH", "PID"]


def test_segment_index_is_its_1_based_position_in_the_message():
    msg = parse_message(hl7(MSH, "PID|1", "ORC|NW", "RXE||X", "ORC|NW"))
    assert [s.index for s in msg.segments_named("ORC")] == [3, 5]


def test_mllp_framing_bytes_at_the_ends_are_stripped():
    msg = parse_message(b"\x0b" + hl7(MSH, "PID|1").encode() + b"\x1c\r")
    assert [s.name for s in msg.segments] == ["MSH", "PID"]
    assert msg.segment("PID").raw_field(1) == "1"


def test_line_that_is_not_a_segment_is_kept_as_text_of_the_previous_one_with_a_warning():
    msg = parse_message(hl7(MSH, "NTE|1||first part", "second part"))
    assert msg.get("NTE-3") == "first part\rsecond part"
    assert any("not a segment" in w for w in msg.warnings)


# ---- header ----------------------------------------------------------------------------

def test_header_shortcuts_are_read_from_msh():
    msg = parse_message(hl7(MSH + "|||AL|NE"))
    assert (msg.message_code, msg.trigger_event, msg.structure) == ("RDE", "O11", "RDE_O11")
    assert msg.message_type == "RDE^O11"
    assert msg.control_id == "CTRL1"
    assert msg.processing_id == "P"
    assert msg.version == "2.5"
    assert (msg.sending_application, msg.sending_facility) == ("BOAO_HIS", "BOAO_SUPER_HOSPITAL")
    assert (msg.receiving_application, msg.receiving_facility) == ("LECHENG_GW", "HAINAN_EPC")
    assert (msg.accept_ack_type, msg.application_ack_type) == ("AL", "NE")


def test_absent_header_fields_read_as_empty_string():
    msg = parse_message(hl7("MSH|^~\\&|||||||ADT^A01|C1|P|2.3"))
    assert msg.structure == ""
    assert msg.sending_application == ""
    assert msg.accept_ack_type == ""


def test_header_takes_the_first_component_of_hd_and_pt_fields():
    msg = parse_message(hl7("MSH|^~\\&|APP^1.2.3^ISO|FAC^4.5^ISO|||20260315||ORU^R01|C1|T^A|2.5.1^CHN"))
    assert msg.sending_application == "APP"
    assert msg.processing_id == "T"
    assert msg.version == "2.5.1"


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1",
                                     "2.8", "2.8.1", "2.8.2"])
def test_versions_2_3_to_2_8_2_parse_without_warnings(version):
    msg = parse_message(hl7(f"MSH|^~\\&|A|B|C|D|20260315||ADT^A01|C1|P|{version}", "PID|1||X"))
    assert msg.version == version
    assert msg.warnings == []


def test_version_outside_the_tested_range_parses_with_a_warning():
    msg = parse_message(hl7("MSH|^~\\&|A|B|C|D|20260315||ADT^A01|C1|P|2.1"))
    assert msg.version == "2.1"
    assert any("MSH-12" in w for w in msg.warnings)


def test_message_parsed_from_str_has_no_charset():
    msg = parse_message(hl7(MSH))
    assert msg.charset == ""
    assert msg.text.startswith("MSH|")


# ---- Z-segments and groups ---------------------------------------------------------------

def test_z_segments_are_kept_in_order_and_addressable():
    msg = parse_message(hl7(MSH, "PID|1", "ZLC|1|LC2026-A-0042|FIRST_USE", "ZLC|2|LC2026-B-0001"))
    assert [s.name for s in msg.segments] == ["MSH", "PID", "ZLC", "ZLC"]
    assert msg.get("ZLC-2") == "LC2026-A-0042"
    assert [s.value(2) for s in msg.segments_named("ZLC")] == ["LC2026-A-0042", "LC2026-B-0001"]


def test_groups_start_at_each_start_segment_and_run_to_the_next():
    msg = parse_message(hl7(MSH, "PID|1", "ORC|NW|A", "RXE||X", "RXR|PO", "ORC|NW|B", "RXE||Y"))
    groups = msg.groups("ORC")
    assert [[s.name for s in g] for g in groups] == [["ORC", "RXE", "RXR"], ["ORC", "RXE"]]
    assert [g[0].value(2) for g in groups] == ["A", "B"]


def test_groups_with_members_end_at_the_first_non_member():
    msg = parse_message(hl7(MSH, "ORC|NW|A", "RXE||X", "NTE|1", "RXR|PO", "ORC|NW|B", "RXE||Y"))
    groups = msg.groups("ORC", members={"RXE", "RXR"})
    assert [[s.name for s in g] for g in groups] == [["ORC", "RXE"], ["ORC", "RXE"]]


def test_segment_returns_the_first_and_none_when_absent():
    msg = parse_message(hl7(MSH, "ORC|NW|A", "ORC|NW|B"))
    assert msg.segment("ORC").value(2) == "A"
    assert msg.segment("RXE") is None
    assert msg.segments_named("RXE") == []


# ---- not HL7 / missing required header fields ---------------------------------------------

def test_garbage_that_is_not_hl7_raises_parse_error():
    with pytest.raises(Hl7ParseError) as caught:
        parse_message(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
    assert caught.value.errors[0].segment == "MSH"
    assert "does not start with an MSH segment" in caught.value.errors[0].text
    assert caught.value.partial_msh == {}


def test_empty_input_raises_parse_error():
    with pytest.raises(Hl7ParseError):
        parse_message(b"\x0b\x1c\r")


def test_leading_garbage_is_rejected_but_the_msh_behind_it_is_recovered_for_the_ar():
    with pytest.raises(Hl7ParseError) as caught:
        parse_message(b"\x00\x00junk" + hl7(MSH).encode())
    assert caught.value.partial_msh["control_id"] == "CTRL1"
    assert caught.value.partial_msh["sending_application"] == "BOAO_HIS"


def test_unusable_encoding_characters_raise_parse_error():
    with pytest.raises(Hl7ParseError) as caught:
        parse_message("MSH|ABCD|X|Y")
    assert "not usable delimiters" in caught.value.errors[0].text


@pytest.mark.parametrize("field,msh", [
    (9, "MSH|^~\\&|A|B|C|D|20260315|||C1|P|2.5"),
    (10, "MSH|^~\\&|A|B|C|D|20260315||ADT^A01||P|2.5"),
    (12, "MSH|^~\\&|A|B|C|D|20260315||ADT^A01|C1|P|"),
])
def test_missing_required_header_field_is_one_error_naming_it_with_code_101(field, msh):
    with pytest.raises(Hl7ParseError) as caught:
        parse_message(hl7(msh))
    [error] = caught.value.errors
    assert (error.segment, error.sequence, error.field, error.code) == ("MSH", 1, field, "101")
    assert error.text.startswith(f"MSH-{field} (")


def test_missing_message_type_error_text_uses_the_hl7_field_name():
    with pytest.raises(Hl7ParseError) as caught:
        parse_message(hl7("MSH|^~\\&|A|B|C|D|20260315|||C1|P|2.5"))
    assert caught.value.errors[0].text == "MSH-9 (Message Type) is required but empty"


def test_bad_sample_without_msh9_and_msh10_reports_both_and_recovers_the_rest():
    with pytest.raises(Hl7ParseError) as caught:
        parse_message((DATA / "bad_missing_msg_type.hl7").read_bytes())
    assert [(e.field, e.code) for e in caught.value.errors] == [(9, "101"), (10, "101")]
    assert caught.value.partial_msh == {
        "sending_application": "BOAO_HIS", "sending_facility": "BOAO_SUPER_HOSPITAL",
        "processing_id": "P", "version": "2.5",
    }


def test_parse_error_is_a_value_error():
    assert issubclass(Hl7ParseError, ValueError)
