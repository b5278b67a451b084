"""FHIRPath invariants (`ElementDefinition.constraint.expression`), compiled once per profile.

fhirpathpy is a complete FHIRPath engine, but it is slow for an ingest path: lc-mr-1 (the
imported-drug rule) takes ~350 µs per evaluation on the example MedicationRequest (2-core VM),
so a few invariants per resource would cap validation at a few thousand resources/s. Profile
invariants are almost always the same few shapes (`a.b.where(x = 'y').exists() implies
c.exists()`), so this module compiles that subset into plain Python closures (lc-mr-1: ~10 µs)
and hands everything else to fhirpathpy:

    invariant = compile_invariant(expression, "MedicationRequest")
    invariant.engine      # 'fast' or 'fhirpathpy'
    invariant(node, root) # the result collection, e.g. [True]

The fast subset: paths (choice elements like `medication` resolved through the R4 model), `$this`,
`%resource`, string/integer/boolean literals, `{}`, `[n]`, `|`, `=`, `!=`, `and`, `or`, `xor`,
`implies`, and the functions `exists`, `empty`, `not`, `where`, `all`, `select`, `count`, `first`,
`last`, `hasValue`, `matches`, `startsWith`, `endsWith`, `length`, `isDistinct`. Anything else
(date comparison, arithmetic, `ofType`, `resolve()`, ...) raises `Unsupported` at compile time and
goes to fhirpathpy; a grammar error raises `FhirPathSyntaxError` (fhirpathpy would accept much of
it and fail, or quietly return nothing, at evaluation). `tests/validation/test_fhirpath_invariants.py`
checks the two engines agree on every invariant in `profiles/` over every example resource.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import fhirpathpy
from fhirpathpy.models import models as _fhirpath_models

from .model import R4Model, r4_model

Fn = Callable[[list, dict], list]

_BOOL, _STR, _INT = "System.Boolean", "System.String", "System.Integer"
_ANY_PRIMITIVE = frozenset({_BOOL, _STR, _INT})


class Unsupported(Exception):
    """The expression uses FHIRPath the fast path does not implement; use fhirpathpy."""


class FhirPathError(Exception):
    """Evaluation failed (e.g. a multi-item collection where one boolean was needed)."""


class FhirPathSyntaxError(ValueError):
    """Not FHIRPath at all. fhirpathpy accepts much of this at compile time and fails (or quietly
    returns nothing) at evaluation, so the fast parser's verdict is what rejects a broken profile."""


@dataclass(frozen=True, slots=True)
class Invariant:
    """A compiled invariant: call it with the context node and the root resource."""

    expression: str
    engine: str
    _fn: Callable[[Any, dict], list]

    def __call__(self, node: Any, root: dict) -> list:
        return self._fn(node, root)


def compile_invariant(expression: str, context_types: str | frozenset[str], *,
                      resource_type: str | None = None, model: R4Model | None = None) -> Invariant:
    """Compile with the fast path when possible, else with fhirpathpy (R4 model); syntax errors raise.

    `context_types` is the type of the element the invariant sits on (`Identifier`, a backbone
    path such as `Device.udiCarrier`, or the resource type); several for a choice element.
    `resource_type` types `%resource` when the context is an element.
    """
    model = model or r4_model()
    types = frozenset({context_types}) if isinstance(context_types, str) else frozenset(context_types)
    try:
        fn = _Compiler(model).compile(expression, types, resource_type)
        return Invariant(expression, "fast", fn)
    except Unsupported:
        pass
    slow = fhirpathpy.compile(expression, _fhirpath_models["r4"])

    def run_slow(node: Any, root: dict) -> list:
        return list(slow(node, {"resource": root, "rootResource": root}))

    return Invariant(expression, "fhirpathpy", run_slow)


def evaluate_with_fhirpathpy(expression: str, node: Any, root: dict) -> list:
    """Reference evaluation, for tests that hold the fast path to fhirpathpy's answers."""
    fn = fhirpathpy.compile(expression, _fhirpath_models["r4"])
    return list(fn(node, {"resource": root, "rootResource": root}))


