"""Stored JSON, deflated against a preset dictionary: the column type of resource and audit content.

A stored order's JSON is about 3 kB, and most of it is the same in every order: element names,
profile and code-system URLs, the gateway's own tags. Deflate with a *preset dictionary* (zlib's
``zdict``) starts each row with that shared text already seen, so a 3 kB order takes about 550
bytes and a Patient about 280 (plain zlib: 1,220 and 630; bench/RESULTS.md). The column type does
it at the boundary, so every query and reader still sees the JSON bytes it always did.

Format of a stored value: ``b"\\x01"`` + raw deflate with ``content-dictionary-1.bin``. JSON never
starts with byte 1, so rows written before compression existed (plain JSON) are read as they are,
and the empty value (``CURRENT_CONTENT``, a version whose JSON lives in ``resources``) stays empty.
The dictionary is part of the format: rows written with it can only be read with it, so it is never
edited; a better dictionary would be ``content-dictionary-2.bin`` behind marker byte 2 (a test pins
the file's digest). It was cut once from the resources and AuditEvents that ``fhir-gateway demo``
stores (every sample message), leaving out those carrying the bench sample's identifiers, so the
benchmark does not measure a dictionary that already contains its own message.
"""
from __future__ import annotations

import zlib
from pathlib import Path

from sqlalchemy.types import LargeBinary, TypeDecorator

DICTIONARY_FILE = Path(__file__).with_name("content-dictionary-1.bin")
_MARKER = b"\x01"
_DICTIONARY = DICTIONARY_FILE.read_bytes()
_LEVEL = 6       # level 1 saves ~20 µs per row and costs ~15% more bytes


def deflate(content: bytes) -> bytes:
    if not content:
        return content
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _DICTIONARY)
    return _MARKER + packer.compress(content) + packer.flush()


def inflate(stored: bytes) -> bytes:
    if stored[:1] != _MARKER:
        return stored                      # plain JSON from before compression, or empty
    unpacker = zlib.decompressobj(-15, _DICTIONARY)
    return unpacker.decompress(stored[1:]) + unpacker.flush()


class StoredJson(TypeDecorator):
    """JSON bytes in Python, deflated bytes in the database (BLOB on SQLite, bytea on PostgreSQL)."""
    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001
        return deflate(bytes(value)) if value is not None else None

    def process_result_value(self, value, dialect):  # noqa: ANN001
        return inflate(bytes(value)) if value is not None else None


# ------------------------------------------------------------------ the message log's ACK and detail
# Written once per message and read only when a message is looked at, resent or replayed; an ACK
# with its warning ERR segments and the detail JSON that repeats them are about 1.4 kB and deflate to
# 0.65 kB, which lets two message-log rows share a 4 kB SQLite page instead of one row taking it.
# Plain raw deflate (no dictionary) behind marker byte 0: neither an ACK (``MSH``) nor JSON starts
# with byte 0, so rows written before are read as they are. The raw message is never deflated: the
# message browser searches its bytes in SQL.
_PLAIN_MARKER = b"\x00"


def deflate_plain(content: bytes) -> bytes:
    if not content:
        return content
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
    return _PLAIN_MARKER + packer.compress(content) + packer.flush()


def inflate_plain(stored: bytes) -> bytes:
    if stored[:1] != _PLAIN_MARKER:
        return stored
    return zlib.decompress(stored[1:], -15)


class DeflatedBytes(TypeDecorator):
    """Bytes in Python, deflated bytes in the database."""
    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001
        return deflate_plain(bytes(value)) if value is not None else None

    def process_result_value(self, value, dialect):  # noqa: ANN001
        return inflate_plain(bytes(value)) if value is not None else None


class DeflatedText(TypeDecorator):
    """Text in Python, deflated UTF-8 in the database. A value copied from the TEXT column it was
    before (SQLite keeps its storage class) is read as it is."""
    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):  # noqa: ANN001
        return deflate_plain(value.encode("utf-8")) if value is not None else None

    def process_result_value(self, value, dialect):  # noqa: ANN001
        if value is None or isinstance(value, str):
            return value
        return inflate_plain(bytes(value)).decode("utf-8")
