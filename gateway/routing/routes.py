"""``routes.yaml``: named destinations and the rules that send resources to them.

    destinations:
      prescription-center:
        base_url: ${EPC_FHIR_BASE:-http://127.0.0.1:9101/fhir}   # ${VAR} / ${VAR:-default} from the environment
        organization: HAINAN_EPC        # facility code of the receiving organization (security filters on it)
        mode: resource                  # resource | transaction | message
        identity: id                    # resource mode: PUT Type/id, or `identifier` (conditional PUT on it)
        timeout: 10
        auth: {type: oauth2, token_url: ..., client_id: ..., client_secret: ${EPC_SECRET}, scope: ...}
        retry: {max_attempts: 10, max_age: 86400, backoff_base: 2, backoff_cap: 600}
    rules:
      - name: prescriptions
        resource: [MedicationRequest, MedicationDispense]
        message_type: ["RDE^*", "csv:*"]      # optional, fnmatch patterns on the source message type
        sender: [BOAO_*]                      # optional, patterns on the sending facility
        where: "seriousness.coding.where(code = 'serious').exists()"   # optional FHIRPath, true to match
        to: [prescription-center]             # or  hold: "why"  (deliveries kept back for review)

Everything is checked when the file is loaded; a mistake raises :class:`RoutesError` naming the
file and line, so a gateway never starts with rules it cannot follow. FHIRPath conditions compile
with :func:`gateway.validation.fhirpath.compile_invariant`, the engine the profile validator uses
(its fast path for the usual ``where(...).exists()`` shapes, fhirpathpy for the rest), so the
repository has one FHIRPath implementation and a rule costs microseconds per resource.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Mapping

import yaml

from gateway.validation.fhirpath import FhirPathSyntaxError, Invariant, compile_invariant
from gateway.validation.model import r4_model

MODES = ("resource", "transaction", "message")
IDENTITIES = ("id", "identifier")
AUTH_TYPES = ("none", "bearer", "oauth2")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RoutesError(ValueError):
    """routes.yaml cannot be followed; the message names file and line."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    max_age: float = 24 * 3600.0          # seconds after routing; older failures go to the dead letters
    backoff_base: float = 2.0             # first retry after ~base seconds, doubling, jittered
    backoff_cap: float = 600.0


@dataclass(frozen=True)
class Auth:
    type: str = "none"
    token: str = ""                       # bearer
    token_url: str = ""                   # oauth2 client credentials
    client_id: str = ""
    client_secret: str = ""
    scope: str = ""


@dataclass(frozen=True)
class Destination:
    name: str
    base_url: str
    organization: str | None = None
    mode: str = "resource"
    identity: str = "id"
    timeout: float = 10.0
    auth: Auth = field(default_factory=Auth)
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Rule:
    name: str
    line: int
    resource_types: frozenset[str] | None
    message_types: tuple[str, ...] | None
    senders: tuple[str, ...] | None
    where: str | None
    conditions: Mapping[str, Invariant]       # compiled `where`, per resource type
    destinations: tuple[str, ...]
    hold: str | None

    def matches(self, resource: dict, message_type: str | None, sender: str | None) -> bool:
        res_type = resource.get("resourceType")
        if self.resource_types is not None and res_type not in self.resource_types:
            return False
        if self.message_types is not None and not any(fnmatchcase(message_type or "", p) for p in self.message_types):
            return False
        if self.senders is not None and not any(fnmatchcase(sender or "", p) for p in self.senders):
            return False
        if self.where is None:
            return True
        try:
            return self.conditions[res_type](resource, resource) == [True]
        except Exception:  # noqa: BLE001 - a condition that cannot be evaluated on this content does not match
            return False


@dataclass(frozen=True)
class Routes:
    source: str
    destinations: Mapping[str, Destination]
    rules: tuple[Rule, ...]

    @classmethod
    def empty(cls) -> "Routes":
        return cls("(no routes)", {}, ())


def load_routes(path: str | os.PathLike | None, environ: Mapping[str, str] | None = None) -> Routes:
    """Read and check a routes file; an empty path means no routing at all."""
    if not path:
        return Routes.empty()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RoutesError(f"{path}: cannot read the routes file ({exc.strerror})") from exc
    return parse_routes(text, str(path), os.environ if environ is None else environ)