# ---------------------------------------------------------------- tokens and syntax tree

_TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<str>'(?:[^'\\]|\\.)*')
  | (?P<num>\d+(?:\.\d+)?)
  | (?P<op><=|>=|!=|!~|\{\}|[=~<>|.(),\[\]+\-*/&])
  | (?P<var>\$this|\$index|\$total|%[A-Za-z_][A-Za-z0-9_]*|%`[^`]*`)
  | (?P<datetime>@[0-9T:.+\-Z]+)
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]*`)
""", re.X | re.S)

_CALENDAR_UNITS = frozenset({"year", "years", "month", "months", "week", "weeks", "day", "days", "hour", "hours",
                             "minute", "minutes", "second", "seconds", "millisecond", "milliseconds"})
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and i + 5 < len(body):
                out.append(chr(int(body[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise FhirPathSyntaxError(f"cannot read {text[pos:pos + 10]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        tokens.append((kind, m.group(kind)))
    tokens.append(("end", ""))
    return tokens


class _Parser:
    """Recursive descent over the FHIRPath grammar, precedence from the N1 specification."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        kind, val = self.take()
        if val != value:
            raise FhirPathSyntaxError(f"expected {value!r}, found {val or 'the end'!r}")

    def parse(self) -> tuple:
        node = self.implies()
        if self.peek()[0] != "end":
            raise FhirPathSyntaxError(f"unexpected {self.peek()[1]!r}")
        return node

    def _binary(self, sub: Callable[[], tuple], ops: tuple[str, ...], kind: str = "id") -> tuple:
        left = sub()
        while self.peek()[1] in ops and (self.peek()[0] == kind or kind == "op"):
            op = self.take()[1]
            left = ("binop", op, left, sub())
        return left

    def implies(self) -> tuple:
        return self._binary(self.or_, ("implies",))

    def or_(self) -> tuple:
        return self._binary(self.and_, ("or", "xor"))

    def and_(self) -> tuple:
        return self._binary(self.membership, ("and",))

    def membership(self) -> tuple:
        node = self.equality()
        if self.peek() in (("id", "in"), ("id", "contains")):
            raise Unsupported("in/contains")
        return node

    def equality(self) -> tuple:
        return self._binary(self.comparison, ("=", "!=", "~", "!~"), "op")

    def comparison(self) -> tuple:
        node = self.union()
        if self.peek()[1] in ("<", ">", "<=", ">="):
            raise Unsupported("comparison operators")
        return node

    def union(self) -> tuple:
        node = self._binary(self.postfix, ("|",), "op")
        if self.peek()[1] in ("+", "-", "*", "/", "&") or self.peek() in (("id", "is"), ("id", "as"),
                                                                          ("id", "div"), ("id", "mod")):
            raise Unsupported("arithmetic and type operators")
        return node

    def postfix(self) -> tuple:
        node = self.term()
        while True:
            kind, val = self.peek()
            if val == ".":
                self.take()
                name = self._identifier()
                if self.peek()[1] == "(":
                    node = ("call", node, name, self._args())
                else:
                    node = ("nav", node, name)
            elif val == "[":
                self.take()
                index = self.implies()
                self.expect("]")
                node = ("index", node, index)
            else:
                return node

    def _identifier(self) -> str:
        kind, val = self.take()
        if kind != "id":
            raise FhirPathSyntaxError(f"expected a name, found {val or 'the end'!r}")
        return val[1:-1] if val.startswith("`") else val

    def _args(self) -> list[tuple]:
        self.expect("(")
        args: list[tuple] = []
        if self.peek()[1] == ")":
            self.take()
            return args
        while True:
            args.append(self.implies())
            kind, val = self.take()
            if val == ")":
                return args
            if val != ",":
                raise FhirPathSyntaxError(f"expected ',' or ')', found {val or 'the end'!r}")

    def term(self) -> tuple:
        kind, val = self.peek()
        if kind == "str":
            self.take()
            return ("lit", _unescape(val[1:-1]), _STR)
        if kind == "num":
            self.take()
            if "." in val or self.peek()[0] == "str" or self.peek()[1] in _CALENDAR_UNITS:
                raise Unsupported("decimal and quantity literals")
            return ("lit", int(val), _INT)
        if kind == "datetime":
            raise Unsupported("date/time literals")
        if val == "{}":
            self.take()
            return ("empty",)
        if val == "(":
            self.take()
            node = self.implies()
            self.expect(")")
            return node
        if kind == "var":
            self.take()
            if val == "$this":
                return ("this",)
            if val in ("%resource", "%rootResource"):
                return ("resource",)
            raise Unsupported(f"variable {val}")
        if kind == "id":
            if val in ("true", "false"):
                self.take()
                return ("lit", val == "true", _BOOL)
            name = self._identifier()
            if self.peek()[1] == "(":
                return ("call", ("this",), name, self._args())
            return ("nav", ("this",), name)
        raise FhirPathSyntaxError(f"unexpected {val or 'end of expression'!r}")


