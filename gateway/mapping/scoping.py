"""Reading HL7 v2 fields through segment groups: which segments a resource made for a group sees.

A mapping's ``groups:`` cut a message into repeating groups (an order group runs from each ORC to the
next; a PEO group sits inside its PES group). A resource or nested row made *for* a group reads
through a :class:`SegmentView` of that group's scope: the group's own segments first, then those of
the groups that enclose it, then the whole message. This module owns that lookup rule and the v2
field references it resolves (``RXE-2.1``); ``gateway.mapping.engine`` owns what is done with the
values (converters, element paths, resources).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from gateway.hl7v2 import Hl7Message, Segment
from gateway.mapping.datatypes import EXPLICIT_NULL

_FIELD_REF = re.compile(r"^([A-Z][A-Z0-9]{2})(?:-(\d+)(?:\.(\d+))?)?$")
_FIELD_REFS: dict[str, "FieldRef"] = {}      # text -> parsed, bounded (FieldRef is frozen: safe to share)


class MappingError(ValueError):
    """A mapping file that cannot be used; raised when loading, never while converting. ``problems``
    lists every mistake found (each ``file:line: message``); the text is all of them, one a line."""

    def __init__(self, text: str, problems: list[str] | None = None):
        super().__init__(text)
        self.problems = problems or [text]
        self.partial: Any = None      # what did load (rows, a resource, a spec), for further checks

    @classmethod
    def of(cls, problems: list[str], partial: Any = None) -> "MappingError":
        error = cls("\n".join(problems), problems)
        error.partial = partial
        return error


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
        """``'PID-3.4'`` -> FieldRef. Remembered: ``when:`` conditions parse theirs on every message."""
        known = _FIELD_REFS.get(text) if cls is FieldRef and type(text) is str else None
        if known is not None:
            return known
        match = _FIELD_REF.match(str(text).strip())
        if not match:
            raise MappingError(f"{where}: '{text}' is not a field reference like 'RXE-2' or 'PID-3.4'")
        seg, fld, cmp = match.groups()
        ref = cls(seg, int(fld) if fld else None, int(cmp) if cmp else None)
        if cls is FieldRef and type(text) is str and len(_FIELD_REFS) < 4096:
            _FIELD_REFS[text] = ref
        return ref


NULL = object()   # what a reader returns for HL7's explicit null (""): delete the stored element


class SegmentView:
    """How a resource (or a nested row) reads v2 fields: through the segment lookup of its scope
    (its own group first, then the groups enclosing it, then the whole message)."""
    __slots__ = ("lookup",)

    def __init__(self, lookup):
        self.lookup = lookup

    def exists(self, text: Any) -> bool:
        """A segment is there, or (``PID-3``) a field with a value."""
        return _present(text, self.lookup)

    def text(self, text: Any) -> str | None:
        ref = text if isinstance(text, FieldRef) else FieldRef.parse(text, "when")
        seg = self.lookup(ref.segment)
        return seg.value(ref.field, 1, ref.component or 1) if seg is not None else None

    def read(self, ref: FieldRef) -> tuple[Any, SourceLocation] | None:
        """A ``from:`` value: the field (or whole segment), ``NULL`` for ``""``, None when empty."""
        seg = self.lookup(ref.segment)
        if seg is None:
            return None
        location = SourceLocation(seg.name, seg.index, ref.field, ref.component)
        if ref.field is None:
            return seg, location
        raw = seg.field(ref.field)
        if _is_explicit_null(raw):
            return NULL, location
        if not raw:
            return None
        if ref.component:
            raw = [[rep[ref.component - 1]] if len(rep) >= ref.component else [[""]] for rep in raw]
        return raw, location

    def read_named(self, ref: FieldRef) -> tuple[Any, SourceLocation | None]:
        """A ``fields:`` value: the field as it is (converters see empty and ``""`` themselves)."""
        seg = self.lookup(ref.segment)
        if seg is None:
            return None, None
        return (seg if ref.field is None else seg.field(ref.field)), SourceLocation(seg.name, seg.index, ref.field)


class Hl7Reader:
    """``source: hl7v2``: paths are v2 field references; a group runs from each ``start`` segment
    (optionally over ``members`` only) to the next."""
    source = "hl7v2"

    def compile(self, text: str, where: str) -> FieldRef:
        return FieldRef.parse(text, where)

    def group(self, name: str, group: Any, where: str) -> dict:
        if not isinstance(group, dict) or "start" not in group:
            raise MappingError(f"{where}: group '{name}' needs 'start' (a segment name)")
        return {"start": group["start"], "members": set(group.get("members") or []) or None}

    def begin(self, message: Hl7Message, groups: dict[str, dict]) -> "SegmentGroups":
        return SegmentGroups(message, groups)

    def origin(self, message: Hl7Message) -> Hl7Message:
        return message


HL7_READER = Hl7Reader()



class GroupScope:
    """One place a resource or nested row is made from: a group (or the whole message), with the
    segment lookups nearest first (the group itself, the groups that enclose it, the message-level
    segments), each holding only what this group may read."""
    __slots__ = ("segments", "ids", "lookups")

    def __init__(self, segments: list[Segment] | None, lookups: list[dict[str, Segment]]):
        self.segments = segments
        self.ids = frozenset(map(id, segments)) if segments is not None else None
        self.lookups = lookups

    def lookup_function(self):
        lookups = self.lookups
        if len(lookups) == 1:
            return lookups[0].get
        if len(lookups) == 2:
            own, outer = lookups
            return lambda name: own.get(name) or outer.get(name)

        def lookup(name: str) -> Segment | None:
            for found in lookups:
                seg = found.get(name)
                if seg is not None:
                    return seg
            return None
        return lookup


class SegmentGroups:
    """The groups of one message (``groups:`` in the mapping), as scopes, made once per message.

    The scoping rule (issue 12): a group reads a segment when the segment is its own, or when every
    group holding that segment also holds this group's start, i.e. the segment lies in an enclosing
    group and in none of its other children, or in no group at all (MSH, PID, PV1: message level).
    A sibling's segments are never read: a status-only ``ORC|CA`` after a full order sees no RXE, so
    it changes the status and nothing else, and a message split into one message per group maps to
    the same resources. Only a resource made for the whole message reads any segment (the first of
    its name)."""

    def __init__(self, message: Hl7Message, definitions: dict[str, dict]):
        self.by_name = {name: message.groups(g["start"], g["members"]) for name, g in definitions.items()}
        self._scopes: dict[str, list[GroupScope]] = {}
        self.top = GroupScope(None, [first_by_name(message.segments)])
        self._holders: dict[int, list[int]] = {}          # id(segment) -> ids of the groups holding it
        for groups in self.by_name.values():
            for group in groups:
                for seg in group:
                    self._holders.setdefault(id(seg), []).append(id(group))
        self._message_level = first_by_name([seg for seg in message.segments if id(seg) not in self._holders])

    def view(self, scope: GroupScope, outer: SegmentView | None = None, group: str | None = None) -> SegmentView:
        """How ``scope`` reads fields (a nested row's scope reads as its own group does: ``outer``,
        the enclosing row's view, reaches nothing the rule above would not)."""
        return SegmentView(scope.lookup_function())

    def scopes(self, name: str) -> list[GroupScope]:
        found = self._scopes.get(name)
        if found is None:
            found = self._scopes[name] = [self._scope(segments) for segments in self.by_name[name]]
        return found

    def _scope(self, segments: list[Segment]) -> GroupScope:
        first = id(segments[0])
        holders_of_first = set(self._holders[first])
        enclosing = sorted((other for groups in self.by_name.values() for other in groups
                            if other is not segments and id(other) in holders_of_first), key=len)

        def readable(seg: Segment) -> bool:
            return all(holder in holders_of_first for holder in self._holders[id(seg)])

        lookups = [first_by_name(segments)]
        lookups.extend(first_by_name([seg for seg in other if readable(seg)]) for other in enclosing)
        lookups.append(self._message_level)
        return GroupScope(segments, [lookup for lookup in lookups if lookup])

    def inside(self, name: str, scope: GroupScope) -> list[GroupScope]:
        """The groups called ``name`` that start inside ``scope`` (all of them for the whole message)."""
        if scope.ids is None:
            return self.scopes(name)
        return [inner for inner in self.scopes(name) if id(inner.segments[0]) in scope.ids]


def made_for(entries: list[tuple[frozenset | None, str]] | None, scope: GroupScope) -> str | None:
    """The temp id of the resource made for a group overlapping ``scope``, else the message-level one."""
    if not entries:
        return None
    if scope.ids is not None:
        for ids, temp in entries:
            if ids is not None and not ids.isdisjoint(scope.ids):
                return temp
    return next((temp for ids, temp in entries if ids is None), None)



def first_by_name(segments: list[Segment]) -> dict[str, Segment]:
    """The first segment of each name, for lookups in a group or message."""
    found: dict[str, Segment] = {}
    for seg in segments:
        found.setdefault(seg.name, seg)
    return found


def _is_explicit_null(raw: list) -> bool:
    return len(raw) == 1 and len(raw[0]) == 1 and raw[0][0] == [EXPLICIT_NULL]




def _present(text: str, lookup) -> bool:
    ref = FieldRef.parse(text, "when")
    seg = lookup(ref.segment)
    if seg is None or ref.field is None:
        return seg is not None
    value = seg.value(ref.field, 1, ref.component or 1)
    return bool(value) and value != EXPLICIT_NULL
