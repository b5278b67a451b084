"""Adverse events, devices and dispenses over HTTP: POST /hl7v2 in, ACK out, then what a regulator
or the prescription center finds with FHIR searches, with several reports stored."""
from __future__ import annotations

from conftest import ack_segment, post_hl7, sample

BASE = "https://lecheng-fhir-gateway.org/fhir"
PROFILE = BASE + "/StructureDefinition/lecheng-{}"


def _search(client, query: str) -> dict:
    response = client.get(f"/fhir/{query}")
    assert response.status_code == 200, response.data
    return response.get_json()


def _ids(bundle: dict) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []))


def _variant(name: str, *replacements: tuple[bytes, bytes]) -> bytes:
    raw = sample(name)
    for old, new in replacements:
        assert old in raw, old
        raw = raw.replace(old, new)
    return raw


# ------------------------------------------------------------------ RDS^O13

def test_dispense_after_its_order_links_it_and_completes_the_order(client, client_as):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    _response, ack = post_hl7(client_as("pharmacy"), sample("rds_o13_dispense.hl7"))   # HAIKOU_PHARMACY_017
    assert ack_segment(ack, "MSA")[1:3] == ["AA", "PH017-20260315-0042"]
    order = _search(client, "MedicationRequest?identifier=BSH-RX-0001")["entry"][0]["resource"]
    assert order["status"] == "completed" and order["meta"]["versionId"] == "2"
    dispenses = _search(client, f"MedicationDispense?prescription=MedicationRequest/{order['id']}")
    assert dispenses["total"] == 1
    dispense = dispenses["entry"][0]["resource"]
    assert dispense["authorizingPrescription"][0]["reference"] == f"MedicationRequest/{order['id']}"
    assert dispense["meta"]["profile"] == [PROFILE.format("medicationdispense")]
    assert dispense["whenHandedOver"] == "2026-03-15T15:28:00+08:00"
    assert dispense["performer"][0]["actor"]["reference"].startswith("Organization/")
    medication = client.get(f"/fhir/{dispense['medicationReference']['reference']}").get_json()
    assert medication["batch"] == {"lotNumber": "LOT2026A17", "expirationDate": "2027-12-31"}
    assert _search(client, "MedicationDispense?whenhandedover=2026-03-15&status=completed")["total"] == 1


def test_dispense_for_an_unknown_order_is_stored_and_answered_ae_naming_orc2(client):
    _response, ack = post_hl7(client, sample("rds_o13_dispense.hl7"))
    assert ack_segment(ack, "MSA")[1] == "AE"
    err = ack_segment(ack, "ERR")
    assert err[2] == "ORC^3^2^1"            # segment ORC (3rd in the message), field 2
    assert err[3].startswith("204^")
    assert "BSH-RX-0001" in err[8] and "is stored" in err[8]
    dispenses = _search(client, "MedicationDispense?identifier=PH017-DISP-0042")
    assert dispenses["total"] == 1
    prescription = dispenses["entry"][0]["resource"]["authorizingPrescription"][0]
    assert "reference" not in prescription
    assert prescription["identifier"]["value"] == "BSH-RX-0001"
    assert _search(client, "MedicationRequest")["total"] == 0


def test_dispense_does_not_reopen_a_cancelled_order(client, client_as):
    post_hl7(client, sample("rde_o11_new_imported.hl7"))
    post_hl7(client, sample("rde_o11_cancel.hl7"))
    _response, ack = post_hl7(client_as("pharmacy"), sample("rds_o13_dispense.hl7"))
    assert ack_segment(ack, "MSA")[1] == "AA"
    assert any("already cancelled" in "|".join(s) for s in ack if s[0] == "ERR")
    order = _search(client, "MedicationRequest?identifier=BSH-RX-0001")["entry"][0]["resource"]
    assert order["status"] == "cancelled"


# ------------------------------------------------------------------ ORU^R01 devices

def test_the_same_device_reported_twice_is_one_device_updated(client):
    post_hl7(client, sample("oru_r01_device_use.hl7"))
    post_hl7(client, sample("oru_r01_device_use.hl7"))                       # a resend: same ACK
    _response, ack = post_hl7(client, _variant("oru_r01_device_use.hl7",      # a new message, same device
                                               (b"BRJ20260320000005", b"BRJ20260321000009"),
                                               (b"|AD||EQUIP", b"|UP||EQUIP")))
    assert ack_segment(ack, "MSA")[1] == "AA"
    devices = _search(client, "Device")
    assert devices["total"] == 1
    device = devices["entry"][0]["resource"]
    assert device["meta"]["profile"] == [PROFILE.format("device")]
    assert {(i["system"], i["value"]) for i in device["identifier"]} == {
        (f"{BASE}/sid/device-udi-serial", "00643169007222:SN-PMC-778812"),
        (f"{BASE}/sid/device/BOAO_RUIJIN_HOSPITAL", "BRJ-DEV-7781")}
    observation = _search(client, f"Observation?device=Device/{device['id']}")["entry"][0]["resource"]
    assert observation["valueString"] == "Leadless pacemaker implanted, right ventricle"


