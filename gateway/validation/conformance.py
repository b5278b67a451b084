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

Speed: `compile_checks()` turns every rule into two closures once, at load: `rule.visit(run,
node, expr)` finds the element's values in its parent and checks cardinality, and
`rule.check(run, value, type_code, expr)` runs only the checks that rule has (None when it has
none). A rule whose element is absent and that requires nothing when absent is skipped by its parent
without a call. Everything that builds an Issue lives on `ConformanceRun` and runs only on failure.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from .fhirpath import FhirPathError
from .issues import Issue
from .profile import CORE_SD, NOT_SET, CompiledProfile, ElementRule

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

    __slots__ = ("profile", "extensions", "root", "issues", "handled", "context")

    def __init__(self, profile: CompiledProfile, extensions: dict[str, CompiledProfile], root: dict,
                 issues: list[Issue], handled: set[int], context: str | None = None) -> None:
        self.profile = profile
        self.extensions = extensions
        self.root = root
        self.issues = issues
        self.handled = handled
        self.context = context      # "safety-report": rules marked warning-in-context there are warnings

    # ------------------------------------------------------------------ entry points
    def check_resource(self, resource: dict) -> None:
        root = self.profile.root
        if root.check is not None:
            root.check(self, resource, self.profile.type, self.profile.type)

    def check_extension(self, ext: dict, expr: str, parent_path: str) -> None:
        """Check an extension instance against its definition (this run's profile), context first."""
        prof = self.profile
        self.handled.add(id(ext))
        if prof.contexts and parent_path not in prof.contexts:
            self.add("error", "extension", expr,
                     f"Extension {prof.url} is not allowed on {parent_path}; its definition ({prof.label}) "
                     f"allows it on {', '.join(prof.contexts)}")
            return
        if prof.root.check is not None:
            prof.root.check(self, ext, "Extension", expr)

    # ------------------------------------------------------------------ reporting
    def add(self, severity: str, code: str, expression: str | None, diagnostics: str) -> None:
        self.issues.append(Issue(severity, code, diagnostics, expression, self.profile.url))

    def _by(self) -> str:
        return f"profile {self.profile.label}"

    # ------------------------------------------------------------------ failures
    def cardinality(self, rule: ElementRule, values: list[tuple[Any, str, str]], count: int, expr: str) -> None:
        if rule.min and count < rule.min:
            self.missing(rule, f"{expr}.{rule.name}", count)
        if rule.max is not None and count > rule.max:
            self.too_many(rule, values, count)
        if count == 0:
            for piece in rule.slices:
                if piece.rule.min:
                    self.missing(piece.rule, f"{expr}.{rule.name}", 0)

    def missing(self, rule: ElementRule, expr: str, count: int) -> None:
        hint = f"; expected: {rule.short}" if rule.short else ""
        self.add("error", "required", expr,
                 f"{rule.id} is required by {self._by()} (min {rule.min}, found {count}){hint}")

    def too_many(self, rule: ElementRule, values: list[tuple[Any, str, str]], count: int) -> None:
        where = values[rule.max][2] if rule.max is not None and rule.max < len(values) else None
        self.add("error", "structure", where,
                 f"{rule.id} allows at most {rule.max} by {self._by()}, found {count}; remove the extra ones")

    # ------------------------------------------------------------------ slices
    def check_slices(self, rule: ElementRule, values: list[tuple[Any, str, str]], expr: str) -> None:
        pieces = rule.slices
        matched: list[list[tuple[Any, str, str]]] = [[] for _ in pieces]
        unmatched: list[tuple[Any, str, str]] = []
        by_url = rule.slice_by_url
        for entry in values:
            if by_url is not None:
                value = entry[0]
                url = value.get("url") if type(value) is dict else None
                index = by_url.get(url) if type(url) is str else None
                if index is None:
                    unmatched.append(entry)
                else:
                    matched[index].append(entry)
                continue
            for i, piece in enumerate(pieces):
                if piece.matches(entry[0]):
                    matched[i].append(entry)
                    break
            else:
                unmatched.append(entry)
        for piece, entries in zip(pieces, matched):
            prule = piece.rule
            if prule.min and len(entries) < prule.min:
                self.missing(prule, expr, len(entries))
            if prule.max is not None and len(entries) > prule.max:
                self.too_many(prule, entries, len(entries))
            check = prule.check
            if check is not None:
                for value, type_code, vexpr in entries:
                    check(self, value, type_code, vexpr)
        if unmatched and rule.slicing is not None and rule.slicing.rules == "closed":
            names = ", ".join(p.name for p in pieces)
            for value, _, vexpr in unmatched:
                what = f"url {value.get('url')!r}" if type(value) is dict and "url" in value else _show(value, 80)
                self.add("error", "structure", vexpr,
                         f"{rule.id}: {what} matches none of the slices {names} and {self._by()} "
                         f"allows no others (closed slicing)")

    # ------------------------------------------------------------------ bindings
    def check_binding(self, rule: ElementRule, value: Any, type_code: str, expr: str) -> None:
        expansion = rule.expansion
        if expansion is None:           # value set not in profiles/: cannot be checked here
            return
        required = rule.binding.strength == "required"  # type: ignore[union-attr]
        if type_code in _CODE_TYPES:
            if type(value) is str and expansion.contains(None, value) is False:
                self.bad_code(rule, expr, f"code {value!r}", required)
            return
        if type(value) is not dict:
            return
        if type_code == "CodeableConcept":
            codings = value.get("coding")
            first_bad = None
            if type(codings) is list:
                for i, coding in enumerate(codings):
                    if type(coding) is not dict or type(coding.get("code")) is not str:
                        continue
                    if expansion.contains(coding.get("system"), coding["code"]) is not False:
                        return          # in the value set, or cannot tell here
                    if first_bad is None:
                        first_bad = (i, coding)
            if first_bad is None:
                if required:
                    self.bad_code(rule, expr, "no coding", True)
                return
            i, coding = first_bad
            self.bad_code(rule, f"{expr}.coding[{i}].code", f"{coding.get('system')}|{coding['code']}", required)
            return
        if type_code == "Coding" or type_code in _QUANTITY_TYPES:
            code = value.get("code")
            if type(code) is str and expansion.contains(value.get("system"), code) is False:
                self.bad_code(rule, f"{expr}.code", f"{value.get('system')}|{code}", required)

    def not_allowed(self, rule: ElementRule, type_code: str, expr: str) -> None:
        allowed = ", ".join(f"{rule.name}{t[0].upper()}{t[1:]}" for t in sorted(rule.allowed or ()))
        self.add("error", "structure", expr, f"{rule.id}: type {type_code} is not allowed by {self._by()}; use {allowed}")

    def not_fixed(self, rule: ElementRule, value: Any, expr: str) -> None:
        self.add("error", "value", expr,
                 f"{rule.id} must be exactly {_show(rule.fixed)} by {self._by()}, found {_show(value)}")

    def not_pattern(self, rule: ElementRule, value: Any, expr: str) -> None:
        self.add("error", "value", expr,
                 f"{rule.id} must match {_show(rule.pattern)} by {self._by()}, found {_show(value)}")

    def check_constraints(self, rule: ElementRule, value: Any, expr: str) -> None:
        for c in rule.constraints:
            try:
                result = c.invariant(value, self.root)
            except FhirPathError as exc:
                self.add("error", "processing", expr, f"{c.key}: could not be evaluated ({exc}) ({self._by()})")
                continue
            if result != [True]:
                if c.severity != "warning" and self.context is not None and self.context in c.warning_in:
                    self.issues.append(Issue("warning", "invariant", f"{c.key}: {c.human} ({self._by()}; a "
                                             f"warning in a {self.context}, an error elsewhere)", expr,
                                             self.profile.url, self.context))
                    continue
                self.add("warning" if c.severity == "warning" else "error", "invariant", expr,
                         f"{c.key}: {c.human} ({self._by()})")

    def bad_code(self, rule: ElementRule, expr: str, what: str, required: bool) -> None:
        url = rule.binding.value_set if rule.binding else "?"
        expansion = rule.expansion
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
        nested = ConformanceRun(definition, self.extensions, self.root, self.issues, self.handled, self.context)
        nested.check_extension(value, expr, parent_path)


