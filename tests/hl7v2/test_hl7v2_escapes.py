"""Escape sequences in values: delimiters, hex, formatting, and what is kept literally."""
import pytest

from gateway.hl7v2 import parse_message
from gateway.hl7v2.escapes import MAX_REPEAT

MSH = "MSH|^~\\&|HIS|HOSP|GW|EPC|20260315||ORU^R01|C1|P|2.5|||||CHN|UNICODE UTF-8"


def nte(value: str, *, charset_msh: str = MSH, as_bytes_in: str | None = None) -> str | None:
    """NTE-3 of a message whose NTE-3 is `value` as written on the wire."""
    text = f"{charset_msh}\rNTE|1||{value}\r"
    data = text.encode(as_bytes_in) if as_bytes_in else text
    return parse_message(data).get("NTE-3")


@pytest.mark.parametrize("wire,expected", [
    ("a\\F\\b", "a|b"),
    ("a\\S\\b", "a^b"),
    ("a\\T\\b", "a&b"),
    ("a\\R\\b", "a~b"),
    ("a\\E\\b", "a\\b"),
])
def test_delimiter_escapes_become_the_delimiter_characters(wire, expected):
    assert nte(wire) == expected


def test_escaped_delimiters_do_not_split_the_value():
    msg = parse_message(f"{MSH}\rRXE||D1^首剂 600 mg \\T\\ 皮下\\S\\注射\r")
    assert msg.get("RXE-2.2") == "首剂 600 mg & 皮下^注射"
    assert msg.get("RXE-2.3") is None


def test_truncation_escape_is_the_truncation_character_in_v27():
    msg = parse_message("MSH|^~\\&#|A|B|C|D|20260315||ORU^R01|C1|P|2.7\rNTE|1||50\\P\\ off\r")
    assert msg.get("NTE-3") == "50# off"


def test_hex_escape_is_decoded_in_the_message_charset_utf8():
    assert nte("\\XE4B8AD\\文", as_bytes_in="utf-8") == "中文"


def test_hex_escape_is_decoded_in_the_message_charset_gb18030():
    gb_msh = MSH.replace("UNICODE UTF-8", "GB 18030-2000")
    assert nte("\\XC0EE\\", charset_msh=gb_msh, as_bytes_in="gb18030") == "李"


def test_adjacent_hex_escapes_form_one_multibyte_character():
    assert nte("\\XE4\\\\XB8AD\\", as_bytes_in="utf-8") == "中"


def test_hex_escape_that_is_not_valid_in_the_charset_is_kept_literally():
    assert nte("\\XFF\\", as_bytes_in="utf-8") == "\\XFF\\"


def test_br_is_a_line_break():
    assert nte("line one\\.br\\line two") == "line one\nline two"


def test_sp_without_count_is_one_line_break_and_with_count_n_line_breaks():
    assert nte("a\\.sp\\b") == "a\nb"
    assert nte("a\\.sp 3\\b") == "a\n\n\nb"


def test_sp_with_a_huge_count_is_capped():
    value = nte("a\\.sp 99999999\\b")
    assert value == "a" + "\n" * MAX_REPEAT + "b"


def test_skip_with_a_huge_count_is_capped():
    assert nte("a\\.sk 99999999\\b") == "a" + " " * MAX_REPEAT + "b"


def test_highlight_on_and_off_are_dropped():
    assert nte("\\H\\WARNING\\N\\ check dose") == "WARNING check dose"


@pytest.mark.parametrize("command", [".in +4", ".ti -2", ".fi", ".nf"])
def test_layout_commands_are_dropped(command):
    assert nte(f"a\\{command}\\b") == "ab"


def test_centre_command_is_a_line_break():
    assert nte("a\\.ce\\TITLE") == "a\nTITLE"


def test_unknown_escape_is_kept_literally():
    assert nte("a\\Zlocal\\b") == "a\\Zlocal\\b"


def test_unterminated_escape_is_kept_literally():
    assert nte("ends with \\F") == "ends with \\F"


def test_formatting_escape_with_a_bad_count_is_kept_literally():
    assert nte("a\\.sp many\\b") == "a\\.sp many\\b"


def test_value_without_escape_character_is_returned_as_is():
    value = "Leadless pacemaker implanted, right ventricle"
    assert nte(value) == value


def test_escape_sequences_are_resolved_in_field_structure_too():
    msg = parse_message(f"{MSH}\rNTE|1||A\\T\\B~C\\F\\D\r")
    assert msg.segment("NTE").field(3) == [[["A&B"]], [["C|D"]]]


def test_value_that_is_only_formatting_reads_as_empty():
    assert nte("\\H\\\\N\\") is None
