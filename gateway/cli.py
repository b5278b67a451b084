"""``fhir-gateway``: serve, convert and validate from the command line."""
from __future__ import annotations

import argparse
import logging
import os
import socket
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


def _unconfigured_routes(overrides: dict, quiet: bool = False) -> None:
    """A process started with no routes configured routes nothing, and says so once. The repository's
    routes.yaml is a sample (``fhir-gateway demo`` and the tests use it): its destinations on
    127.0.0.1:9101-9103 exist only while ``demo`` runs, so serving it by default queued deliveries that
    failed every few seconds. Set GATEWAY_ROUTES_FILE (or ROUTES_FILE in the TOML file) to route."""
    configured = "GATEWAY_ROUTES_FILE" in os.environ or "ROUTES_FILE" in overrides
    if not configured and os.environ.get("GATEWAY_CONFIG"):
        import tomllib
        with open(os.environ["GATEWAY_CONFIG"], "rb") as fh:
            configured = any(key.upper() == "ROUTES_FILE" for key in tomllib.load(fh))
    if not configured:
        overrides["ROUTES_FILE"] = ""
        if not quiet:
            print("routing: no routes configured (GATEWAY_ROUTES_FILE), so stored resources are delivered nowhere; "
                  "routes.yaml in the repository is a sample to start from (README \"Routing\")", flush=True)


