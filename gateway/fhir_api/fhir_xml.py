"""FHIR JSON <-> FHIR XML, exact to the lexical value, with lxml.

The XML form needs what the JSON form leaves implicit: the order of elements, which elements
repeat, which are primitives (``<gender value="male"/>``), that ``id`` of a data type and ``url``
of an Extension are attributes, that a primitive's ``_name`` companion (id, extensions) folds into
the same element, that a narrative ``div`` is XHTML, and that a contained resource is wrapped in an
element named for its type. The element model comes from fhir.resources' R4B classes
(``elements_sequence()`` for the order, the field annotations for cardinality and types); the
values never go through its pydantic models, because those re-format values (an instant
``...10.508Z`` became ``...10.508000+00:00``, a decimal ``10`` became ``10.0``), and FHIR says a
decimal's precision is part of its value.

Parsing takes an element already parsed by ``formats.parse_xml_resource`` with the safe parser.
"""
from __future__ import annotations

import decimal
import types
import typing
from dataclasses import dataclass
from functools import cache

import orjson
from lxml import etree

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_F = "{%s}" % FHIR_NS

_INTEGER_TYPES = {"integer", "positiveInt", "unsignedInt", "integer64"}


class XmlFormError(ValueError):
    """Content one form cannot carry into the other (an element the model does not define, a bad value)."""


@dataclass(frozen=True)
class ElementSpec:
    name: str
    repeats: bool
    kind: str                  # primitive | xhtml | complex | resource
    type_name: str             # primitive type code, or the model class name
    model: type | None         # the model class of a complex element


# ---------------------------------------------------------------------------- the element model

@cache
def resource_class(resource_type: str) -> type:
    from fhir.resources.R4B import get_fhir_model_class
    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError) as exc:
        raise XmlFormError(f"'{resource_type}' is not a FHIR resource type") from exc


@cache
def element_specs(model: type) -> dict[str, ElementSpec]:
    """JSON name -> spec, in the order the XML form requires (Python dicts keep insertion order)."""
    by_alias = {(f.alias or name): f for name, f in model.model_fields.items()}
    specs: dict[str, ElementSpec] = {}
    for name in model.elements_sequence():
        field = by_alias.get(name)
        if field is None:
            continue
        specs[name] = _spec(name, field.annotation)
    return specs


def _spec(name: str, annotation: typing.Any) -> ElementSpec:
    repeats = False
    inner = annotation
    while True:
        origin = typing.get_origin(inner)
        if origin is typing.Union or origin is types.UnionType:
            inner = next(a for a in typing.get_args(inner) if a is not type(None))
        elif origin in (list, typing.List):
            repeats = True
            inner = typing.get_args(inner)[0]
        else:
            break
    if typing.get_origin(inner) is typing.Annotated:
        marker = typing.get_args(inner)[1]
        type_name = getattr(marker, "__visit_name__", "string")
        return ElementSpec(name, repeats, "xhtml" if type_name == "xhtml" else "primitive", type_name, None)
    klass_of = getattr(inner, "get_model_klass", None)
    if klass_of is not None:
        model = klass_of()
        if getattr(inner, "__name__", "") == "ResourceType" or model.__name__ in ("Resource", "DomainResource"):
            return ElementSpec(name, repeats, "resource", "Resource", None)
        return ElementSpec(name, repeats, "complex", model.__name__, model)
    plain = {bool: "boolean", int: "integer", float: "decimal", decimal.Decimal: "decimal"}.get(inner, "string")
    return ElementSpec(name, repeats, "primitive", plain, None)


# ---------------------------------------------------------------------------- JSON -> XML

def resource_to_element(resource: dict) -> etree._Element:
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise XmlFormError("a resource needs a resourceType")
    root = etree.Element(_F + resource_type, nsmap={None: FHIR_NS})
    _write_children(root, resource, resource_class(resource_type), resource_type, is_resource=True)
    return root


def _write_children(parent: etree._Element, obj: dict, model: type, path: str, is_resource: bool) -> None:
    specs = element_specs(model)
    for key in obj:
        name = key[1:] if key.startswith("_") else key
        if key != "resourceType" and name not in specs and key != "fhir_comments":
            raise XmlFormError(f"{path}.{name} is not an element FHIR defines there")
    for name, spec in specs.items():
        if not is_resource and name == "id" or (model.__name__ == "Extension" and name == "url"):
            if name in obj:
                parent.set(name, str(obj[name]))
            continue
        value, companion = obj.get(name), obj.get("_" + name)
        if value is None and companion is None:
            continue
        values = value if isinstance(value, list) else [value]
        companions = companion if isinstance(companion, list) else [companion]
        for i in range(max(len(values), len(companions))):
            item = values[i] if i < len(values) else None
            extra = companions[i] if i < len(companions) else None
            where = f"{path}.{name}"
            if spec.kind == "primitive":
                element = etree.SubElement(parent, _F + name)
                if extra:
                    if "id" in extra:
                        element.set("id", str(extra["id"]))
                    for ext in extra.get("extension") or []:
                        _write_complex(element, "extension", ext, element_specs(_extension_class())["extension"],
                                       where)
                if item is not None:
                    element.set("value", _lexical(item))
            elif spec.kind == "xhtml":
                parent.append(_xhtml(item, where))
            elif spec.kind == "resource":
                holder = etree.SubElement(parent, _F + name)
                holder.append(resource_to_element(item))
            else:
                _write_complex(parent, name, item, spec, where)


