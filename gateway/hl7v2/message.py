"""Reading HL7 v2 messages (ER7, the "pipe and hat" encoding) on the gateway's hot path.

What an HL7 v2 message is
-------------------------
A message is a list of **segments**, one per line. Each segment starts with a
three-character name (``MSH``, ``PID``, ``ORC``, ``RXE``, or a local ``Z..`` such as
``ZLC``) and holds numbered **fields** separated by the field separator::

    MSH|^~\\&|BOAO_HIS|BOAO_SUPER_HOSPITAL|LECHENG_GW|HAINAN_EPC|20260315093000||RDE^O11^RDE_O11|...
    PID|1||H0012345^^^BOAO_SUPER_HOSPITAL^MR~46010019900101123X^^^CHNMPS^NNCHN||李^娜^^^^^L

A field may hold several **repetitions** (``~``: PID-3 above carries two patient
identifiers), each repetition several **components** (``^``: id, check digit, ...,
assigning authority, type) and each component several **sub-components** (``&``).
So a value is addressed as segment -> field -> repetition -> component ->
sub-component, written tersely as ``PID-3(2).4.1`` (repetition, component and
sub-component default to 1).

The delimiters are not fixed: **MSH-1** is the character right after ``MSH`` and
**MSH-2** lists component, repetition, escape and sub-component separators (v2.7 may
add a fifth, the truncation character). A delimiter inside data is written as an
escape sequence (``\\T\\`` for ``&``; see :mod:`.escapes`). MSH-2 itself is never
unescaped: it *is* the escape definition.

**MSH numbering is off by one** compared with every other segment: the field
separator between ``MSH`` and the encoding characters *is* MSH-1, so in
``MSH|^~\\&|BOAO_HIS`` the encoding characters are MSH-2 and ``BOAO_HIS`` is MSH-3,
whereas in ``PID|1`` the ``1`` is PID-1. :class:`Segment` hides this: ``field(n)``
is field n in the standard's numbering for every segment.

**Empty is not null.** An empty field (``||``) means "no value sent" and reads as
``None`` / ``[]``; the two-character value ``""`` is HL7's explicit null, "delete the
value you hold", and reads as the string ``'""'`` (:data:`EXPLICIT_NULL`) so that
consumers can act on it. Trailing separators (``PID|1|||``) add nothing, and trailing
blanks are not significant (``ST`` is "left justified with trailing blanks optional"),
so values are read without them; leading blanks are kept (they are layout in ``FT``).

Segments end with a carriage return. Real feeds also use ``\\n`` or ``\\r\\n``: if a
message contains any ``\\r``, it is split on ``\\r`` only (a ``\\n`` right after
``\\r`` is dropped) and a lone ``\\n`` is text inside a value; otherwise it is split
on ``\\n``. A line that does not start with a segment name is text that belongs to
the previous segment (a line break the sender failed to escape), kept with a warning.

Why it is written this way
--------------------------
Every message passes through here before anything else happens, so :func:`parse_message`
does only what every caller needs: decode, split into segment lines, and read the MSH
header. Fields are split on first access, values are unescaped when read, and a value
without an escape character is returned as it is. All splitting is ``str.split``
(C loops, no per-character Python and no regular expressions).
"""
from __future__ import annotations

import re
from functools import lru_cache

from .charset import decode_message
from .delimiters import Delimiters
from .errors import Hl7Error, Hl7ParseError
from .escapes import EscapeRules, rules_for

__all__ = ["EXPLICIT_NULL", "Segment", "Hl7Message", "parse_message", "partial_msh_from_text",
           "SUPPORTED_VERSIONS"]

#: HL7's explicit null: "this value is to be deleted". Returned verbatim by accessors.
EXPLICIT_NULL = '""'

#: Versions this parser is tested against; others parse, with a warning.
SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1",
                                "2.8", "2.8.1", "2.8.2"})

