"""MLLP listener: the framing rules (pure decoder) and the server over real sockets on 127.0.0.1.

Each server test starts its own MllpServer on port 0 with a handler that records what it was
given and answers a minimal ACK carrying MSA-2 = the message's MSH-10, so every assertion can
say which message an answer belongs to.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from typing import Callable

import hl7
import hl7.client
import pytest

from gateway.ingest.mllp import (
    END_BLOCK,
    HEAD_BYTES,
    START_BLOCK,
    Frame,
    MllpDecoder,
    MllpFrameTooLarge,
    MllpReply,
    MllpServer,
    frame,
)

SOCKET_TIMEOUT = 15.0


# -- messages and answers ---------------------------------------------------------------------


def rde_o11(control_id: str, note: str = "") -> bytes:
    """An RDE^O11 new order as a Lecheng HIS sends it (v2.5, CR-separated, UTF-8)."""
    segments = [
        f"MSH|^~\\&|HIS|BOAO_HOSP|GATEWAY|LECHENG|20260315093000||RDE^O11^RDE_O11|{control_id}|P|2.5|||AL|NE||UNICODE UTF-8",
        "PID|1||HN00012345^^^BOAO_HOSP^MR~460100199001011234^^^CHNMOH^RI||王^小明||19900101|M",
        "ORC|NW|PO-20260315-001|||||||20260315092500",
        "RXE|^^^20260315^^R|J-DRUG-0042^Pembrolizumab 100mg/4ml^LOCAL|200||mg",
    ]
    if note:
        segments.append(f"NTE|1||{note}")
    return ("\r".join(segments) + "\r").encode("utf-8")


def msh10(payload: bytes) -> str:
    """MSH-10 of an ER7 payload (MSH-1 is the separator itself, so field 10 is split index 9)."""
    return payload.split(b"\r", 1)[0].decode("utf-8").split("|")[9]


def ack(control_id: str, code: str = "AA") -> bytes:
    return (
        f"MSH|^~\\&|GATEWAY|LECHENG|HIS|BOAO_HOSP|20260315093001||ACK^O11^ACK|ACK-{control_id}|P|2.5\r"
        f"MSA|{code}|{control_id}\r"
    ).encode("utf-8")


def msa(answer: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK payload."""
    for segment in answer.decode("utf-8").split("\r"):
        if segment.startswith("MSA|"):
            fields = segment.split("|")
            return fields[1], fields[2]
    raise AssertionError(f"no MSA segment in {answer!r}")


class RecordingHandler:
    """Records every payload it is given and answers AA for its MSH-10."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, payload: bytes) -> MllpReply:
        with self._lock:
            self.payloads.append(payload)
        return MllpReply(ack(msh10(payload)))

    @property
    def control_ids(self) -> list[str]:
        with self._lock:
            return [msh10(p) for p in self.payloads]


class Client:
    """A bare socket peer: sends raw bytes or framed messages, reads framed answers."""

    def __init__(self, address: tuple[str, int], sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.create_connection(address, timeout=SOCKET_TIMEOUT)
        self.sock.settimeout(SOCKET_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = MllpDecoder()
        self.frames: list[bytes] = []

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(frame(payload))

    def read(self, count: int = 1) -> list[bytes]:
        while len(self.frames) < count:
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"server closed the connection after {len(self.frames)} of {count} answers")
            self.frames.extend(f.payload for f in self.decoder.feed(data))
        answers, self.frames = self.frames[:count], self.frames[count:]
        return answers

    def request(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.read(1)[0]

    def closed_by_server(self) -> bool:
        """True once the server has closed: recv returns EOF (or a reset) instead of an answer."""
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the server reaches asynchronously (e.g. after a peer disconnects)."""
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


