"""Hospitals' own XML, CSV and JSON exports, read for the one mapping engine.

Many hospitals never send clean HL7 v2: they export their own XML, CSV or JSON. A mapping file with
``source: xml``, ``csv`` or ``json`` says how to read such a document; its resources are written
exactly like an HL7 mapping's (see ``mappings/README.md``). Only the paths differ:

* **xml**: XPath 1.0 through lxml, with the namespace prefixes the file declares
  (``rx:Items/rx:Item``, ``@mrn``, ``concat(...)``); relative to the group node, ``/...`` absolute.
  Parsed with entities, DTDs and the network off and huge trees refused; a document declaring
  entities is refused (XPath's string() would expand them).
* **csv**: a header name (``udi_di``); every row is a document of its own, so one bad row does not
  stop the good ones. The file's ``encoding`` is decoded strictly (GB 18030 exports are common).
* **json**: ``patient.mrn``, ``items[*].dose.value``, ``items[0]``; relative to the group item,
  ``$.`` absolute. The document is checked first with a marshmallow schema built from ``fields``.

Every value reaches a converter in the HL7 field shape (repetitions -> components ->
sub-components): ``"R55601"`` is ``[[["R55601"]]]``, several matches are repetitions. Every
problem names where it is: an XPath and line, ``line 3, column 'udi_di'``, or a JSON pointer.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from lxml import etree
from marshmallow import INCLUDE, Schema
from marshmallow import fields as mm

from gateway.mapping import document_values  # noqa: F401  (registers the converters documents need)
from gateway.mapping.engine import DocumentLocation, DocumentProblem, MappingError

REQUIRED_MISSING = "required value missing"


@dataclass(frozen=True)
class DocumentOrigin:
    """Who a document comes from, with the two names the routing hook and converters read from an
    HL7 message: ``message_type`` (``csv:device_first_use``) and ``sending_facility`` (the hospital)."""
    message_type: str
    sending_facility: str
    sending_application: str
    control_id: str | None = None    # set by the ingest pipeline: the document's hash (and CSV line)


@dataclass
class DocumentUnit:
    """What one run of a mapping takes: a whole XML or JSON document, or one CSV row."""
    label: str                       # "document", or "line 3" for a CSV row
    scope: Any
    origin: DocumentOrigin
    problems: list[DocumentProblem] = field(default_factory=list)


@dataclass
class ReadDocument:
    units: list[DocumentUnit]
    problems: list[DocumentProblem]  # the document as a whole cannot be read: nothing is mapped


def _bad_document(text: str, where: str | None, code: str = "structure") -> ReadDocument:
    return ReadDocument([], [DocumentProblem(text, DocumentLocation(where) if where else None, code)])


class DocumentReader:
    """What the three document readers share: options, the sender path, the declared fields."""
    source = ""

    def __init__(self, data: dict, where: str):
        self.name = data.get("name", where)
        self.message_type = f"{self.source}:{self.name}"
        options = data.get("document") or {}
        if not isinstance(options, dict) or "sender" not in options:
            raise MappingError(f"{where}: a {self.source} mapping needs 'document: {{sender: <path>}}' "
                               "naming the hospital code the document carries")
        self.options = options
        self.declared: dict[str, dict] = {str(k): dict(v or {}) for k, v in (options.get("fields") or {}).items()}
        self.sender = self.compile(options["sender"], f"{where}: document.sender")
        self.condition_paths: dict[str, Any] = {}

    def precompile_conditions(self, data: dict, where: str) -> None:
        """The engine keeps ``present``, ``when`` and lifecycle conditions as text; their paths are
        compiled here, when the mapping loads, so a bad one fails then and not on a document."""
        def conditions(when: Any) -> None:
            if isinstance(when, dict):
                for key in ("present", "absent", "field"):
                    if key in when:
                        self._condition_path(when[key], where)
                for key in ("any", "all"):
                    for inner in when.get(key) or ():
                        conditions(inner)
                conditions(when.get("not"))

        def rows(elements: dict) -> None:
            for rule in elements.values():
                for row in rule if isinstance(rule, list) else [rule]:
                    if isinstance(row, dict):
                        conditions(row.get("when"))
                        rows(row.get("elements") or {})

        for spec in data.get("resources") or ():
            lifecycle = spec.get("lifecycle") or {}
            without = lifecycle.get("status_only_without") or []
            for path in [*(spec.get("present") or []), *([without] if isinstance(without, str) else without)]:
                self._condition_path(path, where)
            conditions(spec.get("when"))
            conditions(lifecycle.get("create_only_when"))
            rows(spec.get("elements") or {})

    def _condition_path(self, text: str, where: str) -> Any:
        if text not in self.condition_paths:
            self.condition_paths[text] = self.compile(text, f"{where}: condition")
        return self.condition_paths[text]

    def begin(self, unit: DocumentUnit, groups: dict[str, dict]) -> "DocumentGroups":
        return DocumentGroups(self, unit.scope, groups)

    def origin(self, unit: DocumentUnit) -> DocumentOrigin:
        return unit.origin

    def select(self, path: Any, scope: Any) -> list:
        """The scopes of a group's items found from ``scope`` (XML and JSON readers)."""
        raise MappingError(f"a {self.source} mapping has no groups")

    def _origin(self, scope: Any) -> DocumentOrigin:
        return DocumentOrigin(self.message_type, scope.text(self.sender) or "", self.name)

    def compile(self, text: str, where: str) -> Any:
        raise NotImplementedError

    def read(self, raw: bytes) -> ReadDocument:
        raise NotImplementedError


