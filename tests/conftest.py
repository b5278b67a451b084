"""Shared fixtures: a gateway app on a temporary SQLite file, sample messages, and an HTTP client."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from werkzeug.serving import make_server

from gateway import create_app
from tests.security.credentials import authenticated

DATA = Path(__file__).resolve().parent / "data"
SAMPLES = DATA / "samples"
EXTERNAL = DATA / "external"


@contextmanager
def served(app) -> Iterator[str]:
    """Serve a WSGI app on a free loopback port in a thread; yields its base URL (for real HTTP clients)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


def sample(name: str) -> bytes:
    """A message from tests/data/samples (copied from ../shared/samples, unedited)."""
    return (SAMPLES / name).read_bytes()


@pytest.fixture
def app(tmp_path):
    return create_app({"DATA_DIR": str(tmp_path), "TESTING": True})


@pytest.fixture
def client(app):
    """An admin client with a real token from /auth/token (every endpoint needs one now)."""
    return authenticated(app, "admin")


@pytest.fixture
def anonymous_client(app):
    """No credentials at all."""
    return app.test_client()


@pytest.fixture
def client_as(app):
    """``client_as(role, organization=None)``: a test client with a token for a new client of that role."""
    def make(role: str, organization: str | None = None, scope: str | None = None):
        return authenticated(app, role, organization, scope=scope)
    return make


@pytest.fixture
def gateway(app):
    return app.extensions["gateway"]


def post_hl7(client, raw: bytes):
    """POST one message to /hl7v2; returns (response, ACK segments as lists of fields)."""
    response = client.post("/hl7v2", data=raw, content_type="x-application/hl7-v2+er7")
    segments = [line.split("|") for line in response.data.decode("utf-8", "replace").split("\r") if line]
    return response, segments


def ack_segment(segments, name: str) -> list[str]:
    return next(s for s in segments if s[0] == name)


@pytest.fixture(scope="session")
def r4check():
    """The independent R4 validator (tests/r4check): one Node process for the whole session."""
    from tests.r4check import R4Check, R4CheckUnavailable
    try:
        checker = R4Check()
    except R4CheckUnavailable as exc:
        pytest.fail(str(exc))          # never a skip: CI must run the independent check
    yield checker
    checker.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL on a free loopback port for this test session (tests/postgres.py); each test
    takes a database of its own with ``postgres_server.new_database()``. Never a skip: CI installs it."""
    from tests.postgres import PostgresServer, PostgresUnavailable
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


# a database the person running the tests named: every gateway uses it, nothing is made or dropped
_GIVEN_DATABASE_URL = os.environ.get("GATEWAY_DATABASE_URL")
_STORE_FREE_URL = "postgresql+psycopg://store-free-test@127.0.0.1:1/none"


def _postgresql_run() -> bool:
    return os.environ.get("GATEWAY_TEST_STORE", "sqlite") == "postgresql" and not _GIVEN_DATABASE_URL


@contextmanager
def _database_of_its_own(request, patch: pytest.MonkeyPatch) -> Iterator[None]:
    """GATEWAY_DATABASE_URL names a new PostgreSQL database for this test or module until it ends."""
    if _store_free(request.node):
        # a parser or validator unit test: no database to make and drop (0.2 s each, 700 tests);
        # one that makes a gateway after all fails loudly here instead of quietly using SQLite
        patch.setenv("GATEWAY_DATABASE_URL", _STORE_FREE_URL)
        yield
        return
    server = request.getfixturevalue("postgres_server")
    url = server.new_database(with_schema=True)
    patch.setenv("GATEWAY_DATABASE_URL", url)
    try:
        yield
    finally:
        server.drop_database(url)


@pytest.fixture(scope="module", autouse=True)
def _module_store_backend(request):
    """The same as :func:`_store_backend` for the gateways a module-scoped fixture makes (once per
    module, before any test's own database exists): they store in a PostgreSQL database of the
    module's, so they too run on both stores."""
    if not _postgresql_run():
        yield
        return
    with pytest.MonkeyPatch.context() as patch, _database_of_its_own(request, patch):
        yield


@pytest.fixture(autouse=True)
def _store_backend(request, monkeypatch):
    """``GATEWAY_TEST_STORE=postgresql``: every gateway a test makes (in process, or a ``serve`` it
    starts) stores in a PostgreSQL database of that test's own instead of a SQLite file, so the
    whole suite runs on both stores (README "Tests"; .ci/run runs both)."""
    if not _postgresql_run():
        yield
        return
    with _database_of_its_own(request, monkeypatch):   # monkeypatch puts the URL back after the test
        yield


# unit tests of parsing and validation: they never make a gateway (tests/test_store_free.py checks
# that the list stays true); test_r4_independent runs the CLI, which does
STORE_FREE_DIRECTORIES = ("hl7v2", "validation")
STORE_USING_FILES = ("test_r4_independent.py",)


def _store_free(item) -> bool:
    path = Path(str(item.fspath))
    return path.parent.name in STORE_FREE_DIRECTORIES and path.parent.parent == Path(__file__).parent \
        and path.name not in STORE_USING_FILES


@pytest.fixture(params=["sqlite", "postgresql"])
def both_stores_app(request, tmp_path, monkeypatch):
    """A gateway app on a SQLite file, then on a PostgreSQL database of its own, whatever
    GATEWAY_TEST_STORE says: for the store tests that compare the two."""
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    config = {"DATA_DIR": str(tmp_path), "TESTING": True}
    if request.param == "postgresql":
        config["DATABASE_URL"] = request.getfixturevalue("postgres_server").new_database(with_schema=True)
    app = create_app(config)
    yield app
    app.extensions["gateway"].store.engine.dispose()
