"""HL7 v2 cases whose messages the kit derives from its samples: each message type, original and
enhanced acknowledgment modes, a duplicate, a sender that is not who MSH-4 says, malformed framing
(MLLP) or content (HTTP), and character sets. Each derived message gets a control id (MSH-10)
unique to the run, so a server's duplicate detection never answers an older ACK."""
from __future__ import annotations

import socket
import uuid
from urllib.parse import urlparse

from conformance.runner import (GENERATORS, CaseResult, CaseSkipped, Exchange, KitContext, _decode, hl7_field,
                                hl7_segments)

HL7_SPEC = "https://www.hl7.org/implement/standards/product_brief.cfm?product_id=185"
UNSUPPORTED = {"200", "201", "202", "203"}     # HL7 table 0357: unsupported message type / event / version


def msh_set(raw: bytes, changes: dict[int, str]) -> bytes:
    """The message with MSH fields replaced (MSH-1 is the separator; ``changes`` use HL7 numbers)."""
    separator = raw[3:4]
    lines = raw.split(b"\r")
    fields = lines[0].split(separator)
    for number, value in changes.items():
        index = number - 1
        while len(fields) <= index:
            fields.append(b"")
        encoding = "gb18030" if b"18030" in lines[0] else "utf-8"
        fields[index] = value.encode(encoding)
    lines[0] = separator.join(fields)
    return b"\r".join(lines)


def fresh(raw: bytes, run: str, changes: dict[int, str] | None = None) -> bytes:
    """A copy of ``raw`` with a new MSH-10 (and other MSH changes)."""
    return msh_set(raw, {10: f"KIT{run}{uuid.uuid4().hex[:8]}".upper(), **(changes or {})})


def _ack(ctx: KitContext, result: CaseResult, raw: bytes) -> tuple[str | None, list[list[str]]]:
    exchange, ack = ctx.send_hl7(raw)
    result.exchanges.append(exchange)
    segments = hl7_segments(ack)
    return hl7_field(segments, "MSA", 1), segments


def _err_codes(segments: list[list[str]]) -> set[str]:
    return {fields[3].split("^")[0] for fields in segments if fields[0] == "ERR" and len(fields) > 3}