@pytest.fixture
def serve():
    """Start MllpServers on 127.0.0.1:0; all are stopped at the end of the test."""
    servers: list[MllpServer] = []

    def start(handler, **options) -> MllpServer:
        server = MllpServer(handler, "127.0.0.1", 0, **options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def connect():
    """Open Clients to a server (or to a ready socket); all are closed at the end of the test."""
    clients: list[Client] = []

    def open_client(server: MllpServer, sock: socket.socket | None = None) -> Client:
        client = Client(server.address, sock=sock)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


# -- frame() and MllpDecoder (no sockets) ------------------------------------------------------


def test_frame_wraps_payload_in_start_and_end_block():
    assert frame(b"MSH|x\r") == b"\x0bMSH|x\r\x1c\x0d"
    assert START_BLOCK == b"\x0b" and END_BLOCK == b"\x1c\x0d"


def test_decoder_returns_payload_without_framing():
    message = rde_o11("CTRL-1")
    frames = MllpDecoder().feed(frame(message))
    assert [f.payload for f in frames] == [message]
    assert frames[0] == Frame(payload=message, size=len(message), too_large=False, head=message)


def test_decoder_reassembles_a_frame_fed_one_byte_at_a_time():
    message = rde_o11("CTRL-1")
    decoder = MllpDecoder()
    frames: list[Frame] = []
    for byte in frame(message):
        frames.extend(decoder.feed(bytes([byte])))
    assert [f.payload for f in frames] == [message]
    assert not decoder.in_frame


def test_decoder_returns_every_frame_of_one_read_in_order():
    messages = [rde_o11(f"CTRL-{i}") for i in range(5)]
    frames = MllpDecoder().feed(b"".join(frame(m) for m in messages))
    assert [f.payload for f in frames] == messages


def test_decoder_completes_frames_split_at_every_position():
    stream = frame(b"MSH|a\r") + frame(b"MSH|b\r")
    for cut in range(len(stream) + 1):
        decoder = MllpDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [f.payload for f in frames] == [b"MSH|a\r", b"MSH|b\r"], cut


def test_decoder_discards_and_counts_bytes_between_frames():
    garbage = [b"\r\n", b"\x00junk\r", b"\r", b"KEEPALIVE"]
    stream = garbage[0] + frame(b"MSH|a") + garbage[1] + frame(b"MSH|b") + garbage[2] + garbage[3]
    decoder = MllpDecoder()
    assert [f.payload for f in decoder.feed(stream)] == [b"MSH|a", b"MSH|b"]
    assert decoder.discarded_bytes == sum(len(g) for g in garbage)


def test_decoder_survives_a_flood_of_start_bytes():
    decoder = MllpDecoder()
    frames = decoder.feed(START_BLOCK * 100_000 + b"MSH|a" + END_BLOCK)
    assert [f.payload for f in frames] == [b"MSH|a"]


def test_decoder_restarts_the_frame_at_a_new_start_byte():
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bMSH|abandoned half") == []
    frames = decoder.feed(b"\x0bMSH|resent" + END_BLOCK)
    assert [f.payload for f in frames] == [b"MSH|resent"]
    assert decoder.discarded_bytes == len(b"MSH|abandoned half")


def test_decoder_keeps_end_block_byte_without_carriage_return_as_data():
    frames = MllpDecoder().feed(b"\x0bMSH|a\x1cb\x1c\x1c\x0d")
    assert [f.payload for f in frames] == [b"MSH|a\x1cb\x1c"]


def test_decoder_ends_frame_when_end_block_and_cr_arrive_in_separate_reads():
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bMSH|a\x1c") == []
    assert [f.payload for f in decoder.feed(b"\x0d")] == [b"MSH|a"]


def test_decoder_keeps_end_block_byte_at_end_of_read_as_data_when_no_cr_follows():
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bMSH|a\x1c") == []
    assert [f.payload for f in decoder.feed(b"b\x1c\x0d")] == [b"MSH|a\x1cb"]


def test_decoder_reports_an_empty_frame_as_empty_payload():
    assert [f.payload for f in MllpDecoder().feed(b"\x0b\x1c\x0d")] == [b""]


def test_decoder_holds_a_partial_frame_until_it_completes():
    decoder = MllpDecoder()
    assert decoder.feed(b"\x0bMSH|partial") == []
    assert decoder.in_frame
    assert decoder.pending_bytes == len(b"MSH|partial")


def test_decoder_accepts_a_frame_of_exactly_max_bytes():
    frames = MllpDecoder(max_bytes=10).feed(frame(b"0123456789"))
    assert frames[0].payload == b"0123456789" and not frames[0].too_large


def test_decoder_reports_an_oversized_frame_once_with_its_head_then_reads_on():
    big = rde_o11("BIG-1", note="x" * 20_000)
    decoder = MllpDecoder(max_bytes=1_000)
    frames = decoder.feed(frame(big) + frame(b"MSH|next"))
    assert len(frames) == 2
    report, following = frames
    assert report.too_large and report.payload == b""
    assert report.size == len(big)
    assert report.head == big[:HEAD_BYTES]
    assert msh10(report.head) == "BIG-1"
    assert following.payload == b"MSH|next" and not following.too_large


def test_decoder_head_of_oversized_frame_fills_across_small_reads():
    big = rde_o11("BIG-2", note="y" * 10_000)
    decoder = MllpDecoder(max_bytes=100)
    stream = frame(big)
    frames: list[Frame] = []
    for i in range(0, len(stream), 7):
        frames.extend(decoder.feed(stream[i:i + 7]))
    assert len(frames) == 1 and frames[0].too_large
    assert frames[0].head == big[:HEAD_BYTES]
    assert frames[0].size == len(big)


def test_decoder_does_not_buffer_an_oversized_frame():
    decoder = MllpDecoder(max_bytes=1024 * 1024)
    decoder.feed(START_BLOCK)
    chunk = b"z" * 65536
    for _ in range(64):  # 4 MiB, four times the limit
        assert decoder.feed(chunk) == []
        assert decoder.buffered_bytes <= 1024 * 1024
    assert decoder.buffered_bytes == 0
    frames = decoder.feed(END_BLOCK)
    assert frames[0].too_large and frames[0].size == 64 * 65536


def test_decoder_drops_an_oversized_frame_abandoned_by_a_new_start_byte():
    decoder = MllpDecoder(max_bytes=10)
    frames = decoder.feed(b"\x0b" + b"x" * 50 + b"\x0bMSH|ok" + END_BLOCK)
    assert [(f.payload, f.too_large) for f in frames] == [(b"MSH|ok", False)]


def test_too_large_report_can_be_raised_as_an_exception():
    report = MllpDecoder(max_bytes=4).feed(frame(b"MSH|toolong"))[0]
    with pytest.raises(MllpFrameTooLarge) as raised:
        report.raise_if_too_large(4)
    assert raised.value.size == 11 and raised.value.head == b"MSH|toolong"


# -- the server, with clients that are not ours ------------------------------------------------


def test_python_hl7_mllp_client_gets_its_ack(serve):
    handler = RecordingHandler()
    server = serve(handler)
    host, port = server.address
    with hl7.client.MLLPClient(host, port) as client:
        answer = client.send_message(rde_o11("HL7PY-1").decode("utf-8"))
    assert answer.startswith(START_BLOCK) and answer.endswith(END_BLOCK)
    parsed = hl7.parse(answer[1:-2].decode("utf-8"))
    assert str(parsed.segment("MSA")[1]) == "AA"
    assert str(parsed.segment("MSA")[2]) == "HL7PY-1"
    assert handler.payloads == [rde_o11("HL7PY-1")]


def test_python_hl7_mllp_client_sends_several_messages_on_one_connection(serve):
    handler = RecordingHandler()
    server = serve(handler)
    with hl7.client.MLLPClient(*server.address) as client:
        answers = [client.send_message(rde_o11(f"HL7PY-{i}")) for i in range(5)]
    assert [msa(a[1:-2]) for a in answers] == [("AA", f"HL7PY-{i}") for i in range(5)]


def test_address_reports_the_port_picked_for_port_zero(serve):
    server = serve(RecordingHandler())
    host, port = server.address
    assert host == "127.0.0.1" and port > 0


# -- ordering and concurrency ------------------------------------------------------------------


def test_messages_on_one_connection_are_answered_in_order(serve, connect):
    handler = RecordingHandler()
    client = connect(serve(handler))
    answers = [client.request(rde_o11(f"SEQ-{i}")) for i in range(10)]
    assert [msa(a) for a in answers] == [("AA", f"SEQ-{i}") for i in range(10)]
    assert handler.control_ids == [f"SEQ-{i}" for i in range(10)]


def test_concurrent_connections_each_get_their_own_answers_in_order(serve):
    handler = RecordingHandler()
    server = serve(handler)
    connections, per_connection = 20, 50
    results: dict[int, list[tuple[str, str]]] = {}
    errors: list[BaseException] = []

    def sender(n: int) -> None:
        client = Client(server.address)
        try:
            results[n] = [msa(client.request(rde_o11(f"C{n:02d}-{i:03d}"))) for i in range(per_connection)]
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for n in range(connections):
        assert results[n] == [("AA", f"C{n:02d}-{i:03d}") for i in range(per_connection)]
    handled = handler.control_ids
    assert len(handled) == connections * per_connection
    assert sorted(handled) == sorted(f"C{n:02d}-{i:03d}" for n in range(connections) for i in range(per_connection))
    for n in range(connections):  # each connection's messages reached the handler in send order
        assert [c for c in handled if c.startswith(f"C{n:02d}-")] == [f"C{n:02d}-{i:03d}" for i in range(per_connection)]


def test_pipelined_burst_of_1000_messages_is_handled_and_answered_once_each_in_order(serve, connect):
    handler = RecordingHandler()
    client = connect(serve(handler))
    ids = [f"BURST-{i:04d}" for i in range(1000)]
    stream = b"".join(frame(rde_o11(c)) for c in ids)
    # Write everything without waiting for answers; a writer thread keeps the test from
    # deadlocking on full socket buffers while the answers are read here.
    writer = threading.Thread(target=client.send_raw, args=(stream,))
    writer.start()
    answers = client.read(1000)
    writer.join()
    assert [msa(a) for a in answers] == [("AA", c) for c in ids]
    assert handler.control_ids == ids


# -- framing on the wire -----------------------------------------------------------------------


def test_message_written_one_byte_per_tcp_write_is_handled_once(serve, connect):
    handler = RecordingHandler()
    client = connect(serve(handler))
    for byte in frame(rde_o11("BYTEWISE-1")):
        client.send_raw(bytes([byte]))
    assert msa(client.read(1)[0]) == ("AA", "BYTEWISE-1")
    assert handler.payloads == [rde_o11("BYTEWISE-1")]


def test_several_messages_in_one_write_are_all_answered_in_order(serve, connect):
    handler = RecordingHandler()
    client = connect(serve(handler))
    client.send_raw(b"".join(frame(rde_o11(f"ONEWRITE-{i}")) for i in range(3)))
    assert [msa(a) for a in client.read(3)] == [("AA", f"ONEWRITE-{i}") for i in range(3)]


def test_bytes_between_frames_are_ignored(serve, connect):
    handler = RecordingHandler()
    client = connect(serve(handler))
    client.send_raw(b"\r\n" + frame(rde_o11("G-1")) + b"\r\nnoise\x00\r" + frame(rde_o11("G-2")))
    assert [msa(a) for a in client.read(2)] == [("AA", "G-1"), ("AA", "G-2")]
    assert handler.control_ids == ["G-1", "G-2"]


def test_flood_of_start_bytes_then_a_message_gets_one_answer(serve, connect):
    handler = RecordingHandler()
    client = connect(serve(handler))
    client.send_raw(START_BLOCK * 200_000 + rde_o11("FLOOD-1") + END_BLOCK)
    assert msa(client.read(1)[0]) == ("AA", "FLOOD-1")
    assert handler.control_ids == ["FLOOD-1"]


def test_peer_hanging_up_mid_frame_hands_nothing_over_and_server_keeps_serving(serve, connect):
    handler = RecordingHandler()
    server = serve(handler)
    quitter = connect(server)
    quitter.send_raw(START_BLOCK + rde_o11("HALF-1")[:60])
    quitter.close()
    wait_until(lambda: server.active_connections == 0, "the half-sent connection is cleaned up")
    assert handler.payloads == []
    assert msa(connect(server).request(rde_o11("AFTER-1"))) == ("AA", "AFTER-1")
    assert handler.control_ids == ["AFTER-1"]


# -- oversized messages ------------------------------------------------------------------------


def test_oversized_message_is_refused_with_an_ar_and_the_connection_stays_usable(serve, connect):
    handler = RecordingHandler()
    heads: list[bytes] = []

    def too_large(head: bytes) -> bytes:
        heads.append(head)
        return ack(msh10(head), "AR")

    client = connect(serve(handler, max_bytes=2_000, on_too_large=too_large))
    big = rde_o11("HUGE-1", note="report text " * 2_000)
    assert msa(client.request(big)) == ("AR", "HUGE-1")
    assert heads == [big[:HEAD_BYTES]]
    assert msa(client.request(rde_o11("SMALL-1"))) == ("AA", "SMALL-1")
    assert handler.control_ids == ["SMALL-1"]


def test_oversized_message_without_a_refusal_handler_closes_the_connection(serve, connect):
    handler = RecordingHandler()
    server = serve(handler, max_bytes=2_000)
    client = connect(server)
    client.send(rde_o11("HUGE-2", note="z" * 5_000))
    assert client.closed_by_server()
    assert handler.payloads == []
    assert msa(connect(server).request(rde_o11("NEXT-2"))) == ("AA", "NEXT-2")


# -- idle peers, acknowledgement modes, failures -----------------------------------------------


def test_peer_that_says_nothing_is_closed_after_idle_timeout(serve, connect):
    server = serve(RecordingHandler(), idle_timeout=0.2)
    silent = connect(server)
    assert silent.closed_by_server()
    wait_until(lambda: server.active_connections == 0, "the idle connection is cleaned up")


def test_enhanced_mode_sends_the_application_ack_after_the_accept_ack(serve, connect):
    def enhanced(payload: bytes) -> MllpReply:
        control_id = msh10(payload)
        return MllpReply(ack(control_id, "CA"), later=lambda: ack(control_id, "AA"))

    client = connect(serve(enhanced))
    client.send(rde_o11("ENH-1"))
    client.send(rde_o11("ENH-2"))
    assert [msa(a) for a in client.read(4)] == [("CA", "ENH-1"), ("AA", "ENH-1"), ("CA", "ENH-2"), ("AA", "ENH-2")]


def test_reply_without_ack_sends_nothing(serve, connect):
    handler = RecordingHandler()

    def never_for_ne(payload: bytes) -> MllpReply:
        reply = handler(payload)
        return MllpReply(None) if msh10(payload).startswith("NE-") else reply

    client = connect(serve(never_for_ne))
    client.send_raw(frame(rde_o11("NE-1")) + frame(rde_o11("AL-2")))
    # Answers come in message order, so the first answer on the wire being AL-2's proves NE-1 got none.
    assert msa(client.read(1)[0]) == ("AA", "AL-2")
    assert handler.control_ids == ["NE-1", "AL-2"]


def test_handler_exception_closes_only_that_connection(serve, connect):
    handler = RecordingHandler()

    def fragile(payload: bytes) -> MllpReply:
        if msh10(payload) == "BOOM":
            raise RuntimeError("handler bug")
        return handler(payload)

    server = serve(fragile)
    bystander = connect(server)
    assert msa(bystander.request(rde_o11("BY-1"))) == ("AA", "BY-1")
    victim = connect(server)
    victim.send(rde_o11("BOOM"))
    assert victim.closed_by_server()
    assert msa(bystander.request(rde_o11("BY-2"))) == ("AA", "BY-2")
    assert msa(connect(server).request(rde_o11("NEW-1"))) == ("AA", "NEW-1")


def test_on_connect_refusal_closes_the_connection_before_any_message(serve, connect):
    handler = RecordingHandler()
    peers: list[tuple] = []

    def allow_none(peer: tuple) -> bool:
        peers.append(peer)
        return False

    client = connect(serve(handler, on_connect=allow_none))
    client.send_raw(frame(rde_o11("REFUSED-1")))
    assert client.closed_by_server()
    assert handler.payloads == []
    assert peers == [client.sock.getsockname()]


def test_connections_over_max_connections_are_closed(serve, connect):
    server = serve(RecordingHandler(), max_connections=1)
    first = connect(server)
    assert msa(first.request(rde_o11("FIRST-1"))) == ("AA", "FIRST-1")
    second = connect(server)
    assert second.closed_by_server()
    assert msa(first.request(rde_o11("FIRST-2"))) == ("AA", "FIRST-2")
    first.close()
    wait_until(lambda: server.active_connections == 0, "the first connection is cleaned up")
    assert msa(connect(server).request(rde_o11("THIRD-1"))) == ("AA", "THIRD-1")


def test_stop_closes_open_connections_and_the_listening_port(serve, connect):
    server = serve(RecordingHandler())
    client = connect(server)
    assert msa(client.request(rde_o11("STOP-1"))) == ("AA", "STOP-1")
    address = server.address
    server.stop()
    assert client.closed_by_server()
    assert server.active_connections == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=SOCKET_TIMEOUT)


