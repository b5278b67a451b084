"""Tables: current resources, every version, the search indexes and the inbound message log.

SQLAlchemy Core so the same code runs on the embedded SQLite file and on PostgreSQL in production.
"""
from __future__ import annotations

from sqlalchemy import (Boolean, Column, Float, Index, Integer, LargeBinary, MetaData, PrimaryKeyConstraint,
                        String, Table, Text, UniqueConstraint, and_, bindparam, case, create_engine, event, func, or_, select)
import fcntl
import os
import sqlite3
import threading
from pathlib import Path

from sqlalchemy.engine import Connection, Engine

from gateway.store.checkpoint import WAL_BACKSTOP_PAGES
from gateway.store.content import DeflatedBytes, DeflatedText, StoredJson

metadata = MetaData()

resources = Table(
    "resources", metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", String(40), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", StoredJson, nullable=False),
    # the organization that first sent it (gateway/store/access.py); NULL: the gateway's own (Person links)
    Column("owner", String(64)),
    Index("ix_resources_updated", "res_type", "last_updated"),
    Index("ix_resources_owner", "owner", "res_type"),
)

resource_versions = Table(
    "resource_versions", metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", String(40), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("method", String(10), nullable=False),
    Column("content", StoredJson, nullable=False),
    Index("ix_versions_updated", "last_updated"),
)


# The current version's JSON is stored once, in ``resources``: its ``resource_versions`` row holds
# CURRENT_CONTENT (empty, which no JSON is) until a newer version supersedes it and the JSON moves
# there (ResourceStore). Read a version's JSON through ``version_content()``.
CURRENT_CONTENT = b""


def version_content():
    """A version's JSON: its own when superseded, else the resource's current content."""
    v, r = resource_versions, resources.alias("current_version")   # aliased: the outer query may join resources
    current = (select(r.c.content).where(r.c.res_type == v.c.res_type, r.c.res_id == v.c.res_id)
               .correlate_except(r).scalar_subquery())
    return case((func.length(v.c.content) == 0, current), else_=v.c.content).label("content")


def _index_table(name: str, *value_columns: Column) -> Table:
    """A search index table, keyed by (type, id, param, seq): ``seq`` numbers a resource's rows in the
    table (search_parameters.index_rows), so the key is unique while values may repeat or be NULL.

    On SQLite the table is ``WITHOUT ROWID``: its rows live in the key's own B-tree, which serves
    unindexing a resource and reading its sort value (every column is there). A rowid table needed
    that as a separate covering index, so each index row was kept three times (table, per-resource
    index, lookup index); now twice: a third less space and one B-tree insert less per row."""
    return Table(
        name, metadata,
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("param", String(64), nullable=False),
        Column("seq", Integer, nullable=False),
        *value_columns,
        PrimaryKeyConstraint("res_type", "res_id", "param", "seq", name=f"pk_{name}"),
        sqlite_with_rowid=False,
    )


idx_token = _index_table("idx_token", Column("system", String(255)), Column("code", String(255), nullable=False))
# lookup indexes end with res_id so a search reads the index alone (covering)
Index("ix_idx_token_lookup", idx_token.c.res_type, idx_token.c.param, idx_token.c.code, idx_token.c.system,
      idx_token.c.res_id)
idx_string = _index_table("idx_string", Column("value", String(512), nullable=False),
                         Column("exact", String(512)))   # as written, for :exact (value is case/accent folded)
Index("ix_idx_string_lookup", idx_string.c.res_type, idx_string.c.param, idx_string.c.value, idx_string.c.res_id)
idx_date = _index_table("idx_date", Column("low", String(32), nullable=False), Column("high", String(32), nullable=False))
Index("ix_idx_date_lookup", idx_date.c.res_type, idx_date.c.param, idx_date.c.low, idx_date.c.high, idx_date.c.res_id)
Index("ix_idx_date_high", idx_date.c.res_type, idx_date.c.param, idx_date.c.high, idx_date.c.low, idx_date.c.res_id)
idx_reference = _index_table("idx_reference", Column("target", String(255), nullable=False))
Index("ix_idx_reference_lookup", idx_reference.c.res_type, idx_reference.c.param, idx_reference.c.target,
      idx_reference.c.res_id)

