"""``fhir-gateway messages list|show|replay|recover``: the message log from a shell.

The same reads and replays as ``/admin/messages`` (:mod:`gateway.ingest.message_browser`,
:mod:`gateway.ingest.replay`), on the database of ``--data-dir`` / ``GATEWAY_DATABASE_URL``. A
replay from here is audited like one over HTTP: one AuditEvent per message, the operating-system
user as the agent (``cli:<user>``).
"""
from __future__ import annotations

import argparse
import getpass
import sys

import orjson

from gateway.config import load_config


def _gateway(args: argparse.Namespace):
    from gateway.runtime import Gateway
    return Gateway.from_config(load_config({"DATA_DIR": args.data_dir} if getattr(args, "data_dir", None) else None))


def _criteria(args: argparse.Namespace):
    from gateway.ingest.message_browser import MessageFilter
    return MessageFilter(sender=args.sender, message_type=args.type, status=args.status, ack_code=args.ack,
                         control_id=args.control_id, text=args.text, since=args.since, until=args.until,
                         format=args.format, ids=tuple(getattr(args, "ids", None) or ()))


def cmd_messages_list(args: argparse.Namespace) -> int:
    from gateway.ingest.message_browser import find_messages
    criteria = _criteria(args)
    if criteria.problems():
        print("error: " + "; ".join(criteria.problems()), file=sys.stderr)
        return 2
    gateway = _gateway(args)
    try:
        page = find_messages(gateway.store.engine, criteria, args.limit, args.before)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'id':>7}  {'received (UTC)':24} {'sender':24} {'type':10} {'control id':20} {'status':9} ack")
    for m in page:
        print(f"{m.id:>7}  {m.received_at:24} {(m.sender_facility or '-')[:24]:24} {(m.message_type or '-'):10} "
              f"{(m.control_id or '-')[:20]:20} {m.status:9} {m.ack_code or '-'}")
    if len(page) == args.limit:
        print(f"more: --before {page[-1].id}")
    return 0


def cmd_messages_show(args: argparse.Namespace) -> int:
    from gateway.ingest.message_browser import message_detail
    gateway = _gateway(args)
    found = message_detail(gateway.store.engine, args.id, gateway.config["FALLBACK_CHARSET"])
    if found is None:
        print(f"error: message {args.id} is not in the message log", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(found.as_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    m = found.summary
    print(f"message {m.id}: {m.message_type or '-'} {m.control_id or '-'} from {m.sender_application or '-'} at "
          f"{m.sender_facility or '-'}, received {m.received_at} over {m.transport} ({m.format}, "
          f"{found.charset or 'undecodable'})")
    print(f"status {m.status}, ACK {m.ack_code or '-'}")
    for error in found.detail.get("errors", []):
        print(f"  error: {error}")
    for warning in found.detail.get("warnings", []):
        print(f"  warning: {warning}")
    if found.decode_problem:
        print(f"  not readable as HL7 v2: {found.decode_problem}")
    print("\nsegments:")
    for segment in found.segments:
        print(f"  {segment.name} #{segment.index}")
        for f in segment.fields:
            print(f"    {f.position:8} {f.name[:40]:40} {f.value}")
    if not found.segments:
        print("  " + found.text.replace("\r", "\n  "))
    if found.ack:
        print("\nACK sent:\n  " + found.ack.strip("\r\n").replace("\r", "\n  "))
    print("\nresources written:" + ("" if found.resources else " none"))
    for ref in found.resources:
        print(f"  {ref}")
    print("deliveries:" + ("" if found.deliveries else " none"))
    for d in found.deliveries:
        print(f"  {d['id']:>6} {d['destination']:22} {d['status']:9} tries {d['attempts']}  {d.get('lastError') or ''}")
    for replay in found.detail.get("replays", []):
        print(f"replayed {replay['at']} by {replay['by']} (was {replay['status']}, {replay.get('ack_code') or '-'})")
    if found.detail.get("recovered"):
        note = found.detail["recovered"]
        print(f"finished after an interruption {note['at']} by {note['by']}")
    return 0


def cmd_messages_replay(args: argparse.Namespace) -> int:
    from gateway.ingest.admin import replay_text
    from gateway.ingest.replay import replay_matching, replay_message
    criteria = _criteria(args)
    if criteria.problems():
        print("error: " + "; ".join(criteria.problems()), file=sys.stderr)
        return 2
    if criteria.is_empty():
        print("error: name message ids, or a filter (e.g. --sender BOAO_SUPER_HOSPITAL --ack AE --since 2026-03-15)",
              file=sys.stderr)
        return 2
    gateway = _gateway(args)
    who = f"cli:{getpass.getuser()}"
    try:
        if list(criteria.ids) and criteria == type(criteria)(ids=criteria.ids):
            outcomes = [replay_message(gateway, log_id, by=who, force=args.force) for log_id in criteria.ids]
        else:
            outcomes = replay_matching(gateway, criteria, by=who, force=args.force)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _audit(gateway, who, outcomes)
    for outcome in outcomes:
        print(f"message {outcome.log_id}: {replay_text(outcome)}")
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.after] = counts.get(outcome.after, 0) + 1
    print("replayed: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing matched"))
    return 1 if any(o.after in ("missing", "error", "rejected") for o in outcomes) else 0


