"""The README's "Try it" commands, in order, in a fresh clone, against a gateway started as it says.

The clone is made with git from this repository's committed HEAD (what a newcomer gets). Its
``.venv/bin`` holds wrappers that run the clone's own code with this interpreter (a pip install per
test run would cost a minute); everything else is the README's text, run by bash with ``set -e``
and curl made to fail on an HTTP error (``--fail-with-body``). Only the secret and the ports are
substituted: the demo secret ``serve`` printed, and free ports for 8080 and 2575.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from gateway.config import REPO_ROOT
from tests.routing.conftest import free_port, wait_until

README = REPO_ROOT / "README.md"


def try_it_blocks(text: str) -> list[str]:
    """The ```sh blocks of the "Try it" section, in order."""
    section = text.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


@pytest.fixture
def clone(tmp_path) -> Path:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.fail("this test needs git and a git checkout of the repository")
    target = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(target)], check=True, timeout=120)
    bin_dir = target / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    commands = {"python": f'exec "{sys.executable}" "$@"',
                "fhir-gateway": f'exec "{sys.executable}" -m gateway.cli "$@"',
                "mllp_send": f'exec "{Path(sys.executable).with_name("mllp_send")}" "$@"'}
    for name, line in commands.items():
        (bin_dir / name).write_text(f"#!/bin/sh\nexport PYTHONPATH=\"{target}\"\n{line}\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    return target


def test_the_try_it_commands_work_as_written_in_a_fresh_clone(clone):
    text = (clone / "README.md").read_text(encoding="utf-8")
    blocks = try_it_blocks(text)
    assert len(blocks) >= 2 and "SECRET=<secret printed by serve>" in blocks[0]
    assert ".venv/bin/fhir-gateway serve --mllp-port 2575" in text
    http_port, mllp_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = str(clone)
    log = clone / "serve.log"
    server = subprocess.Popen([str(clone / ".venv/bin/fhir-gateway"), "serve", "--port", str(http_port),
                               "--mllp-port", str(mllp_port)], cwd=clone, env=env,
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        def up():
            if server.poll() is not None:
                return True
            try:
                return requests.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).ok
            except requests.RequestException:
                return False
        wait_until(up, timeout=60, interval=0.1)
        started = log.read_text(encoding="utf-8")
        assert server.poll() is None, started
        secret = re.search(r"client_secret=(\S+)", started).group(1)
        script = "\n".join(blocks).replace("<secret printed by serve>", secret) \
            .replace("127.0.0.1:8080", f"127.0.0.1:{http_port}").replace("2575", str(mllp_port))
        prelude = "set -euo pipefail\ncurl() { command curl --fail-with-body \"$@\"; }\n"
        done = subprocess.run(["bash", "-c", prelude + script], cwd=clone, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        out = done.stdout
        assert "MSA|AA|BSH20260315000001" in out                           # the order over HTTP
        assert '"total":1' in out.replace(" ", "")                          # found by identifier
        assert "RDE^O11" in out and "Message Control ID" in out              # messages list / show
        assert out.count("MSA|CA|BSH20260316000009") == 2                    # the hospital, then the resend
        assert '"resourceType": "Bundle"' in out or '"resourceType":"Bundle"' in out   # convert
        assert "no routes configured" in started and started.count("no routes configured") == 1
    finally:
        server.terminate()
        server.wait(15)
