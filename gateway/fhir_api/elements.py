"""``_summary`` and ``_elements``: answering with part of each resource (search.html#summary).

Which elements are "summary" and which are mandatory is read from the R4B models of fhir.resources
(``summary_element_property`` / ``element_required`` on every field, taken from the isSummary and
min of the core StructureDefinitions), not listed per resource here. R4B and R4 agree on these flags
for the types this gateway serves. A subsetted resource carries the SUBSETTED tag in ``meta.tag``.
"""
from __future__ import annotations

from functools import lru_cache

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
_ALWAYS = frozenset({"resourceType", "id", "meta"})


@lru_cache(maxsize=None)
def _flagged(resource_type: str, flag: str) -> frozenset[str]:
    """JSON names of the top-level elements whose field carries ``flag`` in the fhir.resources model."""
    from fhir.resources.R4B import get_fhir_model_class
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return frozenset()
    names = set()
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get(flag):
            names.add(info.alias or name)
    return frozenset(names)


def summary_elements(resource_type: str) -> frozenset[str]:
    return _ALWAYS | _flagged(resource_type, "summary_element_property")


def mandatory_elements(resource_type: str) -> frozenset[str]:
    return _ALWAYS | _flagged(resource_type, "element_required") | _flagged(resource_type, "one_of_many_required")


def subset(resource: dict, summary: str | None = None, elements: list[str] | None = None) -> dict:
    """The resource as ``_summary`` (true | text | data | false) and ``_elements`` ask; the same
    dict when nothing is left out."""
    if summary in (None, "false", "count") and not elements:
        return resource
    resource_type = resource.get("resourceType", "")
    if summary == "data":
        kept = {k: v for k, v in resource.items() if k != "text"}
    elif summary == "text":
        keep = mandatory_elements(resource_type) | {"text"}
        kept = {k: v for k, v in resource.items() if k in keep}
    elif summary == "true":
        keep = summary_elements(resource_type)
        kept = {k: v for k, v in resource.items() if k in keep}
    else:
        wanted = {e.split(".", 1)[0].removesuffix("[x]") for e in elements or []}
        kept = {k: v for k, v in resource.items() if k in _ALWAYS or k in wanted or _choice_of(k, wanted)}
    if kept == resource:
        return resource
    meta = dict(kept.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    kept["meta"] = meta
    return kept


def _choice_of(key: str, wanted: set[str]) -> bool:
    """``medicationCodeableConcept`` is asked for by ``medication`` (or ``medication[x]``)."""
    return any(key.startswith(w) and key[len(w):len(w) + 1].isupper() for w in wanted)
