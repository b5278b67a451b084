"""``fhir-gateway demo``: the whole flow on loopback in one command, checked.

Starts a receiving prescription center (OAuth2 client credentials, as routes.yaml says), the
provincial regulator (which also hosts the device registry) and the national regulator, then the
gateway itself (HTTP on a free port, the repository's routes.yaml pointed at those receivers,
in-process delivery workers). Every sample in ``tests/data/samples`` listed in ``examples/demo.yaml``
is sent over HTTP (HL7 v2 to ``POST /hl7v2``, hospital exports to ``POST /ingest/<mapping>``); the
table shows each message, its answer, the resources it made and where each arrived. Then the end
state is checked against ``examples/demo.yaml``: answers, every delivery made exactly once, each
resource at exactly its destinations. Exit status 1 when anything is wrong.

A sample whose mapping has not landed in ``mappings/`` yet is expected to be refused and is
reported as such, so the demo stays honest about what the gateway can do today.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server

from gateway.config import REPO_ROOT
from gateway.yamlfile import load_yaml

SAMPLES = REPO_ROOT / "tests" / "data" / "samples"
EXPECTATIONS = REPO_ROOT / "examples" / "demo.yaml"
ROUTED_TYPES = ("MedicationRequest", "MedicationDispense", "AdverseEvent", "Device")
EPC_CLIENT = ("lecheng-gateway", "demo-epc-secret")
SETTLE_SECONDS = 30.0


@dataclass
class SampleRun:
    file: str
    answer: str = ""
    expected_answer: str = ""
    note: str = ""
    resources: list[str] = field(default_factory=list)          # Type/id/_history/v
    places: dict[str, list[str]] = field(default_factory=dict)  # resource -> destinations it reached
    problems: list[str] = field(default_factory=list)


def run_demo(verbose: bool = False, out=sys.stdout) -> int:
    from gateway.routing.receiver import Receiver
    quiet = {"werkzeug": logging.WARNING, "gateway": logging.ERROR}
    levels = {name: logging.getLogger(name).level for name in quiet}      # put back afterwards
    if not verbose:
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
    workdir = Path(tempfile.mkdtemp(prefix="lecheng-demo-"))
    receivers = {"epc": Receiver("prescription-center", clients=dict([EPC_CLIENT]), require_token=True).start(),
                 "province": Receiver("provincial-regulator").start(),
                 "nmpa": Receiver("national-regulator").start()}
    server = workers = None
    try:
        os.environ.update({
            "EPC_FHIR_BASE": receivers["epc"].url(), "EPC_TOKEN_URL": receivers["epc"].url("/oauth/token"),
            "EPC_CLIENT_ID": EPC_CLIENT[0], "EPC_CLIENT_SECRET": EPC_CLIENT[1],
            "HNMPA_FHIR_BASE": receivers["province"].url(), "HNMPA_TOKEN": "demo-hnmpa-token",
            "HNMPA_DEVICE_BASE": receivers["province"].url("/device-registry/fhir"),
            "NMPA_FHIR_BASE": receivers["nmpa"].url()})
        from gateway import create_app
        from gateway.routing import make_workers
        app = create_app({"DATA_DIR": str(workdir), "DELIVERY_POLL_MS": 50})
        gateway = app.extensions["gateway"]
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        workers = make_workers(gateway.config, gateway.store.engine, gateway.routes, threads=4).start()
        print(f"gateway {base}; prescription center {receivers['epc'].url()}; provincial regulator "
              f"{receivers['province'].url()} (device registry {receivers['province'].url('/device-registry/fhir')}); "
              f"national regulator {receivers['nmpa'].url()}", file=out)

        headers = _credentials(app, base)
        listed = load_yaml(EXPECTATIONS)["samples"]
        expectations = [spec for spec in listed if (SAMPLES / spec["file"]).is_file()]
        absent = [spec["file"] for spec in listed if spec not in expectations]
        unlisted = sorted(p.name for p in SAMPLES.iterdir() if p.name not in {spec["file"] for spec in listed})
        runs = [_send(app, gateway, base, headers, spec) for spec in expectations]
        settled = _settle(gateway)
        places = _where_delivered(gateway, receivers)
        for run, spec in zip(runs, expectations):
            _check_sample(run, spec, places)
        problems = _check_totals(gateway, receivers, runs, places, settled)
        _print_table(runs, out)
        counts = gateway.outbox.counts()
        print("deliveries: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"), file=out)
        if absent:
            print(f"not sent (not in {SAMPLES.relative_to(REPO_ROOT)} yet): {', '.join(absent)}", file=out)
        if unlisted:
            print(f"not sent (no expectations in {EXPECTATIONS.relative_to(REPO_ROOT)}): {', '.join(unlisted)}",
                  file=out)
        for run in runs:
            problems += [f"{run.file}: {p}" for p in run.problems]
        if problems:
            print("\nDEMO FAILED:", file=out)
            for problem in problems:
                print(f"  - {problem}", file=out)
            return 1
        print("\ndemo: every answer as expected; every routed resource reached exactly its destinations, once",
              file=out)
        return 0
    finally:
        if workers is not None:
            workers.stop()
        if server is not None:
            server.shutdown()
        for receiver in receivers.values():
            receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _credentials(app, base: str, sender: dict | None = None) -> dict:
    """Headers for one sample's request: when the gateway's security is installed, a token fetched
    like any client would, for the demo admin client (development only) or, where the sample names
    its ``sender`` (role and organization), for a client registered as that sender: a pharmacy's
    dispense completes an order only when a pharmacy sends it, as in production."""
    if "security" not in app.extensions:
        return {}
    from gateway.security.cli import DEMO_CLIENT_ID, announce_demo_client
    if sender is None:
        client_id, secret = DEMO_CLIENT_ID, announce_demo_client(app, out=io.StringIO())
    else:
        client_id = f"demo-{sender['role']}-{sender['organization']}".lower().replace("_", "-")
        _client, secret = app.extensions["security"].clients.add(
            client_id, sender["organization"], sender["role"], replace=True, description="demo sender")
    response = requests.post(f"{base}/auth/token", data={"grant_type": "client_credentials"},
                             auth=(client_id, secret), timeout=10)
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _send(app, gateway, base: str, headers: dict, spec: dict) -> SampleRun:
    if spec.get("sender"):
        headers = _credentials(app, base, spec["sender"])
    path = SAMPLES / spec["file"]
    run = SampleRun(spec["file"])
    needs = spec.get("needs")
    present = needs is None or needs in gateway.mappings.by_name
    run.expected_answer = str(spec["answer"]) if present else ("AR" if path.suffix == ".hl7" else "404")
    if not present:
        run.note = f"mapping {needs} not in mappings/ yet"
    raw = path.read_bytes()
    if path.suffix == ".hl7":
        response = requests.post(f"{base}/hl7v2", data=raw, timeout=30,
                                 headers={**headers, "Content-Type": "x-application/hl7-v2+er7"})
        run.answer = response.headers.get("X-Ack-Code") or f"HTTP {response.status_code}"
    else:
        response = requests.post(f"{base}/ingest/{path.stem}", data=raw, timeout=30, headers=headers)
        run.answer = str(response.status_code)
    log_id = response.headers.get("X-Message-Log-Id")
    if log_id:
        logged = gateway.message_log.get(int(log_id))
        run.resources = list(logged.detail.get("resources") or []) if logged else []
        if logged is not None and logged.status == "on-hold":
            run.note = (run.note + "; " if run.note else "") + "held for review"
    if run.answer != run.expected_answer:
        run.problems.append(f"answered {run.answer}, expected {run.expected_answer}"
                            + (f" ({run.note})" if run.note else ""))
    return run


def _settle(gateway) -> bool:
    """Wait until no delivery is pending or being retried."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        counts = gateway.outbox.counts()
        if not counts.get("pending") and not counts.get("failed"):
            return True
        time.sleep(0.05)
    return False


