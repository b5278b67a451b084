"""The conformance kit against the real gateway (every case passes, hundreds of checks), against
the gateway with one seeded fault at a time (the kit catches each with the case meant for it), and
its HTML / JUnit reports."""
from __future__ import annotations

import re
from pathlib import Path

import lxml.html
import pytest
from lxml import etree

from conformance.report import junit_xml, render_html
from conformance.runner import KitReport, load_cases, run_kit
from conftest import served
from gateway import create_app
from gateway.conformance_cli import main as conformance_main
from gateway.ingest.mllp_handler import mllp_server
from tests.conformance.faults import FAULTS, FaultyGateway
from tests.security.credentials import KID, http_token, register, session_key, token_for

ALL_CASES = [c["id"] for c in load_cases()]
HL7_CASES = ["hl7-good-message-aa", "hl7-malformed-message-ar", "hl7-duplicate-same-ack", "hl7-message-types-and-modes",
             "hl7-malformed-framing"]
README = Path(__file__).resolve().parents[2] / "conformance" / "README.md"
LECHENG_FIXTURES = str(Path(__file__).resolve().parents[2] / "conformance" / "fixtures-lecheng.yaml")
FAULT_TYPES = ["Patient", "Observation"]     # enough types to show every fault, a third of the time


def _admin_token(app, base: str) -> str:
    """The gateway needs a bearer token on every FHIR and HL7 endpoint (README "Security")."""
    register(app, "conformance-kit", "admin")
    return http_token(base, "conformance-kit")


def _summary(report: KitReport) -> str:
    return "\n".join(f"{r.status} {r.id}: {r.message}" for r in report.results)


def test_case_files_are_complete():
    cases = load_cases()
    assert len(cases) >= 12
    for case in cases:
        assert case["spec"].startswith(("http://hl7.org/fhir/R4/", "https://www.hl7.org/", "https://hl7.org/fhir/")), case["id"]
        assert case.get("why"), case["id"]
        assert case["_source"] == f"{case['id']}.yaml"
        assert case.get("area"), case["id"]


def test_kit_passes_against_the_gateway_over_http(app):
    with served(app) as base:
        report = run_kit(f"{base}/fhir", hl7=f"{base}/hl7v2", token=_admin_token(app, base),
                         fixtures=LECHENG_FIXTURES)
    assert [r.id for r in report.results] == ALL_CASES
    assert report.ok and not report.failed, _summary(report)
    skipped_checks = [(r.id, c.name, c.message) for r in report.results for c in r.checks if c.status == "skip"
                      and "MedicationRequest" in c.name and "do not differ" not in c.message]
    assert not skipped_checks, skipped_checks        # the Lecheng fixtures are accepted: nothing left out
    assert set(report.passed) | set(report.warned) == set(ALL_CASES), _summary(report)
    counts = report.check_counts()
    assert counts["pass"] >= 250 and counts["fail"] == 0, counts
    interactions = report.result("capability-interactions")
    assert any(c.name == "Patient vread of the version the server gave" and c.status == "pass"
               for c in interactions.checks)
    search = report.result("search-parameters")
    assert any(c.name.startswith("Patient?gender") and c.status == "pass" for c in search.checks)
    assert any(c.name.startswith("MedicationRequest?code") and c.status == "pass" for c in search.checks)
    assert report.result("profile-rules").status == "pass"
    assert any(n.startswith("validated") for n in report.result("profile-validation").notes)
    with served(app) as base:      # the kit removed its test data again
        import requests
        left = requests.get(f"{base}/fhir/Organization?name=Kit%20Hospital", timeout=10,
                            headers={"Authorization": f"Bearer {_admin_token(app, base)}"}).json()
    assert not left.get("entry"), left


def test_kit_hl7_cases_pass_over_mllp_with_python_hl7_client(app, gateway):
    listener = mllp_server(gateway.pipeline, "127.0.0.1", 0)
    listener.start()
    try:
        host, port = listener.address
        with served(app) as base:
            report = run_kit(f"{base}/fhir", hl7=f"mllp://{host}:{port}", only=HL7_CASES,
                             token=_admin_token(app, base))
    finally:
        listener.stop()
    assert not report.failed and not report.skipped, _summary(report)
    assert report.result("hl7-good-message-aa").exchanges[0].method == "MLLP"
    modes = {c.name: c.status for c in report.result("hl7-message-types-and-modes").checks}
    assert modes["enhanced mode (MSH-15 AL, MSH-16 NE): accept ACK"] == "pass"          # CA over MLLP
    assert modes["original mode (MSH-15/16 empty): application ACK AA"] == "pass"
    assert all(c.status == "pass" for c in report.result("hl7-malformed-framing").checks)


