"""Several gateway processes starting at once on one empty PostgreSQL database all start (issue 13:
``create_all`` raced there, 3 of 3 runs crashed), and then share one store and one cursor key."""
from __future__ import annotations

import subprocess
import sys

from sqlalchemy import inspect

from gateway.store import make_engine
from gateway.store.schema import metadata

START = """
import sys
from gateway import create_app
app = create_app({"DATA_DIR": sys.argv[1], "DATABASE_URL": sys.argv[2]})
cursor = app.extensions["gateway"].store.cursors.encode("fingerprint", False, [], "x")   # HMAC: same key, same text
print("cursor", cursor)
print("started", flush=True)
"""


def test_three_processes_start_together_on_one_empty_postgresql_database(postgres_server, tmp_path):
    url = postgres_server.new_database()
    starts = [subprocess.Popen([sys.executable, "-c", START, str(tmp_path / f"p{n}"), url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(3)]
    outcomes = [p.communicate(timeout=120) for p in starts]
    assert [p.returncode for p in starts] == [0, 0, 0], [err[-2000:] for _out, err in outcomes]
    assert all(out.strip().endswith("started") for out, _err in outcomes)
    cursors = {line for out, _err in outcomes for line in out.splitlines() if line.startswith("cursor ")}
    assert len(cursors) == 1        # the three made one cursor key between them (gateway/security/shared_secrets.py)
    engine = make_engine(url)
    assert set(metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()