def cmd_messages_recover(args: argparse.Namespace) -> int:
    from gateway.ingest.admin import replay_text
    from gateway.ingest.replay import recover_interrupted
    gateway = _gateway(args)
    outcomes = recover_interrupted(gateway, args.older_than, by=f"cli:{getpass.getuser()}")
    _audit(gateway, f"cli:{getpass.getuser()}", outcomes)
    for outcome in outcomes:
        print(f"message {outcome.log_id}: {replay_text(outcome)}")
    print(f"{len(outcomes)} interrupted message(s) processed")
    return 0


def _audit(gateway, who: str, outcomes) -> None:
    from gateway.ingest.admin import replay_text
    from gateway.security.audit import AuditRecord
    from gateway.security.service import Security
    audit = Security.from_config(gateway.config, gateway.store.engine).audit
    for outcome in outcomes:
        audit.record(AuditRecord(activity="admin", outcome_status=200 if outcome.after != "error" else 422,
                                 outcome_text=replay_text(outcome), client_id=who, role="admin",
                                 address="local", description=f"replay of message {outcome.log_id} (CLI)",
                                 message_log_id=str(outcome.log_id), transport="cli"))


def _filter_options(parser: argparse.ArgumentParser) -> None:
    from gateway.ingest.message_browser import ACK_CODES, STATUSES
    parser.add_argument("--sender", help="sending facility (MSH-4) or application (MSH-3)")
    parser.add_argument("--type", help="message type, e.g. RDE^O11, or RDE for every trigger event")
    parser.add_argument("--status", choices=STATUSES)
    parser.add_argument("--ack", choices=ACK_CODES[:3], help="the ACK code answered (MSA-1)")
    parser.add_argument("--control-id", help="message control id (MSH-10)")
    parser.add_argument("--text", help="a text anywhere in the raw message")
    parser.add_argument("--since", help="received at or after this date or ISO instant (UTC unless it has an offset)")
    parser.add_argument("--until", help="received before this date or instant")
    parser.add_argument("--format", help="hl7v2, or a document mapping's name")


def add_message_parsers(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    messages = sub.add_parser("messages", help="the message log: list, show, replay, recover")
    actions = messages.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="logged messages, newest first")
    _filter_options(listing)
    listing.add_argument("--limit", type=int, default=50, help="rows per page (default 50)")
    listing.add_argument("--before", type=int, help="only ids below this one (the next page)")
    listing.set_defaults(func=cmd_messages_list)
    show = actions.add_parser("show", help="one message: raw text, named fields, ACK, resources, deliveries")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true", help="as /admin/messages/<id> answers it")
    show.set_defaults(func=cmd_messages_show)
    replay = actions.add_parser("replay", help="process messages again (by id, or every one a filter matches), "
                                               "e.g. after a mapping fix; processed ones are skipped")
    replay.add_argument("ids", nargs="*", type=int)
    _filter_options(replay)
    replay.add_argument("--force", action="store_true", help="also run messages that are already processed")
    replay.set_defaults(func=cmd_messages_replay)
    recover = actions.add_parser("recover", help="process messages a crash left 'received'")
    recover.add_argument("--older-than", type=float, default=30.0,
                         help="only those received at least this many seconds ago (default 30)")
    recover.set_defaults(func=cmd_messages_recover)