def token_match(tokens: "list[tuple[str | None, str]]"):
    """idx_token rows carrying any of the (system, code) pairs, written so SQLite and PostgreSQL
    seek the lookup index on ``code IN (...)``: an OR of (system AND code) pairs alone made SQLite
    read every token row of the type through the (type, id, param) index."""
    pairs = [and_(idx_token.c.system == system, idx_token.c.code == code) for system, code in tokens]
    if len(pairs) == 1:
        return pairs[0]
    return and_(idx_token.c.code.in_(sorted({code for _system, code in tokens})), or_(*pairs))


def token_pairs_match(count: int):
    """:func:`token_match` for ``count`` pairs as bind parameters (s0, c0, ...; ``codes``: the distinct
    codes, expanding), for statements built once."""
    pairs = [and_(idx_token.c.system == bindparam(f"s{i}"), idx_token.c.code == bindparam(f"c{i}"))
             for i in range(count)]
    if count == 1:
        return pairs[0]
    return and_(idx_token.c.code.in_(bindparam("codes", expanding=True)), or_(*pairs))


def token_pairs_params(tokens: "list[tuple[str, str]]") -> dict:
    """The bind parameters :func:`token_pairs_match` takes for these (system, code) pairs."""
    params = {**{f"s{i}": system for i, (system, _code) in enumerate(tokens)},
              **{f"c{i}": code for i, (_system, code) in enumerate(tokens)}}
    if len(tokens) > 1:
        params["codes"] = sorted({code for _system, code in tokens})
    return params


def storable_tokens(tokens: "list[tuple[str | None, str]]") -> "list[tuple[str | None, str]]":
    """The (system, code) pairs an index row can hold: one with a NUL matches nothing (index_rows
    refuses it on both stores), and PostgreSQL refuses even to compare text with it."""
    return [(system, code) for system, code in tokens
            if "\x00" not in code and (system is None or "\x00" not in system)]


INDEX_TABLES = {"token": idx_token, "string": idx_string, "date": idx_date, "reference": idx_reference}

message_log = Table(
    "message_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("received_at", String(40), nullable=False),
    Column("transport", String(16), nullable=False),
    Column("format", String(32), nullable=False),          # hl7v2, or a mapping name for XML/CSV/JSON
    Column("sender_application", String(255)),
    Column("sender_facility", String(255)),
    Column("control_id", String(255)),
    Column("message_type", String(32)),
    Column("content_sha256", String(64), nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("status", String(16), nullable=False),          # received | processed | error | rejected | on-hold
    Column("ack", DeflatedBytes),                          # the ACK sent, deflated (gateway/store/content.py)
    Column("ack_code", String(2)),                         # its MSA-1, for the message browser's filter
    Column("detail", DeflatedText),                        # JSON: warnings, errors, resources written
    Index("ix_message_log_control", "sender_facility", "control_id"),
    Index("ix_message_log_status", "status"),
)


SQLITE_BUSY_SECONDS = 30


class SqliteWriteLock:
    """The write lock of one SQLite file, for every writer of this process and of the others.

    SQLite's own wait for its write lock polls: a writer that finds it taken sleeps 1, 2, 5, 10 ...
    100 ms between tries, so at eight concurrent messages a writer often slept well past the moment
    the lock came free, and one message in a hundred waited half a second; a second ``serve``
    process on the same file, whose writers only ever polled, lost nearly every hand-over to the
    first (p99 0.5-2.5 s at two processes). Writers of one process queue on a Python lock, which
    wakes the next one the moment the last one commits or rolls back; the one at its head then
    waits, without polling, for an exclusive ``flock`` on ``<file>-writers.lock``, which the kernel
    hands to a waiting process the moment the holder lets go (or dies: the lock goes with it).
    SQLite's busy wait is left for writers that are not the gateway's (the sqlite3 shell).

    ``timeout`` bounds the wait for this process's writers only: ``flock`` has no timeout, so a
    process stopped (not killed) inside a write transaction holds the other processes' writers
    until it goes on or is killed, where SQLite's busy wait gave up after SQLITE_BUSY_SECONDS."""

    def __init__(self, path: str | None):
        self._threads = threading.Lock()
        self._path = f"{path}-writers.lock" if path else None       # None: an in-memory database
        self._fd: int | None = None
        self._pid: int | None = None

    def acquire(self, timeout: float) -> bool:
        if not self._threads.acquire(timeout=timeout):
            return False
        if self._path is None:
            return True
        try:
            if self._pid != os.getpid():    # a forked child opens its own: an inherited one shares the lock
                if self._fd is not None:
                    os.close(self._fd)          # the parent's lock stays: it holds its own descriptor
                self._fd, self._pid = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)         # waits without the GIL
        except BaseException:
            self._threads.release()
            raise
        return True

    def release(self) -> None:
        try:
            if self._path is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


