"""`fhir-gateway demo` end to end: every sample sent by its sender, answered and delivered exactly as
examples/demo.yaml says. CI runs the command too; this test makes a regression show in pytest first
(an ownership change once made the pharmacy's dispense, sent by the admin client, answer AE)."""
from __future__ import annotations

import io

from gateway.demo import run_demo


def test_the_demo_passes_with_every_sample_answered_and_delivered_as_listed(monkeypatch):
    for name in ("EPC_FHIR_BASE", "EPC_TOKEN_URL", "EPC_CLIENT_ID", "EPC_CLIENT_SECRET", "HNMPA_FHIR_BASE",
                 "HNMPA_TOKEN", "HNMPA_DEVICE_BASE", "NMPA_FHIR_BASE"):
        monkeypatch.setenv(name, "")             # the demo sets them; monkeypatch restores them afterwards
    out = io.StringIO()
    assert run_demo(out=out) == 0, out.getvalue()
    printed = out.getvalue()
    assert "rds_o13_dispense.hl7               AA" in printed
    assert "pex_p07_death_unapproved_device.hl7 AA" in printed
    assert "demo: every answer as expected" in printed
