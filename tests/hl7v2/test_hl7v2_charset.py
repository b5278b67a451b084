"""decode_message / MSH-18: strict decoding, fallback with a warning, errors naming MSH-18."""
from pathlib import Path

import pytest

from gateway.hl7v2 import Hl7ParseError, decode_message, parse_message

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"


def message(charset: str, pid5: str = "李^娜") -> str:
    return (f"MSH|^~\\&|HIS|HOSP|GW|EPC|20260315||ADT^A01|C9|P|2.5|||||CHN|{charset}\r"
            f"PID|1||P1^^^HOSP^MR||{pid5}\r")


def test_gb18030_sample_decodes_to_the_right_chinese_names():
    msg = parse_message((DATA / "rde_o11_two_orders_gb18030.hl7").read_bytes())
    assert msg.charset == "gb18030"
    assert msg.get("PID-5.1") == "李"
    assert msg.get("PID-5.2") == "娜"
    assert msg.get("RXE-2.2") == "阿托伐他汀钙片 20 mg"


def test_utf8_sample_decodes_to_the_right_chinese_names():
    msg = parse_message((DATA / "rde_o11_new_imported.hl7").read_bytes())
    assert msg.charset == "utf-8"
    assert (msg.get("PID-5.1"), msg.get("PID-5.2")) == ("王", "小明")


@pytest.mark.parametrize("declared,codec", [
    ("UNICODE UTF-8", "utf-8"),
    ("UTF-8", "utf-8"),
    ("GB 18030-2000", "gb18030"),
    ("GB18030", "gb18030"),
    ("GBK", "gbk"),
    ("CP936", "gbk"),
])
def test_declared_chinese_capable_charsets_map_to_python_codecs(declared, codec):
    text, used, warnings = decode_message(message(declared).encode(codec))
    assert used == codec
    assert "李^娜" in text
    assert warnings == []


@pytest.mark.parametrize("declared,codec", [("ASCII", "ascii"), ("8859/1", "latin-1"),
                                            ("8859/15", "iso8859-15"), ("BIG-5", "big5")])
def test_declared_table_0211_charsets_map_to_python_codecs(declared, codec):
    _, used, _ = decode_message(message(declared, pid5="DOE^JANE").encode("ascii"))
    assert used == codec


def test_latin1_declaration_decodes_accented_names():
    text, _, _ = decode_message(message("8859/1", pid5="MÜLLER^JOSÉ").encode("latin-1"))
    assert "MÜLLER^JOSÉ" in text


def test_declared_utf8_with_invalid_bytes_raises_naming_msh18_and_the_offset():
    raw = message("UNICODE UTF-8").encode("gb18030")
    bad_offset = raw.index("李".encode("gb18030"))
    with pytest.raises(Hl7ParseError) as caught:
        parse_message(raw)
    [error] = caught.value.errors
    assert (error.segment, error.field) == ("MSH", 18)
    assert "MSH-18" in error.text
    assert f"byte offset {bad_offset}" in error.text


def test_charset_error_still_recovers_msh_for_the_ar():
    with pytest.raises(Hl7ParseError) as caught:
        parse_message(message("UNICODE UTF-8").encode("gb18030"))
    assert caught.value.partial_msh["control_id"] == "C9"
    assert caught.value.partial_msh["message_type"] == "ADT^A01"


def test_declared_ascii_with_a_non_ascii_byte_is_an_error_not_a_mangled_name():
    with pytest.raises(Hl7ParseError) as caught:
        decode_message(message("ASCII").encode("utf-8"))
    assert caught.value.errors[0].field == 18


def test_unknown_declared_charset_raises_naming_msh18():
    with pytest.raises(Hl7ParseError) as caught:
        decode_message(message("EBCDIC-KLINGON", pid5="DOE").encode("ascii"))
    [error] = caught.value.errors
    assert error.field == 18
    assert "EBCDIC-KLINGON" in error.text


def test_undeclared_utf8_is_decoded_as_utf8_with_a_warning():
    text, used, warnings = decode_message(message("").encode("utf-8"))
    assert used == "utf-8"
    assert "李^娜" in text
    assert len(warnings) == 1 and "utf-8" in warnings[0]


def test_undeclared_non_utf8_falls_back_to_gb18030_with_a_warning():
    text, used, warnings = decode_message(message("").encode("gb18030"))
    assert used == "gb18030"
    assert "李^娜" in text
    assert len(warnings) == 1 and "gb18030" in warnings[0]


def test_fallback_charset_is_configurable():
    _, used, warnings = decode_message(message("", pid5="MÜLLER").encode("latin-1"),
                                       fallback_charset="latin-1")
    assert used == "latin-1"
    assert "latin-1" in warnings[0]


def test_undeclared_plain_ascii_needs_no_warning():
    _, used, warnings = decode_message(message("", pid5="DOE^JANE").encode("ascii"))
    assert used == "utf-8"
    assert warnings == []


def test_utf8_byte_order_mark_is_stripped():
    text, used, _ = decode_message(b"\xef\xbb\xbf" + message("UNICODE UTF-8").encode("utf-8"))
    assert text.startswith("MSH|")
    assert used == "utf-8"


def test_byte_order_mark_after_mllp_start_byte_is_stripped_too():
    msg = parse_message(b"\x0b\xef\xbb\xbf" + message("UNICODE UTF-8").encode("utf-8") + b"\x1c\r")
    assert msg.get("PID-5.1") == "李"


def test_parsed_message_records_charset_and_decode_warnings():
    msg = parse_message(message("").encode("gb18030"))
    assert msg.charset == "gb18030"
    assert any("gb18030" in w for w in msg.warnings)


def test_msh18_repetitions_use_the_first_as_the_message_charset():
    _, used, _ = decode_message(message("UNICODE UTF-8~GB 18030-2000").encode("utf-8"))
    assert used == "utf-8"
