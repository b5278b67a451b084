"""The MLLP listener wired to the ingest pipeline: the same path as ``POST /hl7v2``.

Each frame is logged raw, processed and answered on its connection, in order (original
acknowledgment mode). A frame over the size limit is refused with an AR whose MSA-2 is the
sender's MSH-10, read from the head of the frame; the head is kept in the message log.
"""
from __future__ import annotations

from gateway.hl7v2 import AckCode, Hl7Error, build_ack
from gateway.hl7v2.message import partial_msh_from_text
from gateway.ingest.mllp import MllpReply, MllpServer
from gateway.ingest.pipeline import Hl7Pipeline


def make_mllp_handler(pipeline: Hl7Pipeline):
    def handle(payload: bytes) -> MllpReply:
        return MllpReply(ack=pipeline.ingest(payload, transport="mllp").ack)
    return handle


def make_too_large_handler(pipeline: Hl7Pipeline, limit: int):
    def refuse(head: bytes) -> bytes:
        log_id = pipeline.log.receive(head, transport="mllp")
        partial = partial_msh_from_text(head.decode("latin-1"))
        error = Hl7Error(text=f"the message is larger than this gateway accepts ({limit} bytes); only its first "
                         f"{len(head)} bytes are kept (log id {log_id})", segment="MSH", sequence=1, code="207")
        ack = build_ack(partial, AckCode.AR, [error],
                        sending_application=pipeline.config["ACK_SENDING_APPLICATION"],
                        sending_facility=pipeline.config["ACK_SENDING_FACILITY"]).encode("utf-8")
        pipeline.log.finish(log_id, "rejected", ack, {"errors": [error.text], "truncated": True})
        return ack
    return refuse


def mllp_server(pipeline: Hl7Pipeline, host: str, port: int) -> MllpServer:
    limit = int(pipeline.config["MAX_MESSAGE_BYTES"])
    return MllpServer(make_mllp_handler(pipeline), host, port, max_bytes=limit,
                      on_too_large=make_too_large_handler(pipeline, limit))
