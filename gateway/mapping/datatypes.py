"""Converters from HL7 v2 datatypes to FHIR R4 datatypes, shared by every mapping file.

A mapping row names a converter (``as: codeable_concept``); the engine calls it with the field it
read and the mapping's ``args``. A field arrives as the parser gives it: a list of repetitions, each
a list of components, each a list of sub-components, already unescaped. Converters return plain
dicts/lists/strings, or None when there is nothing to say: the engine never emits empty elements.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from gateway.mapping.timestamps import TimestampError, to_date, to_datetime, to_instant

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
UCUM = "http://unitsofmeasure.org"
EXPLICIT_NULL = '""'

Field = list  # list[list[list[str]]]: repetitions -> components -> sub-components
CONVERTERS: dict[str, Callable[..., Any]] = {}


def converter(name: str) -> Callable:
    def register(func: Callable) -> Callable:
        CONVERTERS[name] = func
        return func
    return register


def comp(rep: list, index: int, sub: int = 1) -> str:
    """Component ``index`` (1-based), sub-component ``sub`` of one repetition; '' when absent."""
    if index > len(rep):            # absent components are common (CWE-9 of a 3-part CWE): no raise
        return ""
    components = rep[index - 1]
    if sub > len(components):
        return ""
    try:
        value = components[sub - 1]
    except IndexError:
        return ""
    return "" if value == EXPLICIT_NULL else value.strip()


def _has_value(rep: list) -> bool:
    """A repetition with at least one sub-component that is neither blank nor the explicit null."""
    for c in rep:
        for s in c:
            if s and s != EXPLICIT_NULL and not s.isspace():
                return True
    return False


def reps(field: Field | None) -> list:
    """Repetitions that carry at least one value."""
    return [rep for rep in field if _has_value(rep)] if field else []


def first_rep(field: Field | None) -> list | None:
    for rep in field or ():
        if _has_value(rep):
            return rep
    return None


def _compact(data: dict) -> dict:
    """``data`` without None, "", [] and {} (0 and False are values and stay)."""
    return {k: v for k, v in data.items() if v or not (v is None or isinstance(v, (str, list, dict)))}


# ---------------------------------------------------------------- plain values

@converter("string")
def string(ctx, field: Field, component: int = 1) -> str | None:
    rep = first_rep(field)
    return (comp(rep, component) or None) if rep else None


@converter("strings")
def strings(ctx, field: Field, component: int = 1) -> list[str] | None:
    values = [comp(rep, component) for rep in reps(field)]
    return [v for v in values if v] or None


@converter("text")
def text(ctx, field: Field) -> str | None:
    """Free text (FT/TX/ST): every repetition, joined by newlines."""
    values = [comp(rep, 1) for rep in reps(field)]
    return "\n".join(v for v in values if v) or None


@converter("decimal")
def decimal(ctx, field: Field, component: int = 1) -> float | int | None:
    raw = string(ctx, field, component)
    if raw is None:
        return None
    if raw.isascii() and raw.isdigit():     # a plain whole number (most quantities): no Decimal needed
        return int(raw)
    try:
        number = Decimal(raw)
    except InvalidOperation:
        ctx.error(f"'{raw}' is not a number", code="102")
        return None
    return int(number) if number == number.to_integral_value() and "." not in raw else float(number)


@converter("integer")
def integer(ctx, field: Field, component: int = 1) -> int | None:
    value = decimal(ctx, field, component)
    if value is None:
        return None
    if value != int(value):
        ctx.error(f"'{value}' is not a whole number", code="102")
        return None
    return int(value)


@converter("yes_no")
def yes_no(ctx, field: Field) -> bool | None:
    """HL7 table 0136 (Y/N) -> boolean."""
    raw = string(ctx, field)
    if raw is None:
        return None
    if raw.upper() in ("Y", "N"):
        return raw.upper() == "Y"
    ctx.error(f"'{raw}' is not Y or N (HL7 table 0136)", code="103")
    return None


@converter("table")
def table(ctx, field: Field, table: str, component: int = 1, default: Any = None) -> Any:
    """A code translated through ``mappings/tables.yaml``; unknown codes are an error (AE, code 103)."""
    raw = string(ctx, field, component)
    if raw is None:
        return default
    value = ctx.terminology.translate(table, raw)
    if value is None:
        ctx.error(f"'{raw}' is not a known value of HL7 table {table}", code="103")
    return value


# ---------------------------------------------------------------- dates

@converter("date")
def date(ctx, field: Field, component: int = 1) -> str | None:
    raw = string(ctx, field, component)
    if raw is None:
        return None
    try:
        return to_date(raw)
    except (TimestampError, ValueError) as exc:
        ctx.error(str(exc), code="102")
        return None


@converter("datetime")
def date_time(ctx, field: Field, component: int = 1) -> str | None:
    raw = string(ctx, field, component)
    if raw is None:
        return None
    try:
        return to_datetime(raw, ctx.zone, ctx.warnings, ctx.location)
    except (TimestampError, ValueError) as exc:
        ctx.error(str(exc), code="102")
        return None


@converter("instant")
def instant(ctx, field: Field, component: int = 1) -> str | None:
    raw = string(ctx, field, component)
    if raw is None:
        return None
    try:
        return to_instant(raw, ctx.zone, ctx.warnings, ctx.location)
    except (TimestampError, ValueError) as exc:
        ctx.error(str(exc), code="102")
        return None


# ---------------------------------------------------------------- codes

def _coding(ctx, code: str, display: str, system_name: str, default_system: str | None) -> dict | None:
    if not code and not display:
        return None
    system = None
    if system_name:
        system, known = ctx.terminology.coding_system(system_name)
        if not known:
            ctx.warn(f"coding system '{system_name}' is not in mappings/code_systems.yaml; using {system}")
    elif default_system:
        system = ctx.terminology.coding_system(default_system)[0]
    if not code:
        return None
    coding = {"system": system, "code": code} if system else {"code": code}
    if display:
        coding["display"] = display
    return coding


def cwe_concept(ctx, rep: list, default_system: str | None = None) -> dict | None:
    """One CWE/CE repetition -> CodeableConcept: .1-.3 and .4-.6 as codings, .9 (original text) as text."""
    first = _coding(ctx, comp(rep, 1), comp(rep, 2), comp(rep, 3), default_system)
    alternate = _coding(ctx, comp(rep, 4), comp(rep, 5), comp(rep, 6), None) if len(rep) > 3 else None
    codings = [c for c in (first, alternate) if c]
    text_value = comp(rep, 9)
    if not codings and not text_value:
        # a text-only CE (display without a code) keeps its words
        text_value = comp(rep, 2) or comp(rep, 5)
    concept: dict = {"coding": codings} if codings else {}
    if text_value:
        concept["text"] = text_value
    return concept or None


@converter("codeable_concept")
def codeable_concept(ctx, field: Field, default_system: str | None = None) -> dict | None:
    rep = first_rep(field)
    return cwe_concept(ctx, rep, default_system) if rep else None


@converter("codeable_concepts")
def codeable_concepts(ctx, field: Field, default_system: str | None = None) -> list | None:
    concepts = [cwe_concept(ctx, rep, default_system) for rep in reps(field)]
    return [c for c in concepts if c] or None


@converter("coding")
def coding(ctx, field: Field, default_system: str | None = None) -> dict | None:
    concept = codeable_concept(ctx, field, default_system)
    return concept["coding"][0] if concept and concept.get("coding") else None


@converter("code")
def code(ctx, field: Field, component: int = 1) -> str | None:
    return string(ctx, field, component)


# ---------------------------------------------------------------- identifiers

def _hd(rep: list, index: int) -> tuple[str, str, str]:
    """An HD held in component ``index`` as sub-components (namespace&universal id&type)."""
    return comp(rep, index, 1), comp(rep, index, 2), comp(rep, index, 3)


def _identifier_type(code_value: str, ctx=None) -> dict | None:
    """Identifier.type from an HL7 table 0203 code; none for a kind that only names the identifier's
    system (``identifier_kinds_not_in_0203`` in code_systems.yaml: RX has no 0203 code)."""
    if not code_value or (ctx is not None and code_value in ctx.terminology.kinds_not_in_0203):
        return None
    return {"coding": [{"system": V2_0203, "code": code_value}]}


@converter("identifiers")
def identifiers(ctx, field: Field, default_type: str = "") -> list | None:
    """CX repetitions -> Identifiers. An identifier without an assigning authority is dropped with a
    warning: a system-less identifier would match anyone's in a search."""
    result = []
    for rep in reps(field):
        value = comp(rep, 1)
        if not value:
            continue
        type_code = comp(rep, 5) or default_type
        namespace, universal, universal_type = _hd(rep, 4)
        system = ctx.terminology.identifier_system(namespace, universal, universal_type, type_code)
        if system is None:
            ctx.warn(f"identifier '{value}' has no assigning authority (CX-4); not kept as an identifier")
            continue
        ident = _compact({"type": _identifier_type(type_code, ctx), "system": system, "value": value})
        period = _compact({"start": _safe_date(ctx, comp(rep, 7)), "end": _safe_date(ctx, comp(rep, 8))})
        if period:
            ident["period"] = period
        result.append(ident)
    return result or None


