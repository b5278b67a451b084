"""The encoding characters a message declares for itself in MSH-1 and MSH-2.

HL7 v2 does not fix its delimiters: every message names them at the start of its
MSH segment (``MSH|^~\\&|...``). MSH-1 is the character right after ``MSH``; MSH-2
is the run of characters up to the next field separator, in the fixed order
component, repetition, escape, sub-component and (v2.7+) truncation.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Delimiters", "DEFAULT_DELIMITERS"]


@dataclass(frozen=True, slots=True)
class Delimiters:
    """One message's delimiters. A character the sender left out of MSH-2 is ``''``
    (``None`` for truncation): that separator simply does not exist in the message."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it is written on the wire."""
        return (self.component + self.repetition + self.escape + self.subcomponent
                + (self.truncation or ""))

    @classmethod
    def from_msh(cls, field_separator: str, encoding_characters: str) -> "Delimiters | None":
        """Delimiters from MSH-1 and MSH-2, or None when they cannot be delimiters
        (letters, digits, blanks, line breaks, repeats): such text is not HL7 ER7."""
        chars = field_separator + encoding_characters
        if (not field_separator or len(field_separator) != 1
                or not 1 <= len(encoding_characters) <= 5
                or len(set(chars)) != len(chars)
                or any(c.isalnum() or c.isspace() or c < " " for c in chars)):
            return None
        padded = encoding_characters + "\0" * (5 - len(encoding_characters))
        comp, rep, esc, sub, trunc = (c if c != "\0" else "" for c in padded)
        return cls(field_separator, comp, rep, esc, sub, trunc or None)


DEFAULT_DELIMITERS = Delimiters()
