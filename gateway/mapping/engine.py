"""The mapping engine: runs a ``mappings/*.yaml`` file over a parsed HL7 v2 message.

A mapping file is data. It names the message types it takes, the groups of segments that repeat
(an order group starts at ORC), and the resources to make: for each, the elements to fill, each
from a v2 field through a named converter (``gateway.mapping.datatypes``). A new message type or
hospital format is a new YAML file, not new Python.

Element rows::

    authoredOn:          {from: [ORC-9, RXE-32], as: datetime}   # first field with a value wins
    identifier[]:        {from: ORC-2, as: entity_identifier, args: {type: PLAC}}   # [] appends
    dosageInstruction[0].timing: {from: TQ1, as: tq1_timing}     # a whole segment
    identifier[]:        [{from: ORC-2, ...}, {from: ORC-3, ...}] # several rows appending to one list
    doseAndRate:         {fields: {minimum: RXE-3, unit: RXE-5}, as: dose_and_rate}
    intent:              {value: order}
    subject:             {ref: patient}                          # another resource of this mapping

The engine refuses to emit empty elements and resources without their ``required`` elements, gives
every resource a temporary ``urn:uuid:`` id (the store replaces it), merges resources of one
message that share an identifier (two orders by the same doctor make one Practitioner), and records
which v2 field filled each element so a validation error can name the field in the ACK's ERR.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import yaml

from gateway.hl7v2 import Hl7Error, Hl7Message, Segment
from gateway.mapping.datatypes import CONVERTERS, EXPLICIT_NULL
from gateway.mapping.terminology import Terminology

_FIELD_REF = re.compile(r"^([A-Z][A-Z0-9]{2})(?:-(\d+)(?:\.(\d+))?)?$")
_PATH_TOKEN = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\[(\d*)\])?$")


class MappingError(ValueError):
    """A mapping file that cannot be used; raised when loading, never while converting."""


class SourceLocation(NamedTuple):
    """Where in the v2 message a FHIR element came from (for ERR-2 and diagnostics)."""
    segment: str
    sequence: int
    field: int | None = None
    component: int | None = None

    def __str__(self) -> str:
        text = self.segment
        if self.field:
            text += f"-{self.field}"
            if self.component:
                text += f".{self.component}"
        return text


@dataclass(frozen=True)
class FieldRef:
    segment: str
    field: int | None
    component: int | None

    @classmethod
    def parse(cls, text: str, where: str) -> "FieldRef":
        match = _FIELD_REF.match(str(text).strip())
        if not match:
            raise MappingError(f"{where}: '{text}' is not a field reference like 'RXE-2' or 'PID-3.4'")
        seg, fld, cmp = match.groups()
        return cls(seg, int(fld) if fld else None, int(cmp) if cmp else None)


@dataclass
class ElementRule:
    path: list[tuple[str, int | None]]
    append: bool
    text_path: str
    sources: list[FieldRef] = field(default_factory=list)
    named_sources: dict[str, FieldRef] = field(default_factory=dict)
    converter: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    ref: str | None = None
    when: dict | None = None
    func: Any = None          # the converter, resolved once when the file is loaded
    location: str = ""        # 'MedicationRequest.authoredOn', for warnings and errors


@dataclass
class ResourceSpec:
    key: str
    type: str
    for_each: str | None
    present: list[str]
    required: list[str]
    identity: dict[str, Any]
    lifecycle: dict[str, Any]
    elements: list[ElementRule]


@dataclass
class MappedResource:
    """One resource the message asks for, with what the store needs to upsert it."""
    key: str
    type: str
    resource: dict
    temp_id: str
    identity: list[tuple[str, str]]
    identity_match: str = "any"           # any: any identifier matches; first: only the first (the patient key)
    lifecycle: dict = field(default_factory=dict)
    status_only: bool = False
    create_only: bool = False
    deletions: list[str] = field(default_factory=list)
    sources: dict[str, SourceLocation] = field(default_factory=dict)

    def source_of(self, expression: str) -> SourceLocation | None:
        """The v2 field that filled the element named by a FHIRPath-like expression (longest prefix)."""
        path = re.sub(r"\[\d+\]", "", expression.split(".", 1)[1] if "." in expression else "")
        best = None
        for element, location in self.sources.items():
            element_plain = re.sub(r"\[\d*\]", "", element)
            if path == element_plain or path.startswith(element_plain + "."):
                if best is None or len(element_plain) > len(best[0]):
                    best = (element_plain, location)
        return best[1] if best else None


@dataclass
class MappedMessage:
    mapping: str
    resources: list[MappedResource]
    warnings: list[str]
    errors: list[Hl7Error]

    def bundle(self) -> dict:
        """The result as a FHIR transaction Bundle of conditional updates on business identifiers."""
        entries = []
        for mapped in self.resources:
            resource = dict(mapped.resource)
            resource.pop("id", None)
            request: dict[str, str] = {"method": "POST", "url": mapped.type}
            if mapped.identity:
                system, value = mapped.identity[0]
                request = {"method": "PUT", "url": f"{mapped.type}?identifier={system}|{value}"}
            entries.append({"fullUrl": mapped.temp_id, "resource": resource, "request": request})
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


class MapContext:
    """What a converter may use: terminology, the time zone, the message, and where to report."""
    __slots__ = ("terminology", "zone", "message", "warnings", "errors", "location", "source")

    def __init__(self, terminology: Terminology, zone: ZoneInfo | None, message: Hl7Message):
        self.terminology = terminology
        self.zone = zone
        self.message = message
        self.warnings: list[str] = []
        self.errors: list[Hl7Error] = []
        self.location = ""
        self.source: SourceLocation | None = None

    def warn(self, text: str) -> None:
        self.warnings.append(f"{self.location}: {text}" if self.location else text)

    def error(self, text: str, code: str = "207") -> None:
        src = self.source
        self.errors.append(Hl7Error(
            text=f"{self.location}: {text}" if self.location else text,
            segment=src.segment if src else None, sequence=src.sequence if src else None,
            field=src.field if src else None, component=src.component if src else None, code=code))


class MappingSpec:
    """One mapping file, checked when loaded (unknown converters and bad field references fail early)."""

    def __init__(self, name: str, source: str, message_types: list[str], groups: dict[str, dict],
                 resources: list[ResourceSpec], description: str = "", raw: dict | None = None):
        self.name = name
        self.source = source
        self.message_types = message_types
        self.groups = groups
        self.resources = resources
        self.description = description
        self.raw = raw or {}
        self._segments_read: set[str] | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> "MappingSpec":
        path = Path(path)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls.from_dict(data, where=path.name)

    @classmethod
    def from_dict(cls, data: dict, where: str = "mapping") -> "MappingSpec":
        if not isinstance(data, dict) or "resources" not in data:
            raise MappingError(f"{where}: a mapping needs 'name', 'source' and 'resources'")
        groups = {name: {"start": g["start"], "members": set(g.get("members") or []) or None}
                  for name, g in (data.get("groups") or {}).items()}
        resources = []
        keys = {r.get("key") for r in data["resources"]}
        for spec in data["resources"]:
            rwhere = f"{where}: resource '{spec.get('key')}'"
            if spec.get("for_each") and spec["for_each"] not in groups:
                raise MappingError(f"{rwhere}: for_each names unknown group '{spec['for_each']}'")
            elements = []
            for path, rule in (spec.get("elements") or {}).items():
                # a list: for 'x[]' every row appends; for a single element the first row with a value wins
                rules = rule if isinstance(rule, list) else [rule]
                elements.extend(cls._element(path, r, f"{rwhere}, element '{path}'", keys) for r in rules)
            for element in elements:
                element.location = f"{spec['type']}.{element.text_path}"
            resources.append(ResourceSpec(
                key=spec["key"], type=spec["type"], for_each=spec.get("for_each"),
                present=list(spec.get("present") or []), required=list(spec.get("required") or []),
                identity=dict(spec.get("identity") or {}), lifecycle=dict(spec.get("lifecycle") or {}),
                elements=elements))
        return cls(data.get("name", where), data.get("source", "hl7v2"), list(data.get("message_types") or []),
                   groups, resources, data.get("description", ""), data)

    @staticmethod
    def _element(path: str, rule: Any, where: str, keys: set) -> ElementRule:
        append = path.endswith("[]")
        tokens = []
        for token in (path[:-2] if append else path).split("."):
            match = _PATH_TOKEN.match(token)
            if not match:
                raise MappingError(f"{where}: '{token}' is not an element name")
            name, index = match.groups()
            tokens.append((name, int(index) if index else None))
        if not isinstance(rule, dict):
            rule = {"value": rule}
        element = ElementRule(path=tokens, append=append, text_path=path.rstrip("[]"),
                              converter=rule.get("as"), args=dict(rule.get("args") or {}),
                              value=rule.get("value"), ref=rule.get("ref"), when=rule.get("when"))
        sources = rule.get("from")
        if sources is not None:
            element.sources = [FieldRef.parse(s, where) for s in (sources if isinstance(sources, list) else [sources])]
        for name, ref in (rule.get("fields") or {}).items():
            element.named_sources[name] = FieldRef.parse(ref, where)
        if element.converter and element.converter not in CONVERTERS:
            raise MappingError(f"{where}: unknown converter '{element.converter}' "
                               f"(known: {', '.join(sorted(CONVERTERS))})")
        element.func = CONVERTERS[element.converter or "string"]
        if element.ref and element.ref not in keys:
            raise MappingError(f"{where}: ref names unknown resource '{element.ref}'")
        if not (element.sources or element.named_sources or element.ref or "value" in rule):
            raise MappingError(f"{where}: needs 'from', 'fields', 'ref' or 'value'")
        return element

    def segments_read(self) -> set[str]:
        """Names of the segments this mapping reads; the rest are kept with the message's Provenance."""
        if self._segments_read is None:
            self._segments_read = self._collect_segments_read()
        return self._segments_read

    def _collect_segments_read(self) -> set[str]:
        names = {g["start"] for g in self.groups.values()}
        for spec in self.resources:
            names.update(spec.present)
            for rule in spec.elements:
                names.update(ref.segment for ref in rule.sources)
                names.update(ref.segment for ref in rule.named_sources.values())
                if rule.when:
                    names.update(v for k, v in rule.when.items() if k in ("present", "absent"))
        return names

    # ------------------------------------------------------------------ running

    def run(self, message: Hl7Message, terminology: Terminology, zone: ZoneInfo | None) -> MappedMessage:
        ctx = MapContext(terminology, zone, message)
        message_level = message.segments
        message_wide = first_by_name(message_level)
        produced: list[MappedResource] = []
        by_identity: dict[tuple[str, str, str], MappedResource] = {}
        scope_keys: dict[tuple[int, str], str] = {}       # (group index, key) -> temp id
        group_cache = {name: message.groups(g["start"], g["members"]) for name, g in self.groups.items()}
        for spec in self.resources:
            scopes = [(i, grp) for i, grp in enumerate(group_cache[spec.for_each])] if spec.for_each \
                else [(-1, message_level)]
            for index, segments in scopes:
                mapped = self._make(spec, ctx, segments, message_wide, index, scope_keys)
                if mapped is None:
                    continue
                # a resource sharing an identifier with one already made is that resource (two orders
                # by one doctor make one Practitioner); merged now, before anything refers to it
                twin = next((by_identity[(mapped.type, *token)] for token in mapped.identity
                             if (mapped.type, *token) in by_identity), None)
                if twin is not None:
                    _absorb(twin, mapped)
                    scope_keys[(index, spec.key)] = twin.temp_id
                    continue
                for token in mapped.identity:
                    by_identity[(mapped.type, *token)] = mapped
                scope_keys[(index, spec.key)] = mapped.temp_id
                produced.append(mapped)
        return MappedMessage(self.name, produced, ctx.warnings, ctx.errors)

    def _make(self, spec: ResourceSpec, ctx: MapContext, segments: list[Segment], message_wide: dict[str, Segment],
              group_index: int, scope_keys: dict) -> MappedResource | None:
        local = first_by_name(segments) if group_index >= 0 else message_wide

        def lookup(name: str) -> Segment | None:
            return local.get(name) or message_wide.get(name)

        if any(lookup(name) is None for name in spec.present):
            return None
        resource: dict[str, Any] = {"resourceType": spec.type}
        mapped = MappedResource(key=spec.key, type=spec.type, resource=resource,
                                temp_id=f"urn:uuid:{uuid.uuid4()}", identity=[], lifecycle=spec.lifecycle)
        filled: set[str] = set()
        for rule in spec.elements:
            if not rule.append and rule.text_path in filled:
                continue
            if rule.when and not _condition(rule.when, lookup):
                continue
            ctx.location = rule.location
            value, source, is_null = self._element_value(rule, ctx, lookup, group_index, scope_keys)
            if is_null:
                mapped.deletions.append(rule.text_path)
                continue
            if value is None or value == [] or value == {}:
                continue
            _set_path(resource, rule.path, value, rule.append)
            filled.add(rule.text_path)
            if source is not None:
                mapped.sources.setdefault(rule.text_path, source)
        ctx.location = ""
        content = set(resource) - {"resourceType"}
        if not content or any(req not in resource for req in spec.required):
            return None
        identity_element = spec.identity.get("element", "identifier")
        identifiers = resource.get(identity_element) or []
        key_types = set(spec.identity.get("types") or ())
        mapped.identity = [(i["system"], i["value"]) for i in identifiers if i.get("system") and i.get("value")
                           and (not key_types or _type_code(i) in key_types)]
        mapped.identity_match = spec.identity.get("match", "any")
        if mapped.identity_match == "first":
            mapped.identity = _preferred_identity(identifiers, spec.identity)
        lifecycle = spec.lifecycle
        without = lifecycle.get("status_only_without")
        if without and all(lookup(name) is None for name in ([without] if isinstance(without, str) else without)):
            mapped.status_only = True
        if lifecycle.get("create_only_when") and _condition(lifecycle["create_only_when"], lookup):
            mapped.create_only = True
        return mapped

    def _element_value(self, rule: ElementRule, ctx: MapContext, lookup, group_index: int,
                       scope_keys: dict) -> tuple[Any, SourceLocation | None, bool]:
        if rule.ref:
            temp = scope_keys.get((group_index, rule.ref)) or scope_keys.get((-1, rule.ref))
            return ({"reference": temp} if temp else None), None, False
        if rule.sources:
            for ref in rule.sources:
                seg = lookup(ref.segment)
                if seg is None:
                    continue
                location = SourceLocation(seg.name, seg.index, ref.field, ref.component)
                if ref.field is None:
                    raw: Any = seg
                else:
                    raw = seg.field(ref.field)
                    if _is_explicit_null(raw):
                        return None, location, True
                    if not raw:
                        continue
                    if ref.component:
                        raw = [[rep[ref.component - 1]] if len(rep) >= ref.component else [[""]]
                               for rep in raw]
                ctx.source = location
                value = rule.func(ctx, raw, **rule.args)
                ctx.source = None
                if value not in (None, [], {}):
                    return value, location, False
            return None, None, False
        if rule.named_sources:
            kwargs: dict[str, Any] = {}
            first_location = None
            for name, ref in rule.named_sources.items():
                seg = lookup(ref.segment)
                if seg is None:
                    kwargs[name] = None
                    continue
                kwargs[name] = seg if ref.field is None else seg.field(ref.field)
                first_location = first_location or SourceLocation(seg.name, seg.index, ref.field)
            ctx.source = first_location
            value = rule.func(ctx, **kwargs, **rule.args)
            ctx.source = None
            return value, first_location, False
        return rule.value, None, False


