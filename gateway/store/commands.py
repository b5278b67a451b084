"""``fhir-gateway db upgrade|current``: the database schema, one revision at a time (Alembic)."""
from __future__ import annotations

import argparse
import sys

from gateway.config import load_config


def _engine(args: argparse.Namespace):
    from gateway.store.schema import make_engine
    config = load_config({"DATA_DIR": args.data_dir} if getattr(args, "data_dir", None) else {})
    url = config["DATABASE_URL"]
    return make_engine(url, schema_upgrade="none"), url


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from gateway.store import migrations
    engine, url = _engine(args)
    try:
        before, after = migrations.upgrade(engine)
    except migrations.SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if before == after:
        print(f"{_shown(url)}: schema already at revision {after}")
    else:
        print(f"{_shown(url)}: schema upgraded from {before or '(empty database)'} to {after}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    """Exit 0 when the database is at this release's revision, 1 when an upgrade is due, 2 when it is
    newer than this release (a deploy script can gate on it)."""
    from gateway.store import migrations
    engine, url = _engine(args)
    try:
        with engine.connect() as conn:
            revision = migrations.current_revision(conn)
    finally:
        engine.dispose()
    head = migrations.head_revision()
    if revision == head:
        print(f"{_shown(url)}: revision {revision} (current)")
        return 0
    if revision is not None and revision not in migrations.known_revisions():
        print(f"{_shown(url)}: revision {revision}, newer than this gateway ({head})")
        return 2
    print(f"{_shown(url)}: revision {revision or '(empty database)'}; this gateway needs {head}: "
          "run `fhir-gateway db upgrade`")
    return 1


def add_db_parsers(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    db = sub.add_parser("db", help="the database schema: upgrade it, or show its revision")
    actions = db.add_subparsers(dest="db_command", required=True)
    upgrade = actions.add_parser("upgrade", help="bring the database to this release's schema (once per "
                                                 "deployment; safe while other processes start)")
    upgrade.set_defaults(func=cmd_db_upgrade)
    current = actions.add_parser("current", help="print the database's schema revision (exit 1: upgrade due)")
    current.set_defaults(func=cmd_db_current)
