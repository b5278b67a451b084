"""The mapping engine: runs a ``mappings/*.yaml`` file over a parsed HL7 v2 message or document.

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
    suspectEntity[]:     {for_each: cause, elements: {...}}      # one item per `cause` group inside this one

Which segments a resource made for a group may read is decided in ``gateway.mapping.scoping``
(its own group, then the groups that enclose it, then the message). A ``ref`` names the resource of
that key made for an overlapping group (the Medication of the same PCR), else the message-level one.

A file is checked when it loads (``checks.py``; element paths against R4 in ``cardinality.py``), every
mistake a ``file:line: message``; when mapping, a converter's result is fitted to the element's R4
cardinality (one item into a 0..1 element, a single value into a 0..* one; two into 0..1 is an error).

The engine refuses to emit empty elements and resources without their ``required`` elements, gives
every resource a temporary ``urn:uuid:`` id (the store replaces it), merges resources of one
message that share an identifier (two orders by the same doctor make one Practitioner), and records
which v2 field filled each element so a validation error can name the field in the ACK's ERR.

One engine for every source. A mapping's ``source`` picks a *reader* that compiles its paths and
reads values; resources, groups, conditions, identity and converters are shared:

* ``hl7v2``: ``PID-3``, ``RXE-2.1``, a whole segment ``TQ1``; a group starts at a segment (here);
* ``xml``: XPath through lxml; ``csv``: a header name, one document per row; ``json``: a
  JSONPath-like ``items[*].dose.value`` (``gateway.mapping.documents``).

A reader hands converters the HL7 field shape they already take (repetitions -> components ->
sub-components), so ``date``, ``table`` or ``quantity`` read a CSV cell as they read a v2 field.
"""
from __future__ import annotations

import os
import re
from random import getrandbits
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo


from gateway.filecache import cached_while_files_unchanged
from gateway.hl7v2 import Hl7Error
from gateway.mapping import cardinality
from gateway.mapping.checks import at, check_arguments, check_condition, file_and_line, relocate, terminology_problems
from gateway.mapping.datatypes import CONVERTERS
from gateway.mapping.scoping import HL7_READER, NULL, FieldRef, MappingError, SourceLocation, made_for
from gateway.mapping.terminology import Terminology
from gateway.mapping.yaml_lines import line_of, load_lined_yaml
from gateway.yamlfile import load_yaml

_PATH_TOKEN = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\[(\d*)\])?$")



class DocumentLocation(NamedTuple):
    """Where in an XML, CSV or JSON document a value came from: an XPath, a CSV line and column, a
    JSON pointer; ``line`` is the source line when the parser knows it (XML)."""
    path: str
    line: int | None = None

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path} (line {self.line})"


@dataclass(frozen=True)
class DocumentProblem:
    """One problem with a document, located in it; becomes an OperationOutcome issue."""
    text: str
    location: DocumentLocation | None = None
    code: str = "invalid"         # FHIR issue type: structure, required, value, code-invalid, invalid

    def __str__(self) -> str:
        return f"{self.location}: {self.text}" if self.location else self.text


_ISSUE_TYPE = {"101": "required", "102": "value", "103": "code-invalid"}   # HL7 0357 -> FHIR issue type


def reader_for(source: str, data: dict, where: str):
    """The reader a mapping's ``source`` names (``hl7v2`` here; ``xml``, ``csv``, ``json`` in documents)."""
    if source == "hl7v2":
        return HL7_READER
    from gateway.mapping.documents import document_reader   # imported late: it builds on this module
    return document_reader(source, data, where)


