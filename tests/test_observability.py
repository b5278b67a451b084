"""/metrics (Prometheus text format) counts what was sent; JSON logs carry the message-log id."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import create_app
from gateway.config import REPO_ROOT
from tests.conftest import post_hl7, sample
from tests.security.credentials import authenticated

ORDER = sample("rde_o11_new_imported.hl7")


def _order(n: int, facility: bytes) -> bytes:
    return (ORDER.replace(b"BSH20260315000001", f"MET{n:05d}".encode())
            .replace(b"BSH-RX-0001", f"MET-RX-{n:05d}".encode())
            .replace(b"|BOAO_SUPER_HOSPITAL|LECHENG_GW", b"|" + facility + b"|LECHENG_GW"))


def _samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a scrape."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def _scrape(client, **headers) -> dict:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.data[:500]
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return _samples(response.get_data(as_text=True))


def test_message_counters_match_the_messages_sent(client):
    facility = b"METRICS_HOSPITAL_1"       # a sender no other test uses: the counters are per process
    before = _scrape(client)
    for n in range(5):
        post_hl7(client, _order(n, facility))
    post_hl7(client, _order(0, facility))                                         # a resend: same answer
    for n in range(5, 7):
        post_hl7(client, _order(n, facility).replace(b"|20260315092500|", b"|2026-03-15|"))   # AE
    after = _scrape(client)

    def sent(status, ack):
        labels = {"sender": "METRICS_HOSPITAL_1", "type": "RDE^O11", "status": status, "ack": ack}
        return _value(after, "gateway_messages_total", **labels) - _value(before, "gateway_messages_total", **labels)
    assert (sent("processed", "AA"), sent("error", "AE")) == (6, 2)
    total = "gateway_ingest_stage_seconds_count"
    assert _value(after, total, stage="total") - _value(before, total, stage="total") == 8
    assert _value(after, total, stage="store") - _value(before, total, stage="store") == 5
    assert _value(after, "gateway_message_log", status="processed") == 6
    assert _value(after, "gateway_message_log", status="error") == 2
    assert _value(after, "gateway_store_resources", type="MedicationRequest") == 5
    assert _value(after, "gateway_store_database_bytes") > 0
    assert _value(after, "gateway_deliveries", destination="prescription-center", status="pending") == 5
    assert _value(after, "gateway_delivery_backlog", destination="prescription-center") == 5
    assert _value(after, "gateway_audit_events_total", activity="hl7v2", outcome="0") >= 6


def test_delivery_backlog_and_oldest_age_per_destination(client):
    post_hl7(client, sample("rde_o11_cancel.hl7"))           # routed to the prescription center, not sent yet
    scraped = _scrape(client)
    assert _value(scraped, "gateway_delivery_backlog", destination="prescription-center") == 1
    assert _value(scraped, "gateway_delivery_oldest_pending_age_seconds", destination="prescription-center") >= 0
    assert _value(scraped, "gateway_dead_letters", destination="prescription-center") == 0


def test_token_counters(app, client):
    before = _scrape(client)
    anonymous = app.test_client()
    anonymous.post("/auth/token", data={"grant_type": "client_credentials"})       # no credentials: refused
    authenticated(app, "regulator")
    after = _scrape(client)
    for outcome in ("issued", "refused"):
        assert _value(after, "gateway_tokens_total", outcome=outcome) - \
               _value(before, "gateway_tokens_total", outcome=outcome) == 1


def test_who_may_scrape(tmp_path, client_as):
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "METRICS_TOKEN": "scrape-secret-1"})
    anonymous = app.test_client()
    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer scrape-secret-1"}).status_code == 200
    # the metrics secret opens /metrics only
    assert anonymous.get("/admin/messages", headers={"Authorization": "Bearer scrape-secret-1"}).status_code == 401
    assert authenticated(app, "hospital").get("/metrics").status_code == 403
    assert authenticated(app, "admin").get("/metrics").status_code == 200


def test_several_processes_are_summed_in_multiprocess_mode(tmp_path):
    """Two processes count; a third scrapes and sees both (PROMETHEUS_MULTIPROC_DIR)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "PYTHONPATH": str(REPO_ROOT)}
    (tmp_path / "prom").mkdir()
    count = ("from gateway.observability import count_message\n"
             "for _ in range(3): count_message('MP_HOSPITAL', 'RDE^O11', 'processed', 'AA')\n")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True, timeout=60)
    scrape = ("from gateway.store import make_engine\nfrom gateway.observability import scrape\n"
              f"url = 'sqlite:///{(tmp_path / 'g.db').as_posix()}'\n"
              "import sys; sys.stdout.write(scrape(make_engine(url), url)[0].decode())\n")
    out = subprocess.run([sys.executable, "-c", scrape], env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    assert _value(_samples(out), "gateway_messages_total", sender="MP_HOSPITAL", type="RDE^O11",
                  status="processed", ack="AA") == 6


def test_json_log_lines_carry_the_message_log_id(gateway, capsys, monkeypatch):
    from gateway.observability import configure_logging
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("json")
    try:
        def broken(*_args, **_kwargs):
            raise RuntimeError("mapping engine fell over")
        monkeypatch.setattr(gateway.mappings.for_message("RDE^O11"), "run", broken)
        result = gateway.pipeline.ingest(ORDER)
        logging.getLogger("gateway.test").info("not about a message")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    failure = next(line for line in lines if line["message"].startswith(f"message {result.log_id} failed"))
    assert failure["message_log_id"] == result.log_id and failure["level"] == "ERROR"
    assert "RuntimeError: mapping engine fell over" in failure["exception"]
    assert "message_log_id" not in next(line for line in lines if line["message"] == "not about a message")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_cli_honours_log_format(tmp_path, log_format):
    env = {**os.environ, "GATEWAY_LOG_FORMAT": log_format, "GATEWAY_DATA_DIR": str(tmp_path),
           "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", "import logging, sys; from gateway.cli import main; "
                          "sys.argv=['x']; main(['clients', 'list']); logging.getLogger('t').warning('hello')"],
                         env=env, capture_output=True, text=True, timeout=60)
    line = out.stderr.strip().splitlines()[-1]
    assert (line.startswith("{") and orjson.loads(line)["message"] == "hello") if log_format == "json" \
        else line.endswith("WARNING t: hello")
