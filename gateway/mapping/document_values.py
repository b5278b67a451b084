"""Converters for values as hospitals' own documents give them: ISO 8601 dates, and things a v2
field packs into components (code^display^system, family^given) given as separately named parts.

Each builds the HL7 shape the v2 converters take and calls them, so a CSV date, an XML code and an
HL7 field end as the same FHIR (same precision rules, same code-system table, same names). Used by
``source: xml|csv|json`` mappings; they take the engine's field shape (``[[["value"]]]``) like all.
"""
from __future__ import annotations

import re
from typing import Any

from gateway.mapping.datatypes import (CONVERTERS, Field, UCUM, _coding, _compact, _identifier_type, _name,
                                       converter, date, date_time, decimal, first_rep, instant,
                                       pilot_zone_approval, string, tq_timing)

_ISO = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?)?)?"
                  r"(Z|[+-]\d{2}:?\d{2})?$")
GS1_DI_OID = "2.51.1.1"


def iso_to_dtm(text: str) -> str | None:
    """``2026-03-18T09:12:00+08:00`` -> ``20260318091200+0800`` (the v2 DTM the date converters read)."""
    match = _ISO.match(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    dtm = "".join(part or "" for part in (year, month, day, hour, minute, second))
    if fraction:
        dtm += fraction[:7]
    if offset:
        dtm += "+0000" if offset == "Z" else offset.replace(":", "")
    return dtm


def _as_dtm(ctx, field: Field) -> Field | None:
    raw = string(ctx, field)
    if raw is None:
        return None
    dtm = iso_to_dtm(raw)
    if dtm is None:
        ctx.error(f"'{raw}' is not an ISO 8601 date or date-time (YYYY-MM-DD, YYYY-MM-DDThh:mm:ss+08:00)",
                  code="102")
        return None
    return [[[dtm]]]


@converter("iso_date")
def iso_date(ctx, field: Field) -> str | None:
    dtm = _as_dtm(ctx, field)
    return date(ctx, dtm) if dtm else None


@converter("iso_datetime")
def iso_datetime(ctx, field: Field) -> str | None:
    """Without an offset, local time in the configured zone with a warning, as for v2 timestamps."""
    dtm = _as_dtm(ctx, field)
    return date_time(ctx, dtm) if dtm else None


@converter("iso_instant")
def iso_instant(ctx, field: Field) -> str | None:
    dtm = _as_dtm(ctx, field)
    return instant(ctx, dtm) if dtm else None


def _text(ctx, value: Field | str | None) -> str:
    """A named part: a field the document gave, or a constant from ``args``."""
    if value is None:
        return ""
    return value if isinstance(value, str) else (string(ctx, value) or "")


@converter("concept")
def concept(ctx, code: Field | None = None, display: Field | None = None, system: Field | str | None = None,
            text: Field | None = None, default_system: str | None = None) -> dict | None:
    """A code given as named parts -> CodeableConcept. ``system`` is a coding-system name from
    ``mappings/code_systems.yaml`` (``ICD-10-CN``, ``CN-NMPA``, ``HL70162``) or a URI, as in CWE-3."""
    coding = _coding(ctx, _text(ctx, code), _text(ctx, display), _text(ctx, system), default_system)
    return _compact({"coding": [coding] if coding else None, "text": _text(ctx, text) or None}) or None


@converter("human_name")
def human_name(ctx, family: Field | None = None, given: Field | None = None, text: Field | None = None,
               use: str | None = None) -> list | None:
    """Family and given names as parts (or only a whole name as ``text``) -> [HumanName], written
    like an XPN (a Chinese name joined without a space: 黄丽)."""
    parts = [[_text(ctx, family)], [_text(ctx, given)]]
    name = _name(parts, 1, 2, 3, 4, 5, use)
    if name is None:
        whole = _text(ctx, text)
        return [_compact({"use": use, "text": whole})] if whole else None
    return [name]


@converter("identifier")
def identifier(ctx, value: Field | None = None, authority: Field | str | None = None, suffix: Field | None = None,
               type: str = "", kind: str = "", system: str | None = None, separator: str = "-") -> list | None:
    """A number and the organization that issued it -> [Identifier] with the same system a v2 CX/EI
    from that authority gets (``{base}/sid/<AUTHORITY>/mr`` for ``type: MR``), so a patient known by
    MRN from HL7 and from a CSV export is one Patient. ``suffix`` is joined to the value (a line
    number of a prescription); ``system`` is a template (``{base}/sid/{authority}/device-report``)."""
    number = _text(ctx, value)
    if not number:
        return None
    issuer = _text(ctx, authority)
    extra = _text(ctx, suffix)
    if extra:
        number = f"{number}{separator}{extra}"
    if system:
        uri = system.format(base=ctx.terminology.canonical_base, authority=issuer)
    else:
        uri = ctx.terminology.identifier_system(issuer, "", "", kind or type)
    if uri is None or (system and "{authority}" in system and not issuer):
        ctx.warn(f"identifier '{number}' has no issuing organization; not kept as an identifier")
        return None
    return [_compact({"type": _identifier_type(type, ctx), "system": uri, "value": number})]


class _NamedSegment:
    """A v2 segment built from named parts, for converters that read a whole segment (ZLC)."""

    def __init__(self, fields: dict[int, str]):
        self._fields = fields

    def value(self, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str | None:
        return self._fields.get(n) or None if (rep, comp, sub) == (1, 1, 1) else None

    def field(self, n: int) -> Field:
        return [[[self._fields[n]]]] if self._fields.get(n) else []


@converter("approval")
def approval(ctx, number: Field | None = None, kind: Field | str | None = None, approved: Field | None = None,
             authority: Field | str | None = None) -> dict | None:
    """The pilot-zone approval as named parts (number, kind FIRST_USE/REUSE, ISO date, authority
    HNMPA/NMPA) -> the same ``pilot-zone-approval`` extension the v2 ZLC segment gives."""
    approved_dtm = _as_dtm(ctx, approved) if approved else None
    return pilot_zone_approval(ctx, _NamedSegment({
        2: _text(ctx, number), 3: _text(ctx, kind), 4: approved_dtm[0][0][0] if approved_dtm else "",
        5: _text(ctx, authority)}))


def is_gtin(value: str) -> bool:
    """A GS1 GTIN-8/12/13/14: digits with a valid check digit (the last)."""
    if not value.isdigit() or len(value) not in (8, 12, 13, 14):
        return False
    digits = [int(c) for c in value]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits[:-1])))
    return (10 - total % 10) % 10 == digits[-1]


