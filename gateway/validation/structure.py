"""Base R4 structure checks ("is this valid FHIR R4 JSON at all?") behind one small interface.

Two backends, chosen by name:

- `fhirkit` (default): fhirkit-rs, a Rust implementation generated from the official R4 4.0.1
  definitions. It reports every problem with its path (`MedicationRequest.dosageInstruction[0]
  .timing.repeat.frequency`): unknown elements, missing mandatory elements, wrong JSON types,
  primitive formats (dateTime without offset, bad uri), empty strings and arrays, choice
  conflicts. It is given orjson bytes, which it reads ~2x faster than a dict. It does **not**
  check bindings (`status: "bogus"` passes) nor invariants; the profile layer does that.
- `fhir.resources`: the pydantic models of fhir.resources 8 (`fhir.resources.R4B`). Slower
  (~10x), and R4B (4.3.0), not R4: the models accept a few R4B-only elements and value sets, and
  pydantic's lax mode coerces some JSON types R4 forbids (e.g. the string `"1"` for an integer).
  Useful as a second opinion; not the ingest default.

Both return `Issue`s with `profile=None`; codes: `required` for a missing mandatory element,
`value` for a malformed primitive, `structure` for everything else.
"""
from __future__ import annotations

import re
from typing import Protocol

import orjson

from .issues import Issue


class StructureBackend(Protocol):
    """Checks a resource against base FHIR R4 structure."""

    name: str

    def check(self, resource: dict) -> list[Issue]: ...


def _fhirkit_code(message: str) -> str:
    if message == "required element missing":
        return "required"
    if " is not a valid " in message or message.startswith("an empty"):
        return "value"
    return "structure"


class FhirkitBackend:
    """fhirkit-rs: true R4 4.0.1 structure, fast."""

    name = "fhirkit"

    def __init__(self) -> None:
        import fhirkit
        self._validate = fhirkit.validate
        self._parse_error = fhirkit.ParseError

    def check(self, resource: dict) -> list[Issue]:
        try:
            payload: bytes | dict = orjson.dumps(resource)
        except TypeError:                       # e.g. Decimal values: fhirkit reads the dict itself
            payload = resource
        try:
            found = self._validate(payload)
        except (self._parse_error, TypeError, ValueError) as exc:    # e.g. a set, or a non-string key
            return [Issue("fatal", "structure", f"Not readable as FHIR JSON: {exc}")]
        issues = []
        for item in found:
            severity = "error" if item.severity == "error" else "warning"
            path = item.path.replace("[x]", "")
            issues.append(Issue(severity, _fhirkit_code(item.message), f"{item.path}: {item.message}", path))
        return issues


_CHOICE_MESSAGE = re.compile(r"from this list \['([A-Za-z]+?)[A-Z]")


class FhirResourcesBackend:
    """fhir.resources R4B pydantic models: slower, R4B rather than R4 (see module docstring)."""

    name = "fhir.resources"

    def __init__(self) -> None:
        import pydantic
        from fhir.resources.R4B import get_fhir_model_class
        self._model_class = get_fhir_model_class
        self._error = pydantic.ValidationError

    def check(self, resource: dict) -> list[Issue]:
        resource_type = resource.get("resourceType")
        try:
            model = self._model_class(resource_type)
        except (KeyError, ValueError, TypeError):
            return [Issue("fatal", "structure", f"{resource_type!r} is not a resource type fhir.resources (R4B) knows",
                          str(resource_type) if resource_type else None)]
        try:
            model.model_validate(resource)
        except self._error as exc:
            return [self._issue(resource_type, err) for err in exc.errors()]
        except (TypeError, ValueError) as exc:
            return [Issue("fatal", "structure", f"Not readable as FHIR JSON: {exc}")]
        return []

    @staticmethod
    def _issue(resource_type: str, err: dict) -> Issue:
        path = resource_type
        for part in err.get("loc", ()):
            if isinstance(part, int):
                path += f"[{part}]"
            elif part not in ("resourceType",) and not str(part).startswith("function-"):
                path += f".{part}"
        message = err.get("msg", "invalid")
        kind = err.get("type", "")
        if kind == "missing" or kind.endswith(".missing"):
            code, message = "required", "required element missing"
        elif kind == "extra_forbidden":
            code, message = "structure", "unknown element"
        elif kind == "value_error":
            code = "value"
            m = _CHOICE_MESSAGE.search(message)
            if m and path == resource_type:       # a choice conflict is reported on the resource
                path = f"{resource_type}.{m.group(1)}"
                code = "structure"
        else:
            code = "structure"
        return Issue("error", code, f"{path}: {message}", path)


_BACKENDS = {"fhirkit": FhirkitBackend, "fhir.resources": FhirResourcesBackend}


def structure_backend(name: str) -> StructureBackend:
    """A backend by name: 'fhirkit' (default, R4 4.0.1) or 'fhir.resources' (R4B models)."""
    try:
        return _BACKENDS[name]()
    except KeyError:
        raise ValueError(f"unknown structure backend {name!r}; choose one of {', '.join(_BACKENDS)}") from None