class DocumentGroups:
    """The groups of one document as scopes, found from the root once per run. A scope reads its own
    paths (there is no looking further out: a path starting at the root, ``/`` or ``$.``, says so
    itself). Its ``key`` names its node and its ``ids`` the nodes of its subtree, so, as with v2
    segment groups, an item overlaps the items inside it and not its siblings: a nested row takes
    the inner items inside its item, and a ``ref`` finds the resource made for an overlapping item.

    An item never reads another item's values (issue 12, as ``gateway.mapping.scoping`` for v2): a
    value found inside an item of any group that does not enclose this one is not seen, whatever
    the path (``/rx:Prescription/rx:Items/rx:Item/rx:Route``, ``$.items[0].route``, ``..``). So an
    item without a route has none, and a document split into one document per item maps the same.
    (A value an XPath function computes, ``concat(...)``, has no node to check; the mapping files
    use functions on the item's own paths.)"""

    def __init__(self, reader: DocumentReader, top: Any, definitions: dict[str, dict]):
        self.reader = reader
        self.top = top
        self.definitions = definitions
        self._scopes: dict[str, list] = {}

    def scopes(self, name: str) -> list:
        if name not in self._scopes:
            self._scopes[name] = self.reader.select(self.definitions[name]["select"], self.top)
        return self._scopes[name]

    def inside(self, name: str, scope: Any) -> list:
        found = self.scopes(name)
        return found if scope.ids is None else [inner for inner in found if inner.key in scope.ids]

    def view(self, scope: Any, outer: Any = None, group: str | None = None) -> "DocumentView":
        if scope.ids is not None and scope.foreign is None:
            scope.foreign = self._foreign_to(scope.key)
        return DocumentView(scope, self.reader.condition_paths)

    def _foreign_to(self, key: str) -> tuple[str, ...]:
        """The keys of the items (of every group) that neither are, enclose, nor lie inside item ``key``."""
        items = {inner.key for name in self.definitions for inner in self.scopes(name)}
        return tuple(sorted(item for item in items if not (_within(key, item) or _within(item, key))))


def _within(key: str, item: str) -> bool:
    """``key`` (an XPath tree path or a JSON pointer) is ``item`` or lies inside it."""
    return key == item or key.startswith(item + "/")


def _outside(key: str, foreign: tuple[str, ...]) -> bool:
    return not any(_within(key, item) for item in foreign)


