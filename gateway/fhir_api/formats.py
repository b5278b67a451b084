"""FHIR wire formats: JSON and XML, chosen by ``_format``, ``Accept`` and ``Content-Type``.

Resources live as JSON dicts everywhere in the gateway; XML exists only at the HTTP edge
(``fhir_xml`` converts, exact to the lexical value). Why not fhir.resources' own XML
(``model_dump_xml``, whose only extra dependency is lxml, already ours)? It runs every resource
through its pydantic models, which re-format values on the way (instants, decimals: ``10``
became ``10.0``, and a decimal's precision is part of its value in FHIR), refuse resources its
R4B models read differently from R4, and cost ~4 ms a Bundle. We keep its element model (order,
cardinality, types) and write the values ourselves.

Untrusted XML is parsed here first with a locked-down lxml parser (no entity resolution, no
network, no huge trees) and any document type declaration is refused, so a billion-laughs or
external-entity document gets a 400 before anything could expand it.
"""
from __future__ import annotations

from dataclasses import dataclass

import orjson
from lxml import etree

from gateway.fhir_api.fhir_xml import XmlFormError, element_to_resource, resource_to_element

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
    try:
        root = resource_to_element(resource)
    except XmlFormError as exc:
        raise FormatError(500, "exception", f"{resource.get('resourceType')} could not be written as XML: {exc}") from exc
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=pretty)


# ---------------------------------------------------------------------------- parsing

def safe_xml_parser() -> etree.XMLParser:
    """The one way the gateway parses XML it did not write."""
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
                           dtd_validation=False, remove_comments=True)


_DTD_REFUSED = ("XML with a document type declaration (DTD) is refused: FHIR XML never needs one, and "
                "entity definitions are a denial-of-service and file-disclosure risk")


def parse_xml_resource(data: bytes) -> dict:
    """FHIR XML -> the JSON dict; 400 with a clear reason for a DTD, bad XML or a non-FHIR document."""
    try:
        root = etree.fromstring(data, parser=safe_xml_parser())
    except etree.XMLSyntaxError as exc:
        if b"<!DOCTYPE" in data:    # e.g. an entity lxml would not resolve: the DTD is the reason
            raise FormatError(400, "security", _DTD_REFUSED) from exc
        raise FormatError(400, "structure", f"the body is not well-formed XML: {exc}") from exc
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise FormatError(400, "security", _DTD_REFUSED)
    qname = etree.QName(root)
    try:
        return element_to_resource(root)
    except XmlFormError as exc:
        raise FormatError(400, "structure", f"the XML is not a valid FHIR resource: {exc}", qname.localname) from exc


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
