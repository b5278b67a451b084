"""The converters' hot helpers agree with their plain definitions on every small input."""
from itertools import product

from gateway.mapping.datatypes import EXPLICIT_NULL, first_rep, reps

LEAVES = ["", " ", "\u3000", "a", " a", EXPLICIT_NULL, '"', "\t"]


def _reference_reps(field):
    """The definition: repetitions with a sub-component that is neither blank nor the explicit null."""
    return [rep for rep in field or () if any(s.strip() and s != EXPLICIT_NULL for c in rep for s in c)]


def test_reps_and_first_rep_match_the_definition_on_every_small_field():
    shapes = []
    for a, b in product(LEAVES, repeat=2):
        shapes += [[[[a]]], [[[a], [b]]], [[[a, b]]], [[[a]], [[b]]], [[[a]], [[b], [a]]]]
    shapes += [None, []]
    for field in shapes:
        expected = _reference_reps(field)
        assert reps(field) == expected, field
        assert first_rep(field) == (expected[0] if expected else None), field


def test_identifier_system_answers_the_same_from_its_memo_and_keeps_the_memo_bounded():
    from pathlib import Path

    from gateway.mapping import terminology as terminology_module
    from gateway.mapping.terminology import Terminology

    terms = Terminology.load(Path(__file__).resolve().parents[2] / "mappings")
    cases = [("BOAO_SUPER_HOSPITAL", "", "", "MR"), ("CHNMPS", "", "", "NNCHN"), ("", "1.2.3", "ISO", ""),
             ("", "http://x.example/ids", "URI", ""), ("", "", "", "MR"), ("BOAO_HIS", "", "", "PLAC")]
    first = [terms.identifier_system(*case) for case in cases]
    assert first == [terms._identifier_system(*case) for case in cases]
    assert [terms.identifier_system(*case) for case in cases] == first
    assert first[2] == "urn:oid:1.2.3" and first[4] is None
    for i in range(terminology_module._MEMO_LIMIT + 10):
        assert terms.identifier_system(f"H{i}", "", "", "MR") == terms._identifier_system(f"H{i}", "", "", "MR")
    assert len(terms._identifier_systems) == terminology_module._MEMO_LIMIT


def test_temp_ids_are_distinct_rfc4122_version_4_uuids():
    import uuid

    from gateway.mapping.engine import _temp_id

    ids = [_temp_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for temp in ids:
        assert temp.startswith("urn:uuid:")
        parsed = uuid.UUID(temp[len("urn:uuid:"):])
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == temp[len("urn:uuid:"):]


def test_compact_drops_exactly_what_compares_equal_to_none_empty_string_list_or_dict():
    from gateway.mapping.datatypes import _compact

    class Text(str):
        pass

    values = [None, "", [], {}, 0, 0.0, False, True, (), set(), "a", [0], {"a": None}, Text(""), Text("x"), 1, -1.5]
    data = {f"k{i}": v for i, v in enumerate(values)}
    assert _compact(data) == {k: v for k, v in data.items() if v not in (None, "", [], {})}
    assert list(_compact(data)) == [k for k, v in data.items() if v not in (None, "", [], {})]


def test_decimal_reads_plain_whole_numbers_as_the_decimal_path_does():
    from decimal import Decimal

    from gateway.mapping.datatypes import decimal

    for raw in ["0", "7", "007", "300", "12345678901234567890", "1.0", "1.50", "-3", "+4", "2E3", " 6"]:
        number = Decimal(raw.strip())
        expected = int(number) if number == number.to_integral_value() and "." not in raw else float(number)
        got = decimal(None, [[[raw]]])
        assert got == expected and type(got) is type(expected), raw


def test_field_refs_parse_the_same_when_remembered_and_bad_ones_fail_every_time():
    import pytest

    from gateway.mapping.engine import FieldRef, MappingError

    for text in ["PID-3", "PID-3.4", "TQ1", "ORC-12", " RXE-2 "]:
        first, again = FieldRef.parse(text, "here"), FieldRef.parse(text, "there")
        assert first == again
    assert FieldRef.parse("PID-3.4", "x") == FieldRef("PID", 3, 4)
    for _ in range(2):
        with pytest.raises(MappingError, match="rows: 'pid-3' is not a field reference"):
            FieldRef.parse("pid-3", "rows")


def test_is_cjk_matches_the_character_range_definition_on_every_bmp_character():
    from gateway.mapping.datatypes import _is_cjk

    for code in range(0x10000):
        ch = chr(code)
        assert _is_cjk(f"a{ch}b") == ("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"), hex(code)
