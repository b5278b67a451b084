"""Hospital exports through their mapping files, one process: read (parse + declared-field checks)
+ map, and read + map + validate, per document (a CSV row counts as one document).

    python bench/documents.py [--seconds 3] [--rows 500]

Prints documents/second, per-document latency percentiles and CPU time, for the XML prescription,
the JSON prescription, and a CSV register of ``--rows`` rows (the sample's two rows repeated with
new report ids and serials). Validation is the Validator the ingest pipeline uses.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from gateway.mapping.engine import MappingSet  # noqa: E402
from gateway.mapping.terminology import Terminology  # noqa: E402
from gateway.runtime import parse_strictness  # noqa: E402
from gateway.validation import ProfileRegistry, Validator  # noqa: E402

SAMPLES = ROOT / "tests/data/samples"


def csv_register(rows: int) -> bytes:
    header, *lines = (SAMPLES / "device_first_use.csv").read_text(encoding="utf-8").splitlines()
    out = [header]
    for i in range(rows):
        line = lines[i % len(lines)]
        out.append(line.replace("LC-DEV-2026-01", f"LC-DEV-{i:06d}-").replace("SN-PMC-778812", f"SN-{i:06d}"))
    return ("\n".join(out) + "\n").encode()


def measure(label: str, work, raw: bytes, units: int, seconds: float) -> None:
    latencies, count = [], 0
    deadline = time.perf_counter() + seconds
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        work(raw)
        latencies.append((time.perf_counter() - t0) / units)
        count += units
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    print(f"{label:46s} {count / elapsed:9.0f} docs/s  p50 {q[49] * 1e3:6.2f} ms  p95 {q[94] * 1e3:6.2f} ms  "
          f"cpu {cpu / count * 1e6:7.0f} us/doc")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    config = load_config()
    mappings = MappingSet.load(config["MAPPINGS_DIR"])
    terminology = Terminology.load(config["MAPPINGS_DIR"])
    validator = Validator(ProfileRegistry.load(config["PROFILES_DIR"]),
                          strictness=parse_strictness(config["PROFILE_STRICTNESS"]))
    zone = ZoneInfo("Asia/Shanghai")
    print(f"python {platform.python_version()} on {platform.machine()} {platform.system()}")
    cases = [("hospital_prescription", (SAMPLES / "hospital_prescription.xml").read_bytes(), 1),
             ("online_clinic_prescription", (SAMPLES / "online_clinic_prescription.json").read_bytes(), 1),
             ("device_first_use", csv_register(args.rows), args.rows)]
    for name, raw, units in cases:
        spec = mappings.by_name[name]

        def read_and_map(data: bytes, spec=spec) -> list:
            return [spec.run(unit, terminology, zone) for unit in spec.reader.read(data).units]

        def with_validation(data: bytes, spec=spec) -> None:
            for mapped in read_and_map(data, spec):
                for resource in mapped.resources:
                    validator.validate(resource.resource)

        measure(f"{spec.source} {name}: read + map", read_and_map, raw, units, args.seconds)
        measure(f"{spec.source} {name}: read + map + validate", with_validation, raw, units, args.seconds)


if __name__ == "__main__":
    main()