@dataclass
class ElementRule:
    path: list[tuple[str, int | None]]
    append: bool
    text_path: str
    sources: list[Any] = field(default_factory=list)          # paths compiled by the mapping's reader
    named_sources: dict[str, Any] = field(default_factory=dict)
    converter: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    ref: str | None = None
    when: dict | None = None
    for_each: str | None = None          # nested rows: one item per group of this name inside the scope
    children: list["ElementRule"] = field(default_factory=list)
    func: Any = None          # the converter, resolved once when the file is loaded
    location: str = ""        # 'MedicationRequest.authoredOn', for warnings and errors
    fit: str = "append"       # one: a 0..1 element (or one item); list: a whole 0..* element; append: []
    where: str = ""           # 'rde_o11.yaml:88: resource 'order', element 'status'', for later checks


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
    when: dict | None = None             # the resource is made only when this condition holds


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
    errors: list[Hl7Error | DocumentProblem]

    def bundle(self) -> dict:
        """The result as a FHIR transaction Bundle of conditional updates on business identifiers.

        A status-only change (a dispense completing its order; ``lifecycle`` in the mapping) is a
        conditional FHIRPath Patch of the status, as an R4 server takes it (``PATCH
        Type?identifier=..`` with a Parameters body): the resource as mapped (identifier and status)
        is not valid R4 (MedicationRequest.intent, medication[x], subject are 1..1), and a PUT of it
        would erase the rest of the order. A server that does not hold the order answers the PATCH
        404 (the gateway's own store leaves a status change for an unknown order alone)."""
        entries = []
        for mapped in self.resources:
            resource = dict(mapped.resource)
            resource.pop("id", None)
            request: dict[str, str] = {"method": "POST", "url": mapped.type}
            if mapped.identity:
                system, value = mapped.identity[0]
                request = {"method": "PUT", "url": f"{mapped.type}?identifier={system}|{value}"}
                if mapped.status_only and isinstance(resource.get("status"), str):
                    entries.append({"resource": status_patch(mapped.type, resource["status"]),
                                    "request": {**request, "method": "PATCH"}})
                    continue
            entries.append({"fullUrl": mapped.temp_id, "resource": resource, "request": request})
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def status_patch(resource_type: str, status: str) -> dict:
    """A FHIRPath Patch (R4 Parameters) that replaces the status and nothing else."""
    return {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": f"{resource_type}.status"},
        {"name": "value", "valueCode": status}]}]}


class MapContext:
    """What a converter may use: terminology, the time zone, the message (for a document: its
    origin, with ``sending_facility``), and where to report."""
    __slots__ = ("terminology", "zone", "message", "warnings", "errors", "location", "source", "named_sources",
                 "document")

    def __init__(self, terminology: Terminology, zone: ZoneInfo | None, message: Any, document: bool = False):
        self.terminology = terminology
        self.zone = zone
        self.message = message
        self.document = document
        self.warnings: list[str] = []
        self.errors: list[Hl7Error | DocumentProblem] = []
        self.location = ""
        self.source: SourceLocation | DocumentLocation | None = None
        self.named_sources: dict[str, Any] = {}   # a ``fields:`` row: where each named field is

    def warn(self, text: str) -> None:
        self.warnings.append(f"{self.location}: {text}" if self.location else text)

    def error(self, text: str, code: str = "207", field_name: str | None = None) -> None:
        """An error at the field being read (of a ``fields:`` row: at the one called ``field_name``)."""
        src = self.named_sources.get(field_name, self.source) if field_name else self.source
        if self.document:
            self.errors.append(DocumentProblem(f"{self.location}: {text}" if self.location else text, src,
                                               _ISSUE_TYPE.get(code, "invalid")))
            return
        self.errors.append(Hl7Error(
            text=f"{self.location}: {text}" if self.location else text,
            segment=src.segment if src else None, sequence=src.sequence if src else None,
            field=src.field if src else None, component=src.component if src else None, code=code))


