"""FHIR R4 validation for the gateway: base structure, then the Lecheng profiles in `profiles/`.

    from gateway.validation import ProfileRegistry, Validator, operation_outcome, has_errors

    registry = ProfileRegistry.load("profiles")        # once: reads and compiles every profile
    validator = Validator(registry)                     # strictness={canonical: "warning"} to relax one
    issues = validator.validate(resource)               # [] when it conforms
    outcome = operation_outcome(issues)                 # the same issues as an OperationOutcome

Modules: `structure` (fhirkit / fhir.resources backends), `profile` (differential -> rule tree),
`conformance` (the walk), `fhirpath` (invariants), `terminology` (local value sets), `model`
(the R4 element model), `registry`, `validator`, `issues`.
"""
from .issues import Issue, has_errors, operation_outcome
from .profile import ProfileError
from .registry import ProfileRegistry
from .validator import Validator

__all__ = ["Issue", "ProfileError", "ProfileRegistry", "Validator", "has_errors", "operation_outcome"]
