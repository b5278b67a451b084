"""Value set membership from the ValueSets and CodeSystems in `profiles/`, without a terminology server.

The gateway checks bindings offline, so it can only answer what the local files say:

- an `include` with a `concept` list is exact: the code is in or out;
- an `include` of a whole system is exact when `profiles/` holds that CodeSystem with
  `content: complete`; with `content: fragment` (the Lecheng catalogues: only the entries the
  gateway has seen) a listed code is in and an unlisted one is *unknown*; a system with no local
  CodeSystem (ICD-10, HL7 v2 tables) accepts any code of that system as *unknown*;
- `filter`s are not evaluated (unknown).

So `contains()` returns True, False, or None for "cannot tell here". Callers raise a binding issue
only on False: a code we cannot check is never reported as wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _SystemPart:
    codes: set[str] = field(default_factory=set)
    complete: bool = True     # False: codes outside `codes` are unknown, not wrong


@dataclass(slots=True)
class Expansion:
    """What a value set holds, per code system, plus explicit exclusions."""

    systems: dict[str, _SystemPart] = field(default_factory=dict)
    excluded: set[tuple[str, str]] = field(default_factory=set)
    open: bool = False        # a filter or an unresolvable import: anything may be in it
    # Built by freeze(): the lookups `contains` makes on every bound element.
    _codes: frozenset[str] = frozenset()
    _excluded_codes: frozenset[str] = frozenset()
    _codes_unknown: bool = False

    def freeze(self) -> "Expansion":
        """Precompute the code-only lookups (a `code` element carries no system)."""
        self._codes = frozenset(c for part in self.systems.values() for c in part.codes)
        self._excluded_codes = frozenset(c for _, c in self.excluded)
        self._codes_unknown = self.open or any(not part.complete for part in self.systems.values())
        return self

    def contains(self, system: str | None, code: str) -> bool | None:
        if type(code) is not str or (system is not None and type(system) is not str):
            return None                 # malformed input: the structure backend reports it
        if system is None:
            if code in self._codes:
                return code not in self._excluded_codes
            return None if self._codes_unknown else False
        if self.excluded and (system, code) in self.excluded:
            return False
        part = self.systems.get(system)
        if part is None:
            return None if self.open else False
        if code in part.codes:
            return True
        return False if part.complete else None

    def enumerated_codes(self) -> frozenset[str] | None:
        """Every code a `code` element may take, when the local files list them all; else None."""
        return None if self._codes_unknown else self._codes - self._excluded_codes

    def listed_codes(self) -> list[str]:
        """Every enumerated code, for diagnostics that say what would have been right."""
        return [c for part in self.systems.values() for c in part.codes]


def _concept_codes(concepts: list[dict]) -> set[str]:
    codes: set[str] = set()
    for concept in concepts:
        codes.add(concept["code"])
        codes |= _concept_codes(concept.get("concept", []))
    return codes


class Terminology:
    """Expands the local value sets once and answers membership questions fast."""

    def __init__(self, value_sets: dict[str, dict], code_systems: dict[str, dict]) -> None:
        self._value_sets = value_sets
        self._code_systems = code_systems
        self._expansions: dict[str, Expansion | None] = {}

    def expansion(self, url: str) -> Expansion | None:
        """The expansion of a value set (version suffix `|4.0.1` tolerated), or None if not local."""
        if url in self._expansions:
            return self._expansions[url]
        self._expansions[url] = None          # guards against include cycles
        vs = self._value_sets.get(url) or self._value_sets.get(url.split("|", 1)[0])
        result = self._expand(vs).freeze() if vs is not None else None
        self._expansions[url] = result
        return result

    def contains(self, url: str, system: str | None, code: str) -> bool | None:
        """True/False when the local files decide it, None when they cannot (see module docstring)."""
        exp = self.expansion(url)
        return None if exp is None else exp.contains(system, code)

    def _expand(self, vs: dict) -> Expansion:
        exp = Expansion()
        compose = vs.get("compose", {})
        for inc in compose.get("include", []):
            self._include(exp, inc)
        for exc in compose.get("exclude", []):
            system = exc.get("system")
            for concept in exc.get("concept", []):
                exp.excluded.add((system, concept["code"]))
        for item in vs.get("expansion", {}).get("contains", []):
            if "system" in item and "code" in item:
                exp.systems.setdefault(item["system"], _SystemPart()).codes.add(item["code"])
        return exp

    def _include(self, exp: Expansion, inc: dict) -> None:
        for imported in inc.get("valueSet", []):
            sub = self.expansion(imported)
            if sub is None:
                exp.open = True
                continue
            for system, part in sub.systems.items():
                target = exp.systems.setdefault(system, _SystemPart())
                target.codes |= part.codes
                target.complete = target.complete and part.complete
            exp.excluded |= sub.excluded
            exp.open = exp.open or sub.open
        system = inc.get("system")
        if system is None:
            return
        part = exp.systems.setdefault(system, _SystemPart())
        if inc.get("filter"):
            part.complete = False
        elif inc.get("concept"):
            part.codes |= {c["code"] for c in inc["concept"]}
        else:
            cs = self._code_systems.get(system)
            if cs is None:
                part.complete = False
            else:
                part.codes |= _concept_codes(cs.get("concept", []))
                if cs.get("content") != "complete":
                    part.complete = False
