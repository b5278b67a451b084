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


def _original_mode(raw: bytes) -> bytes:
    return raw.replace(b"|AL|NE|CHN|", b"|||CHN|")


def test_python_hl7_client_gets_aa_and_the_order_is_stored(listener, gateway):
    host, port = listener.address
    with MLLPClient(host, port, encoding="utf-8") as client:
        ack = client.send_message(_original_mode(sample("rde_o11_new_imported.hl7")))
    assert _msa(ack.decode("utf-8"))[1:3] == ["AA", "BSH20260315000001"]
    assert gateway.message_log.recent(1)[0].transport == "mllp"
    page = gateway.store.search("MedicationRequest", [], 10)
    assert page.total == 1


def test_messages_on_one_connection_are_answered_in_order(listener):
    host, port = listener.address
    with MLLPClient(host, port, encoding="utf-8") as client:
        answers = [_msa(client.send_message(_original_mode(sample(name))).decode("utf-8"))[1:3]
                   for name in ("rde_o11_new_imported.hl7", "rde_o11_cancel.hl7", "bad_missing_msg_type.hl7")]
    assert answers == [["AA", "BSH20260315000001"], ["AA", "BSH20260316000009"], ["AR", ""]]


def _read_acks(sock, count: int) -> list[str]:
    data = b""
    while data.count(b"\x1c\x0d") < count:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        data += chunk
    return [f.strip(b"\x0b").decode("utf-8") for f in data.split(b"\x1c\x0d") if f.strip(b"\x0b")]


def test_enhanced_mode_al_ne_gets_only_the_accept_ack(listener, gateway):
    with socket.create_connection(listener.address, timeout=10) as sock:
        sock.sendall(frame(sample("rde_o11_new_imported.hl7")))          # MSH-15 AL, MSH-16 NE
        sock.sendall(frame(_original_mode(sample("rde_o11_cancel.hl7"))))  # then an original-mode one
        first, second = _read_acks(sock, 2)
    assert _msa(first)[1:3] == ["CA", "BSH20260315000001"]
    assert _msa(second)[1:3] == ["AA", "BSH20260316000009"]               # no AA for the first in between
    assert gateway.store.search("MedicationRequest", [], 10).total == 1


def test_enhanced_mode_al_al_gets_accept_then_application_ack(listener):
    raw = sample("rde_o11_new_imported.hl7").replace(b"|AL|NE|CHN|", b"|AL|AL|CHN|")
    with socket.create_connection(listener.address, timeout=10) as sock:
        sock.sendall(frame(raw))
        accept, application = _read_acks(sock, 2)
    assert _msa(accept)[1] == "CA" and _msa(application)[1] == "AA"


def test_enhanced_mode_er_sends_the_application_ack_only_on_error(listener):
    bad = sample("rde_o11_new_imported.hl7").replace(b"|AL|NE|CHN|", b"|NE|ER|CHN|").replace(
        b"|20260315092500|", b"|2026-03-15|")
    with socket.create_connection(listener.address, timeout=10) as sock:
        sock.sendall(frame(bad))
        (only,) = _read_acks(sock, 1)
    assert _msa(only)[1] == "AE"


def test_a_resent_message_gets_byte_identical_answers_in_enhanced_mode(listener):
    with socket.create_connection(listener.address, timeout=10) as sock:
        sock.sendall(frame(sample("rde_o11_new_imported.hl7")))
        first = _read_acks(sock, 1)
        sock.sendall(frame(sample("rde_o11_new_imported.hl7")))
        second = _read_acks(sock, 1)
    assert first == second


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


def test_burst_of_1000_messages_each_logged_and_acked_once(listener, gateway):
    base = _original_mode(sample("rde_o11_new_imported.hl7"))
    host, port = listener.address
    answers = []
    with MLLPClient(host, port, encoding="utf-8") as client:
        for n in range(1000):
            raw = base.replace(b"BSH20260315000001", f"BURST{n:04d}".encode())
            answers.append(_msa(client.send_message(raw).decode("utf-8"))[1:3])
    assert answers == [["AA", f"BURST{n:04d}"] for n in range(1000)]
    logged = gateway.message_log.recent(2000)
    assert sorted(m.control_id for m in logged) == [f"BURST{n:04d}" for n in range(1000)]
    assert all(m.ack is not None and m.status == "processed" for m in logged)


def test_client_hanging_up_mid_message_leaves_nothing_half_logged(listener, gateway):
    with socket.create_connection(listener.address, timeout=10) as sock:
        sock.sendall(b"\x0b" + sample("rde_o11_new_imported.hl7")[:200])
    host, port = listener.address
    with MLLPClient(host, port, encoding="utf-8") as client:
        ack = client.send_message(_original_mode(sample("rde_o11_cancel.hl7")))
    assert _msa(ack.decode("utf-8"))[1:3] == ["AA", "BSH20260316000009"]
    assert [m.control_id for m in gateway.message_log.recent(10)] == ["BSH20260316000009"]