def _safe_date(ctx, raw: str) -> str | None:
    if not raw:
        return None
    try:
        return to_date(raw)
    except (TimestampError, ValueError):
        ctx.warn(f"'{raw}' is not a date; left out")
        return None


@converter("entity_identifier")
def entity_identifier(ctx, field: Field, type: str = "", kind: str = "", quiet: bool = False) -> dict | None:
    """EI (order numbers, report ids) -> Identifier. The namespace (EI-2, or EI-3/EI-4 as an OID)
    is the issuer; an EI without one is issued by the sending application (MSH-3), which is what
    HL7 says a placer/filler number's namespace defaults to."""
    rep = first_rep(field)
    if not rep or not comp(rep, 1):
        return None
    namespace, universal, universal_type = comp(rep, 2), comp(rep, 3), comp(rep, 4)
    if not (namespace or universal):
        namespace = ctx.message.sending_application
        if not quiet:
            ctx.warn(f"'{comp(rep, 1)}' has no namespace; issued by the sending application {namespace}")
    system = ctx.terminology.identifier_system(namespace, universal, universal_type, kind or type)
    if system is None:
        return None
    return _compact({"type": _identifier_type(type, ctx), "system": system, "value": comp(rep, 1)})


# ---------------------------------------------------------------- people and places

