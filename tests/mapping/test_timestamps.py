"""v2 DTM -> FHIR date/dateTime/instant: precision kept, offsets never invented or rewritten."""
from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from gateway.mapping.timestamps import TimestampError, to_date, to_datetime, to_instant

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.mark.parametrize("raw, expected", [
    ("2026", "2026"),
    ("202603", "2026-03"),
    ("20260315", "2026-03-15"),
    ("2026031509", "2026-03-15T09:00:00+08:00"),          # FHIR has no hour-only time: filled to seconds
    ("202603150930", "2026-03-15T09:30:00+08:00"),
    ("20260315093015.1234", "2026-03-15T09:30:15.1234+08:00"),
])
def test_partial_precision_is_kept(raw, expected):
    assert to_datetime(raw, SHANGHAI, []) == expected


def test_missing_offset_uses_the_configured_zone_with_a_warning():
    warnings: list[str] = []
    assert to_datetime("20260315092500", SHANGHAI, warnings, "ORC-9") == "2026-03-15T09:25:00+08:00"
    assert "no UTC offset" in warnings[0] and "Asia/Shanghai" in warnings[0]


def test_no_zone_configured_keeps_the_date_only():
    warnings: list[str] = []
    assert to_datetime("20260315092500", None, warnings) == "2026-03-15"
    assert "only the date is kept" in warnings[0]


@pytest.mark.parametrize("raw, expected", [
    ("202108181126+0215", "2021-08-18T11:26:00+02:15"),   # offsets are kept, never moved to our zone
    ("20260315092500-0500", "2026-03-15T09:25:00-05:00"),
    ("20260315092500+08", "2026-03-15T09:25:00+08:00"),   # two-digit offsets are accepted
])
def test_given_offsets_are_kept(raw, expected):
    assert to_datetime(raw, SHANGHAI, []) == expected


def test_instant_needs_seconds():
    warnings: list[str] = []
    assert to_instant("202603150930", SHANGHAI, warnings) is None
    assert to_instant("20260315093000", SHANGHAI, []) == "2026-03-15T09:30:00+08:00"


def test_dates_keep_precision_and_reject_impossible_days():
    assert to_date("20260315093000") == "2026-03-15"
    with pytest.raises(ValueError):
        to_date("20260230")
    with pytest.raises(TimestampError):
        to_datetime("2026-03-15", SHANGHAI, [])
