"""The HL7 v2 ingest pipeline: bytes in, ACK out; never raises.

    log raw -> parse -> (duplicate? same ACK) -> map -> validate -> store (+ Provenance) -> ACK

Whatever happens, the raw message is in the message log before the ACK leaves, so a rejected or
failed message can be fixed and replayed. Two write transactions per message: the raw bytes alone,
then the log entry's outcome (sender, control id, status, ACK) together with the resources, index
rows, Provenance and outbox rows (``store_mapped``'s ``before_commit``), so a crash never leaves a
message half stored. Where the ACK codes are decided:

* **AR**: not HL7, no message type, a test/debug message (MSH-11) in production, an unknown
  message type (unless configured to accept), more orders than ``MAX_HL7_ORDERS`` (``gateway.bounds``),
  or the gateway failed inside (kept for replay);
* **AE**: the message was read, but a value is wrong (bad date, unknown table code), a resource
  breaks its profile, or an order number clashes; ERR names segment, field and why;
* **AA**: stored (and queued for routing); warnings go back as ERR segments with severity W.

A **safety report** (a message whose mapping makes an AdverseEvent) is validated in the context
``safety-report``: a profile rule marked ``warning-in-context: safety-report`` (profiles/README,
"Context") is a warning there, so a report of harm is never refused for missing administrative
detail (an imported device without its pilot-zone approval). What is stored despite such a rule is
flagged with ``meta.tag`` :data:`REPORT_FLAG_SYSTEM` | ``needs-review``, and so is the report's
AdverseEvent: ``AdverseEvent?_tag=<system>|needs-review`` finds them.

ERR-3 codes (HL7 table 0357) say whether resending can help. Validation issues map by their
OperationOutcome code (:data:`ERROR_CODE_OF_ISSUE`): ``required`` and ``invariant`` (the profiles'
invariants are conditional requirements: "an imported drug needs its approval") -> 101 required
field missing; ``structure`` and ``extension`` -> 102 data type error; ``code-invalid`` and
``value`` (bindings, fixed and pattern values) -> 103 table value not found; anything else
(``processing``: a rule that could not be evaluated) -> 207 application internal error. 207 is
kept for the gateway's own failures, which a resend may get past; a 100-series code tells the
sender's engine the message itself must change.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy.engine import Connection

from gateway.bounds import first_and_count, order_segments
from gateway.hl7v2 import AckCode, Hl7Error, Hl7Message, Hl7ParseError, build_ack, parse_message
from gateway.ingest.messagelog import LoggedMessage, MessageLog, ack_code
from gateway.mapping.engine import MappedMessage, MappedResource, MappingSet
from gateway.mapping.terminology import Terminology
from gateway.observability import about_message, count_message, stage
from gateway.store import ResourceStore, new_resource_id, now_instant
from gateway.store.access import bound_organization, current_sender, sending_as
from gateway.store.resources import StoreTransaction
from gateway.store.upsert import UpsertProblem, UpsertRejected, apply_mapped
from gateway.validation import Issue, Validator

log = logging.getLogger(__name__)

MAX_WARNINGS_IN_ACK = 20
SAFETY_REPORT = "safety-report"
REPORT_FLAG_SYSTEM = "https://lecheng-fhir-gateway.org/fhir/CodeSystem/report-flag"
NEEDS_REVIEW = {"system": REPORT_FLAG_SYSTEM, "code": "needs-review",
                "display": "Stored despite a profile rule relaxed for a safety report; review it"}
# validation issue code (OperationOutcome issue-type) -> HL7 table 0357 (ERR-3); see the docstring
ERROR_CODE_OF_ISSUE = {"required": "101", "invariant": "101", "structure": "102", "extension": "102",
                       "code-invalid": "103", "value": "103"}
Z_SEGMENTS_EXTENSION = "{base}/StructureDefinition/hl7v2-unmapped-segments"


@dataclass
class IngestResult:
    """What one message came to: the ACK bytes and, for callers and tests, why."""
    ack: bytes
    code: str
    log_id: int
    status: str
    message: Hl7Message | None = None
    resources: list[str] = field(default_factory=list)     # Type/id/_history/v written
    errors: list[Hl7Error] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicate: bool = False


class Hl7Pipeline:
    def __init__(self, config: dict, store: ResourceStore, message_log: MessageLog, mappings: MappingSet,
                 terminology: Terminology, validator: Validator, zone,
                 on_stored: Callable[[Any, list[tuple[Any, dict, str]], Hl7Message], None] | None = None):
        self.config = config
        self.store = store
        self.log = message_log
        self.mappings = mappings
        self.terminology = terminology
        self.validator = validator
        self.zone = zone
        self.on_stored = on_stored      # routing hook, inside the write transaction; returns what it held
        self.accepted_processing_ids = {p.strip() for p in str(config["ACCEPT_PROCESSING_IDS"]).split(",") if p}

    def ingest(self, raw: bytes, transport: str = "http") -> IngestResult:
        """Never raises: every failure becomes an ACK, and the raw bytes are already logged."""
        with stage("total"):
            log_id = self.log.receive(raw, transport=transport)
            with about_message(log_id):
                result = self._ingest_or_ar(raw, log_id)
        message = result.message
        count_message(bound_organization() or (message.sending_facility if message else None),
                      message.message_type if message else None, result.status, result.code)
        return result

    def _ingest_or_ar(self, raw: bytes, log_id: int) -> IngestResult:
        try:
            return self._ingest(raw, log_id)
        except Exception:  # the last line of defence: answer AR, keep the message for replay
            log.exception("message %s failed inside the gateway", log_id)
            error = Hl7Error(text="The gateway could not process this message now; it is kept (log id "
                             f"{log_id}) and can be replayed", code="207")
            ack = self._ack({}, AckCode.AR, [error])
            # finished without the sender's identity: never found as the answer to a resend
            self.log.finish(log_id, "error", ack, {"errors": [error.text]})
            return IngestResult(ack, "AR", log_id, "error", errors=[error])

    def reprocess(self, log_id: int, raw: bytes) -> IngestResult:
        """Run a logged message through again, in place (an operator's replay, or start-up finishing
        what a crash interrupted). Never raises. The resend check is skipped: this *is* the message,
        and upserts on business identifiers make a second pass store nothing new."""
        try:
            with about_message(log_id):
                return self._ingest(raw, log_id, resend_check=False)
        except Exception:
            log.exception("message %s failed inside the gateway on replay", log_id)
            error = Hl7Error(text=f"The gateway could not process this message (log id {log_id}) on replay", code="207")
            ack = self._ack({}, AckCode.AR, [error])
            self.log.finish(log_id, "error", ack, {"errors": [error.text]})
            return IngestResult(ack, "AR", log_id, "error", errors=[error])

    # ------------------------------------------------------------------ steps

    def _answer_resend(self, log_id: int, message: Hl7Message, earlier: LoggedMessage) -> IngestResult:
        """A resend (same sender, MSH-10 and content) gets the ACK the first arrival got, changing nothing."""
        self.log.finish(log_id, earlier.status, earlier.ack, {"duplicate_of": earlier.id}, identity=_identity(message))
        return IngestResult(earlier.ack, ack_code(earlier.ack) or "", log_id, earlier.status, message, duplicate=True)

    def _ingest(self, raw: bytes, log_id: int, resend_check: bool = True) -> IngestResult:
        try:
            with stage("parse"):
                message = parse_message(raw, fallback_charset=self.config["FALLBACK_CHARSET"])
        except Hl7ParseError as exc:
            return self._finish(log_id, exc.partial_msh, AckCode.AR, exc.errors, [], "rejected")
        warnings = list(message.warnings) + message.ack_condition_problems

        overlong = _overlong_identity(message)
        if overlong is not None:
            return self._finish(log_id, message, AckCode.AR, [overlong], [], "rejected")

        bound = bound_organization()        # a hospital sends only as itself (gateway/security)
        if bound is not None and message.sending_facility != bound:
            error = Hl7Error(text=f"MSH-4 sending facility '{message.sending_facility}' is not this client's "
                             f"organization '{bound}': a client sends only as itself; nothing was stored",
                             segment="MSH", sequence=1, field=4, code="103")   # not in this client's table 0362
            return self._finish(log_id, message, AckCode.AR, [error], [], "rejected")

        earlier = self.log.earlier_arrivals(log_id, message.sending_facility, message.control_id)
        resend = earlier.same_content if resend_check else None
        if resend is not None and resend.ack is not None:
            return self._answer_resend(log_id, message, resend)
        if earlier.other_content:
            warnings.append(f"control id {message.control_id} was used before by {message.sending_facility} "
                            "for a different message; processed as a new message")

        if message.processing_id not in self.accepted_processing_ids:
            error = Hl7Error(text=f"processing id '{message.processing_id}' (MSH-11) is not accepted here; this "
                             f"gateway takes {', '.join(sorted(self.accepted_processing_ids))} messages only",
                             segment="MSH", sequence=1, field=11, code="202")
            return self._finish(log_id, message, AckCode.AR, [error], warnings, "rejected")

        too_many = self._too_many_orders(message)
        if too_many is not None:
            return self._finish(log_id, message, AckCode.AR, [too_many], warnings, "rejected")

        spec = self.mappings.for_message(message.message_type)
        if spec is None:
            text = f"message type {message.message_type} is not handled by any mapping in mappings/"
            if self.config["UNKNOWN_MESSAGE_ACK"] == "AA":
                warnings.append(text + "; kept in the message log only")
                return self._finish(log_id, message, AckCode.AA, [], warnings, "processed")
            error = Hl7Error(text=text, segment="MSH", sequence=1, field=9, code="200")
            return self._finish(log_id, message, AckCode.AR, [error], warnings, "rejected")

        with stage("map"):
            mapped = spec.run(message, self.terminology, self.zone)
        warnings += mapped.warnings
        if mapped.errors:
            return self._finish(log_id, message, AckCode.AE, mapped.errors, warnings, "error")
        if not mapped.resources:
            error = Hl7Error(text=f"{message.message_type} carried nothing mapping '{spec.name}' could turn into "
                             "a resource", code="101")
            return self._finish(log_id, message, AckCode.AE, [error], warnings, "error")

        source = f"urn:hl7v2:{message.sending_facility}:{message.control_id}"
        answered: list[IngestResult] = []

        def answer(tx: StoreTransaction, stored: StoredResources) -> None:
            """The ACK and the log entry's outcome, written in the store's transaction. The resend check
            is made again in it: the same message arriving twice at once both pass the first check,
            and the one that commits second must answer the first one's ACK, not store it again."""
            answered.clear()
            if resend_check:
                tx.claim([f"message|{message.sending_facility}|{message.control_id}"])
                again = self.log.earlier_arrivals(log_id, message.sending_facility, message.control_id, tx.conn)
                if again.same_content is not None and again.same_content.ack is not None:
                    raise _ResentMeanwhile(again.same_content)
            done = warnings + stored.warnings
            refs = [f"{r['resourceType']}/{r['id']}/_history/{r['meta']['versionId']}" for _m, r, _a in stored.written]
            if stored.unresolved:   # stored, but a reference names nothing stored yet (a dispense before its order)
                errors = [self._problem_error(p.mapped, p.text, p.code, p.element) for p in stored.unresolved]
                answered.append(self._finish(log_id, message, AckCode.AE, errors, done, "processed", refs, tx.conn))
                return
            done += [f"held for review, not delivered: {reason}" for reason in stored.held]
            answered.append(self._finish(log_id, message, AckCode.AA, [], done,
                                         "on-hold" if stored.held else "processed", refs, tx.conn))

        try:
            with stage("store"):        # validation, resources, Provenance, outbox rows, log entry: one transaction
                self.store_mapped(mapped.resources, source, message,
                                  lambda changed: self._provenance(message, changed, source), before_commit=answer)
        except _ResentMeanwhile as exc:
            return self._answer_resend(log_id, message, exc.earlier)
        except UpsertRejected as exc:
            errors = [self._problem_error(p.mapped, p.text, p.code, p.element) for p in exc.result.problems]
            return self._finish(log_id, message, AckCode.AE, errors, warnings + exc.result.warnings, "error")
        return answered[0]

    def _too_many_orders(self, message: Hl7Message) -> Hl7Error | None:
        """One message's orders are stored in one write transaction, which every other writer waits for:
        over ``MAX_HL7_ORDERS`` the message is refused whole, before mapping, at the first order too many."""
        limit = int(self.config.get("MAX_HL7_ORDERS") or 0)
        name, positions = order_segments(seg.name for seg in message.segments)
        if limit <= 0 or len(positions) <= limit:
            return None
        return Hl7Error(text=f"the message carries {len(positions)} orders ({name} segments); this gateway takes at "
                        f"most {limit} in one message (MAX_HL7_ORDERS): send them in several messages; nothing "
                        "was stored", segment=name, sequence=positions[limit], code="100")

    def store_mapped(self, resources: list[MappedResource], source: str, origin: Any,
                     provenance: Callable[[list[dict]], dict],
                     before_commit: Callable[[StoreTransaction, "StoredResources"], None] | None = None,
                     ) -> "StoredResources":
        """The store step the HL7 and the document pipelines share, in one transaction: each resource
        validated as it will be stored (``_check``), written, one Provenance (``provenance(changed)``)
        for what changed, the routing hook (``origin``: the Hl7Message, or a document's origin
        with ``message_type`` and ``sending_facility``), and ``before_commit(tx, stored)`` (the
        message log entry's outcome). Raises UpsertRejected: nothing stored."""
        context = SAFETY_REPORT if any(m.type == "AdverseEvent" for m in resources) else None
        relaxed: list[MappedResource] = []       # resources stored although a relaxed rule failed

        def check(mapped: MappedResource, resource: dict) -> tuple[list[UpsertProblem], list[str]]:
            problems, warnings, was_relaxed = self._check(mapped, resource, context)
            if was_relaxed:
                relaxed.append(mapped)
            if relaxed and mapped.type == "AdverseEvent" and not problems:
                _flag(resource, keep_profile=True)   # the report of what was stored despite a rule (written after it)
            return problems, warnings

        def unit(tx: StoreTransaction) -> StoredResources:     # run again whole if a concurrent writer conflicts
            relaxed.clear()
            outcome = apply_mapped(tx, resources, source, check)
            written = list(outcome.written)
            changed = [r for _m, r, action in written if action in ("create", "update")]
            if changed:
                tx.create(provenance(changed))
            routed = self.on_stored(tx, written, origin) if self.on_stored is not None else None
            stored = StoredResources(written, list(outcome.warnings), list(outcome.unresolved),
                                     list(getattr(routed, "held", None) or []))
            if before_commit is not None:
                before_commit(tx, stored)
            return stored

        # the sending facility is tagged on what is stored (meta.tag, gateway/store/access.py)
        with sending_as(getattr(origin, "sending_facility", None) or current_sender()):
            return self.store.writing(unit)

    def _check(self, mapped: MappedResource, resource: dict,
               context: str | None = None) -> tuple[list[UpsertProblem], list[str], bool]:
        """Validate a resource as it is about to be stored (in ``context``, e.g. a safety report).
        Conforming ones get meta.profile; one that passes only because a rule was relaxed in the
        context gets the needs-review flag instead. Returns (problems, warnings, relaxed)."""
        issues: list[Issue] = self.validator.validate(resource, context=context)
        problems = [UpsertProblem(mapped, f"{issue.expression or mapped.type}: {issue.diagnostics}",
                                  ERROR_CODE_OF_ISSUE.get(issue.code, "207"), _element_of(issue.expression))
                    for issue in issues if issue.severity in ("fatal", "error")]
        warnings = [f"{issue.expression or mapped.type}: {issue.diagnostics}"
                    for issue in issues if issue.severity == "warning"]
        was_relaxed = any(issue.relaxed_in for issue in issues)
        if not problems and was_relaxed:
            _flag(resource)
        elif not problems:
            profiles = self.validator.registry.profiles_for(resource["resourceType"])
            if profiles:
                resource.setdefault("meta", {})["profile"] = list(profiles)
        return problems, warnings, was_relaxed

    def _problem_error(self, mapped: MappedResource, text: str, code: str, element: str | None) -> Hl7Error:
        where = mapped.source_of(f"{mapped.type}.{element}") if element else None
        if where is None and code != "205":
            where = mapped.source_of(f"{mapped.type}.identifier")  # at least the segment of the resource
        return Hl7Error(text=text, segment=where.segment if where else None,
                        sequence=where.sequence if where else None, field=where.field if where else None,
                        code=code)

    def _provenance(self, message: Hl7Message, changed: list[dict], source: str) -> dict:
        """One Provenance per message: which versions it wrote, who sent it, and what it carried that
        no mapping reads (Z-segments and others), so nothing of the message is lost."""
        spec = self.mappings.for_message(message.message_type)
        mapped_names = spec.segments_read() if spec else set()
        unmapped = [str(seg) for seg in message.segments if seg.name not in mapped_names and seg.name != "MSH"]
        base = self.terminology.canonical_base
        provenance = provenance_record(
            base, changed, source, message.sending_facility or "unknown",
            f"{message.sending_application} at {message.sending_facility}",
            {"system": f"{base}/sid/hl7v2-message/{message.sending_facility or 'unknown'}", "value": message.control_id},
            f"{message.message_type} {message.control_id} (HL7 v{message.version})")
        if unmapped:
            provenance["extension"] = [{
                "url": Z_SEGMENTS_EXTENSION.format(base=self.terminology.canonical_base),
                "valueString": "\r".join(unmapped)}]
        return provenance

    def _ack(self, msg_or_partial, code: AckCode, errors: list[Hl7Error], charset: str = "utf-8") -> bytes:
        # MSA-3 carries the first error for v2.3-era receivers; an AA's warnings stay in ERR only
        first_error = next((e.text for e in errors if e.severity == "E"), "")
        text = build_ack(msg_or_partial, code, errors, text=first_error,
                         sending_application=self.config["ACK_SENDING_APPLICATION"],
                         sending_facility=self.config["ACK_SENDING_FACILITY"])
        try:
            return text.encode(charset or "utf-8")
        except (LookupError, UnicodeEncodeError):
            return text.encode("utf-8")

    def _finish(self, log_id: int, msg_or_partial, code: AckCode, errors: list[Hl7Error], warnings: list[str],
                status: str, resources: list[str] | None = None, conn: Connection | None = None) -> IngestResult:
        warning_errors = [Hl7Error(text=w, code="0", severity="W") for w in warnings[:MAX_WARNINGS_IN_ACK]]
        charset = msg_or_partial.charset if isinstance(msg_or_partial, Hl7Message) else "utf-8"
        errors, more = first_and_count(errors, int(self.config.get("MAX_ERRORS_REPORTED") or 0))
        detail: dict[str, Any] = {"errors": [e.text for e in errors], "warnings": warnings,
                                  "resources": resources or []}
        if more:        # the first N, then a count (MAX_ERRORS_REPORTED): the answer stays small
            errors.append(Hl7Error(text=f"and {more} more errors like these (MAX_ERRORS_REPORTED); the message is "
                                   f"kept in the message log (id {log_id})", code=errors[-1].code))
            detail["errors_not_listed"] = more
        ack = self._ack(msg_or_partial, code, [*errors, *warning_errors], charset)
        message = msg_or_partial if isinstance(msg_or_partial, Hl7Message) else None
        self.log.finish(log_id, status, ack, detail, identity=_identity(message) if message is not None else None,
                        conn=conn)
        return IngestResult(ack, code.value, log_id, status, message, resources or [], errors, warnings)


