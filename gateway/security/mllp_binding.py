"""MLLP connections bound to registered clients: by source address (the client's ``mllp_addresses``)
or by TLS client certificate (its ``tls_subjects``, the certificate subject CN, when the listener
runs TLS with ``MLLP_TLS_CLIENT_CA``). A connection no client claims is closed at once; each message
is then held to the client's organization (MSH-4, as over HTTP) and audited like an HTTP request.
"""
from __future__ import annotations

import logging
import ssl
from typing import Any

from gateway.ingest.mllp import CURRENT_CONNECTION
from gateway.security.audit import AuditRecord
from gateway.security.clients import Client
from gateway.security.service import Security
from gateway.store.access import bound_to, sending_as

log = logging.getLogger(__name__)


class MllpBinding:
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
            raise PermissionError(f"no single active client is bound to MLLP peer {peer[0]}")
        bound = None if client.role == "admin" else client.organization
        with bound_to(bound), sending_as(client.organization):
            result = pipeline.ingest(payload, transport="mllp")
        self.security.audit.record(AuditRecord(
            activity="hl7v2", outcome_status=200 if result.code == "AA" else 422,
            outcome_text=f"ACK {result.code}" + (f": {result.errors[0].text}" if result.errors else ""),
            client_id=client.client_id, organization=client.organization, role=client.role,
            address=str(peer[0]), description="MLLP message", message_log_id=str(result.log_id), transport="mllp"))
        return result


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
