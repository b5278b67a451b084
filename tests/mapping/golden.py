"""Golden files for mapping output, shared by the HL7 and document mapping tests.

Temporary ``urn:uuid:`` ids are replaced by ``<mapping key>#<n>`` of the resource they name, so the
expected files in ``tests/data/expected`` are stable. To review a change: run with
``UPDATE_EXPECTED=1``, then read the diff of the expected files before committing them.
"""
from __future__ import annotations

import json
import os
from zoneinfo import ZoneInfo

from conftest import DATA
from gateway.config import REPO_ROOT
from gateway.mapping.engine import MappedMessage, MappingSet
from gateway.mapping.terminology import Terminology

MAPPINGS = MappingSet.load(REPO_ROOT / "mappings")
TERMINOLOGY = Terminology.load(REPO_ROOT / "mappings")
ZONE = ZoneInfo("Asia/Shanghai")
EXPECTED = DATA / "expected"


def stable_resources(result: MappedMessage, **extra) -> list[dict]:
    """The mapped resources as plain JSON with stable names for temporary ids (``extra`` added to each)."""
    assert result.errors == []
    names = {m.temp_id: f"{m.key}#{i}" for i, m in enumerate(result.resources)}
    text = json.dumps([{**extra, "key": m.key, "identity": m.identity, "resource": m.resource}
                       for m in result.resources], ensure_ascii=False, indent=1)
    for temp, name in names.items():
        text = text.replace(temp, name)
    return json.loads(text)


def assert_matches_expected(actual: list[dict], name: str, key_fields: tuple[str, ...] = ("key",)) -> None:
    """Element by element against ``tests/data/expected/<name>.json`` (rewritten with UPDATE_EXPECTED=1)."""
    expected_file = EXPECTED / f"{name}.json"
    if os.environ.get("UPDATE_EXPECTED"):
        expected_file.write_text(json.dumps(actual, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    expected = json.loads(expected_file.read_text(encoding="utf-8"))
    assert [tuple(r[k] for k in key_fields) for r in actual] == [tuple(r[k] for k in key_fields) for r in expected]
    for got, want in zip(actual, expected):
        for element in sorted(set(got["resource"]) | set(want["resource"])):
            assert got["resource"].get(element) == want["resource"].get(element), (got["key"], element)
        assert got["identity"] == want["identity"]
