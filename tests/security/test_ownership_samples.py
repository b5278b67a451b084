"""Every HL7 sample, re-sent by another hospital as itself (MSH-3/4 changed) after its real sender
stored it, over HTTP and MLLP: the real sender's records stay exactly as they were (every version),
and the other hospital gets AE naming the record that is not its own, with nothing stored."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.ingest.mllp_handler import mllp_server
from gateway.security.mllp_binding import MllpBinding
from gateway.store import schema
from tests.conftest import ack_segment, post_hl7, sample
from tests.security.ownership_fixtures import PHARMACY, Sender, owned_by

OTHER = "QIONGHAI_PEOPLES_HOSPITAL"
# sample -> the samples its real sender(s) send first, in order
SAMPLES = {
    "rde_o11_new_imported.hl7": [],
    "rde_o11_cancel.hl7": ["rde_o11_new_imported.hl7"],
    "rde_o11_two_orders_gb18030.hl7": [],
    "oru_r01_device_use.hl7": [],
    "pex_p07_adverse_event.hl7": [],
    "rds_o13_dispense.hl7": ["rde_o11_new_imported.hl7"],
}


def _facility(raw: bytes) -> str:
    return raw.split(b"\r", 1)[0].split(b"|")[3].decode()


def _as_other(raw: bytes) -> bytes:
    msh, rest = raw.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[2:4] = [b"QH_HIS", OTHER.encode()]
    fields[9] = b"QH-" + fields[9]                      # its own control id
    return b"|".join(fields) + b"\r" + rest


def _everything_but(gateway, organization: str) -> dict:
    r = schema.resources
    with gateway.store.engine.connect() as conn:
        owners = set(conn.execute(select(r.c.owner).distinct()).scalars()) - {organization, None}
    return {owner: owned_by(gateway, owner) for owner in owners}


@pytest.mark.parametrize("transport", ["http", "mllp"])
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_another_hospital_resending_a_sample_as_itself_never_touches_the_senders_records(
        name, transport, app, gateway, client_as):
    for earlier in [*SAMPLES[name], name]:
        raw = sample(earlier)
        facility = _facility(raw)
        sender = client_as("pharmacy" if facility == PHARMACY else "hospital", facility)
        _response, segments = post_hl7(sender, raw)
        assert ack_segment(segments, "MSA")[1] == "AA", (earlier, segments)
    before = _everything_but(gateway, OTHER)
    other_http = client_as("hospital", OTHER)
    server = None
    if transport == "mllp":
        app.extensions["security"].clients.add("qh-engine", OTHER, "hospital", secret=False,
                                               mllp_addresses=["127.0.0.1"])
        server = mllp_server(gateway.pipeline, "127.0.0.1", 0, MllpBinding(app.extensions["security"]))
        server.start()
    try:
        segments = Sender(transport, other_http, server.address if server else None).send(_as_other(sample(name)))
    finally:
        if server is not None:
            server.stop()
    assert ack_segment(segments, "MSA")[1] == EXPECTED[name], segments
    assert "belongs to another organization; nothing was stored" in "|".join(ack_segment(segments, "ERR"))
    assert _everything_but(gateway, OTHER) == before, name
    assert owned_by(gateway, OTHER) == {}


EXPECTED = {      # every sample names a clinical record its real sender owns
    "rde_o11_new_imported.hl7": "AE",          # order BSH-RX-0001 (BOAO_HIS)
    "rde_o11_cancel.hl7": "AE",
    "rde_o11_two_orders_gb18030.hl7": "AE",    # HMU's two orders
    "rds_o13_dispense.hl7": "AE",              # the order it would complete is BOAO's
    "oru_r01_device_use.hl7": "AE",            # the device-use report numbers are BOAO_RUIJIN's
    "pex_p07_adverse_event.hl7": "AE",         # the adverse event report is BOAO's
}


# ------------------------------------------------------------------ documents

DOCUMENTS = {       # sample -> (mapping, the facility codes it carries)
    "device_first_use.csv": ("device_first_use", ["BOAO_RUIJIN_HOSPITAL", "BOAO_SUPER_HOSPITAL"]),
    "device_register_gb18030.csv": ("device_register_gb18030", ["BOAO_EVERGREEN_CENTER"]),
    "hospital_prescription.xml": ("hospital_prescription", ["SANYA_PEOPLES_HOSPITAL"]),
    "hospital_prescription_erx2.xml": ("hospital_prescription_erx2", ["SANYA_PEOPLES_HOSPITAL"]),
    "online_clinic_prescription.json": ("online_clinic_prescription", ["HAINAN_MED_UNIV_HOSP1"]),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_another_hospital_sending_a_document_as_itself_never_touches_the_senders_records(
        name, client, client_as, gateway):
    """A document's identifiers carry its sending facility, so the other hospital's copy is its own
    records (stored, 200), and the real senders' records stay exactly as they were."""
    mapping, facilities = DOCUMENTS[name]
    raw = sample(name)
    response = client.post(f"/ingest/{mapping}", data=raw, content_type="application/octet-stream")   # admin
    assert response.status_code == 200, response.get_json()
    before = _everything_but(gateway, OTHER)
    assert set(before) == set(facilities)
    for facility in facilities:
        raw = raw.replace(facility.encode(), OTHER.encode())
    response = client_as("hospital", OTHER).post(f"/ingest/{mapping}", data=raw,
                                                 content_type="application/octet-stream")
    assert response.status_code == 200, response.get_json()
    assert _everything_but(gateway, OTHER) == before, name
    theirs = owned_by(gateway, OTHER)
    assert theirs and all(len(versions) == 1 for versions in theirs.values())     # new records, its own
