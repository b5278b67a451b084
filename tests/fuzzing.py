"""Seeded mutations of every sample, and the checks every answer must pass: shared by the fuzz test
(tests/ingest/test_fuzz.py, a few thousand inputs per run) and ``bench/fuzz.py`` (100,000).

A :class:`Mutant` is one input: which sample it came from, which mutations made it, the bytes, and
where it goes (``/hl7v2``, ``/ingest/<mapping>``, or MLLP). Mutations are what careless senders and
broken engines produce: byte flips, truncation, a segment (or line) duplicated, segments reordered,
odd encoding characters in MSH-2 and broken escapes, a wrong charset (declared in MSH-18, or the
bytes re-encoded), huge fields, control bytes. The same seed gives the same inputs, byte for byte.

An answer is well-formed when it is an HL7 ACK (MSH first, an MSA with a known code and the
sender's MSA-2 when the MSH was readable) for HL7, or a FHIR Bundle / OperationOutcome with an
expected status for a document; it arrives within :data:`ANSWER_SECONDS`; and the message log has a
row holding exactly the bytes that were sent (its first ``MAX_MESSAGE_BYTES`` for a document).
"""
from __future__ import annotations

import hashlib
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

DATA = Path(__file__).resolve().parent / "data"
ANSWER_SECONDS = 5.0
HL7_SAMPLES = sorted((DATA / "samples").glob("*.hl7")) + sorted((DATA / "external").glob("*.hl7"))
DOCUMENT_SAMPLES = {path: path.stem for path in sorted((DATA / "samples").glob("*"))
                    if path.suffix in (".xml", ".csv", ".json")}     # each document is named after its mapping
ACK_CODES = {b"AA", b"AE", b"AR", b"CA", b"CE", b"CR"}
DOCUMENT_STATUSES = {200, 400, 404, 413, 415, 422}

_ODD_ENCODING = ["^~\\&", "^~\\", "^~", "^", "", "^^\\&", "|~\\&", "^~\\&#", "\x00~\\&", "乐~\\&", "^~\\&\\&\\&"]
_ESCAPES = ["\\X0D\\", "\\X1C0D\\", "\\.sp 99999999\\", "\\.br\\", "\\E\\", "\\", "\\X\\", "\\Xzz\\", "\\H\\\\N\\",
            "\\F\\\\S\\\\T\\\\R\\", "\\C2842\\", "\\M\\", "\\Z99\\"]
_CHARSETS = ["UNICODE UTF-8", "8859/1", "GB 18030-2000", "ASCII", "UNICODE UTF-16", "BOGUS", "UTF-8", "", "ISO IR87",
             "GB18030", "UNICODE"]
_CODECS = ["gb18030", "latin-1", "utf-16", "utf-16-le", "shift_jis", "big5", "cp1252"]


@dataclass
class Mutant:
    sample: str
    mutations: list[str]
    data: bytes
    path: str                   # "/hl7v2" or "/ingest/<mapping>"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def label(self) -> str:
        return f"{self.sample} <- {'+'.join(self.mutations)} ({len(self.data)} bytes)"


