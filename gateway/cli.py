"""``fhir-gateway``: serve, convert and validate from the command line."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import orjson

from gateway.config import load_config


def _gateway(args: argparse.Namespace):
    from gateway.runtime import Gateway
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["DATA_DIR"] = args.data_dir
    return Gateway.from_config(load_config(overrides))


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _refuse_public_bind(host: str, config: dict | None = None) -> bool:
    """Beyond this machine only in production: elsewhere a demo admin client with a printed secret exists."""
    if host in LOOPBACK or str((config or {}).get("ENVIRONMENT", "")).lower() == "production":
        return False
    print(f"error: refusing to listen on {host}: outside production (GATEWAY_ENVIRONMENT=production) the "
          "gateway has a demo admin client and binds to 127.0.0.1 only", file=sys.stderr)
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    from waitress import serve

    from gateway import create_app
    overrides = {k: v for k, v in (("HOST", args.host), ("PORT", args.port), ("DATA_DIR", args.data_dir)) if v}
    app = create_app(overrides)
    host, port = app.config["HOST"], int(app.config["PORT"])
    if _refuse_public_bind(host, app.config):
        return 2
    from gateway.security.cli import announce_demo_client
    announce_demo_client(app)
    listener = None
    mllp_port = int(args.mllp_port if args.mllp_port is not None else app.config["MLLP_PORT"] or 0)
    if mllp_port:
        from gateway.ingest.mllp_handler import mllp_server
        from gateway.security.mllp_binding import MllpBinding, tls_context
        listener = mllp_server(app.extensions["gateway"].pipeline, host, mllp_port,
                               MllpBinding(app.extensions["security"]), tls_context(app.config))
        listener.start()
        print(f"MLLP listener on {host}:{listener.address[1]}", flush=True)
    print(f"Lecheng FHIR gateway on http://{host}:{port}  (FHIR base /fhir, HL7 v2 POST /hl7v2, "
          f"database {app.config['DATABASE_URL']})", flush=True)
    from gateway.ingest.replay import RecoverySweep     # messages a crash left "received" (docstring there)
    recovery = RecoverySweep(app.extensions["gateway"], float(app.config["RECOVER_AFTER_SECONDS"])).start()
    workers = None
    if not args.no_workers:             # routing: deliver the outbox from this process
        from gateway.routing import make_workers
        gateway = app.extensions["gateway"]
        workers = make_workers(gateway.config, gateway.store.engine, gateway.routes).start()
    try:
        # waitress refuses bodies over the limit itself, before buffering them (Flask would only after)
        serve(app, host=host, port=port, threads=int(args.threads), ident="lecheng-gateway",
              max_request_body_size=int(app.config["MAX_MESSAGE_BYTES"]))
    finally:
        recovery.stop()
        if listener is not None:
            listener.stop()
        if workers is not None:
            workers.stop()
    return 0


def cmd_mllp(args: argparse.Namespace) -> int:
    """Run the MLLP listener alone (HIS interface engines speak MLLP over TCP)."""
    from gateway.ingest.mllp_handler import mllp_server
    gw = _gateway(args)
    host = args.host or gw.config["HOST"]
    if _refuse_public_bind(host):
        return 2
    from gateway.security import Security
    from gateway.security.mllp_binding import MllpBinding, tls_context
    server = mllp_server(gw.pipeline, host, int(args.port or gw.config["MLLP_PORT"] or 2575),
                         MllpBinding(Security.from_config(gw.config, gw.store.engine)), tls_context(gw.config))
    server.start()
    host, port = server.address
    print(f"Lecheng FHIR gateway MLLP listener on {host}:{port}", flush=True)
    from gateway.ingest.replay import RecoverySweep
    RecoverySweep(gw, float(gw.config["RECOVER_AFTER_SECONDS"])).start()
    server.serve_forever()
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Parse, map and validate one HL7 message or hospital document (``--mapping`` names an xml, csv or
    json mapping) without storing it; print the Bundle, or why not."""
    from gateway.hl7v2 import Hl7ParseError, parse_message
    gw = _gateway(args)
    raw = Path(args.file).read_bytes()
    named = gw.mappings.by_name.get(args.mapping) if args.mapping else None
    if args.mapping and named is None:
        print(f"error: no mapping named {args.mapping}", file=sys.stderr)
        return 2
    if named is not None and named.source != "hl7v2":
        return _convert_document(gw, named, raw)
    try:
        message = parse_message(raw, fallback_charset=gw.config["FALLBACK_CHARSET"])
    except Hl7ParseError as exc:
        for error in exc.errors:
            print(f"error: {error.text}", file=sys.stderr)
        return 2
    spec = named or gw.mappings.for_message(message.message_type)
    if spec is None:
        print(f"error: no mapping for {message.message_type}", file=sys.stderr)
        return 2
    mapped = spec.run(message, gw.terminology, gw.zone)
    failed = _report_mapped(gw, mapped, message.warnings)
    sys.stdout.write(orjson.dumps(mapped.bundle(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 1 if failed else 0


def _convert_document(gw, spec, raw: bytes) -> int:
    """An XML or JSON document is one transaction; a CSV file a batch with every row's entries."""
    read = spec.reader.read(raw)
    for problem in read.problems:
        print(f"error: {problem}", file=sys.stderr)
    if read.problems:
        return 2
    entries, failed = [], False
    for unit in read.units:
        for problem in unit.problems:
            print(f"error: {problem}", file=sys.stderr)
        if unit.problems:
            failed = True
            continue
        mapped = spec.run(unit, gw.terminology, gw.zone)
        failed = _report_mapped(gw, mapped, []) or failed
        entries += mapped.bundle()["entry"]
    bundle = {"resourceType": "Bundle", "type": "batch" if spec.source == "csv" else "transaction", "entry": entries}
    sys.stdout.write(orjson.dumps(bundle, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 1 if failed else 0


def _report_mapped(gw, mapped, more_warnings: list[str]) -> bool:
    """Mapping errors, validation issues (with the source field or document location) and warnings
    on stderr; True when any is an error."""
    failed = False
    for error in mapped.errors:
        print(f"error: {error if hasattr(error, 'location') else error.text}", file=sys.stderr)
        failed = True
    for resource in mapped.resources:
        for issue in gw.validator.validate(resource.resource):
            level = "error" if issue.severity in ("fatal", "error") else issue.severity
            where = resource.source_of(issue.expression or "")
            print(f"{level}: {issue.expression}: {issue.diagnostics}" + (f" (from {where})" if where else ""),
                  file=sys.stderr)
            failed = failed or level == "error"
    for warning in mapped.warnings + list(more_warnings):
        print(f"warning: {warning}", file=sys.stderr)
    return failed


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway.validation import has_errors, operation_outcome
    gw = _gateway(args)
    try:
        resource = orjson.loads(Path(args.file).read_bytes())
    except orjson.JSONDecodeError as exc:
        print(f"error: {args.file} is not JSON: {exc}", file=sys.stderr)
        return 2
    issues = gw.validator.validate(resource, [args.profile] if args.profile else None)
    sys.stdout.write(orjson.dumps(operation_outcome(issues), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 1 if has_errors(issues) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fhir-gateway", description="Lecheng HL7 v2 / FHIR gateway")
    parser.add_argument("--data-dir", help="data directory (default ./var)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server (FHIR API and HL7 v2 ingest)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--threads", default=8)
    serve.add_argument("--mllp-port", type=int, help="also run the MLLP listener on this port (GATEWAY_MLLP_PORT)")
    serve.add_argument("--no-workers", action="store_true",
                       help="do not deliver routed resources from this process (run `fhir-gateway worker` instead)")
    serve.set_defaults(func=cmd_serve)

    mllp = sub.add_parser("mllp", help="run the MLLP listener (HL7 v2 over TCP)")
    mllp.add_argument("--host")
    mllp.add_argument("--port", type=int)
    mllp.set_defaults(func=cmd_mllp)

    convert = sub.add_parser("convert", help="print the FHIR Bundle a message or hospital export maps to "
                                             "(nothing is stored)")
    convert.add_argument("file")
    convert.add_argument("--mapping", help="mapping name (default: chosen by the HL7 message type; needed for "
                                           "XML, CSV and JSON exports)")
    convert.set_defaults(func=cmd_convert)

    validate = sub.add_parser("validate", help="validate a FHIR resource (JSON) against the profiles")
    validate.add_argument("file")
    validate.add_argument("--profile", help="profile canonical URL (default: the Lecheng profile of its type)")
    validate.set_defaults(func=cmd_validate)

    from gateway.conformance_cli import add_conformance_parser
    add_conformance_parser(sub)

    from gateway.security.cli import add_security_parsers
    add_security_parsers(sub)
    from gateway.routing.commands import add_routing_parsers
    add_routing_parsers(sub)
    from gateway.ingest.messages_cli import add_message_parsers
    add_message_parsers(sub)
    from gateway.mapping.commands import add_mapping_parsers
    add_mapping_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gateway.observability import configure_logging
    configure_logging(load_config().get("LOG_FORMAT", "text"))
    args = build_parser().parse_args(argv)
    from gateway.mapping.engine import MappingError
    try:
        return args.func(args)
    except MappingError as exc:        # a broken mapping file: the gateway does not start (file:line each)
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("the gateway does not start with a broken mapping; `fhir-gateway mappings check` lists "
              "the problems", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
