"""What a mapping file may say, checked when it loads: ``file:line: message`` for every mistake.

The engine (``engine.py``) builds rules from a mapping file and runs them; the checks that need no
message live here: where in the file a row is (``yaml_lines``), conditions that parse, converter
arguments that exist, and the tables and code systems a row names (``tables.yaml``,
``code_systems.yaml``). ``fhir-gateway mappings check`` and the gateway's start-up use the same
checks, so what the command reports is what would stop the gateway.
"""
from __future__ import annotations

import inspect
from typing import Any

from gateway.mapping.scoping import FieldRef, MappingError
from gateway.mapping.terminology import Terminology
from gateway.mapping.yaml_lines import line_of

def at(file: str, node: Any, key: Any = None) -> str:
    """``file:line`` of ``node`` (or of its ``key``) when the file was read with line numbers."""
    line = line_of(node, key)
    return f"{file}:{line}" if line else file


def relocate(where: str, line: int | None) -> str:
    """``where`` (``file[:line]: what``) with the line of a nearer row."""
    if not line:
        return where
    head, _sep, rest = where.partition(": ")
    return f"{head.split(':')[0]}:{line}: {rest}"


_CONDITION_KEYS = {"any", "all", "not", "present", "absent", "field"}


def check_condition(when: Any, where: str, reader: Any) -> None:
    """A ``when:`` (or ``present:``) condition parses: known keys, each path readable by the mapping."""
    if not isinstance(when, dict) or not (set(when) & _CONDITION_KEYS):
        raise MappingError(f"{where}: a condition is {{field: X, in: [...]}}, {{present: X}}, {{absent: X}}, "
                           f"{{any: [...]}}, {{all: [...]}} or {{not: {{...}}}}; found {when!r}")
    unknown = set(when) - _CONDITION_KEYS - {"in"}
    if unknown:
        raise MappingError(f"{where}: unknown condition key(s) {', '.join(sorted(map(str, unknown)))}")
    for key in ("any", "all"):
        if key in when:
            if not isinstance(when[key], list):
                raise MappingError(f"{where}: '{key}' takes a list of conditions")
            for inner in when[key]:
                check_condition(inner, where, reader)
    if "not" in when:
        check_condition(when["not"], where, reader)
    for key in ("present", "absent", "field"):
        if key in when:
            if reader.source == "hl7v2":
                FieldRef.parse(when[key], where)
            elif when[key] not in getattr(reader, "condition_paths", {}):
                reader.compile(when[key], where)
    if "field" in when and not isinstance(when.get("in"), list):
        raise MappingError(f"{where}: {{field: {when['field']}}} needs 'in: [values]'")


def check_arguments(element: Any, where: str) -> None:
    """Every ``args:`` name is a parameter of the converter, and its required ones are given."""
    parameters = list(inspect.signature(element.func).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    fed = {"ctx"} | set(element.named_sources) | ({parameters[1].name} if element.sources and len(parameters) > 1
                                                   else set())
    takes = [p.name for p in parameters if p.name not in fed and p.kind is not p.VAR_POSITIONAL]
    unknown = [name for name in element.args if name not in takes]
    if unknown:
        raise MappingError(f"{where}: converter '{element.converter}' takes no argument "
                           f"{', '.join(repr(n) for n in unknown)} (it takes: {', '.join(takes) or 'none'})")
    missing = [p.name for p in parameters if p.name not in fed and p.name not in element.args
               and p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing and element.sources:
        raise MappingError(f"{where}: converter '{element.converter}' needs argument(s) "
                           f"{', '.join(repr(n) for n in missing)} under 'args'")



def file_and_line(problem: str) -> tuple[str, int]:
    head = problem.split(": ", 1)[0]
    file, _sep, line = head.rpartition(":")
    return (file, int(line)) if line.isdigit() else (head, 0)


_TABLE_ARGUMENTS = ("table", "original")
_SYSTEM_ARGUMENTS = ("system", "default_system")


def terminology_problems(spec: Any, terminology: Terminology) -> list[str]:
    """Tables (``args: {table: "0250"}``) and code systems (``args: {system: CN-NMPA}``) a mapping
    names that ``tables.yaml`` and ``code_systems.yaml`` do not have."""
    problems: list[str] = []

    def rows(rules: list) -> None:
        for rule in rules:
            for name in _TABLE_ARGUMENTS:
                table = rule.args.get(name)
                if isinstance(table, (str, int)) and not ({str(table), f"{table}-display"} & set(terminology.tables)):
                    problems.append(f"{rule.where}: table '{table}' is not in tables.yaml")
            for name in _SYSTEM_ARGUMENTS:
                system = rule.args.get(name)
                if isinstance(system, str) and "{" not in system and not terminology.coding_system(system)[1]:
                    problems.append(f"{rule.where}: code system '{system}' is not in code_systems.yaml "
                                    "(add it under coding_systems or aliases, or write its URI)")
            rows(rule.children)

    for resource in spec.resources:
        rows(resource.elements)
    return list(dict.fromkeys(problems))