def test_serve_forever_returns_after_stop():
    server = MllpServer(RecordingHandler(), "127.0.0.1", 0)
    runner = threading.Thread(target=server.serve_forever)
    runner.start()

    def listening() -> bool:
        try:
            return server.address[1] > 0
        except RuntimeError:
            return False

    wait_until(listening, "serve_forever is listening")
    server.stop()
    runner.join(SOCKET_TIMEOUT)
    assert not runner.is_alive()


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, as (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mllp-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_tls_round_trip(serve, connect, tls_certificate):
    cert_path, key_path = tls_certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    handler = RecordingHandler()
    server = serve(handler, ssl_context=server_context)

    client_context = ssl.create_default_context(cafile=cert_path)
    raw = socket.create_connection(server.address, timeout=SOCKET_TIMEOUT)
    client = connect(server, sock=client_context.wrap_socket(raw, server_hostname="127.0.0.1"))
    answers = [client.request(rde_o11(f"TLS-{i}")) for i in range(3)]
    assert [msa(a) for a in answers] == [("AA", f"TLS-{i}") for i in range(3)]
    assert handler.control_ids == ["TLS-0", "TLS-1", "TLS-2"]
    client.close()


def test_tls_server_drops_a_plaintext_peer_and_keeps_serving(serve, connect, tls_certificate):
    cert_path, key_path = tls_certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    handler = RecordingHandler()
    server = serve(handler, ssl_context=server_context)

    plaintext = connect(server)
    plaintext.send(rde_o11("PLAIN-1"))
    assert plaintext.closed_by_server()
    assert handler.payloads == []

    client_context = ssl.create_default_context(cafile=cert_path)
    raw = socket.create_connection(server.address, timeout=SOCKET_TIMEOUT)
    client = connect(server, sock=client_context.wrap_socket(raw, server_hostname="127.0.0.1"))
    assert msa(client.request(rde_o11("TLS-OK"))) == ("AA", "TLS-OK")