class DocumentView:
    """A scope as the engine reads it: paths compiled at load pass through; a condition's path, which
    the engine hands over as text, is looked up among those the reader compiled at load."""
    __slots__ = ("scope", "compiled")

    def __init__(self, scope: Any, compiled: dict[str, Any]):
        self.scope = scope
        self.compiled = compiled

    def _ref(self, ref: Any) -> Any:
        return self.compiled[ref] if isinstance(ref, str) else ref

    def exists(self, ref: Any) -> bool:
        return self.scope.exists(self._ref(ref))

    def text(self, ref: Any) -> str | None:
        return self.scope.text(self._ref(ref))

    def read(self, ref: Any):
        return self.scope.read(ref)

    def read_named(self, ref: Any):
        return self.scope.read_named(ref)


def _field_shape(values: list[str]) -> list:
    """Matched values -> the HL7 field shape converters take: one repetition per value."""
    return [[[value]] for value in values]


class PathScope:
    """What the engine asks of a document scope, from ``values(path)``: the matched texts, each with
    an anchor that ``locate`` turns into where it is (only when asked: most values are never
    reported). ``exists`` is the scope's own (a JSON key holding null exists; an empty element not)."""

    def values(self, ref: Any) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def locate(self, anchor: Any) -> DocumentLocation:
        return anchor

    def text(self, ref: Any) -> str | None:
        found = self.values(ref)
        return found[0][0] if found else None

    def read(self, ref: Any) -> tuple[list, DocumentLocation] | None:
        found = self.values(ref)
        return (_field_shape([v for v, _ in found]), self.locate(found[0][1])) if found else None

    def read_named(self, ref: Any) -> tuple[list | None, DocumentLocation | None]:
        return self.read(ref) or (None, None)


# ---------------------------------------------------------------------------------------------- XML

@dataclass(frozen=True)
class XmlPath:
    text: str
    xpath: etree.XPath


class XmlScope(PathScope):
    """One node (the root, or a group's element) that relative XPaths start from."""
    __slots__ = ("node", "reader", "key", "ids", "foreign")

    def __init__(self, node: etree._Element, reader: "XmlReader", key: str = "/", ids: frozenset | None = None):
        self.node = node
        self.reader = reader
        self.key = key
        self.ids = ids
        self.foreign: tuple[str, ...] | None = None     # other items' tree paths (DocumentGroups.view)

    def values(self, ref: XmlPath) -> list[tuple[str, tuple]]:
        """Texts of the matches, each with an anchor: (element, step after it)."""
        result = ref.xpath(self.node)
        items = result if isinstance(result, list) else [result]
        found = []
        for item in items:
            if isinstance(item, etree._Element):
                text, anchor = "".join(item.itertext()), (item, "")
            elif isinstance(item, bool):
                text, anchor = ("true" if item else "false"), (self.node, ref.text)
            elif isinstance(item, float):
                text, anchor = (str(int(item)) if item.is_integer() else repr(item)), (self.node, ref.text)
            elif isinstance(item, str):
                parent = item.getparent() if hasattr(item, "getparent") else None
                text = str(item)
                if parent is None:                    # computed by an XPath function: concat(), ...
                    anchor = (self.node, ref.text)
                else:
                    anchor = (parent, f"@{_prefixed(item.attrname, self.reader.prefixes)}" if item.is_attribute
                              else "text()")
            else:
                continue
            text = text.strip()
            if text:
                found.append((text, anchor))
        if self.foreign and found:
            tree = self.node.getroottree()
            found = [(text, anchor) for text, anchor in found
                     if _outside(path := tree.getpath(anchor[0]), self.foreign)
                     and not (anchor[1] == "" and any(_within(item, path) for item in self.foreign))]
        return found

    def locate(self, anchor: tuple) -> DocumentLocation:
        return self.reader.location(*anchor)

    def exists(self, ref: XmlPath) -> bool:
        return bool(self.values(ref))


_CLARK = re.compile(r"\{([^}]*)\}")


