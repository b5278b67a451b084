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