def test_without_hl7_endpoint_hl7_cases_are_skipped_and_data_comes_from_fhir_create(app):
    with served(app) as base:
        report = run_kit(f"{base}/fhir", only=["metadata-capabilitystatement", "paging-next-links", *HL7_CASES],
                         token=_admin_token(app, base))
    assert report.ok
    assert set(report.skipped) == set(HL7_CASES)
    assert report.passed == ["metadata-capabilitystatement", "paging-next-links"], _summary(report)


def test_types_come_from_the_capability_statement_or_types_option(app):
    with served(app) as base:
        report = run_kit(f"{base}/fhir", only=["read-unknown-id"], token=_admin_token(app, base),
                         types=["Observation", "NotDeclaredHere"])
    names = [c.name for c in report.result("read-unknown-id").checks]
    assert names and all(n.startswith("Observation:") for n in names), names


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory):
    """One gateway for every seeded fault: each fault wraps it in its own FaultyGateway."""
    app = create_app({"DATA_DIR": str(tmp_path_factory.mktemp("faults")), "TESTING": True})
    register(app, "conformance-kit", "admin")
    return app


@pytest.fixture(scope="module")
def smart_gateway(tmp_path_factory):
    """A gateway whose tokens live 4 s (so the kit can see one expire) and a backend client whose
    private key the kit signs its assertions with, as a vendor's test client would."""
    from cryptography.hazmat.primitives import serialization
    directory = tmp_path_factory.mktemp("smart")
    app = create_app({"DATA_DIR": str(directory), "TESTING": True, "TOKEN_LIFETIME_SECONDS": 4})
    register(app, "conformance-kit", "admin")
    key = directory / "client-key.pem"
    key.write_bytes(session_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    return app, {"client_id": "conformance-kit", "private_key": str(key), "kid": KID}


def test_smart_backend_services_pass_against_the_gateway_with_a_signed_client(smart_gateway):
    app, client = smart_gateway
    with served(app) as base:
        report = run_kit(f"{base}/fhir", only=["smart-backend-services"], types=FAULT_TYPES, **client)
    result = report.result("smart-backend-services")
    assert result.status == "pass", _summary(report)
    names = {c.name for c in result.checks if c.status == "pass"}
    assert {"a signed client assertion gets an access token", "an expired assertion is refused",
            "a replayed assertion (same jti) is refused", "an assertion for another audience is refused",
            "an expired access token is refused", "the 'system/Patient.rs' token may not search Observation",
            "the read-only 'system/Patient.rs' token may not create Patient"} <= names, names


def test_the_fault_catalogue_is_large_enough_and_listed_in_the_readme():
    assert len(FAULTS) >= 35
    assert {case for case, *_ in FAULTS.values()} <= set(ALL_CASES)
    text = README.read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([a-z0-9_]+)` \| `([a-z0-9-]+)` \|", text, flags=re.M))
    assert listed == {name: case for name, (case, *_rest) in FAULTS.items()}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_kit_catches_each_seeded_fault_with_the_case_meant_for_it(shared_gateway, smart_gateway, fault):
    case, level, what, check = FAULTS[fault]
    app, options = (smart_gateway if case == "smart-backend-services" else (shared_gateway, {}))
    faulty = FaultyGateway(app, fault, fresh_token=lambda: token_for(app.test_client(), "conformance-kit"))
    with served(faulty) as base:
        token = None if options else http_token(base, "conformance-kit")
        report = run_kit(f"{base}/fhir", hl7=f"{base}/hl7v2", token=token, only=[case], types=FAULT_TYPES,
                         **options)
    result = report.result(case)
    wanted = "fail" if level == "SHALL" else "warn"
    assert result.status == wanted, f"{fault} ({what}): {result.status} {result.message}"
    assert any(check in c.name for c in result.checks if c.status == wanted), \
        (fault, [(c.name, c.status) for c in result.checks if c.status != "pass"])


def test_html_and_junit_reports_from_the_cli(shared_gateway, tmp_path: Path):
    html_path, junit_path = tmp_path / "report.html", tmp_path / "junit.xml"
    cases = ["metadata-capabilitystatement", "read-unknown-id", "paging-next-links", "hl7-good-message-aa"]
    with served(FaultyGateway(shared_gateway, "unknown_id_200")) as base:
        token = http_token(base, "conformance-kit")
        report = run_kit(f"{base}/fhir", token=token, only=cases, types=FAULT_TYPES)
        code = conformance_main(["conformance", "--fhir-base", f"{base}/fhir", "--report", str(html_path),
                                 "--junit", str(junit_path), "--token", token, "--types", "Patient,Observation"])
    assert code == 1
    assert report.failed == ["read-unknown-id"]

    page = lxml.html.parse(str(html_path)).getroot()
    rows = {row.get("data-case-id"): row.xpath("string(td[2])") for row in page.xpath("//table//tr[@data-case-id]")}
    assert set(rows) == set(ALL_CASES)
    assert rows["read-unknown-id"] == "FAIL" and rows["metadata-capabilitystatement"] == "PASS"
    assert rows["hl7-good-message-aa"] == "SKIPPED"
    for case_id in ALL_CASES:
        section = page.get_element_by_id(f"case-{case_id}")
        assert section.xpath(".//a[starts-with(@href, 'http')]"), f"{case_id} has no spec link"
    failed = page.get_element_by_id("case-read-unknown-id")
    shown = failed.text_content()
    assert "/fhir/Patient/conformance-kit-no-such-id-0" in shown                # the request
    assert "HTTP status 200, expected 404" in shown                             # what was wrong
    assert failed.xpath(".//tr[@data-status='fail']")                           # the failing check listed
    assert token not in lxml.html.tostring(page, encoding="unicode")            # tokens are masked
    assert "SHALL" in page.text_content() and "SHOULD" in page.text_content()   # how to read it
    areas = {row.get("data-area"): row.xpath("string(td[2])") for row in page.xpath("//tr[@data-area]")}
    assert areas["FHIR REST basics"] == "Not conformant: must be fixed"        # read-unknown-id failed
    assert areas["HL7 v2 messaging"].startswith("Not tested here")             # no --hl7 given

    suite = etree.parse(str(junit_path)).getroot()
    assert suite.tag == "testsuite"
    assert int(suite.get("tests")) == len(ALL_CASES)
    assert {tc.get("name") for tc in suite.findall("testcase") if tc.find("failure") is not None} == \
        {"read-unknown-id"}
    assert len(suite.findall("testcase/skipped")) == len(HL7_CASES)


def test_cli_exit_code_zero_against_the_gateway(app, tmp_path: Path):
    with served(app) as base:
        code = conformance_main(["conformance", "--fhir-base", f"{base}/fhir", "--hl7", f"{base}/hl7v2",
                                 "--junit", str(tmp_path / "j.xml"), "--token", _admin_token(app, base),
                                 "--types", "Patient,Observation,MedicationRequest", "--fixtures", LECHENG_FIXTURES])
    assert code == 0
    assert etree.parse(str(tmp_path / "j.xml")).getroot().get("failures") == "0"


def test_unreachable_server_is_an_error_not_a_pass():
    report = run_kit("http://127.0.0.1:9/fhir", only=["metadata-capabilitystatement", "read-unknown-id"],
                     timeout=2)
    assert not report.ok
    assert {r.status for r in report.results} == {"error"}
    etree.fromstring(junit_xml(report))
    lxml.html.fromstring(render_html(report))


def test_cli_gets_its_token_with_private_key_jwt_and_passes(shared_gateway, smart_gateway, tmp_path: Path, capsys):
    _app, client = smart_gateway           # the same test key is registered for conformance-kit in both
    with served(shared_gateway) as base:
        code = conformance_main(["conformance", "--fhir-base", f"{base}/fhir", "--hl7", f"{base}/hl7v2",
                                 "--client-id", "conformance-kit", "--private-key", client["private_key"],
                                 "--kid", KID, "--types", "Patient,Observation"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert re.search(r"checks: \d+ passed, 0 failed", out), out
        assert "PASS  smart-backend-services" in out or "WARN  smart-backend-services" in out, out
        assert conformance_main(["conformance", "--fhir-base", f"{base}/fhir", "--client-id", "conformance-kit",
                                 "--private-key", client["private_key"], "--kid", "wrong-kid",
                                 "--types", "Patient"]) == 2
    assert "could not get a token" in capsys.readouterr().err
