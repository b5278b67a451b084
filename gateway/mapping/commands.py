"""``fhir-gateway mappings check|test``: how an integrator writes a mapping file test-first.

* ``mappings check [FILE ...]`` loads every mapping (or the files named) the way the gateway does at
  start-up, and checks what can be checked without a message: element paths exist in R4 with the
  right cardinality, converters and their arguments exist, ``ref``s name resource keys, ``for_each``
  names a group, conditions parse, tables and code systems are in ``tables.yaml`` and
  ``code_systems.yaml``. Every problem is one ``file:line: message`` line; exit 1 when there is any.
* ``mappings test NAME INPUT [EXPECTED]`` runs one mapping (a name, or the path of a file not yet in
  ``mappings/``) on one message or document, validates what it makes, and prints the Bundle, or
  compares it with an expected Bundle, ids aside, and prints the difference. Exit 0 when it matches.
"""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from gateway.mapping.engine import MappedMessage, MappingError, MappingSpec, load_mappings, mapping_files
from gateway.mapping.terminology import Terminology


def add_mapping_parsers(sub: Any) -> None:
    mappings = sub.add_parser("mappings", help="check mapping files, or test one on a sample")
    commands = mappings.add_subparsers(dest="mappings_command", required=True)
    check = commands.add_parser("check", help="load and check every mapping (or the files named); "
                                              "problems as file:line: message")
    check.add_argument("files", nargs="*", help="mapping files (default: every mapping in the mappings directory)")
    check.set_defaults(func=cmd_mappings_check)
    test = commands.add_parser("test", help="run one mapping on one input; print the Bundle or diff it "
                                            "against an expected Bundle (ids ignored)")
    test.add_argument("mapping", help="a mapping name, or the path of a mapping file")
    test.add_argument("input", help="an HL7 v2 message, or an XML/CSV/JSON document")
    test.add_argument("expected", nargs="?", help="the Bundle (JSON) the input should map to")
    test.set_defaults(func=cmd_mappings_test)


def _config() -> dict:
    from gateway.config import load_config
    return load_config()


def cmd_mappings_check(args: argparse.Namespace) -> int:
    directory = Path(_config()["MAPPINGS_DIR"])
    files = [Path(f) for f in args.files] if args.files else mapping_files(directory)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        for name in missing:
            print(f"{name}: no such file", file=sys.stderr)
        return 2
    terminology = _terminology_for(files, directory)
    specs, problems = load_mappings(directory, files, terminology)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {len(files)} mapping file(s)", file=sys.stderr)
        return 1
    print(f"{len(specs)} mapping file(s) checked: no problems", file=sys.stderr)
    return 0


def _terminology_for(files: list[Path], directory: Path) -> Terminology:
    """The code systems and tables beside the files when they have their own, else the gateway's."""
    own = files[0].parent if files else directory
    if (own / "code_systems.yaml").is_file() and (own / "tables.yaml").is_file():
        return Terminology.load(own)
    return Terminology.load(directory)


def cmd_mappings_test(args: argparse.Namespace) -> int:
    config = _config()
    directory = Path(config["MAPPINGS_DIR"])
    terminology = Terminology.load(directory)
    try:
        spec = _spec(args.mapping, directory, terminology)
    except MappingError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if spec is None:
        print(f"error: no mapping named {args.mapping} in {directory}", file=sys.stderr)
        return 2
    raw = Path(args.input).read_bytes()
    results, failed = _run(spec, raw, terminology, config)
    if results is None:
        return 2
    from gateway.runtime import parse_strictness
    from gateway.validation import ProfileRegistry, Validator
    validator = Validator(ProfileRegistry.load(config["PROFILES_DIR"]),
                          strictness=parse_strictness(config["PROFILE_STRICTNESS"]))
    entries = []
    for mapped in results:
        failed = _report(mapped, validator) or failed
        entries += mapped.bundle()["entry"]
    bundle = {"resourceType": "Bundle", "type": "batch" if spec.source == "csv" else "transaction", "entry": entries}
    actual = comparable(bundle)
    if not args.expected:
        sys.stdout.write(json.dumps(actual, ensure_ascii=False, indent=2) + "\n")
        return 1 if failed else 0
    expected = comparable(json.loads(Path(args.expected).read_text(encoding="utf-8")))
    if actual == expected:
        print(f"{args.input}: maps to {args.expected} ({len(entries)} entries)", file=sys.stderr)
        return 1 if failed else 0
    diff = difflib.unified_diff(json.dumps(expected, ensure_ascii=False, indent=2).splitlines(),
                                json.dumps(actual, ensure_ascii=False, indent=2).splitlines(),
                                fromfile=args.expected, tofile=f"{args.input} mapped by {spec.name}", lineterm="")
    sys.stdout.write("\n".join(diff) + "\n")
    return 1