def _receiver_base(gateway, receivers) -> dict[str, tuple[Any, str]]:
    """destination name -> (the receiver behind its base URL, the base path there)."""
    found = {}
    for name, destination in gateway.routes.destinations.items():
        for receiver in receivers.values():
            root = f"http://127.0.0.1:{receiver.port}"
            if destination.base_url.startswith(root):
                found[name] = (receiver, destination.base_url[len(root):])
    return found


def _where_delivered(gateway, receivers) -> dict[str, list[str]]:
    """Type/id/_history/v -> destinations whose receiver holds that version (what really arrived)."""
    places: dict[str, list[str]] = {}
    for name, (receiver, base) in _receiver_base(gateway, receivers).items():
        for (_base, res_type, res_id), contents in receiver.resources(base).items():
            if res_type not in ROUTED_TYPES:
                continue
            for content in contents:
                version = (content.get("meta") or {}).get("versionId")
                places.setdefault(f"{res_type}/{res_id}/_history/{version}", []).append(name)
    return places


def _check_sample(run: SampleRun, spec: dict, places: dict[str, list[str]]) -> None:
    delivered = spec.get("delivered") or {}
    for ref in run.resources:
        res_type = ref.split("/", 1)[0]
        if res_type not in ROUTED_TYPES:
            continue
        got = sorted(places.get(ref, []))
        run.places[ref] = got
        if run.answer != run.expected_answer or run.note == "held for review":
            continue
        want = sorted(delivered.get(res_type, []))
        if got != want:
            run.problems.append(f"{ref} reached {got or 'nowhere'}, expected {want or 'nowhere'}")


