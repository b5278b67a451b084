"""HTTP ingest: ``POST /hl7v2`` takes one ER7 message and answers its HL7 ACK.

The body is passed on as bytes: the message itself declares its charset (MSH-18), whatever the
Content-Type says. The HTTP status is 200 for every ACK (AA, AE and AR alike): the answer is in
MSA-1, as interface engines expect.
"""
from __future__ import annotations

from flask import Blueprint, Response, request

from gateway.web import gateway_of_app

ingest_blueprint = Blueprint("ingest", __name__)


@ingest_blueprint.post("/hl7v2")
def receive_hl7v2() -> Response:
    result = gateway_of_app().pipeline.ingest(request.get_data(cache=False), transport="http")
    charset = result.message.charset if result.message is not None and result.message.charset else "utf-8"
    return Response(result.ack, status=200,
                    content_type=f"x-application/hl7-v2+er7; charset={charset}",
                    headers={"X-Message-Log-Id": str(result.log_id), "X-Ack-Code": result.code})
