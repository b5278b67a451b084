"""The message log as operators read it: /admin/messages, one message in detail, replay after a fix."""
from __future__ import annotations

import shutil

import pytest

from gateway import create_app
from gateway.cli import main
from tests.conftest import SAMPLES, ack_segment, post_hl7, sample
from tests.security.credentials import authenticated

UNKNOWN_SEX = sample("pex_p07_adverse_event.hl7").replace(b"|19900101|M|", b"|19900101|X|")
ADT = b"MSH|^~\\&|HIS|H1|GW|EPC|20260316080000||ADT^A01^ADT_A01|A1|P|2.5\rPID|1||1^^^H1^MR\r"


def _messages(client, query: str = "") -> list[dict]:
    response = client.get(f"/admin/messages{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["messages"]


@pytest.fixture
def three_messages(client):
    """One stored order (AA), one adverse event with a sex code no table knows (AE), one ADT (AR)."""
    codes = [ack_segment(post_hl7(client, raw)[1], "MSA")[1]
             for raw in (sample("rde_o11_new_imported.hl7"), UNKNOWN_SEX, ADT)]
    assert codes == ["AA", "AE", "AR"]
    return client


def test_listing_is_newest_first_with_what_an_operator_scans_for(three_messages):
    listed = _messages(three_messages)
    assert [(m["message_type"], m["status"], m["ack_code"]) for m in listed] == [
        ("ADT^A01", "rejected", "AR"), ("PEX^P07", "error", "AE"), ("RDE^O11", "processed", "AA")]
    assert listed[1]["sender_facility"] == "BOAO_SUPER_HOSPITAL"
    assert listed[1]["control_id"] == "BSH20260402000031"
    assert "raw" not in listed[0]


@pytest.mark.parametrize("query, types", [
    ("?status=error", ["PEX^P07"]),
    ("?ack=AR", ["ADT^A01"]),
    ("?ack=AA", ["RDE^O11"]),
    ("?sender=BOAO_SUPER_HOSPITAL", ["PEX^P07", "RDE^O11"]),
    ("?sender=BOAO_HIS&type=RDE", ["RDE^O11"]),
    ("?type=PEX^P07&ack=AE", ["PEX^P07"]),
    ("?control_id=A1", ["ADT^A01"]),
    ("?text=结膜充血", ["PEX^P07"]),         # a text inside the raw message, in Chinese
    ("?since=2000-01-01&until=2999-01-01", ["ADT^A01", "PEX^P07", "RDE^O11"]),
    ("?since=2999-01-01", []),
])
def test_filters(three_messages, query, types):
    assert [m["message_type"] for m in _messages(three_messages, query)] == types


def test_cursor_pages_do_not_shift_when_new_messages_arrive(three_messages):
    first = three_messages.get("/admin/messages?limit=2").get_json()
    assert [m["message_type"] for m in first["messages"]] == ["ADT^A01", "PEX^P07"]
    post_hl7(three_messages, ADT.replace(b"|A1|", b"|A2|"))      # arrives between the pages
    second = three_messages.get(f"/admin/messages?limit=2&before={first['next']}").get_json()
    assert [m["message_type"] for m in second["messages"]] == ["RDE^O11"]
    assert second["next"] is None


def test_bad_filters_are_400_with_the_reason(client):
    assert "status must be one of" in client.get("/admin/messages?status=lost").get_json()["issue"][0]["diagnostics"]
    assert client.get("/admin/messages?since=yesterday").status_code == 400
    assert client.get("/admin/messages?limit=0").status_code == 400


def test_only_admins_read_the_message_log(three_messages, client_as, anonymous_client):
    assert client_as("hospital").get("/admin/messages").status_code == 403
    assert client_as("regulator").get("/admin/messages/1").status_code == 403
    assert anonymous_client.get("/admin/messages").status_code == 401


def test_one_message_shows_named_fields_the_ack_and_why(three_messages):
    failed = _messages(three_messages, "?status=error")[0]
    shown = three_messages.get(f"/admin/messages/{failed['id']}").get_json()
    assert shown["charset"] == "utf-8" and "双眼结膜充血" in shown["raw"]
    pid = next(s for s in shown["segments"] if s["name"] == "PID")
    sex = next(f for f in pid["fields"] if f["position"] == "PID-8")
    assert (sex["name"], sex["value"]) == ("Administrative Sex", "X")
    msh = shown["segments"][0]["fields"]
    assert {"position": "MSH-10", "name": "Message Control ID", "value": "BSH20260402000031"} in msh
    assert "MSA|AE|BSH20260402000031" in shown["ack"]
    assert shown["errors"] == ["Patient.gender: 'X' is not a known value of HL7 table 0001"]
    assert shown["resources"] == [] and shown["deliveries"] == []


def test_a_gb18030_message_is_shown_decoded_with_its_charset(client):
    raw = sample("rde_o11_two_orders_gb18030.hl7")
    response, _ack = post_hl7(client, raw)
    shown = client.get(f"/admin/messages/{response.headers['X-Message-Log-Id']}").get_json()
    assert shown["charset"] == "gb18030"
    assert raw.decode("gb18030").split("\r")[2] in shown["raw"]


def test_a_stored_message_shows_its_versions_and_their_deliveries(client):
    response, _ack = post_hl7(client, sample("rde_o11_cancel.hl7"))
    shown = client.get(f"/admin/messages/{response.headers['X-Message-Log-Id']}").get_json()
    order = next(r for r in shown["resources"] if r.startswith("MedicationRequest/"))
    assert order.endswith("/_history/1")
    routed = [d for d in shown["deliveries"] if d["resource"] == order]
    assert [(d["destination"], d["status"]) for d in routed] == [("prescription-center", "pending")]


def test_unknown_message_is_404(client):
    assert client.get("/admin/messages/999").status_code == 404
    assert client.post("/admin/messages/999/replay").status_code == 404


# ------------------------------------------------------------------ replay after a mapping fix

@pytest.fixture
def fixable(tmp_path):
    """A gateway whose mappings are a copy the test can fix, and the AE a hospital got from it."""
    mappings = tmp_path / "mappings"
    shutil.copytree(SAMPLES.parent.parent.parent / "mappings", mappings)
    settings = {"DATA_DIR": str(tmp_path / "var"), "MAPPINGS_DIR": str(mappings), "TESTING": True}
    before_fix = authenticated(create_app(settings), "admin")
    _response, ack = post_hl7(before_fix, UNKNOWN_SEX)
    assert ack_segment(ack, "MSA")[1] == "AE"
    tables = mappings / "tables.yaml"
    tables.write_text(tables.read_text(encoding="utf-8").replace(
        "  N: unknown      # not applicable\n", "  N: unknown      # not applicable\n  X: other\n"), encoding="utf-8")
    return settings


def test_replaying_the_aes_of_a_hospital_after_a_fix_stores_them_once(fixable):
    app = create_app(fixable)              # restarted with the fixed mapping
    client = authenticated(app, "admin")
    criteria = {"sender": "BOAO_SUPER_HOSPITAL", "ack": "AE", "since": "2020-01-01"}
    first = client.post("/admin/messages/replay", json=criteria).get_json()
    assert first["summary"] == {"processed": 1}
    assert first["replayed"][0]["ack_code"] == "AA"
    event = client.get("/fhir/AdverseEvent").get_json()
    assert event["total"] == 1
    shown = client.get(f"/admin/messages/{first['replayed'][0]['log_id']}").get_json()
    assert shown["status"] == "processed" and shown["ack_code"] == "AA"
    assert shown["replays"][0]["status"] == "error" and shown["replays"][0]["ack_code"] == "AE"
    assert shown["replays"][0]["by"].startswith("client ")
    assert any(d["destination"] == "provincial-regulator" for d in shown["deliveries"])

    # idempotent: the same request again finds no AE left; the message by id is skipped
    assert client.post("/admin/messages/replay", json=criteria).get_json()["summary"] == {}
    again = client.post(f"/admin/messages/{shown['id']}/replay").get_json()
    assert again["after"] == "skipped"
    forced = client.post(f"/admin/messages/{shown['id']}/replay?force=true").get_json()
    assert forced["after"] == "processed"
    assert client.get("/fhir/AdverseEvent").get_json()["total"] == 1
    assert client.get(f"/fhir/AdverseEvent/{event['entry'][0]['resource']['id']}/_history").get_json()["total"] == 1

    # the hospital resending the message now hears today's answer
    _response, ack = post_hl7(authenticated(app, "hospital"), UNKNOWN_SEX)
    assert ack_segment(ack, "MSA")[1] == "AA"

    audit = client.get("/fhir/AuditEvent?_count=100").get_json()
    replays = [e["resource"] for e in audit["entry"]
               if e["resource"].get("entity", [{}])[0].get("description", "").startswith("replay of message")]
    assert [r["outcomeDesc"] for r in replays].count("replay: error -> processed (AA)") == 1
    assert any(r["outcomeDesc"].startswith("replay skipped") for r in replays)


def test_a_set_replay_needs_a_criterion(client):
    response = client.post("/admin/messages/replay", json={})
    assert response.status_code == 400
    assert "at least one criterion" in response.get_json()["issue"][0]["diagnostics"]


def test_replay_keeps_a_message_held_to_the_organization_it_came_from(app, client_as, client):
    other = client_as("hospital", "HAIKOU_PEOPLES_HOSPITAL")
    _response, ack = post_hl7(other, sample("rde_o11_cancel.hl7"))       # MSH-4 is BOAO_SUPER_HOSPITAL
    assert ack_segment(ack, "MSA")[1] == "AR"
    outcome = client.post("/admin/messages/replay", json={"status": "rejected"}).get_json()["replayed"]
    assert [(o["after"], o["ack_code"]) for o in outcome] == [("rejected", "AR")]
    assert client.get("/fhir/MedicationRequest").get_json()["total"] == 0


def test_cli_lists_shows_and_replays(fixable, capsys):
    data_dir = ["--data-dir", fixable["DATA_DIR"]]
    import os
    os.environ["GATEWAY_MAPPINGS_DIR"] = fixable["MAPPINGS_DIR"]
    try:
        assert main([*data_dir, "messages", "list", "--ack", "AE"]) == 0
        listed = capsys.readouterr().out
        assert "PEX^P07" in listed and "BSH20260402000031" in listed and " AE" in listed
        log_id = int(listed.splitlines()[1].split()[0])
        assert main([*data_dir, "messages", "show", str(log_id)]) == 0
        shown = capsys.readouterr().out
        assert "PID-8    Administrative Sex" in shown and "MSA|AE" in shown
        assert main([*data_dir, "messages", "replay", "--sender", "BOAO_SUPER_HOSPITAL", "--ack", "AE"]) == 0
        replayed = capsys.readouterr().out
        assert f"message {log_id}: replay: error -> processed (AA)" in replayed
        assert main([*data_dir, "messages", "replay", str(log_id)]) == 0
        assert "replay skipped: already processed" in capsys.readouterr().out
        assert main([*data_dir, "messages", "replay"]) == 2
    finally:
        del os.environ["GATEWAY_MAPPINGS_DIR"]
