"""The FHIR R4 (4.0.1) element model: which elements a type has and what type each one is.

A profile's differential names elements by path (`MedicationRequest.dosageInstruction.route`),
a FHIRPath invariant names them relative to a context, and neither says what the JSON keys are.
Three FHIR rules decide that, and this module knows them:

- **Choice elements** are written `value[x]` in a definition and `valueCoding`, `valueDate`, ...
  in an instance: the element name plus the type name with its first letter in upper case.
- **Backbone elements** (`MedicationRequest.dispenseRequest`) have no type of their own; their
  children are listed under the full path. Some reuse another element's definition
  (`Bundle.entry.link` is defined as `Bundle.link`).
- **Inheritance**: every element has `id` and `extension` (from Element), backbone elements have
  `modifierExtension`, resources have `id`, `meta`, ... (from Resource/DomainResource), and
  SimpleQuantity is a Quantity.

The tables come from fhirpathpy's R4 model (generated from the official R4 definitions), so there is
one source of truth for the profile compiler, the FHIRPath fast path and the profile tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from fhirpathpy.models import models as _fhirpath_models

PRIMITIVE_TYPES = frozenset({
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant",
    "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt", "uri", "url",
    "uuid", "xhtml",
})

# FHIRPath system types the model uses for a few elements (Element.id, Extension.url, ...).
_SYSTEM_TYPES = {"System.String": "string", "System.Boolean": "boolean", "System.Integer": "integer",
                 "System.Decimal": "decimal", "System.Date": "date", "System.DateTime": "dateTime",
                 "System.Time": "time"}


def type_suffix(type_code: str) -> str:
    """The JSON key suffix for a choice type: `dateTime` -> `DateTime`, `CodeableConcept` unchanged."""
    return type_code[0].upper() + type_code[1:]


def _type_code(model_name: str) -> str:
    """Model type name (`DateTime` in a choice list, `System.String`) -> FHIR type code (`dateTime`, `string`)."""
    if model_name in _SYSTEM_TYPES:
        return _SYSTEM_TYPES[model_name]
    lowered = model_name[0].lower() + model_name[1:]
    return lowered if lowered in PRIMITIVE_TYPES else model_name


@dataclass(frozen=True, slots=True)
class Child:
    """One element of a type, with the JSON keys it can appear under.

    `variants` holds (json key, type code) pairs: one pair for an ordinary element, one per allowed
    type for a choice element. The type code of a backbone element is its full path
    (`MedicationRequest.dispenseRequest`), which is also how its own children are found.
    """

    name: str
    path: str
    choice: bool
    variants: tuple[tuple[str, str], ...]

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.variants)


class R4Model:
    """Element lookups over the R4 model tables; build once, use everywhere (see `r4_model()`)."""

    def __init__(self) -> None:
        tables = _fhirpath_models["r4"]
        self._path2type: dict[str, str] = tables["path2Type"]
        self._choices: dict[str, list[str]] = tables["choiceTypePaths"]
        self._elsewhere: dict[str, str] = tables["pathsDefinedElsewhere"]
        self._parents: dict[str, str] = tables["type2Parent"]
        backbones: set[str] = set()
        for path in list(self._path2type) + list(self._choices):
            parts = path.split(".")
            for i in range(2, len(parts)):
                prefix = ".".join(parts[:i])
                if prefix not in self._path2type:
                    backbones.add(prefix)
        self._backbones = frozenset(backbones | set(self._elsewhere))
        self._cache: dict[tuple[str, str], Child | None] = {}

    def is_resource(self, name: str) -> bool:
        """True for a resource type name (Patient, Bundle, ...)."""
        seen = name
        while seen in self._parents:
            seen = self._parents[seen]
            if seen == "Resource":
                return True
        return name == "Resource"

    def is_known_type(self, type_code: str) -> bool:
        """True for a data type or resource the model defines (or a backbone path)."""
        return (type_code in PRIMITIVE_TYPES or type_code in self._parents
                or type_code in self._backbones or type_code in ("Element", "BackboneElement"))

    def lineage(self, type_code: str) -> list[str]:
        """The type and its ancestors, nearest first: where inherited elements are defined."""
        if "." in type_code:
            return [type_code, "BackboneElement", "Element"]
        chain = [type_code]
        while chain[-1] in self._parents:
            chain.append(self._parents[chain[-1]])
        if chain[-1] not in ("Element", "Resource") and type_code in PRIMITIVE_TYPES:
            chain.append("Element")
        return chain

    def child(self, type_code: str, name: str) -> Child | None:
        """The element `name` of `type_code` (a type code or a backbone path), or None if there is none."""
        key = (type_code, name)
        if key in self._cache:
            return self._cache[key]
        found = None
        for owner in self.lineage(type_code):
            path = f"{owner}.{name}"
            if path in self._choices:
                variants = tuple((name + type_suffix(_type_code(t)), _type_code(t)) for t in self._choices[path])
                found = Child(name, path, True, variants)
                break
            if path in self._elsewhere:
                found = Child(name, path, False, ((name, self._elsewhere[path]),))
                break
            if path in self._path2type:
                found = Child(name, path, False, ((name, _type_code(self._path2type[path])),))
                break
            if path in self._backbones:
                found = Child(name, path, False, ((name, path),))
                break
        self._cache[key] = found
        return found

    def resolve(self, path: str, narrowed: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...] | None:
        """Type codes an element path ends in, or None if the path does not exist.

        `path` is an ElementDefinition.path (`Extension.extension.value[x].system`); `narrowed`
        maps a choice path (`Extension.extension.value[x]`) to the types a profile allows there,
        so that children of a restricted choice resolve on those types only.
        """
        parts = path.split(".")
        current: tuple[str, ...] = (parts[0],)
        if not self.is_known_type(parts[0]):
            return None
        walked = parts[0]
        for part in parts[1:]:
            walked = f"{walked}.{part}"
            name = part[:-3] if part.endswith("[x]") else part
            types: list[str] = []
            for t in current:
                c = self.child(t, name)
                if c is None or c.choice != part.endswith("[x]"):
                    continue
                types.extend(c.types)
            if not types:
                return None
            if narrowed and walked in narrowed:
                allowed = [t for t in narrowed[walked] if t in types or _widens(t, types)]
                if not allowed:
                    return None
                types = allowed
            current = tuple(dict.fromkeys(types))
        return current


def _widens(profile_type: str, base_types: list[str]) -> bool:
    """A profile may say SimpleQuantity (or another Quantity profile) where the base says Quantity."""
    return profile_type in ("SimpleQuantity", "MoneyQuantity") and "Quantity" in base_types


@cache
def r4_model() -> R4Model:
    """The shared R4 model (built on first use, ~20 ms)."""
    return R4Model()
