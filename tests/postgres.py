"""A real PostgreSQL for the tests: ``initdb`` into a temporary directory, started on a free loopback
port, stopped at the end of the session. PostgreSQL refuses to run as root, so as root (CI) the
cluster is made and run by the ``postgres`` system user the Debian package creates; as anyone else
it runs as that user. Each test gets a database of its own (``CREATE DATABASE``), so tests never
see each other's rows.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

BIN_DIRS = [Path("/usr/lib/postgresql/15/bin"), *sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]


class PostgresUnavailable(RuntimeError):
    pass


def _binary(name: str) -> str:
    for directory in BIN_DIRS:
        if (directory / name).is_file():
            return str(directory / name)
    found = shutil.which(name)
    if not found:
        raise PostgresUnavailable(f"{name} not found: apt-get install postgresql-15 (.ci/run does)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One throwaway cluster. ``url(database)`` names a database on it (SQLAlchemy, psycopg 3)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._as_other_user = os.geteuid() == 0
        if self._as_other_user:
            shutil.chown(self.root, "postgres", "postgres")
        self._run([_binary("initdb"), "-D", str(self.data), "-U", "gateway", "--auth=trust", "-E", "UTF8",
                   "--locale=C.UTF-8", "--no-sync"])
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                   "-c max_pred_locks_per_transaction=256")
        self._run([_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", options,
                   "-w", "-t", "30", "start"])

    def _run(self, argv: list[str]) -> None:
        if self._as_other_user:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(argv)} failed: {result.stderr or result.stdout}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://gateway@127.0.0.1:{self.port}/{database}"

    def _admin(self, statement: str) -> None:
        import psycopg
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=gateway dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(statement)

    def new_database(self, with_schema: bool = False) -> str:
        """A fresh database; returns its URL. ``with_schema``: a copy of a template holding the
        gateway's tables (made once), so a test pays a file copy instead of creating every table."""
        name = "t_" + uuid.uuid4().hex[:16]
        template = f' TEMPLATE "{self._schema_template()}"' if with_schema else ""
        self._admin(f'CREATE DATABASE "{name}"{template}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a test's database, ending the connections its engines still hold."""
        self._admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def _schema_template(self) -> str:
        if not getattr(self, "_template", None):
            from gateway.store import make_engine
            self._admin('CREATE DATABASE "gateway_template"')
            engine = make_engine(self.url("gateway_template"))
            engine.dispose()
            self._template = "gateway_template"
        return self._template

    def stop(self) -> None:
        try:
            self._run([_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        finally:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    shutil.rmtree(self.root)
                    break
                except OSError:
                    time.sleep(0.1)
