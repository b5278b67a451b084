"""The validator the gateway calls: base R4 structure, then the profiles that apply.

    registry = ProfileRegistry.load("profiles")          # once, at start-up
    validator = Validator(registry)                       # fhirkit backend, every profile strict
    issues = validator.validate(resource)                 # list[Issue], never raises on bad data
    if has_errors(issues): ...                            # AE with ERR segments / 422 OperationOutcome

Which profiles: the `profiles` argument if given, else the resource's `meta.profile`, else the
registry's defaults for its type (the `lecheng-*` profile). `strictness` maps a profile canonical
to `"warning"` to make it advisory: its errors (including those inside the extensions it uses)
come back as warnings, so a hospital can go live while it fixes its feed. Extensions the walk did
not reach through a profile are still checked at the resource root against their definitions
(content and context), and an unknown extension in the gateway's own namespace is a warning.

A Bundle is validated as a whole by the structure backend; each entry's resource then gets its
own profiles, with expressions like `Bundle.entry[2].resource.subject`.
"""
from __future__ import annotations

from collections.abc import Iterable

from .conformance import ConformanceRun
from .issues import Issue
from .registry import ProfileRegistry
from .structure import StructureBackend
from .structure import structure_backend as make_structure_backend


class Validator:
    """Validates resources against R4 and the registry's profiles; thread-safe, reusable."""

    def __init__(self, registry: ProfileRegistry, *, structure_backend: str = "fhirkit",
                 strictness: dict[str, str] | None = None) -> None:
        self.registry = registry
        self.backend: StructureBackend = make_structure_backend(structure_backend)
        strictness = dict(strictness or {})
        for url, level in strictness.items():
            if level not in ("error", "warning"):
                raise ValueError(f"strictness for {url} must be 'error' or 'warning', not {level!r}")
        self.advisory = frozenset(url for url, level in strictness.items() if level == "warning")

    def validate(self, resource: dict, profiles: list[str] | None = None, *, base_only: bool = False,
                 context: str | None = None) -> list[Issue]:
        """All issues for one resource: structure first, then each applicable profile. ``context``
        (e.g. ``"safety-report"``) turns the profile rules marked warning-in-context there into warnings."""
        if not _is_resource(resource):
            return [_NOT_A_RESOURCE]
        issues = list(self.backend.check(resource))
        if not base_only:
            issues.extend(self._profile_issues(resource, profiles, context))
        return issues

    def validate_many(self, resources: list[dict]) -> list[list[Issue]]:
        """`validate` for each resource, in order (each with its own default profiles).

        Sequential on purpose: running fhirkit (which releases the GIL) on a second thread was
        measured slower, because the worker waits for the GIL between resources while this thread
        walks profiles. Scale out with processes, as the rest of the gateway does.
        """
        return [self.validate(r) for r in resources]

    def _profile_issues(self, resource: dict, profiles: list[str] | None, context: str | None = None) -> list[Issue]:
        if resource["resourceType"] == "Bundle" and profiles is None:
            issues: list[Issue] = []
            entries = resource.get("entry")
            for i, entry in enumerate(entries if isinstance(entries, list) else []):
                inner = entry.get("resource") if isinstance(entry, dict) else None
                if _is_resource(inner):
                    issues.extend(self._with_prefix(self.check_profiles(inner, context=context), inner["resourceType"],
                                                    f"Bundle.entry[{i}].resource"))
            return issues
        return self.check_profiles(resource, profiles, context=context)

    def check_profiles(self, resource: dict, profiles: list[str] | None = None, *,
                       context: str | None = None) -> list[Issue]:
        """The profile layer alone (no structure backend): what the differentials say about the resource."""
        resource_type = resource["resourceType"]
        explicit = profiles is not None
        if profiles is None:
            meta = resource.get("meta")
            declared = meta.get("profile") if isinstance(meta, dict) else None
            if isinstance(declared, list) and declared:
                profiles = [p for p in declared if isinstance(p, str)]
            else:
                profiles = self.registry.profiles_for(resource_type)
        issues: list[Issue] = []
        handled: set[int] = set()
        for url in profiles:
            profile = self.registry.compiled(url)
            if profile is None:
                issues.append(Issue("error" if explicit else "warning", "processing",
                                    f"Profile {url} is not known to this gateway (not in profiles/); "
                                    f"the resource was not checked against it", resource_type, url))
                continue
            if profile.type != resource_type:
                issues.append(Issue("error", "processing",
                                    f"Profile {profile.label} constrains {profile.type}, not {resource_type}",
                                    resource_type, profile.url))
                continue
            found: list[Issue] = []
            ConformanceRun(profile, self.registry.extensions, resource,
                           found, handled, context).check_resource(resource)
            if profile.url in self.advisory or url in self.advisory:
                found = [i.demoted() for i in found]
            issues.extend(found)
        issues.extend(self._root_extensions(resource, handled))
        return self._apply_issue_strictness(_dedupe(issues))

    def _root_extensions(self, resource: dict, handled: set[int]) -> list[Issue]:
        """Extensions on the resource that no profile slice took: check against their definitions."""
        extensions = resource.get("extension")
        if not isinstance(extensions, list):
            return []
        resource_type = resource["resourceType"]
        found: list[Issue] = []
        for i, ext in enumerate(extensions):
            if not isinstance(ext, dict) or id(ext) in handled or not isinstance(ext.get("url"), str):
                continue
            url = ext["url"]
            expr = f"{resource_type}.extension[{i}]"
            definition = self.registry.extensions.get(url)
            if definition is not None:
                run = ConformanceRun(definition, self.registry.extensions,
                                     resource, found, handled)
                run.check_extension(ext, expr, resource_type)
            elif url.startswith(self.registry.extension_namespaces):
                found.append(Issue("warning", "extension",
                                   f"Extension {url} is in the gateway's namespace but not defined in profiles/; "
                                   f"check the URL (known: {', '.join(sorted(self.registry.extensions))})",
                                   expr))
        return found

    def _apply_issue_strictness(self, issues: list[Issue]) -> list[Issue]:
        if not self.advisory:
            return issues
        return [i.demoted() if i.profile in self.advisory else i for i in issues]

    @staticmethod
    def _with_prefix(issues: Iterable[Issue], resource_type: str, prefix: str) -> list[Issue]:
        out = []
        for i in issues:
            expr = i.expression
            if expr is not None and (expr == resource_type or expr.startswith(resource_type + ".")):
                expr = prefix + expr[len(resource_type):]
            out.append(Issue(i.severity, i.code, i.diagnostics, expr, i.profile, i.relaxed_in))
        return out


_NOT_A_RESOURCE = Issue("fatal", "structure", "Not a FHIR resource: a JSON object with a resourceType is required")


def _is_resource(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("resourceType"), str)


def _dedupe(issues: list[Issue]) -> list[Issue]:
    seen: set[Issue] = set()
    out = []
    for i in issues:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out
