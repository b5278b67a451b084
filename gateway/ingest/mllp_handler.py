"""The MLLP listener wired to the ingest pipeline: the same path as ``POST /hl7v2``.

Each frame is logged raw, processed and answered on its connection, in order.

* **Original mode** (MSH-15 and MSH-16 empty): one application ACK (AA/AE/AR). Also when either
  holds a value outside HL7 table 0155 (``XX``): the ACK then carries a warning naming the field.
* **Enhanced mode** (either valued): an accept ACK (CA/CE/CR) when MSH-15 asks for it, then the
  application ACK when MSH-16 asks for it. AL = always, NE = never, ER = only on error,
  SU = only on success. CA means the message is in the log (safe to stop resending); CR that it
  will not be taken (not HL7, unsupported type or processing id); CE that it is kept but the
  gateway failed on it. Both ACKs are built from what the message log keeps, so a resent message
  gets byte-identical answers.

A frame over the size limit is refused with an AR whose MSA-2 is the sender's MSH-10, read from
the head of the frame; the head is kept in the message log.
"""
from __future__ import annotations

from gateway.hl7v2 import AckCode, Hl7Error, build_ack
from gateway.hl7v2.message import partial_msh_from_text
from gateway.ingest.mllp import MllpReply, MllpServer
from gateway.ingest.pipeline import Hl7Pipeline


def _wanted(condition: str, success: bool) -> bool:
    """HL7 table 0155: AL always, NE never, ER only on error, SU only on success ('' = AL)."""
    condition = (condition or "AL").upper()
    return condition == "AL" or (condition == "ER" and not success) or (condition == "SU" and success)


def _msh7(ack: bytes) -> str | None:
    first = ack.split(b"\r", 1)[0].decode("utf-8", "replace").split("|")
    return first[6] if len(first) > 6 else None


def make_mllp_handler(pipeline: Hl7Pipeline, binding=None):
    """``binding`` (gateway.security.mllp_binding): each message held to its connection's client."""
    def handle(payload: bytes) -> MllpReply:
        if binding is None:
            result = pipeline.ingest(payload, transport="mllp")
        else:
            try:
                result = binding.ingest(pipeline, payload)
            except binding.Refused as refused:      # the client was revoked: AR (logged, audited), then close
                return MllpReply(ack=refused.ack, close=True)
        message = result.message
        if message is None or not (message.accept_ack_type or message.application_ack_type) \
                or message.ack_condition_problems:       # original mode; the ACK carries the warning
            return MllpReply(ack=result.ack)
        accepted = result.status != "rejected"
        commit = AckCode.AA if accepted and result.code != "AR" else (AckCode.AR if not accepted else AckCode.AE)
        accept_ack = None
        if _wanted(message.accept_ack_type, commit == AckCode.AA):
            charset = message.charset or "utf-8"
            accept_ack = build_ack(message, commit, result.errors if commit != AckCode.AA else (), accept_ack=True,
                                   control_id=f"{message.control_id}.A"[:199], timestamp=_msh7(result.ack),
                                   sending_application=pipeline.config["ACK_SENDING_APPLICATION"],
                                   sending_facility=pipeline.config["ACK_SENDING_FACILITY"]).encode(charset, "replace")
        application_ack = result.ack if _wanted(message.application_ack_type, result.code == "AA") else None
        if accept_ack is None:
            return MllpReply(ack=application_ack)
        return MllpReply(ack=accept_ack, later=(lambda: application_ack) if application_ack else None)
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


def mllp_server(pipeline: Hl7Pipeline, host: str, port: int, binding=None, ssl_context=None) -> MllpServer:
    """Without ``binding`` every connection is admitted unbound (library and test use); the CLI always
    binds connections to registered clients (source address or TLS certificate)."""
    limit = int(pipeline.config["MAX_MESSAGE_BYTES"])
    return MllpServer(make_mllp_handler(pipeline, binding), host, port, max_bytes=limit,
                      on_too_large=make_too_large_handler(pipeline, limit), ssl_context=ssl_context,
                      on_connect=binding.on_connect if binding is not None else None)


def make_pipeline_handler():
    """A handler over a fresh gateway on a temporary SQLite file: for ``bench/mllp.py --handler``."""
    import tempfile

    from gateway.config import load_config
    from gateway.runtime import Gateway
    gateway = Gateway.from_config(load_config({"DATA_DIR": tempfile.mkdtemp(prefix="lecheng-bench-")}))
    return make_mllp_handler(gateway.pipeline)
