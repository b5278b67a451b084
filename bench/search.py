"""Benchmark FHIR search: p50/p95 latency of typical regulator searches over 100,000 stored resources.

Run from the repository root::

    python bench/search.py                        # 100,000 resources in a fresh SQLite file
    python bench/search.py --resources 20000 --runs 100
    python bench/search.py --db var/bench-search.db --reuse   # skip loading when the file is there

The data set is loaded in bulk through the store (``ResourceStore.write``, the same indexing as
ingest), in a realistic mix: 20% Patients, 50% MedicationRequests, 15% AdverseEvents, 10% Devices and
5% Medications (the products the adverse events name). Each search is then answered through the
Flask app (``GET /fhir/...`` with the test client: parsing, SQL, the Bundle and its JSON), ``--runs``
times with varying values (a random patient, product or week), after a few warm-up requests. Times
are wall-clock per request, one client, no network.
"""
from __future__ import annotations

import argparse
import base64
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import create_app  # noqa: E402
from gateway.store.search import parse_search  # noqa: E402

MRN = "https://lecheng-fhir-gateway.org/fhir/sid/bsh-mrn"
DRUG = "https://lecheng-fhir-gateway.org/fhir/sid/nmpa-approval-number"
SERIOUSNESS = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
START = date(2026, 1, 1)
FAMILIES = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "Smith", "Nguyen", "Müller", "García"]


def _day(rng: random.Random) -> date:
    return START + timedelta(days=rng.randrange(180))


def resources(total: int, seed: int = 7):
    """The mix, in write order: products and patients first, then what points at them."""
    rng = random.Random(seed)
    n_med, n_pat = total * 5 // 100, total * 20 // 100
    n_dev, n_ae = total * 10 // 100, total * 15 // 100
    n_mr = total - n_med - n_pat - n_dev - n_ae
    for i in range(n_med):
        yield {"resourceType": "Medication", "id": f"med{i}", "status": "active",
               "code": {"coding": [{"system": DRUG, "code": f"H2026{i:05d}", "display": f"Imported drug {i}"}]},
               "batch": {"lotNumber": f"LOT{i:05d}", "expirationDate": "2028-12-31"}}
    for i in range(n_pat):
        yield {"resourceType": "Patient", "id": f"pat{i}",
               "identifier": [{"system": MRN, "value": f"MRN{i:07d}"}],
               "name": [{"family": rng.choice(FAMILIES), "given": [f"G{i % 997}"]}],
               "gender": rng.choice(["male", "female"]),
               "birthDate": f"{rng.randrange(1940, 2020)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"}
    for i in range(n_dev):
        yield {"resourceType": "Device", "id": f"dev{i}", "status": "active",
               "udiCarrier": [{"deviceIdentifier": f"0684{i:08d}", "carrierHRF": f"(01)0684{i:08d}(21)S{i}"}],
               "patient": {"reference": f"Patient/pat{rng.randrange(n_pat)}"},
               "type": {"coding": [{"system": "http://snomed.info/sct", "code": "14106009", "display": "Pacemaker"}]}}
    for i in range(n_mr):
        med = rng.randrange(n_med)
        yield {"resourceType": "MedicationRequest", "id": f"mr{i}", "status": rng.choice(["active", "completed"]),
               "intent": "order", "subject": {"reference": f"Patient/pat{rng.randrange(n_pat)}"},
               "identifier": [{"system": "https://lecheng-fhir-gateway.org/fhir/sid/placer", "value": f"RX{i:07d}"}],
               "authoredOn": f"{_day(rng).isoformat()}T{rng.randrange(8, 18):02d}:15:00+08:00",
               "medicationCodeableConcept": {"coding": [{"system": DRUG, "code": f"H2026{med:05d}"}]},
               "requester": {"reference": f"Practitioner/dr{rng.randrange(300)}"}}
    for i in range(n_ae):
        product = f"Medication/med{rng.randrange(n_med)}" if rng.random() < 0.7 else f"Device/dev{rng.randrange(n_dev)}"
        yield {"resourceType": "AdverseEvent", "id": f"ae{i}", "actuality": "actual",
               "subject": {"reference": f"Patient/pat{rng.randrange(n_pat)}"},
               "date": f"{_day(rng).isoformat()}T10:00:00+08:00",
               "seriousness": {"coding": [{"system": SERIOUSNESS,
                                           "code": "Serious" if rng.random() < 0.2 else "Non-serious"}]},
               "suspectEntity": [{"instance": {"reference": product}}]}


def load(store, total: int, batch: int = 2000) -> float:
    started = time.perf_counter()
    pending = []
    for resource in resources(total):
        pending.append(resource)
        if len(pending) == batch:
            with store.write() as tx:
                for item in pending:
                    tx.create(item)
            pending = []
    if pending:
        with store.write() as tx:
            for item in pending:
                tx.create(item)
    return time.perf_counter() - started