class MappingSpec:
    """One mapping file, checked when loaded (unknown converters and bad field references fail early)."""

    def __init__(self, name: str, source: str, message_types: list[str], groups: dict[str, dict],
                 resources: list[ResourceSpec], description: str = "", raw: dict | None = None,
                 reader: Any = None):
        self.name = name
        self.source = source
        self.reader = reader or HL7_READER
        self.message_types = message_types
        self.groups = groups
        self.resources = resources
        self.description = description
        self.raw = raw or {}
        self._segments_read: set[str] | None = None

    @classmethod
    def from_file(cls, path: str | Path) -> "MappingSpec":
        """One mapping file, every mistake in it a ``file:line: message`` (MappingError.problems),
        the file named relative to the working directory when it is below it."""
        path = Path(path)
        shown = os.path.relpath(path) if path.is_absolute() else str(path)
        shown = shown if not shown.startswith("..") else str(path)
        try:
            data = load_lined_yaml(path)
        except ValueError as exc:
            raise MappingError(str(exc).replace(path.name, shown, 1)) from None
        return cls.from_dict(data, where=shown)

    @classmethod
    def from_dict(cls, data: dict, where: str = "mapping") -> "MappingSpec":
        """``where`` is the file name; with data from ``load_lined_yaml`` each mistake gets its line."""
        if not isinstance(data, dict) or not isinstance(data.get("resources"), list):
            raise MappingError(f"{at(where, data)}: a mapping needs 'name', 'source' and 'resources' (a list)")
        source = data.get("source", "hl7v2")
        reader = reader_for(source, data, at(where, data, "document" if "document" in data else None))
        groups = {}
        for name, g in (data.get("groups") or {}).items():
            groups[name] = reader.group(name, g, at(where, data.get("groups"), name))
        problems: list[str] = []
        resources = []
        keys = {r.get("key") for r in data["resources"] if isinstance(r, dict)}
        for spec in data["resources"]:
            try:
                resources.append(cls._resource(spec, where, keys, groups, reader))
            except MappingError as exc:
                problems.extend(exc.problems)
                if exc.partial is not None:
                    resources.append(exc.partial)
        loaded = cls(data.get("name", where), source, list(data.get("message_types") or []),
                     groups, resources, data.get("description", ""), data, reader)
        if problems:
            raise MappingError.of(problems, loaded)
        return loaded

    @classmethod
    def _resource(cls, spec: Any, where: str, keys: set, groups: dict, reader: Any) -> ResourceSpec:
        if not isinstance(spec, dict) or not spec.get("key") or not spec.get("type"):
            raise MappingError(f"{at(where, spec)}: a resource needs 'key' and 'type'")
        rwhere = f"{at(where, spec)}: resource '{spec.get('key')}'"
        problems: list[str] = []
        if spec.get("for_each") and spec["for_each"] not in groups:
            problems.append(f"{at(where, spec, 'for_each')}: resource '{spec['key']}': for_each names unknown "
                            f"group '{spec['for_each']}' (groups: {', '.join(groups) or 'none'})")
        resource_step = None
        try:
            resource_step = cardinality.root(spec["type"])
        except cardinality.ElementPathError as exc:
            problems.append(f"{at(where, spec, 'type')}: resource '{spec['key']}': {exc}")
        for name in (spec.get("required") or []) if resource_step is not None else []:
            try:
                cardinality.step(resource_step, str(name))
            except cardinality.ElementPathError as exc:
                problems.append(f"{at(where, spec, 'required')}: resource '{spec['key']}', required: {exc}")
        for key in ("when", "present"):
            if spec.get(key) is not None:
                try:
                    check_condition(spec[key] if key == "when" else {"all": [{"present": p} for p in spec[key]]},
                                     f"{at(where, spec, key)}: resource '{spec['key']}', {key}", reader)
                except MappingError as exc:
                    problems.extend(exc.problems)
        try:
            elements = cls._elements(spec.get("elements") or {}, rwhere, keys, set(groups), spec["type"], reader,
                                     resource_step)
        except MappingError as exc:
            problems.extend(exc.problems)
            elements = exc.partial or []
        resource = ResourceSpec(
            key=spec["key"], type=spec["type"], for_each=spec.get("for_each"),
            present=list(spec.get("present") or []), required=list(spec.get("required") or []),
            identity=dict(spec.get("identity") or {}), lifecycle=dict(spec.get("lifecycle") or {}),
            elements=elements, when=spec.get("when"))
        if problems:
            raise MappingError.of(problems, resource)
        return resource

    @classmethod
    def _elements(cls, rows: dict, where: str, keys: set, groups: set, prefix: str,
                  reader: Any = HL7_READER, parent: cardinality.ElementStep | None = None) -> list[ElementRule]:
        elements, problems = [], []
        if not isinstance(rows, dict):
            raise MappingError(f"{where}: 'elements' must be a mapping of element paths to rows")
        for path, rule in rows.items():
            # a list: for 'x[]' every row appends; for a single element the first row with a value wins
            rules = rule if isinstance(rule, list) else [rule]
            for r in rules:
                row_where = relocate(where, line_of(r) if isinstance(r, dict) else line_of(rows, path))
                try:
                    elements.append(cls._element(path, r, f"{row_where}, element '{path}'", keys, groups, prefix,
                                                 reader, parent))
                except MappingError as exc:
                    problems.extend(exc.problems)
        if problems:
            raise MappingError.of(problems, elements)
        return elements

    @classmethod
    def _element(cls, path: str, rule: Any, where: str, keys: set, groups: set | None = None,
                 prefix: str = "", reader: Any = HL7_READER,
                 parent: cardinality.ElementStep | None = None) -> ElementRule:
        append = path.endswith("[]")
        tokens = []
        for token in (path[:-2] if append else path).split("."):
            match = _PATH_TOKEN.match(token)
            if not match:
                raise MappingError(f"{where}: '{token}' is not an element name")
            name, index = match.groups()
            tokens.append((name, int(index) if index else None))
        final = cls._walk(tokens, append, parent, where) if parent is not None else None
        if not isinstance(rule, dict):
            rule = {"value": rule}
        element = ElementRule(path=tokens, append=append, text_path=path.rstrip("[]"),
                              converter=rule.get("as"), args=dict(rule.get("args") or {}),
                              value=rule.get("value"), ref=rule.get("ref"), when=rule.get("when"),
                              for_each=rule.get("for_each"))
        element.location = f"{prefix}.{element.text_path}" if prefix else element.text_path
        element.where = where
        if final is not None:
            element.fit = "append" if append else "one" if (tokens[-1][1] is not None or not final.repeats) else "list"
        if element.for_each is not None:
            if element.for_each not in (groups or ()):
                raise MappingError(f"{where}: for_each names unknown group '{element.for_each}'")
            if not isinstance(rule.get("elements"), dict):
                raise MappingError(f"{where}: a for_each row needs 'elements'")
            element.children = cls._elements(rule["elements"], where, keys, groups or set(), element.location,
                                             reader, final)
        if element.when is not None:
            check_condition(element.when, f"{where}, when", reader)
        if not isinstance(element.args, dict):
            raise MappingError(f"{where}: 'args' must be a mapping (name: value)")
        sources = rule.get("from")
        if sources is not None:
            element.sources = [reader.compile(s, where) for s in (sources if isinstance(sources, list) else [sources])]
        for name, ref in (rule.get("fields") or {}).items():
            element.named_sources[name] = reader.compile(ref, where)
        if element.converter and element.converter not in CONVERTERS:
            raise MappingError(f"{where}: unknown converter '{element.converter}' "
                               f"(known: {', '.join(sorted(CONVERTERS))})")
        element.func = CONVERTERS[element.converter or "string"]
        if element.converter:
            check_arguments(element, where)
        if element.ref and element.ref not in keys:
            raise MappingError(f"{where}: ref names unknown resource '{element.ref}'")
        if not (element.sources or element.named_sources or element.ref or element.children or "value" in rule):
            raise MappingError(f"{where}: needs 'from', 'fields', 'ref' or 'value'")
        return element

    @staticmethod
    def _walk(tokens: list[tuple[str, int | None]], append: bool, parent: cardinality.ElementStep,
              where: str) -> cardinality.ElementStep:
        """The R4 element a row writes, checked step by step: it exists, an index or ``[]`` only on a
        repeating element, and a repeating element crossed only with an index."""
        current = parent
        for depth, (name, index) in enumerate(tokens):
            try:
                current = cardinality.step(current, name)
            except cardinality.ElementPathError as exc:
                raise MappingError(f"{where}: {exc}") from None
            last = depth == len(tokens) - 1
            if index is not None and not current.repeats:
                raise MappingError(f"{where}: {current.path} is a single element (0..1 in R4): write '{name}', "
                                   f"not '{name}[{index}]'")
            if last and append and not current.repeats:
                raise MappingError(f"{where}: {current.path} is a single element (0..1 in R4): write '{name}:', "
                                   f"not '{name}[]:'")
            if not last and current.repeats and index is None:
                raise MappingError(f"{where}: {current.path} repeats (0..* in R4): write '{name}[0]' for one "
                                   f"item, or '{name}[]:' with for_each for one per group")
        return current

    def segments_read(self) -> set[str]:
        """Names of the segments this mapping reads; the rest are kept with the message's Provenance."""
        if self._segments_read is None:
            self._segments_read = self._collect_segments_read()
        return self._segments_read

    def _collect_segments_read(self) -> set[str]:
        if self.source != "hl7v2":
            return set()
        names = {g["start"] for g in self.groups.values()}

        def rows(rules: list[ElementRule]) -> None:
            for rule in rules:
                names.update(ref.segment for ref in rule.sources)
                names.update(ref.segment for ref in rule.named_sources.values())
                names.update(_condition_segments(rule.when))
                rows(rule.children)

        for spec in self.resources:
            names.update(spec.present)
            names.update(_condition_segments(spec.when))
            rows(spec.elements)
        return names

    # ------------------------------------------------------------------ running

    def run(self, message: Any, terminology: Terminology, zone: ZoneInfo | None) -> MappedMessage:
        """Map one HL7 message, or one document (or CSV row) this mapping's reader has read."""
        ctx = MapContext(terminology, zone, self.reader.origin(message), document=self.source != "hl7v2")
        produced: list[MappedResource] = []
        by_identity: dict[tuple[str, str, str], MappedResource] = {}
        made: dict[str, list[tuple[frozenset | None, str]]] = {}     # key -> (scope ids, temp id)
        groups = self.reader.begin(message, self.groups)
        for spec in self.resources:
            scopes = groups.scopes(spec.for_each) if spec.for_each else [groups.top]
            for scope in scopes:
                mapped = self._make(spec, ctx, scope, groups, made)
                if mapped is None:
                    continue
                # a resource sharing an identifier with one already made is that resource (two orders
                # by one doctor make one Practitioner); merged now, before anything refers to it
                twin = next((by_identity[(mapped.type, *token)] for token in mapped.identity
                             if (mapped.type, *token) in by_identity), None)
                if twin is not None:
                    _absorb(twin, mapped)
                    made.setdefault(spec.key, []).append((scope.ids, twin.temp_id))
                    continue
                for token in mapped.identity:
                    by_identity[(mapped.type, *token)] = mapped
                made.setdefault(spec.key, []).append((scope.ids, mapped.temp_id))
                produced.append(mapped)
        return MappedMessage(self.name, produced, ctx.warnings, ctx.errors)

    def _make(self, spec: ResourceSpec, ctx: MapContext, scope: Any, groups: Any,
              made: dict) -> MappedResource | None:
        view = groups.view(scope)
        if not all(view.exists(name) for name in spec.present):
            return None
        if spec.when and not _condition(spec.when, view):
            return None
        resource: dict[str, Any] = {"resourceType": spec.type}
        mapped = MappedResource(key=spec.key, type=spec.type, resource=resource,
                                temp_id=_temp_id(), identity=[], lifecycle=spec.lifecycle)
        self._fill(resource, spec.elements, ctx, view, scope, groups, made, mapped, "")
        ctx.location = ""
        content = set(resource) - {"resourceType"}
        if not content or any(req not in resource for req in spec.required):
            return None
        identity_element = spec.identity.get("element", "identifier")
        identifiers = resource.get(identity_element) or []
        if isinstance(identifiers, dict):          # a single Identifier (AdverseEvent.identifier in R4)
            identifiers = [identifiers]
        key_types = set(spec.identity.get("types") or ())
        mapped.identity = [(i["system"], i["value"]) for i in identifiers if i.get("system") and i.get("value")
                           and (not key_types or _type_code(i) in key_types)]
        mapped.identity_match = spec.identity.get("match", "any")
        if mapped.identity_match == "first":
            mapped.identity = _preferred_identity(identifiers, spec.identity)
        lifecycle = spec.lifecycle
        without = lifecycle.get("status_only_without")
        if lifecycle.get("status_only") is True or (without and not any(
                view.exists(name) for name in ([without] if isinstance(without, str) else without))):
            mapped.status_only = True
        if lifecycle.get("create_only_when") and _condition(lifecycle["create_only_when"], view):
            mapped.create_only = True
        return mapped

    def _fill(self, target: dict, rules: list[ElementRule], ctx: MapContext, view: Any, scope: Any,
              groups: Any, made: dict, mapped: MappedResource, prefix: str) -> None:
        """Fill ``target`` from ``rules``; ``prefix`` is the path of ``target`` inside the resource."""
        filled: set[str] = set()
        for rule in rules:
            if not rule.append and rule.text_path in filled:
                continue
            if rule.when and not _condition(rule.when, view):
                continue
            ctx.location = rule.location
            value, source, is_null = self._element_value(rule, ctx, view, scope, groups, made, mapped, prefix)
            if is_null:
                if not prefix:
                    mapped.deletions.append(rule.text_path)
                continue
            if value is None or value == [] or value == {}:
                continue
            if rule.fit == "one" and isinstance(value, list):
                if len(value) > 1:       # the mapping, not the message, is at fault: say which element
                    ctx.source = source
                    ctx.error(f"takes a single value (0..1 in R4), but {source or 'the row'} gave {len(value)}; "
                              "the mapping must choose one (a repetition like 'PEO-7(1)', or another element)")
                    ctx.source = None
                    continue
                value = value[0]
            elif rule.fit == "list" and not isinstance(value, list):
                value = [value]
            _set_path(target, rule.path, value, rule.append)
            filled.add(rule.text_path)
            if source is not None:
                mapped.sources.setdefault(prefix + rule.text_path, source)

    def _element_value(self, rule: ElementRule, ctx: MapContext, view: Any, scope: Any, groups: Any,
                       made: dict, mapped: MappedResource, prefix: str) -> tuple[Any, Any, bool]:
        if rule.ref:
            temp = made_for(made.get(rule.ref), scope)
            return ({"reference": temp} if temp else None), None, False
        if rule.children:
            items = []
            for inner in groups.inside(rule.for_each, scope):
                item: dict[str, Any] = {}
                self._fill(item, rule.children, ctx, groups.view(inner, view, rule.for_each), inner, groups, made,
                           mapped, f"{prefix}{rule.text_path}.")
                if item:
                    items.append(item)
            return (items or None), None, False
        if rule.sources:
            for ref in rule.sources:
                found = view.read(ref)
                if found is None:
                    continue
                raw, location = found
                if raw is NULL:
                    return None, location, True
                ctx.source = location
                value = rule.func(ctx, raw, **rule.args)
                ctx.source = None
                if value not in (None, [], {}):
                    return value, location, False
            return None, None, False
        if rule.named_sources:
            kwargs: dict[str, Any] = {}
            first_location = None
            named: dict[str, Any] = {}
            for name, ref in rule.named_sources.items():
                kwargs[name], location = view.read_named(ref)
                if location is not None:
                    named[name] = location
                    first_location = first_location or location
            ctx.source, ctx.named_sources = first_location, named
            value = rule.func(ctx, **kwargs, **rule.args)
            ctx.source, ctx.named_sources = None, {}
            return value, first_location, False
        return rule.value, None, False



