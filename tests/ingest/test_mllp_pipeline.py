"""MLLP into the real ingest pipeline, driven by python-hl7's MLLP client (not ours)."""
from __future__ import annotations

import socket

import hl7
import pytest
from hl7.client import MLLPClient

from conftest import sample
from gateway.ingest.mllp import frame
from gateway.ingest.mllp_handler import mllp_server


@pytest.fixture
def listener(gateway):
    server = mllp_server(gateway.pipeline, "127.0.0.1", 0)
    server.start()
    yield server
    server.stop()


def _msa(ack_text: str) -> list[str]:
    return next(line.split("|") for line in ack_text.split("\r") if line.startswith("MSA"))


def test_python_hl7_client_gets_aa_and_the_order_is_stored(listener, gateway):
    host, port = listener.address
    with MLLPClient(host, port, encoding="utf-8") as client:
        ack = client.send_message(sample("rde_o11_new_imported.hl7"))
    assert _msa(ack.decode("utf-8"))[1:3] == ["AA", "BSH20260315000001"]
    assert gateway.message_log.recent(1)[0].transport == "mllp"
    page = gateway.store.search("MedicationRequest", [], 10)
    assert page.total == 1


def test_messages_on_one_connection_are_answered_in_order(listener):
    host, port = listener.address
    with MLLPClient(host, port, encoding="utf-8") as client:
        answers = [_msa(client.send_message(sample(name)).decode("utf-8"))[1:3]
                   for name in ("rde_o11_new_imported.hl7", "rde_o11_cancel.hl7", "bad_missing_msg_type.hl7")]
    assert answers == [["AA", "BSH20260315000001"], ["AA", "BSH20260316000009"], ["AR", ""]]


def test_oversized_message_is_refused_with_its_control_id(gateway):
    gateway.pipeline.config["MAX_MESSAGE_BYTES"] = 2048
    server = mllp_server(gateway.pipeline, "127.0.0.1", 0)
    server.start()
    try:
        big = sample("rde_o11_new_imported.hl7") + b"NTE|1||" + b"x" * 5000 + b"\r"
        with socket.create_connection(server.address, timeout=10) as sock:
            sock.sendall(frame(big))
            data = b""
            while not data.endswith(b"\x1c\x0d"):
                data += sock.recv(65536)
        ack = hl7.parse(data.strip(b"\x0b\x1c\x0d").decode("utf-8"))
        assert str(ack.segment("MSA")[1]) == "AR"
        assert str(ack.segment("MSA")[2]) == "BSH20260315000001"
        assert gateway.message_log.recent(1)[0].status == "rejected"
    finally:
        server.stop()
