"""A report of harm is never refused for missing administrative detail (issue 14, item 1).

The sample: a PEX^P07 reporting a patient's death with two suspects, a drug from the imported-drug
catalogue and an infusion-pump set from the imported-device catalogue that has no pilot-zone
approval (lecheng-device lc-dev-3, an error for a device record anywhere else).
"""
from __future__ import annotations

from conftest import ack_segment, post_hl7, sample

FLAG = "https://lecheng-fhir-gateway.org/fhir/CodeSystem/report-flag|needs-review"
FATAL = "pex_p07_death_unapproved_device.hl7"


def _errs(ack):
    return [s for s in ack if s[0] == "ERR"]


def test_fatal_report_with_an_unapproved_device_is_stored_with_a_warning(client):
    response, ack = post_hl7(client, sample(FATAL))
    assert response.status_code == 200
    assert ack_segment(ack, "MSA")[1:3] == ["AA", "BSH20260405000077"]
    lc_dev_3 = [e for e in _errs(ack) if "lc-dev-3" in e[8]]
    assert len(lc_dev_3) == 1 and lc_dev_3[0][4] == "W"
    assert "a warning in a safety-report" in lc_dev_3[0][8]


def test_the_regulator_finds_the_fatal_report_as_serious_and_flagged(client, client_as):
    post_hl7(client, sample(FATAL))
    regulator = client_as("regulator")
    found = regulator.get(f"/fhir/AdverseEvent?_tag={FLAG}&seriousness=Serious&_include=AdverseEvent:substance")
    assert found.status_code == 200, found.data
    bundle = found.get_json()
    assert bundle["total"] == 1
    by_type = {}
    for entry in bundle["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    (event,) = by_type["AdverseEvent"]
    assert event["identifier"]["value"] == "AE-BSH-2026-0077"
    assert event["outcome"]["coding"][0]["code"] == "fatal"
    assert {"system": FLAG.split("|")[0], "code": "needs-review"} in [
        {k: t[k] for k in ("system", "code")} for t in event["meta"]["tag"]]
    assert len(event["suspectEntity"]) == 2
    (device,) = by_type["Device"]
    assert device["type"]["coding"][0]["code"] == "HNLC-M-0207"
    assert any(t.get("code") == "needs-review" for t in device["meta"]["tag"])
    assert "profile" not in device["meta"]          # it does not conform to lecheng-device: no claim
    assert event["meta"]["profile"]                 # the report itself conforms to lecheng-adverseevent
    devices = regulator.get(f"/fhir/Device?_tag={FLAG}").get_json()
    assert devices["total"] == 1


def test_a_conforming_report_is_not_flagged(client):
    _response, ack = post_hl7(client, sample("pex_p07_adverse_event.hl7"))
    assert ack_segment(ack, "MSA")[1] == "AA"
    assert client.get(f"/fhir/AdverseEvent?_tag={FLAG}").get_json()["total"] == 0


def test_the_same_device_outside_a_safety_report_is_still_refused(client):
    """lc-dev-3 stays an error where no report of harm is at stake: a device-use result (ORU^R01)."""
    raw = sample("oru_r01_device_use.hl7").decode("utf-8")
    imported = raw.replace("PACEMAKER^Leadless cardiac pacemaker^HNLC-DEVTYPE",
                           "HNLC-M-0101^Leadless cardiac pacemaker^HNLC-DEVICE")
    assert imported != raw
    _response, ack = post_hl7(client, imported.encode("utf-8"))
    assert ack_segment(ack, "MSA")[1] == "AE"
    (err,) = [e for e in _errs(ack) if "lc-dev-3" in e[8]]
    assert err[4] == "E" and err[3].startswith("101^")