@dataclass
class StoredResources:
    """What the shared store step did with one message's (or document's) resources."""
    written: list[tuple[Any, dict, str]]      # (mapped, stored resource, create | update | unchanged)
    warnings: list[str]
    unresolved: list[UpsertProblem]           # stored, but a reference names nothing stored yet
    held: list[str]                           # routing hold rules that matched: stored, not delivered


def provenance_record(base: str, changed: list[dict], source: str, facility: str, who_display: str,
                      what: dict, what_display: str) -> dict:
    """One Provenance per inbound message or document: the versions it wrote, the facility that sent
    it, and the message itself (``what``: its identifier) as the source entity."""
    return {
        "resourceType": "Provenance",
        "id": new_resource_id(),
        "meta": {"source": source},
        "target": [{"reference": f"{r['resourceType']}/{r['id']}/_history/{r['meta']['versionId']}"} for r in changed],
        "recorded": now_instant(),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}]},
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "author"}]},
                   "who": {"identifier": {"system": f"{base}/sid/facility", "value": facility},
                           "display": who_display}}],
        "entity": [{"role": "source", "what": {"identifier": what, "display": what_display}}],
    }


def _flag(resource: dict, keep_profile: bool = False) -> None:
    """Tag ``needs-review`` on a resource about to be stored (once); one that does not conform
    (``keep_profile`` False) claims no profile either."""
    meta = resource.setdefault("meta", {})
    if not keep_profile:
        meta.pop("profile", None)
    tags = meta.setdefault("tag", [])
    if not any(isinstance(t, dict) and t.get("system") == REPORT_FLAG_SYSTEM and t.get("code") == "needs-review"
               for t in tags):
        tags.append(dict(NEEDS_REVIEW))


