"""FHIR wire formats: JSON and XML, chosen by ``_format``, ``Accept`` and ``Content-Type``.

Resources live as JSON dicts everywhere in the gateway; XML exists only at the HTTP edge. The
JSON <-> XML conversion is fhir.resources' (its ``xml`` extra is just lxml, already a runtime
dependency): its models know every element's order and cardinality, which the XML form needs
and a hand-written converter would have to re-derive from the R4 definitions. fhir.resources 8
ships R4B models, not R4; for the resources this gateway stores the two are the same shape, and
the round-trip tests in ``tests/fhir_api/test_formats.py`` check each stored type.

Untrusted XML is parsed here first with a locked-down lxml parser (no entity resolution, no
network, no huge trees) and any document type declaration is refused, so a billion-laughs or
external-entity document gets a 400 before anything expands it.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson
from lxml import etree

JSON_MIME = "application/fhir+json"
XML_MIME = "application/fhir+xml"
NDJSON_MIME = "application/fhir+ndjson"

# what each _format / Accept / Content-Type value means
_FORMAT_NAMES = {
    "json": "json", "application/json": "json", "application/fhir+json": "json", "text/json": "json",
    "application/json+fhir": "json",
    "xml": "xml", "application/xml": "xml", "application/fhir+xml": "xml", "text/xml": "xml",
    "application/xml+fhir": "xml",
}
SUPPORTED_FORMATS = [JSON_MIME, XML_MIME, "json", "xml"]


class FormatError(ValueError):
    """A body or a format request the gateway cannot honour; ``status`` is the HTTP answer."""

    def __init__(self, status: int, code: str, diagnostics: str, expression: str | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.expression = expression


@dataclass(frozen=True)
class Negotiated:
    """The format of the answer: ``json`` or ``xml``, and whether to indent it."""
    name: str = "json"
    pretty: bool = False

    @property
    def mime(self) -> str:
        return XML_MIME if self.name == "xml" else JSON_MIME


def format_name(value: str | None) -> str | None:
    """``application/fhir+xml; charset=utf-8`` -> ``xml``; None for anything not served."""
    if not value:
        return None
    return _FORMAT_NAMES.get(value.split(";", 1)[0].strip().lower())


def negotiate(format_param: str | None, accept: str | None, pretty_param: str | None) -> Negotiated:
    """``_format`` wins over ``Accept``; an unknown ``_format`` is a 406, an unknown Accept means JSON."""
    pretty = (pretty_param or "").lower() == "true"
    if format_param:
        name = format_name(format_param)
        if name is None:
            raise FormatError(406, "not-supported", f"_format '{format_param}' is not served; use json or xml",
                              "_format")
        return Negotiated(name, pretty)
    for item in _accept_items(accept):
        name = format_name(item)
        if name is not None:
            return Negotiated(name, pretty)
    return Negotiated("json", pretty)


def _accept_items(accept: str | None) -> list[str]:
    """Accept values ordered by q (stable), without those at q=0."""
    items = []
    for i, part in enumerate((accept or "").split(",")):
        mime, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if mime and q > 0:
            items.append((-q, i, mime))
    return [mime for _q, _i, mime in sorted(items)]


# ---------------------------------------------------------------------------- rendering

def render(body: dict, fmt: Negotiated) -> bytes:
    if fmt.name == "xml":
        return resource_to_xml(body, pretty=fmt.pretty)
    return orjson.dumps(body, option=orjson.OPT_INDENT_2 if fmt.pretty else 0)


def resource_to_xml(resource: dict, pretty: bool = False) -> bytes:
    """The FHIR XML form of a JSON resource (a Bundle with its entries included)."""
    model = _model_class(resource.get("resourceType"))
    try:
        instance = model.model_validate(resource)
    except Exception as exc:  # pydantic's ValidationError and the odd TypeError from a malformed resource
        raise FormatError(500, "exception", f"{resource.get('resourceType')} could not be written as XML: "
                          f"{_short(exc)}") from exc
    return instance.model_dump_xml(pretty_print=pretty)


# ---------------------------------------------------------------------------- parsing

def safe_xml_parser() -> etree.XMLParser:
    """The one way the gateway parses XML it did not write."""
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
                           dtd_validation=False, remove_comments=True)


def parse_xml_resource(data: bytes) -> dict:
    """FHIR XML -> the JSON dict; 400 with a clear reason for a DTD, bad XML or a non-FHIR document."""
    try:
        root = etree.fromstring(data, parser=safe_xml_parser())
    except etree.XMLSyntaxError as exc:
        raise FormatError(400, "structure", f"the body is not well-formed XML: {exc}") from exc
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise FormatError(400, "security", "XML with a document type declaration (DTD) is refused: "
                          "FHIR XML never needs one, and entity definitions are a denial-of-service risk")
    qname = etree.QName(root)
    if qname.namespace != "http://hl7.org/fhir":
        raise FormatError(400, "structure", f"the root element {root.tag} is not in the FHIR namespace "
                          "http://hl7.org/fhir")
    model = _model_class(qname.localname, status=400)
    try:
        instance = model.model_validate_xml(data, xmlparser=safe_xml_parser())
    except KeyError as exc:
        raise FormatError(400, "structure", f"the XML has an element {exc} that {qname.localname} does not define",
                          qname.localname) from exc
    except Exception as exc:
        raise FormatError(400, "structure", f"the XML is not a valid {qname.localname}: {_short(exc)}",
                          qname.localname) from exc
    return orjson.loads(instance.model_dump_json())


def parse_body(data: bytes, content_type: str | None) -> dict:
    """A request body as a JSON dict, by its Content-Type (JSON when none is given)."""
    name = format_name(content_type) if content_type else "json"
    if name is None:
        raise FormatError(415, "not-supported", f"Content-Type '{content_type}' is not accepted; send "
                          f"{JSON_MIME} or {XML_MIME}")
    if not data or not data.strip():
        raise FormatError(400, "required", "the request has no body")
    if name == "xml":
        return parse_xml_resource(data)
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FormatError(400, "structure", f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise FormatError(400, "structure", "the body must be a FHIR resource: a JSON object with a resourceType",
                          "resourceType")
    return body


def _model_class(resource_type, status: int = 500):
    from fhir.resources.R4B import get_fhir_model_class
    try:
        return get_fhir_model_class(str(resource_type))
    except (KeyError, ValueError) as exc:
        raise FormatError(status, "not-supported", f"'{resource_type}' is not a FHIR resource type") from exc


def _short(exc: Exception) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) < 400 else text[:400] + "..."
