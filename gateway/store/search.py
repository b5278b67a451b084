"""Search criteria -> SQL conditions over the index tables, one builder per search type."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sqlalchemy import and_, false, not_, or_, select

from gateway.store import schema
from gateway.store.search_parameters import date_range, normalize_string

if TYPE_CHECKING:
    from gateway.store.resources import ResourceStore, SearchCriterion

_DATE_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(\d{4}.*)$")


class SearchError(ValueError):
    """A search parameter value the server cannot use (answered 400 with an OperationOutcome)."""


def build_conditions(store: "ResourceStore", resource_type: str, criteria: list["SearchCriterion"]) -> list:
    r = schema.resources
    params = store.params.for_type(resource_type)
    conditions = []
    for criterion in criteria:
        if criterion.param == "_id":
            conditions.append(r.c.res_id.in_(criterion.values))
            continue
        if criterion.param == "_lastUpdated":
            ors = []
            for value in criterion.values:
                prefix, low, high = _parse_date(value, store)
                ors.append(_date_condition(prefix, r.c.last_updated, r.c.last_updated, low, high, point=True))
            conditions.append(or_(*ors))
            continue
        param = params.get(criterion.param)
        if param is None:
            raise SearchError(f"unknown search parameter '{criterion.param}' for {resource_type}")
        table = schema.INDEX_TABLES[param.type]
        base = [table.c.res_type == resource_type, table.c.param == param.name]
        ors = [_value_condition(store, param, table, value, criterion.modifier) for value in criterion.values]
        matching = select(table.c.res_id).where(*base, or_(*ors))
        conditions.append(r.c.res_id.in_(matching))
    return conditions


def _value_condition(store, param, table, value: str, modifier: str | None):
    if param.type == "token":
        if "|" in value:
            system, code = value.split("|", 1)
            if not system:
                return and_(table.c.system.is_(None), table.c.code == code)
            if not code:
                return table.c.system == system
            return and_(table.c.system == system, table.c.code == code)
        return table.c.code == value
    if param.type == "string":
        needle = normalize_string(value)
        if modifier == "exact":
            return table.c.value == needle
        if modifier == "contains":
            return table.c.value.contains(needle, autoescape=True)
        return table.c.value.startswith(needle, autoescape=True)
    if param.type == "reference":
        target = value.rstrip("/")
        if "/" in target:
            target = "/".join(target.split("/")[-2:])  # absolute URL -> Type/id
            return table.c.target == target
        types = param.targets or ("Patient",)
        return table.c.target.in_([f"{t}/{target}" for t in types])
    if param.type == "date":
        prefix, low, high = _parse_date(value, store)
        return _date_condition(prefix, table.c.low, table.c.high, low, high)
    return false()


def _parse_date(value: str, store) -> tuple[str, str, str]:
    match = _DATE_PREFIX.match(value.strip())
    if not match:
        raise SearchError(f"'{value}' is not a FHIR date search value (e.g. ge2026-03-01)")
    prefix, date_text = match.group(1) or "eq", match.group(2)
    try:
        low, high = date_range(date_text, store.zone)
    except ValueError as exc:
        raise SearchError(f"'{value}' is not a valid date: {exc}") from exc
    return prefix, low, high


def _date_condition(prefix: str, col_low, col_high, low: str, high: str, point: bool = False):
    """FHIR date prefixes over half-open ranges: the resource's [col_low, col_high) against [low, high)."""
    if point:  # a stored instant (lastUpdated) is a point
        col_high = col_low
        conditions = {
            "eq": and_(col_low >= low, col_low < high), "ne": or_(col_low < low, col_low >= high),
            "gt": col_low >= high, "sa": col_low >= high, "lt": col_low < low, "eb": col_low < low,
            "ge": col_low >= low, "le": col_low < high, "ap": and_(col_low >= low, col_low < high),
        }
        return conditions[prefix]
    conditions = {
        "eq": and_(col_low >= low, col_high <= high),
        "ne": not_(and_(col_low >= low, col_high <= high)),
        "gt": col_high > high,
        "lt": col_low < low,
        "ge": col_high > low,
        "le": col_low < high,
        "sa": col_low >= high,
        "eb": col_high <= low,
        "ap": and_(col_low < high, col_high > low),
    }
    return conditions[prefix]
