"""Acknowledgments (ACK messages): the gateway's answer to every message it receives.

What the codes mean (MSA-1, HL7 table 0008):

* **AA** application accept: stored and routed (or queued for delivery).
* **AE** application error: the message was read, but its content is wrong; the ERR
  segments say where (segment, sequence, field, component), why (table 0357 code)
  and what a person should do about it.
* **AR** application reject: the message is not acceptable at all (not HL7, no message
  type, unsupported version or processing id) or the gateway cannot take it now.
* **CA / CE / CR** are the same three for the *accept* (transport-level) acknowledgment
  of enhanced mode (MSH-15), selected with ``accept_ack=True``.

Everything taken from the incoming message is untrusted: each value is escaped with
the ACK's own delimiters and stripped of control characters before it is written, so
a 0x1C (MLLP end byte) inside the sender's MSH-3 cannot cut the sender's own frame.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import Iterable

from .delimiters import DEFAULT_DELIMITERS
from .errors import Hl7Error
from .escapes import rules_for
from .message import Hl7Message, Segment

__all__ = ["AckCode", "build_ack", "ERROR_CODE_TEXT"]


class AckCode(str, Enum):
    """MSA-1 acknowledgment codes (HL7 table 0008)."""

    AA = "AA"
    AE = "AE"
    AR = "AR"
    CA = "CA"
    CE = "CE"
    CR = "CR"

    def __str__(self) -> str:
        return self.value


_TO_ACCEPT = {"AA": "CA", "AE": "CE", "AR": "CR"}

# HL7 table 0357, message error condition codes (ERR-3).
ERROR_CODE_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

_ACK_RULES = rules_for(DEFAULT_DELIMITERS, "")
_esc = _ACK_RULES.escape_value
# MSA-3 is ST(80) in v2.3/v2.4; longer texts go in ERR-8 in full.
_MSA_TEXT_MAX = 80


def _join(parts: Iterable[str], sep: str) -> str:
    """Join, dropping trailing empty parts (trailing separators mean nothing in HL7)."""
    parts = list(parts)
    while parts and not parts[-1]:
        parts.pop()
    return sep.join(parts)


def _copy_field(seg: Segment | None, n: int) -> str:
    """A field of the incoming message, re-encoded for the ACK: every leaf unescaped
    with the sender's delimiters, escaped with the ACK's, control characters gone."""
    if seg is None:
        return ""
    d = DEFAULT_DELIMITERS
    return _join((_join((_join((_esc(s) for s in comp), d.subcomponent) for comp in rep),
                        d.component) for rep in seg.field(n)), d.repetition)


def _number(value: int | None) -> str:
    return "" if value is None else str(value)


def _err_segment(error: Hl7Error) -> str:
    code = _esc(str(error.code or "207"))
    code_text = ERROR_CODE_TEXT.get(code, "")
    seg = _esc(error.segment or "")
    seq = _number(error.sequence)
    fld = _number(error.field)
    rep = _number(error.field_rep if error.field_rep is not None
                  else (1 if error.field is not None else None))
    # ERR-1, ELD (v2.3/v2.4): segment ^ sequence ^ field ^ code & text & HL70357
    eld = _join((seg, seq, fld, _join((code, code_text, "HL70357"), "&")), "^")
    # ERR-2, ERL (v2.5+): segment ^ sequence ^ field ^ repetition ^ component ^ sub-component
    erl = _join((seg, seq, fld, rep, _number(error.component), _number(error.subcomponent)), "^") \
        if seg else ""
    hl7_code = _join((code, code_text, "HL70357"), "^")
    return _join(("ERR", eld, erl, hl7_code, _esc(error.severity or "E"), "", "", "",
                  _esc(error.text or "")), "|")


def build_ack(msg_or_partial: Hl7Message | dict, code: AckCode | str, errors: Iterable[Hl7Error] = (), *,
              text: str | None = None, control_id: str | None = None, timestamp: str | None = None,
              sending_application: str = "LECHENG_GW", sending_facility: str = "HAINAN_EPC",
              accept_ack: bool = False) -> str:
    """The ACK for a message, as ER7 text with ``\\r`` segment terminators.

    ``msg_or_partial`` is the parsed message, or :attr:`Hl7ParseError.partial_msh` when
    it could not be parsed. The ACK goes back to the original sender (MSH-5/6 = its
    MSH-3/4) from the original receiver (MSH-3/4 = its MSH-5/6, or
    ``sending_application``/``sending_facility`` when it named none). MSA-2 echoes the
    original MSH-10 so the sender can match the answer; MSA-3 carries ``text`` (or the
    first error's text) for v2.3-era receivers that read nothing else. Each error
    becomes one ERR segment with both the v2.5+ fields (ERR-2..ERR-4, ERR-8) and the
    v2.3/v2.4 ERR-1, so old and new receivers both find it. The caller encodes the
    text (in the message's character set, or UTF-8).
    """
    code_value = code.value if isinstance(code, AckCode) else AckCode(str(code).strip().upper()).value
    if accept_ack:
        code_value = _TO_ACCEPT.get(code_value, code_value)
    errors = list(errors)

    if isinstance(msg_or_partial, Hl7Message):
        msg = msg_or_partial
        msh = msg.segment("MSH")
        their_app, their_fac = _copy_field(msh, 3), _copy_field(msh, 4)
        our_app, our_fac = _copy_field(msh, 5), _copy_field(msh, 6)
        trigger = msg.trigger_event
        original_id = msg.control_id
        processing = _copy_field(msh, 11)
        version = _copy_field(msh, 12)
        charset = _copy_field(msh, 18)
    else:
        partial = msg_or_partial or {}
        their_app = _esc(partial.get("sending_application", "") or "")
        their_fac = _esc(partial.get("sending_facility", "") or "")
        our_app = _esc(partial.get("receiving_application", "") or "")
        our_fac = _esc(partial.get("receiving_facility", "") or "")
        message_type = partial.get("message_type", "") or ""
        trigger = message_type.split("^")[1] if "^" in message_type else ""
        original_id = partial.get("control_id", "") or ""
        processing = _esc(partial.get("processing_id", "") or "")
        version = _esc(partial.get("version", "") or "")
        charset = ""

    trigger = _esc(trigger)
    msh_fields = [
        "MSH", "^~\\&",
        our_app or _esc(sending_application), our_fac or _esc(sending_facility),  # MSH-3, -4
        their_app, their_fac,                                                     # MSH-5, -6
        _esc(timestamp) if timestamp else datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z"),
        "",                                                                       # MSH-8
        f"ACK^{trigger}^ACK" if trigger else "ACK",                               # MSH-9
        _esc(control_id) if control_id else uuid.uuid4().hex[:20].upper(),        # MSH-10
        processing,                                                               # MSH-11
        version or "2.5",                                                         # MSH-12
        "", "", "", "", "",                                                       # MSH-13..17
        charset,                                                                  # MSH-18
    ]
    msa_text = text if text is not None else (errors[0].text if errors else "")
    msa_text = _esc(msa_text)
    if len(msa_text) > _MSA_TEXT_MAX:
        msa_text = msa_text[:_MSA_TEXT_MAX - 3]
        # never cut an escape sequence in half
        if msa_text.count("\\") % 2:
            msa_text = msa_text[:msa_text.rfind("\\")]
        msa_text += "..."
    segments = [
        _join(msh_fields, "|"),
        _join(("MSA", code_value, _esc(original_id), msa_text), "|"),
        *(_err_segment(e) for e in errors),
    ]
    return "\r".join(segments) + "\r"
