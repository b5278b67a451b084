"""HTTP ingest: ``POST /hl7v2`` takes one ER7 message and answers its HL7 ACK;
``POST /ingest/<mapping>`` takes a hospital's own XML, CSV or JSON export and answers FHIR.

The body is passed on as bytes: the message itself declares its charset (MSH-18), whatever the
Content-Type says. The HTTP status is 200 for every ACK (AA, AE and AR alike): the answer is in
MSA-1, as interface engines expect. A document's charset is its mapping's (XML: its declaration);
its answer is a Bundle or an OperationOutcome with an HTTP status (``gateway.ingest.documents``).
"""
from __future__ import annotations

from flask import Blueprint, Response, request

from gateway.fhir_api.outcome import fhir_response
from gateway.web import gateway_of_app

ingest_blueprint = Blueprint("ingest", __name__)


@ingest_blueprint.post("/hl7v2")
def receive_hl7v2() -> Response:
    result = gateway_of_app().pipeline.ingest(request.get_data(cache=False), transport="http")
    charset = result.message.charset if result.message is not None and result.message.charset else "utf-8"
    return Response(result.ack, status=200,
                    content_type=f"x-application/hl7-v2+er7; charset={charset}",
                    headers={"X-Message-Log-Id": str(result.log_id), "X-Ack-Code": result.code})


@ingest_blueprint.post("/ingest/<mapping>")
def receive_document(mapping: str) -> Response:
    result = gateway_of_app().documents.ingest(request.get_data(cache=False), mapping, transport="http")
    return fhir_response(result.body, result.status, headers={"X-Message-Log-Id": str(result.log_id)})
