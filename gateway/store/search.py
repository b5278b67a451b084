"""FHIR search: query parameters -> a parsed :class:`SearchQuery` -> SQL over the index tables.

One engine for every declared parameter (``search_parameters.yaml``); no parameter has code of its
own. What a query may say (http://hl7.org/fhir/R4/search.html):

- ``name=v1,v2`` ORs values, a repeated ``name`` ANDs; ``name:modifier`` per type (token ``:not``
  ``:text``, string ``:exact`` ``:contains``, reference ``:identifier`` ``:Type``, uri ``:below``
  ``:above``, every type ``:missing``); date and quantity values take the prefixes eq ne lt gt le ge
  sa eb ap, and a partial date is the range it covers;
- chains ``patient.identifier=...``, ``subject:Patient.name=...`` and reverse chains
  ``_has:AdverseEvent:subject:seriousness=Serious``, nested as deep as written;
- ``_sort`` (several keys, ``-`` descending), ``_count``, ``_include`` / ``_revinclude`` (with
  ``:iterate``), ``_total``, ``_summary``, ``_elements`` (the last two shape the answer, in the API).

Paging is keyset, never offset: a page ends at the sort values of its last match plus its id, and
the next page starts strictly after them, so resources written while a client pages cannot make it
see a match twice or skip one. The cursor carries those values signed (HMAC, itsdangerous) together
with a fingerprint of the query, so it cannot be altered or replayed against another search.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Iterable

import orjson
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import Float, String, and_, exists, false, func, literal, not_, or_, select
from sqlalchemy.engine import Connection

from gateway.store import access, schema
from gateway.store.search_parameters import (HIGHEST_DATE, SearchParameter, SearchParameterRegistry, date_range,
                                             normalize_string)

if TYPE_CHECKING:
    from gateway.store.resources import ResourceStore

_PREFIXED = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.+)$")
_PREFIXED_DATE = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(\d{4}.*)$")
MODIFIERS = {
    "token": {"not", "text", "missing"},
    "uri": {"below", "above", "missing"},
    "string": {"exact", "contains", "missing"},
    "date": {"missing"},
    "reference": {"identifier", "missing"},     # and a resource type (``subject:Patient``)
    "quantity": {"missing"},
    "number": {"missing"},
}
# parameters that shape the answer rather than select resources
RESULT_PARAMETERS = {"_sort", "_count", "_include", "_revinclude", "_summary", "_elements", "_total",
                     "_cursor", "_format", "_pretty"}
SUMMARY_MODES = {"true", "false", "text", "data", "count"}
TOTAL_MODES = {"none", "estimate", "accurate"}
_IN_CHUNK = 500
_INCLUDE_ROUNDS = 4          # :iterate follows included resources this many levels at most


class SearchError(ValueError):
    """A search the server cannot run as asked (answered 400 with an OperationOutcome)."""

    def __init__(self, message: str, expression: str | None = None):
        super().__init__(message)
        self.expression = expression


@dataclass
class SearchCriterion:
    """One search parameter occurrence: values are ORed, criteria are ANDed.

    A chain (``subject:Patient.name=x``) is ``SearchCriterion("subject", ["x"], "Patient", chain=<name=x>)``;
    a reverse chain (``_has:AdverseEvent:subject:seriousness=Serious``) is
    ``SearchCriterion("_has", ["Serious"], "AdverseEvent:subject", chain=<seriousness=Serious>)``."""
    param: str
    values: list[str]
    modifier: str | None = None
    chain: "SearchCriterion | None" = None


@dataclass(frozen=True)
class SortKey:
    param: str
    descending: bool = False


@dataclass(frozen=True)
class IncludeSpec:
    """``_include=Source:param[:Target]`` (reverse=False) or ``_revinclude=...`` (reverse=True)."""
    source_type: str
    param: str                  # a reference parameter of source_type, or "*"
    target_type: str | None = None
    reverse: bool = False
    iterate: bool = False


@dataclass
class SearchQuery:
    resource_type: str
    criteria: list[SearchCriterion] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int = 50
    cursor: str | None = None
    includes: list[IncludeSpec] = field(default_factory=list)
    total: str | None = None       # _total; None: the total only when it costs nothing (see run_search)
    summary: str | None = None
    elements: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)   # parameters not understood (ignored when lenient)


@dataclass
class SearchPage:
    resources: list[dict]
    total: int | None
    next_cursor: str | None
    previous_cursor: str | None = None
    included: list[dict] = field(default_factory=list)


# ================================================================== parsing

def parse_search(registry: SearchParameterRegistry, resource_type: str, pairs: Iterable[tuple[str, str]],
                 default_count: int = 50, max_count: int = 1000) -> SearchQuery:
    """Query-string pairs -> :class:`SearchQuery`. Unknown parameters are collected in ``unknown``;
    known parameters with values or modifiers the server cannot use raise :class:`SearchError`."""
    query = SearchQuery(resource_type, count=default_count)
    for key, value in pairs:
        name = key.split(":", 1)[0]
        if name in RESULT_PARAMETERS:
            _result_parameter(registry, query, key, value, max_count)
            continue
        if "\x00" in value:                              # nothing stored holds one; PostgreSQL refuses it
            raise SearchError(f"{key}: the value contains the character U+0000 (NUL)", key)
        values = split_values(value)
        if not values:
            continue                                    # an empty parameter is ignored (search.html#errors)
        criterion = parse_criterion(registry, resource_type, key, values)
        if criterion is None:
            query.unknown.append(key)
        else:
            query.criteria.append(criterion)
    return query


def split_values(value: str) -> list[str]:
    """``a,b`` -> [a, b]; ``\\,`` is a literal comma."""
    parts, current, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value) and value[i + 1] in ",\\$":
            current.append(value[i + 1])
            i += 2
            continue
        if ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return [p for p in parts if p != ""]


def parse_criterion(registry: SearchParameterRegistry, resource_type: str, key: str,
                    values: list[str]) -> SearchCriterion | None:
    """One ``key`` with its values; None when the parameter (or a link of its chain) is not known."""
    if key.startswith("_has:"):
        parts = key.split(":", 3)
        if len(parts) < 4 or not all(parts[1:]):
            raise SearchError(f"'{key}': _has is written _has:Type:reference-parameter:parameter", key)
        _, source_type, ref_name, rest = parts
        ref = registry.get(source_type, ref_name)
        if ref is None or ref.type != "reference" or (ref.targets and resource_type not in ref.targets):
            return None
        inner = parse_criterion(registry, source_type, rest, values)
        return None if inner is None else SearchCriterion("_has", values, f"{source_type}:{ref_name}", inner)
    head, dot, tail = key.partition(".")
    name, _, modifier = head.partition(":")
    param = registry.get(resource_type, name)
    if param is None:
        return None
    if dot:
        if param.type != "reference":
            raise SearchError(f"'{key}': only reference parameters can be chained; {name} is a {param.type}", key)
        if modifier and modifier not in registry.by_type:
            raise SearchError(f"'{key}': {modifier} is not a resource type served here", key)
        for target_type in _chain_types(registry, param, modifier or None):
            inner = parse_criterion(registry, target_type, tail, values)
            if inner is not None:
                return SearchCriterion(name, values, modifier or None, inner)
        return None
    if modifier:
        allowed = MODIFIERS.get(param.type, set())
        is_type = param.type == "reference" and modifier in registry.by_type
        if modifier not in allowed and not is_type:
            raise SearchError(f"'{key}': modifier :{modifier} is not supported for {param.type} parameters"
                              f" (supported: {', '.join(sorted(allowed)) or 'none'})", key)
        if param.column and modifier in ("missing", "text"):
            raise SearchError(f"'{key}': :{modifier} does not apply to {name}", key)
        if modifier == "missing" and any(v not in ("true", "false") for v in values):
            raise SearchError(f"'{key}': :missing takes true or false", key)
    return SearchCriterion(name, values, modifier or None)


def _chain_types(registry: SearchParameterRegistry, param: SearchParameter, type_modifier: str | None) -> list[str]:
    if type_modifier:
        return [type_modifier]
    return [t for t in (param.targets or registry.resource_types()) if t in registry.by_type]


def _result_parameter(registry: SearchParameterRegistry, query: SearchQuery, key: str, value: str,
                      max_count: int) -> None:
    name, _, modifier = key.partition(":")
    if name == "_count":
        if not value.isdigit():
            raise SearchError("_count must be a whole number >= 0", "_count")
        query.count = min(int(value), max_count)
    elif name == "_cursor":
        query.cursor = value
    elif name == "_sort":
        for item in split_values(value):
            descending = item.startswith("-")
            param = item.lstrip("-")
            if registry.get(query.resource_type, param) is None:
                raise SearchError(f"_sort: '{param}' is not a search parameter of {query.resource_type}", "_sort")
            query.sort.append(SortKey(param, descending))
    elif name == "_total":
        if value not in TOTAL_MODES:
            raise SearchError(f"_total must be one of {', '.join(sorted(TOTAL_MODES))}", "_total")
        query.total = value
    elif name == "_summary":
        if value not in SUMMARY_MODES:
            raise SearchError(f"_summary must be one of {', '.join(sorted(SUMMARY_MODES))}", "_summary")
        query.summary = value
    elif name == "_elements":
        query.elements += [e.strip() for e in split_values(value) if e.strip()]
    elif name in ("_include", "_revinclude"):
        if modifier not in ("", "iterate", "recurse"):
            raise SearchError(f"{key}: the only modifier is :iterate", name)
        for item in split_values(value):
            query.includes.append(_include_spec(registry, name, item, modifier in ("iterate", "recurse")))


def _include_spec(registry: SearchParameterRegistry, name: str, value: str, iterate: bool) -> IncludeSpec:
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise SearchError(f"{name}={value}: expected SourceType:parameter[:TargetType]", name)
    source_type, param_name = parts[0], parts[1]
    target_type = parts[2] if len(parts) == 3 else None
    if param_name != "*":
        param = registry.get(source_type, param_name)
        if param is None or param.type != "reference":
            raise SearchError(f"{name}={value}: {source_type} has no reference parameter '{param_name}'", name)
    elif source_type not in registry.by_type:
        raise SearchError(f"{name}={value}: {source_type} is not served here", name)
    if target_type is not None and target_type not in registry.by_type:
        raise SearchError(f"{name}={value}: {target_type} is not served here", name)
    return IncludeSpec(source_type, param_name, target_type, name == "_revinclude", iterate)


# ================================================================== conditions

def build_conditions(store: "ResourceStore", resource_type: str, criteria: list[SearchCriterion]) -> list:
    """SQL conditions over ``schema.resources`` (type, not deleted: the caller's) for ANDed criteria."""
    return ConditionBuilder(store.params, store.zone).conditions(resource_type, schema.resources, criteria)


# how narrow a criterion usually is: the narrowest one drives the query (its matching ids are read
# from an index), every other one is checked per candidate with an EXISTS on (type, id, param)
_NARROWNESS = {"token": 1, "reference": 1, "uri": 2, "string": 3, "quantity": 5, "number": 5, "date": 6}
_NEVER_DRIVES = {"not", "missing", "contains", "above", "text"}
_ESTIMATE_CAP = 2000
_SMALL_ENOUGH = 100      # a criterion matching fewer index rows drives without counting the rest


class ConditionBuilder:
    """Turns criteria into conditions on a ``resources`` table (or alias) of a given type."""

    def __init__(self, params: SearchParameterRegistry, zone):
        self.params = params
        self.zone = zone

    def conditions(self, resource_type: str, r, criteria: list[SearchCriterion],
                   conn: Connection | None = None) -> list:
        """Conditions for ANDed criteria. With a connection, the driver is the criterion matching the
        fewest index rows (counted up to a cap); without one, the narrowest kind."""
        ranks = [self._narrowness(resource_type, c) for c in criteria]
        driver = None
        if criteria and not any(rank == 0 for rank in ranks):      # an _id criterion drives by itself
            best = min(ranks)
            driver = ranks.index(best) if best < 9 else None
            if conn is not None and driver is not None:
                driver = self._fewest(conn, resource_type, criteria, ranks, driver)
        return [self.condition(resource_type, r, c, driving=(i == driver)) for i, c in enumerate(criteria)]

    def _fewest(self, conn: Connection, resource_type: str, criteria: list[SearchCriterion], ranks: list[int],
                fallback: int) -> int:
        """The simple criterion with the fewest matching index rows; a chain or _has still drives
        when no simple criterion is small."""
        counts = {}
        for i in sorted(range(len(criteria)), key=lambda i: ranks[i]):   # likely-narrow kinds first
            criterion = criteria[i]
            if ranks[i] >= 9 or criterion.chain is not None or criterion.param == "_has":
                continue
            if counts and min(counts.values()) < _SMALL_ENOUGH:
                break                                   # no need to count the wide ones
            table, match = self._index_match(resource_type, criterion, opaque=False)
            param = self.params.get(resource_type, criterion.param)
            rows = select(table.c.res_id).where(table.c.res_type == resource_type, table.c.param == param.name,
                                                match).limit(_ESTIMATE_CAP)
            counts[i] = conn.execute(select(func.count()).select_from(rows.subquery())).scalar_one()
        if not counts:
            return fallback
        smallest = min(counts, key=lambda i: (counts[i], ranks[i]))
        linked = [i for i in range(len(criteria)) if i not in counts and ranks[i] < 9]
        if linked and counts[smallest] >= _ESTIMATE_CAP // 4:
            return min(linked, key=lambda i: ranks[i])
        return smallest

    def _narrowness(self, resource_type: str, criterion: SearchCriterion) -> int:
        if criterion.param == "_has":
            return 4
        param = self.params.get(resource_type, criterion.param)
        if param is None or criterion.modifier in _NEVER_DRIVES:
            return 9
        if param.column:
            return 0 if param.type == "token" else 9
        if criterion.chain is not None:
            return 2
        return _NARROWNESS.get(param.type, 9)

    def condition(self, resource_type: str, r, criterion: SearchCriterion, driving: bool = True):
        """The criterion as ``id IN (ids from the index)`` when it drives the query, else as an
        ``EXISTS`` checked for each candidate through the (type, id, param) index."""
        if criterion.param == "_has":
            return self._reverse_chain(resource_type, r, criterion, driving)
        param = self.params.get(resource_type, criterion.param)
        if param is None:
            raise SearchError(f"unknown search parameter '{criterion.param}' for {resource_type}", criterion.param)
        if criterion.chain is not None:
            return self._chain(resource_type, r, param, criterion, driving)
        if param.column:
            return self._column(r, param, criterion)
        if criterion.modifier == "missing":
            table = schema.INDEX_TABLES[param.table]
            present = exists().where(table.c.res_type == resource_type, table.c.res_id == r.c.res_id,
                                     table.c.param == param.name)
            return or_(*[~present if v == "true" else present for v in criterion.values])
        # an EXISTS check must reach its rows by (type, id, param): its value columns are wrapped so
        # the planner cannot pick a value index instead (it would scan every resource's rows)
        table, match = self._index_match(resource_type, criterion,
                                         opaque=not driving or criterion.modifier == "not")
        if driving and criterion.modifier != "not":
            return r.c.res_id.in_(select(table.c.res_id).where(table.c.res_type == resource_type,
                                                               table.c.param == param.name, match))
        found = exists().where(table.c.res_type == resource_type, table.c.res_id == r.c.res_id,
                               table.c.param == param.name, match)
        return ~found if criterion.modifier == "not" else found

    def _index_match(self, resource_type: str, criterion: SearchCriterion, opaque: bool):
        """(index table, condition on its rows) for a criterion on one indexed parameter."""
        param = self.params.get(resource_type, criterion.param)
        table = schema.INDEX_TABLES[param.table]
        if criterion.modifier == "text":
            table = schema.idx_string
        elif criterion.modifier == "identifier":
            table = schema.idx_token
        values = _opaque(table) if opaque else table
        if criterion.modifier == "text":
            match = or_(*[_starts_with(values.c.value, normalize_string(v)) for v in criterion.values])
        elif criterion.modifier == "identifier":
            match = or_(*[_token_condition(values, v) for v in criterion.values])
        else:
            match = or_(*[self._value(param, values, v, criterion.modifier) for v in criterion.values])
        return table, match

    # ---------------------------------------------------------- per type

    def _value(self, param: SearchParameter, table, value: str, modifier: str | None):
        kind = param.type
        if kind == "token":
            return _token_condition(table, value)
        if kind == "uri":
            if modifier == "below":
                return table.c.code.startswith(value, autoescape=True)
            if modifier == "above":
                return table.c.code.in_(_uri_prefixes(value))
            return table.c.code == value
        if kind == "string":
            if modifier == "exact":
                return table.c.exact == value
            needle = normalize_string(value)
            if modifier == "contains":
                return table.c.value.contains(needle, autoescape=True)
            return _starts_with(table.c.value, needle)
        if kind == "reference":
            if "/" not in value and not modifier and not param.targets:   # a bare id, any type
                return table.c.target.endswith(f"/{value}", autoescape=True)
            return table.c.target.in_(self._reference_targets(param, value, modifier))
        if kind == "date":
            prefix, low, high = parse_date_value(value, self.zone)
            return date_condition(prefix, table.c.low, table.c.high, low, high)
        if kind in ("quantity", "number"):
            return _quantity_condition(table, value, kind == "quantity")
        raise SearchError(f"search type {kind} is not supported")

    def _reference_targets(self, param: SearchParameter, value: str, type_modifier: str | None) -> list[str]:
        reference = value.split("/_history/", 1)[0].rstrip("/")
        parts = reference.split("/")
        if len(parts) >= 2:
            reference = f"{parts[-2]}/{parts[-1]}"
            if type_modifier and parts[-2] != type_modifier:
                return []
            return [reference]
        types = [type_modifier] if type_modifier else list(param.targets)
        return [f"{t}/{reference}" for t in types]

    def _column(self, r, param: SearchParameter, criterion: SearchCriterion):
        column = r.c[param.column]
        if param.type == "date":
            conditions = []
            for value in criterion.values:
                prefix, low, high = parse_date_value(value, self.zone)
                conditions.append(date_condition(prefix, column, None, low, high))
            return or_(*conditions)
        if param.type == "token":
            values = [v.split("|", 1)[-1] for v in criterion.values]
            return column.not_in(values) if criterion.modifier == "not" else column.in_(values)
        raise SearchError(f"{param.name}: a {param.type} column parameter is not supported")

    # ---------------------------------------------------------- chains

    def _chain(self, resource_type: str, r, param: SearchParameter, criterion: SearchCriterion, driving: bool):
        """``subject:Patient.name=x``: our reference points at a resource matching the inner criterion."""
        ref = schema.idx_reference
        targets = []
        for target_type in _chain_types(self.params, param, criterion.modifier):
            inner = criterion.chain
            if inner.param != "_has" and self.params.get(target_type, inner.param) is None:
                continue
            r2 = schema.resources.alias()
            targets.append(select(literal(f"{target_type}/", String) + r2.c.res_id).where(
                r2.c.res_type == target_type, r2.c.deleted.is_(False), self.condition(target_type, r2, inner),
                *access.visible_conditions(r2.c.res_type, r2.c.res_id, target_type)))   # no probing the unseen
        if not targets:
            return false()
        pointing = or_(*[ref.c.target.in_(t) for t in targets])
        if not driving:
            pointing = or_(*[_opaque(ref).c.target.in_(t) for t in targets])
            return exists().where(ref.c.res_type == resource_type, ref.c.res_id == r.c.res_id,
                                  ref.c.param == param.name, pointing)
        return r.c.res_id.in_(select(ref.c.res_id).where(ref.c.res_type == resource_type,
                                                         ref.c.param == param.name, pointing))

    def _reverse_chain(self, resource_type: str, r, criterion: SearchCriterion, driving: bool):
        """``_has:AdverseEvent:subject:seriousness=Serious``: some AdverseEvent matching the inner
        criterion points at us through ``subject``."""
        source_type, ref_name = criterion.modifier.split(":", 1)
        ref = schema.idx_reference
        r2 = schema.resources.alias()
        sources = select(r2.c.res_id).where(r2.c.res_type == source_type, r2.c.deleted.is_(False),
                                            self.condition(source_type, r2, criterion.chain),
                                            *access.visible_conditions(r2.c.res_type, r2.c.res_id, source_type))
        prefix = f"{resource_type}/"
        if not driving:
            return exists().where(ref.c.res_type == source_type, ref.c.param == ref_name,
                                  ref.c.target == literal(prefix, String) + r.c.res_id,
                                  ref.c.res_id.concat("").in_(sources))   # reached by target, not by id
        # target in [prefix, prefix-with-'/'+1): an index range, unlike LIKE 'Type/%'
        ids = select(func.substr(ref.c.target, len(prefix) + 1)).where(
            ref.c.res_type == source_type, ref.c.param == ref_name,
            ref.c.target >= prefix, ref.c.target < f"{resource_type}0", ref.c.res_id.in_(sources))
        return r.c.res_id.in_(ids)


def _opaque(table) -> SimpleNamespace:
    """The table's value columns as expressions no index can serve (``x || ''``, ``x + 0``)."""
    keys = ("res_type", "res_id", "param")
    return SimpleNamespace(c=SimpleNamespace(**{
        col.name: (col + 0 if isinstance(col.type, Float) else col.concat("")) if col.name not in keys else col
        for col in table.c}))


def _starts_with(column, needle: str):
    """A range rather than LIKE: the folded value needs no case-insensitive LIKE, and SQLite can
    answer a range from the index."""
    return and_(column >= needle, column < needle + "\U0010ffff")


def _token_condition(table, value: str):
    if "|" in value:
        system, code = value.split("|", 1)
        if not system:
            return and_(table.c.system.is_(None), table.c.code == code)
        if not code:
            return table.c.system == system
        return and_(table.c.system == system, table.c.code == code)
    return table.c.code == value


def _uri_prefixes(value: str) -> list[str]:
    parts = value.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


# ---------------------------------------------------------- dates

def parse_date_value(value: str, zone) -> tuple[str, str, str]:
    match = _PREFIXED_DATE.match(value.strip())
    if not match:
        raise SearchError(f"'{value}' is not a FHIR date search value (e.g. ge2026-03-01)")
    prefix, date_text = match.group(1) or "eq", match.group(2)
    try:
        low, high = date_range(date_text, zone)
    except ValueError as exc:
        raise SearchError(f"'{value}' is not a valid date: {exc}") from exc
    return prefix, low, high


def _approximate(low: str, high: str) -> tuple[str, str]:
    """``ap``: the value's range widened by 10% of its distance from now (search.html#prefix)."""
    fmt = "%Y-%m-%dT%H:%M:%S.%f"
    start = datetime.strptime(low, fmt).replace(tzinfo=timezone.utc)
    end = datetime.strptime(high, fmt).replace(tzinfo=timezone.utc)
    margin = abs(datetime.now(timezone.utc) - start) / 10
    wide_low = (start - margin).strftime(fmt) if start.year > 1 else low
    try:
        wide_high = (end + margin).strftime(fmt)
    except OverflowError:
        wide_high = HIGHEST_DATE
    return wide_low, wide_high


def date_condition(prefix: str, col_low, col_high, low: str, high: str):
    """FHIR date prefixes: the stored range [col_low, col_high) against the searched [low, high).
    ``col_high`` None means the stored value is a point (``_lastUpdated``)."""
    if prefix == "ap":
        low, high = _approximate(low, high)
    if col_high is None:
        inside = and_(col_low >= low, col_low < high)
        return {"eq": inside, "ap": inside, "ne": not_(inside), "gt": col_low >= high, "sa": col_low >= high,
                "lt": col_low < low, "eb": col_low < low, "ge": col_low >= low, "le": col_low < high}[prefix]
    contained = and_(col_low >= low, col_high <= high)
    return {
        "eq": contained,
        "ne": not_(contained),
        "gt": col_high > high,                  # some of the stored range lies after the searched one
        "lt": col_low < low,
        # the leading term is implied by the rest; it is there so the index on high (low) can serve
        "ge": and_(col_high > low, or_(col_high > high, contained)),
        "le": and_(col_low < high, or_(col_low < low, contained)),
        "sa": col_low >= high,                  # starts after the searched range ends
        "eb": col_high <= low,                  # ends before the searched range starts
        "ap": and_(col_low < high, col_high > low),
    }[prefix]


# ---------------------------------------------------------- quantities

def _quantity_condition(table, value: str, with_unit: bool):
    number_text, system, code = value, None, None
    if with_unit and "|" in value:
        number_text, _, rest = value.partition("|")
        system, _, code = rest.partition("|")
    match = _PREFIXED.match(number_text.strip())
    try:
        number = Decimal(match.group(2)) if match else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise SearchError(f"'{value}' is not a number search value (e.g. gt5.4 or 5.4|http://unitsofmeasure.org|mg)")
    prefix = match.group(1) or "eq"
    half = Decimal(1).scaleb(number.as_tuple().exponent) / 2     # implicit precision: 5.4 means [5.35, 5.45)
    n, low, high = float(number), float(number - half), float(number + half)
    col = table.c.value
    condition = {
        "eq": and_(col >= low, col < high), "ne": or_(col < low, col >= high),
        "gt": col > n, "sa": col > n, "lt": col < n, "eb": col < n, "ge": col >= n, "le": col <= n,
        "ap": and_(col >= n - abs(n) / 10, col <= n + abs(n) / 10),
    }[prefix]
    if system:
        condition = and_(condition, table.c.system == system)
    if code:
        condition = and_(condition, or_(table.c.code == code, and_(table.c.system.is_(None), table.c.unit == code))
                         if not system else table.c.code == code)
    return condition


# ================================================================== sorting and cursors

_LOW_TEXT, _HIGH_TEXT = "", "\U0010ffff"


def _sort_expression(params: SearchParameterRegistry, resource_type: str, r, key: SortKey):
    """A resource's sort value: the lowest of its values ascending, the highest descending; a
    resource with no value sorts last either way."""
    param = params.get(resource_type, key.param)
    if param.column:
        return r.c[param.column]
    table = schema.INDEX_TABLES[param.table]
    column = table.c[{"token": "code", "string": "value", "date": "low", "reference": "target",
                      "quantity": "value"}[param.table]]
    aggregate = func.max if key.descending else func.min
    # an expression, not the bare column: SQLite would otherwise answer min()/max() by walking the
    # (type, param, value) index across every resource instead of looking up this resource's rows
    column = column + 0 if param.table == "quantity" else column.concat("")
    value = select(aggregate(column)).where(table.c.res_type == r.c.res_type, table.c.res_id == r.c.res_id,
                                            table.c.param == param.name).scalar_subquery()
    if param.table == "quantity":
        return func.coalesce(value, -1e308 if key.descending else 1e308)
    return func.coalesce(value, _LOW_TEXT if key.descending else _HIGH_TEXT)


def _after(keys: list[tuple[Any, bool]], values: list, last_id: str, id_column, backwards: bool):
    """Keyset condition: rows strictly after (or, backwards, before) the given sort values and id."""
    condition = id_column < last_id if backwards else id_column > last_id
    for (expression, descending), value in reversed(list(zip(keys, values))):
        later = (expression < value) if descending != backwards else (expression > value)
        condition = or_(later, and_(expression == value, condition))
    return condition


class CursorCodec:
    """Opaque, signed page cursors bound to the query that made them."""

    def __init__(self, secret: str | bytes):
        self._serializer = URLSafeSerializer(secret, salt="fhir-search-cursor")

    def encode(self, fingerprint: str, backwards: bool, values: list, last_id: str) -> str:
        return self._serializer.dumps({"q": fingerprint, "b": int(backwards), "v": values, "i": last_id})

    def decode(self, token: str, fingerprint: str, key_count: int) -> tuple[bool, list, str]:
        try:
            data = self._serializer.loads(token)
        except BadSignature:
            raise SearchError("_cursor is not one this server issued (or it was altered)", "_cursor") from None
        if not isinstance(data, dict) or data.get("q") != fingerprint:
            raise SearchError("_cursor belongs to another search; follow the links of this search's Bundle",
                              "_cursor")
        values, last_id = data.get("v"), data.get("i")
        if not isinstance(values, list) or len(values) != key_count or not isinstance(last_id, str):
            raise SearchError("_cursor is malformed", "_cursor")
        return bool(data.get("b")), values, last_id


def query_fingerprint(resource_type: str, criteria: list[SearchCriterion], sort: list[SortKey]) -> str:
    payload = orjson.dumps([resource_type, [asdict(c) for c in criteria], [asdict(k) for k in sort]])
    return hashlib.sha256(payload).hexdigest()[:24]


# ================================================================== running a search

def run_search(store: "ResourceStore", resource_type: str, criteria: list[SearchCriterion], count: int,
               cursor: str | None = None, sort: list[SortKey] | None = None, total: str | None = None,
               includes: list[IncludeSpec] | None = None) -> SearchPage:
    """One page of matches. The total is counted only on request (``total`` "accurate" or
    "estimate", as HAPI FHIR's ``_total``, or ``count`` 0: nothing but the total): counting a wide
    search cost more than finding its page (a week of orders at 500,000 resources). Without a
    request, a first page that holds every match still says how many there are (free); otherwise
    the Bundle has no total."""
    r = schema.resources
    sort = list(sort or [])
    keys = [(_sort_expression(store.params, resource_type, r, k), k.descending) for k in sort]
    fingerprint = query_fingerprint(resource_type, criteria, sort)
    backwards, after = False, None
    if cursor:
        backwards, values, last_id = store.cursors.decode(cursor, fingerprint, len(keys))
        after = _after(keys, values, last_id, r.c.res_id, backwards)
    order = [(e.desc() if d != backwards else e.asc()) for e, d in keys]
    order.append(r.c.res_id.desc() if backwards else r.c.res_id.asc())
    columns = [r.c.res_id, r.c.content, *[e.label(f"k{i}") for i, (e, _) in enumerate(keys)]]
    with store.engine.connect() as conn:
        conditions = [r.c.res_type == resource_type, r.c.deleted.is_(False),
                      *ConditionBuilder(store.params, store.zone).conditions(resource_type, r, criteria, conn)]
        conditions += access.visible_conditions(r.c.res_type, r.c.res_id, resource_type)   # caller's organization
        page_conditions = conditions if after is None else [*conditions, after]
        counted = None
        if total in ("accurate", "estimate") or (total is None and count == 0):    # _count=0: only the total
            counted = conn.execute(select(func.count()).select_from(r).where(*conditions)).scalar_one()
        rows = conn.execute(select(*columns).where(*page_conditions).order_by(*order).limit(count + 1)).all() \
            if count > 0 else []
        more = len(rows) > count
        if counted is None and total is None and not cursor and not more and count > 0:
            counted = len(rows)
        rows = rows[:count]
        if backwards:
            rows.reverse()
        resources = [orjson.loads(row.content) for row in rows]
        included = resolve_includes(conn, store.params, resources, includes or [])

    def cursor_at(row, towards_start: bool) -> str:
        return store.cursors.encode(fingerprint, towards_start, [row[f"k{i}"] for i in range(len(keys))], row.res_id)

    rows = [row._mapping for row in rows]
    next_cursor = previous_cursor = None
    if rows:
        # forwards: a next page when more rows followed, a previous one when we came from a cursor;
        # backwards (following "previous"): the page we came from is next, more rows mean a previous
        if (more and not backwards) or backwards:
            next_cursor = cursor_at(rows[-1], False)
        if (more and backwards) or (cursor and not backwards):
            previous_cursor = cursor_at(rows[0], True)
    return SearchPage(resources, counted, next_cursor, previous_cursor, included)


# ================================================================== _include / _revinclude

def resolve_includes(conn: Connection, params: SearchParameterRegistry, matches: list[dict],
                     specs: list[IncludeSpec]) -> list[dict]:
    """Resources the matches point at (``_include``) or that point at them (``_revinclude``);
    ``:iterate`` specs are applied again to what was included, a few levels at most."""
    if not specs or not matches:
        return []
    seen = {(m["resourceType"], m["id"]) for m in matches}
    included: list[dict] = []
    frontier, active = matches, specs
    for _ in range(_INCLUDE_ROUNDS):
        wanted: set[tuple[str, str]] = set()
        for spec in active:
            wanted |= _include_keys(conn, params, spec, frontier)
        new = [k for k in wanted if k not in seen]
        seen.update(new)
        frontier = _fetch(conn, new)
        included += frontier
        active = [s for s in specs if s.iterate]
        if not frontier or not active:
            break
    return included


def _include_keys(conn: Connection, params: SearchParameterRegistry, spec: IncludeSpec,
                  frontier: list[dict]) -> set[tuple[str, str]]:
    ref = schema.idx_reference
    if spec.param == "*":
        names = [p.name for p in params.for_type(spec.source_type).values() if p.type == "reference"]
    else:
        names = [spec.param]
    found: set[tuple[str, str]] = set()
    if not spec.reverse:
        ids = [f["id"] for f in frontier if f["resourceType"] == spec.source_type]
        for chunk in _chunks(ids):
            for (target,) in conn.execute(select(ref.c.target).where(
                    ref.c.res_type == spec.source_type, ref.c.param.in_(names), ref.c.res_id.in_(chunk))):
                target_type, _, target_id = target.partition("/")
                if target_id and "/" not in target_id and (spec.target_type in (None, target_type)) \
                        and target_type in params.by_type:
                    found.add((target_type, target_id))
        return found
    targets = [f"{f['resourceType']}/{f['id']}" for f in frontier
               if spec.target_type in (None, f["resourceType"])]
    for chunk in _chunks(targets):
        for row in conn.execute(select(ref.c.res_id).where(
                ref.c.res_type == spec.source_type, ref.c.param.in_(names), ref.c.target.in_(chunk))):
            found.add((spec.source_type, row.res_id))
    return found


def _fetch(conn: Connection, keys: list[tuple[str, str]]) -> list[dict]:
    r = schema.resources
    by_type: dict[str, list[str]] = {}
    for resource_type, resource_id in sorted(keys):
        by_type.setdefault(resource_type, []).append(resource_id)
    found = []
    for resource_type, ids in by_type.items():
        for chunk in _chunks(ids):
            rows = conn.execute(select(r.c.content).where(r.c.res_type == resource_type, r.c.res_id.in_(chunk),
                                                          r.c.deleted.is_(False)).order_by(r.c.res_id))
            found += [orjson.loads(row.content) for row in rows]
    return [resource for resource in found if access.is_visible(conn, resource)]     # _include too


def _chunks(items: list) -> Iterable[list]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start:start + _IN_CHUNK]


__all__ = ["SearchError", "SearchCriterion", "SearchQuery", "SearchPage", "SortKey", "IncludeSpec", "CursorCodec",
           "parse_search", "parse_criterion", "build_conditions", "run_search", "date_condition"]
