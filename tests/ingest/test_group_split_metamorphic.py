"""Metamorphic test of group scoping (issue 12): a message's groups are independent, so

* the message split into one message per group (the same MSH, PID, PV1 and other message-level
  segments) stores exactly the same resources as the whole message, and
* the groups in another order store exactly the same resources,

ids, meta and the per-message records (Provenance, AuditEvent) aside (``stored.py``). Run over every
HL7 sample and external message with more than one top-level order, report or device group
(``tests/data`` and, where present, ``../shared``), and over every multi-item XML/JSON document.
A group that read a sibling's segments would store something else when alone: that is what this
catches, with no expected output to keep up to date.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from lxml import etree

from conftest import DATA
from gateway import create_app
from gateway.config import REPO_ROOT
from gateway.hl7v2 import parse_message
from gateway.mapping.engine import MappingSet
from stored import stored_resources

MAPPINGS = MappingSet.load(REPO_ROOT / "mappings")
SHARED = REPO_ROOT.parent / "shared"                 # ../shared beside the checkout (CI lays it there too)
_SEGMENT_END = re.compile(rb"\r\n|\r|\n")


def _hl7_inputs() -> list[Path]:
    roots = [DATA / "samples", DATA / "external", DATA / "groups", SHARED / "samples", SHARED / "external"]
    seen, found = set(), []
    for root in roots:
        for path in sorted(root.rglob("*.hl7")) if root.is_dir() else []:
            content = path.read_bytes()
            if content not in seen:
                seen.add(content)
                found.append(path)
    return found


def _segments_and_groups(raw: bytes):
    """(raw segment lines, the top-level group instances as lists of line indexes), or None when the
    message has no mapping or fewer than two top-level groups."""
    try:
        message = parse_message(raw)
    except Exception:
        return None
    spec = MAPPINGS.for_message(message.message_type)
    if spec is None or not spec.groups:
        return None
    lines = [line for line in _SEGMENT_END.split(raw) if line.strip()]
    assert [line[:3].decode("ascii") for line in lines] == [s.name for s in message.segments]
    position = {id(seg): i for i, seg in enumerate(message.segments)}
    instances = [group for definition in spec.groups.values()
                 for group in message.groups(definition["start"], definition["members"])]
    top = [group for group in instances
           if not any(other is not group and len(other) > len(group) and any(s is group[0] for s in other)
                      for other in instances)]
    if len(top) < 2:
        return None
    return lines, [[position[id(seg)] for seg in group] for group in top]


# a message that changes an order it does not create, and the message that creates it (sent first)
CREATED_BY = {"rde_o11_new_7001_then_bare_cancel_7002.hl7": DATA / "groups" / "rde_o11_order_7002.hl7",
              "rds_o13_two_dispenses.hl7": DATA / "groups" / "rde_o11_three_orders_dc_without_route.hl7"}
MULTI_GROUP = [path for path in _hl7_inputs() if _segments_and_groups(path.read_bytes())]


def _split(raw: bytes) -> list[bytes]:
    lines, groups = _segments_and_groups(raw)
    grouped = {i for group in groups for i in group}
    return [b"\r".join(line for i, line in enumerate(lines) if i not in grouped or i in group) + b"\r"
            for group in groups]


def _reordered(raw: bytes, order: list[int]) -> bytes:
    """The groups put in ``order``; message-level segments stay where they were."""
    lines, groups = _segments_and_groups(raw)
    starts = {group[0]: n for n, group in enumerate(groups)}
    grouped = {i for group in groups for i in group}
    out, slot = [], 0
    for i, line in enumerate(lines):
        if i in starts:
            out.extend(lines[j] for j in groups[order[slot]])
            slot += 1
        elif i not in grouped:
            out.append(line)
    return b"\r".join(out) + b"\r"


def _orders(count: int) -> list[list[int]]:
    reverse = list(range(count))[::-1]
    shuffled = list(range(count))
    random.Random(12).shuffle(shuffled)
    return [reverse] + ([shuffled] if shuffled not in (reverse, list(range(count))) else [])


def _store_hl7(tmp_path: Path, name: str, messages: list[bytes], path: Path) -> list[dict]:
    gateway = create_app({"DATA_DIR": str(tmp_path / name), "TESTING": True}).extensions["gateway"]
    before = [CREATED_BY[path.name].read_bytes()] if path.name in CREATED_BY else []
    for raw in before + messages:
        result = gateway.pipeline.ingest(raw)
        assert result.code == "AA", (name, result.errors)
    return stored_resources(gateway)


def test_the_multi_group_inputs_are_found():
    names = {path.name for path in MULTI_GROUP}
    assert {"rde_o11_two_orders_gb18030.hl7", "RDE-O11-02.hl7", "rde_o11_three_orders_dc_without_route.hl7",
            "rde_o11_new_7001_then_bare_cancel_7002.hl7", "oru_r01_two_implant_orders.hl7",
            "pex_p07_two_reports.hl7", "rds_o13_two_dispenses.hl7"} <= names


@pytest.mark.parametrize("path", MULTI_GROUP, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_one_message_per_group_stores_what_the_whole_message_stores(tmp_path, path):
    raw = path.read_bytes()
    whole = _store_hl7(tmp_path, "whole", [raw], path)
    assert whole
    assert _store_hl7(tmp_path, "split", _split(raw), path) == whole


@pytest.mark.parametrize("path", MULTI_GROUP, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_groups_in_another_order_store_the_same(tmp_path, path):
    raw = path.read_bytes()
    whole = _store_hl7(tmp_path, "whole", [raw], path)
    for n, order in enumerate(_orders(len(_segments_and_groups(raw)[1]))):
        assert _store_hl7(tmp_path, f"order{n}", [_reordered(raw, order)], path) == whole, order


# ------------------------------------------------------------------ documents (XML and JSON items)

def _document_inputs() -> list[tuple[str, Path]]:
    found = []
    for spec in MAPPINGS.by_name.values():
        if spec.source not in ("xml", "json") or not spec.groups:
            continue
        for root in (DATA / "samples", DATA / "groups"):
            for path in sorted(root.glob(f"*.{spec.source}")):
                read = spec.reader.read(path.read_bytes())
                if read.units and not read.units[0].problems:
                    unit = read.units[0]
                    groups = spec.reader.begin(unit, spec.groups)
                    if max(len(groups.scopes(name)) for name in spec.groups) > 1:
                        found.append((spec.name, path))
    return found


MULTI_ITEM = _document_inputs()


def _xml_items(raw: bytes, spec) -> tuple[etree._Element, list[etree._Element]]:
    root = etree.fromstring(raw)
    (name, definition), = spec.groups.items()
    return root, definition["select"].xpath(root)


def _xml_variants(raw: bytes, spec) -> tuple[list[bytes], list[bytes]]:
    count = len(_xml_items(raw, spec)[1])
    split = []
    for keep in range(count):
        root, items = _xml_items(raw, spec)
        for n, item in enumerate(items):
            if n != keep:
                item.getparent().remove(item)
        split.append(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    reordered = []
    for order in _orders(count):
        root, items = _xml_items(raw, spec)
        parent = items[0].getparent()
        at = parent.index(items[0])
        for item in items:
            parent.remove(item)
        for offset, n in enumerate(order):
            parent.insert(at + offset, items[n])
        reordered.append(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    return split, reordered


def _json_variants(raw: bytes, spec) -> tuple[list[bytes], list[bytes]]:
    (name, definition), = spec.groups.items()
    document = json.loads(raw)
    key = definition["select"].text.split("[")[0]
    items = document[key]
    split = [json.dumps({**document, key: [item]}, ensure_ascii=False).encode() for item in items]
    reordered = [json.dumps({**document, key: [items[n] for n in order]}, ensure_ascii=False).encode()
                 for order in _orders(len(items))]
    return split, reordered


def _store_documents(tmp_path: Path, name: str, mapping: str, documents: list[bytes]) -> list[dict]:
    gateway = create_app({"DATA_DIR": str(tmp_path / name), "TESTING": True}).extensions["gateway"]
    for raw in documents:
        result = gateway.documents.ingest(raw, mapping)
        assert result.status in (200, 201), (name, result.body)
    return stored_resources(gateway)


def test_the_multi_item_documents_are_found():
    assert {(mapping, path.name) for mapping, path in MULTI_ITEM} >= {
        ("online_clinic_prescription", "online_clinic_prescription.json"),
        ("hospital_prescription", "hospital_prescription_three_items.xml"),
        ("hospital_prescription_erx2", "hospital_prescription_erx2_two_items.xml")}


@pytest.mark.parametrize("mapping,path", MULTI_ITEM, ids=lambda v: getattr(v, "name", v))
def test_one_document_per_item_and_items_in_another_order_store_the_same(tmp_path, mapping, path):
    spec = MAPPINGS.by_name[mapping]
    raw = path.read_bytes()
    split, reordered = (_xml_variants if spec.source == "xml" else _json_variants)(raw, spec)
    whole = _store_documents(tmp_path, "whole", mapping, [raw])
    assert whole
    assert _store_documents(tmp_path, "split", mapping, split) == whole
    for n, variant in enumerate(reordered):
        assert _store_documents(tmp_path, f"order{n}", mapping, [variant]) == whole