def _check_totals(gateway, receivers, runs: list[SampleRun], places: dict[str, list[str]], settled: bool) -> list[str]:
    problems = []
    if not settled:
        problems.append(f"deliveries still pending after {SETTLE_SECONDS:.0f} s: {gateway.outbox.counts()}")
    for delivery in gateway.outbox.iterate():
        if delivery.status not in ("delivered", "held"):
            problems.append(f"delivery {delivery.id} ({delivery.res_type}/{delivery.res_id}/_history/"
                            f"{delivery.version_id} to {delivery.destination}) is {delivery.status}: "
                            f"{delivery.last_error}")
    made = {ref for run in runs for ref in run.resources}
    for ref, names in places.items():
        if ref not in made:
            problems.append(f"{ref} reached {names} but no sample made it")
    per_receiver: dict[int, int] = {}
    bases = _receiver_base(gateway, receivers)
    for delivery in gateway.outbox.iterate("delivered"):
        receiver = bases[delivery.destination][0]
        per_receiver[id(receiver)] = per_receiver.get(id(receiver), 0) + 1
    for receiver in receivers.values():
        sent = len(receiver.requests())
        if sent != per_receiver.get(id(receiver), 0):
            problems.append(f"{receiver.name} got {sent} requests for {per_receiver.get(id(receiver), 0)} deliveries")
    return problems


def _print_table(runs: list[SampleRun], out) -> None:
    print(f"\n{'message':34} {'answer':7} {'resource made':58} delivered to", file=out)
    print("-" * 130, file=out)
    for run in runs:
        answer = run.answer + ("" if run.answer == run.expected_answer else f" (!= {run.expected_answer})")
        rows = [(ref, ", ".join(run.places.get(ref, [])) if ref.split("/", 1)[0] in ROUTED_TYPES else "(not routed)")
                for ref in run.resources] or [("-", run.note)]
        for i, (ref, where) in enumerate(rows):
            first = i == 0
            print(f"{run.file if first else '':34} {answer if first else '':7} {ref:58} "
                  f"{where or ('-' if ref.split('/', 1)[0] in ROUTED_TYPES else '')}", file=out)
        if run.note and run.resources:
            print(f"{'':34} {'':7} note: {run.note}", file=out)
