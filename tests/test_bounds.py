"""Bounds (gateway/bounds.py): every limit refuses over it with a reason naming the setting, logs the
refused bytes raw, and answers in about the time it took to read them; errors are listed first-N-then-count."""
from __future__ import annotations

import time

import orjson
import pytest

from gateway import create_app
from gateway.bounds import csv_rows_over, first_and_count, order_segments
from tests.conftest import ack_segment, post_hl7, sample
from tests.security.credentials import authenticated


def test_first_and_count_keeps_the_first_n_and_counts_the_rest():
    assert first_and_count([1, 2, 3, 4, 5], 2) == ([1, 2], 3)
    assert first_and_count([1, 2], 2) == ([1, 2], 0)
    assert first_and_count([1, 2, 3], 0) == ([1, 2, 3], 0)


def test_orders_are_orc_segments_or_obr_when_a_message_has_no_orc():
    assert order_segments(["MSH", "PID", "ORC", "RXE", "ORC", "RXE"]) == ("ORC", [1, 2])
    assert order_segments(["MSH", "PID", "OBR", "OBX", "OBR"]) == ("OBR", [1, 2])
    assert order_segments(["MSH", "PID", "PV1"]) == ("ORC", [])


def test_csv_rows_count_records_not_lines_and_skip_blank_lines():
    quoted = b'a,b\n"x\ny\nz",1\n\n"p\nq",2\n'          # 7 lines, 2 rows
    assert csv_rows_over(quoted, 2) is None
    assert csv_rows_over(quoted, 1) == 7                      # over: the refusal names the lines
    assert csv_rows_over(b"a,b\n" + b"1,2\n" * 10, 9) == 11
    assert csv_rows_over(b"a,b\n" + b"1,2\n" * 10, 10) is None


@pytest.fixture
def bounded(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True, "MAX_CSV_ROWS": 50, "MAX_HL7_ORDERS": 3,
                      "MAX_TRANSACTION_ENTRIES": 5, "MAX_BATCH_ENTRIES": 4, "MAX_ERRORS_REPORTED": 10})
    return app, authenticated(app, "admin")


def _csv_of_bad_rows(rows: int) -> bytes:
    header = sample("device_first_use.csv").split(b"\n", 1)[0]
    return header + b"\n" + b"LC-X,BOAO_SUPER_HOSPITAL,,not-a-date,,,,,,,\n" * rows


def test_a_csv_over_max_csv_rows_is_refused_413_logged_raw_and_nothing_mapped(bounded):
    app, client = bounded
    body = _csv_of_bad_rows(100_000)
    started = time.perf_counter()
    response = client.post("/ingest/device_first_use", data=body, content_type="text/csv")
    elapsed = time.perf_counter() - started
    assert response.status_code == 413
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "too-costly"
    assert issue["diagnostics"] == ("the file has more than 50 rows (100001 lines); this gateway takes at most 50 "
                                    "in one file (MAX_CSV_ROWS): send it in several files; nothing was stored")
    logged = app.extensions["gateway"].message_log.get(int(response.headers["X-Message-Log-Id"]))
    assert logged.status == "rejected" and logged.raw == body
    assert elapsed < 5, "a refusal costs about what reading the body did, not mapping 100,000 rows"


def test_bad_csv_rows_under_the_limit_are_listed_first_n_then_counted(bounded):
    app, client = bounded
    good = sample("device_first_use.csv").split(b"\n")[1]
    body = _csv_of_bad_rows(40) + good + b"\n"
    response = client.post("/ingest/device_first_use", data=body, content_type="text/csv")
    assert response.status_code == 200
    entries = response.get_json()["entry"]
    failed = [e for e in entries if e["response"]["status"].startswith("422")]
    assert len(failed) == 11                         # the first 10 rows, then one entry for the other 30
    assert failed[-1]["response"]["outcome"]["issue"][0]["diagnostics"] == (
        "30 more rows were not stored (line 12 to line 41); their errors are not listed here "
        "(MAX_ERRORS_REPORTED lists the first 10); the file is kept in the message log")
    assert [e for e in entries if e["response"]["status"].startswith("201")], "the good row is stored"
    logged = app.extensions["gateway"].message_log.get(int(response.headers["X-Message-Log-Id"]))
    assert len(logged.detail["errors"]) == 10 and logged.detail["errors_not_listed"] > 0


