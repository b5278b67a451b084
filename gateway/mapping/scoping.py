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
    segment lookups nearest first (the group itself, then the groups that enclose it)."""
    __slots__ = ("segments", "ids", "lookups")

    def __init__(self, segments: list[Segment] | None, lookups: list[dict[str, Segment]]):
        self.segments = segments
        self.ids = frozenset(map(id, segments)) if segments is not None else None
        self.lookups = lookups

    def lookup_function(self, message_wide: dict[str, Segment]):
        lookups = [*self.lookups, message_wide]
        if len(lookups) == 1:
            return message_wide.get
        if len(lookups) == 2:
            own = lookups[0]
            return lambda name: own.get(name) or message_wide.get(name)

        def lookup(name: str) -> Segment | None:
            for found in lookups:
                seg = found.get(name)
                if seg is not None:
                    return seg
            return None
        return lookup


MESSAGE_SCOPE = GroupScope(None, [])


class SegmentGroups:
    """The groups of one message (``groups:`` in the mapping), as scopes, made once per message."""

    top = MESSAGE_SCOPE

    def __init__(self, message: Hl7Message, definitions: dict[str, dict]):
        self.by_name = {name: message.groups(g["start"], g["members"]) for name, g in definitions.items()}
        self.members = {name: {g["start"], *(g["members"] or ())} for name, g in definitions.items()}
        self._scopes: dict[str, list[GroupScope]] = {}
        self.message_wide = first_by_name(message.segments)

    def view(self, scope: GroupScope, outer: SegmentView | None = None, group: str | None = None) -> SegmentView:
        """How ``scope`` reads fields. A nested row's scope (of ``group``) reads its own group, then
        ``outer``'s, but never borrows from a sibling group a segment its own group may hold."""
        if outer is None:
            return SegmentView(scope.lookup_function(self.message_wide))
        own, outer_lookup, members = scope.lookups[0], outer.lookup, self.members[group]
        return SegmentView(lambda name: own.get(name) if name in members else (own.get(name) or outer_lookup(name)))

    def scopes(self, name: str) -> list[GroupScope]:
        found = self._scopes.get(name)
        if found is None:
            found = self._scopes[name] = [self._scope(name, segments) for segments in self.by_name[name]]
        return found

    def _scope(self, name: str, segments: list[Segment]) -> GroupScope:
        first = segments[0]
        enclosing = sorted((other for other_name, others in self.by_name.items() if other_name != name
                            for other in others if len(other) > len(segments) and any(s is first for s in other)),
                           key=len)
        return GroupScope(segments, [first_by_name(segments), *map(first_by_name, enclosing)])

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
