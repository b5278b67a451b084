"""``fhir-gateway conformance``: run the conformance kit (``conformance/``) against any FHIR R4 server
and write the HTML and JUnit reports. Kept apart from ``gateway.cli`` so the kit has one entry point
that a vendor can also call against their own server."""
from __future__ import annotations

import argparse
import sys


def cmd_conformance(args: argparse.Namespace) -> int:
    """Run the kit; exit 0 only when no case failed, so CI can gate on it."""
    from conformance.report import write_html, write_junit
    from conformance.runner import CASES_DIR, run_kit

    token = args.token
    if args.client_id and args.private_key and not token:
        from conformance.smart_bulk import fetch_token_with_key
        try:
            token = fetch_token_with_key(args.fhir_base, args.client_id, args.private_key, args.kid, args.scope,
                                         args.token_url, timeout=args.timeout)
        except (RuntimeError, OSError, ValueError) as exc:
            print(f"error: could not get a token with the client's key: {exc}", file=sys.stderr)
            return 2
    elif args.client_id and not token:
        from gateway.security.smart_client import TokenFetchError, fetch_token
        try:
            token = fetch_token(args.fhir_base, args.client_id, args.client_secret or "", args.token_url,
                                scope=args.scope, timeout=args.timeout)
        except TokenFetchError as exc:
            print(f"error: could not get a token: {exc}", file=sys.stderr)
            return 2
    types = [t.strip() for t in args.types.split(",") if t.strip()] if args.types else None
    report = run_kit(args.fhir_base, hl7=args.hl7, token=token, cases_dir=args.cases or CASES_DIR,
                     profiles_dir=args.profiles, timeout=args.timeout, types=types, fixtures=args.fixtures,
                     validate_profiles=args.validate_profile or None, client_id=args.client_id,
                     private_key=args.private_key, kid=args.kid, scope=args.scope,
                     profile_examples=args.profile_examples,
                     hl7_types=[t.strip() for t in args.hl7_types.split(",")] if args.hl7_types else None)
    if args.report:
        write_html(report, args.report)
    if args.junit:
        write_junit(report, args.junit)
    for result in report.results:
        line = f"{result.status.upper():5} {result.id} ({len(result.checks)} checks)"
        print(line + (f": {result.message[:500]}" if result.message else ""))
    counts = report.check_counts()
    print(f"checks: {counts['pass']} passed, {counts['fail']} failed, {counts['warn']} warnings (SHOULD), "
          f"{counts['skip']} not run")
    print(f"{len(report.passed)} passed, {len(report.warned)} passed with warnings, {len(report.failed)} failed, "
          f"{len(report.skipped)} skipped"
          + (f"; report {args.report}" if args.report else "") + (f"; JUnit {args.junit}" if args.junit else ""))
    return 0 if report.ok else 1


def add_conformance_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``conformance`` sub-command on the ``fhir-gateway`` parser."""
    parser = subparsers.add_parser("conformance", help="check a FHIR R4 server (and HL7 v2 endpoint) with the "
                                                       "conformance kit")
    parser.add_argument("--fhir-base", required=True, help="FHIR base URL, e.g. http://127.0.0.1:8080/fhir")
    parser.add_argument("--hl7", help="HL7 v2 endpoint: http(s)://.../hl7v2 or mllp://host:port "
                                      "(without it the HL7 cases are skipped and no sample data is loaded)")
    parser.add_argument("--token", help="bearer token sent with every request")
    parser.add_argument("--client-id", help="get the token with SMART client credentials: private_key_jwt with "
                                            "--private-key, else client_secret_basic with --client-secret")
    parser.add_argument("--private-key", help="PEM private key (EC P-384 or RSA) of the --client-id backend client; "
                                              "also runs the SMART Backend Services checks that need a client")
    parser.add_argument("--kid", help="key id of --private-key, as registered with the server")
    parser.add_argument("--profile-examples", help="directory with a cases.yaml manifest of valid and broken "
                                                   "example resources (default: tests/data/validation)")
    parser.add_argument("--hl7-types", help="comma-separated HL7 message types the server claims (e.g. RDE^O11); "
                                            "one it answers as unsupported then fails instead of being skipped")
    parser.add_argument("--scope", help="scope to ask for (e.g. 'system/*.rs'); the SMART case narrows a token to it")
    parser.add_argument("--client-secret", help="the client's secret (with --client-id)")
    parser.add_argument("--token-url", help="token endpoint (default: from <fhir-base>/.well-known/smart-configuration)")
    parser.add_argument("--report", help="write the HTML report here")
    parser.add_argument("--junit", help="write JUnit XML here")
    parser.add_argument("--cases", help="directory of case files (default: the kit's conformance/cases)")
    parser.add_argument("--profiles", help="profiles directory for validation (default: ./profiles)")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds per request (default 15)")
    parser.add_argument("--types", help="comma-separated resource types to test (default: every type the "
                                        "CapabilityStatement declares)")
    parser.add_argument("--fixtures", help="YAML file of test data the server accepts, in the shape of "
                                           "conformance/fixtures.yaml (adds to and overrides the kit's own)")
    parser.add_argument("--validate-profile", action="append", metavar="URL",
                        help="hold every resource of the profile's type to this profile (repeatable); by default "
                             "a resource is checked against base R4 and the profiles its meta.profile claims")
    parser.set_defaults(func=cmd_conformance)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m gateway.conformance_cli conformance --fhir-base ...``."""
    parser = argparse.ArgumentParser(prog="fhir-gateway")
    add_conformance_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
