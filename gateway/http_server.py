"""The production HTTP server: waitress, with FHIR answers where waitress itself answers.

Waitress refuses some requests before the Flask app sees them: a body over ``max_request_body_size``
(413), header fields too large (431), a request line it cannot read (400). Its answers are
``text/plain``; a FHIR client expects an OperationOutcome, so this module swaps in an error task
that writes one (same status, ``application/fhir+json``).

One refusal is waitress being stricter than clients: a request line with raw UTF-8 in the query
(``GET /fhir/Patient?name=王``, as curl sends what it is given) fails ``urlsplit`` on bytes and is
answered ``400 Bad URI``. RFC 3986 wants those bytes percent-encoded; every server FHIR clients
meet (nginx, Tomcat, Kestrel) encodes or accepts them, so the parser here percent-encodes bytes
above 0x7F in the request target before waitress reads it: the app sees ``name=%E7%8E%8B``, which
is exactly what a careful client would have sent.
"""
from __future__ import annotations

import orjson
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import create_server
from waitress.task import ErrorTask

# waitress status -> OperationOutcome issue-type
_ISSUE_CODE = {400: "structure", 408: "timeout", 413: "too-costly", 431: "too-costly"}


class FhirRequestParser(HTTPRequestParser):
    """Waitress's parser, with non-ASCII bytes of the request line percent-encoded first."""

    def parse_header(self, header_plus: bytes) -> None:
        end = header_plus.find(b"\r\n")
        first_line = header_plus if end < 0 else header_plus[:end]
        if not first_line.isascii():
            first_line = b"".join(b"%%%02X" % byte if byte > 0x7F else bytes((byte,)) for byte in first_line)
            header_plus = first_line if end < 0 else first_line + header_plus[end:]
        super().parse_header(header_plus)


class FhirErrorTask(ErrorTask):
    """Waitress's own refusals (400, 413, 431, ...) as an OperationOutcome instead of text/plain."""

    def execute(self) -> None:
        error = self.request.error
        status = f"{error.code} {error.reason}"
        outcome = {"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": _ISSUE_CODE.get(error.code, "invalid"),
            "diagnostics": f"{error.reason}: {error.body}".strip().rstrip(":")}]}
        body = orjson.dumps(outcome)
        self.status = status
        self.response_headers.append(("Content-Type", "application/fhir+json; charset=utf-8"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class FhirChannel(HTTPChannel):
    parser_class = FhirRequestParser
    error_task_class = FhirErrorTask


def make_server(app, **settings):
    """A waitress server for ``app`` (``settings`` as for ``waitress.serve``) using :class:`FhirChannel`."""
    server = create_server(app, **settings)
    listeners = [server] if hasattr(server, "channel_class") else \
        [d for d in server.map.values() if hasattr(d, "channel_class")]
    for listener in listeners:
        listener.channel_class = FhirChannel
    return server

