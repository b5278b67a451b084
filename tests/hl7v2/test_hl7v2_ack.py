"""build_ack: addressing, MSA, ERR layout, escaping, and control bytes from the input."""
from pathlib import Path

import pytest

from gateway.hl7v2 import AckCode, Hl7Error, Hl7ParseError, build_ack, parse_message

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
FIXED = {"control_id": "ACK0001", "timestamp": "20260315093001+0800"}


def segments(ack: str) -> list[str]:
    assert ack.endswith("\r") and "\n" not in ack
    return ack[:-1].split("\r")


def parsed(ack: str):
    return parse_message(ack)


def test_aa_for_a_good_message_is_exact():
    msg = parse_message((DATA / "rde_o11_new_imported.hl7").read_bytes())
    assert segments(build_ack(msg, AckCode.AA, **FIXED)) == [
        "MSH|^~\\&|LECHENG_GW|HAINAN_EPC|BOAO_HIS|BOAO_SUPER_HOSPITAL|20260315093001+0800||"
        "ACK^O11^ACK|ACK0001|P|2.5||||||UNICODE UTF-8",
        "MSA|AA|BSH20260315000001",
    ]


def test_ack_echoes_msh10_in_msa2_and_swaps_sender_and_receiver():
    msg = parse_message((DATA / "rds_o13_dispense.hl7").read_bytes())
    ack = parsed(build_ack(msg, "AA"))
    assert ack.get("MSA-2") == msg.control_id == "PH017-20260315-0042"
    assert (ack.sending_application, ack.sending_facility) == ("LECHENG_GW", "HAINAN_EPC")
    assert (ack.receiving_application, ack.receiving_facility) == ("EPC_PHARM", "HAIKOU_PHARMACY_017")


def test_ack_copies_hierarchic_designators_whole_when_swapping():
    msg = parse_message((DATA / "RDE-O11-01.hl7").read_bytes())
    ack = parsed(build_ack(msg, "AA"))
    assert ack.segment("MSH").raw_field(3) == "EHRApp^1.Edu^ISO"
    assert ack.segment("MSH").raw_field(6) == "GHHSFacility^2.16.840.1.122848.1.30^ISO"


def test_ack_message_type_processing_id_and_version_follow_the_original():
    msg = parse_message((DATA / "oru_r01_device_use.hl7").read_bytes())
    ack = parsed(build_ack(msg, "AA"))
    assert ack.segment("MSH").raw_field(9) == "ACK^R01^ACK"
    assert (ack.processing_id, ack.version) == ("P", "2.8.2")


def test_ack_gets_a_new_control_id_when_none_is_given():
    msg = parse_message((DATA / "rde_o11_new_imported.hl7").read_bytes())
    first, second = parsed(build_ack(msg, "AA")), parsed(build_ack(msg, "AA"))
    assert first.control_id and first.control_id != msg.control_id
    assert first.control_id != second.control_id


def test_sender_defaults_apply_when_the_original_names_no_receiver():
    msg = parse_message("MSH|^~\\&|HIS|HOSP|||20260315||ADT^A01|C1|P|2.4\r")
    ack = parsed(build_ack(msg, "AA", sending_application="GW2", sending_facility="FAC2"))
    assert (ack.sending_application, ack.sending_facility) == ("GW2", "FAC2")


def test_msa3_carries_the_given_text():
    msg = parse_message((DATA / "rde_o11_new_imported.hl7").read_bytes())
    assert parsed(build_ack(msg, "AA", text="stored and queued")).get("MSA-3") == "stored and queued"


@pytest.mark.parametrize("code,accept_code", [("AA", "CA"), ("AE", "CE"), ("AR", "CR")])
def test_accept_ack_uses_commit_codes(code, accept_code):
    msg = parse_message((DATA / "rde_o11_new_imported.hl7").read_bytes())
    assert parsed(build_ack(msg, code, accept_ack=True)).get("MSA-1") == accept_code


