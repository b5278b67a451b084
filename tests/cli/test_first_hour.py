"""What a newcomer meets in the first hour: a second `serve`, a restart, no routes, `| head`, --data-dir."""
from __future__ import annotations

import os
import sqlite3
import re
import subprocess
import sys
import time
from pathlib import Path

import requests

from gateway.config import REPO_ROOT
from tests.conftest import sample
from tests.routing.conftest import free_port, wait_until

SECRET = re.compile(r"client_secret=(\S+)")


def _env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**env, "GATEWAY_DATA_DIR": str(data_dir), "PYTHONPATH": str(REPO_ROOT)}


def _clients(data_dir: Path) -> list[tuple]:
    """The registered clients, as the embedded database holds them (_env keeps tests on SQLite)."""
    with sqlite3.connect(data_dir / "gateway.db") as conn:
        return conn.execute("SELECT * FROM clients ORDER BY client_id").fetchall()


def _serve(tmp_path: Path, port: int, log: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / log
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--port", str(port)],
                               env=_env(tmp_path / "var"), cwd=tmp_path, stdout=open(out, "wb"),
                               stderr=subprocess.STDOUT)
    return process, out


def _started(process: subprocess.Popen, out: Path, port: int) -> str:
    def up():
        if process.poll() is not None:
            return True
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
        except requests.RequestException:
            return False
    wait_until(up, timeout=60, interval=0.1)
    assert process.poll() is None, out.read_text()
    return SECRET.search(out.read_text()).group(1)


def _token(port: int, secret: str) -> requests.Response:
    return requests.post(f"http://127.0.0.1:{port}/auth/token", auth=("demo-admin", secret),
                         data={"grant_type": "client_credentials"}, timeout=30)


def test_a_second_serve_on_a_busy_port_changes_nothing_and_says_why(tmp_path):
    port = free_port()
    first, first_out = _serve(tmp_path, port, "first.log")
    try:
        secret = _started(first, first_out, port)
        clients = _clients(tmp_path / "var")
        second, second_out = _serve(tmp_path, port, "second.log")
        assert second.wait(60) == 2
        said = second_out.read_text()
        assert f"cannot listen for HTTP on 127.0.0.1:{port}" in said and "another gateway" in said
        assert "Traceback" not in said and "client_secret" not in said
        assert _clients(tmp_path / "var") == clients
        assert _token(port, secret).status_code == 200          # the first server's secret still works
    finally:
        first.terminate()
        first.wait(15)


def test_a_restart_prints_the_same_demo_secret_and_routes_nothing_unless_configured(tmp_path):
    port = free_port()
    first, out = _serve(tmp_path, port, "first.log")
    try:
        secret = _started(first, out, port)
        said = out.read_text()
        assert said.count("no routes configured") == 1
        token = _token(port, secret).json()["access_token"]
        answer = requests.post(f"http://127.0.0.1:{port}/hl7v2", data=sample("rde_o11_cancel.hl7"), timeout=30,
                               headers={"Authorization": f"Bearer {token}"})
        assert "MSA|AA" in answer.text
        routed = requests.get(f"http://127.0.0.1:{port}/admin/deliveries", timeout=30,
                              headers={"Authorization": f"Bearer {token}"}).json()
        assert routed["deliveries"] == [] and routed["counts"] == {}
        time.sleep(1)
        assert "retry" not in out.read_text().lower()
    finally:
        first.terminate()
        first.wait(15)
    again, again_out = _serve(tmp_path, port, "again.log")
    try:
        assert _started(again, again_out, port) == secret
        assert (tmp_path / "var" / "demo-client.secret").stat().st_mode & 0o077 == 0
    finally:
        again.terminate()
        again.wait(15)


def test_listing_into_head_ends_quietly(tmp_path):
    command = (f"set -o pipefail; {sys.executable} -m gateway.cli --data-dir {tmp_path} deliveries list "
               "| head -n 0")
    done = subprocess.run(["bash", "-c", command], env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr


def test_data_dir_is_taken_before_or_after_the_subcommand(tmp_path):
    for where, argv in (("before", ["--data-dir", str(tmp_path / "before"), "clients", "add", "his-1"]),
                        ("after", ["clients", "add", "his-1", "--data-dir", str(tmp_path / "after")])):
        done = subprocess.run([sys.executable, "-m", "gateway.cli", *argv, "--organization", "H1", "--role",
                               "hospital"], env=_env(tmp_path / "default"), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert [row[0] for row in _clients(tmp_path / where)] == ["his-1"]
    assert not (tmp_path / "default").exists()