def _name(rep: list, family_i: int, given_i: int, middle_i: int, suffix_i: int, prefix_i: int,
          use: str | None) -> dict | None:
    family = comp(rep, family_i)
    given = [g for g in (comp(rep, given_i), comp(rep, middle_i)) if g]
    if not (family or given):
        return None
    suffix, prefix = comp(rep, suffix_i), comp(rep, prefix_i)
    name = _compact({
        "use": use,
        "family": family or None,
        "given": given or None,
        "suffix": [suffix] if suffix else None,
        "prefix": [prefix] if prefix else None,
    })
    # a Chinese name is written family-then-given with no space (王小明); Western names with one
    whole = family + "".join(given)
    name["text"] = whole if _is_cjk(whole) else " ".join([*given, family]).strip()
    return name


_CJK = re.compile("[\u3400-\u9fff\uf900-\ufaff]")


def _is_cjk(value: str) -> bool:
    """Any CJK ideograph (unified, extension A, compatibility)."""
    return _CJK.search(value) is not None


@converter("human_names")
def human_names(ctx, field: Field) -> list | None:
    """XPN repetitions -> HumanName (.1 family, .2 given, .3 further given, .4 suffix, .5 prefix, .7 use)."""
    result = []
    for rep in reps(field):
        use = ctx.terminology.translate("0200", comp(rep, 7)) if comp(rep, 7) else None
        name = _name(rep, 1, 2, 3, 4, 5, use)
        if name:
            result.append(name)
    return result or None


@converter("xcn_identifier")
def xcn_identifier(ctx, field: Field, default_type: str = "PRN") -> list | None:
    """XCN -> the person's identifier (.1 id, .9 assigning authority, .13 type). Without XCN-9 the
    id is the sending facility's (MSH-4): a hospital's staff numbers are its own."""
    rep = first_rep(field)
    if not rep or not comp(rep, 1):
        return None
    type_code = comp(rep, 13) or default_type
    namespace, universal, universal_type = _hd(rep, 9)
    if not (namespace or universal):
        # staff numbers are the sending facility's own unless XCN-9 says otherwise
        namespace = ctx.message.sending_facility
        ctx.warn(f"staff id '{comp(rep, 1)}' has no assigning authority (XCN-9); "
                 f"read as issued by the sending facility {namespace}")
    system = ctx.terminology.identifier_system(namespace, universal, universal_type, type_code)
    if system is None:
        return None
    return [_compact({"type": _identifier_type(type_code, ctx), "system": system, "value": comp(rep, 1)})]