class _SqliteConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions also hold the file's :class:`SqliteWriteLock`."""
    write_lock: SqliteWriteLock
    _holds_write_lock = False

    def take_write_lock(self) -> None:
        if not self.write_lock.acquire(timeout=SQLITE_BUSY_SECONDS):
            raise sqlite3.OperationalError(f"database is locked: this process's writers held it for over "
                                           f"{SQLITE_BUSY_SECONDS} s")
        self._holds_write_lock = True

    def release_write_lock(self) -> None:
        if self._holds_write_lock:
            self._holds_write_lock = False
            self.write_lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release_write_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_write_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_write_lock()


_WRITE_LOCKS: dict[str, SqliteWriteLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _process_write_lock(url: str) -> SqliteWriteLock:
    """One lock per database file in this process, however many engines open it; an in-memory
    database is its engine's own."""
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return SqliteWriteLock(None)
    key = os.path.realpath(path)
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, SqliteWriteLock(key))


def make_engine(url: str, schema_upgrade: str = "auto") -> Engine:
    """An engine with SQLite tuned for a multi-threaded server (WAL, a busy timeout), on a database
    whose schema is this release's (gateway/store/migrations: ``schema_upgrade`` "auto" upgrades a
    database that is behind, "off" refuses it, "none" leaves it to the caller, ``db upgrade``).

    SQLite: 4 kB pages in a new file (with JSON deflated, an order is about 0.6 kB; 8 kB pages
    made each commit write twice the WAL bytes: 14% of a message's CPU, for 3% less space); WAL with ``synchronous=NORMAL``: a commit survives the gateway process being killed
    (what store-before-ACK guards against), while an OS crash or power cut may lose the last
    commits not yet synced at a checkpoint. ``FULL`` would fsync every commit (2-4 ms on this kind of
    VM, under the one write lock: at most a few hundred commits/s); deployments that need
    power-loss durability of every ACKed message run PostgreSQL, which syncs each commit and
    groups concurrent ones. A 16 MB page cache per connection and memory-mapped reads keep
    the hot index pages of a large store in memory."""
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///"):         # the file's directory, as every caller needs it
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        write_lock = _process_write_lock(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS,
                                                  "factory": _SqliteConnection})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            dbapi_connection.isolation_level = None   # we issue BEGIN ourselves (below)
            dbapi_connection.write_lock = write_lock
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA page_size=4096")       # takes effect only in a new, empty file
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA cache_size=-16384")
            cursor.execute("PRAGMA mmap_size=268435456")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")   # see gateway/store/checkpoint.py
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            # writers take the write lock at BEGIN, so two writers never deadlock upgrading a read lock
            if not conn.get_execution_options().get("write", False):
                conn.exec_driver_sql("BEGIN")
                return
            conn.connection.dbapi_connection.take_write_lock()
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                conn.connection.dbapi_connection.release_write_lock()
                raise
    else:
        engine = create_engine(url, pool_pre_ping=True)
    if schema_upgrade != "none":
        from gateway.store import migrations
        migrations.prepare(engine, schema_upgrade)
    return engine


