"""An MSH-15 / MSH-16 value outside HL7 table 0155 still gets an answer over real MLLP (issue 14,
item 9): the original-mode application ACK, with a warning naming the field; never silence."""
from __future__ import annotations

import socket

import pytest

from conftest import sample
from gateway.ingest.mllp import frame
from gateway.ingest.mllp_handler import mllp_server


@pytest.fixture
def listener(gateway):
    server = mllp_server(gateway.pipeline, "127.0.0.1", 0)
    server.start()
    yield server
    server.stop()


def _one_ack(address, raw: bytes) -> list[list[str]]:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(frame(raw))
        data = b""
        while b"\x1c\x0d" not in data:
            chunk = sock.recv(65536)
            assert chunk, "connection closed without an answer"
            data += chunk
    payload = data.split(b"\x1c\x0d", 1)[0].strip(b"\x0b").decode("utf-8")
    return [line.split("|") for line in payload.split("\r") if line]


@pytest.mark.parametrize("conditions,field", [(b"|XX|XX|", "MSH-15"), (b"|XX||", "MSH-15"),
                                              (b"||XX|", "MSH-16"), (b"|AL|XX|", "MSH-16")])
def test_unknown_ack_condition_gets_the_application_ack_with_a_warning(listener, gateway, conditions, field):
    raw = sample("rde_o11_new_imported.hl7").replace(b"|AL|NE|CHN|", conditions + b"CHN|")
    assert raw != sample("rde_o11_new_imported.hl7")
    ack = _one_ack(listener.address, raw)
    msa = next(s for s in ack if s[0] == "MSA")
    assert msa[1:3] == ["AA", "BSH20260315000001"]         # original mode: AA, not CA
    warnings = [s for s in ack if s[0] == "ERR" and s[4] == "W" and field in s[8]]
    assert warnings and "table 0155" in warnings[0][8]
    assert gateway.store.search("MedicationRequest", [], 10).total == 1
