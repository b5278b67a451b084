"""Walking a resource (plain JSON dicts) against a compiled profile and reporting what does not conform.

The walk follows the rule tree from `profile.py`, not the resource: only elements a profile talks
about are visited, so a large resource costs little more than a small one. At each element:

1. gather its values (every `value[x]` variant for a choice; `_status`-only primitives count as
   present for cardinality), each with its FHIRPath (`MedicationRequest.identifier[1]`);
2. cardinality against the profile's min/max;
3. per value: allowed types, Reference targets, fixed and pattern values, the binding, the
   Extension definition for extension elements, FHIRPath invariants, then the child rules;
4. slices: each value goes to the first slice whose discriminators match; slice cardinality and
   the slice's own rules apply to its values; `closed` slicing rejects values no slice takes.

Wrong JSON types (a number where a code belongs) are the structure backend's to report; the walk
skips what it cannot read instead of failing twice.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

from .fhirpath import FhirPathError
from .issues import Issue
from .profile import CORE_SD, NOT_SET, CompiledProfile, ElementRule
from .terminology import Terminology

_REFERENCE = re.compile(r"^(?:https?://\S+/)?([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_QUANTITY_TYPES = frozenset({"Quantity", "SimpleQuantity", "Age", "Count", "Distance", "Duration", "MoneyQuantity"})
_CODE_TYPES = frozenset({"code", "string", "uri"})
_MAX_LISTED_CODES = 12


def _show(value: Any, limit: int = 160) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ConformanceRun:
    """One resource against one profile; collects issues. Extension definitions run nested."""

    __slots__ = ("profile", "terminology", "extensions", "root", "issues", "handled")

    def __init__(self, profile: CompiledProfile, terminology: Terminology,
                 extensions: dict[str, CompiledProfile], root: dict, issues: list[Issue],
                 handled: set[int]) -> None:
        self.profile = profile
        self.terminology = terminology
        self.extensions = extensions
        self.root = root
        self.issues = issues
        self.handled = handled

    # ------------------------------------------------------------------ entry points
    def check_resource(self, resource: dict) -> None:
        self.check_value(self.profile.root, resource, self.profile.type, self.profile.type)

    def check_extension(self, ext: dict, expr: str, parent_path: str) -> None:
        """Check an extension instance against its definition (this run's profile), context first."""
        prof = self.profile
        self.handled.add(id(ext))
        if prof.contexts and parent_path not in prof.contexts:
            self.add("error", "extension", expr,
                     f"Extension {prof.url} is not allowed on {parent_path}; its definition ({prof.label}) "
                     f"allows it on {', '.join(prof.contexts)}")
            return
        self.check_value(prof.root, ext, "Extension", expr)

    # ------------------------------------------------------------------ reporting
    def add(self, severity: str, code: str, expression: str | None, diagnostics: str) -> None:
        self.issues.append(Issue(severity, code, diagnostics, expression, self.profile.url))

    def _by(self) -> str:
        return f"profile {self.profile.label}"

    # ------------------------------------------------------------------ the walk
    def check_children(self, rule: ElementRule, node: dict, expr: str) -> None:
        for child in rule.children:
            self.check_element(child, node, expr)

    def check_element(self, rule: ElementRule, node: dict, expr: str) -> None:
        if rule.choice:
            self._check_choice(rule, node, expr)
            return
        v = node.get(rule.key)
        if v is None:
            count = 0
            if rule.primitive:
                shadow = node.get("_" + rule.key)
                if shadow is not None:
                    count = len(shadow) if type(shadow) is list else 1
            self._cardinality(rule, [], count, expr)
            return
        base_expr = expr + "." + rule.name
        if type(v) is not list:
            if rule.max == 0:
                self._too_many(rule, [(v, rule.type_code, base_expr)], 1)
            if rule.checks_values:
                self.check_value(rule, v, rule.type_code, base_expr)
            if rule.slices:
                self.check_slices(rule, [(v, rule.type_code, base_expr)], base_expr)
            return
        type_code = rule.type_code
        values = [(item, type_code, f"{base_expr}[{i}]") for i, item in enumerate(v) if item is not None]
        self._cardinality(rule, values, len(values), expr)
        if rule.checks_values:
            for value, _, vexpr in values:
                self.check_value(rule, value, type_code, vexpr)
        if rule.slices and values:
            self.check_slices(rule, values, base_expr)

    def _check_choice(self, rule: ElementRule, node: dict, expr: str) -> None:
        # a node has a handful of keys; a choice element up to 50 variants
        vmap = rule.variant_map
        base_expr = expr + "." + rule.name
        values = [(node[k], vmap[k], base_expr) for k in node if k in vmap]
        self._cardinality(rule, values, len(values), expr)
        if rule.checks_values:
            for value, type_code, vexpr in values:
                self.check_value(rule, value, type_code, vexpr)

    def _cardinality(self, rule: ElementRule, values: list[tuple[Any, str, str]], count: int, expr: str) -> None:
        if rule.min and count < rule.min:
            self._missing(rule, f"{expr}.{rule.name}", count)
        if rule.max is not None and count > rule.max:
            self._too_many(rule, values, count)
        if count == 0:
            for piece in rule.slices:
                if piece.rule.min:
                    self._missing(piece.rule, f"{expr}.{rule.name}", 0)

    def _missing(self, rule: ElementRule, expr: str, count: int) -> None:
        hint = f"; expected: {rule.short}" if rule.short else ""
        self.add("error", "required", expr,
                 f"{rule.id} is required by {self._by()} (min {rule.min}, found {count}){hint}")

    def _too_many(self, rule: ElementRule, values: list[tuple[Any, str, str]], count: int) -> None:
        where = values[rule.max][2] if rule.max is not None and rule.max < len(values) else None
        self.add("error", "structure", where,
                 f"{rule.id} allows at most {rule.max} by {self._by()}, found {count}; remove the extra ones")

    def check_value(self, rule: ElementRule, value: Any, type_code: str, expr: str) -> None:
        if rule.allowed is not None and type_code not in rule.allowed:
            allowed = ", ".join(f"{rule.name}{t[0].upper()}{t[1:]}" for t in sorted(rule.allowed))
            self.add("error", "structure", expr,
                     f"{rule.id}: type {type_code} is not allowed by {self._by()}; use {allowed}")
            return
        if rule.fixed is not NOT_SET and value != rule.fixed:
            self.add("error", "value", expr,
                     f"{rule.id} must be exactly {_show(rule.fixed)} by {self._by()}, found {_show(value)}")
        if rule.pattern_fn is not None and not rule.pattern_fn(value):
            self.add("error", "value", expr,
                     f"{rule.id} must match {_show(rule.pattern)} by {self._by()}, found {_show(value)}")
        if rule.binding is not None:
            self.check_binding(rule, value, type_code, expr)
        if rule.targets and type(value) is dict:
            self.check_reference(rule, value, expr)
        if rule.type_profiles and type(value) is dict:
            self.check_typed_extension(rule, value, expr)
        for c in rule.constraints:
            try:
                result = c.invariant(value, self.root)
            except FhirPathError as exc:
                self.add("error", "processing", expr, f"{c.key}: could not be evaluated ({exc}) ({self._by()})")
                continue
            if result != [True]:
                severity = "warning" if c.severity == "warning" else "error"
                self.add(severity, "invariant", expr, f"{c.key}: {c.human} ({self._by()})")
        if rule.children and type(value) is dict:
            for child in rule.children:
                keys = child.presence_keys
                if keys and keys[0] not in value and (len(keys) == 1 or keys[1] not in value):
                    continue        # absent, and nothing about it applies when absent
                self.check_element(child, value, expr)

    # ------------------------------------------------------------------ slices
    def check_slices(self, rule: ElementRule, values: list[tuple[Any, str, str]], expr: str) -> None:
        pieces = rule.slices
        matched: list[list[tuple[Any, str, str]]] = [[] for _ in pieces]
        unmatched: list[tuple[Any, str, str]] = []
        for entry in values:
            for i, piece in enumerate(pieces):
                if piece.matches(entry[0]):
                    matched[i].append(entry)
                    break
            else:
                unmatched.append(entry)
        for piece, entries in zip(pieces, matched):
            prule = piece.rule
            if prule.min and len(entries) < prule.min:
                self._missing(prule, expr, len(entries))
            if prule.max is not None and len(entries) > prule.max:
                self._too_many(prule, entries, len(entries))
            if prule.checks_values:
                for value, type_code, vexpr in entries:
                    self.check_value(prule, value, type_code, vexpr)
        assert rule.slicing is not None
        if rule.slicing.rules == "closed":
            names = ", ".join(p.name for p in pieces)
            for value, _, vexpr in unmatched:
                what = f"url {value.get('url')!r}" if type(value) is dict and "url" in value else _show(value, 80)
                self.add("error", "structure", vexpr,
                         f"{rule.id}: {what} matches none of the slices {names} and {self._by()} "
                         f"allows no others (closed slicing)")

    # ------------------------------------------------------------------ bindings
    def check_binding(self, rule: ElementRule, value: Any, type_code: str, expr: str) -> None:
        binding = rule.binding
        assert binding is not None
        url = binding.value_set
        required = binding.strength == "required"
        if type_code in _CODE_TYPES:
            if type(value) is not str:
                return
            if self.terminology.contains(url, None, value) is False:
                self._bad_code(rule, expr, f"code {value!r}", required)
            return
        if type(value) is not dict:
            return
        if type_code == "Coding" or type_code in _QUANTITY_TYPES:
            code = value.get("code")
            if type(code) is not str:
                return
            if self.terminology.contains(url, value.get("system"), code) is False:
                self._bad_code(rule, f"{expr}.code", f"{value.get('system')}|{code}", required)
            return
        if type_code == "CodeableConcept":
            codings = value.get("coding")
            codings = codings if type(codings) is list else []
            first_bad = None
            for i, coding in enumerate(codings):
                if type(coding) is not dict or type(coding.get("code")) is not str:
                    continue
                verdict = self.terminology.contains(url, coding.get("system"), coding["code"])
                if verdict is not False:
                    return          # in the value set, or cannot tell here
                if first_bad is None:
                    first_bad = (i, coding)
            if first_bad is None:
                if required:
                    self._bad_code(rule, expr, "no coding", True)
                return
            i, coding = first_bad
            self._bad_code(rule, f"{expr}.coding[{i}].code", f"{coding.get('system')}|{coding['code']}", required)

    def _bad_code(self, rule: ElementRule, expr: str, what: str, required: bool) -> None:
        url = rule.binding.value_set if rule.binding else "?"
        expansion = self.terminology.expansion(url)
        codes = sorted(expansion.listed_codes()) if expansion else []
        choices = ""
        if codes and len(codes) <= _MAX_LISTED_CODES:
            choices = "; use one of: " + ", ".join(codes)
        elif codes:
            choices = "; e.g. " + ", ".join(codes[:_MAX_LISTED_CODES]) + ", ..."
        if required:
            self.add("error", "code-invalid", expr,
                     f"{rule.id}: {what} is not in value set {url}, which {self._by()} requires{choices}")
        else:
            self.add("warning", "code-invalid", expr,
                     f"{rule.id}: {what} is not in value set {url} (extensible binding in {self._by()}); "
                     f"use a code from it when one fits{choices}")

    # ------------------------------------------------------------------ references and extensions
    def check_reference(self, rule: ElementRule, value: dict, expr: str) -> None:
        """The target type from `Type/id` (relative or absolute), `#contained`, or Reference.type;
        a reference that names no type cannot be judged and is let through."""
        targets = rule.targets or frozenset()
        ref = value.get("reference")
        found: str | None = None
        where = f"{expr}.reference"
        if type(ref) is str:
            if ref.startswith("#"):
                for res in self.root.get("contained") or []:
                    if type(res) is dict and res.get("id") == ref[1:]:
                        found = res.get("resourceType")
            else:
                # urn:uuid:, urn:oid:, and the mapping engine's not-yet-resolved `patient#1` keys name no type
                m = _REFERENCE.match(ref)
                if m:
                    found = m.group(1)
        declared = value.get("type")
        if found is None and type(declared) is str:
            found = declared[len(CORE_SD):] if declared.startswith(CORE_SD) else declared
            where = f"{expr}.type"
        if found is not None and found not in targets:
            self.add("error", "structure", where,
                     f"{rule.id}: the reference points to a {found}, but {self._by()} allows only "
                     f"{' or '.join(sorted(targets))}")

    def check_typed_extension(self, rule: ElementRule, value: dict, expr: str) -> None:
        url = value.get("url")
        if url not in rule.type_profiles:
            return
        definition = self.extensions.get(url)
        if definition is None:
            return
        parent_path = rule.path.rsplit(".", 1)[0]
        nested = ConformanceRun(definition, self.terminology, self.extensions, self.root, self.issues, self.handled)
        nested.check_extension(value, expr, parent_path)
