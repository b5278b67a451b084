"""What security costs per request: bearer token check (cold: ES384 verify; warm: cached claims),
one AuditEvent INSERT, and a whole authenticated, audited search through the app.

    python bench/security.py [--requests 1000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import create_app  # noqa: E402
from gateway.security.audit import AuditRecord  # noqa: E402
from tests.security.credentials import authenticated  # noqa: E402


def _per_call_ms(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    n = parser.parse_args().requests
    app = create_app({"DATA_DIR": tempfile.mkdtemp(prefix="lecheng-bench-security-"),
                      "RATE_LIMIT": "1000000 per minute"})
    client = authenticated(app, "hospital")
    security = app.extensions["security"]
    token = client.environ_base["HTTP_AUTHORIZATION"].split()[1]
    cold = _per_call_ms(lambda: security.tokens._verify(token), n)
    warm = _per_call_ms(lambda: security.tokens.principal(token), n)
    record = AuditRecord("read", 200, "HTTP 200", "bench", "BOAO_SUPER_HOSPITAL", "hospital", "127.0.0.1",
                         "Patient", "1")
    audit = _per_call_ms(lambda: security.audit.record(record), n)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.get("/fhir/MedicationRequest?_count=1")
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(f"token check cold (ES384 verify) {cold:.3f} ms, warm (cached claims + registry) {warm:.3f} ms")
    print(f"AuditEvent insert {audit:.3f} ms")
    print(f"authenticated, audited search (Flask test client, empty store): p50 {statistics.median(times):.2f} ms, "
          f"p95 {times[int(len(times) * 0.95)]:.2f} ms over {n}")


if __name__ == "__main__":
    main()
