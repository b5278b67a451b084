"""Benchmark Bulk Data $export: resources/s written to NDJSON, and memory that does not grow with size.

Run from the repository root::

    python bench/export.py                          # 10,000 and 50,000 resources, each in a fresh SQLite file
    python bench/export.py --sizes 2000 --validate  # also validate every exported line (slow: ~1 ms each)

Each size gets a fresh gateway (SQLite under a temporary DATA_DIR) loaded through the store
(``ResourceStore.write``, the same indexing as ingest) with a mix of half Patients and half
MedicationRequests, copied from the valid examples in ``tests/data/validation`` with new ids and
identifiers. Then a system-level export of every type runs as ``GET /fhir/$export`` starts it
(``ExportJobs.kick_off``: the job on its background thread; the HTTP kick-off itself is a row
insert) and is polled until it is complete. Reported:

* wall time from kick-off to manifest, and resources/s;
* memory during the export: Python allocations (tracemalloc peak above the level at kick-off, in a
  second run of the same export, because tracing slows it) and the process RSS high-water mark
  sampled every 10 ms while the job runs, above the RSS at kick-off.

Flat memory means the job holds one page of rows (1,000) at a time, whatever the export's size.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from gateway.export import ExportJob, ExportJobs, ExportRequest  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402

EXAMPLES = ROOT / "tests" / "data" / "validation"


def rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def load(gateway, n: int) -> None:
    patient = orjson.loads((EXAMPLES / "patient" / "valid-patient.json").read_bytes())
    order = orjson.loads((EXAMPLES / "medicationrequest" / "valid-imported-drug.json").read_bytes())
    batch = 2000
    for start in range(0, n, batch):
        with gateway.store.write() as tx:
            for i in range(start, min(n, start + batch)):
                if i % 2 == 0:
                    body = copy.deepcopy(patient)
                    body["id"] = str(uuid.uuid4())
                    body["identifier"][0]["value"] = f"H{i:08d}"
                else:
                    body = copy.deepcopy(order)
                    body["id"] = str(uuid.uuid4())
                    body["identifier"][0]["value"] = f"RX-{i:08d}"
                tx.create(body)


def run_export(jobs: ExportJobs, types: list[str]) -> tuple[float, ExportJob, int]:
    """(seconds, the finished job, RSS high-water mark above the start in KiB)."""
    start_rss = rss_kib()
    peak = [start_rss]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    job_id = jobs.kick_off(ExportRequest("system", "http://localhost/fhir/$export", types))
    while (job := jobs.get(job_id)).status in ("accepted", "in-progress"):
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    assert job.status == "completed", job
    return elapsed, job, peak[0] - start_rss


def check_files(gateway, jobs: ExportJobs, job: ExportJob, validate: bool) -> tuple[int, int, int]:
    """(lines, lines with errors, bytes): every line must parse; with --validate every line is validated."""
    from gateway.validation import has_errors
    lines = bad = size = 0
    for output in job.output:
        path = jobs.job_dir(job.id) / output.file
        size += path.stat().st_size
        with open(path, "rb") as fh:
            for line in fh:
                resource = orjson.loads(line)
                lines += 1
                if validate and has_errors(gateway.validator.validate(resource)):
                    bad += 1
    return lines, bad, size


def measure(n: int, validate: bool) -> dict:
    with tempfile.TemporaryDirectory() as data_dir:
        gateway = Gateway.from_config(load_config({"DATA_DIR": data_dir}))
        load(gateway, n)
        jobs = ExportJobs(gateway.store, gateway.store.engine, Path(data_dir) / "exports")
        types = sorted(gateway.store.params.resource_types())
        seconds, job, rss_growth = run_export(jobs, types)
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run_export(jobs, types)
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        lines, bad, size = check_files(gateway, jobs, job, validate)
        total = sum(o.count for o in job.output)
        return {"n": n, "exported": total, "lines": lines, "invalid": bad if validate else None,
                "seconds": seconds, "per_second": total / seconds, "mib_written": size / 2**20,
                "traced_peak_kib": (traced_peak - base) / 1024, "rss_growth_kib": rss_growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,50000", help="comma-separated resource counts")
    parser.add_argument("--validate", action="store_true", help="validate every exported line")
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| resources | exported | lines invalid | seconds | resources/s | NDJSON MiB | traced peak KiB | RSS growth KiB |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        r = measure(n, args.validate)
        assert r["exported"] == r["lines"] == n, r
        invalid = "not checked" if r["invalid"] is None else f"{r['invalid']} of {r['lines']}"
        print(f"| {n:,} | {r['exported']:,} | {invalid} | {r['seconds']:.2f} | {r['per_second']:,.0f} | "
              f"{r['mib_written']:.1f} | {r['traced_peak_kib']:,.0f} | {r['rss_growth_kib']:,} |", flush=True)


if __name__ == "__main__":
    main()