def gen_hl7_messages(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """Each sample message type accepted with MSA-2 echoing MSH-10; original mode gets an application
    ACK (AA), enhanced mode an accept ACK (CA) over MLLP; a duplicate the same ACK; a foreign MSH-4
    refused; the GB 18030 sample accepted."""
    if not ctx.hl7:
        raise CaseSkipped("needs an HL7 endpoint (--hl7 URL or mllp://host:port)")
    run = uuid.uuid4().hex[:6]
    claimed = set(ctx.options.get("hl7_types") or [])
    mllp = urlparse(ctx.hl7).scheme == "mllp"
    for name in case.get("samples", []):
        raw = ctx.sample(name)
        kind = (hl7_field(hl7_segments(_decode(raw)), "MSH", 9) or "").split("^")
        label = "^".join(kind[:2])
        message = fresh(raw, run)
        code, segments = _ack(ctx, result, message)
        if code == "AR" and _err_codes(segments) & UNSUPPORTED and label not in claimed:
            result.skip_check(f"{label} accepted", f"the server says it does not support {label} (ERR-3 "
                                                   f"{sorted(_err_codes(segments) & UNSUPPORTED)})")
            continue
        explained = code == "AE" and any(f[0] == "ERR" for f in segments)
        result.check(f"{label} ({name}) processed (AA, or AE saying why)", code in ("AA", "CA") or explained,
                     f"{label}: MSA-1 {code!r}, expected AA (or AE with an ERR segment)",
                     spec=HL7_SPEC + " (ch. 2, 2.9.2)")
        if explained:
            reason = next((f[8] for f in segments if f[0] == "ERR" and len(f) > 8 and f[4:5] == ["E"]), "")
            result.check(f"{label} ({name}) accepted without an application error", False,
                         f"{label}: AE ({reason[:200]}); the sample's content (its facility, or an order it "
                         "refers to) may not fit this server's rules: try your own message", level="SHOULD",
                         spec=HL7_SPEC + " (ch. 2, 2.9.2)")
        sent_id = hl7_field(hl7_segments(_decode(message)), "MSH", 10)
        result.check(f"{label} ACK echoes MSH-10 in MSA-2", hl7_field(segments, "MSA", 2) == sent_id,
                     f"{label}: MSA-2 {hl7_field(segments, 'MSA', 2)!r}, sent MSH-10 {sent_id!r}",
                     spec=HL7_SPEC + " (ch. 2, 2.15.8 MSA)")
        sender = hl7_field(hl7_segments(_decode(message)), "MSH", 4)
        result.check(f"{label} ACK is addressed back to the sender (MSH-6 = sent MSH-4)",
                     (hl7_field(segments, "MSH", 6) or "").split("^")[0] == (sender or "").split("^")[0],
                     f"{label}: ACK MSH-6 {hl7_field(segments, 'MSH', 6)!r}, sender {sender!r}", level="SHOULD",
                     spec=HL7_SPEC + " (ch. 2, 2.9.2)")
    base = ctx.sample(case.get("base_sample", "rde_o11_new_imported.hl7"))
    code, _ = _ack(ctx, result, fresh(base, run, {15: "", 16: ""}))
    result.check("original mode (MSH-15/16 empty): application ACK AA", code == "AA",
                 f"original mode: MSA-1 {code!r}; an original-mode sender needs AA/AE/AR, never CA",
                 spec=HL7_SPEC + " (ch. 2, 2.9.2 original acknowledgment rules)")
    code, _ = _ack(ctx, result, fresh(base, run, {15: "AL", 16: "NE"}))
    wanted = ("CA",) if mllp else ("CA", "AA")
    result.check("enhanced mode (MSH-15 AL, MSH-16 NE): accept ACK", code in wanted,
                 f"enhanced mode over {'MLLP' if mllp else 'HTTP'}: MSA-1 {code!r}, expected {' or '.join(wanted)}",
                 spec=HL7_SPEC + " (ch. 2, 2.9.3 enhanced acknowledgment rules)")
    duplicate = fresh(base, run)
    _, first = _ack(ctx, result, duplicate)
    _, second = _ack(ctx, result, duplicate)
    result.check("the same message twice gets the same MSA-1 and MSA-2",
                 [hl7_field(first, "MSA", n) for n in (1, 2)] == [hl7_field(second, "MSA", n) for n in (1, 2)],
                 "the duplicate was answered differently", spec=HL7_SPEC + " (ch. 2, 2.10.1)")
    code, segments = _ack(ctx, result, fresh(base, run, {4: "CONFORMANCE_KIT_NOT_YOUR_FACILITY"}))
    result.check("a message whose MSH-4 is not the sender's is refused (AR/AE with ERR)",
                 code in ("AR", "AE") and any(f[0] == "ERR" for f in segments),
                 f"MSH-4 of another facility: MSA-1 {code!r}", level=case.get("facility_level", "SHOULD"),
                 spec=HL7_SPEC + " (ch. 2, 2.15.9.4 MSH-4 sending facility)")
    for name in case.get("charset_samples", []):
        code, _ = _ack(ctx, result, fresh(ctx.sample(name), run))
        charset = hl7_field(hl7_segments(_decode(ctx.sample(name))), "MSH", 18)
        result.check(f"a message in {charset} (MSH-18) is accepted", code in ("AA", "CA"),
                     f"{name}: MSA-1 {code!r}", spec=HL7_SPEC + " (ch. 2, 2.15.9.18 MSH-18 character set)")
    mislabelled = fresh(base, run, {18: "UNICODE UTF-8"}).replace(
        b"PID|", b"PID|", 1) + "\r".join(["NTE|1||\u738b"]).encode("gb18030") + b"\r"
    code, _ = _ack(ctx, result, mislabelled)
    result.check("bytes that are not the declared charset (GB 18030 in a UTF-8 message) are not AA",
                 code in ("AE", "AR"), f"mislabelled charset: MSA-1 {code!r}", level="SHOULD",
                 spec=HL7_SPEC + " (ch. 2, 2.15.9.18 MSH-18 character set)")


def gen_hl7_framing(ctx: KitContext, case: dict, result: CaseResult) -> None:
    """Malformed framing (MLLP) or content (HTTP) is refused without harming the next message."""
    if not ctx.hl7:
        raise CaseSkipped("needs an HL7 endpoint (--hl7 URL or mllp://host:port)")
    run = uuid.uuid4().hex[:6]
    base = ctx.sample(case.get("base_sample", "rde_o11_new_imported.hl7"))
    parsed = urlparse(ctx.hl7)
    if parsed.scheme == "mllp":
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 2575
        for what, frame in (("no end block", b"\x0b" + fresh(base, run) + b"\r"),
                            ("no start block", fresh(base, run) + b"\x1c\r"),
                            ("garbage, not HL7", b"\x0bthis is not an HL7 message\x1c\r")):
            answer = _raw_mllp(host, port, frame, float(case.get("framing_timeout", 2)))
            result.exchanges.append(Exchange("MLLP", ctx.hl7, {}, f"({what})", None, {}, _decode(answer)))
            result.check(f"MLLP {what}: no AA", b"MSA|AA" not in answer and b"MSA|CA" not in answer,
                         f"MLLP frame with {what} was acknowledged as accepted",
                         spec=HL7_SPEC + " (Appendix C, MLLP block format)")
    else:
        for what, body in (("a body that is not HL7", b"this is not an HL7 message"),
                           ("a message cut before the end of MSH", fresh(base, run)[:40])):
            headers = {"Content-Type": "x-application/hl7-v2+er7"}
            if ctx.token:
                headers["Authorization"] = f"Bearer {ctx.token}"
            response = ctx.session.post(ctx.hl7, data=body, headers=headers, timeout=ctx.timeout)
            result.exchanges.append(Exchange("POST", ctx.hl7, {}, _decode(body), response.status_code,
                                             dict(response.headers), response.text[:2000]))
            text = response.text
            refused = (400 <= response.status_code < 500) or "MSA|AR" in text or "MSA|AE" in text
            result.check(f"HTTP: {what} is refused (4xx or AR/AE), not a server error", refused,
                         f"{what}: HTTP {response.status_code}, {text[:120]!r}", spec=HL7_SPEC + " (ch. 2, 2.9.2)")
    code, _ = _ack(ctx, result, fresh(base, run))
    result.check("a good message right after the malformed ones is accepted", code in ("AA", "CA"),
                 f"MSA-1 {code!r} for a good message after malformed input", spec=HL7_SPEC + " (ch. 2, 2.9.2)")


def _raw_mllp(host: str, port: int, frame: bytes, timeout: float) -> bytes:
    received = b""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(frame)
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            while b"\x1c" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (socket.timeout, OSError):
            pass
    return received


GENERATORS.update({"hl7_messages": gen_hl7_messages, "hl7_framing": gen_hl7_framing})