def _cannot_listen(what: str, host: str, port: int, exc: OSError) -> int:
    print(f"error: cannot listen for {what} on {host}:{port}: {exc.strerror or exc}. Is another gateway running "
          f"there? Stop it, or choose another port (--port / --mllp-port, GATEWAY_PORT / GATEWAY_MLLP_PORT). "
          "Nothing was changed.", file=sys.stderr)
    return 2


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.http_server import make_server     # waitress, answering its own refusals in FHIR

    from gateway import create_app
    overrides = {k: v for k, v in (("HOST", args.host), ("PORT", args.port), ("DATA_DIR", args.data_dir)) if v}
    _unconfigured_routes(overrides, quiet=args.listen_fd is not None)    # said once, by the first process
    app = create_app(overrides)
    host, port = app.config["HOST"], int(app.config["PORT"])
    if _refuse_public_bind(host, app.config):
        return 2
    # waitress refuses bodies over the limit itself, before buffering them (Flask would only after)
    settings = dict(threads=int(args.threads), ident="lecheng-gateway",
                    max_request_body_size=int(app.config["MAX_MESSAGE_BYTES"]))
    mllp_port = int(args.mllp_port if args.mllp_port is not None else app.config["MLLP_PORT"] or 0)
    processes = int(args.processes or 1)
    if args.listen_fd is not None:      # one of `serve --processes N`'s processes: the socket is bound
        server = make_server(app, sockets=[socket.socket(fileno=int(args.listen_fd))], **settings)
        print(f"gateway process {args.process_index} (pid {os.getpid()}) serving", flush=True)
    else:
        # bind both ports before anything is announced or changed: a second `serve` on a busy port
        # stops here, leaving the running gateway's demo secret and files alone
        from gateway.processes import listening_socket
        try:
            sock = listening_socket(host, port)
        except OSError as exc:
            return _cannot_listen("HTTP", host, port, exc)
        port = sock.getsockname()[1]        # the one chosen, when asked for port 0
        if mllp_port:
            try:
                socket.create_server((host, mllp_port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
            except OSError as exc:
                sock.close()
                return _cannot_listen("MLLP", host, mllp_port, exc)
        from gateway.security.cli import announce_demo_client
        announce_demo_client(app)       # before MLLP admits connections: the demo client is bound to loopback
        if processes > 1:
            from gateway.processes import serve_in_processes
            app.extensions["gateway"].store.engine.dispose()     # the processes open their own
            return serve_in_processes(sock, processes, app.config["DATA_DIR"], int(args.threads), mllp_port,
                                      workers=not args.no_workers)
        server = make_server(app, sockets=[sock], **settings)
    listener = None
    if mllp_port:
        from gateway.ingest.mllp_handler import mllp_server
        from gateway.security.mllp_binding import MllpBinding, tls_context
        listener = mllp_server(app.extensions["gateway"].pipeline, host, mllp_port,
                               MllpBinding(app.extensions["security"]), tls_context(app.config))
        listener.start()
        print(f"MLLP listener on {host}:{listener.address[1]}", flush=True)
    if args.listen_fd is None:
        print(f"Lecheng FHIR gateway on http://{host}:{port}  (FHIR base /fhir, HL7 v2 POST /hl7v2, "
              f"database {app.config['DATABASE_URL']})", flush=True)
    from gateway.ingest.replay import RecoverySweep     # messages a crash left "received" (docstring there)
    recovery = RecoverySweep(app.extensions["gateway"], float(app.config["RECOVER_AFTER_SECONDS"])).start()
    from gateway.store.checkpoint import WalCheckpointer      # SQLite: WAL checkpoints off the write path
    checkpointer = WalCheckpointer(app.extensions["gateway"].store.engine).start()
    workers = None
    if not args.no_workers:             # routing: deliver the outbox from this process
        from gateway.routing import make_workers
        gateway = app.extensions["gateway"]
        workers = make_workers(gateway.config, gateway.store.engine, gateway.routes).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        recovery.stop()
        checkpointer.stop()
        if listener is not None:
            listener.stop()
        if workers is not None:
            workers.stop()
    return 0


def cmd_mllp(args: argparse.Namespace) -> int:
    """Run the MLLP listener alone (HIS interface engines speak MLLP over TCP)."""
    from gateway.ingest.mllp_handler import mllp_server
    from gateway.runtime import Gateway
    overrides = {"DATA_DIR": args.data_dir} if getattr(args, "data_dir", None) else {}
    _unconfigured_routes(overrides)
    gw = Gateway.from_config(load_config(overrides))
    host = args.host or gw.config["HOST"]
    if _refuse_public_bind(host, gw.config):
        return 2
    from gateway.security import Security
    from gateway.security.mllp_binding import MllpBinding, tls_context
    port = int(args.port or gw.config["MLLP_PORT"] or 2575)
    server = mllp_server(gw.pipeline, host, port,
                         MllpBinding(Security.from_config(gw.config, gw.store.engine)), tls_context(gw.config))
    try:
        server.start()
    except OSError as exc:
        return _cannot_listen("MLLP", host, port, exc)
    host, port = server.address
    print(f"Lecheng FHIR gateway MLLP listener on {host}:{port}", flush=True)
    from gateway.ingest.replay import RecoverySweep
    RecoverySweep(gw, float(gw.config["RECOVER_AFTER_SECONDS"])).start()
    from gateway.store.checkpoint import WalCheckpointer
    WalCheckpointer(gw.store.engine).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
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
    serve.add_argument("--host", help="address to listen on (GATEWAY_HOST, default 127.0.0.1; beyond loopback "
                                      "only with GATEWAY_ENVIRONMENT=production)")
    serve.add_argument("--port", type=int, help="HTTP port (GATEWAY_PORT, default 8080)")
    serve.add_argument("--threads", type=int, default=8, help="HTTP worker threads (default 8)")
    serve.add_argument("--mllp-port", type=int, help="also run the MLLP listener on this port (GATEWAY_MLLP_PORT; "
                                                     "default: no MLLP listener)")
    serve.add_argument("--no-workers", action="store_true",
                       help="do not deliver routed resources from this process (run `fhir-gateway worker` instead)")
    serve.add_argument("--processes", type=int, default=1,
                       help="gateway processes sharing the HTTP port (default 1; one process uses at most one "
                            "core); the first also runs MLLP, recovery and delivery (gateway/processes.py)")
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)        # set by --processes for its own
    serve.add_argument("--process-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    mllp = sub.add_parser("mllp", help="run the MLLP listener (HL7 v2 over TCP)")
    mllp.add_argument("--host", help="address to listen on (GATEWAY_HOST, default 127.0.0.1)")
    mllp.add_argument("--port", type=int, help="MLLP port (GATEWAY_MLLP_PORT, default 2575)")
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
    from gateway.store.commands import add_db_parsers
    add_db_parsers(sub)
    _data_dir_everywhere(sub)
    return parser


def _data_dir_everywhere(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    """``--data-dir`` is also taken after the subcommand (``fhir-gateway serve --data-dir /srv/gw``)."""
    for parser in {id(p): p for p in sub.choices.values()}.values():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _data_dir_everywhere(nested[0])
            continue
        if not any("--data-dir" in a.option_strings for a in parser._actions):
            parser.add_argument("--data-dir", default=argparse.SUPPRESS,
                                help="data directory (GATEWAY_DATA_DIR, default ./var)")


def main(argv: list[str] | None = None) -> int:
    from gateway.observability import configure_logging
    configure_logging(load_config().get("LOG_FORMAT", "text"))
    args = build_parser().parse_args(argv)
    from gateway.mapping.engine import MappingError
    from gateway.store.migrations import SchemaError
    try:
        status = args.func(args)
        sys.stdout.flush()          # inside the try: a closed pipe shows here for short outputs
        return status
    except BrokenPipeError:
        # the reader went away (`fhir-gateway deliveries list | head`): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except MappingError as exc:        # a broken mapping file: the gateway does not start (file:line each)
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        print("the gateway does not start with a broken mapping; `fhir-gateway mappings check` lists "
              "the problems", file=sys.stderr)
        return 2
    except SchemaError as exc:         # the database is not at this release's schema (gateway/store/migrations)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