@converter("xcn_name")
def xcn_name(ctx, field: Field, with_id: bool = False) -> list | None:
    """XCN -> HumanName (.2 family, .3 given, .4 further given, .5 suffix, .6 prefix). ``with_id``:
    only from an XCN that also carries the id, so a name never lands on someone else's identifier."""
    rep = first_rep(field)
    if not rep or (with_id and not comp(rep, 1)):
        return None
    name = _name(rep, 2, 3, 4, 5, 6, None)
    return [name] if name else None


@converter("addresses")
def addresses(ctx, field: Field) -> list | None:
    """XAD -> Address (.1 street, .2 other designation, .3 city, .4 state, .5 postal code, .6 country,
    .7 type (0190), .9 county/district)."""
    result = []
    for rep in reps(field):
        lines = [line for line in (comp(rep, 1), comp(rep, 2)) if line]
        use = ctx.terminology.translate("0190", comp(rep, 7)) if comp(rep, 7) else None
        address = _compact({
            "use": use, "line": lines or None, "city": comp(rep, 3) or None, "district": comp(rep, 9) or None,
            "state": comp(rep, 4) or None, "postalCode": comp(rep, 5) or None, "country": comp(rep, 6) or None,
        })
        if address.keys() - {"use"}:
            result.append(address)
    return result or None


@converter("telecoms")
def telecoms(ctx, field: Field) -> list | None:
    """XTN -> ContactPoint. Value from .1 (old style) or built from .5 country, .6 area, .7 number, .8 ext;
    .4 is an email address."""
    result = []
    for rep in reps(field):
        equipment = comp(rep, 3)
        system = ctx.terminology.translate("0202", equipment) if equipment else None
        if comp(rep, 4):
            value, system = comp(rep, 4), "email"
        elif comp(rep, 7):
            value = "".join(
                part for part in (f"+{comp(rep, 5)} " if comp(rep, 5) else "",
                                  f"{comp(rep, 6)} " if comp(rep, 6) else "", comp(rep, 7),
                                  f" ext. {comp(rep, 8)}" if comp(rep, 8) else ""))
        else:
            value = comp(rep, 1)
        if not value:
            continue
        use = ctx.terminology.translate("0201", comp(rep, 2)) if comp(rep, 2) else None
        result.append(_compact({"system": system or "phone", "value": value.strip(), "use": use}))
    return result or None


# ---------------------------------------------------------------- quantities

def _quantity(ctx, value: Any, unit_rep: list | None) -> dict | None:
    if value is None:
        return None
    quantity: dict[str, Any] = {"value": value}
    if unit_rep:
        unit_code, unit_text, unit_system = comp(unit_rep, 1), comp(unit_rep, 2), comp(unit_rep, 3)
        quantity["unit"] = unit_text or unit_code
        if unit_code:
            system = ctx.terminology.coding_system(unit_system)[0] if unit_system else None
            if system:
                quantity["system"] = system
                quantity["code"] = unit_code
    return quantity


@converter("quantity")
def quantity(ctx, value: Field, unit: Field | None = None) -> dict | None:
    """A number field and a CWE unit field -> Quantity (UCUM when the unit says so)."""
    return _quantity(ctx, decimal(ctx, value), first_rep(unit))


@converter("cq_quantity")
def cq_quantity(ctx, field: Field) -> dict | None:
    """CQ (quantity^units, units as sub-components) -> Quantity."""
    rep = first_rep(field)
    if not rep or not comp(rep, 1):
        return None
    number = decimal(ctx, [[[comp(rep, 1)]]])
    unit = [[s] for s in rep[1]] if len(rep) > 1 else None
    return _quantity(ctx, number, unit)


@converter("dose_and_rate")
def dose_and_rate(ctx, minimum: Field, maximum: Field | None = None, unit: Field | None = None) -> list | None:
    """Give amount minimum/maximum + units -> doseQuantity, or doseRange when both are given."""
    unit_rep = first_rep(unit)
    low = _quantity(ctx, decimal(ctx, minimum), unit_rep)
    high = _quantity(ctx, decimal(ctx, maximum), unit_rep) if maximum else None
    ordered = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/dose-rate-type", "code": "ordered",
                           "display": "Ordered"}]}
    if low and high and high["value"] != low["value"]:
        return [{"type": ordered, "doseRange": {"low": low, "high": high}}]
    if low or high:
        return [{"type": ordered, "doseQuantity": low or high}]
    return None


# ---------------------------------------------------------------- timing

def _repeat_pattern(ctx, code_value: str) -> dict:
    pattern = ctx.terminology.translate("0335", code_value)
    if pattern is None:
        ctx.warn(f"frequency '{code_value}' is not in HL7 table 0335 (mappings/tables.yaml); kept as a code only")
        return {}
    return dict(pattern)


