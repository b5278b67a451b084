"""Turning the bytes of a message into text, as MSH-18 (Character Set) says.

MSH itself is ASCII, so MSH-18 can be read from the raw bytes before anything is
decoded. The declaration is then applied strictly: a byte that does not belong to
the declared character set is an error naming MSH-18 and the byte offset, never a
replacement character inside a patient's name. Without a declaration the message
is tried as UTF-8, then as the configured fallback (GB18030 in this province), and
a warning says which one was used.
"""
from __future__ import annotations

from .errors import Hl7Error, Hl7ParseError

__all__ = ["decode_message", "codec_for_charset"]

_BOM = b"\xef\xbb\xbf"

# HL7 table 0211 (and the spellings hospital systems actually send), with blanks,
# hyphens and underscores removed and upper-cased, -> Python codec.
_CHARSETS = {
    "ASCII": "ascii", "USASCII": "ascii", "ISOIR6": "ascii",
    "8859/1": "latin-1", "ISOIR100": "latin-1", "ISO88591": "latin-1", "LATIN1": "latin-1",
    "8859/2": "iso8859-2", "8859/3": "iso8859-3", "8859/4": "iso8859-4", "8859/5": "iso8859-5",
    "8859/6": "iso8859-6", "8859/7": "iso8859-7", "8859/8": "iso8859-8", "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODEUTF8": "utf-8", "UTF8": "utf-8", "ISOIR192": "utf-8",
    "GB180302000": "gb18030", "GB18030": "gb18030", "GB180302005": "gb18030",
    "GBK": "gbk", "CP936": "gbk", "GB2312": "gb2312", "GB231280": "gb2312",
    "BIG5": "big5", "KSX1001": "euc_kr", "EUCKR": "euc_kr",
    "WINDOWS1252": "cp1252", "CP1252": "cp1252",
}
# 'UNICODE' alone names no encoding form; senders that write it send UTF-8 in practice.
_AMBIGUOUS = {"UNICODE": "utf-8"}
# Named in table 0211 but not decodable here: UTF-16/32 cannot travel in MLLP frames,
# and the ISO 2022 / CNS sets need code-switching this gateway does not do.
_SUPPORTED_NAMES = "UNICODE UTF-8, GB 18030-2000, GBK, GB2312, BIG-5, KS X 1001, ASCII, 8859/1..8859/15"

_codec_cache: dict[str, tuple[str, str | None] | None] = {}


def _normalise(name: str) -> str:
    return name.upper().replace(" ", "").replace("-", "").replace("_", "")


def codec_for_charset(declared: str) -> str | None:
    """Python codec for an MSH-18 value, or None when it is not one we can decode."""
    found = _codec_lookup(declared)
    return found[0] if found else None


def _codec_lookup(declared: str) -> tuple[str, str | None] | None:
    """(codec, warning or None), cached: the same few declarations arrive all day."""
    try:
        return _codec_cache[declared]
    except KeyError:
        pass
    key = _normalise(declared)
    if key in _CHARSETS:
        found: tuple[str, str | None] | None = (_CHARSETS[key], None)
    elif key in _AMBIGUOUS:
        found = (_AMBIGUOUS[key], f"MSH-18 (Character Set) {declared!r} names no encoding form; "
                                  f"decoded as {_AMBIGUOUS[key]}")
    else:
        found = None
    if len(_codec_cache) < 256:
        _codec_cache[declared] = found
    return found


def _msh_line(raw: bytes) -> tuple[int, bytes]:
    """(offset, bytes) of the MSH line, after MLLP start byte and blank lines; (-1, b'') if none."""
    start = 0
    if not raw.startswith(b"MSH"):
        while start < len(raw) and raw[start] in b"\x0b\r\n\t ":
            start += 1
    if not raw.startswith(b"MSH", start):
        return -1, b""
    end = raw.find(b"\r", start)
    lf = raw.find(b"\n", start, end if end != -1 else len(raw))
    if lf != -1:
        end = lf
    return start, raw[start:end if end != -1 else len(raw)]


def _msh18(msh: bytes) -> str:
    """First repetition, first component of MSH-18, read from the raw MSH line."""
    if len(msh) < 5:
        return ""
    fields = msh.split(msh[3:4], 18)
    if len(fields) < 18:
        return ""
    value = fields[17]
    enc = fields[1]
    for sep in (enc[1:2], enc[0:1]):  # repetition, then component
        if sep and sep in value:
            value = value.split(sep, 1)[0]
    value = value.strip().decode("ascii", "replace")
    return "" if value == '""' else value