def test_regulator_finds_devices_by_udi_di(client):
    post_hl7(client, sample("oru_r01_device_use.hl7"))
    # the same model, another serial, another patient
    post_hl7(client, _variant("oru_r01_device_use.hl7", (b"BRJ20260320000005", b"BRJ20260322000001"),
                              (b"R55601", b"R55777"), (b"BRJ-DEV-7781", b"BRJ-DEV-7790"),
                              (b"SN-PMC-778812", b"SN-PMC-778830")))
    # another model altogether
    post_hl7(client, _variant("oru_r01_device_use.hl7", (b"BRJ20260320000005", b"BRJ20260323000002"),
                              (b"BRJ-DEV-7781", b"BRJ-DEV-8001"), (b"00643169007222", b"04046963821004"),
                              (b"SN-PMC-778812", b"SN-HA-0001")))
    assert _search(client, "Device")["total"] == 3
    same_model = _search(client, "Device?udi-di=00643169007222")
    assert sorted(e["resource"]["serialNumber"] for e in same_model["entry"]) == ["SN-PMC-778812", "SN-PMC-778830"]
    other = _search(client, "Device?udi-di=04046963821004")
    assert [e["resource"]["serialNumber"] for e in other["entry"]] == ["SN-HA-0001"]
    one = _search(client, f"Device?identifier={BASE}/sid/device-udi-serial|00643169007222:SN-PMC-778830")
    assert [e["resource"]["identifier"][1]["value"] for e in one["entry"]] == ["BRJ-DEV-7790"]


# ------------------------------------------------------------------ PEX^P07 adverse events

def _reports(client) -> None:
    """Three reports: dupilumab lot LOT2026A17 on 1 April (the sample), the same lot on 10 March,
    and another drug on 5 April."""
    for raw in (sample("pex_p07_adverse_event.hl7"),
                _variant("pex_p07_adverse_event.hl7", (b"BSH20260402000031", b"BSH20260311000007"),
                         (b"AE-BSH-2026-0031", b"AE-BSH-2026-0007"), (b"|20260401|||||A|", b"|20260310|||||A|")),
                _variant("pex_p07_adverse_event.hl7", (b"BSH20260402000031", b"BSH20260406000040"),
                         (b"AE-BSH-2026-0031", b"AE-BSH-2026-0040"), (b"|20260401|||||A|", b"|20260405|||||A|"),
                         (b"HNLC-D-0042^\xe5\xba\xa6", b"HNLC-D-0077^\xe5\xba\xa6"))):
        _response, ack = post_hl7(client, raw)
        assert ack_segment(ack, "MSA")[1] == "AA", ack


def test_regulator_finds_adverse_events_by_suspect_product_and_date_range(client):
    _reports(client)
    assert _search(client, "AdverseEvent")["total"] == 3
    dupilumab = _search(client, "Medication?code=HNLC-D-0042")
    assert dupilumab["total"] == 1                      # one product lot, named by two reports
    medication_id = dupilumab["entry"][0]["resource"]["id"]
    found = _search(client, f"AdverseEvent?substance=Medication/{medication_id}&date=ge2026-03-25&date=le2026-04-30")
    assert [e["resource"]["identifier"]["value"] for e in found["entry"]] == ["AE-BSH-2026-0031"]
    both = _search(client, f"AdverseEvent?substance=Medication/{medication_id}")
    assert sorted(e["resource"]["identifier"]["value"] for e in both["entry"]) == ["AE-BSH-2026-0007",
                                                                                  "AE-BSH-2026-0031"]
    # the same in one request, chained through the suspect Medication's code (across its lots)
    chained = _search(client, "AdverseEvent?substance:Medication.code=HNLC-D-0042&date=ge2026-03-01&date=lt2026-04-01")
    assert [e["resource"]["identifier"]["value"] for e in chained["entry"]] == ["AE-BSH-2026-0007"]
    april = _search(client, "AdverseEvent?date=ge2026-04-01&date=lt2026-05-01&seriousness=Non-serious")
    assert sorted(e["resource"]["identifier"]["value"] for e in april["entry"]) == ["AE-BSH-2026-0031",
                                                                                   "AE-BSH-2026-0040"]
    event = found["entry"][0]["resource"]
    assert event["meta"]["profile"] == [PROFILE.format("adverseevent")]
    assert _search(client, "AdverseEvent?event=http://terminology.hl7.org/CodeSystem/mdr|10010741")["total"] == 3
    recorder = client.get(f"/fhir/{event['recorder']['reference']}").get_json()
    assert recorder["resourceType"] == "PractitionerRole" and recorder["organization"]["reference"]