def test_unknown_ack_code_is_refused():
    msg = parse_message((DATA / "rde_o11_new_imported.hl7").read_bytes())
    with pytest.raises(ValueError):
        build_ack(msg, "OK")


# ---- AR for an unparseable message ------------------------------------------------------

def test_ar_for_a_message_without_msh9_names_msh9_with_code_101():
    with pytest.raises(Hl7ParseError) as caught:
        parse_message((DATA / "bad_missing_msg_type.hl7").read_bytes())
    ack = build_ack(caught.value.partial_msh, AckCode.AR, caught.value.errors, **FIXED)
    assert segments(ack) == [
        "MSH|^~\\&|LECHENG_GW|HAINAN_EPC|BOAO_HIS|BOAO_SUPER_HOSPITAL|20260315093001+0800||ACK|ACK0001|P|2.5",
        "MSA|AR||MSH-9 (Message Type) is required but empty",
        "ERR|MSH^1^9^101&Required field missing&HL70357|MSH^1^9^1|101^Required field missing^HL70357|E||||"
        "MSH-9 (Message Type) is required but empty",
        "ERR|MSH^1^10^101&Required field missing&HL70357|MSH^1^10^1|101^Required field missing^HL70357|E||||"
        "MSH-10 (Message Control ID) is required but empty",
    ]


def test_ar_from_partial_msh_carries_the_recovered_control_id_in_msa2():
    partial = {"sending_application": "HIS", "control_id": "C77", "message_type": "RDE^O11", "version": "2.4"}
    ack = parsed(build_ack(partial, "AR", [Hl7Error("too big", code="207")]))
    assert ack.get("MSA-2") == "C77"
    assert ack.segment("MSH").raw_field(9) == "ACK^O11^ACK"
    assert ack.version == "2.4"


def test_ar_for_garbage_with_nothing_recovered_is_still_a_valid_ack():
    ack = parsed(build_ack({}, "AR", [Hl7Error("Not an HL7 v2 message", "MSH", 1, code="100")]))
    assert ack.get("MSA-1") == "AR"
    assert ack.get("MSA-2") is None
    assert ack.version == "2.5"


# ---- ERR layout -------------------------------------------------------------------------

def test_err2_location_is_segment_sequence_field_repetition_component_subcomponent():
    msg = parse_message((DATA / "rde_o11_new_imported.hl7").read_bytes())
    error = Hl7Error("PID-3 repetition 2 assigning authority is not configured", "PID", 2, 3, 2, 4, 1,
                     code="103")
    err = parsed(build_ack(msg, "AE", [error])).segment("ERR")
    assert err.raw_field(2) == "PID^2^3^2^4^1"


def test_err_without_component_omits_trailing_location_parts_and_assumes_repetition_1():
    err = parsed(build_ack({}, "AE", [Hl7Error("x", "RXE", 6, 2, code="101")])).segment("ERR")
    assert err.raw_field(2) == "RXE^6^2^1"


def test_err3_is_the_table_0357_code_text_and_system():
    err = parsed(build_ack({}, "AE", [Hl7Error("x", "ORC", 4, 2, code="204")])).segment("ERR")
    assert err.raw_field(3) == "204^Unknown key identifier^HL70357"


def test_err4_is_severity_and_err8_the_text_a_person_can_act_on():
    error = Hl7Error("Order BSH-RX-0001 is unknown; send the NW first", "ORC", 4, 2, code="204", severity="W")
    err = parsed(build_ack({}, "AE", [error])).segment("ERR")
    assert err.value(4) == "W"
    assert err.value(8) == "Order BSH-RX-0001 is unknown; send the NW first"


def test_err1_carries_the_v23_style_error_code_and_location():
    err = parsed(build_ack({}, "AE", [Hl7Error("x", "PID", 2, 3, code="101")])).segment("ERR")
    assert err.raw_field(1) == "PID^2^3^101&Required field missing&HL70357"


