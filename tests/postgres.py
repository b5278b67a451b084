"""A real PostgreSQL for the tests: ``initdb`` into a temporary directory, started on a free loopback
port, stopped at the end of the session. PostgreSQL refuses to run as root, so as root (CI) the
cluster is made and run by the ``postgres`` system user the Debian package creates; as anyone else
it runs as that user. Each test gets a database of its own (``CREATE DATABASE``), so tests never
see each other's rows.
"""
from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

READY = 2          # template copies made ahead of the tests that will ask for them
MAX_DOOMED = 40    # finished tests' databases not yet dropped (about 8 MB each) before drops come first
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
        self._template: str | None = None
        self._ready: queue.Queue[str] = queue.Queue()
        self._doomed: queue.Queue[str] = queue.Queue()
        self._stopping = threading.Event()
        self._housekeeping_lock = threading.Lock()
        self._housekeeper: threading.Thread | None = None

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
        gateway's tables (made once), so a test pays a file copy instead of creating every table;
        a background thread keeps a few such copies ready, so a test seldom waits even for that."""
        if with_schema:
            self._schema_template()
            self._start_housekeeper()
            return self.url(self._ready.get(timeout=120))
        name = "t_" + uuid.uuid4().hex[:16]
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a test's database (in the background), ending the connections its engines still hold."""
        self._start_housekeeper()
        self._doomed.put(url.rsplit("/", 1)[1])

    def _start_housekeeper(self) -> None:
        """One thread that drops finished tests' databases and keeps READY copies of the template
        made, with a connection of its own (a test's ~75 ms CREATE and ~90 ms DROP, off its clock)."""
        with self._housekeeping_lock:
            if self._housekeeper is not None:
                return
            self._housekeeper = threading.Thread(target=self._housekeep, name="postgres-housekeeper", daemon=True)
            self._housekeeper.start()

    def _housekeep(self) -> None:
        import psycopg
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=gateway dbname=postgres",
                             autocommit=True) as conn:
            while not self._stopping.is_set():
                # a test waiting for its database comes first; drops wait unless too many pile up
                if self._ready.qsize() < READY and self._template and self._doomed.qsize() < MAX_DOOMED:
                    name = "t_" + uuid.uuid4().hex[:16]
                    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template}"')
                    self._ready.put(name)
                    continue
                try:
                    doomed = self._doomed.get_nowait()
                except queue.Empty:
                    self._stopping.wait(0.02)
                    continue
                conn.execute(f'DROP DATABASE IF EXISTS "{doomed}" WITH (FORCE)')

    def _schema_template(self) -> str:
        if not self._template:
            from gateway.store import make_engine
            self._admin('CREATE DATABASE "gateway_template"')
            engine = make_engine(self.url("gateway_template"))
            engine.dispose()
            self._template = "gateway_template"
        return self._template

    def stop(self) -> None:
        self._stopping.set()
        if self._housekeeper is not None:
            self._housekeeper.join(10)
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