def _prefixed(clark: str, prefixes: dict[str, str]) -> str:
    if clark.startswith("{"):
        uri, local = clark[1:].split("}", 1)
        return f"{prefixes[uri]}:{local}" if uri in prefixes else local
    return clark


class XmlReader(DocumentReader):
    source = "xml"

    def __init__(self, data: dict, where: str):
        options = data.get("document") or {}
        self.namespaces = {str(k): str(v) for k, v in (options.get("namespaces") or {}).items()}
        self.prefixes = {uri: prefix for prefix, uri in self.namespaces.items()}
        super().__init__(data, where)
        root = options.get("root")
        self.root = None
        if root:
            prefix, _, local = str(root).rpartition(":")
            if prefix and prefix not in self.namespaces:
                raise MappingError(f"{where}: document.root '{root}' uses an undeclared prefix '{prefix}'")
            self.root = f"{{{self.namespaces[prefix]}}}{local}" if prefix else local
        self.groups = {name: self.group(name, g, where) for name, g in (data.get("groups") or {}).items()}
        self.required = []                # (path, the group whose every node must carry it, or None)
        for path, spec in self.declared.items():
            if spec.get("in") and spec["in"] not in self.groups:
                raise MappingError(f"{where}: document.fields '{path}' names unknown group '{spec['in']}'")
            if spec.get("required"):
                self.required.append((self.compile(path, f"{where}: document.fields"), spec.get("in")))

    def compile(self, text: str, where: str) -> XmlPath:
        try:
            return XmlPath(str(text), etree.XPath(str(text), namespaces=self.namespaces))
        except etree.XPathSyntaxError as exc:
            raise MappingError(f"{where}: '{text}' is not an XPath ({exc})") from None

    def group(self, name: str, group: Any, where: str) -> dict:
        if not isinstance(group, dict) or "select" not in group:
            raise MappingError(f"{where}: group '{name}' needs 'select' (an XPath to the repeating element)")
        return {"select": self.compile(group["select"], f"{where}: group '{name}'")}

    def select(self, path: XmlPath, scope: XmlScope) -> list[XmlScope]:
        nodes = path.xpath(scope.node)
        tree = scope.node.getroottree()
        return [XmlScope(node, self, tree.getpath(node), frozenset(tree.getpath(n) for n in node.iter()))
                for node in (nodes if isinstance(nodes, list) else []) if isinstance(node, etree._Element)]

    def location(self, node: etree._Element, then: str = "") -> DocumentLocation:
        """``/rx:Prescription/rx:Items/rx:Item[2]`` (prefixes as the mapping declares them) and its line."""
        tree = node.getroottree()
        path = "/" + _prefixed(tree.getroot().tag, self.prefixes)
        below = tree.getelementpath(node)
        if below != ".":
            path += "/" + _CLARK.sub(lambda m: self._prefix_of(m.group(1)), below)
        return DocumentLocation(f"{path}/{then}" if then else path, node.sourceline)

    def _prefix_of(self, uri: str) -> str:
        return f"{self.prefixes[uri]}:" if uri in self.prefixes else ""

    def read(self, raw: bytes) -> ReadDocument:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
        try:
            root = etree.fromstring(raw, parser)
        except etree.XMLSyntaxError as exc:
            line, column = exc.position
            return _bad_document(f"not well-formed XML: {exc.msg}", f"line {line}, column {column}")
        dtd = root.getroottree().docinfo.internalDTD
        if dtd is not None and any(True for _ in dtd.iterentities()):
            # never expanded by the parser, but XPath string() would expand them (billion laughs)
            return _bad_document("documents that declare entities (<!ENTITY ...>) are not accepted",
                                 f"line {root.sourceline}")
        if self.root and root.tag != self.root:
            return _bad_document(f"the root element is {root.tag}, but mapping '{self.name}' reads "
                                 f"{self.root}", f"/{_prefixed(root.tag, self.prefixes)}")
        top = XmlScope(root, self)
        problems = []
        for ref, group_name in self.required:
            scopes = self.select(self.groups[group_name]["select"], top) if group_name else [top]
            for scope in scopes:
                if not scope.exists(ref):
                    problems.append(DocumentProblem(REQUIRED_MISSING, self.location(scope.node, ref.text), "required"))
        return ReadDocument([DocumentUnit("document", top, self._origin(top), problems)], [])