def searches(total: int):
    """(name, function of rng -> URL) for the typical regulator and prescription-center searches."""
    n_med, n_pat, n_dev = total * 5 // 100, total * 20 // 100, total * 10 // 100

    def week(rng):
        start = _day(rng)
        return start.isoformat(), (start + timedelta(days=7)).isoformat()

    def quarter(rng):
        start = START + timedelta(days=rng.choice([0, 90]))
        return start.isoformat(), (start + timedelta(days=90)).isoformat()

    return [
        ("AdverseEvent by product (Medication/id) and date range",
         lambda rng: "/fhir/AdverseEvent?substance=Medication/med{}&date=ge{}&date=lt{}".format(
             rng.randrange(n_med), *quarter(rng))),
        ("AdverseEvent by product code (chained) and date range",
         lambda rng: "/fhir/AdverseEvent?substance:Medication.code={}|H2026{:05d}&date=ge{}&date=lt{}".format(
             DRUG, rng.randrange(n_med), *quarter(rng))),
        ("AdverseEvent by device and date range, _include subject",
         lambda rng: "/fhir/AdverseEvent?substance=Device/dev{}&date=ge2026-01-01&date=lt2026-07-01"
                     "&_include=AdverseEvent:subject".format(rng.randrange(n_dev))),
        ("serious AdverseEvents in a week, _include subject (50/page)",
         lambda rng: "/fhir/AdverseEvent?seriousness=Serious&date=ge{}&date=lt{}&_include=AdverseEvent:subject"
                     "&_count=50".format(*week(rng))),
        ("MedicationRequest by patient",
         lambda rng: f"/fhir/MedicationRequest?patient=Patient/pat{rng.randrange(n_pat)}"),
        ("active MedicationRequests of a patient (status first)",
         lambda rng: f"/fhir/MedicationRequest?status=active&patient=Patient/pat{rng.randrange(n_pat)}"),
        ("MedicationRequest by patient, _include patient",
         lambda rng: f"/fhir/MedicationRequest?patient=Patient/pat{rng.randrange(n_pat)}"
                     "&_include=MedicationRequest:patient"),
        ("MedicationRequest by patient identifier (chained)",
         lambda rng: f"/fhir/MedicationRequest?patient.identifier={MRN}|MRN{rng.randrange(n_pat):07d}"),
        ("MedicationRequest in a week, _sort=-authoredon (50/page)",
         lambda rng: "/fhir/MedicationRequest?authoredon=ge{}&authoredon=lt{}&_sort=-authoredon&_count=50".format(
             *week(rng))),
        ("same, _total=none",
         lambda rng: "/fhir/MedicationRequest?authoredon=ge{}&authoredon=lt{}&_sort=-authoredon&_count=50"
                     "&_total=none".format(*week(rng))),
        ("Patient with a serious AdverseEvent (_has, 50/page)",
         lambda rng: "/fhir/Patient?_has:AdverseEvent:patient:seriousness=Serious&_count=50"
                     f"&gender={rng.choice(['male', 'female'])}"),
        ("Patient by name (starts with), _sort=birthdate",
         lambda rng: f"/fhir/Patient?name={rng.choice(FAMILIES)}&_sort=birthdate&_count=50"),
    ]


def _regulator_token(app, client) -> dict:
    """A bearer token for a registered regulator client, when the gateway requires one."""
    security = app.extensions.get("security")
    if security is None:
        return {}
    _client, secret = security.clients.add("bench-regulator", "HNMPA", "regulator", secret=True, replace=True)
    response = client.post("/auth/token", data={"grant_type": "client_credentials"},
                           headers={"Authorization": "Basic " + base64.b64encode(
                               f"bench-regulator:{secret}".encode()).decode()})
    assert response.status_code == 200, response.get_json()
    return {"Authorization": f"Bearer {response.get_json()['access_token']}"}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--db", help="SQLite file (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="do not load when --db already holds data")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="bench-search-")
    db = Path(args.db) if args.db else Path(data_dir) / "gateway.db"
    app = create_app({"DATA_DIR": data_dir, "DATABASE_URL": f"sqlite:///{db}", "TESTING": True})
    store = app.extensions["gateway"].store
    client = app.test_client()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; SQLite {db}")
    if not (args.reuse and store.search("Patient", [], 0).total):
        seconds = load(store, args.resources)
        print(f"loaded {args.resources} resources in {seconds:.1f} s ({args.resources / seconds:.0f}/s), "
              f"database {db.stat().st_size / 1e6:.0f} MB")
    rng = random.Random(11)
    print(f"{'search':<58} {'HTTP p50':>8} {'p95':>6} {'engine p50':>10} {'p95':>6} {'matches':>7}  (ms)")
    for name, url_of in searches(args.resources):
        headers = _regulator_token(app, client)      # tokens live minutes: a fresh one per search
        for _ in range(5):
            client.get(url_of(rng), headers=headers)
        times, engine_times, matches = [], [], []
        for _ in range(args.runs):
            url = url_of(rng)
            started = time.perf_counter()
            response = client.get(url, headers=headers)
            times.append((time.perf_counter() - started) * 1000)
            bundle = response.get_json()
            assert response.status_code == 200, (url, bundle)
            matches.append(bundle.get("total", len([e for e in bundle.get("entry", [])
                                                    if e["search"]["mode"] == "match"])))
            engine_times.append(_engine_ms(store, url))
        print(f"{name:<58} {percentile(times, 50):8.1f} {percentile(times, 95):6.1f} "
              f"{percentile(engine_times, 50):10.1f} {percentile(engine_times, 95):6.1f} "
              f"{statistics.median(matches):7.0f}")


def _engine_ms(store, url: str) -> float:
    """The same search in the store alone: parse, SQL, page and includes, no HTTP, auth or JSON."""
    split = urlsplit(url)
    resource_type = split.path.rsplit("/", 1)[-1]
    started = time.perf_counter()
    query = parse_search(store.params, resource_type, parse_qsl(split.query))
    store.search(resource_type, query.criteria, query.count, sort=query.sort, total=query.total,
                 includes=query.includes)
    return (time.perf_counter() - started) * 1000


if __name__ == "__main__":
    main()