def _temp_id() -> str:
    """A ``urn:uuid:`` (random, version 4) for a resource until the store gives it an id. Built from
    ``getrandbits`` (reseeded in forked workers) rather than ``uuid.uuid4()``: a fifth of the cost."""
    h = "%032x" % (getrandbits(128) & 0xFFFFFFFFFFFF0FFF3FFFFFFFFFFFFFFF | 0x00000000000040008000000000000000)
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

def _condition(when: dict, view) -> bool:
    """``{field: ORC-1, in: [RF]}``, ``{present: RXE}`` / ``{absent: PCR-9}`` (a segment, or a field with a
    value), and ``{any: [...]}``, ``{all: [...]}``, ``{not: {...}}`` to combine them."""
    if "any" in when:
        return any(_condition(w, view) for w in when["any"])
    if "all" in when:
        return all(_condition(w, view) for w in when["all"])
    if "not" in when:
        return not _condition(when["not"], view)
    if "present" in when:
        return view.exists(when["present"])
    if "absent" in when:
        return not view.exists(when["absent"])
    return (view.text(when["field"]) or "") in [str(v) for v in when.get("in", [])]



def _condition_segments(when: dict | None) -> set[str]:
    """Segment names a condition reads (for the Provenance's list of unmapped segments)."""
    if not when:
        return set()
    names: set[str] = set()
    for key in ("any", "all"):
        for inner in when.get(key) or ():
            names |= _condition_segments(inner)
    if "not" in when:
        names |= _condition_segments(when["not"])
    for key in ("present", "absent", "field"):
        if key in when:
            names.add(FieldRef.parse(when[key], "when").segment)
    return names


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
    twin_ids, duplicate_ids = twin.resource.get("identifier", []), duplicate.resource.get("identifier", [])
    if not (isinstance(twin_ids, list) and isinstance(duplicate_ids, list)):
        duplicate_ids = []                     # a single Identifier: the twin's stays
    known = {(i.get("system"), i.get("value")) for i in twin_ids}
    for ident in duplicate_ids:
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
    @cached_while_files_unchanged
    def load(cls, directory: str | Path) -> "MappingSet":
        """Every mapping in ``directory``; a MappingError listing every mistake (``file:line: message``)
        when any file has one, so the gateway refuses to start on a broken mapping."""
        specs, problems = load_mappings(directory)
        if problems:
            raise MappingError.of(problems)
        return cls(specs)

    def for_message(self, message_type: str) -> MappingSpec | None:
        return self.by_message_type.get(message_type)


