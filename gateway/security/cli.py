"""``fhir-gateway clients add|list|revoke|rotate`` and ``fhir-gateway keys rotate``, and the demo
client that ``serve`` prints outside production."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gateway.config import load_config
from gateway.security.clients import ClientError
from gateway.security.scopes import ROLE_SCOPES, ROLES

DEMO_CLIENT_ID = "demo-admin"
DEMO_ORGANIZATION = "LECHENG_GW"


def _config(args: argparse.Namespace) -> dict:
    return load_config({"DATA_DIR": args.data_dir} if getattr(args, "data_dir", None) else None)


def cmd_clients(args: argparse.Namespace) -> int:
    from gateway.security.service import clients_for_config
    registry = clients_for_config(_config(args))
    try:
        if args.action == "add":
            jwks = json.loads(Path(args.jwks).read_text(encoding="utf-8")) if args.jwks else None
            client, secret = registry.add(args.client_id, args.organization, args.role,
                                          secret=not args.no_secret, jwks=jwks,
                                          mllp_addresses=args.mllp_address or [],
                                          tls_subjects=args.tls_subject or [], description=args.description or "")
            print(f"added {client.client_id}: {client.role} of {client.organization}")
            print(f"  scopes it may get: {ROLE_SCOPES[client.role]}")
            if secret:
                print(f"  client_secret: {secret}")
                print("  (shown once; only its hash is kept. `clients rotate` makes a new one)")
        elif args.action == "list":
            for client in registry.all():
                view = client.public_view()
                print(f"{view['client_id']:24} {view['role']:20} {view['organization']:24} {view['status']:8} "
                      f"{','.join(view['auth']) or '-':34} mllp={','.join(view['mllp_addresses']) or '-'}")
        elif args.action == "revoke":
            client = registry.revoke(args.client_id)
            print(f"revoked {client.client_id}: its tokens are refused from now on")
        elif args.action == "rotate":
            secret = registry.rotate(args.client_id)
            print(f"new client_secret for {args.client_id}: {secret}")
            print("  (shown once; the old secret no longer works)")
    except (ClientError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.security.service import keys_for_config
    key = keys_for_config(_config(args)).rotate()
    print(f"new signing key {key.kid}: it signs new tokens; earlier keys still verify until rotated out")
    return 0


def add_security_parsers(sub: argparse._SubParsersAction) -> None:
    clients = sub.add_parser("clients", help="manage registered API clients (add, list, revoke, rotate)")
    actions = clients.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="register a client; prints its secret once")
    add.add_argument("client_id")
    add.add_argument("--organization", required=True, help="facility code, e.g. BOAO_SUPER_HOSPITAL (= MSH-4)")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--jwks", help="file with the client's public JWKS (SMART private_key_jwt)")
    add.add_argument("--no-secret", action="store_true", help="JWKS only, no client secret")
    add.add_argument("--mllp-address", action="append", help="source IP or network allowed to send over MLLP as "
                                                              "this client (repeatable)")
    add.add_argument("--tls-subject", action="append", help="TLS client certificate subject CN bound to this client")
    add.add_argument("--description")
    actions.add_parser("list", help="list clients (never secrets)")
    for name, text in (("revoke", "refuse the client and its tokens from now on"),
                       ("rotate", "give the client a new secret; the old one stops working")):
        action = actions.add_parser(name, help=text)
        action.add_argument("client_id")
    clients.set_defaults(func=cmd_clients)

    keys = sub.add_parser("keys", help="the gateway's token-signing keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("rotate", help="add a new signing key (kid); earlier keys keep verifying")
    keys.set_defaults(func=cmd_keys)


def announce_demo_client(app, out=sys.stdout) -> str | None:
    """Outside production: the demo admin client and how to use it, printed.

    Its secret is kept (readable by this user only) in ``<DATA_DIR>/demo-client.secret`` and printed
    again at the next start, so a restart does not stale the secret in the README commands a
    newcomer is following; a missing or no-longer-valid one is replaced. Returns the secret (None in
    production, where no demo client exists and none is printed)."""
    security = app.extensions["security"]
    if security.production:
        return None
    kept = Path(app.config["DATA_DIR"]) / "demo-client.secret"
    secret = kept.read_text(encoding="utf-8").strip() if kept.is_file() else ""
    if not secret or security.clients.authenticate_secret(DEMO_CLIENT_ID, secret) is None:
        _client, secret = security.clients.add(DEMO_CLIENT_ID, DEMO_ORGANIZATION, "admin", replace=True,
                                               mllp_addresses=["127.0.0.1", "::1"],
                                               description="demo client (development only)")
        kept.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as fh:
            fh.write(secret + "\n")
    root = f"http://{app.config['HOST']}:{app.config['PORT']}"
    print(f"Demo client (development only; GATEWAY_ENVIRONMENT=production turns it off): "
          f"client_id={DEMO_CLIENT_ID} client_secret={secret}\n"
          f"  get a token:  curl -s -u {DEMO_CLIENT_ID}:{secret} -d grant_type=client_credentials {root}/auth/token\n"
          f"  then send it: curl -s -H \"Authorization: Bearer $TOKEN\" {root}/fhir/MedicationRequest", file=out,
          flush=True)
    return secret