def first_by_name(segments: list[Segment]) -> dict[str, Segment]:
    """The first segment of each name, for lookups in a group or message."""
    found: dict[str, Segment] = {}
    for seg in segments:
        found.setdefault(seg.name, seg)
    return found


def _is_explicit_null(raw: list) -> bool:
    return len(raw) == 1 and len(raw[0]) == 1 and raw[0][0] == [EXPLICIT_NULL]


def _condition(when: dict, lookup) -> bool:
    """``{field: ORC-1, in: [RF]}`` or ``{present: RXE}`` / ``{absent: RXE}``."""
    if "present" in when:
        return lookup(when["present"]) is not None
    if "absent" in when:
        return lookup(when["absent"]) is None
    ref = FieldRef.parse(when["field"], "when")
    seg = lookup(ref.segment)
    value = seg.value(ref.field, 1, ref.component or 1) if seg is not None else None
    return (value or "") in [str(v) for v in when.get("in", [])]


def _set_path(resource: dict, path: list[tuple[str, int | None]], value: Any, append: bool) -> None:
    node: Any = resource
    for depth, (name, index) in enumerate(path):
        last = depth == len(path) - 1
        if index is None:
            if last:
                if append:
                    node.setdefault(name, []).extend(value if isinstance(value, list) else [value])
                else:
                    node[name] = value
                return
            node = node.setdefault(name, {})
        else:
            items = node.setdefault(name, [])
            while len(items) <= index:
                items.append({})
            if last:
                if isinstance(items[index], dict) and isinstance(value, dict):
                    items[index].update(value)
                else:
                    items[index] = value
                return
            node = items[index]


