"""Compiling a StructureDefinition's differential into a tree of element rules, once, at load.

A differential is a flat list of ElementDefinitions identified by `id`:

    MedicationRequest.identifier                 slicing: pattern on `type`
    MedicationRequest.identifier:placer          1..1
    MedicationRequest.identifier:placer.type     patternCodeableConcept PLAC
    MedicationRequest.dosageInstruction.timing.repeat.periodUnit   binding required units-of-time

`compile_profile()` turns it into a tree that mirrors the resource: each `ElementRule` knows the
JSON keys its element can appear under (all `value[x]` variants for a choice), the cardinality the
profile sets, type restrictions, fixed/pattern values, the binding, compiled FHIRPath invariants,
its child rules, and its slices, each with a matcher built from the slicing discriminators.
Elements the differential only passes through (`dosageInstruction`, `timing`, `repeat` above)
become plain navigation nodes. Base R4 cardinality is not repeated here: the structure backend
checks it. A slice child that only restates the slice's discriminating value
(`identifier:placer.type` = PLAC) is dropped after compilation: the slice match already proved it.
`conformance.py` turns the tree into closures and walks resources with them.

Supported: discriminator types `value`, `pattern` and `exists` (paths of plain element names or
`$this`); extensions sliced by `url`, implicitly or explicitly; `type.profile` on Extension
elements; `type.targetProfile` on Reference elements. Anything else is a `ProfileError` at load
time rather than a silent pass at validation time.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .fhirpath import Invariant, compile_invariant
from .model import PRIMITIVE_TYPES, R4Model

CORE_SD = "http://hl7.org/fhir/StructureDefinition/"


class ProfileError(ValueError):
    """A StructureDefinition the validator cannot compile (a bug in `profiles/`, found at load)."""


class _NotSet:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_SET"


NOT_SET: Any = _NotSet()


@dataclass(frozen=True, slots=True)
class Binding:
    strength: str
    value_set: str


@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    severity: str
    human: str
    invariant: Invariant
    # contexts in which a failure is a warning, not an error (extension WARNING_IN_CONTEXT_URL)
    warning_in: frozenset[str] = frozenset()


@dataclass(slots=True, eq=False)
class ElementRule:
    """What a profile says about one element (or one slice of it)."""

    id: str
    path: str
    name: str                                  # `medication` for medication[x]
    choice: bool
    variants: tuple[tuple[str, str], ...]      # (json key, type code) as in the base model
    primitive: bool
    short: str = ""
    min: int | None = None                     # None: the profile does not change it
    max: int | None = None                     # None: unbounded or unchanged
    allowed: frozenset[str] | None = None      # type restriction on a choice element
    targets: frozenset[str] | None = None      # Reference target resource types
    target_profiles: tuple[str, ...] = ()      # as written, for diagnostics
    type_profiles: tuple[str, ...] = ()        # Extension definitions for an extension element
    fixed: Any = NOT_SET
    pattern: Any = NOT_SET
    binding: Binding | None = None
    expansion: Any = None                      # the bound value set, resolved by the registry
    constraints: list[Constraint] = field(default_factory=list)
    children: list["ElementRule"] = field(default_factory=list)
    slicing: "Slicing | None" = None
    slices: list["Slice"] = field(default_factory=list)
    slice_by_url: dict[str, int] | None = None  # extension slicing: url -> slice index, one lookup per value
    # Set by _finish(): the compiled pattern, json keys, and when the walk may skip the rule.
    pattern_fn: Callable[[Any], bool] | None = None
    variant_map: dict[str, str] = field(default_factory=dict)   # json key -> type code (choice elements)
    presence_keys: tuple[str, ...] = ()    # keys whose absence lets the walk skip this rule entirely
    key: str = ""                          # the json key of a non-choice element
    type_code: str = ""                    # its type
    # Built by conformance.compile_checks() once the registry has resolved the value sets.
    visit: Callable[..., None] | None = field(default=None, repr=False)
    check: Callable[..., None] | None = field(default=None, repr=False)

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.variants if self.allowed is None or t in self.allowed)

    def child(self, name: str) -> "ElementRule | None":
        for c in self.children:
            if c.name == name:
                return c
        return None


@dataclass(frozen=True, slots=True)
class Slicing:
    discriminators: tuple[tuple[str, str], ...]
    rules: str
    ordered: bool


@dataclass(slots=True, eq=False)
class Slice:
    name: str
    rule: ElementRule
    matches: Callable[[Any], bool] = field(default=lambda value: False)
    url: str | None = None      # set when the slice is told apart by `url` alone (extensions)


@dataclass(slots=True, eq=False)
class CompiledProfile:
    """A StructureDefinition ready to check instances: its identity and its rule tree."""

    url: str
    version: str | None
    id: str
    name: str
    type: str
    kind: str
    root: ElementRule
    contexts: tuple[str, ...] = ()             # extension contexts (element paths)
    definition: dict = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return self.id or self.name


# On an ElementDefinition.constraint: in this context (valueCode, e.g. "safety-report") a failure
# of the rule is reported as a warning, the resource is stored and flagged (profiles/README "Context").
WARNING_IN_CONTEXT_URL = "https://lecheng-fhir-gateway.org/fhir/StructureDefinition/warning-in-context"


def warning_contexts(constraint: dict) -> frozenset[str]:
    """The contexts a profile rule names as warning-only, from its ``warning-in-context`` extensions."""
    return frozenset(ext["valueCode"] for ext in constraint.get("extension", [])
                     if isinstance(ext, dict) and ext.get("url") == WARNING_IN_CONTEXT_URL
                     and isinstance(ext.get("valueCode"), str))


def _split_id(element_id: str) -> list[tuple[str, str | None]]:
    """`MedicationRequest.identifier:placer.type` -> [(MedicationRequest, None), (identifier, placer), (type, None)]."""
    parts: list[tuple[str, str | None]] = []
    for segment in element_id.split("."):
        name, _, slice_name = segment.partition(":")
        parts.append((name, slice_name or None))
    return parts


def _value_with_prefix(element: dict, prefix: str) -> Any:
    for key, value in element.items():
        if key.startswith(prefix) and key[len(prefix):][:1].isupper():
            return value
    return NOT_SET


def _target_type(canonical: str, resolve_type: Callable[[str], str | None]) -> str:
    base = canonical.split("|", 1)[0]
    if base.startswith(CORE_SD):
        return base[len(CORE_SD):]
    found = resolve_type(base)
    if found is None:
        raise ProfileError(f"targetProfile {canonical} is neither a core resource nor a known profile")
    return found


class _Builder:
    def __init__(self, sd: dict, model: R4Model, resolve_type: Callable[[str], str | None]) -> None:
        self.sd = sd
        self.model = model
        self.resolve_type = resolve_type
        self.url = sd.get("url", "?")

    def fail(self, element_id: str, message: str) -> ProfileError:
        return ProfileError(f"{self.url} element {element_id}: {message}")

    def new_child(self, parent: ElementRule, name: str, element_id: str) -> ElementRule:
        is_choice = name.endswith("[x]")
        bare = name[:-3] if is_choice else name
        variants: list[tuple[str, str]] = []
        path = f"{parent.path}.{name}"
        for t in parent.types:
            found = self.model.child(t, bare)
            if found is None or found.choice != is_choice:
                continue
            for v in found.variants:
                if v not in variants:
                    variants.append(v)
        if not variants:
            raise self.fail(element_id, f"{path} is not an element of {' | '.join(parent.types)} in FHIR R4")
        primitive = all(t in PRIMITIVE_TYPES for _, t in variants)
        rule = ElementRule(id=f"{parent.id}.{name}", path=path, name=bare, choice=is_choice,
                           variants=tuple(variants), primitive=primitive)
        parent.children.append(rule)
        return rule

    def new_slice(self, base: ElementRule, slice_name: str) -> ElementRule:
        rule = ElementRule(id=f"{base.id}:{slice_name}", path=base.path, name=base.name, choice=base.choice,
                           variants=base.variants, primitive=base.primitive)
        base.slices.append(Slice(slice_name, rule))
        return rule

    def locate(self, root: ElementRule, element: dict) -> ElementRule:
        element_id = element.get("id") or element["path"] + (f":{element['sliceName']}" if element.get("sliceName") else "")
        parts = _split_id(element_id)
        if parts[0][0] != root.name or parts[0][1]:
            raise self.fail(element_id, f"does not start with {root.name}")
        rule = root
        for name, slice_name in parts[1:]:
            bare = name[:-3] if name.endswith("[x]") else name
            child = rule.child(bare)
            if child is None or child.choice != name.endswith("[x]"):
                child = self.new_child(rule, name, element_id)
            rule = child
            if slice_name:
                if rule.choice:
                    raise self.fail(element_id, "type slices on a choice element are not supported; "
                                                "restrict the element's type instead")
                found = next((s.rule for s in rule.slices if s.name == slice_name), None)
                rule = found or self.new_slice(rule, slice_name)
        return rule

    def apply(self, rule: ElementRule, element: dict, resource_type: str) -> None:
        element_id = rule.id
        rule.short = element.get("short", rule.short)
        if "min" in element:
            rule.min = int(element["min"])
        if "max" in element:
            rule.max = None if element["max"] == "*" else int(element["max"])
        if element.get("type"):
            self.apply_types(rule, element["type"], element_id)
        fixed = _value_with_prefix(element, "fixed")
        if fixed is not NOT_SET:
            rule.fixed = fixed
        pattern = _value_with_prefix(element, "pattern")
        if pattern is not NOT_SET:
            rule.pattern = pattern
        binding = element.get("binding")
        if binding and binding.get("valueSet") and binding.get("strength") in ("required", "extensible"):
            rule.binding = Binding(binding["strength"], binding["valueSet"])
        for c in element.get("constraint", []):
            try:
                invariant = compile_invariant(c["expression"], frozenset(rule.types),
                                              resource_type=resource_type, model=self.model)
            except Exception as exc:   # a syntax error in a profile is a load-time failure
                raise self.fail(element_id, f"constraint {c.get('key')}: {exc}") from exc
            rule.constraints.append(Constraint(c["key"], c.get("severity", "error"), c.get("human", ""), invariant,
                                               warning_contexts(c)))
        if "slicing" in element:
            s = element["slicing"]
            discriminators = tuple((d["type"], d["path"]) for d in s.get("discriminator", []))
            for kind, _ in discriminators:
                if kind not in ("value", "pattern", "exists"):
                    raise self.fail(element_id, f"discriminator type {kind!r} is not supported")
            rule.slicing = Slicing(discriminators, s.get("rules", "open"), bool(s.get("ordered", False)))

    def apply_types(self, rule: ElementRule, types: list[dict], element_id: str) -> None:
        base_types = {t for _, t in rule.variants}
        codes = [t["code"] for t in types]
        for code in codes:
            if code not in base_types and not (code == "SimpleQuantity" and "Quantity" in base_types):
                raise self.fail(element_id, f"type {code} is not allowed by the base element ({', '.join(sorted(base_types))})")
        if rule.choice:
            rule.allowed = frozenset("Quantity" if c == "SimpleQuantity" else c for c in codes)
        targets: list[str] = []
        profiles: list[str] = []
        for t in types:
            targets.extend(t.get("targetProfile", []))
            profiles.extend(t.get("profile", []))
        if targets:
            rule.target_profiles = tuple(targets)
            rule.targets = frozenset(_target_type(t, self.resolve_type) for t in targets)
        if profiles and codes == ["Extension"]:
            rule.type_profiles = tuple(p.split("|", 1)[0] for p in profiles)


def _descendant(rule: ElementRule, path: str) -> ElementRule | None:
    if path == "$this":
        return rule
    for name in path.split("."):
        found = rule.child(name)
        if found is None:
            return None
        rule = found
    return rule


def values_at(value: Any, path: str) -> list:
    """Values at a simple dotted path inside an instance value (lists flattened)."""
    if path == "$this":
        return [value]
    current = [value]
    for name in path.split("."):
        nxt: list = []
        for item in current:
            if type(item) is dict and name in item:
                v = item[name]
                if type(v) is list:
                    nxt.extend(v)
                else:
                    nxt.append(v)
        current = nxt
    return current


def compile_pattern(pattern: Any) -> Callable[[Any], bool]:
    """FHIR pattern[x] semantics as a closure built once: everything in the pattern is present in the
    value, arrays by inclusion (each pattern item matched by some value item)."""
    if type(pattern) is dict:
        parts = [(k, compile_pattern(v)) for k, v in pattern.items()]
        if len(parts) == 1:
            (k1, f1), = parts
            return lambda v: type(v) is dict and k1 in v and f1(v[k1])
        if len(parts) == 2:
            (k1, f1), (k2, f2) = parts
            return lambda v: type(v) is dict and k1 in v and k2 in v and f1(v[k1]) and f2(v[k2])
        return lambda v: type(v) is dict and all(k in v and f(v[k]) for k, f in parts)
    if type(pattern) is list:
        item_tests = [compile_pattern(p) for p in pattern]

        def match_list(v: Any) -> bool:
            items = v if type(v) is list else (v,)
            for test in item_tests:
                for x in items:
                    if test(x):
                        break
                else:
                    return False
            return True
        return match_list
    if type(pattern) is bool:
        return lambda v: v is pattern
    if type(pattern) is str:
        return lambda v: v == pattern
    return lambda v: type(v) is not bool and v == pattern


def _matcher(base: ElementRule, piece: Slice, url: str) -> Callable[[Any], bool]:
    slicing = base.slicing
    assert slicing is not None
    tests: list[Callable[[Any], bool]] = []
    for kind, path in slicing.discriminators:
        target = _descendant(piece.rule, path)
        if kind == "exists":
            if target is None or (not target.min and target.max != 0):
                raise ProfileError(f"{url} slice {piece.rule.id}: an exists discriminator on {path} needs min 1 or max 0 there")
            want = bool(target.min)
            tests.append(lambda v, p=path, w=want: bool(values_at(v, p)) == w)
            continue
        if path == "url" and base.name == "extension" and piece.rule.type_profiles and (
                target is None or target.fixed is NOT_SET):
            ext_url = piece.rule.type_profiles[0]
            piece.url = ext_url
            tests.append(lambda v, u=ext_url: type(v) is dict and v.get("url") == u)
            continue
        if path == "url" and target is not None and type(target.fixed) is str:
            piece.url = target.fixed
        if target is None:
            raise ProfileError(f"{url} slice {piece.rule.id}: discriminator path {path} has no element in the slice")
        if target.fixed is not NOT_SET:
            expected = target.fixed
            if "." not in path and path != "$this" and type(expected) is str:
                tests.append(lambda v, k=path, e=expected: type(v) is dict and v.get(k) == e)
            else:
                tests.append(lambda v, p=path, e=expected: any(x == e for x in values_at(v, p)))
        elif target.pattern is not NOT_SET:
            test = compile_pattern(target.pattern)
            if "." not in path and path != "$this":
                tests.append(lambda v, k=path, t=test: type(v) is dict and k in v and
                             (any(t(x) for x in v[k]) if type(v[k]) is list else t(v[k])))
            else:
                tests.append(lambda v, p=path, t=test: any(t(x) for x in values_at(v, p)))
        else:
            raise ProfileError(f"{url} slice {piece.rule.id}: discriminator element {path} has no fixed or pattern value")
    if len(tests) == 1:
        return tests[0]
    return lambda v: all(t(v) for t in tests)


def _finish(rule: ElementRule, url: str) -> None:
    if rule.pattern is not NOT_SET:
        rule.pattern_fn = compile_pattern(rule.pattern)
    rule.variant_map = dict(rule.variants)
    rule.key, rule.type_code = rule.variants[0]
    needed_when_absent = bool(rule.min) or any(piece.rule.min for piece in rule.slices)
    if not rule.choice and not needed_when_absent:
        key = rule.variants[0][0]
        rule.presence_keys = (key, "_" + key) if rule.primitive else (key,)
    if rule.slices and rule.slicing is None:
        if rule.name != "extension" and rule.name != "modifierExtension":
            raise ProfileError(f"{url} element {rule.id}: slices without a slicing definition")
        rule.slicing = Slicing((("value", "url"),), "open", False)
    for piece in rule.slices:
        _finish(piece.rule, url)
        piece.matches = _matcher(rule, piece, url)
        _drop_proven(piece.rule, rule.slicing.discriminators if rule.slicing else ())
    if rule.slicing and rule.slicing.discriminators == (("value", "url"),) and rule.slices and \
            all(p.url is not None for p in rule.slices):
        rule.slice_by_url = {}
        for i, piece in enumerate(rule.slices):
            rule.slice_by_url.setdefault(piece.url, i)  # type: ignore[arg-type]
    for child in rule.children:
        _finish(child, url)


def _only_fixes_a_value(rule: ElementRule) -> bool:
    """True when all a rule says is "present once, with this fixed/pattern value"."""
    return ((rule.fixed is not NOT_SET or rule.pattern is not NOT_SET) and (rule.min or 0) <= 1
            and rule.max is None and rule.allowed is None and not rule.targets and not rule.type_profiles
            and rule.binding is None and not rule.constraints and not rule.children and not rule.slices)


def _drop_proven(slice_rule: ElementRule, discriminators: tuple[tuple[str, str], ...]) -> None:
    """A value only reaches a slice's rules after its discriminators matched: a child that merely
    restates the discriminating value (identifier:placer.type = PLAC, extension:kind.url = kind) has
    been proven already and need not be walked again."""
    for kind, path in discriminators:
        if kind in ("value", "pattern") and "." not in path and path != "$this":
            child = slice_rule.child(path)
            if child is not None and _only_fixes_a_value(child):
                slice_rule.children.remove(child)


def compile_profile(sd: dict, model: R4Model, resolve_type: Callable[[str], str | None]) -> CompiledProfile:
    """Compile one StructureDefinition (a resource or Extension constraint with a differential)."""
    url = sd.get("url")
    if not url:
        raise ProfileError("StructureDefinition without url")
    if sd.get("derivation") != "constraint":
        raise ProfileError(f"{url}: only constraint profiles are supported (derivation {sd.get('derivation')!r})")
    root_type = sd["type"]
    if not model.is_known_type(root_type):
        raise ProfileError(f"{url}: {root_type} is not an R4 type")
    root = ElementRule(id=root_type, path=root_type, name=root_type, choice=False,
                       variants=((root_type, root_type),), primitive=False)
    builder = _Builder(sd, model, resolve_type)
    resource_type = root_type if model.is_resource(root_type) else None
    for element in sd.get("differential", {}).get("element", []):
        rule = builder.locate(root, element)
        builder.apply(rule, element, resource_type or "Resource")
    _finish(root, url)
    if root_type == "Extension":
        # an instance is only checked against this definition because its url is this url
        url_rule = root.child("url")
        if url_rule is not None and _only_fixes_a_value(url_rule) and url_rule.fixed == url:
            root.children.remove(url_rule)
    contexts = tuple(c["expression"] for c in sd.get("context", []) if c.get("type") == "element")
    return CompiledProfile(url=url, version=sd.get("version"), id=sd.get("id", ""), name=sd.get("name", ""),
                           type=root_type, kind=sd.get("kind", ""), root=root, contexts=contexts, definition=sd)


def differential_paths(sd: dict) -> Iterable[tuple[str, dict[str, tuple[str, ...]]]]:
    """Each differential element path with the choice restrictions in force, for existence checks."""
    narrowed: dict[str, tuple[str, ...]] = {}
    for element in sd.get("differential", {}).get("element", []):
        path = element["path"]
        if path.endswith("[x]") and element.get("type"):
            narrowed[path] = tuple(t["code"] for t in element["type"])
        yield path, dict(narrowed)
