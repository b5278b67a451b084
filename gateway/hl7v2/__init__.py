"""HL7 v2 on the wire: decode, parse, unescape, and answer with an ACK.

``parse_message(bytes) -> Hl7Message`` is the hot path every message takes;
``build_ack(message_or_partial_msh, code, errors) -> str`` is the answer. Parse
failures raise :class:`Hl7ParseError`, which carries both the ERR content
(:class:`Hl7Error`) and whatever of MSH could be read, so even garbage gets an AR
addressed to its sender. See :mod:`gateway.hl7v2.message` for how HL7 v2 is built.
"""
from .ack import AckCode, build_ack
from .charset import decode_message
from .delimiters import Delimiters
from .errors import Hl7Error, Hl7ParseError
from .message import EXPLICIT_NULL, Hl7Message, Segment, parse_message
from .names import field_name

__all__ = [
    "parse_message", "Hl7Message", "Segment", "Delimiters", "Hl7ParseError", "Hl7Error",
    "EXPLICIT_NULL", "build_ack", "AckCode", "decode_message", "field_name",
]
