"""The conformance resources in `profiles/`: StructureDefinitions, ValueSets and CodeSystems.

`ProfileRegistry.load("profiles")` reads every `*.json` below the directory once, indexes each
resource by canonical URL and by `url|version`, expands the value sets, and compiles every
StructureDefinition's differential (including its FHIRPath invariants) into a rule tree. After
that nothing is parsed or compiled again: a Validator only walks the trees. Loading fails loudly
(`ProfileError`) on a profile the validator cannot honour, so a broken profile stops the gateway
at start-up instead of letting non-conforming data through.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson

from .conformance import compile_checks
from .model import r4_model
from .profile import CompiledProfile, ElementRule, ProfileError, compile_profile
from .terminology import Terminology

log = logging.getLogger(__name__)

_KINDS = ("StructureDefinition", "ValueSet", "CodeSystem")


class ProfileRegistry:
    """Canonical URL -> conformance resource, with compiled profiles and local terminology."""

    def __init__(self, resources: list[dict]) -> None:
        self._by_url: dict[str, dict] = {}
        self._compiled: dict[str, CompiledProfile] = {}
        self._defaults: dict[str, list[str]] = {}
        value_sets: dict[str, dict] = {}
        code_systems: dict[str, dict] = {}
        for res in resources:
            kind = res.get("resourceType")
            if kind not in _KINDS:
                raise ProfileError(f"{kind} is not a conformance resource this registry holds ({', '.join(_KINDS)})")
            url = res.get("url")
            if not url:
                raise ProfileError(f"{kind}/{res.get('id')} has no canonical url")
            if url in self._by_url and self._by_url[url].get("version") == res.get("version"):
                raise ProfileError(f"two resources claim {url}|{res.get('version')}")
            self._by_url[url] = res
            if res.get("version"):
                self._by_url[f"{url}|{res['version']}"] = res
            if kind == "ValueSet":
                value_sets[url] = res
            elif kind == "CodeSystem":
                code_systems[url] = res
        self.terminology = Terminology(value_sets, code_systems)
        model = r4_model()
        structure_definitions = [r for r in resources if r["resourceType"] == "StructureDefinition"]
        for sd in structure_definitions:
            compiled = compile_profile(sd, model, self._profile_type)
            self._compiled[sd["url"]] = compiled
            if sd.get("version"):
                self._compiled[f"{sd['url']}|{sd['version']}"] = compiled
            if sd.get("kind") == "resource":
                self._defaults.setdefault(sd["type"], []).append(sd["url"])
        for compiled in self._compiled.values():
            for rule in _walk(compiled.root):
                if rule.binding is not None:
                    rule.expansion = self.terminology.expansion(rule.binding.value_set)
        for url, compiled in self._compiled.items():
            if "|" not in url:
                compile_checks(compiled.root)
        self.extensions: dict[str, CompiledProfile] = {
            url: p for url, p in self._compiled.items() if p.type == "Extension" and "|" not in url}
        self.extension_namespaces: tuple[str, ...] = tuple(sorted({
            url.rsplit("/", 1)[0] + "/" for url in self.extensions}))
        self._warn_unresolved_bindings()

    @classmethod
    def load(cls, directory: str | Path) -> "ProfileRegistry":
        """Read every *.json under `directory` (recursively) and compile the profiles once."""
        root = Path(directory)
        if not root.is_dir():
            raise ProfileError(f"profile directory {root} does not exist")
        resources = []
        for path in sorted(root.rglob("*.json")):
            try:
                resources.append(orjson.loads(path.read_bytes()))
            except orjson.JSONDecodeError as exc:
                raise ProfileError(f"{path}: not JSON ({exc})") from exc
        return cls(resources)

    # ------------------------------------------------------------------ lookups
    def get(self, url: str) -> dict | None:
        """The conformance resource (as JSON) for a canonical URL, `url|version` accepted."""
        found = self._by_url.get(url)
        if found is None and "|" in url:
            found = self._by_url.get(url.split("|", 1)[0])
        return found

    def compiled(self, url: str) -> CompiledProfile | None:
        """The compiled form of a StructureDefinition, `url|version` accepted."""
        found = self._compiled.get(url)
        if found is None and "|" in url:
            found = self._compiled.get(url.split("|", 1)[0])
        return found

    def profiles_for(self, resource_type: str) -> list[str]:
        """Profiles applied to a resource type when neither the caller nor meta.profile name one."""
        return list(self._defaults.get(resource_type, []))

    def value_set_contains(self, url: str, system: str | None, code: str) -> bool | None:
        """Membership from local files: True/False, or None when they cannot tell (see terminology.py)."""
        return self.terminology.contains(url, system, code)

    def resources(self) -> Iterator[dict]:
        """Every loaded conformance resource once."""
        seen: set[int] = set()
        for res in self._by_url.values():
            if id(res) not in seen:
                seen.add(id(res))
                yield res

    def unresolved_bindings(self) -> list[tuple[str, str, str]]:
        """(profile url, element id, value set) for required/extensible bindings with no local ValueSet."""
        missing = []
        for url, prof in self._compiled.items():
            if "|" in url:
                continue
            for rule in _walk(prof.root):
                if rule.binding and self.terminology.expansion(rule.binding.value_set) is None:
                    missing.append((url, rule.id, rule.binding.value_set))
        return missing

    def _profile_type(self, url: str) -> str | None:
        res = self._by_url.get(url)
        return res.get("type") if res and res.get("resourceType") == "StructureDefinition" else None

    def _warn_unresolved_bindings(self) -> None:
        for url, element, vs in self.unresolved_bindings():
            log.warning("binding of %s in %s to %s cannot be checked: no local ValueSet", element, url, vs)


def _walk(rule: ElementRule) -> Iterator[ElementRule]:
    yield rule
    for child in rule.children:
        yield from _walk(child)
    for piece in rule.slices:
        yield from _walk(piece.rule)