class Mutator:
    """``next(kind)``: the next input from the seeded stream, over HL7 samples ('hl7'), documents ('document')
    or both; ``huge`` bounds the size of a huge field (the test keeps it small to stay fast)."""

    def __init__(self, seed: int, huge: int = 200_000):
        self.random = random.Random(seed)
        self.huge = huge
        self.hl7 = [(p.name, _cr(p.read_bytes())) for p in HL7_SAMPLES]
        self.documents = [(p.name, p.read_bytes(), mapping) for p, mapping in DOCUMENT_SAMPLES.items()]

    def hl7_mutant(self, original_mode: bool = False) -> Mutant:
        name, data = self.random.choice(self.hl7)
        if original_mode:
            data = _original_mode(data)
        return self._mutate(name, data, "/hl7v2", _HL7_MUTATIONS)

    def document_mutant(self) -> Mutant:
        name, data, mapping = self.random.choice(self.documents)
        return self._mutate(name, data, f"/ingest/{mapping}", _DOCUMENT_MUTATIONS)

    def _mutate(self, name: str, data: bytes, path: str, mutations) -> Mutant:
        applied = []
        for _ in range(self.random.choice((1, 1, 1, 2, 2, 3))):
            mutation = self.random.choice(mutations)
            data = mutation(self, data)
            applied.append(mutation.__name__)
        return Mutant(name, applied, data, path)

    # ------------------------------------------------------------------ mutations (bytes -> bytes)

    def byte_flips(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.random.randint(1, 8)):
            if out:
                out[self.random.randrange(len(out))] ^= self.random.randint(1, 255)
        return bytes(out)

    def truncation(self, data: bytes) -> bytes:
        return data[:self.random.randrange(len(data) + 1)]

    def segment_duplication(self, data: bytes) -> bytes:
        lines, sep = _lines(data)
        i = self.random.randrange(len(lines))
        lines.insert(i, lines[i])
        return sep.join(lines)

    def segment_reordering(self, data: bytes) -> bytes:
        lines, sep = _lines(data)
        if len(lines) > 2:
            i, j = self.random.sample(range(len(lines)), 2)
            lines[i], lines[j] = lines[j], lines[i]
        return sep.join(lines)

    def odd_encoding_characters(self, data: bytes) -> bytes:
        if data.startswith(b"MSH") and len(data) > 8 and self.random.random() < 0.5:
            end = data.find(b"|", 4)
            end = end if end > 0 else 8
            return data[:4] + self.random.choice(_ODD_ENCODING).encode("utf-8") + data[end:]
        at = self.random.randrange(len(data) + 1)
        return data[:at] + self.random.choice(_ESCAPES).encode("utf-8") + data[at:]

    def wrong_charset(self, data: bytes) -> bytes:
        if data.startswith(b"MSH") and self.random.random() < 0.5:
            first, _, rest = data.partition(b"\r")
            fields = first.split(b"|")
            while len(fields) < 18:
                fields.append(b"")
            fields[17] = self.random.choice(_CHARSETS).encode("ascii")
            return b"|".join(fields) + b"\r" + rest
        try:
            return data.decode("utf-8").encode(self.random.choice(_CODECS), "replace")
        except UnicodeDecodeError:
            return data.decode("gb18030", "replace").encode("utf-8")

    def huge_field(self, data: bytes) -> bytes:
        lines, sep = _lines(data)
        i = self.random.randrange(len(lines))
        size = self.random.randint(1_000, self.huge)
        filler = self.random.choice([b"A", b"\xe4\xb9\x90", b"^", b"~", b"|", b"\\.br\\", b"9"])
        lines[i] = lines[i] + b"|" + (filler * (size // len(filler) + 1))[:size]
        return sep.join(lines)

    def control_bytes(self, data: bytes) -> bytes:
        at = self.random.randrange(len(data) + 1)
        return data[:at] + bytes(self.random.choice([0x00, 0x0B, 0x1C, 0x0D, 0x0A, 0x7F, 0x1B, 0xFF, 0xFE])
                                 for _ in range(self.random.randint(1, 4))) + data[at:]

    def empty(self, data: bytes) -> bytes:
        return self.random.choice([b"", b"\r", b"   ", b"MSH", b"MSH|", b"\xef\xbb\xbf"])


_HL7_MUTATIONS = [Mutator.byte_flips, Mutator.byte_flips, Mutator.truncation, Mutator.segment_duplication,
                  Mutator.segment_reordering, Mutator.odd_encoding_characters, Mutator.odd_encoding_characters,
                  Mutator.wrong_charset, Mutator.wrong_charset, Mutator.huge_field, Mutator.control_bytes,
                  Mutator.empty]
_DOCUMENT_MUTATIONS = [Mutator.byte_flips, Mutator.byte_flips, Mutator.truncation, Mutator.segment_duplication,
                       Mutator.segment_reordering, Mutator.odd_encoding_characters, Mutator.wrong_charset,
                       Mutator.huge_field, Mutator.control_bytes, Mutator.empty]


def _cr(data: bytes) -> bytes:
    """External samples are stored with LF terminators, as upstream keeps them; senders use CR."""
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def _lines(data: bytes) -> tuple[list[bytes], bytes]:
    sep = b"\r" if b"\r" in data else b"\n"
    return data.split(sep), sep


def _original_mode(data: bytes) -> bytes:
    """MSH-15/16 emptied: one application ACK per message, which MLLP waits for."""
    first, _, rest = data.partition(b"\r")
    fields = first.split(b"|")
    if len(fields) > 15:
        fields[14:16] = [b"", b""]
    return b"|".join(fields) + b"\r" + rest


def for_mllp(data: bytes) -> bytes:
    """MLLP Release 2 forbids the framing bytes in a payload (0x0B restarts a frame, 0x1C 0x0D ends it),
    so a sender cannot put them there; framing abuse has its own tests (tests/ingest/test_mllp.py)."""
    return data.replace(b"\x0b", b"?").replace(b"\x1c", b"?")


# ---------------------------------------------------------------------------- checking answers

@dataclass
class Verdict:
    """What the run found: inputs sent, the problems (each names its input), the slowest answer."""
    sent: int = 0
    problems: list[str] = field(default_factory=list)
    slowest: float = 0.0
    log_ids: dict[int, str] = field(default_factory=dict)        # log id -> sha256 expected in its row
    codes: dict[str, int] = field(default_factory=dict)

    def count(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1


def ack_problem(ack: bytes) -> str | None:
    """None when ``ack`` is a well-formed HL7 ACK, else why not."""
    if not ack.startswith(b"MSH") or len(ack) < 8:
        return f"not an HL7 ACK: {ack[:80]!r}"
    separator = ack[3:4]
    segments = [s for s in ack.split(b"\r") if s]
    msa = [s for s in segments if s.startswith(b"MSA" + separator)]
    if len(msa) != 1:
        return f"{len(msa)} MSA segments"
    code = msa[0].split(separator)[1] if len(msa[0].split(separator)) > 1 else b""
    if code not in ACK_CODES:
        return f"MSA-1 {code!r} is not an acknowledgement code"
    if any(0x0B in s or 0x1C in s for s in segments):
        return "an MLLP framing byte inside the ACK"
    return None


def document_problem(status: int, body: bytes) -> str | None:
    if status not in DOCUMENT_STATUSES:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP {status} with a body that is not JSON: {body[:200]!r}"
    expected = "Bundle" if status == 200 else "OperationOutcome"
    if answer.get("resourceType") != expected:
        return f"HTTP {status} answered a {answer.get('resourceType')}, not a {expected}"
    return None


def post(conn_factory, mutant: Mutant, headers: dict, verdict: Verdict, limit: int) -> None:
    """Send one input over HTTP (``conn_factory()`` -> http.client connection) and judge the answer."""
    started = time.perf_counter()
    try:
        conn = conn_factory()
        conn.request("POST", mutant.path, body=mutant.data, headers=headers)
        response = conn.getresponse()
        body = response.read()
        conn.close()
    except Exception as exc:  # a dropped connection is a finding, not a crash of the run
        verdict.problems.append(f"{mutant.label()}: no answer ({type(exc).__name__}: {exc})")
        return
    elapsed = time.perf_counter() - started
    verdict.sent += 1
    verdict.slowest = max(verdict.slowest, elapsed)
    if elapsed > ANSWER_SECONDS:
        verdict.problems.append(f"{mutant.label()}: answered after {elapsed:.1f} s")
    if mutant.path == "/hl7v2":
        problem = None if response.status == 200 else f"HTTP {response.status}: {body[:200]!r}"
        problem = problem or ack_problem(body)
        verdict.count(response.getheader("X-Ack-Code") or f"HTTP {response.status}")
    else:
        problem = document_problem(response.status, body)
        verdict.count(f"HTTP {response.status}")
    if problem:
        verdict.problems.append(f"{mutant.label()}: {problem}")
    log_id = response.getheader("X-Message-Log-Id")
    if log_id is None:
        verdict.problems.append(f"{mutant.label()}: no X-Message-Log-Id (HTTP {response.status})")
    else:
        kept = mutant.data if mutant.path == "/hl7v2" else mutant.data[:limit]
        verdict.log_ids[int(log_id)] = hashlib.sha256(kept).hexdigest()


def send_mllp(sock: socket.socket, mutant: Mutant, verdict: Verdict) -> None:
    """One frame on an open MLLP connection; its one ACK must come back within ANSWER_SECONDS."""
    from gateway.ingest.mllp import MllpDecoder, frame
    started = time.perf_counter()
    sock.settimeout(ANSWER_SECONDS)
    decoder = MllpDecoder()
    frames = []
    try:
        sock.sendall(frame(mutant.data))
        while not frames:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the listener closed the connection")
            frames = decoder.feed(chunk)
    except (OSError, ConnectionError) as exc:
        verdict.problems.append(f"{mutant.label()} over MLLP: no answer ({type(exc).__name__}: {exc})")
        raise
    elapsed = time.perf_counter() - started
    verdict.sent += 1
    verdict.slowest = max(verdict.slowest, elapsed)
    ack = frames[0].payload
    problem = ack_problem(ack)
    if problem:
        verdict.problems.append(f"{mutant.label()} over MLLP: {problem}")
    else:
        verdict.count(ack.split(b"\r")[1][4:6].decode("ascii", "replace"))


def missing_log_rows(engine, verdict: Verdict) -> list[str]:
    """Log ids the answers named that have no row, or a row whose bytes are not what was sent."""
    import hashlib

    from sqlalchemy import select

    from gateway.store.schema import message_log
    found: dict[int, str] = {}
    ids = list(verdict.log_ids)
    with engine.connect() as conn:       # the raw bytes themselves (content_sha256 ignores framing)
        for start in range(0, len(ids), 500):
            rows = conn.execute(select(message_log.c.id, message_log.c.raw)
                                .where(message_log.c.id.in_(ids[start:start + 500]))).all()
            found.update({row.id: hashlib.sha256(row.raw).hexdigest() for row in rows})
    return [f"log id {i}: " + ("no row" if i not in found else "the row holds other bytes")
            for i, sha in verdict.log_ids.items() if found.get(i) != sha]


def logged_hashes(engine, transport: str) -> dict[str, int]:
    """sha256 -> number of rows, for every message the log holds from ``transport``."""
    import hashlib
    from collections import Counter

    from sqlalchemy import select

    from gateway.store.schema import message_log
    with engine.connect() as conn:       # the raw bytes themselves (content_sha256 ignores framing)
        rows = conn.execute(select(message_log.c.raw).where(message_log.c.transport == transport)).all()
    return dict(Counter(hashlib.sha256(row.raw).hexdigest() for row in rows))