# field separator -> {'PID|': 'PID', ...}: a line's first four characters, once seen to
# start a well-formed segment, give its name with one dict lookup. Bounded in size.
_KNOWN_PREFIXES: dict[str, dict[str, str]] = {}
_MAX_PREFIXES = 20000
_FRAME_START = "\x0b\ufeff\r\n\t "
_FRAME_END = "\x1c\x0b\r\n"


# (delimiter chars, charset) -> rules, so a known sender's MSH-2 is validated once.
_rules_cache: dict[tuple[str, str, str], EscapeRules] = {}


def _segment_name(line: str, fs: str) -> str | None:
    """The segment name a line starts with, or None when it does not start a segment.

    A name is three upper-case ASCII letters or digits, a letter first, followed by the
    field separator or the end of the line.
    """
    name = line[:3]
    if not (len(name) == 3 and name.isascii() and name.isalnum() and name[0].isalpha()
            and name.isupper()):
        return None
    if len(line) == 3:
        return name
    if line[3] != fs:
        return None
    known = _KNOWN_PREFIXES.get(fs)
    if known is not None and len(known) < _MAX_PREFIXES:
        known[line[:4]] = name
    return name


_PATH = re.compile(r"^(?:([A-Z][A-Z0-9]{2})-)?(\d+)(?:\((\d+)\))?(?:\.(\d+)(?:\.(\d+))?)?$")


@lru_cache(maxsize=1024)
def _parse_path(path: str) -> tuple[str | None, int, int, int, int]:
    """'PID-3(2).4.1' -> ('PID', 3, 2, 4, 1); repetition, component, sub-component default to 1."""
    m = _PATH.match(path.strip().upper())
    if not m:
        raise ValueError(f"not an HL7 field path: {path!r} (expected e.g. 'PID-3(2).4.1' or '3.4')")
    seg, fld, rep, comp, sub = m.groups()
    return seg, int(fld), int(rep or 1), int(comp or 1), int(sub or 1)


def _nth(raw: str, sep: str, n: int) -> str | None:
    """Part n (1-based) of raw split on sep; None when there is no such part."""
    if sep and sep in raw:
        parts = raw.split(sep)
        return parts[n - 1] if n <= len(parts) else None
    return raw if n == 1 else None