class DriverInsert:
    """An INSERT of every column of ``table``, run with ``exec_driver_sql``: the store runs about
    thirty fixed inserts per message, and SQLAlchemy's compiled path (cache key, bind processing)
    cost 28 µs per one-row insert against 13 µs for the driver's own SQL. Values go in as the
    database takes them: no column type runs, so a caller passes StoredJson content deflated."""

    def __init__(self, table: Table):
        columns = [c.name for c in table.columns]
        self._sql = {style: f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
                            f"({', '.join(mark.format(c) for c in columns)})"
                     for style, mark in (("named", ":{}"), ("pyformat", "%({})s"))}

    def run(self, conn: "Connection", rows: "dict | list[dict]") -> None:
        """One row, or several in one executemany."""
        conn.exec_driver_sql(self._sql["named" if conn.dialect.name == "sqlite" else "pyformat"], rows)


# ---------------------------------------------------------------- routing outbox (gateway/routing)
# Written in the same transaction as the resource versions they deliver, so a stored version always
# has its deliveries. The table is the source of truth; Redis Streams (when configured) only carry ids.
deliveries = Table(
    "deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("destination", String(64), nullable=False),
    Column("organization", String(255)),                   # receiving organization's facility code
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("action", String(10), nullable=False),          # create | update | delete
    Column("rules", String(512), nullable=False),          # names of the rules that sent it here
    Column("message_type", String(64)),
    Column("sender", String(255)),
    Column("status", String(10), nullable=False),          # pending | failed | delivered | dead | held
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("created_at", Float, nullable=False),           # epoch seconds
    Column("next_attempt_at", Float, nullable=False),
    Column("delivered_at", Float),
    Column("lease_owner", String(128)),                    # relay / worker holding it until lease_until
    Column("lease_until", Float),
    UniqueConstraint("destination", "res_type", "res_id", "version_id", name="uq_deliveries_version"),
    Index("ix_deliveries_due", "status", "next_attempt_at"),
    Index("ix_deliveries_resource", "destination", "res_type", "res_id", "version_id"),
    Index("ix_deliveries_organization", "organization", "res_type", "status"),
)


# ------------------------------------------------------------------ search (quantity/number index, covering lookups)
idx_quantity = _index_table("idx_quantity", Column("value", Float, nullable=False), Column("system", String(255)),
                            Column("code", String(255)), Column("unit", String(255)))
Index("ix_idx_quantity_lookup", idx_quantity.c.res_type, idx_quantity.c.param, idx_quantity.c.value)
INDEX_TABLES["quantity"] = idx_quantity


# ---------------------------------------------------------------- bulk export jobs (gateway/export)
# One row per $export kick-off, so a restarted gateway still answers status polls and resumes the
# jobs it had not finished.
export_jobs = Table(
    "export_jobs", metadata,
    Column("id", String(36), primary_key=True),
    Column("status", String(16), nullable=False),          # accepted | in-progress | completed | failed | cancelled
    Column("kind", String(16), nullable=False),            # system | patient
    Column("request_url", Text, nullable=False),
    Column("params", LargeBinary, nullable=False),         # JSON: types, _since, parsed _typeFilter criteria
    Column("transaction_time", String(40), nullable=False),
    Column("created_at", Float, nullable=False),           # epoch seconds
    Column("finished_at", Float),
    Column("progress", String(255)),
    Column("output", LargeBinary),                         # JSON: [{type, file, count}]
    Column("error", Text),
    # the process running it (gateway/export/jobs.py), which renews lease_until while it lives; a job
    # whose lease ran out is taken over by another process, never while its owner is still working
    Column("owner", String(64)),
    Column("lease_until", Float),
    Index("ix_export_jobs_status", "status"),
)