def _type_code(identifier: dict) -> str | None:
    codings = (identifier.get("type") or {}).get("coding") or [{}]
    return codings[0].get("code")


def _preferred_identity(identifiers: list[dict], identity: dict) -> list[tuple[str, str]]:
    """The patient key: the identifier of the configured authority, else those typed MR."""
    authority_system = identity.get("system")
    for ident in identifiers:
        if authority_system and ident.get("system") == authority_system:
            return [(ident["system"], ident["value"])]
    preferred_type = identity.get("type", "MR")
    typed = [(i["system"], i["value"]) for i in identifiers
             if any(c.get("code") == preferred_type for c in (i.get("type") or {}).get("coding", []))]
    if typed:
        return typed
    return [(i["system"], i["value"]) for i in identifiers[:1]]


def _absorb(twin: MappedResource, duplicate: MappedResource) -> None:
    """Fold a duplicate into its twin: identifiers merged, elements the twin lacks taken over."""
    known = {(i.get("system"), i.get("value")) for i in twin.resource.get("identifier", [])}
    for ident in duplicate.resource.get("identifier", []):
        if (ident.get("system"), ident.get("value")) not in known:
            twin.resource.setdefault("identifier", []).append(ident)
    for element, value in duplicate.resource.items():
        twin.resource.setdefault(element, value)
    for element, location in duplicate.sources.items():
        twin.sources.setdefault(element, location)


class MappingSet:
    """Every mapping file in ``mappings/``, indexed by message type (``RDE^O11``) and by name."""

    def __init__(self, specs: list[MappingSpec]):
        self.by_name = {s.name: s for s in specs}
        self.by_message_type: dict[str, MappingSpec] = {}
        for spec in specs:
            for message_type in spec.message_types:
                if message_type in self.by_message_type:
                    raise MappingError(f"{message_type} is claimed by both {self.by_message_type[message_type].name} "
                                       f"and {spec.name}")
                self.by_message_type[message_type] = spec

    @classmethod
    def load(cls, directory: str | Path) -> "MappingSet":
        directory = Path(directory)
        specs = []
        for path in sorted(directory.glob("*.yaml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "resources" in data:
                specs.append(MappingSpec.from_dict(data, where=path.name))
        return cls(specs)

    def for_message(self, message_type: str) -> MappingSpec | None:
        return self.by_message_type.get(message_type)