# ---------------------------------------------------------------------------------------------- CSV

@dataclass(frozen=True)
class CsvColumn:
    name: str


class CsvScope(PathScope):
    """One CSV row: its non-empty cells by header name, and its line in the file."""
    __slots__ = ("cells", "line")
    ids = None

    def __init__(self, cells: dict[str, str], line: int):
        self.cells = cells
        self.line = line

    def location(self, column: str) -> DocumentLocation:
        return DocumentLocation(f"line {self.line}, column '{column}'")

    def values(self, ref: CsvColumn) -> list[tuple[str, DocumentLocation]]:
        value = self.cells.get(ref.name)
        return [(value, self.location(ref.name))] if value is not None else []

    def exists(self, ref: CsvColumn) -> bool:
        return ref.name in self.cells


class CsvReader(DocumentReader):
    source = "csv"

    def __init__(self, data: dict, where: str):
        options = data.get("document") or {}
        self.delimiter = str(options.get("delimiter", ","))
        self.encoding = str(options.get("encoding", "utf-8"))
        if not options.get("fields"):
            raise MappingError(f"{where}: a csv mapping declares its columns under document.fields")
        super().__init__(data, where)
        self.schema = build_schema(self.declared, where, flat=True)

    def compile(self, text: str, where: str) -> CsvColumn:
        if str(text) not in self.declared:
            raise MappingError(f"{where}: column '{text}' is not declared under document.fields")
        return CsvColumn(str(text))

    def group(self, name: str, group: Any, where: str) -> dict:
        raise MappingError(f"{where}: a csv mapping has no groups: every row is one document")

    def read(self, raw: bytes) -> ReadDocument:
        encoding = "utf-8-sig" if self.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else self.encoding
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            line = raw[:exc.start].count(b"\n") + 1
            return _bad_document(f"byte {exc.start} is not {self.encoding} (the encoding mapping '{self.name}' "
                                 "declares)", f"line {line}")
        except LookupError:
            return _bad_document(f"mapping '{self.name}' declares an unknown encoding '{self.encoding}'", None)
        rows = csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter, strict=True)
        try:
            header = [name.strip() for name in next(rows)]
        except StopIteration:
            return _bad_document("the document is empty (no header line)", "line 1")
        except csv.Error as exc:
            return _bad_document(f"not CSV: {exc}", "line 1")
        missing = [name for name, spec in self.declared.items() if spec.get("required") and name not in header]
        if missing:
            return ReadDocument([], [DocumentProblem("the header has no such column", DocumentLocation(
                f"line 1, column '{name}'"), "required") for name in missing])
        units = []
        while True:
            try:
                row = next(rows)
            except StopIteration:
                break
            except csv.Error as exc:
                units.append(self._broken_row(rows.line_num, f"not CSV: {exc}"))
                break
            if not any(cell.strip() for cell in row):
                continue
            line = rows.line_num
            if len(row) != len(header):
                units.append(self._broken_row(line, f"{len(row)} values for the {len(header)} columns of the header"))
                continue
            scope = CsvScope({name: cell.strip() for name, cell in zip(header, row) if cell.strip()}, line)
            problems = [DocumentProblem(text, scope.location(pointer.lstrip("/")), code)
                        for pointer, text, code in schema_problems(self.schema, scope.cells)]
            units.append(DocumentUnit(f"line {line}", scope, self._origin(scope), problems))
        if not units:
            return _bad_document("the document has a header but no rows", "line 2", "required")
        return ReadDocument(units, [])

    def _broken_row(self, line: int, text: str) -> DocumentUnit:
        scope = CsvScope({}, line)
        return DocumentUnit(f"line {line}", scope, self._origin(scope),
                            [DocumentProblem(text, DocumentLocation(f"line {line}"), "structure")])


# --------------------------------------------------------------------------------------------- JSON

