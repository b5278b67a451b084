"""The write lock of a SQLite file across threads and processes (gateway/store/schema.py
``SqliteWriteLock``), on real files and real processes."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from gateway.store.schema import SqliteWriteLock, make_engine

WRITER = """
import sys, time
from gateway.store.schema import make_engine
engine = make_engine(f"sqlite:///{sys.argv[1]}")
name, count = sys.argv[2], int(sys.argv[3])
with engine.connect() as conn:
    conn.exec_driver_sql("SELECT 1")        # connected and migrated before the start line
open(sys.argv[4], "a").write(name + "\\n")
while len(open(sys.argv[4]).read().split()) < 2:
    time.sleep(0.001)
for n in range(count):
    with engine.connect().execution_options(write=True) as conn, conn.begin():
        conn.exec_driver_sql("INSERT INTO turns (writer) VALUES (?)", (name,))
"""


def _taken_elsewhere(lock_file: Path) -> bool:
    """Whether another holder has the file's lock now (tried on a descriptor of our own)."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def test_a_write_transaction_holds_the_files_lock_until_it_commits_and_a_read_never_takes_it(tmp_path):
    db = tmp_path / "gateway.db"
    engine = make_engine(f"sqlite:///{db}")
    lock_file = Path(f"{db}-writers.lock")
    with engine.connect() as conn, conn.begin():
        conn.exec_driver_sql("SELECT count(*) FROM resources")
        assert not _taken_elsewhere(lock_file)
    with engine.connect().execution_options(write=True) as conn:
        with conn.begin():
            conn.exec_driver_sql("SELECT count(*) FROM resources")
            assert _taken_elsewhere(lock_file)
        assert not _taken_elsewhere(lock_file)
        try:
            with conn.begin():
                assert _taken_elsewhere(lock_file)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        assert not _taken_elsewhere(lock_file)
    engine.dispose()


def test_a_forked_child_waits_for_its_parent_instead_of_sharing_its_lock(tmp_path):
    lock = SqliteWriteLock(str(tmp_path / "gateway.db"))
    assert lock.acquire(1)          # the parent has opened the lock file before forking
    lock.release()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:                    # the child: an inherited descriptor would share the parent's lock
        os.read(ready_r, 1)
        started = time.monotonic()
        lock.acquire(5)
        waited = time.monotonic() - started
        lock.release()
        os._exit(0 if waited >= 0.3 else 1)
    assert lock.acquire(1)
    os.write(ready_w, b"x")
    time.sleep(0.5)
    lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child took the lock while its parent held it"


def test_two_processes_writing_at_once_take_turns(tmp_path):
    """Two processes, each committing as fast as it can: neither waits out the other's whole run (with
    only SQLite's polling wait, the second process got the lock once in hundreds of commits)."""
    db, started, count = tmp_path / "gateway.db", tmp_path / "started", 150
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE turns (seq INTEGER PRIMARY KEY AUTOINCREMENT, writer TEXT)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), name, str(count), str(started)], env=env)
               for name in ("a", "b")]
    for writer in writers:
        assert writer.wait(120) == 0
    with engine.connect() as conn:
        order = [row[0] for row in conn.exec_driver_sql("SELECT writer FROM turns ORDER BY seq")]
    engine.dispose()
    assert sorted(order) == ["a"] * count + ["b"] * count
    # while both were writing (up to the first one's last commit), the longest run of one writer
    both = order[:min(len(order) - order[::-1].index(w) for w in ("a", "b"))]
    longest = max(len(run) for run in "".join(both).replace("ab", "a b").replace("ba", "b a").split())
    assert longest <= count // 3, f"one process held the lock for {longest} commits in a row: {''.join(both)}"
