"""MLLP connections bound to registered clients: by source address (the client's ``mllp_addresses``)
or by TLS client certificate (its ``tls_subjects``, the certificate subject CN, when the listener
runs TLS with ``MLLP_TLS_CLIENT_CA``). A connection no client claims is closed at once; each message
is then held to the client's organization (MSH-4, as over HTTP) and audited like an HTTP request.

A client revoked while its connection is open: its next message is logged raw (status ``rejected``),
audited (403), answered AR naming the reason, and the connection is closed (:class:`ConnectionRevoked`);
a reconnection is then refused at once, like any address no client claims.
"""
from __future__ import annotations

import logging
import ssl
from typing import Any

from gateway.hl7v2 import AckCode, Hl7Error, build_ack
from gateway.hl7v2.message import partial_msh_from_text
from gateway.ingest.mllp import CURRENT_CONNECTION
from gateway.security.audit import AuditRecord
from gateway.security.clients import Client
from gateway.security.service import Security
from gateway.store.access import bound_to, sending_as, with_roles

log = logging.getLogger(__name__)


class ConnectionRevoked(Exception):
    """No active client holds this connection any more: answer ``ack`` (an AR), then close it."""

    def __init__(self, ack: bytes, log_id: int):
        super().__init__(f"MLLP connection refused (log id {log_id})")
        self.ack = ack
        self.log_id = log_id


class MllpBinding:
    Refused = ConnectionRevoked

    def __init__(self, security: Security):
        self.security = security

    def on_connect(self, peer: tuple) -> bool:
        """Admit a connection whose address a client claims, or any when TLS certificates decide."""
        if self.security.config.get("MLLP_TLS_CLIENT_CA"):
            return True
        return len(self.security.clients.by_address(str(peer[0]))) == 1

    def client_for(self, peer: tuple, sock: Any) -> Client | None:
        if isinstance(sock, ssl.SSLSocket) and self.security.config.get("MLLP_TLS_CLIENT_CA"):
            subject = dict(item for rdn in (sock.getpeercert() or {}).get("subject", ()) for item in rdn)
            matches = self.security.clients.by_tls_subject(subject.get("commonName", ""))
        else:
            matches = self.security.clients.by_address(str(peer[0]))
        return matches[0] if len(matches) == 1 else None

    def ingest(self, pipeline, payload: bytes):
        """The pipeline's answer for one message of the current connection, bound to its client."""
        connection = CURRENT_CONNECTION.get()
        peer, sock = connection if connection is not None else (("unknown", 0), None)
        client = self.client_for(peer, sock)
        if client is None:       # revoked since the connection opened, or an ambiguous address
            self._refuse(pipeline, payload, peer)
        bound = None if client.role == "admin" else client.organization
        with bound_to(bound), sending_as(client.organization), with_roles(self.security.clients.roles_of):
            result = pipeline.ingest(payload, transport="mllp")
        self.security.audit.record(AuditRecord(
            activity="hl7v2", outcome_status=200 if result.code == "AA" else 422,
            outcome_text=f"ACK {result.code}" + (f": {result.errors[0].text}" if result.errors else ""),
            client_id=client.client_id, organization=client.organization, role=client.role,
            address=str(peer[0]), description="MLLP message", message_log_id=str(result.log_id), transport="mllp"))
        return result


    def _refuse(self, pipeline, payload: bytes, peer: tuple) -> None:
        """Log the message raw, audit the refusal, answer AR and close (raises ConnectionRevoked)."""
        text = (f"no active client is registered for this connection ({peer[0]}): its client was revoked or "
                "its address is now claimed by more than one client; nothing was stored")
        log_id = pipeline.log.refuse(payload, transport="mllp", format="hl7v2", reason=text,
                                     peer=str(peer[0]))
        error = Hl7Error(text=f"{text} (log id {log_id})", segment="MSH", sequence=1, field=4, code="207")
        ack = build_ack(partial_msh_from_text(payload.decode("latin-1")), AckCode.AR, [error], text=error.text,
                        sending_application=pipeline.config["ACK_SENDING_APPLICATION"],
                        sending_facility=pipeline.config["ACK_SENDING_FACILITY"]).encode("utf-8")
        try:
            self.security.audit.record(AuditRecord(
                activity="hl7v2", outcome_status=403, outcome_text=f"ACK AR: {text}", address=str(peer[0]),
                description="MLLP message", message_log_id=str(log_id), transport="mllp"))
        except Exception:  # the refusal still goes out; a lost audit row is loud in the server log
            log.exception("could not audit the refused MLLP message %s", log_id)
        raise ConnectionRevoked(ack, log_id)


def tls_context(config: dict) -> ssl.SSLContext | None:
    """Server TLS for MLLP from MLLP_TLS_CERT/KEY; client certificates required with MLLP_TLS_CLIENT_CA."""
    if not config.get("MLLP_TLS_CERT"):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config["MLLP_TLS_CERT"], config.get("MLLP_TLS_KEY") or None)
    if config.get("MLLP_TLS_CLIENT_CA"):
        context.load_verify_locations(config["MLLP_TLS_CLIENT_CA"])
        context.verify_mode = ssl.CERT_REQUIRED
    return context