def partial_msh_from_bytes(raw: bytes, codec: str = "utf-8") -> dict:
    """Whatever MSH values can be read from bytes that will not decode, for the AR."""
    from .message import partial_msh_from_text  # the text reader lives with the parser
    _, msh = _msh_line(raw)
    if not msh:
        at = raw.find(b"MSH")
        if at == -1:
            return {}
        end = min((i for i in (raw.find(b"\r", at), raw.find(b"\n", at)) if i != -1),
                  default=len(raw))
        msh = raw[at:end]
    try:
        text = msh.decode(codec, "replace")
    except LookupError:
        text = msh.decode("utf-8", "replace")
    return partial_msh_from_text(text)


def _charset_error(text: str, raw: bytes, codec: str = "utf-8", code: str = "102") -> Hl7ParseError:
    """102 (data type error): the bytes are not text of the character set; 103 for an MSH-18 name
    this gateway does not know (table 0211). Never 207: resending the same bytes cannot help."""
    return Hl7ParseError([Hl7Error(text, "MSH", 1, 18, code=code)],
                         partial_msh_from_bytes(raw, codec))


def _field_label() -> str:
    from .names import field_name
    name = field_name("MSH", 18)
    return f"MSH-18 ({name})" if name else "MSH-18"


def decode_message(raw: bytes, fallback_charset: str = "gb18030") -> tuple[str, str, list[str]]:
    """-> (text, python codec used, warnings), decoding strictly as MSH-18 declares.

    Raises :class:`Hl7ParseError` (naming MSH-18) for a declaration this gateway
    cannot decode and for bytes that do not fit the declaration. A UTF-8 byte order
    mark is dropped (also right after an MLLP start byte).
    """
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    bom_at = -1
    if raw.startswith(_BOM):
        bom_at = 0
    elif raw[:1] == b"\x0b" and raw.startswith(_BOM, 1):
        bom_at = 1
    if bom_at != -1:
        raw = raw[:bom_at] + raw[bom_at + 3:]

    def wire_offset(i: int) -> int:  # report offsets in the caller's bytes, BOM included
        return i + 3 if bom_at != -1 and i >= bom_at else i

    _, msh = _msh_line(raw)
    declared = _msh18(msh) if msh else ""
    warnings: list[str] = []

    if declared:
        found = _codec_lookup(declared)
        if found is None:
            raise _charset_error(
                f"{_field_label()} declares {declared!r}, which this gateway cannot decode "
                f"(supported: {_SUPPORTED_NAMES})", raw, code="103")
        codec, warning = found
        if warning:
            warnings.append(warning)
        try:
            return raw.decode(codec), codec, warnings
        except UnicodeDecodeError as exc:
            bad = raw[exc.start:exc.end]
            raise _charset_error(
                f"{_field_label()} declares {declared!r} but byte offset {wire_offset(exc.start)} "
                f"(0x{bad.hex().upper()}) is not valid {codec}; the message was not decoded "
                f"rather than have its text altered", raw, codec) from None

    if raw.isascii():  # every supported character set reads ASCII the same way
        return raw.decode("ascii"), "utf-8", warnings
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        utf8_error = exc
    else:
        if bom_at == -1:
            warnings.append("MSH-18 (Character Set) is empty; the message was decoded as utf-8")
        return text, "utf-8", warnings
    try:
        text = raw.decode(fallback_charset)
    except (UnicodeDecodeError, LookupError) as exc:
        where = f" (byte offset {wire_offset(exc.start)})" if isinstance(exc, UnicodeDecodeError) else ""
        raise _charset_error(
            f"{_field_label()} is empty and the message is neither UTF-8 (byte offset "
            f"{wire_offset(utf8_error.start)}) nor {fallback_charset}{where}; declare the "
            f"character set in MSH-18", raw) from None
    warnings.append(f"MSH-18 (Character Set) is empty and the message is not valid UTF-8 "
                    f"(byte offset {wire_offset(utf8_error.start)}); decoded as {fallback_charset}, "
                    f"the configured fallback")
    return text, fallback_charset, warnings
