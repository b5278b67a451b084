"""Declared search parameters (``search_parameters.yaml``) and the index rows they make from a resource.

The YAML maps a resource type to ``name: {type, path, target, doc}``. Optional keys (all additive):

- ``column``: the parameter reads a column of the ``resources`` table instead of an index table
  (``_id`` -> ``res_id``, ``_lastUpdated`` -> ``last_updated``);
- ``target``: for a reference, the resource types it may point to; references to other types are
  not indexed under it (``patient`` is ``subject`` where the subject is a Patient).

The pseudo-type ``Resource`` holds the common parameters (``_id``, ``_lastUpdated``, ``_tag``,
``_profile``, ``_security``); every served type inherits them, and ``Resource`` itself is not served.

Indexing walks plain dicts: a path is a chain of element names, lists are flattened on the way, and
a name ending in ``[x]`` matches every choice (``effective[x]`` -> ``effectiveDateTime``,
``effectivePeriod``). Each search type turns what it finds into rows for its index table:

| type      | table          | row                                                            |
|-----------|----------------|----------------------------------------------------------------|
| token     | idx_token      | (system, code); display/text also go to idx_string for ``:text`` |
| uri       | idx_token      | (no system, the URI)                                           |
| string    | idx_string     | normalized value (case/accent folded) and the exact value     |
| date      | idx_date       | the value as a half-open UTC range [low, high)                 |
| reference | idx_reference  | ``Type/id``; ``Reference.identifier`` also to idx_token (``:identifier``) |
| quantity  | idx_quantity   | (value, system, code, unit)                                    |
| number    | idx_quantity   | (value)                                                        |
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

from gateway.yamlfile import load_yaml

_HERE = Path(__file__).resolve().parent
SEARCH_TYPES = ("token", "string", "date", "reference", "uri", "quantity", "number")
COMMON_TYPE = "Resource"
# which index table each search type writes to (``column`` parameters write nowhere)
TABLE_OF_TYPE = {"token": "token", "uri": "token", "string": "string", "date": "date",
                 "reference": "reference", "quantity": "quantity", "number": "quantity"}


@dataclass(frozen=True)
class SearchParameter:
    resource_type: str
    name: str
    type: str               # one of SEARCH_TYPES
    paths: tuple[tuple[str, ...], ...]
    targets: tuple[str, ...] = ()
    doc: str = ""
    column: str | None = None   # a column of the resources table (``_id``, ``_lastUpdated``)

    @property
    def table(self) -> str:
        return TABLE_OF_TYPE[self.type]


@dataclass
class SearchParameterRegistry:
    by_type: dict[str, dict[str, SearchParameter]] = field(default_factory=dict)
    common: dict[str, SearchParameter] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "SearchParameterRegistry":
        data = load_yaml(path or _HERE / "search_parameters.yaml")
        registry = cls()
        for resource_type, params in data.items():
            declared = {name: _parameter(resource_type, name, spec) for name, spec in (params or {}).items()}
            if resource_type == COMMON_TYPE:
                registry.common = declared
            else:
                registry.by_type[resource_type] = declared
        return registry

    def for_type(self, resource_type: str) -> dict[str, SearchParameter]:
        """The type's own parameters and the common ones; nothing for a type not served."""
        own = self.by_type.get(resource_type)
        if own is None:
            return {}
        return {**self.common, **own}

    def get(self, resource_type: str, name: str) -> SearchParameter | None:
        return self.for_type(resource_type).get(name)

    def resource_types(self) -> list[str]:
        return sorted(self.by_type)

    def references_to(self, target_type: str) -> list[SearchParameter]:
        """Reference parameters of any type that may point at ``target_type`` (for ``_revinclude``)."""
        return [p for resource_type in self.resource_types() for p in self.by_type[resource_type].values()
                if p.type == "reference" and (not p.targets or target_type in p.targets)]


def _parameter(resource_type: str, name: str, spec: dict) -> SearchParameter:
    kind = spec.get("type")
    if kind not in SEARCH_TYPES:
        raise ValueError(f"search_parameters.yaml: {resource_type}.{name} has type {kind!r}; "
                         f"expected one of {', '.join(SEARCH_TYPES)}")
    if not spec.get("path") and not spec.get("column"):
        raise ValueError(f"search_parameters.yaml: {resource_type}.{name} needs a path (or a column)")
    paths = tuple(tuple(p.strip().split(".")) for p in spec["path"].split("|")) if spec.get("path") else ()
    return SearchParameter(resource_type, name, kind, paths, tuple(spec.get("target") or ()),
                           spec.get("doc", ""), spec.get("column"))