def _write_complex(parent: etree._Element, name: str, item: typing.Any, spec: ElementSpec, where: str) -> None:
    if not isinstance(item, dict):
        raise XmlFormError(f"{where} must be an object")
    element = etree.SubElement(parent, _F + name)
    _write_children(element, item, spec.model, where, is_resource=False)


@cache
def _extension_class() -> type:
    from fhir.resources.R4B.extension import Extension
    return Extension


def _lexical(value: typing.Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return orjson.dumps(value).decode()
    return str(value)


def _xhtml(text: typing.Any, where: str) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        div = etree.fromstring(str(text).encode("utf-8"), parser=parser)
    except etree.XMLSyntaxError as exc:
        raise XmlFormError(f"{where} is not well-formed XHTML: {exc}") from exc
    if etree.QName(div).namespace != XHTML_NS:
        raise XmlFormError(f"{where} must be a div in the XHTML namespace")
    return div


# ---------------------------------------------------------------------------- XML -> JSON

def element_to_resource(root: etree._Element) -> dict:
    qname = etree.QName(root)
    if qname.namespace != FHIR_NS:
        raise XmlFormError(f"the element {root.tag} is not in the FHIR namespace {FHIR_NS}")
    resource: dict = {"resourceType": qname.localname}
    _read_children(root, resource, resource_class(qname.localname), qname.localname, is_resource=True)
    return resource


def _read_children(element: etree._Element, obj: dict, model: type, path: str, is_resource: bool) -> None:
    specs = element_specs(model)
    if not is_resource:
        for attribute in ("id", "url"):
            if attribute in element.attrib and attribute in specs:
                obj[attribute] = element.attrib[attribute]
    for child in element:
        if not isinstance(child.tag, str):      # comments, processing instructions
            continue
        qname = etree.QName(child)
        name = qname.localname
        spec = specs.get(name)
        where = f"{path}.{name}"
        if spec is None:
            raise XmlFormError(f"{where} is not an element FHIR defines there")
        if spec.kind == "xhtml":
            if qname.namespace != XHTML_NS:
                raise XmlFormError(f"{where} must be in the XHTML namespace")
            obj[name] = etree.tostring(child, encoding="unicode", with_tail=False)
            continue
        if qname.namespace != FHIR_NS:
            raise XmlFormError(f"{where} is not in the FHIR namespace")
        if spec.kind == "primitive":
            value = _typed(child.get("value"), spec.type_name, where) if child.get("value") is not None else None
            extra: dict = {}
            if child.get("id") is not None:
                extra["id"] = child.get("id")
            extensions = [_read_complex(e, element_specs(_extension_class())["extension"], where)
                          for e in child if isinstance(e.tag, str)]
            if extensions:
                extra["extension"] = extensions
            _put_primitive(obj, name, spec.repeats, value, extra or None)
        elif spec.kind == "resource":
            inner = [c for c in child if isinstance(c.tag, str)]
            if len(inner) != 1:
                raise XmlFormError(f"{where} must hold exactly one resource")
            _put(obj, name, spec.repeats, element_to_resource(inner[0]))
        else:
            _put(obj, name, spec.repeats, _read_complex(child, spec, where))
    _tidy_primitive_lists(obj)


def _read_complex(element: etree._Element, spec: ElementSpec, where: str) -> dict:
    obj: dict = {}
    _read_children(element, obj, spec.model, where, is_resource=False)
    return obj


def _put(obj: dict, name: str, repeats: bool, value: typing.Any) -> None:
    if repeats:
        obj.setdefault(name, []).append(value)
    elif name in obj:
        raise XmlFormError(f"{name} appears more than once but does not repeat")
    else:
        obj[name] = value


def _put_primitive(obj: dict, name: str, repeats: bool, value: typing.Any, extra: dict | None) -> None:
    if not repeats:
        if name in obj or "_" + name in obj:
            raise XmlFormError(f"{name} appears more than once but does not repeat")
        if value is not None:
            obj[name] = value
        if extra:
            obj["_" + name] = extra
        return
    obj.setdefault(name, []).append(value)
    obj.setdefault("_" + name, []).append(extra)


def _tidy_primitive_lists(obj: dict) -> None:
    """JSON leaves out a repeating primitive's list when every entry is null (values, or ``_name`` companions)."""
    for key in [k for k, v in obj.items() if isinstance(v, list) and v and all(x is None for x in v)]:
        del obj[key]


def _typed(text: str, type_name: str, where: str) -> typing.Any:
    if type_name == "boolean":
        if text not in ("true", "false"):
            raise XmlFormError(f"{where}: '{text}' is not a boolean")
        return text == "true"
    if type_name in _INTEGER_TYPES:
        try:
            return int(text)
        except ValueError as exc:
            raise XmlFormError(f"{where}: '{text}' is not an integer") from exc
    if type_name == "decimal":
        try:
            return int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError as exc:
            raise XmlFormError(f"{where}: '{text}' is not a decimal") from exc
    return text
