"""Validation issues and the OperationOutcome they become.

Every layer (the structure backends, the profile checker, the invariants) reports the same small
value type, `Issue`, so the ingest pipeline can turn issues into HL7 ERR segments and the `$validate`
endpoint can turn the very same issues into an OperationOutcome: one list, two renderings.

Severity and code follow the OperationOutcome value sets (issue-severity, issue-type):
`structure` (not valid R4 JSON), `required` (a profile's minimum), `value` (fixed/pattern values),
`code-invalid` (bindings), `invariant` (FHIRPath constraints), `extension`, `processing`.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SEVERITIES = ("fatal", "error", "warning", "information")


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a resource, with where it is and what to do about it.

    `expression` is a FHIRPath to the element (`MedicationRequest.identifier[0].system`); for a
    missing element it names where the element should be. `profile` is the canonical URL of the
    StructureDefinition that raised the issue, None for base R4 structure.
    """

    severity: str
    code: str
    diagnostics: str
    expression: str | None = None
    profile: str | None = None
    # set when the rule is an error elsewhere but was reported as a warning in this validation's
    # context (e.g. "safety-report", profiles/README "Context"): the caller flags what it stores
    relaxed_in: str | None = None

    def demoted(self) -> "Issue":
        """The same issue as a warning (used when a profile is configured as advisory)."""
        if self.severity not in ("fatal", "error"):
            return self
        return Issue("warning", self.code, self.diagnostics, self.expression, self.profile, self.relaxed_in)


def has_errors(issues: Iterable[Issue]) -> bool:
    """True when any issue is fatal or an error: the resource must not be accepted as is."""
    return any(i.severity in ("fatal", "error") for i in issues)


def operation_outcome(issues: Iterable[Issue]) -> dict:
    """An R4 OperationOutcome for the issues; no issues gives the conventional single "All OK"."""
    rendered = []
    for issue in issues:
        entry: dict = {"severity": issue.severity, "code": issue.code, "diagnostics": issue.diagnostics}
        if issue.expression:
            entry["expression"] = [issue.expression]
        rendered.append(entry)
    if not rendered:
        rendered.append({"severity": "information", "code": "informational", "diagnostics": "All OK"})
    return {"resourceType": "OperationOutcome", "issue": rendered}