def walk(node: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """Every value at ``path`` under ``node``, lists flattened; ``name[x]`` matches every choice."""
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
        step = path[0]
        if step.endswith("[x]"):
            stem = step[:-3]
            for key, child in node.items():
                if key.startswith(stem) and key[len(stem):len(stem) + 1].isupper():
                    yield from walk(child, path[1:])
            return
        child = node.get(step)
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


def token_texts(value: Any) -> Iterator[str]:
    """The human text of a coded value (CodeableConcept.text, Coding.display, Identifier.type.text),
    searched by ``:text``."""
    if not isinstance(value, dict):
        return
    if isinstance(value.get("text"), str):
        yield value["text"]
    if isinstance(value.get("display"), str):
        yield value["display"]
    for coding in value.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            yield coding["display"]


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


def reference_values(value: Any, targets: tuple[str, ...] = ()) -> Iterator[str]:
    """``Type/id`` of a Reference (absolute URLs and ``_history`` cut down); with ``targets``, only
    references to those types. A canonical string is kept as it is."""
    if isinstance(value, str):
        yield value
        return
    if not (isinstance(value, dict) and isinstance(value.get("reference"), str)):
        return
    reference = value["reference"].split("/_history/", 1)[0].rstrip("/")
    if reference.startswith("#"):
        return
    parts = reference.split("/")
    if len(parts) >= 2:
        reference = f"{parts[-2]}/{parts[-1]}"
    if targets and reference.split("/", 1)[0] not in targets:
        return
    yield reference


def quantity_values(value: Any) -> Iterator[tuple[float, str | None, str | None, str | None]]:
    """(value, system, code, unit) of a Quantity (or a bare number for ``number`` parameters)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield float(value), None, None, None
    elif isinstance(value, dict) and isinstance(value.get("value"), (int, float, str)):
        try:
            number = float(Decimal(str(value["value"])))
        except InvalidOperation:
            return
        yield number, value.get("system"), value.get("code"), value.get("unit")


_PRECISION = {4: "year", 7: "month", 10: "day"}


def date_range(value: str, zone: ZoneInfo | timezone | None = None) -> tuple[str, str]:
    """A FHIR date/dateTime/instant as a half-open UTC range [low, high) of ISO strings.
    Dates without a time are days (months, years) in the server's zone (Asia/Shanghai by default);
    a time is as precise as written: to the minute, the second or the fraction."""
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
        return _utc(low), _utc(high)
    text = value.replace("Z", "+00:00")
    if "T" not in text:
        raise ValueError(f"{value!r} is neither a date nor a dateTime")
    low = datetime.fromisoformat(text)
    if low.tzinfo is None:
        low = low.replace(tzinfo=zone)
    clock = text.split("T", 1)[1]
    for sign in "+-":
        clock = clock.split(sign, 1)[0]
    if "." in clock:
        step = timedelta(microseconds=10 ** (6 - min(6, len(clock.split(".", 1)[1]))))
    elif clock.count(":") == 1:
        step = timedelta(minutes=1)
    else:
        step = timedelta(seconds=1)
    return _utc(low), _utc(low + step)


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


LOWEST_DATE = "0001-01-01T00:00:00.000000"
HIGHEST_DATE = "9999-12-31T23:59:59.999999"


def date_values(value: Any, zone) -> Iterator[tuple[str, str]]:
    """Ranges of a date, dateTime, instant or Period (an open end is unbounded)."""
    if isinstance(value, str):
        try:
            yield date_range(value, zone)
        except ValueError:
            return
    elif isinstance(value, dict):   # Period
        start, end = value.get("start"), value.get("end")
        if start or end:
            try:
                low = date_range(start, zone)[0] if start else LOWEST_DATE
                high = date_range(end, zone)[1] if end else HIGHEST_DATE
            except ValueError:
                return
            yield low, high


# ------------------------------------------------------------------ index rows of a resource

# the most characters of a searchable code, system or reference the store keeps (its columns hold
# 255, which PostgreSQL enforces and SQLite does not): longer is refused on both, never cut
INDEX_VALUE_MAX_CHARS = 255


class UnstorableIndexValue(ValueError):
    """A searchable value the store refuses alike on SQLite and PostgreSQL; ``expression`` names the
    element, ``issue_code`` is the FHIR issue type an answer carries."""
    issue_code = "invalid"

    def __init__(self, message: str, expression: str):
        super().__init__(message)
        self.expression = expression


class IndexValueTooLong(UnstorableIndexValue):
    issue_code = "too-long"

    def __init__(self, expression: str, length: int):
        super().__init__(f"{expression}: {length} characters; this gateway stores searchable codes, systems, "
                         f"identifiers and references of at most {INDEX_VALUE_MAX_CHARS}", expression)


class IndexValueHasNul(UnstorableIndexValue):
    """PostgreSQL text cannot hold U+0000, which SQLite keeps: refused on both, so a message gets the
    same answer on either store (a NUL byte in a field is a sender's or a transport's fault)."""

    def __init__(self, expression: str):
        super().__init__(f"{expression}: contains the character U+0000 (NUL), which a searchable value "
                         "cannot hold", expression)


def index_rows(registry: SearchParameterRegistry, resource: dict, zone) -> dict[str, list[dict]]:
    """Rows for every index table (keyed ``token``, ``string``, ``date``, ``reference``, ``quantity``)
    from the declared parameters of the resource's type. Raises UnstorableIndexValue."""
    rows: dict[str, list[dict]] = {"token": [], "string": [], "date": [], "reference": [], "quantity": []}
    key = {"res_type": resource["resourceType"], "res_id": resource["id"]}
    for param in registry.for_type(resource["resourceType"]).values():
        row = {**key, "param": param.name}
        for path in param.paths:
            before = {kind: len(kind_rows) for kind, kind_rows in rows.items()}
            for value in walk(resource, path):
                _add_rows(rows, param, row, value, zone)
            _check_storable(rows, before, f"{resource['resourceType']}.{'.'.join(path)}")
    for kind_rows in rows.values():          # the rows' key within the resource (schema._index_table)
        for seq, row in enumerate(kind_rows):
            row["seq"] = seq
    return rows


def _check_storable(rows: dict[str, list[dict]], before: dict[str, int], expression: str) -> None:
    for kind, columns in _TEXT_COLUMNS.items():
        for row in rows[kind][before[kind]:]:
            for column in columns:
                value = row[column]
                if value is None:
                    continue
                if "\x00" in value:
                    raise IndexValueHasNul(expression)
                if column in _LIMITED_COLUMNS and len(value) > INDEX_VALUE_MAX_CHARS:
                    raise IndexValueTooLong(expression, len(value))


# the text columns of each index table's rows; string rows are cut to their 512 characters instead
_TEXT_COLUMNS = {"token": ("system", "code"), "reference": ("target",), "string": ("value", "exact"),
                 "quantity": ("system", "code", "unit")}
_LIMITED_COLUMNS = {"system", "code", "target", "unit"}


def _add_rows(rows: dict[str, list[dict]], param: SearchParameter, row: dict, value: Any, zone) -> None:
    kind = param.type
    if kind == "token":
        rows["token"] += [{**row, "system": s, "code": c} for s, c in token_values(value)]
        rows["string"] += [_string_row(row, text) for text in token_texts(value) if text.strip()]
    elif kind == "uri":
        if isinstance(value, str):
            rows["token"].append({**row, "system": None, "code": value})
    elif kind == "string":
        rows["string"] += [_string_row(row, v) for v in string_values(value) if v and v.strip()]
    elif kind == "date":
        rows["date"] += [{**row, "low": low, "high": high} for low, high in date_values(value, zone)]
    elif kind == "reference":
        rows["reference"] += [{**row, "target": t} for t in reference_values(value, param.targets)]
        if isinstance(value, dict) and isinstance(value.get("identifier"), dict):
            rows["token"] += [{**row, "system": s, "code": c} for s, c in token_values(value["identifier"])]
    elif kind in ("quantity", "number"):
        rows["quantity"] += [{**row, "value": v, "system": s, "code": c, "unit": u}
                             for v, s, c, u in quantity_values(value)]


def _string_row(row: dict, value: str) -> dict:
    return {**row, "value": normalize_string(value)[:512], "exact": value.strip()[:512]}