def test_one_err_segment_per_error():
    errors = [Hl7Error("a", "PID", 2, 3), Hl7Error("b", "RXE", 6, 2), Hl7Error("c", "ZLC", 8, 2)]
    ack = parsed(build_ack({}, "AE", errors))
    assert [e.value(8) for e in ack.segments_named("ERR")] == ["a", "b", "c"]


def test_msa3_defaults_to_the_first_error_text_for_old_receivers():
    ack = parsed(build_ack({}, "AE", [Hl7Error("first problem"), Hl7Error("second problem")]))
    assert ack.get("MSA-3") == "first problem"


# ---- escaping and control bytes -------------------------------------------------------------

def test_values_from_the_input_are_escaped_with_the_ack_delimiters():
    partial = {"sending_application": "HIS|X^Y", "control_id": "C&1~2\\3"}
    ack = build_ack(partial, "AR", [Hl7Error("bad | value ^ here & there ~ and \\ this")], **FIXED)
    msh, msa, err = segments(ack)
    assert msh.split("|")[4] == "HIS\\F\\X\\S\\Y"
    assert msa.split("|")[2] == "C\\T\\1\\R\\2\\E\\3"
    assert err.split("|")[8] == "bad \\F\\ value \\S\\ here \\T\\ there \\R\\ and \\E\\ this"
    back = parse_message(ack)
    assert back.receiving_application == "HIS|X^Y"
    assert back.get("MSA-2") == "C&1~2\\3"


def test_fields_copied_from_a_message_with_other_delimiters_are_re_escaped():
    msg = parse_message("MSH*:!/@*APP:1.2:ISO*HOSP*GW*EPC*20260315**ADT:A01*C1*P*2.5\rNTE*1\r")
    ack = build_ack(msg, "AA", **FIXED)
    assert segments(ack)[0].split("|")[4] == "APP^1.2^ISO"


def test_control_bytes_from_the_input_never_reach_the_ack():
    partial = {"sending_application": "BAD\x1cAPP\x0b", "control_id": "C\x001\r\n",
               "sending_facility": "FAC\x1c"}
    ack = build_ack(partial, "AR", [Hl7Error("text with \x1c frame end and \x0b start")])
    body = ack.replace("\r", "")
    assert not any(ord(c) < 0x20 for c in body)
    back = parse_message(ack)
    assert back.receiving_application == "BADAPP"
    assert back.get("MSA-2") == "C1"


def test_mllp_end_byte_inside_msh3_does_not_reach_the_ack():
    raw = b"MSH|^~\\&|HIS\x1cX|HOSP|GW|EPC|20260315||ADT^A01|C1|P|2.5\r"
    ack = build_ack(parse_message(raw), "AA")
    assert "\x1c" not in ack
    assert parse_message(ack).receiving_application == "HISX"


def test_long_msa3_text_is_shortened_but_err8_keeps_it_whole():
    text = "x" * 200
    ack = parsed(build_ack({}, "AE", [Hl7Error(text)]))
    assert len(ack.get("MSA-3")) <= 80
    assert ack.segment("ERR").value(8) == text


def test_mangled_input_either_parses_or_raises_parse_error_and_its_ack_is_clean():
    import random

    rng = random.Random(20260315)
    base = (DATA / "rde_o11_new_imported.hl7").read_bytes()
    noise = b"|^~\\&\r\n\x0b\x1c\x00\"MSH.X"
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data) + 1)
            choice = rng.random()
            if choice < 0.5:
                data[at:at + 1] = bytes([rng.choice(noise)])
            elif choice < 0.8:
                data[at:at] = bytes([rng.randrange(256)])
            else:
                del data[at:at + rng.randint(1, 30)]
        try:
            msg = parse_message(bytes(data))
            ack = build_ack(msg, "AA")
        except Hl7ParseError as exc:
            ack = build_ack(exc.partial_msh, "AR", exc.errors)
        assert not any(ord(c) < 0x20 for c in ack.replace("\r", ""))
        assert parse_message(ack).message_code == "ACK"