class Segment:
    """One segment line. Fields are split the first time one is read.

    ``index`` is the 1-based position in the message (ERR-2.2, "segment sequence").
    """

    __slots__ = ("name", "index", "_line", "_fields", "_rules")

    def __init__(self, name: str, index: int, line: str, rules: EscapeRules) -> None:
        self.name = name
        self.index = index
        self._line = line
        self._fields: list[str] | None = None
        self._rules = rules

    def _split(self) -> list[str]:
        fields = self._line.split(self._rules.field)
        if self.name == "MSH":  # the separator after 'MSH' is itself MSH-1
            fields.insert(1, self._rules.field)
        self._fields = fields
        return fields

    def raw_field(self, n: int) -> str:
        """Field n exactly as on the wire (still escaped); '' when absent."""
        fields = self._fields or self._split()
        return fields[n] if 0 < n < len(fields) else ""

    def value(self, n: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str | None:
        """One unescaped value; None when empty or absent, ``'""'`` for the explicit null."""
        if n < 1 or rep < 1 or comp < 1 or sub < 1:
            raise ValueError("HL7 field, repetition, component and sub-component numbers start at 1")
        fields = self._fields or self._split()
        if n >= len(fields):
            return None
        raw = fields[n]
        if not raw:
            return None
        if n <= 2 and self.name == "MSH":  # separators: raw, and have no parts
            return raw if rep == comp == sub == 1 else None
        r = self._rules
        raw = _nth(raw, r.repetition, rep)
        if raw:
            raw = _nth(raw, r.component, comp)
            if raw:
                raw = _nth(raw, r.subcomponent, sub)
        if not raw:
            return None
        raw = raw.rstrip(" ")
        if r.escape and r.escape in raw:
            raw = r.unescape(raw)
        return raw or None

    def field(self, n: int) -> list[list[list[str]]]:
        """Field n as repetitions -> components -> sub-components, unescaped.

        ``[]`` when the field is absent or holds no value at all (``||``, ``|^^|``).
        MSH-1 and MSH-2 come back raw, as ``[[['|']]]`` and ``[[['^~\\\\&']]]``.
        """
        if n < 1:
            raise ValueError("HL7 field numbers start at 1")
        fields = self._fields or self._split()
        raw = fields[n] if n < len(fields) else ""
        if not raw:
            return []
        if n <= 2 and self.name == "MSH":
            return [[[raw]]]
        r = self._rules
        rep_sep, comp_sep, sub_sep, esc = r.repetition, r.component, r.subcomponent, r.escape
        if rep_sep and comp_sep and (not sub_sep or sub_sep not in raw) and (not esc or esc not in raw):
            # the common case (no sub-components, no escapes): two C-level splits. A field holds a
            # value when some character is neither a separator nor a blank.
            if not raw.strip(" " + rep_sep + comp_sep):
                return []
            if " " in raw:
                return [[[c.rstrip(" ")] for c in rep.split(comp_sep)] for rep in raw.split(rep_sep)]
            return [[[c] for c in rep.split(comp_sep)] for rep in raw.split(rep_sep)]
        return _field_parts(raw, r)

    def get(self, path: str) -> str | None:
        """Value at a path relative to this segment: ``'3(2).4.1'``, ``'3.4'`` or ``'PID-3.4'``."""
        seg, n, rep, comp, sub = _parse_path(path)
        if seg is not None and seg != self.name:
            raise ValueError(f"path {path!r} names segment {seg}, not {self.name}")
        return self.value(n, rep, comp, sub)

    def __len__(self) -> int:
        """Number of fields, up to the last one that is not empty."""
        fields = self._fields or self._split()
        n = len(fields) - 1
        while n > 0 and not fields[n]:
            n -= 1
        return n

    def __bool__(self) -> bool:
        """A segment is there even when all its fields are empty (``ZLC|``): ``seg or other`` must not
        skip it, and truth testing must not split its fields."""
        return True

    def __str__(self) -> str:
        return self._line

    def __repr__(self) -> str:
        return f"<Segment {self.name} #{self.index}: {self._line[:40]!r}>"


def _field_parts(raw: str, r: EscapeRules) -> list[list[list[str]]]:
    """A field split leaf by leaf (any delimiters, sub-components, escapes); [] when it holds no value."""
    rep_sep, comp_sep, sub_sep, esc = r.repetition, r.component, r.subcomponent, r.escape
    reps = raw.split(rep_sep) if rep_sep else [raw]
    out: list[list[list[str]]] = []
    any_value = False
    for rep in reps:
        comps = []
        for comp in (rep.split(comp_sep) if comp_sep else [rep]):
            subs = []
            for leaf in (comp.split(sub_sep) if sub_sep else [comp]):
                leaf = leaf.rstrip(" ")
                if esc and esc in leaf:
                    leaf = r.unescape(leaf)
                if leaf:
                    any_value = True
                subs.append(leaf)
            comps.append(subs)
        out.append(comps)
    return out if any_value else []


ACK_CONDITIONS = ("AL", "NE", "ER", "SU")     # HL7 table 0155, MSH-15 and MSH-16


class Hl7Message:
    """A parsed message: its segments in order (Z-segments included) and the MSH header.

    Header attributes are unescaped, trimmed strings (first repetition, first
    component), ``''`` when the field is absent. The ones parsing must check (MSH-9, -10, -12) are
    read when the message is built; the others when first asked for.
    Build one with :func:`parse_message`.
    """

    __slots__ = ("delimiters", "segments", "charset", "warnings", "text",
                 "message_code", "trigger_event", "structure", "message_type", "control_id",
                 "version", "_msh_fields", "_rules", "_by_name")

    def __init__(self, segments: list[Segment], delimiters: Delimiters, *, charset: str = "",
                 warnings: list[str] | None = None, text: str = "") -> None:
        self.segments = segments
        self.delimiters = delimiters
        self.charset = charset
        self.warnings = warnings if warnings is not None else []
        self.text = text
        self._by_name: dict[str, list[Segment]] | None = None
        msh = segments[0]
        self._msh_fields = fields = msh._fields or msh._split()
        self._rules = rules = msh._rules
        code, trigger, structure = _message_type_parts(fields[9] if len(fields) > 9 else "", rules)
        self.message_code = code
        self.trigger_event = trigger
        self.structure = structure
        self.message_type = f"{code}^{trigger}" if trigger else code
        self.control_id = _head_value(fields, 10, rules)
        self.version = _head_value(fields, 12, rules)

    def _head(self, n: int) -> str:
        return _head_value(self._msh_fields, n, self._rules)

    @property
    def sending_application(self) -> str:
        """MSH-3.1"""
        return self._head(3)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1"""
        return self._head(4)

    @property
    def receiving_application(self) -> str:
        """MSH-5.1"""
        return self._head(5)

    @property
    def receiving_facility(self) -> str:
        """MSH-6.1"""
        return self._head(6)

    @property
    def processing_id(self) -> str:
        """MSH-11.1: P production, T training, D debugging."""
        return self._head(11)

    @property
    def accept_ack_type(self) -> str:
        """MSH-15: when the sender wants an accept (transport) acknowledgment."""
        return self._head(15)

    @property
    def application_ack_type(self) -> str:
        """MSH-16: when the sender wants an application acknowledgment."""
        return self._head(16)

    @property
    def ack_condition_problems(self) -> list[str]:
        """MSH-15 / MSH-16 values outside HL7 table 0155 (AL, NE, ER, SU), as warnings. A message with
        one is answered in original mode (one application ACK): never silence, which would leave
        the sender waiting for its own timeout and resending."""
        problems = []
        for number, value in ((15, self.accept_ack_type), (16, self.application_ack_type)):
            if value and value.upper() not in ACK_CONDITIONS:
                problems.append(f"MSH-{number} '{value}' is not in HL7 table 0155 (AL, NE, ER, SU); "
                                "answered in original mode (this application ACK only)")
        return problems

    def segments_named(self, name: str) -> list[Segment]:
        """All segments with this name, in message order."""
        index = self._by_name
        if index is None:
            index = {}
            for seg in self.segments:
                index.setdefault(seg.name, []).append(seg)
            self._by_name = index
        return list(index.get(name, ()))

    def segment(self, name: str) -> Segment | None:
        """The first segment with this name, or None."""
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    def get(self, path: str) -> str | None:
        """Value at a terse path on the first segment of that name: ``'PID-3(2).4.1'``, ``'ZLC-2'``."""
        seg_name, n, rep, comp, sub = _parse_path(path)
        if seg_name is None:
            raise ValueError(f"path {path!r} needs a segment name, e.g. 'PID-3.1'")
        seg = self.segment(seg_name)
        return seg.value(n, rep, comp, sub) if seg is not None else None

    def groups(self, start: str, members: set[str] | None = None) -> list[list[Segment]]:
        """Segments grouped under each ``start`` segment (ORC order groups, PEO groups).

        A group holds its ``start`` segment and the segments after it, up to the next
        ``start``; with ``members``, also up to the first segment not in ``members``.
        Segments before the first ``start`` belong to no group.
        """
        out: list[list[Segment]] = []
        current: list[Segment] | None = None
        for seg in self.segments:
            if seg.name == start:
                current = [seg]
                out.append(current)
            elif current is not None:
                if members is None or seg.name in members:
                    current.append(seg)
                else:
                    current = None
        return out

    def __repr__(self) -> str:
        return f"<Hl7Message {self.message_type} {self.control_id!r} v{self.version} {len(self.segments)} segments>"


def _head_value(fields: list[str], n: int, rules: EscapeRules) -> str:
    """An MSH field as a header value: first repetition, first component, unescaped, trimmed."""
    raw = fields[n] if n < len(fields) else ""
    if not raw:
        return ""
    for sep in rules.inner_separators:  # the first leaf ends at the first of any of them
        if sep in raw:
            raw = raw[:raw.index(sep)]
    if rules.escape and rules.escape in raw:
        raw = rules.unescape(raw)
    return raw.strip()


def _message_type_parts(raw: str, rules: EscapeRules) -> tuple[str, str, str]:
    """MSH-9 -> (message code, trigger event, message structure)."""
    if not raw:
        return "", "", ""
    rep, comp, sub, esc = rules.repetition, rules.component, rules.subcomponent, rules.escape
    if rep and rep in raw:
        raw = raw.split(rep, 1)[0]
    parts = raw.split(comp, 3)[:3] if comp else [raw]
    out = []
    for part in parts:
        if sub and sub in part:
            part = part.split(sub, 1)[0]
        if esc and esc in part:
            part = rules.unescape(part)
        out.append(part.strip())
    out += [""] * (3 - len(out))
    return out[0], out[1], out[2]


_PARTIAL_KEYS = (("sending_application", 3), ("sending_facility", 4), ("receiving_application", 5),
                 ("receiving_facility", 6), ("control_id", 10), ("processing_id", 11), ("version", 12))


def partial_msh_from_text(text: str) -> dict:
    """Whatever MSH header values can be read from text that failed to parse.

    Looks for ``MSH`` anywhere (garbage before it is tolerated here), reads its
    delimiters if they are usable (the standard ones otherwise) and returns the keys
    of :attr:`Hl7ParseError.partial_msh` that have a value.
    """
    at = text.find("MSH")
    if at == -1 or len(text) < at + 4:
        return {}
    line = text[at:]
    for term in ("\r", "\n"):
        cut = line.find(term)
        if cut != -1:
            line = line[:cut]
    if len(line) < 4:
        return {}
    fs = line[3]
    enc_end = line.find(fs, 4)
    delims = Delimiters.from_msh(fs, line[4:enc_end if enc_end != -1 else len(line)])
    if delims is None:
        if fs != "|":
            return {}
        delims = Delimiters()
    rules = rules_for(delims, "")
    fields = line.split(fs)
    fields.insert(1, fs)
    code, trigger, _ = _message_type_parts(fields[9] if len(fields) > 9 else "", rules)
    found = {key: _head_value(fields, n, rules) for key, n in _PARTIAL_KEYS}
    found["message_type"] = f"{code}^{trigger}" if trigger else code
    return {k: v for k, v in found.items() if v}


def _partial_from_message(msg: Hl7Message) -> dict:
    found = {
        "sending_application": msg.sending_application, "sending_facility": msg.sending_facility,
        "receiving_application": msg.receiving_application,
        "receiving_facility": msg.receiving_facility, "control_id": msg.control_id,
        "processing_id": msg.processing_id, "version": msg.version,
        "message_type": msg.message_type,
    }
    return {k: v for k, v in found.items() if v}


def _snippet(text: str) -> str:
    return repr(text[:24]) + ("..." if len(text) > 24 else "")


def _not_hl7(text: str, why: str) -> Hl7ParseError:
    return Hl7ParseError([Hl7Error(f"Not an HL7 v2 message: {why}", "MSH", 1, code="100")],
                         partial_msh_from_text(text))


def _field_label(field: int, version: str) -> str:
    from .names import field_name  # only on the error path: hl7apy is slow
    name = field_name("MSH", field, version or "2.5")
    return f"MSH-{field} ({name})" if name else f"MSH-{field}"


def parse_message(data: bytes | str, fallback_charset: str = "gb18030") -> Hl7Message:
    """Parse one message. Bytes are decoded with :func:`~.charset.decode_message`
    (MSH-18, strictly); a str is taken as already decoded.

    Raises :class:`Hl7ParseError` when the input is not HL7 (no ``MSH`` plus usable
    delimiters at the start), when its bytes do not fit its character set, and when
    MSH-9, MSH-10 or MSH-12 is empty (one error each, code 101), so the caller can
    answer AR with everything that could be read.
    """
    if isinstance(data, str):
        text, charset, warnings = data, "", []
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        head = raw[:16].lstrip(b"\x0b\r\n\t ")
        if not (head.startswith(b"MSH") or head.startswith(b"\xef\xbb\xbfMSH")):
            text = raw.decode("utf-8", "replace")
            raise _not_hl7(text.lstrip(_FRAME_START),
                           f"it does not start with an MSH segment (it starts with {_snippet(text)})")
        text, charset, warnings = decode_message(raw, fallback_charset)
    else:
        raise TypeError(f"parse_message takes bytes or str, not {type(data).__name__}")

    if text[:1] in _FRAME_START:
        text = text.lstrip(_FRAME_START)
    if text[-1:] in _FRAME_END:
        text = text.rstrip(_FRAME_END)
    if not text.startswith("MSH"):
        if not text:
            raise Hl7ParseError([Hl7Error("Not an HL7 v2 message: it is empty", "MSH", 1, code="100")])
        raise _not_hl7(text, f"it does not start with an MSH segment (it starts with {_snippet(text)})")

    # ---- delimiters (MSH-1, MSH-2) ----
    fs = text[3:4]
    enc_end = text.find(fs, 4) if fs else -1
    if enc_end == -1:
        enc_end = len(text)
    encoding_chars = text[4:enc_end]
    for term in "\r\n":
        if term in encoding_chars:
            encoding_chars = encoding_chars.split(term, 1)[0]
    rules = _rules_cache.get((fs, encoding_chars, charset))
    if rules is None:
        delimiters = Delimiters.from_msh(fs, encoding_chars)
        if delimiters is None:
            raise _not_hl7(text, f"MSH-1/MSH-2 {_snippet(text[3:enc_end])} are not usable "
                                 f"delimiters (expected e.g. '|^~\\&')")
        rules = rules_for(delimiters, charset)
        if len(_rules_cache) < 64:
            _rules_cache[(fs, encoding_chars, charset)] = rules
    if len(encoding_chars) < 4:
        warnings.append(f"MSH-2 (Encoding Characters) {encoding_chars!r} has fewer than 4 "
                        f"characters; the missing separators are treated as absent")

    # ---- segments ----
    if "\r" in text:
        sep = "\r"
        lines = (text.replace("\r\n", "\r") if "\n" in text else text).split("\r")
    else:
        sep = "\n"
        lines = text.split("\n")
    segments: list[Segment] = []
    known = _KNOWN_PREFIXES.get(fs)
    if known is None:
        known = {}
        if len(_KNOWN_PREFIXES) < 32:  # one table per field separator in use
            _KNOWN_PREFIXES[fs] = known
    for line in lines:
        name = known.get(line[:4])
        if name is None:
            if not line or line.isspace():
                continue
            name = _segment_name(line, fs)
            if name is None:
                prev = segments[-1]  # the first line is MSH, so there always is one
                segments[-1] = Segment(prev.name, prev.index, prev._line + sep + line, rules)
                warnings.append(f"a line starting {_snippet(line)} is not a segment; kept as text "
                                f"of the {prev.name} segment before it (#{prev.index})")
                continue
        segments.append(Segment(name, len(segments) + 1, line, rules))

    msg = Hl7Message(segments, rules.delimiters, charset=charset, warnings=warnings, text=text)

    # ---- required header fields ----
    if not (msg.message_code and msg.control_id and msg.version):
        errors = []
        for field, present in ((9, msg.message_code), (10, msg.control_id), (12, msg.version)):
            if not present:
                errors.append(Hl7Error(f"{_field_label(field, msg.version)} is required but empty",
                                       "MSH", 1, field, code="101"))
        raise Hl7ParseError(errors, _partial_from_message(msg))
    if msg.version not in SUPPORTED_VERSIONS:
        warnings.append(f"MSH-12 (Version ID) {msg.version!r} is outside the versions this "
                        f"gateway is tested with (2.3 to 2.8.2)")
    return msg

