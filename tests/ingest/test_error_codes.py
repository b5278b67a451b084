"""ERR-3 carries the HL7 table 0357 code that fits, never 207 for the sender's data (issue 14, item 10).

Interface engines resend on 207 "Application internal error" (transient); a 100-series code says the
message itself must change.
"""
from __future__ import annotations

from conftest import ack_segment, post_hl7, sample

ORDER = sample("rde_o11_new_imported.hl7").decode("utf-8")


def _err_codes(ack) -> list[str]:
    return [s[3].split("^")[0] for s in ack if s[0] == "ERR" and s[4] == "E"]


def test_an_order_without_its_prescriber_is_101_required_field_missing(client):
    without_requester = ORDER.replace("|||D1001^张^学军^^^^^^BOAO_SUPER_HOSPITAL^^^^EI|||", "||||||", 1)
    assert without_requester != ORDER
    _response, ack = post_hl7(client, without_requester.encode("utf-8"))
    assert ack_segment(ack, "MSA")[1] == "AE"
    assert _err_codes(ack) == ["101"]


def test_an_imported_drug_without_its_approval_is_101_not_207(client):
    lines = [line for line in ORDER.split("\r") if not line.startswith("ZLC")]
    _response, ack = post_hl7(client, "\r".join(lines).encode("utf-8"))
    assert ack_segment(ack, "MSA")[1] == "AE"
    codes = _err_codes(ack)
    assert codes and set(codes) == {"101"}


def test_a_hospital_sending_as_another_facility_is_refused_with_103(client_as):
    hospital = client_as("hospital", "BOAO_SUPER_HOSPITAL")
    other = ORDER.replace("|BOAO_HIS|BOAO_SUPER_HOSPITAL|", "|BOAO_HIS|HAIKOU_PEOPLES_HOSPITAL|", 1)
    _response, ack = post_hl7(hospital, other.encode("utf-8"))
    assert ack_segment(ack, "MSA")[1] == "AR"
    err = ack_segment(ack, "ERR")
    assert err[2].startswith("MSH^1^4") and err[3].startswith("103^Table value not found")


def test_bytes_that_are_not_the_declared_charset_are_102(client):
    broken = ORDER.encode("utf-8").replace("王".encode("utf-8"), b"\xff\xfe", 1)
    _response, ack = post_hl7(client, broken)
    assert ack_segment(ack, "MSA")[1] == "AR"
    assert ack_segment(ack, "ERR")[3].startswith("102^")
