"""Segment.field's quick split (no sub-components, no escapes) gives what the leaf-by-leaf split gives.

Every string of up to five characters over value, blank, delimiter and escape characters is read
both ways, under the standard delimiters, non-standard ones, and an MSH-2 without a sub-component
separator.
"""
from itertools import product

import pytest

from gateway.hl7v2 import parse_message
from gateway.hl7v2.message import Segment, _field_parts

HEADERS = {
    "standard": ("MSH|^~\\&|A|B|C|D|20260315||ADT^A01|C1|P|2.5", "a ^~&\\T"),
    "non-standard": ("MSH*:!/@*A*B*C*D*20260315**ADT:A01*C1*P*2.5", "a :!@/T"),
    "no sub-component separator": ("MSH|^~\\|A|B|C|D|20260315||ADT^A01|C1|P|2.5", "a ^~&\\T"),
}


@pytest.mark.parametrize("header", HEADERS)
def test_quick_split_equals_the_leaf_by_leaf_split_for_every_short_field(header):
    msh, alphabet = HEADERS[header]
    rules = parse_message(msh).segments[0]._rules
    fs = rules.field
    checked = 0
    for length in range(1, 6):
        for chars in product(alphabet, repeat=length):
            raw = "".join(chars)
            got = Segment("PID", 2, f"PID{fs}1{fs}{raw}", rules).field(2)
            assert got == _field_parts(raw, rules), raw
            checked += 1
    assert checked == sum(len(alphabet) ** n for n in range(1, 6))


def test_quick_split_keeps_leading_blanks_and_drops_trailing_ones():
    pid = parse_message("MSH|^~\\&|A|B|C|D|20260315||ADT^A01|C1|P|2.5\rPID|1|| x ^ y~  ^z ").segment("PID")
    assert pid.field(3) == [[[" x"], [" y"]], [[""], ["z"]]]


def test_quick_split_reads_a_field_of_separators_and_blanks_as_empty():
    pid = parse_message("MSH|^~\\&|A|B|C|D|20260315||ADT^A01|C1|P|2.5\rPID|1|| ^ ~^ ").segment("PID")
    assert pid.field(3) == []


def test_a_segment_without_field_values_is_still_a_segment():
    msg = parse_message("MSH|^~\\&|A|B|C|D|20260315||ADT^A01|C1|P|2.5\rZLC|\rPID|1")
    zlc = msg.segment("ZLC")
    assert len(zlc) == 0
    assert (zlc or "fallback") is zlc
