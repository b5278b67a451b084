"""Every profile's rules, tried on the server's ``$validate`` (or ``create`` where $validate is not
claimed): the valid examples must be accepted, and a resource that breaks one rule must be refused.

Broken resources come from two places: the example manifest's own broken examples (each a valid
one broken in one way, with the issues expected: invariants, slices, bindings), and resources the
kit derives from each profile's differential: every element the profile makes required (min >= 1)
removed, and every code element bound ``required`` set to a code outside its value set. Profiles
come from ``--profiles`` (default ``profiles/``), and only those the CapabilityStatement claims
(``supportedProfile``) or ``--validate-profile`` names are tried; examples from ``--profile-examples`` DIR holding a
``cases.yaml`` manifest (default ``tests/data/validation``, the gateway's own).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from conformance.runner import GENERATORS, KIT_DIR, CaseResult, CaseSkipped, KitContext, _default_profiles_dir

VALIDATE_SPEC = "http://hl7.org/fhir/R4/resource-operation-validate.html"
DEFAULT_EXAMPLES = KIT_DIR.parent / "tests" / "data" / "validation"
NOT_A_CODE = "conformance-kit-not-a-code"


def _profiles(directory: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(directory.glob("StructureDefinition-*.json")):
        definition = json.loads(path.read_text(encoding="utf-8"))
        if definition.get("kind") == "resource" and definition.get("derivation") == "constraint":
            found[definition["url"]] = definition
    return found


def _remove(resource: Any, path: list[str]) -> bool:
    """Remove the element at ``path`` (below the root) wherever it occurs; True when something went."""
    if not path or not isinstance(resource, (dict, list)):
        return False
    if isinstance(resource, list):
        return any([_remove(item, path) for item in resource])
    head = path[0]
    keys = [k for k in resource if k == head or (head.endswith("[x]") and k.startswith(head[:-3]) and
                                                 k[len(head) - 3:][:1].isupper())]
    if len(path) == 1:
        for key in keys:
            del resource[key]
        return bool(keys)
    return any([_remove(resource[k], path[1:]) for k in keys])


def _set_code(resource: Any, path: list[str]) -> bool:
    """Replace the code at ``path`` (a ``code`` element: a string) with one outside any value set."""
    if isinstance(resource, list):
        return any([_set_code(item, path) for item in resource])
    if not isinstance(resource, dict) or path[0] not in resource:
        return False
    if len(path) == 1:
        value = resource[path[0]]
        if isinstance(value, str):
            resource[path[0]] = NOT_A_CODE
            return True
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            resource[path[0]] = [NOT_A_CODE]
            return True
        return False
    return _set_code(resource[path[0]], path[1:])


def broken_variants(profile: dict, example: dict) -> list[tuple[str, dict]]:
    """(rule, resource) pairs: the example broken in exactly one of the profile's rules."""
    out = []
    for element in profile.get("differential", {}).get("element", []):
        path = element.get("path", "")
        if ":" in element.get("id", "") or "." not in path:
            continue                        # slices are covered by the manifest's broken examples
        below = path.split(".")[1:]
        if element.get("min", 0) >= 1:
            variant = copy.deepcopy(example)
            if _remove(variant, below):
                out.append((f"{path} is required (min {element['min']})", variant))
        binding = element.get("binding") or {}
        if binding.get("strength") == "required":
            variant = copy.deepcopy(example)
            if _set_code(variant, below):
                out.append((f"{path} must come from {binding.get('valueSet')} (required binding)", variant))
    return out


def _refused(status: int | None, document: Any) -> bool:
    if status is not None and 400 <= status < 500:
        return True
    if isinstance(document, dict) and document.get("resourceType") == "OperationOutcome":
        return any(i.get("severity") in ("error", "fatal") for i in document.get("issue", []) or [])
    return False


