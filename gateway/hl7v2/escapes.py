"""HL7 v2 escape sequences: reading them out of values, and writing them into values.

A delimiter character cannot appear as data, so HL7 writes it as an escape sequence
between two escape characters (``\\`` unless MSH-2 says otherwise):

* ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``: field, component, sub-component, repetition, escape;
  ``\\P\\``: the truncation character (v2.7+).
* ``\\Xhh..\\``: raw bytes in hex, decoded in the message's character set (adjacent
  hex escapes are joined first, as senders split multi-byte characters across them).
* ``\\.br\\``, ``\\.sp\\``, ``\\.ce\\``: a line break; ``\\.sp N\\``: N line breaks and
  ``\\.sk N\\``: N spaces, both capped at :data:`MAX_REPEAT`.
* ``\\.in N\\ \\.ti N\\ \\.fi\\ \\.nf\\`` (indentation, fill mode) and ``\\H\\ \\N\\``
  (highlighting on/off) are layout only: dropped.

Anything else (``\\Zxx\\`` local escapes, ``\\C..\\``/``\\M..\\`` ISO 2022 switches,
an unterminated ``\\F``) is kept literally: showing the sender's text is better than
guessing at it. Values without an escape character never reach this module.
"""
from __future__ import annotations

from functools import lru_cache

from .delimiters import Delimiters

__all__ = ["EscapeRules", "rules_for", "MAX_REPEAT"]

#: Upper bound for the count in ``\.sp N\`` and ``\.sk N\``: a formatting escape must
#: not be able to turn a few bytes on the wire into megabytes in memory.
MAX_REPEAT = 100

# Formatting commands whose argument we read; the others take none.
_COUNTED = {".sp": "\n", ".sk": " "}
_LAYOUT_ONLY = (".in", ".ti")

# Control characters never written into an outgoing message (0x0B and 0x1C are the
# MLLP frame bytes: one inside a value would cut the receiver's frame in two).
_CONTROL_CHARS = {c: None for c in (*range(0x20), 0x7F)}


def _hex_bytes(body: str) -> bytes | None:
    """The bytes of an ``Xhh..`` escape body, or None when it is not one."""
    if len(body) % 2 == 0 or body[0] != "X":
        return None
    try:
        return bytes.fromhex(body[1:])
    except ValueError:
        return None


class EscapeRules:
    """Escape handling bound to one set of delimiters and one character set.

    Built once per (delimiters, charset) pair and shared by every segment of every
    message that uses them (see :func:`rules_for`), so the hot path never rebuilds it.
    """

    __slots__ = ("delimiters", "charset", "field", "component", "repetition", "escape",
                 "subcomponent", "inner_separators", "_simple", "_escape_table")

    def __init__(self, delimiters: Delimiters, charset: str = "") -> None:
        self.delimiters = delimiters
        self.charset = charset
        self.field = delimiters.field
        self.component = delimiters.component
        self.repetition = delimiters.repetition
        self.escape = delimiters.escape
        self.subcomponent = delimiters.subcomponent
        #: the separators below field level that are in use (repetition, component, sub-component)
        self.inner_separators = tuple(c for c in (delimiters.repetition, delimiters.component,
                                                  delimiters.subcomponent) if c)
        d = delimiters
        simple = {"H": "", "N": "", ".br": "\n", ".sp": "\n", ".ce": "\n", ".fi": "", ".nf": "",
                  ".sk": " "}
        for letter, char in (("F", d.field), ("S", d.component), ("T", d.subcomponent),
                             ("R", d.repetition), ("E", d.escape), ("P", d.truncation)):
            if char:
                simple[letter] = char
        self._simple = simple
        table = dict(_CONTROL_CHARS)
        for letter, char in (("E", d.escape), ("F", d.field), ("S", d.component),
                             ("T", d.subcomponent), ("R", d.repetition), ("P", d.truncation)):
            if char:
                table[ord(char)] = f"{d.escape}{letter}{d.escape}"
        self._escape_table = table

    # ---- reading -------------------------------------------------------------------
    def unescape(self, value: str) -> str:
        """Resolve the escape sequences in one leaf value (component or sub-component)."""
        esc = self.escape
        if not esc or esc not in value:
            return value
        parts = value.split(esc)
        # parts alternate text, escape body, text, ... ; an even count means the
        # last escape character was never closed.
        last = len(parts) - 1
        out = [parts[0]]
        i = 1
        while i < last:
            body = parts[i]
            simple = self._simple.get(body)
            if simple is not None:
                out.append(simple)
            elif body[:1] == "X" and (data := _hex_bytes(body)) is not None:
                # Gather directly adjacent hex escapes: a multi-byte character is
                # often split across them (\XE4\\XB8\\XAD\).
                while i + 2 < last and parts[i + 1] == "" and (more := _hex_bytes(parts[i + 2])) is not None:
                    data += more
                    i += 2
                out.append(self._decode_hex(data, esc))
            else:
                out.append(self._formatting(body, esc))
            out.append(parts[i + 1])
            i += 2
        if i == last:
            out.append(esc + parts[last])
        return "".join(out)

    def _decode_hex(self, data: bytes, esc: str) -> str:
        try:
            return data.decode(self.charset or "utf-8")
        except (UnicodeDecodeError, LookupError):
            return f"{esc}X{data.hex().upper()}{esc}"

    def _formatting(self, body: str, esc: str) -> str:
        command = body[:3]
        if command in _COUNTED or command in _LAYOUT_ONLY:
            try:
                count = int(body[3:].strip() or "1")
            except ValueError:
                return esc + body + esc
            if command in _LAYOUT_ONLY:
                return ""
            return _COUNTED[command] * max(1, min(count, MAX_REPEAT))
        return esc + body + esc

    # ---- writing -------------------------------------------------------------------
    def escape_value(self, value: str) -> str:
        """Make arbitrary text safe as one leaf value: delimiters become escape
        sequences and control characters are removed."""
        return value.translate(self._escape_table)


@lru_cache(maxsize=64)
def rules_for(delimiters: Delimiters, charset: str = "") -> EscapeRules:
    """The shared :class:`EscapeRules` for a delimiter set and character set."""
    return EscapeRules(delimiters, charset)
