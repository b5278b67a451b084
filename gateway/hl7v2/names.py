"""Human-readable HL7 field names, for error texts a person can act on.

The names come from hl7apy's per-version definitions. Importing and searching them
takes a noticeable fraction of a second, so this module is only ever used when a
message has already failed (``MSH-9 (Message Type) is required but empty``), never
while reading a good one; answers are cached.
"""
from __future__ import annotations

from functools import lru_cache

__all__ = ["field_name"]

# Versions hl7apy describes, and where a version it does not know is looked up instead.
_HL7APY_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2")
_NEAREST = {"2.7.1": "2.7", "2.9": "2.8.2", "2.9.1": "2.8.2"}

# hl7apy spells names as UPPER_SNAKE; HL7 prints them in title case with these kept as is.
_ACRONYMS = {"ID", "HL7", "UDI", "DI", "PI", "NDC", "ISO", "SSN", "MSH", "ERR", "CE", "CWE",
             "URL", "DNS", "OID", "UID", "GUID", "EI", "XCN", "PPN", "DEA", "CLIA", "NPI"}
_SMALL_WORDS = {"of", "and", "or", "for", "to", "the", "a", "an", "in", "on", "by", "with", "at"}


def _title(upper_snake: str) -> str:
    words = upper_snake.split("_")
    out = []
    for i, word in enumerate(words):
        if word in _ACRONYMS:
            out.append(word)
        elif i and word.lower() in _SMALL_WORDS:
            out.append(word.lower())
        else:
            out.append(word.capitalize())
    return " ".join(out)


def _lookup(segment: str, field: int, version: str) -> str:
    from hl7apy import load_reference  # deferred: hl7apy is slow to import
    try:
        ref = load_reference(f"{segment}_{field}", "Field", version)
    except Exception:  # hl7apy raises its own ChildNotFound/UnsupportedVersion types
        return ""
    try:
        return _title(ref[3]) if ref and isinstance(ref[3], str) else ""
    except (IndexError, TypeError):
        return ""


@lru_cache(maxsize=4096)
def field_name(segment: str, field: int, version: str = "2.5") -> str:
    """``field_name('MSH', 9) -> 'Message Type'``; ``''`` for Z-segments and unknowns.

    The name of the message's own version is preferred; a field withdrawn in that
    version (ERR-1 in v2.8) or a version hl7apy lacks falls back to other versions.
    """
    segment = (segment or "").strip().upper()
    if len(segment) != 3 or not segment.isalnum() or segment.startswith("Z") or field < 1:
        return ""
    version = (version or "").strip()
    if version not in _HL7APY_VERSIONS:
        version = _NEAREST.get(version, "2.5")
    for candidate in (version, "2.5", "2.8.2", "2.3"):
        name = _lookup(segment, field, candidate)
        if name:
            return name
    return ""
