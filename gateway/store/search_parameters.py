"""Declared search parameters (``search_parameters.yaml``) and the values they index in a resource.

Indexing walks plain dicts: a path is a chain of element names; lists are flattened on the way.
Each search type turns what it finds into rows for one index table (token, string, date, reference).
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import yaml

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SearchParameter:
    resource_type: str
    name: str
    type: str               # token | string | date | reference
    paths: tuple[tuple[str, ...], ...]
    targets: tuple[str, ...] = ()
    doc: str = ""


@dataclass
class SearchParameterRegistry:
    by_type: dict[str, dict[str, SearchParameter]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "SearchParameterRegistry":
        data = yaml.safe_load(Path(path or _HERE / "search_parameters.yaml").read_text(encoding="utf-8"))
        registry = cls()
        for resource_type, params in data.items():
            registry.by_type[resource_type] = {
                name: SearchParameter(resource_type, name, spec["type"],
                                      tuple(tuple(p.strip().split(".")) for p in spec["path"].split("|")),
                                      tuple(spec.get("target") or ()), spec.get("doc", ""))
                for name, spec in params.items()}
        return registry

    def for_type(self, resource_type: str) -> dict[str, SearchParameter]:
        return self.by_type.get(resource_type, {})

    def resource_types(self) -> list[str]:
        return sorted(self.by_type)


def walk(node: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """Every value at ``path`` under ``node``, lists flattened."""
    if not path:
        if isinstance(node, list):
            yield from node
        elif node is not None:
            yield node
        return
    if isinstance(node, list):
        for item in node:
            yield from walk(item, path)
        return
    if isinstance(node, dict):
        child = node.get(path[0])
        if child is not None:
            yield from walk(child, path[1:])


def normalize_string(value: str) -> str:
    """Case- and accent-insensitive form used for string search (FHIR: 'starts with', ignoring case)."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold().strip()


# ------------------------------------------------------------------ extraction per search type

def token_values(value: Any) -> Iterator[tuple[str | None, str]]:
    """(system, code) pairs of a code, Coding, CodeableConcept, Identifier, ContactPoint or boolean."""
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value or "text" in value and "value" not in value:
            for coding in value.get("coding") or []:
                if coding.get("code"):
                    yield coding.get("system"), coding["code"]
        elif "code" in value:
            yield value.get("system"), value["code"]
        elif "value" in value:
            yield value.get("system"), str(value["value"])


def string_values(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in ("text", "family", "name", "city", "district", "state", "postalCode", "country"):
            if isinstance(value.get(key), str):
                yield value[key]
        for key in ("given", "prefix", "suffix", "line"):
            for part in value.get(key) or []:
                yield part


def reference_values(value: Any) -> Iterator[str]:
    if isinstance(value, dict) and isinstance(value.get("reference"), str):
        yield value["reference"]


_PRECISION = {4: "year", 7: "month", 10: "day"}


def date_range(value: str, zone: ZoneInfo | timezone | None = None) -> tuple[str, str]:
    """A FHIR date/dateTime/instant as a half-open UTC range [low, high) of ISO strings.
    Dates without a time are days in the server's zone (Asia/Shanghai by default)."""
    zone = zone or timezone.utc
    value = value.strip()
    if len(value) in _PRECISION:
        year = int(value[:4])
        month = int(value[5:7]) if len(value) >= 7 else 1
        day = int(value[8:10]) if len(value) >= 10 else 1
        low = datetime(year, month, day, tzinfo=zone)
        if len(value) == 4:
            high = datetime(year + 1, 1, 1, tzinfo=zone)
        elif len(value) == 7:
            high = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=zone)
        else:
            high = low + timedelta(days=1)
    else:
        text = value.replace("Z", "+00:00")
        low = datetime.fromisoformat(text)
        if low.tzinfo is None:
            low = low.replace(tzinfo=zone)
        # the value's own precision: to the second (or the fraction given)
        step = timedelta(seconds=1) if "." not in text.split("T", 1)[1] else timedelta(microseconds=1)
        if len(text.split("T", 1)[1]) <= 5:      # hh:mm
            step = timedelta(minutes=1)
        high = low + step
    return _utc(low), _utc(high)


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def date_values(value: Any, zone) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield date_range(value, zone)
    elif isinstance(value, dict):   # Period
        start, end = value.get("start"), value.get("end")
        if start or end:
            low = date_range(start, zone)[0] if start else "0001-01-01T00:00:00.000000"
            high = date_range(end, zone)[1] if end else "9999-12-31T23:59:59.999999"
            yield low, high