def test_a_csv_of_only_bad_rows_answers_422_with_the_first_n_issues_and_a_count(bounded):
    app, client = bounded
    response = client.post("/ingest/device_first_use", data=_csv_of_bad_rows(30), content_type="text/csv")
    assert response.status_code == 422
    issues = response.get_json()["issue"]
    assert len(issues) == 11
    assert issues[-1]["code"] == "too-costly" and issues[-1]["diagnostics"].startswith("and ")
    assert "more errors like these (MAX_ERRORS_REPORTED lists the first 10)" in issues[-1]["diagnostics"]


def _rde_with_orders(count: int) -> bytes:
    lines = sample("rde_o11_new_imported.hl7").split(b"\r")
    head = [line for line in lines if line[:3] in (b"MSH", b"PID", b"PV1")]
    order = [line for line in lines if line[:3] in (b"ORC", b"TQ1", b"RXE", b"RXR", b"ZLC")]
    groups = []
    for i in range(count):
        groups += [line.replace(b"BSH-RX-0001", b"BSH-RX-%04d" % i).replace(b"BSH-RXNUM-0001", b"BSH-RXNUM-%04d" % i)
                   for line in order]
    return b"\r".join(head + groups) + b"\r"


def test_an_hl7_message_over_max_hl7_orders_is_refused_ar_at_the_first_order_too_many(bounded):
    app, client = bounded
    response, segments = post_hl7(client, _rde_with_orders(5))
    assert ack_segment(segments, "MSA")[1] == "AR"
    err = ack_segment(segments, "ERR")
    assert err[2] == "ORC^4"                       # the 4th ORC is the first one over the limit of 3
    assert err[3].startswith("100^")
    assert err[8] == ("the message carries 5 orders (ORC segments); this gateway takes at most 3 in one message "
                      "(MAX_HL7_ORDERS): send them in several messages; nothing was stored")
    assert client.get("/fhir/MedicationRequest").get_json()["total"] == 0
    logged = app.extensions["gateway"].message_log.get(int(response.headers["X-Message-Log-Id"]))
    assert logged.status == "rejected" and logged.raw == _rde_with_orders(5)


def test_an_hl7_message_at_max_hl7_orders_is_stored(bounded):
    app, client = bounded
    response, segments = post_hl7(client, _rde_with_orders(3))
    assert ack_segment(segments, "MSA")[1] == "AA"
    assert client.get("/fhir/MedicationRequest").get_json()["total"] == 3


def _bundle(kind: str, count: int) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": str(i)}]},
         "request": {"method": "POST", "url": "Patient"}} for i in range(count)]}


@pytest.mark.parametrize("kind, count, key, limit", [("transaction", 6, "MAX_TRANSACTION_ENTRIES", 5),
                                                     ("batch", 5, "MAX_BATCH_ENTRIES", 4)])
def test_a_bundle_over_its_entry_limit_is_refused_413_logged_raw_and_nothing_stored(bounded, kind, count, key,
                                                                                      limit):
    app, client = bounded
    body = orjson.dumps(_bundle(kind, count))
    response = client.post("/fhir", data=body, content_type="application/fhir+json")
    assert response.status_code == 413
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "too-costly" and issue["expression"] == ["Bundle.entry"]
    assert issue["diagnostics"] == (f"the {kind} has {count} entries; this gateway takes at most {limit} in one "
                                    f"{kind} ({key}): send them in several Bundles; nothing was stored")
    assert client.get("/fhir/Patient").get_json()["total"] == 0
    logged = app.extensions["gateway"].message_log.get(int(response.headers["X-Message-Log-Id"]))
    assert logged.status == "rejected" and logged.raw == body
    audit = client.get("/fhir/AuditEvent?outcome=4").get_json()
    assert any(e["resource"].get("outcomeDesc") == issue["diagnostics"] for e in audit["entry"])


def test_a_bundle_at_its_entry_limit_is_processed(bounded):
    app, client = bounded
    response = client.post("/fhir", data=orjson.dumps(_bundle("transaction", 5)), content_type="application/fhir+json")
    assert response.status_code == 200
    assert client.get("/fhir/Patient").get_json()["total"] == 5


def test_an_operation_outcome_lists_the_first_n_issues_then_counts_the_rest(bounded):
    app, client = bounded
    patient = {"resourceType": "Patient", "identifier": [{"value": f"no-system-{i}"} for i in range(40)]}
    response = client.post("/fhir/Patient", json=patient, content_type="application/fhir+json")
    assert response.status_code in (400, 422)
    issues = response.get_json()["issue"]
    assert len(issues) == 11
    assert issues[-1]["code"] == "too-costly" and issues[-1]["severity"] == "error"
    assert issues[-1]["diagnostics"].endswith("more issues (MAX_ERRORS_REPORTED lists the first 10)")
