"""MLLP connections are bound to a registered client by source address; the MSH-4 rule holds there too."""
from __future__ import annotations

import socket
import time

import pytest

from gateway.ingest.mllp import frame
from gateway.ingest.mllp_handler import mllp_server
from gateway.security.mllp_binding import MllpBinding
from tests.conftest import sample


@pytest.fixture
def bound_listener(app, gateway):
    server = mllp_server(gateway.pipeline, "127.0.0.1", 0, MllpBinding(app.extensions["security"]))
    server.start()
    yield server
    server.stop()


def _send(address, raw: bytes) -> bytes:
    """One message in original mode (one application ACK), or b"" when the listener closes the connection."""
    raw = _original_mode(raw)
    data = b""
    try:
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(frame(raw))
            while not data.endswith(b"\x1c\r"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except ConnectionResetError:
        pass
    return data


def _original_mode(raw: bytes) -> bytes:
    msh, rest = raw.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[14:16] = [b"", b""]
    return b"|".join(fields) + b"\r" + rest


def _msa(ack: bytes) -> list[str]:
    """MSA of the application ACK (the last one)."""
    return [line for line in ack.decode().split("\r") if line.startswith("MSA")][-1].split("|")


def test_a_connection_from_an_address_no_client_claims_is_closed(bound_listener):
    assert _send(bound_listener.address, sample("rde_o11_new_imported.hl7")) == b""


def test_a_bound_hospital_sending_as_another_gets_ar_and_nothing_is_stored(app, bound_listener, client, gateway):
    app.extensions["security"].clients.add("ruijin-engine", "BOAO_RUIJIN_HOSPITAL", "hospital", secret=False,
                                           mllp_addresses=["127.0.0.1"])
    ack = _send(bound_listener.address, sample("rde_o11_new_imported.hl7"))
    assert _msa(ack)[1] == "AR"
    assert "ERR|" in ack.decode() and "MSH^1^4" in ack.decode()
    assert client.get("/fhir/MedicationRequest").get_json()["total"] == 0
    audit = client.get("/fhir/AuditEvent?agent=ruijin-engine").get_json()
    assert audit["total"] == 1
    event = audit["entry"][0]["resource"]
    assert event["outcome"] == "4" and event["source"]["site"] == "mllp"
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"


def test_a_bound_hospital_sending_as_itself_is_stored_with_its_tag(app, bound_listener, client):
    app.extensions["security"].clients.add("boao-engine", "BOAO_SUPER_HOSPITAL", "hospital", secret=False,
                                           mllp_addresses=["127.0.0.0/8"])
    assert _msa(_send(bound_listener.address, sample("rde_o11_new_imported.hl7")))[1] == "AA"
    order = client.get("/fhir/MedicationRequest").get_json()["entry"][0]["resource"]
    assert {"system": "https://lecheng-fhir-gateway.org/fhir/sid/sending-organization",
            "code": "BOAO_SUPER_HOSPITAL"} in order["meta"]["tag"]


def test_a_message_on_a_connection_whose_client_was_just_revoked_gets_ar_a_log_row_and_an_auditevent(
        app, bound_listener, client, gateway):
    security = app.extensions["security"]
    security.clients.add("boao-engine", "BOAO_SUPER_HOSPITAL", "hospital", secret=False,
                         mllp_addresses=["127.0.0.1"])
    raw = _original_mode(sample("rde_o11_new_imported.hl7"))
    with socket.create_connection(bound_listener.address, timeout=10) as sock:
        # TCP's handshake completes before the listener's accept thread admits the connection: wait for
        # the admission, or (on a loaded machine) the revoke lands first and the connection is refused
        deadline = time.monotonic() + 10
        while bound_listener.active_connections == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bound_listener.active_connections == 1
        security.clients.revoke("boao-engine")          # revoked after the connection was admitted
        sock.sendall(frame(raw))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break                                    # the gateway closed the connection after its AR
            data += chunk
    msa = _msa(data)
    assert msa[1:3] == ["AR", "BSH20260315000001"]
    logged = gateway.message_log.recent(1)[0]
    assert logged.raw == raw and logged.status == "rejected" and logged.transport == "mllp"
    assert "revoked" in logged.detail["errors"][0] and f"log id {logged.id}" in msa[3] + data.decode()
    assert client.get("/fhir/MedicationRequest").get_json()["total"] == 0
    events = client.get("/fhir/AuditEvent?outcome=4").get_json()["entry"]
    event = next(e["resource"] for e in events if e["resource"]["source"]["site"] == "mllp")
    assert "revoked" in event["outcomeDesc"] and event["agent"][0]["network"]["address"] == "127.0.0.1"