def gen_profile_rules(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """Valid examples accepted; one broken rule at a time refused; by $validate?profile= (or create)."""
    directory = Path(ctx.profiles_dir or _default_profiles_dir() or "profiles")
    profiles = _profiles(directory) if directory.is_dir() else {}
    if not profiles:
        raise CaseSkipped(f"no constraint StructureDefinitions in {directory}")
    examples_dir = Path(ctx.options.get("profile_examples") or DEFAULT_EXAMPLES)
    manifest_path = examples_dir / "cases.yaml"
    if not manifest_path.is_file():
        raise CaseSkipped(f"no example manifest {manifest_path} (give --profile-examples DIR)")
    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    declared = ctx.declared_resources()
    claimed = {url for entry in declared.values()
               for url in (entry.get("supportedProfile") or []) + ([entry["profile"]] if entry.get("profile") else [])}
    claimed |= set(ctx.options.get("validate_profiles") or [])
    by_type = {}
    for url, profile in profiles.items():
        if url in claimed:
            by_type.setdefault(profile["type"], []).append(url)
        else:
            result.notes.append(f"{url}: not claimed by the CapabilityStatement (supportedProfile) nor asked "
                                "for with --validate-profile; not tried")
    if not by_type:
        raise CaseSkipped("the server claims none of the profiles in " + str(directory))

    def send(resource: dict, url: str) -> tuple[int | None, Any, str]:
        kind = resource["resourceType"]
        operations = {o.get("name") for o in (declared.get(kind) or {}).get("operation", []) or []}
        if "validate" in operations:
            exchange, document = ctx.fhir("POST", f"{kind}/$validate?profile={url}", None, json.dumps(resource))
            result.exchanges.append(exchange)
            return exchange.status, document, "$validate"
        if "create" in ctx.interactions(kind):
            claimed = copy.deepcopy(resource)
            claimed.setdefault("meta", {})["profile"] = [url]
            exchange, document = ctx.fhir("POST", kind, None, json.dumps(claimed))
            result.exchanges.append(exchange)
            if exchange.status in (200, 201) and isinstance(document, dict) and document.get("id"):
                ctx.fhir("DELETE", f"{kind}/{document['id']}")
            return exchange.status, document, "create"
        return None, None, ""

    tried = set()
    for name in manifest.get("valid", []):
        example = json.loads((examples_dir / name).read_text(encoding="utf-8"))
        for url in by_type.get(example.get("resourceType"), []):
            status, document, how = send(example, url)
            if not how:
                result.skip_check(f"{name} against {url}", f"the server claims neither $validate nor create "
                                                            f"for {example['resourceType']}")
                continue
            tried.add(url)
            result.check(f"valid example {name} is accepted by {how} ({url.rsplit('/', 1)[-1]})",
                         status in (200, 201) and not _refused(status, document),
                         f"{name} via {how}: HTTP {status}, {json.dumps(document)[:300]}", spec=VALIDATE_SPEC)
            for rule, variant in broken_variants(profiles[url], example):
                status, document, how = send(variant, url)
                result.check(f"{url.rsplit('/', 1)[-1]}: {rule} (broken {name}) is refused", _refused(status, document),
                             f"{name} with {rule} broken, via {how}: HTTP {status}, no error issue",
                             spec=f"{VALIDATE_SPEC}; {url}")
    for item in manifest.get("cases", []):
        if not any(e.get("severity") in ("error", "fatal") for e in item.get("expect", [])):
            continue
        example = json.loads((examples_dir / item["file"]).read_text(encoding="utf-8"))
        for url in by_type.get(example.get("resourceType"), []):
            status, document, how = send(example, url)
            if how:
                result.check(f"{url.rsplit('/', 1)[-1]}: {item['file']} ({item.get('why', '')}) is refused",
                             _refused(status, document),
                             f"{item['file']} via {how}: HTTP {status}, no error issue", spec=f"{VALIDATE_SPEC}; {url}")
    untested = sorted(set(profiles) - tried)
    if untested:
        result.notes.append("profiles without a valid example of their type here: " + ", ".join(untested))


GENERATORS.update({"profile_rules": gen_profile_rules})
