"""Conversion throughput on the RDE samples, one process: parse only, and parse + map + validate.

    python bench/convert.py [--seconds 3] [--stages]

Prints messages/second and per-message latency percentiles, and the CPU time a message took (the
machine is shared: wall-clock rates drop when other work runs, CPU time much less). Validation is
the same Validator the ingest pipeline uses (base R4 structure plus the Lecheng profiles); nothing
is skipped. ``--stages`` adds where the time goes: CPU microseconds a message for parse, map,
structure (fhirkit) and profiles, each the best of several rounds.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from gateway.hl7v2 import parse_message  # noqa: E402
from gateway.mapping.engine import MappingSet  # noqa: E402
from gateway.mapping.terminology import Terminology  # noqa: E402
from gateway.runtime import parse_strictness  # noqa: E402
from gateway.validation import ProfileRegistry, Validator  # noqa: E402
from zoneinfo import ZoneInfo  # noqa: E402

SAMPLES = [ROOT / "tests/data/samples/rde_o11_new_imported.hl7",
           ROOT / "tests/data/samples/rde_o11_two_orders_gb18030.hl7",
           ROOT / "tests/data/samples/rde_o11_cancel.hl7"]


def measure(label: str, work, messages: list[bytes], seconds: float) -> None:
    latencies = []
    deadline = time.perf_counter() + seconds
    count = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    while time.perf_counter() < deadline:
        for raw in messages:
            t0 = time.perf_counter()
            work(raw)
            latencies.append(time.perf_counter() - t0)
            count += 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    q = statistics.quantiles(latencies, n=100)
    print(f"{label:32s} {count / elapsed:10.0f} msg/s   p50 {q[49] * 1e6:7.1f} us   p99 {q[98] * 1e6:7.1f} us"
          f"   CPU {cpu / count * 1e6:7.1f} us/msg")


def best_cpu_us(work, rounds: int = 9, repeat: int = 50) -> float:
    """Least CPU time of `work()` over several rounds, in microseconds."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(repeat):
            work()
        best = min(best, (time.process_time() - t0) / repeat)
    return best * 1e6


def stages(mappings, terminology, zone, validator, messages: list[bytes]) -> None:
    """CPU microseconds a message for each stage, the three samples averaged."""
    parsed = [parse_message(raw) for raw in messages]
    mapped = [mappings.for_message(m.message_type).run(m, terminology, zone) for m in parsed]
    resources = [r.resource for result in mapped for r in result.resources]
    n = len(messages)
    rows = {
        "parse": best_cpu_us(lambda: [parse_message(raw) for raw in messages]) / n,
        "map": best_cpu_us(lambda: [mappings.for_message(m.message_type).run(m, terminology, zone)
                                    for m in parsed]) / n,
        "validate: structure (fhirkit)": best_cpu_us(lambda: [validator.backend.check(r) for r in resources]) / n,
        "validate: profiles": best_cpu_us(lambda: [validator.check_profiles(r) for r in resources]) / n,
    }
    total = sum(rows.values())
    for label, us in rows.items():
        print(f"  {label:32s} {us:7.1f} us/msg CPU  ({us / total:4.0%})")
    print(f"  {'sum':32s} {total:7.1f} us/msg CPU  -> {1e6 / total:,.0f} msg/s on one core "
          f"({len(resources) / n:.1f} resources a message)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--stages", action="store_true", help="also print CPU time per stage")
    args = parser.parse_args()
    config = load_config({})
    mappings = MappingSet.load(config["MAPPINGS_DIR"])
    terminology = Terminology.load(config["MAPPINGS_DIR"])
    validator = Validator(ProfileRegistry.load(config["PROFILES_DIR"]),
                          strictness=parse_strictness(config["PROFILE_STRICTNESS"]))
    zone = ZoneInfo(config["TIMEZONE"])
    messages = [p.read_bytes() for p in SAMPLES]

    def parse_only(raw: bytes) -> None:
        parse_message(raw)

    def convert(raw: bytes) -> None:
        message = parse_message(raw)
        mapped = mappings.for_message(message.message_type).run(message, terminology, zone)
        for resource in mapped.resources:
            validator.validate(resource.resource)

    print(f"Python {platform.python_version()} on {platform.machine()}, {platform.node()}")
    measure("parse only (RDE samples)", parse_only, messages, args.seconds)
    measure("parse + map + validate", convert, messages, args.seconds)
    if args.stages:
        stages(mappings, terminology, zone, validator, messages)


if __name__ == "__main__":
    main()