# ---------------------------------------------------------------------- compiled checks
Visit = Callable[[ConformanceRun, dict, str], None]
Check = Callable[[ConformanceRun, Any, str, str], None]


def compile_checks(rule: ElementRule) -> None:
    """Build `rule.visit` and `rule.check` for a rule and everything below it (children first)."""
    for child in rule.children:
        compile_checks(child)
    for piece in rule.slices:
        compile_checks(piece.rule)
    rule.check = _value_check(rule)
    rule.visit = _choice_visit(rule) if rule.choice else _element_visit(rule)


def _children_loop(rule: ElementRule) -> Check | None:
    """Visit the child rules, skipping without a call those that cannot report anything: absent and
    required by nothing, or present with nothing to check on the value (a bare `min 1`)."""
    children = []
    for c in rule.children:
        if c.choice:
            children.append((None, None, False, False, c.visit))
            continue
        absent_ok = bool(c.presence_keys)
        trivial_when_present = c.check is None and not c.slices and c.max is None and (c.min or 0) <= 1
        children.append((c.key, "_" + c.key if c.primitive else None, absent_ok, trivial_when_present, c.visit))
    if not children:
        return None
    plan = tuple(children)

    def check_children(run: ConformanceRun, value: Any, type_code: str, expr: str) -> None:
        if type(value) is dict:
            for key, shadow, absent_ok, trivial_when_present, visit in plan:
                if key is not None:
                    if key in value:
                        if trivial_when_present:
                            continue
                    elif absent_ok and (shadow is None or shadow not in value):
                        continue
                visit(run, value, expr)
    return check_children


