"""Errors as HL7 reports them: one :class:`Hl7Error` is one ERR segment of an ACK.

Parse failures use the same type, so whatever rejects a message (the parser, a
validator, a mapping) describes the problem once and :func:`~gateway.hl7v2.ack.build_ack`
can put it on the wire without translation.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Hl7Error", "Hl7ParseError"]


@dataclass(frozen=True)
class Hl7Error:
    """One problem, located the way ERR-2 (ERL) locates it.

    ``code`` is from HL7 table 0357 (100 segment sequence, 101 required field missing,
    102 data type, 103 table value not found, 200-203 unsupported message type / event /
    processing id / version, 204 unknown key, 205 duplicate key, 206 record locked,
    207 application internal error); ``severity`` from table 0516 (E, W, I).
    """

    text: str
    segment: str | None = None
    sequence: int | None = None
    field: int | None = None
    field_rep: int | None = None
    component: int | None = None
    subcomponent: int | None = None
    code: str = "207"
    severity: str = "E"

    @property
    def location(self) -> str:
        """Terse location for logs, e.g. ``MSH-9`` or ``PID(2)-3.4``."""
        if not self.segment:
            return ""
        out = self.segment
        if self.field is not None:
            out += f"-{self.field}"
            if self.field_rep not in (None, 1):
                out += f"({self.field_rep})"
            if self.component is not None:
                out += f".{self.component}"
                if self.subcomponent is not None:
                    out += f".{self.subcomponent}"
        return out


class Hl7ParseError(ValueError):
    """The input could not be read as an HL7 v2 message.

    ``errors`` says why (ready for ERR segments); ``partial_msh`` holds whatever MSH
    values could still be read (keys ``sending_application``, ``sending_facility``,
    ``receiving_application``, ``receiving_facility``, ``control_id``, ``version``,
    ``message_type``, ``processing_id``; absent when unknown) so the AR can still be
    addressed to the sender and carry the right MSA-2.
    """

    def __init__(self, errors: list[Hl7Error], partial_msh: dict | None = None) -> None:
        self.errors: list[Hl7Error] = list(errors)
        self.partial_msh: dict = dict(partial_msh or {})
        super().__init__("; ".join(e.text for e in self.errors) or "not a readable HL7 v2 message")
