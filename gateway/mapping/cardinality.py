"""What a mapping's element path is in FHIR R4: whether it exists, and whether each step repeats.

A mapping row names a target like ``dosageInstruction[0].route`` or ``identifier``. The engine has
to know, when the file loads, that ``dosageInstruction`` is a list (0..*) and ``route`` is not
(0..1), so it can

* refuse a path that R4 does not have (``AdverseEvent.identifer``), with the file and line;
* refuse ``identifier[0]`` or ``identifier[]`` on a 0..1 element (``AdverseEvent.identifier``), and
  a list element crossed without an index (``dosageInstruction.text``);
* fit a converter's result to the element when the message is mapped: a one-item list into a 0..1
  element is that item (``addresses`` into ``Location.address``), a single value into a 0..*
  element is a one-item list, and two items into a 0..1 element is a mapping error naming the
  element and the source field (``engine.py``).

Existence comes from the R4 (4.0.1) element model the validator uses (``gateway.validation.model``,
fhirpathpy's tables from the official definitions). Those tables carry no cardinality, so whether
an element repeats is read from the fhir.resources R4B models (pydantic): R4B changed none of the
cardinalities of the elements these mappings write, and an element R4B has and R4 lacks is refused
by the R4 check first.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.validation.model import r4_model

_MODEL_TYPE = re.compile(r"abc\.(\w+)Type\b")


@dataclass(frozen=True)
class ElementStep:
    """One step of an element path: its R4 path, whether it repeats (0..*), and its type."""
    path: str
    repeats: bool
    r4_type: str            # a type code, or a backbone path (``AdverseEvent.suspectEntity``)
    model: Any              # the fhir.resources R4B class of its values (None for primitives)


class ElementPathError(ValueError):
    """An element path that R4 does not have; the message says where it stops making sense."""


@lru_cache(maxsize=None)
def _model_class(name: str):
    from fhir.resources.R4B import get_fhir_model_class
    try:
        return get_fhir_model_class(name)
    except (KeyError, ValueError):
        return None


@lru_cache(maxsize=None)
def _fields(model) -> dict[str, Any]:
    """A model's fields by JSON key (``class`` is the field ``class_fhir`` with that alias)."""
    return {(info.alias or name): info for name, info in model.model_fields.items()}


def root(resource_type: str) -> ElementStep:
    """The step a resource's element paths start from; ElementPathError for an unknown type."""
    model = r4_model()
    cls = _model_class(resource_type)
    if not model.is_resource(resource_type) or cls is None:
        raise ElementPathError(f"'{resource_type}' is not an R4 resource type")
    return ElementStep(resource_type, False, resource_type, cls)


def step(parent: ElementStep, name: str) -> ElementStep:
    """The element ``name`` (a JSON key: ``valueQuantity`` for a choice) of ``parent``."""
    r4_type = _r4_child_type(parent.r4_type, name)
    if r4_type is None or parent.model is None:
        raise ElementPathError(f"'{parent.path}.{name}' is not an element of R4 {parent.r4_type}"
                               + _suggestion(parent, name))
    field = _fields(parent.model).get(name)
    if field is None:
        raise ElementPathError(f"'{parent.path}.{name}' is not an element of R4 {parent.r4_type}")
    annotation = str(field.annotation)
    found = _MODEL_TYPE.search(annotation)
    return ElementStep(f"{parent.path}.{name}", "List[" in annotation, r4_type,
                       _model_class(found.group(1)) if found else None)


def _r4_child_type(type_code: str, key: str) -> str | None:
    model = r4_model()
    child = model.child(type_code, key)
    if child is not None and not child.choice:
        return child.types[0]
    for cut in range(len(key) - 1, 0, -1):           # valueQuantity -> value[x] of type Quantity
        child = model.child(type_code, key[:cut])
        if child is not None and child.choice:
            return next((t for json_key, t in child.variants if json_key == key), None)
    return None


def _suggestion(parent: ElementStep, name: str) -> str:
    """`` (did you mean 'identifier'?)`` when one R4 element is spelled nearly so."""
    if parent.model is None:
        return ""
    import difflib
    names = [n for n in _fields(parent.model) if not n.endswith("__ext") and n != "fhir_comments"]
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