@converter("device_udi_carrier")
def device_udi_carrier(ctx, di: Field | None = None, lot: Field | None = None, serial: Field | None = None,
                       manufactured: Field | None = None, expires: Field | None = None,
                       jurisdiction: str | None = None) -> list | None:
    """A bare UDI DI (a register export has no issuing agency) -> udiCarrier through the v2 ``udi_carrier``
    converter, issued by GS1 when the DI is a valid GTIN, so an HL7 PRT and a CSV row describe the
    device alike. Dates are ISO here."""
    number = _text(ctx, di)
    if not number:
        return None
    rep = [[number], [""], [GS1_DI_OID], ["ISO"]] if is_gtin(number) else [[number]]
    made = _as_dtm(ctx, manufactured) if manufactured else None
    until = _as_dtm(ctx, expires) if expires else None
    return CONVERTERS["udi_carrier"](ctx, [rep], manufactured=made, expires=until, lot=lot, serial=serial,
                                     jurisdiction=jurisdiction)


@converter("device_name")
def device_name(ctx, field: Field, type: str = "user-friendly-name") -> list | None:
    """A device's name -> [Device.deviceName] (``type`` from the R4 device-nametype codes)."""
    name = string(ctx, field)
    return [{"name": name, "type": type}] if name else None


@converter("duration")
def duration(ctx, field: Field, unit: str = "d", display: str = "days") -> dict | None:
    """A number of days (hours, ...) -> Duration with its UCUM code."""
    number = decimal(ctx, field)
    return {"value": number, "unit": display, "system": UCUM, "code": unit} if number is not None else None


@converter("frequency")
def frequency(ctx, field: Field) -> dict | None:
    """A frequency code alone (BID, QD, Q8H) -> Timing, through HL7 table 0335 like TQ1-3."""
    code_value = string(ctx, field)
    return tq_timing(ctx, [[[""], [code_value]]]) if code_value else None