class _ResentMeanwhile(Exception):
    """The same message, sent at the same moment, was stored by another writer first: roll back."""

    def __init__(self, earlier: LoggedMessage):
        super().__init__(f"log id {earlier.id} was stored first")
        self.earlier = earlier


# MSH fields the message log and resend check key on, and the most characters kept of each (HL7 v2.7
# allows 199 for MSH-10 and 227 for an HD; the log's columns hold 255)
IDENTITY_FIELDS = ((3, "sending_application", "sending application"), (4, "sending_facility", "sending facility"),
                   (10, "control_id", "message control id"))
IDENTITY_MAX_CHARS = 255


def _overlong_identity(message: Hl7Message) -> Hl7Error | None:
    for field_number, attribute, label in IDENTITY_FIELDS:
        value = getattr(message, attribute) or ""
        if len(value) > IDENTITY_MAX_CHARS:
            return Hl7Error(text=f"MSH-{field_number} {label} has {len(value)} characters; this gateway takes at most "
                            f"{IDENTITY_MAX_CHARS}; nothing was stored", segment="MSH", sequence=1,
                            field=field_number, code="102")
    return None


def _identity(message: Hl7Message) -> dict[str, str | None]:
    """The message log columns a parsed message fills (who sent it, its control id and type)."""
    return {"sender_application": message.sending_application, "sender_facility": message.sending_facility,
            "control_id": message.control_id, "message_type": message.message_type}


def _element_of(expression: str | None) -> str | None:
    """'MedicationRequest.requester' -> 'requester' (the element a mapping row fills)."""
    if not expression or "." not in expression:
        return None
    return expression.split(".", 1)[1]