def _timing(ctx, code_rep: list | None, start: str, end: str, count: int | None) -> dict | None:
    repeat: dict[str, Any] = {}
    timing: dict[str, Any] = {}
    if code_rep:
        code_value = comp(code_rep, 1)
        repeat.update(_repeat_pattern(ctx, code_value))
        concept = cwe_concept(ctx, code_rep, default_system="HL70335")
        if concept:
            timing["code"] = concept
    bounds = _compact({"start": _dt(ctx, start), "end": _dt(ctx, end)})
    if bounds:
        repeat["boundsPeriod"] = bounds
    if count:
        repeat["count"] = count
    if repeat:
        timing["repeat"] = repeat
    return timing or None


def _dt(ctx, raw: str) -> str | None:
    return date_time(ctx, [[[raw]]]) if raw else None


@converter("tq1_timing")
def tq1_timing(ctx, segment) -> dict | None:
    """TQ1 (v2.5+): TQ1-3 repeat pattern, TQ1-7 start, TQ1-8 end, TQ1-14 total occurrences."""
    if segment is None:
        return None
    code_rep = first_rep(segment.field(3))
    count = integer(ctx, segment.field(14))
    return _timing(ctx, code_rep, comp(first_rep(segment.field(7)) or [], 1),
                   comp(first_rep(segment.field(8)) or [], 1), count)


@converter("tq_timing")
def tq_timing(ctx, field: Field) -> dict | None:
    """Old-style TQ (RXE-1, ORC-7 before v2.5): quantity^interval^duration^start^end^priority."""
    rep = first_rep(field)
    if not rep:
        return None
    interval = comp(rep, 2)
    code_rep = [[interval]] if interval else None
    return _timing(ctx, code_rep, comp(rep, 4), comp(rep, 5), None)


@converter("priority")
def priority(ctx, segment_or_field) -> str | None:
    """TQ1-9 / TQ-6 priority -> request priority (HL7 table 0027)."""
    return table(ctx, segment_or_field, "0027") if segment_or_field else None


@converter("cwe_text")
def cwe_text(ctx, field: Field) -> str | None:
    """The words of a CWE used for instructions: original text (.9), else display (.2), else code (.1)."""
    rep = first_rep(field)
    if not rep:
        return None
    return comp(rep, 9) or comp(rep, 2) or comp(rep, 1) or None


@converter("annotations")
def annotations(ctx, field: Field) -> list | None:
    """Free-text or CWE instructions -> Annotation notes, one per repetition."""
    notes = [comp(rep, 9) or comp(rep, 2) or comp(rep, 1) for rep in reps(field)]
    return [{"text": n} for n in notes if n] or None


@converter("order_status")
def order_status(ctx, order_status: Field | None = None, control: Field | None = None) -> str | None:
    """ORC-5 order status (table 0038) when given, else ORC-1 order control (table 0119)."""
    if order_status and first_rep(order_status):
        return table(ctx, order_status, "0038")
    if control and first_rep(control):
        return table(ctx, control, "0119")
    return None


# ---------------------------------------------------------------- organizations