def test_report_with_two_events_stores_both_and_the_suspect_device(client):
    from tests.mapping.test_report_mappings import two_event_report
    _response, ack = post_hl7(client, two_event_report())
    assert ack_segment(ack, "MSA")[1] == "AA", ack
    events = _search(client, "AdverseEvent?identifier=AE-BSH-2026-0031,AE-BSH-2026-0031/2")
    assert events["total"] == 2
    device = _search(client, "Device?type=PEN-300")["entry"][0]["resource"]
    by_device = _search(client, f"AdverseEvent?substance=Device/{device['id']}")
    assert [e["resource"]["identifier"]["value"] for e in by_device["entry"]] == ["AE-BSH-2026-0031/2"]
    assert _search(client, "AdverseEvent?seriousness=Serious")["total"] == 1


def test_external_dispense_after_its_external_order_is_linked_and_accepted(client):
    from conftest import EXTERNAL
    _response, ack = post_hl7(client, (EXTERNAL / "RDE-O11-01.hl7").read_bytes())
    assert ack_segment(ack, "MSA")[1] == "AA"
    _response, ack = post_hl7(client, (EXTERNAL / "RDS-O13-01.hl7").read_bytes())
    assert ack_segment(ack, "MSA")[1:3] == ["AA", "MSG00001"]
    order = _search(client, "MedicationRequest?identifier=1163422591")["entry"][0]["resource"]
    dispense = _search(client, f"MedicationDispense?prescription=MedicationRequest/{order['id']}")["entry"][0]["resource"]
    # no ORC-3: the dispense is keyed by the order number and the RXD-1 counter
    assert dispense["identifier"] == [{"system": f"{BASE}/sid/EPC/dispense", "value": "1163422591-1"}]
    assert dispense["quantity"]["value"] == 10 and dispense["whenHandedOver"] == "2020-12-12"


def test_a_dispense_kept_before_its_order_is_linked_when_the_order_arrives(client, client_as):
    _response, ack = post_hl7(client_as("pharmacy"), sample("rds_o13_dispense.hl7"))
    assert ack_segment(ack, "MSA")[1] == "AE"
    waiting = _search(client, "MedicationDispense?prescription-identifier=BSH-RX-0001")["entry"][0]["resource"]
    _response, ack = post_hl7(client, sample("rde_o11_new_imported.hl7"))
    assert ack_segment(ack, "MSA")[1] == "AA"
    assert any("is linked now" in "|".join(s) for s in ack if s[0] == "ERR")
    order = _search(client, "MedicationRequest?identifier=BSH-RX-0001")["entry"][0]["resource"]
    linked = client.get(f"/fhir/MedicationDispense/{waiting['id']}").get_json()
    assert linked["meta"]["versionId"] == "2"
    assert linked["authorizingPrescription"][0]["reference"] == f"MedicationRequest/{order['id']}"
    assert _search(client, f"MedicationDispense?prescription=MedicationRequest/{order['id']}")["total"] == 1
    # the order's message wrote version 2, and its Provenance says so
    provenances = _search(client, f"Provenance?target=MedicationDispense/{waiting['id']}")["entry"]
    by_order = [p["resource"] for p in provenances
                if p["resource"]["meta"]["source"] == "urn:hl7v2:BOAO_SUPER_HOSPITAL:BSH20260315000001"]
    assert f"MedicationDispense/{waiting['id']}/_history/2" in [t["reference"] for t in by_order[0]["target"]]


def _imported_device_report(with_approval: bool) -> bytes:
    fields = {1: "HNLC-M-0101^Leadless cardiac pacemaker^HNLC-DEVICE", 3: "IMP^Implant^HNLC-CLASS",
              7: "20260320", 12: "LOT-MC2A-0911", 20: "M", 21: "OT"}     # PCR-7 implanted, PCR-20/21
    pcr = "PCR|" + "|".join(fields.get(n, "") for n in range(1, 22)) + "\r"
    zlc = "ZLC|1|LC2026-D-0101|FIRST_USE|20260301|HNMPA^Hainan Medical Products Administration\r"
    raw = sample("pex_p07_adverse_event.hl7").replace(b"BSH20260402000031", b"BSH20260402000032")
    return raw.rstrip(b"\r\n") + b"\r" + (pcr + (zlc if with_approval else "")).encode()


