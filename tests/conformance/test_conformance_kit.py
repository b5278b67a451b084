"""The conformance kit against the real gateway (every case passes), against a fake server with
named faults (the kit fails exactly the case for each fault), and its HTML / JUnit reports."""
from __future__ import annotations

from pathlib import Path

import lxml.html
import pytest
from lxml import etree

from conformance.report import junit_xml, render_html
from conformance.runner import KitReport, load_cases, run_kit
from conftest import served
from gateway.conformance_cli import main as conformance_main
from gateway.ingest.mllp_handler import mllp_server
from tests.conformance.fake_server import FAULTS, make_fake_fhir_app
from tests.security.credentials import http_token, register

ALL_CASES = [c["id"] for c in load_cases()]
HL7_CASES = ["hl7-good-message-aa", "hl7-malformed-message-ar", "hl7-duplicate-same-ack"]
FAULT_CASES = {
    "paging_repeats": {"paging-next-links"},
    "unknown_id_200": {"read-unknown-id"},
    "search_param_500": {"capability-search-params"},
    "missing_outcome_on_400": {"search-bad-date"},
}


def _admin_token(app, base: str) -> str:
    """The gateway needs a bearer token on every FHIR and HL7 endpoint (README "Security")."""
    register(app, "conformance-kit", "admin")
    return http_token(base, "conformance-kit")


def _summary(report: KitReport) -> str:
    return "\n".join(f"{r.status} {r.id}: {r.message}" for r in report.results)


def test_case_files_are_complete():
    cases = load_cases()
    assert len(cases) >= 13
    for case in cases:
        assert case["spec"].startswith(("http://hl7.org/fhir/R4/", "https://www.hl7.org/")), case["id"]
        assert case.get("why"), case["id"]
        assert case["_source"] == f"{case['id']}.yaml"


def test_kit_passes_against_the_gateway_over_http(app):
    with served(app) as base:
        report = run_kit(f"{base}/fhir", hl7=f"{base}/hl7v2", token=_admin_token(app, base))
    assert [r.id for r in report.results] == ALL_CASES
    assert report.passed == ALL_CASES, _summary(report)
    assert report.ok
    search = report.result("capability-search-params")
    assert any("tried" in n and "MedicationRequest" in n for n in search.notes)
    assert len(search.exchanges) >= 10          # every declared MedicationRequest parameter was tried
    assert any(n.startswith("validated") for n in report.result("profile-validation").notes)


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
    assert report.passed == HL7_CASES, _summary(report)
    assert report.result("hl7-good-message-aa").exchanges[0].method == "MLLP"


def test_without_hl7_endpoint_hl7_cases_are_skipped_not_passed(app):
    with served(app) as base:
        report = run_kit(f"{base}/fhir", only=["metadata-capabilitystatement", "paging-next-links", *HL7_CASES],
                         token=_admin_token(app, base))
    assert report.ok
    assert set(report.skipped) == {"paging-next-links", *HL7_CASES}     # an empty server: nothing to page
    assert "--hl7" in report.result("paging-next-links").message


def test_fake_server_without_faults_passes():
    with served(make_fake_fhir_app()) as base:
        report = run_kit(f"{base}/fhir")
    assert report.passed == [c for c in ALL_CASES if c not in HL7_CASES], _summary(report)
    assert report.skipped == HL7_CASES


@pytest.mark.parametrize("fault", FAULTS)
def test_kit_fails_exactly_the_named_case_for_each_fault(fault):
    with served(make_fake_fhir_app({fault})) as base:
        report = run_kit(f"{base}/fhir")
    assert set(report.failed) == FAULT_CASES[fault], _summary(report)
    assert all(report.result(c).status == "fail" for c in FAULT_CASES[fault])   # a failure, not a kit crash


def test_fault_messages_name_the_problem():
    with served(make_fake_fhir_app(set(FAULTS))) as base:
        report = run_kit(f"{base}/fhir")
    assert set(report.failed) == set().union(*FAULT_CASES.values())
    assert "mr1" in report.result("paging-next-links").message and "more than one page" in \
        report.result("paging-next-links").message
    assert "HTTP status 200, expected 404" in report.result("read-unknown-id").message
    assert "MedicationRequest?patient" in report.result("capability-search-params").message
    assert "500" in report.result("capability-search-params").message
    assert "not a JSON resource" in report.result("search-bad-date").message


def test_html_and_junit_reports_from_the_cli(tmp_path: Path):
    html_path, junit_path = tmp_path / "report.html", tmp_path / "junit.xml"
    with served(make_fake_fhir_app({"unknown_id_200", "paging_repeats"})) as base:
        code = conformance_main(["conformance", "--fhir-base", f"{base}/fhir", "--report", str(html_path),
                                 "--junit", str(junit_path), "--token", "secret-token"])
    assert code == 1

    page = lxml.html.parse(str(html_path)).getroot()
    rows = {row.get("data-case-id"): row.xpath("string(td[2])") for row in page.xpath("//table//tr[@data-case-id]")}
    assert set(rows) == set(ALL_CASES)
    assert rows["read-unknown-id"] == "FAIL" and rows["paging-next-links"] == "FAIL"
    assert rows["metadata-capabilitystatement"] == "PASS" and rows["hl7-good-message-aa"] == "SKIPPED"
    for case_id in ALL_CASES:
        section = page.get_element_by_id(f"case-{case_id}")
        assert section.xpath(".//a[starts-with(@href, 'http')]"), f"{case_id} has no spec link"
    failed = page.get_element_by_id("case-read-unknown-id")
    shown = failed.text_content()
    assert "/fhir/MedicationRequest/conformance-kit-no-such-id-0" in shown     # the request
    assert "not-found" in shown                                                # the response body
    assert "secret-token" not in lxml.html.tostring(page, encoding="unicode")    # tokens are masked
    assert not page.get_element_by_id("case-metadata-capabilitystatement").xpath(".//details")

    suite = etree.parse(str(junit_path)).getroot()
    assert suite.tag == "testsuite"
    assert int(suite.get("tests")) == len(ALL_CASES)
    assert int(suite.get("failures")) == 2 and len(suite.findall("testcase/failure")) == 2
    assert {tc.get("name") for tc in suite.findall("testcase") if tc.find("failure") is not None} == \
        {"read-unknown-id", "paging-next-links"}
    assert len(suite.findall("testcase/skipped")) == len(HL7_CASES)


def test_cli_exit_code_zero_against_the_gateway(app, tmp_path: Path):
    with served(app) as base:
        code = conformance_main(["conformance", "--fhir-base", f"{base}/fhir", "--hl7", f"{base}/hl7v2",
                                 "--junit", str(tmp_path / "j.xml"), "--token", _admin_token(app, base)])
    assert code == 0
    assert etree.parse(str(tmp_path / "j.xml")).getroot().get("failures") == "0"


def test_unreachable_server_is_an_error_not_a_pass():
    report = run_kit("http://127.0.0.1:9/fhir", only=["metadata-capabilitystatement", "read-unknown-id"],
                     timeout=2)
    assert not report.ok
    assert {r.status for r in report.results} == {"error"}
    etree.fromstring(junit_xml(report))
    lxml.html.fromstring(render_html(report))