# ---------------------------------------------------------------- evaluation helpers

def _to_bool(coll: list) -> bool | None:
    """FHIRPath singleton evaluation of a collection in a boolean context."""
    if not coll:
        return None
    if len(coll) > 1:
        raise FhirPathError("a boolean was expected but the collection has several items")
    value = coll[0]
    return value if type(value) is bool else True


def _equal(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    return a == b


def _contains(items: list, value: Any) -> bool:
    return any(_equal(x, value) for x in items)


class _Compiler:
    """Turns the syntax tree into closures, tracking static types so choice names resolve."""

    def __init__(self, model: R4Model) -> None:
        self.model = model

    def compile(self, expression: str, context_types: frozenset[str],
                resource_type: str | None = None) -> Callable[[Any, dict], list]:
        tree = _Parser(expression).parse()
        root_type = resource_type or next((t for t in context_types if self.model.is_resource(t)), "Resource")
        fn, _ = self._node(tree, context_types, context_types, root_type)

        def run(node: Any, root: dict) -> list:
            return fn([node], root)

        return run

    # Each compiled node is fn(focus, root) -> collection; `types` are the focus's static types.
    def _node(self, node: tuple, types: frozenset, this_types: frozenset, root_type: str) -> tuple[Fn, frozenset]:
        kind = node[0]
        if kind == "lit":
            value = node[1]
            return (lambda focus, root: [value]), frozenset({node[2]})
        if kind == "empty":
            return (lambda focus, root: []), frozenset()
        if kind == "this":
            return (lambda focus, root: focus), this_types
        if kind == "resource":
            return (lambda focus, root: [root]), frozenset({root_type})
        if kind == "nav":
            return self._nav(node, types, this_types, root_type)
        if kind == "index":
            src, src_types = self._node(node[1], types, this_types, root_type)
            idx_fn, _ = self._node(node[2], types, this_types, root_type)

            def index(focus: list, root: dict) -> list:
                items = src(focus, root)
                pos = idx_fn(focus, root)
                if len(pos) != 1 or type(pos[0]) is not int:
                    return []
                return [items[pos[0]]] if 0 <= pos[0] < len(items) else []

            return index, src_types
        if kind == "binop":
            return self._binop(node, types, this_types, root_type)
        if kind == "call":
            return self._call(node, types, this_types, root_type)
        raise Unsupported(kind)

    def _nav(self, node: tuple, types: frozenset, this_types: frozenset, root_type: str) -> tuple[Fn, frozenset]:
        src, src_types = self._node(node[1], types, this_types, root_type)
        name = node[2]
        # `MedicationRequest.status`: a leading type name qualifies the context, it is not an element.
        if node[1] == ("this",) and name in src_types and name[:1].isupper():
            return src, src_types
        keys: list[str] = []
        out_types: set[str] = set()
        for t in src_types:
            if t in _ANY_PRIMITIVE:
                continue
            child = self.model.child(t, name)
            if child is None:
                continue
            for key, type_code in child.variants:
                if key not in keys:
                    keys.append(key)
                out_types.add(type_code)
        if not keys:
            raise Unsupported(f"no element {name!r} on {sorted(src_types)}")
        key_tuple = tuple(keys)
        if node[1] == ("this",) and len(key_tuple) == 1:
            (only_key,) = key_tuple

            def nav_this(focus: list, root: dict) -> list:      # `name` on the focus: the common case
                out: list = []
                for item in focus:
                    if type(item) is dict:
                        value = item.get(only_key)
                        if value is None:
                            continue
                        if type(value) is list:
                            out.extend(v for v in value if v is not None)
                        else:
                            out.append(value)
                return out
            return nav_this, frozenset(out_types)

        def nav(focus: list, root: dict) -> list:
            out: list = []
            for item in src(focus, root):
                if type(item) is not dict:
                    continue
                for key in key_tuple:
                    value = item.get(key)
                    if value is None:
                        continue
                    if type(value) is list:
                        out.extend(v for v in value if v is not None)
                    else:
                        out.append(value)
            return out

        return nav, frozenset(out_types)

    def _binop(self, node: tuple, types: frozenset, this_types: frozenset, root_type: str) -> tuple[Fn, frozenset]:
        op = node[1]
        left, left_types = self._node(node[2], types, this_types, root_type)
        right, right_types = self._node(node[3], types, this_types, root_type)
        boolean = frozenset({_BOOL})
        if op == "|":
            def union(focus: list, root: dict) -> list:
                out: list = []
                for item in left(focus, root) + right(focus, root):
                    if not _contains(out, item):
                        out.append(item)
                return out
            return union, left_types | right_types
        if op in ("=", "!=") and node[3][0] == "lit" and type(node[3][1]) is str:
            negate, literal = op == "!=", node[3][1]

            def equals_literal(focus: list, root: dict) -> list:   # `system = '...'`
                a = left(focus, root)
                if not a:
                    return []
                return [(len(a) == 1 and type(a[0]) is str and a[0] == literal) != negate]
            return equals_literal, boolean
        if op in ("=", "!="):
            negate = op == "!="

            def equals(focus: list, root: dict) -> list:
                a, b = left(focus, root), right(focus, root)
                if not a or not b:
                    return []
                same = len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
                return [same != negate]
            return equals, boolean
        if op in ("~", "!~"):
            raise Unsupported("equivalence")
        if op == "and":
            def and_(focus: list, root: dict) -> list:
                a = _to_bool(left(focus, root))
                if a is False:
                    return [False]
                b = _to_bool(right(focus, root))
                if b is False:
                    return [False]
                return [True] if a and b else []
            return and_, boolean
        if op == "or":
            def or_(focus: list, root: dict) -> list:
                a = _to_bool(left(focus, root))
                if a is True:
                    return [True]
                b = _to_bool(right(focus, root))
                if b is True:
                    return [True]
                return [False] if a is False and b is False else []
            return or_, boolean
        if op == "xor":
            def xor(focus: list, root: dict) -> list:
                a, b = _to_bool(left(focus, root)), _to_bool(right(focus, root))
                return [] if a is None or b is None else [a != b]
            return xor, boolean
        if op == "implies":
            def implies(focus: list, root: dict) -> list:
                a = _to_bool(left(focus, root))
                if a is False:
                    return [True]
                b = _to_bool(right(focus, root))
                if a is True:
                    return [] if b is None else [b]
                return [True] if b is True else []
            return implies, boolean
        raise Unsupported(op)

    def _call(self, node: tuple, types: frozenset, this_types: frozenset, root_type: str) -> tuple[Fn, frozenset]:
        _, target, name, args = node
        src, src_types = self._node(target, types, this_types, root_type)
        boolean = frozenset({_BOOL})

        def criteria(index: int = 0) -> Fn:
            fn, _ = self._node(args[index], src_types, src_types, root_type)
            return fn

        def literal_string(index: int = 0) -> str:
            arg = args[index]
            if arg[0] != "lit" or not isinstance(arg[1], str):
                raise Unsupported(f"{name}() with a computed argument")
            return arg[1]

        nargs = len(args)
        if name == "exists" and nargs == 0 and target[0] == "call" and target[2] == "where" and len(target[3]) == 1:
            # `x.where(c).exists()` stops at the first match instead of building the filtered list
            inner, inner_types = self._node(target[1], types, this_types, root_type)
            crit, _ = self._node(target[3][0], inner_types, inner_types, root_type)
            return (lambda focus, root: [any(crit([x], root) == [True] for x in inner(focus, root))]), boolean
        if name == "exists" and nargs <= 1:
            if nargs == 0:
                return (lambda focus, root: [bool(src(focus, root))]), boolean
            crit = criteria()
            return (lambda focus, root: [any(crit([x], root) == [True] for x in src(focus, root))]), boolean
        if name == "empty" and nargs == 0:
            return (lambda focus, root: [not src(focus, root)]), boolean
        if name == "not" and nargs == 0:
            def not_(focus: list, root: dict) -> list:
                value = _to_bool(src(focus, root))
                return [] if value is None else [not value]
            return not_, boolean
        if name == "where" and nargs == 1:
            crit = criteria()
            return (lambda focus, root: [x for x in src(focus, root) if crit([x], root) == [True]]), src_types
        if name == "all" and nargs == 1:
            crit = criteria()
            return (lambda focus, root: [all(crit([x], root) == [True] for x in src(focus, root))]), boolean
        if name == "select" and nargs == 1:
            proj, proj_types = self._node(args[0], src_types, src_types, root_type)

            def select(focus: list, root: dict) -> list:
                out: list = []
                for x in src(focus, root):
                    out.extend(proj([x], root))
                return out
            return select, proj_types
        if name == "count" and nargs == 0:
            return (lambda focus, root: [len(src(focus, root))]), frozenset({_INT})
        if name == "first" and nargs == 0:
            return (lambda focus, root: src(focus, root)[:1]), src_types
        if name == "last" and nargs == 0:
            return (lambda focus, root: src(focus, root)[-1:]), src_types
        if name == "hasValue" and nargs == 0:
            def has_value(focus: list, root: dict) -> list:
                items = src(focus, root)
                return [len(items) == 1 and type(items[0]) is not dict]
            return has_value, boolean
        if name == "isDistinct" and nargs == 0:
            def is_distinct(focus: list, root: dict) -> list:
                items = src(focus, root)
                return [all(not _equal(items[i], items[j])
                            for i in range(len(items)) for j in range(i + 1, len(items)))]
            return is_distinct, boolean
        if name in ("matches", "startsWith", "endsWith") and nargs == 1:
            text = literal_string()
            if name == "matches":
                pattern = re.compile(text, re.DOTALL)
                test: Callable[[str], bool] = lambda s: pattern.search(s) is not None
            elif name == "startsWith":
                test = lambda s: s.startswith(text)
            else:
                test = lambda s: s.endswith(text)

            def string_test(focus: list, root: dict) -> list:
                items = src(focus, root)
                if not items:
                    return []
                if len(items) > 1:
                    raise FhirPathError(f"{name}() needs a single string")
                if not isinstance(items[0], str):
                    raise FhirPathError(f"{name}() needs a string, found {type(items[0]).__name__}")
                return [test(items[0])]
            return string_test, boolean
        if name == "length" and nargs == 0:
            def length(focus: list, root: dict) -> list:
                items = src(focus, root)
                if not items:
                    return []
                if len(items) > 1 or not isinstance(items[0], str):
                    raise FhirPathError("length() needs a single string")
                return [len(items[0])]
            return length, frozenset({_INT})
        raise Unsupported(f"function {name}()")
