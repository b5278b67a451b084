"""Bounds: what one request may ask of the gateway, and how the answer stays small when it is bad.

Without them one upload decides how long everyone else waits: a 2 MB CSV of a million bad rows
ran 46 s and answered 138 MB; one HL7 message with 5,000 orders held the store's write lock for
seconds, so every other sender waited. Each limit is an operator setting (``gateway/config.py``,
README "Configuration") and each refusal names it, so a client knows what to change:

==========================  ====================================================  ================
key                          counts                                                refusal
==========================  ====================================================  ================
``MAX_CSV_ROWS``             data rows of one CSV export                           HTTP 413
``MAX_TRANSACTION_ENTRIES``  entries of one FHIR transaction Bundle                HTTP 413
``MAX_BATCH_ENTRIES``        entries of one FHIR batch Bundle                      HTTP 413
``MAX_HL7_ORDERS``           orders of one HL7 message (ORC, else OBR segments)    ACK AR, ERR 100
``MAX_ERRORS_REPORTED``      errors listed in one answer; the rest are counted     (not a refusal)
==========================  ====================================================  ================

Counting happens before anything is mapped, validated or stored, and costs one pass over bytes
the gateway has already read (``bytes.count`` in C, a csv scan only near the limit), so a refusal
costs about what reading the body did. A refused body is still logged raw (message log).

This module only counts and cuts; the pipelines decide what to answer.
"""
from __future__ import annotations

import csv
import io
from typing import Iterable, Sequence, TypeVar

T = TypeVar("T")

ORDER_SEGMENTS = ("ORC", "OBR")
"""An order group starts at ORC (RDE, RDS, OMP, ORM); ORU results carry only OBR."""


def first_and_count(items: Sequence[T], limit: int) -> tuple[list[T], int]:
    """The first ``limit`` items and how many more there were (``limit`` <= 0 means no cap)."""
    if limit <= 0 or len(items) <= limit:
        return list(items), 0
    return list(items[:limit]), len(items) - limit


def order_segments(segment_names: Iterable[str]) -> tuple[str, list[int]]:
    """The segment that starts an order in this message and the 1-based positions (among segments of
    that name) where it occurs: ORC when the message has any, else OBR."""
    positions: dict[str, list[int]] = {name: [] for name in ORDER_SEGMENTS}
    for name in segment_names:
        if name in positions:
            positions[name].append(len(positions[name]) + 1)
    for name in ORDER_SEGMENTS:
        if positions[name]:
            return name, positions[name]
    return ORDER_SEGMENTS[0], []


def csv_rows_over(raw: bytes, limit: int, delimiter: str = ",", encoding: str = "utf-8") -> int | None:
    """When the file has more than ``limit`` data rows (header and blank lines excluded): its number of
    lines, for the refusal; else None.

    The line count (one C pass) settles almost every file; a file with more lines than the limit is
    read as CSV only until its row ``limit + 1`` (a quoted cell may hold line breaks), so a refusal
    costs the line count and ``limit`` rows, whatever the file's length. Undecodable bytes or broken
    CSV are the reader's to report, so they count as fewer rows here, never as a refusal."""
    lines = raw.count(b"\n")
    if limit <= 0 or lines <= limit:
        return None
    try:
        text = raw.decode("utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding)
    except (UnicodeDecodeError, LookupError):
        return None
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    count = -1                       # the header line
    try:
        for row in rows:
            if count < 0 or any(cell.strip() for cell in row):
                count += 1
                if count > limit:
                    return lines + (0 if raw.endswith(b"\n") else 1)
    except csv.Error:
        pass
    return None
