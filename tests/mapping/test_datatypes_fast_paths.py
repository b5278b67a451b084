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
