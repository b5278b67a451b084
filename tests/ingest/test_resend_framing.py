"""A resend is the same message however it was framed: line ends, a trailing terminator, MLLP bytes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.ingest.messagelog import content_digest
from gateway.ingest.mllp_handler import mllp_server
from tests.conftest import SAMPLES, sample

ORDER = sample("rde_o11_new_imported.hl7")


@pytest.mark.parametrize("framed", [
    ORDER.rstrip(b"\r"),                                  # python-hl7's mllp_send --loose drops the last \r
    ORDER.replace(b"\r", b"\r\n"),                        # a file with Windows line ends, POSTed with curl
    ORDER.rstrip(b"\r").replace(b"\r", b"\n") + b"\n",    # Unix line ends
    b"\x0b" + ORDER + b"\x1c\r",                         # MLLP bytes left in by an interface engine
    b"\xef\xbb\xbf" + ORDER + b"\r\n",                   # a UTF-8 byte order mark, an extra line end
])
def test_framing_does_not_make_a_new_message(gateway, framed):
    first = gateway.pipeline.ingest(ORDER)
    again = gateway.pipeline.ingest(framed)
    assert again.duplicate and again.ack == first.ack
    assert gateway.store.search("MedicationRequest", [], 10).total == 1


def test_content_inside_a_segment_still_counts():
    assert content_digest(ORDER) != content_digest(ORDER.replace(b"|300||mg", b"|600||mg"))
    assert content_digest(ORDER) != content_digest(ORDER.replace(b"\rPV1|", b"\r\rPV1|"))     # an empty segment


def test_mllp_send_loose_resends_are_answered_as_the_first(gateway, tmp_path):
    """python-hl7's own command-line sender, twice, after the same file over HTTP-style bytes."""
    server = mllp_server(gateway.pipeline, "127.0.0.1", 0)
    server.start()
    try:
        first = gateway.pipeline.ingest(ORDER)
        mllp_send = Path(sys.executable).with_name("mllp_send")
        for _ in range(2):
            out = subprocess.run([str(mllp_send), "--loose", "--port", str(server.address[1]),
                                  "--file", str(SAMPLES / "rde_o11_new_imported.hl7"), "127.0.0.1"],
                                 capture_output=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert b"MSA|CA|BSH20260315000001" in out.stdout          # enhanced mode (MSH-15 AL): commit ACK
    finally:
        server.stop()
    logged = gateway.message_log.recent(3)
    assert [m.detail.get("duplicate_of") for m in logged] == [first.log_id, first.log_id, None]
    assert gateway.store.search("MedicationRequest", [], 10).total == 1