def _hd_identifier(ctx, namespace: str, universal: str, universal_type: str) -> dict | None:
    if universal and universal_type.upper() in ("ISO", "OID"):
        return {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{universal}"}
    if namespace:
        return {"system": f"{ctx.terminology.canonical_base}/sid/facility", "value": namespace}
    return None


@converter("facility_identifier")
def facility_identifier(ctx, field: Field) -> list | None:
    """An HD naming a facility (MSH-4, PES-1's id) -> Organization.identifier."""
    rep = first_rep(field)
    if not rep:
        return None
    ident = _hd_identifier(ctx, comp(rep, 1), comp(rep, 2), comp(rep, 3))
    return [ident] if ident else None


@converter("xon_identifier")
def xon_identifier(ctx, field: Field) -> list | None:
    """XON -> Organization.identifier from XON-10 (organization identifier), else XON-3 (id number)."""
    rep = first_rep(field)
    if not rep:
        return None
    ident = _hd_identifier(ctx, comp(rep, 10) or comp(rep, 3), "", "")
    return [ident] if ident else None


@converter("xon_name")
def xon_name(ctx, field: Field) -> str | None:
    rep = first_rep(field)
    return (comp(rep, 1) or None) if rep else None


# ---------------------------------------------------------------- local segments and logical references

PILOT_ZONE_APPROVAL = "{base}/StructureDefinition/pilot-zone-approval"


@converter("pilot_zone_approval")
def pilot_zone_approval(ctx, segment) -> dict | None:
    """Local ZLC segment (ZLC-2 approval number, ZLC-3 kind, ZLC-4 date, ZLC-5 authority) -> the
    pilot-zone approval extension. Lecheng's imported drugs and devices are used under this approval."""
    if segment is None or not segment.value(2):
        return None
    base = ctx.terminology.canonical_base
    parts: list[dict] = [{"url": "number", "valueIdentifier": {
        "system": f"{base}/sid/pilot-zone-approval", "value": segment.value(2)}}]
    if segment.value(3):
        parts.append({"url": "kind", "valueCoding": {"system": f"{base}/CodeSystem/approval-kind",
                                                      "code": segment.value(3)}})
    approved = date(ctx, segment.field(4))
    if approved:
        parts.append({"url": "date", "valueDate": approved})
    authority = cwe_concept(ctx, first_rep(segment.field(5)), default_system="HNMPA") \
        if first_rep(segment.field(5)) else None
    if authority:
        parts.append({"url": "authority", "valueCodeableConcept": authority})
    return {"url": PILOT_ZONE_APPROVAL.format(base=base), "extension": parts}


@converter("identifier_reference")
def identifier_reference(ctx, field: Field, type: str = "PLAC", kind: str = "", target: str = "") -> dict | None:
    """An EI pointing at another resource -> a logical Reference (``{"identifier": ...}``, with the
    ``target`` resource type); the store turns it into a literal reference when it knows the target."""
    ident = entity_identifier(ctx, field, type=type, kind=kind)
    if not ident:
        return None
    return {"type": target, "identifier": ident} if target else {"identifier": ident}


@converter("encounter_class")
def encounter_class(ctx, field: Field) -> dict | None:
    """PV1-2 patient class (table 0004) -> Encounter.class, a v3 ActCode Coding."""
    code_value = table(ctx, field, "0004")
    if not code_value:
        return None
    return {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code_value}


# ---------------------------------------------------------------- coded values through tables.yaml

def _table_coding(ctx, table_name: str, code_value: str) -> dict | None:
    """A code through ``tables.yaml``: the row is a FHIR Coding (``{system, code, display}``) or a code."""
    row = ctx.terminology.translate(table_name, code_value)
    if row is None:
        return None
    return dict(row) if isinstance(row, dict) else {"code": row}


def _v2_coding(ctx, table_number: str, code_value: str) -> dict:
    """The original HL7 table code, kept as a coding of ``v2-nnnn`` (display from ``tables.yaml``)."""
    display = ctx.terminology.translate(f"{table_number}-display", code_value)
    return _compact({"system": ctx.terminology.coding_system(f"HL7{table_number}")[0], "code": code_value,
                     "display": display})


@converter("codings")
def codings(ctx, field: Field) -> list | None:
    """Every coding of a CWE (both triplets, every repetition): for one concept coded twice (PEO-1, PEO-2)."""
    found = []
    for rep in reps(field):
        concept = cwe_concept(ctx, rep)
        found.extend((concept or {}).get("coding") or [])
    return found or None


@converter("table_concept")
def table_concept(ctx, field: Field, table: str, original: str | None = None) -> dict | None:
    """An ID/IS code -> CodeableConcept: the FHIR coding from ``tables.yaml`` table ``table`` and, with
    ``original``, the v2 code itself as a second coding. A code the table lacks is an error (103)."""
    raw = string(ctx, field)
    if raw is None:
        return None
    translated = _table_coding(ctx, table, raw)
    known = translated is not None or (original and ctx.terminology.translate(f"{original}-display", raw))
    if not known:
        ctx.error(f"'{raw}' is not a known value of HL7 table {original or table}", code="103")
        return None
    found = [translated] if translated else []
    if original:
        found.append(_v2_coding(ctx, original, raw))
    return {"coding": found}


@converter("v2_table_extension")
def v2_table_extension(ctx, field: Field, url: str, table: str) -> dict | None:
    """An HL7 table code (PCR-21, table 0251) as an extension carrying the v2 coding."""
    raw = string(ctx, field)
    if raw is None:
        return None
    if ctx.terminology.translate(f"{table}-display", raw) is None:
        ctx.error(f"'{raw}' is not a known value of HL7 table {table}", code="103")
        return None
    return {"url": url.format(base=ctx.terminology.canonical_base),
            "valueCodeableConcept": {"coding": [_v2_coding(ctx, table, raw)]}}


@converter("flag_extension")
def flag_extension(ctx, field: Field, url: str) -> dict | None:
    """Y/N (HL7 tables 0136, 0239) -> a boolean extension; U (unknown) says nothing."""
    raw = string(ctx, field)
    if raw is None or raw.upper() == "U":
        return None
    if raw.upper() not in ("Y", "N"):
        ctx.error(f"'{raw}' is not Y, N or U", code="103")
        return None
    return {"url": url.format(base=ctx.terminology.canonical_base), "valueBoolean": raw.upper() == "Y"}


# ---------------------------------------------------------------- adverse events (PEX^P07)

@converter("adverse_event_identifier")
def adverse_event_identifier(ctx, report: Field | None, observation=None) -> dict | None:
    """PES-5 (sender event identifier) -> AdverseEvent.identifier (0..1 in R4). One AdverseEvent is made
    per PEO; the first PEO of a report keeps the number as sent, a further one gets ``/<n>``
    (its place in the report), so every event has its own stable key and a resent report updates them."""
    ident = entity_identifier(ctx, report, kind="AE")
    if ident is None or observation is None:
        return ident
    ordinal = 0
    for seg in ctx.message.segments:
        if seg.name == "PES":
            ordinal = 0
        elif seg.name == "PEO":
            ordinal += 1
        if seg is observation:
            break
    if ordinal > 1:
        ident["value"] = f"{ident['value']}/{ordinal}"
    return ident


@converter("adverse_event_outcome")
def adverse_event_outcome(ctx, event_outcome: Field | None = None, patient_outcome: Field | None = None) -> dict | None:
    """PEO-12 patient outcome (table 0241), else PEO-11 event consequence (table 0240) -> the R4
    adverse-event-outcome code; both original codes are kept as further codings. When neither says
    how the patient is (a consequence like H, hospitalised), the outcome is ``unknown``."""
    patient_code = string(ctx, patient_outcome) if patient_outcome else None
    event_code = string(ctx, event_outcome) if event_outcome else None
    if patient_code is None and event_code is None:
        return None
    translated = None
    for table_number, code_value, name in (("0241", patient_code, "patient_outcome"),
                                           ("0240", event_code, "event_outcome")):
        if code_value is None:
            continue
        if ctx.terminology.translate(f"{table_number}-display", code_value) is None:
            ctx.error(f"'{code_value}' is not a known value of HL7 table {table_number}", code="103", field_name=name)
            return None
        translated = translated or _table_coding(ctx, table_number, code_value)
    found = [translated or _table_coding(ctx, "0241", "U")]
    if patient_code:
        found.append(_v2_coding(ctx, "0241", patient_code))
    if event_code:
        found.append(_v2_coding(ctx, "0240", event_code))
    return {"coding": found}


@converter("narrative")
def narrative(ctx, labels: dict, **parts: Field | None) -> dict | None:
    """Free-text descriptions (PES-7, PEO-13..17) -> Narrative, one labelled paragraph each; the status
    is ``additional`` because the text says more than the coded elements."""
    from html import escape
    paragraphs = []
    for name, label in labels.items():
        words = text(ctx, parts.get(name)) if parts.get(name) else None
        if words:
            body = "<br/>".join(escape(line, quote=False) for line in words.split("\n"))
            paragraphs.append(f"<p><b>{escape(label, quote=False)}</b>: {body}</p>")
    if not paragraphs:
        return None
    return {"status": "additional", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{"".join(paragraphs)}</div>'}


@converter("product_identifier")
def product_identifier(ctx, product: Field | None, lot: Field | None = None, kind: str = "medication") -> list | None:
    """A product named in a report (PCR-1) and its lot (PCR-12) -> an identifier, so one product lot is
    one Medication (or Device) whichever report names it: system ``{base}/sid/<kind>-lot/<coding
    system>``, value ``<code>:<lot>`` (just ``<code>`` without a lot)."""
    rep = first_rep(product)
    if not rep or not comp(rep, 1):
        return None
    coding_system = comp(rep, 3) or ctx.message.sending_application
    lot_value = string(ctx, lot) if lot else None
    value = f"{comp(rep, 1)}:{lot_value}" if lot_value else comp(rep, 1)
    return [{"system": f"{ctx.terminology.canonical_base}/sid/{kind}-lot/{coding_system}", "value": value}]


# ---------------------------------------------------------------- devices (PRT, OBX-18)

GS1_ISSUER = "http://hl7.org/fhir/NamingSystem/gs1-di"


@converter("device_identifiers")
def device_identifiers(ctx, field: Field) -> list | None:
    """A hospital's device number (PRT-10, OBX-18; EI) -> ``{base}/sid/device/<assigning authority>``.
    The authority is EI-2, else EI-3; without one it is the sending facility's own number (MSH-4)."""
    result = []
    for rep in reps(field):
        value = comp(rep, 1)
        if not value:
            continue
        authority = comp(rep, 2) or comp(rep, 3)
        if not authority:
            authority = ctx.message.sending_facility
            ctx.warn(f"device id '{value}' has no assigning authority; read as the sending facility's "
                     f"({authority}) own number")
        result.append({"system": f"{ctx.terminology.canonical_base}/sid/device/{authority}", "value": value})
    return result or None


@converter("udi_serial_identifier")
def udi_serial_identifier(ctx, di: Field | None, serial: Field | None) -> list | None:
    """The device identity contract: a device with a UDI DI and a serial number is identified by
    ``{base}/sid/device-udi-serial`` ``<DI>:<serial>`` (the CSV device register uses the same)."""
    di_value = string(ctx, di) if di else None
    serial_value = string(ctx, serial) if serial else None
    if not (di_value and serial_value):
        return None
    return [{"system": f"{ctx.terminology.canonical_base}/sid/device-udi-serial", "value": f"{di_value}:{serial_value}"}]


def _udi_issuer(ctx, rep: list) -> str | None:
    namespace, universal, universal_type = comp(rep, 2), comp(rep, 3), comp(rep, 4)
    if universal and universal_type.upper() in ("ISO", "OID"):
        # a known issuing agency (GS1 2.51.1.1, HIBCC, ICCBBA) by its OID in code_systems.yaml
        return ctx.terminology.coding_systems.get(universal) or f"urn:oid:{universal}"
    if universal:
        return universal
    if namespace:
        return ctx.terminology.coding_system(namespace)[0]
    return None


def _yymmdd(value: str | None) -> str:
    return value[2:4] + value[5:7] + value[8:10] if value and len(value) >= 10 else ""


@converter("udi_carrier")
def udi_carrier(ctx, di: Field | None, manufactured: Field | None = None, expires: Field | None = None,
                lot: Field | None = None, serial: Field | None = None, jurisdiction: str | None = None) -> list | None:
    """PRT-16 (UDI DI, EI with the issuing agency as OID) -> Device.udiCarrier. For a GS1 DI the
    human-readable form is built from the application identifiers (01) DI, (11) made, (17) expires,
    (10) lot, (21) serial."""
    rep = first_rep(di)
    if not rep or not comp(rep, 1):
        return None
    issuer = _udi_issuer(ctx, rep)
    carrier: dict[str, Any] = {"deviceIdentifier": comp(rep, 1), "issuer": issuer, "jurisdiction": jurisdiction}
    if issuer == GS1_ISSUER:
        made, until = date(ctx, manufactured) if manufactured else None, date(ctx, expires) if expires else None
        lot_value, serial_value = (string(ctx, lot) if lot else None), (string(ctx, serial) if serial else None)
        carrier["carrierHRF"] = "".join(part for part in (
            f"(01){comp(rep, 1)}", f"(11){_yymmdd(made)}" if _yymmdd(made) else "",
            f"(17){_yymmdd(until)}" if _yymmdd(until) else "", f"(10){lot_value}" if lot_value else "",
            f"(21){serial_value}" if serial_value else ""))
    return [_compact(carrier)]


# ---------------------------------------------------------------- results (OBX)

@converter("observation_identifier")
def observation_identifier(ctx, placer: Field | None = None, filler: Field | None = None, set_id: Field | None = None,
                           sub_id: Field | None = None, kind: str = "OBS") -> list | None:
    """An OBX has no number of its own before v2.8's OBX-21: the order's number (OBR-3 filler, else
    OBR-2 placer) with the OBX set id (and sub id) makes one, so a corrected result updates the same
    Observation."""
    order = filler if first_rep(filler) else placer
    ident = entity_identifier(ctx, order, kind=kind, quiet=True) if order else None
    number = string(ctx, set_id) if set_id else None
    if ident is None or number is None:
        return None
    sub = string(ctx, sub_id) if sub_id else None
    ident["value"] = f"{ident['value']}-{number}" + (f"-{sub}" if sub else "")
    return [ident]
