"""Parse throughput of gateway.hl7v2 on the sample messages.

Usage (from the repository root)::

    python bench/parse.py                 # every tests/data/hl7v2/*.hl7 except bad_*
    python bench/parse.py FILE_OR_DIR...  # other messages
    python bench/parse.py --compare       # also time hl7apy and python-hl7, if installed

"Parse" is what the hot path pays for every message: bytes -> decode (MSH-18) ->
segments -> MSH header. Field access is lazy and not included. For each file it
prints messages/second over a timed loop and p50/p99 latency of single parses.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gateway.hl7v2 import parse_message  # noqa: E402

DEFAULT_DIR = REPO_ROOT / "tests" / "data" / "hl7v2"


def _files(args: list[str]) -> list[Path]:
    paths = [Path(a) for a in args] or [DEFAULT_DIR]
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.glob("*.hl7") if not f.name.startswith("bad_"))
        else:
            out.append(p)
    return out


def _throughput(fn, data, seconds: float) -> float:
    """Messages per second of fn(data), over batches until `seconds` have passed."""
    batch, done, start = 200, 0, time.perf_counter()
    while True:
        for _ in range(batch):
            fn(data)
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def _latencies(fn, data, n: int) -> tuple[float, float]:
    """p50 and p99 of single calls, in microseconds."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        fn(data)
        samples.append(clock() - t0)
    qs = statistics.quantiles(samples, n=100)
    return qs[49] / 1000, qs[98] / 1000


def _competitors() -> dict:
    """Other Python HL7 parsers, for the comparison that justifies a hand-written one."""
    found = {}
    try:
        from hl7apy.parser import parse_message as hl7apy_parse

        def hl7apy_parse_bytes(data: bytes):
            text = data.decode("gb18030" if b"GB 18030" in data[:300] else "utf-8")
            return hl7apy_parse(text.replace("\n", "\r"), find_groups=False)

        found["hl7apy"] = hl7apy_parse_bytes
    except ImportError:
        pass
    try:
        import hl7

        def python_hl7_parse(data: bytes):
            text = data.decode("gb18030" if b"GB 18030" in data[:300] else "utf-8")
            return hl7.parse(text.replace("\n", "\r"))

        found["python-hl7"] = python_hl7_parse
    except ImportError:
        pass
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="message files or directories")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed loop length per file")
    ap.add_argument("--samples", type=int, default=5000, help="single parses for percentiles")
    ap.add_argument("--compare", action="store_true", help="also time hl7apy and python-hl7")
    opts = ap.parse_args(argv)

    files = _files(opts.paths)
    if not files:
        print("no message files found", file=sys.stderr)
        return 1
    parsers = {"gateway": parse_message}
    if opts.compare:
        parsers.update(_competitors())

    print(f"{'parser':<11} {'file':<34} {'bytes':>6} {'segs':>4} {'msg/s':>9} {'p50 us':>8} {'p99 us':>8}")
    gc.collect()
    for path in files:
        data = path.read_bytes()
        segments = len(parse_message(data).segments)
        for label, fn in parsers.items():
            fn(data)  # warm caches
            rate = _throughput(fn, data, opts.seconds)
            p50, p99 = _latencies(fn, data, opts.samples if label == "gateway" else max(200, opts.samples // 20))
            print(f"{label:<11} {path.name:<34} {len(data):>6} {segments:>4} {rate:>9,.0f} {p50:>8.1f} {p99:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
