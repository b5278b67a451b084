"""HL7 v2 DTM/TS -> FHIR date, dateTime and instant, keeping the precision the sender gave.

v2 writes ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``. FHIR has no hour-only time, so a
dateTime is filled to seconds once any time is present, and FHIR requires an offset once there is a
time. A message without an offset means local time in the configured zone (Asia/Shanghai for
Hainan HIS systems), with a warning; with no zone configured only the date is kept: an invented
offset would silently move the event.
"""
from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

_DTM = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?(?:([+-])(\d{2})(\d{2})?)?$")


class TimestampError(ValueError):
    """The value is not a v2 DTM."""


def _parts(value: str) -> tuple[list[str | None], str | None]:
    value = value.strip()
    if "^" in value:    # v2.3 TS may carry a degree of precision component: keep only the timestamp
        value = value.split("^", 1)[0]
    match = _DTM.match(value)
    if not match:
        raise TimestampError(f"'{value}' is not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    offset = f"{sign}{off_h}:{off_m or '00'}" if sign else None
    if month and not 1 <= int(month) <= 12 or day and not 1 <= int(day) <= 31:
        raise TimestampError(f"'{value}' has an impossible month or day")
    if hour and int(hour) > 23 or minute and int(minute) > 59 or second and int(second) > 60:
        raise TimestampError(f"'{value}' has an impossible time of day")
    return [year, month, day, hour, minute, second, fraction], offset


def to_date(value: str) -> str:
    """FHIR ``date`` at the precision given (``2026``, ``2026-03``, ``2026-03-15``)."""
    (year, month, day, *_), _offset = _parts(value)
    return _date_text(year, month, day)


def _date_text(year: str, month: str | None, day: str | None) -> str:
    text = year
    if month:
        text += f"-{month}"
        if day:
            text += f"-{day}"
            datetime(int(year), int(month), int(day))  # rejects 2026-02-30
    return text


def to_datetime(value: str, zone: ZoneInfo | None, warnings: list[str] | None = None,
                where: str = "") -> str:
    """FHIR ``dateTime``: a date keeps its precision; a time is filled to seconds and gets an offset."""
    (year, month, day, hour, minute, second, fraction), offset = _parts(value)
    date_part = _date_text(year, month, day)         # read once: the value is parsed once
    if not hour:
        return date_part
    time_part = f"{hour}:{minute or '00'}:{second or '00'}{fraction or ''}"
    if offset is None:
        if zone is None:
            if warnings is not None:
                warnings.append(f"{where}: '{value}' has no UTC offset and no time zone is configured; "
                                "only the date is kept")
            return date_part
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0))
        delta = zone.utcoffset(naive)
        total = int(delta.total_seconds() // 60)
        sign = "+" if total >= 0 else "-"
        offset = f"{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"
        if warnings is not None:
            warnings.append(f"{where}: '{value}' has no UTC offset; read as local time in {zone.key} ({offset})")
    return f"{date_part}T{time_part}{offset}"


def to_instant(value: str, zone: ZoneInfo | None, warnings: list[str] | None = None,
               where: str = "") -> str | None:
    """FHIR ``instant`` needs a full time with seconds and an offset; anything less is left out."""
    (_y, _m, _d, hour, minute, second, _f), _offset = _parts(value)
    if not (hour and minute and second):
        if warnings is not None:
            warnings.append(f"{where}: '{value}' is not precise to the second; an instant cannot hold it")
        return None
    result = to_datetime(value, zone, warnings, where)
    return result if "T" in result else None
