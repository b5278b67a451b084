"""The conformance kit against a FHIR R4 server that is not ours: Medplum's ``@medplum/fhir-router``
with its in-memory repository behind a small Node HTTP server (tests/conformance/medplum/, installed
by ``npm ci`` in .ci/run). The kit must run there without assuming anything about this gateway, and
every FAIL it reports must be a real R4 violation, named here with its spec section."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conformance.runner import run_kit

HARNESS = Path(__file__).resolve().parent / "medplum"

# Every failing check the kit reports against Medplum's router, and the R4 rule it breaks. A failure
# that matches none of these is either a new Medplum fault or a kit bug: the test says which check.
KNOWN_VIOLATIONS = {
    r"^Observation\?(combo-)?value-quantity \(quantity\) selects$|^Observation\?(combo-)?value-quantity prefix (gt|lt)$":
        "search.html#quantity: a quantity parameter searched with a number alone matches every value "
        "with that number whatever its units; the in-memory repository finds nothing for the claimed "
        "value-quantity and combo-value-quantity",
    r"^search NoSuchResourceType$":
        "http.html#Status-Codes: a request for a resource type the server does not support is "
        "404 Not Found; the router answers 200 with an empty searchset",
}


def _harness_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HARNESS / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return "run `npm ci` in tests/conformance/medplum"
    return None


@pytest.fixture(scope="module")
def medplum_base():
    missing = _harness_ready()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the Medplum harness is not installed in CI: {missing}")
        pytest.skip(missing)
    process = subprocess.Popen(["node", "server.mjs"], cwd=HARNESS, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.match(r"listening (\d+)", line)
        assert match, f"the Medplum harness did not start: {line!r}"
        yield f"http://127.0.0.1:{match.group(1)}/fhir"
    finally:
        process.terminate()
        process.wait(10)


def _skips(report) -> list[tuple[str, str]]:
    return [(r.id, r.message) for r in report.results if r.status == "skip"]


def test_every_fail_against_medplum_is_a_real_r4_violation(medplum_base):
    report = run_kit(medplum_base)

    assert not [r.id for r in report.results if r.status == "error"], \
        [(r.id, r.message) for r in report.results if r.status == "error"]
    counts = report.check_counts()
    assert counts["pass"] >= 300, counts
    failing = [(r.id, c) for r in report.results for c in r.checks if c.status == "fail"]
    unexplained = [(case, c.name, c.message) for case, c in failing
                   if not any(re.search(pattern, c.name) for pattern in KNOWN_VIOLATIONS)]
    assert not unexplained, unexplained
    seen = {pattern for pattern in KNOWN_VIOLATIONS for _case, c in failing if re.search(pattern, c.name)}
    assert seen == set(KNOWN_VIOLATIONS), f"no longer seen: {set(KNOWN_VIOLATIONS) - seen}"
    # nothing gateway-shaped: skipped only what the harness does not offer (HL7 v2, SMART, $export)
    assert set(report.skipped) == {"hl7-good-message-aa", "hl7-malformed-message-ar", "hl7-duplicate-same-ack",
                                   "hl7-message-types-and-modes", "hl7-malformed-framing",
                                   "smart-backend-services", "bulk-data-export", "profile-rules"}, _skips(report)
    interactions = report.result("capability-interactions")
    assert any(c.name == "Patient vread of the version the server gave" and c.status == "pass"
               for c in interactions.checks)          # Medplum's version ids are UUIDs
    assert report.result("profile-validation").status == "pass"    # plain R4 resources are not held to Lecheng
    # one page of two matches without a next link is reported, as a SHOULD (R4 leaves paging links to
    # best practice), never as a failure
    assert report.result("paging-next-links").status == "warn", _skips(report)