def mapping_files(directory: str | Path) -> list[Path]:
    """The mapping files of a directory: its YAML files with ``resources`` (not the code-system and
    table files beside them)."""
    found = []
    for path in sorted(Path(directory).glob("*.yaml")):
        data = load_yaml(path)
        if isinstance(data, dict) and "resources" in data:
            found.append(path)
    return found


def load_mappings(directory: str | Path, files: list[Path] | None = None,
                  terminology: Terminology | None = None) -> tuple[list[MappingSpec], list[str]]:
    """Load ``files`` (default: every mapping file in ``directory``) and check them against the
    directory's code systems and tables; returns the specs that loaded and every problem found."""
    directory = Path(directory)
    specs, problems = [], []
    partial = []
    for path in files if files is not None else mapping_files(directory):
        try:
            specs.append(MappingSpec.from_file(path))
        except MappingError as exc:
            problems.extend(exc.problems)
            if exc.partial is not None:
                partial.append(exc.partial)
    if terminology is None and (directory / "code_systems.yaml").is_file() and (directory / "tables.yaml").is_file():
        terminology = Terminology.load(directory)
    if terminology is not None:
        for spec in specs + partial:
            problems.extend(terminology_problems(spec, terminology))
        problems.extend(f"code_systems.yaml: alias '{alias}' names '{name}', which is not under coding_systems"
                        for alias, name in terminology.aliases.items() if name not in terminology.coding_systems)
    problems.sort(key=file_and_line)
    claimed: dict[str, str] = {}
    for spec in specs:
        for message_type in spec.message_types:
            if message_type in claimed:
                problems.append(f"{spec.name}: {message_type} is claimed by both {claimed[message_type]} and {spec.name}")
            claimed.setdefault(message_type, spec.name)
    return specs, problems