def parse_routes(text: str, source: str = "routes.yaml", environ: Mapping[str, str] | None = None) -> Routes:
    environ = {} if environ is None else environ
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass that records lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise RoutesError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    checker = _Checker(source, environ)
    if doc is None:
        return Routes(source, {}, ())
    checker.mapping(doc, "the routes file", {"destinations", "rules", "defaults"})
    defaults = doc.get("defaults") or _LineDict()
    checker.mapping(defaults, "defaults", {"retry", "timeout"})
    destinations = {}
    raw_destinations = doc.get("destinations") or _LineDict()
    checker.mapping(raw_destinations, "destinations", None)
    for name, spec in raw_destinations.items():
        destinations[name] = checker.destination(name, spec, raw_destinations, defaults)
    rules = []
    raw_rules = doc.get("rules") or []
    if not isinstance(raw_rules, list):
        raise RoutesError(f"{source}:{_line(doc)}: 'rules' must be a list")
    seen: dict[str, int] = {}
    for spec in raw_rules:
        rule = checker.rule(spec, destinations)
        if rule.name in seen:
            raise RoutesError(f"{source}:{rule.line}: rule name '{rule.name}' is used twice "
                              f"(first at line {seen[rule.name]})")
        seen[rule.name] = rule.line
        rules.append(rule)
    return Routes(source, destinations, tuple(rules))


# ---------------------------------------------------------------- checking