def _code_binding(rule: ElementRule) -> Check | None:
    """A required/extensible binding on a code element with an enumerated value set: a set lookup."""
    exp = rule.expansion
    if exp is None or not all(t in _CODE_TYPES for t in rule.types):
        return None
    codes = exp.enumerated_codes()
    if codes is None:                               # not fully enumerated: use the general check
        return None
    required = rule.binding.strength == "required"  # type: ignore[union-attr]

    def code_binding(run: ConformanceRun, value: Any, type_code: str, expr: str) -> None:
        if type(value) is str and value not in codes:
            run.bad_code(rule, expr, f"code {value!r}", required)
    return code_binding


def _value_check(rule: ElementRule) -> Check | None:
    allowed = rule.allowed
    has_fixed = rule.fixed is not NOT_SET
    fixed = rule.fixed
    pattern_fn = rule.pattern_fn
    binding: Check | None = None
    if rule.binding is not None and rule.expansion is not None:
        binding = _code_binding(rule) or (lambda run, value, type_code, expr:
                                          run.check_binding(rule, value, type_code, expr))
    targets = rule.targets
    type_profiles = rule.type_profiles
    constraints = bool(rule.constraints)
    children = _children_loop(rule)
    if not (allowed is not None or has_fixed or pattern_fn or binding or targets or type_profiles or constraints):
        return children
    if binding is not None and children is None and not (
            allowed is not None or has_fixed or pattern_fn or targets or type_profiles or constraints):
        return binding

    def check(run: ConformanceRun, value: Any, type_code: str, expr: str) -> None:
        if allowed is not None and type_code not in allowed:
            run.not_allowed(rule, type_code, expr)
            return
        if has_fixed and value != fixed:
            run.not_fixed(rule, value, expr)
        if pattern_fn is not None and not pattern_fn(value):
            run.not_pattern(rule, value, expr)
        if binding is not None:
            binding(run, value, type_code, expr)
        if type(value) is dict:
            if targets:
                run.check_reference(rule, value, expr)
            if type_profiles:
                run.check_typed_extension(rule, value, expr)
        if constraints:
            run.check_constraints(rule, value, expr)
        if children is not None:
            children(run, value, type_code, expr)
    return check


def _element_visit(rule: ElementRule) -> Visit:
    key, type_code, name = rule.key, rule.type_code, rule.name
    shadow_key = "_" + key if rule.primitive else None
    min_, max_ = rule.min or 0, rule.max
    needed_when_absent = bool(min_) or any(piece.rule.min for piece in rule.slices)
    sliced = bool(rule.slices)
    check = rule.check

    def visit(run: ConformanceRun, node: dict, expr: str) -> None:
        v = node.get(key)
        if v is None:
            if needed_when_absent:
                shadow = node.get(shadow_key) if shadow_key else None
                count = 0 if shadow is None else (len(shadow) if type(shadow) is list else 1)
                run.cardinality(rule, [], count, expr)
            return
        base = expr + "." + name
        if type(v) is not list:
            if max_ == 0:
                run.too_many(rule, [(v, type_code, base)], 1)
            if check is not None:
                check(run, v, type_code, base)
            if sliced:
                run.check_slices(rule, [(v, type_code, base)], base)
            return
        if not sliced and check is None and max_ is None and len(v) >= min_:
            return
        values = [(item, type_code, f"{base}[{i}]") for i, item in enumerate(v) if item is not None]
        if len(values) < min_ or (max_ is not None and len(values) > max_) or not values:
            run.cardinality(rule, values, len(values), expr)
        if check is not None:
            for item, _, item_expr in values:
                check(run, item, type_code, item_expr)
        if sliced and values:
            run.check_slices(rule, values, base)
    return visit


def _choice_visit(rule: ElementRule) -> Visit:
    variants = rule.variant_map             # a node has a handful of keys; a choice up to 50 variants
    name = rule.name
    min_, max_ = rule.min or 0, rule.max
    check = rule.check

    def visit(run: ConformanceRun, node: dict, expr: str) -> None:
        base = expr + "." + name
        values = [(node[k], variants[k], base) for k in node if k in variants]
        if len(values) < min_ or (max_ is not None and len(values) > max_):
            run.cardinality(rule, values, len(values), expr)
        if check is not None:
            for value, type_code, value_expr in values:
                check(run, value, type_code, value_expr)
    return visit