def test_an_imported_device_named_in_a_report_carries_its_pilot_zone_approval(client):
    _response, ack = post_hl7(client, _imported_device_report(with_approval=True))
    assert ack_segment(ack, "MSA")[1] == "AA", ack
    device = _search(client, "Device?type=HNLC-M-0101")["entry"][0]["resource"]
    assert device["extension"][0]["url"] == f"{BASE}/StructureDefinition/pilot-zone-approval"
    assert device["extension"][0]["extension"][0]["valueIdentifier"]["value"] == "LC2026-D-0101"
    event = _search(client, f"AdverseEvent?substance=Device/{device['id']}")["entry"][0]["resource"]
    assert [s["instance"]["reference"].split("/")[0] for s in event["suspectEntity"]] == ["Medication", "Device"]


def test_an_imported_device_without_its_approval_is_stored_flagged_naming_the_rule(client):
    """A report of harm is never refused for a missing approval (profiles/README "Context")."""
    _response, ack = post_hl7(client, _imported_device_report(with_approval=False))
    assert ack_segment(ack, "MSA")[1] == "AA"
    (err,) = [e for e in ack if e[0] == "ERR" and "pilot-zone approval" in e[8]]
    assert err[4] == "W"
    events = _search(client, "AdverseEvent")
    assert events["total"] == 1
    assert "needs-review" in [t["code"] for t in events["entry"][0]["resource"]["meta"]["tag"]]


def test_an_update_report_p08_changes_the_same_adverse_event(client):
    post_hl7(client, sample("pex_p07_adverse_event.hl7"))
    _response, ack = post_hl7(client, _variant("pex_p07_adverse_event.hl7",
                                               (b"BSH20260402000031", b"BSH20260409000050"),
                                               (b"PEX^P07^PEX_P07", b"PEX^P08^PEX_P08"), (b"|A|N|Y|R|R|", b"|A|N|Y|R|F|")))
    assert ack_segment(ack, "MSA")[1] == "AA"
    events = _search(client, "AdverseEvent")
    assert events["total"] == 1
    event = events["entry"][0]["resource"]
    assert event["meta"]["versionId"] == "2"
    assert event["outcome"]["coding"][0]["code"] == "resolved"


def test_a_device_first_stored_by_its_udi_and_serial_alone_is_the_device_the_oru_updates(client, client_as):
    """The identity contract from the other side: the CSV device register stores the Device with the
    UDI+serial identifier only; the ORU's PRT finds it by that identifier and adds the hospital's number
    (the same hospital's Device: each organization keeps its own, gateway/store/access.py)."""
    created = client_as("hospital", "BOAO_RUIJIN_HOSPITAL").post("/fhir/Device", json={
        "resourceType": "Device", "status": "active",
        "identifier": [{"system": f"{BASE}/sid/device-udi-serial", "value": "00643169007222:SN-PMC-778812"}],
        "udiCarrier": [{"deviceIdentifier": "00643169007222", "issuer": "http://hl7.org/fhir/NamingSystem/gs1-di"}]})
    assert created.status_code == 201, created.data
    _response, ack = post_hl7(client, sample("oru_r01_device_use.hl7"))
    assert ack_segment(ack, "MSA")[1] == "AA"
    devices = _search(client, "Device")
    assert devices["total"] == 1
    device = devices["entry"][0]["resource"]
    assert device["id"] == created.get_json()["id"] and device["meta"]["versionId"] == "2"
    assert [i["value"] for i in device["identifier"]] == ["00643169007222:SN-PMC-778812", "BRJ-DEV-7781"]


def test_a_report_with_the_event_address_peo7_is_stored_with_its_location(client, gateway):
    """Issue 14 item 2: every PEX carrying PEO-7 was refused (``Location.address: expected a single
    value, found an array``); the engine now fits the one address to the 0..1 element."""
    peo = b"PEO|10010741^Conjunctivitis^MDR|H10.9^Conjunctivitis, unspecified^I10|20260401||||"
    _response, ack = post_hl7(client, _variant("pex_p07_adverse_event.hl7",
                                               (peo, peo + "博鳌路1号^^琼海市^海南省^571434^CHN".encode())))
    assert ack_segment(ack, "MSA")[1:3] == ["AA", "BSH20260402000031"]
    event = _search(client, "AdverseEvent?_count=5")["entry"][0]["resource"]
    location_type, location_id = event["location"]["reference"].split("/")
    location = gateway.store.read(location_type, location_id)      # Location is stored, not served on /fhir
    assert location["address"] == {"line": ["博鳌路1号"], "city": "琼海市", "state": "海南省",
                                   "postalCode": "571434", "country": "CHN"}
    assert location["mode"] == "instance"