class _LineDict(dict):
    line = 0


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings remember the line they start on (for error messages)."""


def _construct_line_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _LineDict:
    mapping = _LineDict(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_line_mapping)


def _line(node: Any) -> int:
    return getattr(node, "line", 0)


class _Checker:
    def __init__(self, source: str, environ: Mapping[str, str]):
        self.source = source
        self.environ = environ
        self.model = r4_model()

    def fail(self, node: Any, text: str) -> RoutesError:
        line = _line(node)
        return RoutesError(f"{self.source}:{line}: {text}" if line else f"{self.source}: {text}")

    def mapping(self, node: Any, what: str, allowed: set[str] | None) -> None:
        if not isinstance(node, dict):
            raise self.fail(node, f"{what} must be a mapping")
        if allowed is not None:
            unknown = sorted(set(node) - allowed)
            if unknown:
                raise self.fail(node, f"{what}: unknown key(s) {', '.join(map(str, unknown))}; "
                                      f"allowed: {', '.join(sorted(allowed))}")

    def text(self, node: Any, value: Any, what: str, required: bool = True) -> str:
        if value is None or value == "":
            if required:
                raise self.fail(node, f"{what} is required")
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise self.fail(node, f"{what} must be a string")
        return self.expand(node, str(value), what)

    def expand(self, node: Any, value: str, what: str) -> str:
        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            raise self.fail(node, f"{what}: environment variable {name} is not set (write ${{{name}:-default}} "
                                  "for a default)")
        return _VAR.sub(sub, value)

    def number(self, node: Any, value: Any, what: str, minimum: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise self.fail(node, f"{what} must be a number >= {minimum:g}, not {value!r}")
        return float(value)

    def names(self, node: Any, value: Any, what: str) -> tuple[str, ...] | None:
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
            raise self.fail(node, f"{what} must be a name or a non-empty list of names")
        return tuple(items)

    def retry(self, node: Any, spec: Any, base: RetryPolicy) -> RetryPolicy:
        if spec is None:
            return base
        self.mapping(spec, "retry", {"max_attempts", "max_age", "backoff_base", "backoff_cap"})
        return RetryPolicy(
            max_attempts=int(self.number(spec, spec.get("max_attempts", base.max_attempts), "retry.max_attempts", 1)),
            max_age=self.number(spec, spec.get("max_age", base.max_age), "retry.max_age", 0),
            backoff_base=self.number(spec, spec.get("backoff_base", base.backoff_base), "retry.backoff_base", 0),
            backoff_cap=self.number(spec, spec.get("backoff_cap", base.backoff_cap), "retry.backoff_cap", 0))

    def auth(self, node: Any, spec: Any, name: str) -> Auth:
        if spec is None or spec == "none":
            return Auth()
        self.mapping(spec, f"destination {name}: auth",
                     {"type", "token", "token_url", "client_id", "client_secret", "scope"})
        kind = spec.get("type", "none")
        if kind not in AUTH_TYPES:
            raise self.fail(spec, f"destination {name}: auth type must be one of {', '.join(AUTH_TYPES)}, not {kind!r}")
        if kind == "bearer":
            return Auth("bearer", token=self.text(spec, spec.get("token"), f"destination {name}: auth.token"))
        if kind == "oauth2":
            return Auth("oauth2",
                        token_url=self.url(spec, spec.get("token_url"), f"destination {name}: auth.token_url"),
                        client_id=self.text(spec, spec.get("client_id"), f"destination {name}: auth.client_id"),
                        client_secret=self.text(spec, spec.get("client_secret"),
                                                f"destination {name}: auth.client_secret"),
                        scope=self.text(spec, spec.get("scope"), f"destination {name}: auth.scope", required=False))
        return Auth()

    def url(self, node: Any, value: Any, what: str) -> str:
        text = self.text(node, value, what)
        if not re.match(r"^https?://[^/\s]+", text):
            raise self.fail(node, f"{what} must be an http(s) URL, not {text!r}")
        return text.rstrip("/")

    def destination(self, name: Any, spec: Any, parent: Any, defaults: dict) -> Destination:
        if not isinstance(name, str) or not NAME.match(name):
            raise self.fail(parent, f"destination name {name!r} must be letters, digits, '-', '_' or '.'")
        self.mapping(spec, f"destination {name}",
                     {"base_url", "organization", "mode", "identity", "timeout", "auth", "retry"})
        mode = spec.get("mode", "resource")
        if mode not in MODES:
            raise self.fail(spec, f"destination {name}: mode must be one of {', '.join(MODES)}, not {mode!r}")
        identity = spec.get("identity", "id")
        if identity not in IDENTITIES:
            raise self.fail(spec, f"destination {name}: identity must be one of {', '.join(IDENTITIES)}, "
                                  f"not {identity!r}")
        base_retry = self.retry(defaults, defaults.get("retry"), RetryPolicy())
        return Destination(
            name=name,
            base_url=self.url(spec, spec.get("base_url"), f"destination {name}: base_url"),
            organization=self.text(spec, spec.get("organization"), f"destination {name}: organization",
                                   required=False) or None,
            mode=mode, identity=identity,
            timeout=self.number(spec, spec.get("timeout", defaults.get("timeout", 10)),
                                f"destination {name}: timeout", 0.001),
            auth=self.auth(spec, spec.get("auth"), name),
            retry=self.retry(spec, spec.get("retry"), base_retry))

    def rule(self, spec: Any, destinations: Mapping[str, Destination]) -> Rule:
        self.mapping(spec, "a rule", {"name", "resource", "message_type", "sender", "where", "to", "hold"})
        name = spec.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise self.fail(spec, f"every rule needs a name (letters, digits, '-', '_', '.'), not {name!r}")
        types = self.names(spec, spec.get("resource"), f"rule {name}: resource")
        for res_type in types or ():
            if not self.model.is_resource(res_type):
                raise self.fail(spec, f"rule {name}: {res_type!r} is not a FHIR R4 resource type")
        to = self.names(spec, spec.get("to"), f"rule {name}: to") or ()
        for dest in to:
            if dest not in destinations:
                raise self.fail(spec, f"rule {name}: destination {dest!r} is not defined under destinations "
                                      f"(defined: {', '.join(destinations) or 'none'})")
        hold = spec.get("hold")
        if hold is not None and (not isinstance(hold, str) or not hold.strip()):
            raise self.fail(spec, f"rule {name}: hold must say why (a non-empty text)")
        if not to and hold is None:
            raise self.fail(spec, f"rule {name}: says neither where to send (to:) nor why to hold (hold:)")
        if to and hold is not None:
            raise self.fail(spec, f"rule {name}: a rule either sends (to:) or holds (hold:), not both")
        where = spec.get("where")
        conditions: dict[str, Invariant] = {}
        if where is not None:
            if not isinstance(where, str) or not where.strip():
                raise self.fail(spec, f"rule {name}: where must be a FHIRPath expression")
            if types is None:
                raise self.fail(spec, f"rule {name}: a where condition needs resource: (the type it is about)")
            for res_type in types:
                try:
                    conditions[res_type] = compile_invariant(where, res_type, resource_type=res_type)
                except FhirPathSyntaxError as exc:
                    raise self.fail(spec, f"rule {name}: where is not valid FHIRPath: {exc}") from exc
                except Exception as exc:  # noqa: BLE001 - fhirpathpy raises assorted errors on bad input
                    raise self.fail(spec, f"rule {name}: where cannot be compiled: {exc}") from exc
        return Rule(name=name, line=_line(spec), resource_types=frozenset(types) if types else None,
                    message_types=self.names(spec, spec.get("message_type"), f"rule {name}: message_type"),
                    senders=self.names(spec, spec.get("sender"), f"rule {name}: sender"),
                    where=where, conditions=conditions, destinations=tuple(to), hold=hold)