def _spec(name: str, directory: Path, terminology: Terminology) -> MappingSpec | None:
    """A mapping file by path (one being written), else by name among the gateway's mappings."""
    if name.endswith((".yaml", ".yml")) or Path(name).is_file():
        specs, problems = load_mappings(directory, [Path(name)], terminology)
        if problems:
            raise MappingError.of(problems)
        return specs[0]
    for path in mapping_files(directory):
        spec = MappingSpec.from_file(path)
        if spec.name == name:
            return spec
    return None


def _run(spec: MappingSpec, raw: bytes, terminology: Terminology, config: dict) -> tuple[list | None, bool]:
    from zoneinfo import ZoneInfo
    zone = ZoneInfo(config["TIMEZONE"]) if config["TIMEZONE"] else None
    if spec.source == "hl7v2":
        from gateway.hl7v2 import Hl7ParseError, parse_message
        try:
            message = parse_message(raw, fallback_charset=config["FALLBACK_CHARSET"])
        except Hl7ParseError as exc:
            for error in exc.errors:
                print(f"error: {error.text}", file=sys.stderr)
            return None, True
        for warning in message.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return [spec.run(message, terminology, zone)], False
    read = spec.reader.read(raw)
    for problem in read.problems:
        print(f"error: {problem}", file=sys.stderr)
    if read.problems:
        return None, True
    results, failed = [], False
    for unit in read.units:
        for problem in unit.problems:
            print(f"error: {unit.label}: {problem}", file=sys.stderr)
            failed = True
        if not unit.problems:
            results.append(spec.run(unit, terminology, zone))
    return results, failed


def _report(mapped: MappedMessage, validator: Any) -> bool:
    """Mapping errors, validation issues (with the field they came from) and warnings on stderr."""
    failed = False
    for error in mapped.errors:
        print(f"error: {error if hasattr(error, 'location') else error.text}", file=sys.stderr)
        failed = True
    for resource in mapped.resources:
        for issue in validator.validate(resource.resource):
            level = "error" if issue.severity in ("fatal", "error") else issue.severity
            where = resource.source_of(issue.expression or "")
            print(f"{level}: {issue.expression}: {issue.diagnostics}" + (f" (from {where})" if where else ""),
                  file=sys.stderr)
            failed = failed or level == "error"
    for warning in mapped.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return failed


def comparable(bundle: dict) -> dict:
    """A Bundle with its temporary ids (``urn:uuid:...`` full URLs and the references to them)
    replaced by ``<type>/<n>``, numbered in entry order, and resource ids and meta dropped."""
    names = {}
    counts: dict[str, int] = {}
    for entry in bundle.get("entry") or []:
        kind = (entry.get("resource") or {}).get("resourceType", "?")
        counts[kind] = counts.get(kind, 0) + 1
        if entry.get("fullUrl"):
            names[entry["fullUrl"]] = f"{kind}/{counts[kind]}"

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if k not in ("id", "meta")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and node in names:
            return names[node]
        return node
    return walk(bundle)