_JSON_TOKEN = re.compile(r"^([^\W\d][\w-]*)(?:\[(\d+|\*)\])?$")


@dataclass(frozen=True)
class JsonPath:
    text: str
    absolute: bool
    steps: tuple[tuple[str, str | None], ...]     # (key, None | "*" | "3")


def _pointer_token(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


class JsonScope(PathScope):
    """One JSON value (the document, or a group's item) and its JSON pointer."""
    __slots__ = ("node", "pointer", "root", "ids", "foreign")

    def __init__(self, node: Any, pointer: str, root: Any, ids: frozenset | None = None):
        self.node = node
        self.pointer = pointer
        self.root = root
        self.ids = ids
        self.foreign: tuple[str, ...] | None = None     # other items' pointers (DocumentGroups.view)

    @property
    def key(self) -> str:
        return self.pointer

    def walk(self, ref: JsonPath) -> list[tuple[Any, str]]:
        current = [(self.root, "")] if ref.absolute else [(self.node, self.pointer)]
        for key, index in ref.steps:
            found = []
            for value, pointer in current:
                if not isinstance(value, dict) or key not in value:
                    continue
                child, child_pointer = value[key], f"{pointer}/{_pointer_token(key)}"
                if index is None:
                    found.append((child, child_pointer))
                elif isinstance(child, list):
                    chosen = enumerate(child) if index == "*" else \
                        ([(int(index), child[int(index)])] if int(index) < len(child) else [])
                    found.extend((item, f"{child_pointer}/{i}") for i, item in chosen)
            current = found
        if self.foreign and current:
            current = [(value, pointer) for value, pointer in current if _outside(pointer, self.foreign)]
        return current

    def values(self, ref: JsonPath) -> list[tuple[str, DocumentLocation]]:
        found = []
        for value, pointer in self.walk(ref):
            items = [(v, f"{pointer}/{i}") for i, v in enumerate(value)] if isinstance(value, list) else [(value, pointer)]
            for item, item_pointer in items:
                if self.foreign and not _outside(item_pointer, self.foreign):
                    continue
                if isinstance(item, bool):
                    text = "true" if item else "false"
                elif isinstance(item, (str, int, float)):
                    text = str(item).strip()
                else:
                    continue            # objects and nulls carry no value of their own
                if text:
                    found.append((text, DocumentLocation(item_pointer)))
        return found

    def exists(self, ref: JsonPath) -> bool:
        return bool(self.walk(ref))


def _pointers(node: Any, pointer: str):
    """The JSON pointers of a value and of everything inside it."""
    yield pointer
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from _pointers(child, f"{pointer}/{_pointer_token(key)}")


def parse_json_path(text: str, where: str) -> JsonPath:
    text = str(text).strip()
    absolute = text.startswith("$")
    body = text[1:].lstrip(".") if absolute else text
    steps = []
    for token in body.split(".") if body else []:
        match = _JSON_TOKEN.match(token)
        if not match:
            raise MappingError(f"{where}: '{text}' is not a path like 'patient.mrn' or 'items[*].dose.value'")
        steps.append((match.group(1), match.group(2)))
    return JsonPath(text, absolute, tuple(steps))


class JsonReader(DocumentReader):
    source = "json"

    def __init__(self, data: dict, where: str):
        super().__init__(data, where)
        self.schema = build_schema(self.declared, where)

    def compile(self, text: str, where: str) -> JsonPath:
        return parse_json_path(text, where)

    def group(self, name: str, group: Any, where: str) -> dict:
        if not isinstance(group, dict) or "select" not in group:
            raise MappingError(f"{where}: group '{name}' needs 'select' (a path to the repeating items)")
        return {"select": self.compile(group["select"], f"{where}: group '{name}'")}

    def select(self, path: JsonPath, scope: JsonScope) -> list[JsonScope]:
        return [JsonScope(node, pointer, scope.root, frozenset(_pointers(node, pointer)))
                for node, pointer in scope.walk(path)]

    def read(self, raw: bytes) -> ReadDocument:
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _bad_document(f"not JSON: {exc.msg}", f"line {exc.lineno}, column {exc.colno}")
        problems = [DocumentProblem(text, DocumentLocation(pointer or "/"), code)
                    for pointer, text, code in schema_problems(self.schema, document)]
        top = JsonScope(document, "", document)
        return ReadDocument([DocumentUnit("document", top, self._origin(top), problems)], [])


# ------------------------------------------------------------------------- schemas from the mapping

_TYPES = {
    "string": lambda **kw: mm.String(**kw),
    "number": lambda **kw: mm.Float(allow_nan=False, **kw),
    "integer": lambda **kw: mm.Integer(**kw),
    "boolean": lambda **kw: mm.Boolean(**kw),
    "date": lambda **kw: mm.Date(**kw),
    "datetime": lambda **kw: mm.DateTime(**kw),
    "any": lambda **kw: mm.Raw(**kw),
}


def build_schema(declared: dict[str, dict], where: str, flat: bool = False) -> Schema:
    """A marshmallow schema from a mapping's ``document.fields``: ``items[*].dose.value: {type:
    number, required: true}`` becomes a list of objects with a required number inside. A container
    is required when anything declared inside it is; keys nobody declared pass through. ``flat``:
    names are plain keys (CSV header names may hold dots and spaces)."""
    tree: dict = {}
    for path, spec in declared.items():
        if spec.get("type", "string") not in _TYPES:
            raise MappingError(f"{where}: document.fields '{path}' has unknown type '{spec.get('type')}' "
                               f"(known: {', '.join(_TYPES)})")
        steps = ((path, None),) if flat else parse_json_path(path, f"{where}: document.fields").steps
        node = tree
        for depth, (key, index) in enumerate(steps):
            entry = node.setdefault(key, {"list": False, "children": {}, "spec": {}, "required": False})
            entry["list"] = entry["list"] or index is not None
            entry["required"] = entry["required"] or bool(spec.get("required"))
            if depth == len(steps) - 1:
                entry["spec"] = spec
            node = entry["children"]
    return _schema(tree)


def _schema(tree: dict) -> Schema:
    attrs = {}
    for key, entry in tree.items():
        options = {"required": entry["required"], "allow_none": not entry["required"],
                   "error_messages": {"required": REQUIRED_MISSING, "null": REQUIRED_MISSING}}
        attrs[key] = mm.List(_field(entry), **options) if entry["list"] else _field(entry, **options)
    return Schema.from_dict(attrs)(unknown=INCLUDE)


def _field(entry: dict, **options: Any) -> mm.Field:
    if entry["children"]:
        return mm.Nested(_schema(entry["children"]), **options)
    return _TYPES[entry["spec"].get("type", "string")](**options)


def schema_problems(schema: Schema, document: Any) -> list[tuple[str, str, str]]:
    """marshmallow's nested error dict -> (JSON pointer, message, FHIR issue type), in document order."""
    found: list[tuple[str, str, str]] = []

    def walk(errors: Any, pointer: str) -> None:
        if isinstance(errors, dict):
            for key, value in errors.items():
                walk(value, pointer if key == "_schema" else f"{pointer}/{_pointer_token(key)}")
        elif isinstance(errors, list):
            for message in errors:
                if isinstance(message, (dict, list)):
                    walk(message, pointer)
                else:
                    code = "required" if message == REQUIRED_MISSING else "value"
                    found.append((pointer, str(message), code))

    walk(schema.validate(document) if isinstance(document, dict) else {"_schema": ["the document is not a JSON object"]},
         "")
    return found


_READERS = {"xml": XmlReader, "csv": CsvReader, "json": JsonReader}


def document_reader(source: str, data: dict, where: str) -> DocumentReader:
    reader_class = _READERS.get(source)
    if reader_class is None:
        raise MappingError(f"{where}: unknown source '{source}' (known: hl7v2, {', '.join(_READERS)})")
    reader = reader_class(data, where)
    reader.precompile_conditions(data, where)
    return reader
