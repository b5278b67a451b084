"""Shared pieces of the ownership tests: two hospitals, an exact picture of what one of them owns,
and the same HL7 message sent over HTTP or MLLP by a bound client."""
from __future__ import annotations

import socket

import orjson
from sqlalchemy import select

from gateway.ingest.mllp import frame
from gateway.store import schema
from tests.conftest import post_hl7

BOAO = "BOAO_SUPER_HOSPITAL"                 # hospital A: the samples' sender
HMU = "HAINAN_MED_UNIV_HOSP1"                # hospital B
PHARMACY = "HAIKOU_PHARMACY_017"             # the RDS sample's sender


def sent_by_hmu(raw: bytes, *replacements: tuple[bytes, bytes]) -> bytes:
    """A sample with MSH-3/4 changed to hospital B's, plus any further replacements."""
    msh, rest = raw.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[2:4] = [b"HMU_HIS", HMU.encode()]
    raw = b"|".join(fields) + b"\r" + rest
    for old, new in replacements:
        assert old in raw, old
        raw = raw.replace(old, new)
    return raw


def owned_by(gateway, organization: str) -> dict:
    """Every version of every resource ``organization`` owns, exactly as stored: (type, id) ->
    [(version, deleted, content)]. Compared before and after an attack."""
    r, v = schema.resources, schema.resource_versions
    with gateway.store.engine.connect() as conn:
        rows = conn.execute(select(v.c.res_type, v.c.res_id, v.c.version_id, v.c.deleted, schema.version_content())
                            .join(r, (r.c.res_type == v.c.res_type) & (r.c.res_id == v.c.res_id))
                            .where(r.c.owner == organization)
                            .order_by(v.c.res_type, v.c.res_id, v.c.version_id)).all()
    picture: dict = {}
    for row in rows:
        picture.setdefault((row.res_type, row.res_id), []).append(
            (row.version_id, bool(row.deleted), orjson.loads(row.content)))
    return picture


def owner_of(gateway, resource_type: str, resource_id: str) -> str | None:
    r = schema.resources
    with gateway.store.engine.connect() as conn:
        return conn.execute(select(r.c.owner).where(r.c.res_type == resource_type, r.c.res_id == resource_id)).scalar()


def mllp_send(address, raw: bytes) -> bytes:
    """One message in original mode (MSH-15/16 emptied: one application ACK)."""
    msh, rest = raw.split(b"\r", 1)
    fields = msh.split(b"|")
    fields[14:16] = [b"", b""]
    raw = b"|".join(fields) + b"\r" + rest
    data = b""
    with socket.create_connection(address, timeout=20) as sock:
        sock.sendall(frame(raw))
        while not data.endswith(b"\x1c\r"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def segments_of(ack: bytes) -> list[list[str]]:
    text = ack.decode("utf-8", "replace").strip("\x0b\x1c\r")
    return [line.split("|") for line in text.split("\r") if line]


class Sender:
    """Send HL7 as one organization's client, over HTTP (Flask test client) or MLLP (a loopback
    listener bound to that client by source address)."""

    def __init__(self, transport: str, http_client, mllp_address=None):
        self.transport = transport
        self.http_client = http_client
        self.mllp_address = mllp_address

    def send(self, raw: bytes) -> list[list[str]]:
        if self.transport == "http":
            _response, segments = post_hl7(self.http_client, raw)
            return segments
        return segments_of(mllp_send(self.mllp_address, raw))
