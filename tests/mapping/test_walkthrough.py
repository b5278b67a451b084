"""The walk-through at the end of ``mappings/README.md``, run: the mistakes it shows are what
``mappings check`` prints, the mapping it ends with checks clean and maps the sample to the expected
Bundle, and the report posted over real HTTP is stored and found by the searches it gives."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import requests

from conftest import DATA, served
from gateway import create_app
from gateway.cli import main
from gateway.config import REPO_ROOT
from tests.security.credentials import http_token, register

README = (REPO_ROOT / "mappings" / "README.md").read_text(encoding="utf-8")
WALKTHROUGH = README[README.index("## Walk-through"):]
MAPPING = REPO_ROOT / "mappings" / "qionghai_adr_xml.yaml"
SAMPLE = DATA / "walkthrough" / "qionghai_adr_report.xml"
EXPECTED = DATA / "walkthrough" / "qionghai_adr_report.expected.json"

# (what the mapping says, the mistake, the message the README quotes)
MISTAKES = [
    ('      identifier: {fields: {value: "@reportNo"', '      identifer: {fields: {value: "@reportNo"',
     "mappings/qionghai_adr_xml.yaml:69: resource 'event', element 'identifer': 'AdverseEvent.identifer' is not an "
     "element of R4 AdverseEvent (did you mean 'identifier'?)"),
    ('      identifier: {fields: {value: "@reportNo"', '      identifier[0]: {fields: {value: "@reportNo"',
     "mappings/qionghai_adr_xml.yaml:69: resource 'event', element 'identifier[0]': AdverseEvent.identifier is a "
     "single element (0..1 in R4): write 'identifier', not 'identifier[0]'"),
    ("      suspectEntity[]:\n        for_each: drug\n        elements:\n          instance: {ref: suspect_drug}\n",
     "      suspectEntity.instance: {ref: suspect_drug}\n",
     "mappings/qionghai_adr_xml.yaml:80: resource 'event', element 'suspectEntity.instance': AdverseEvent."
     "suspectEntity repeats (0..* in R4): write 'suspectEntity[0]' for one item, or 'suspectEntity[]:' with "
     "for_each for one per group"),
    ('args: {table: "0238", original: "0238"}', 'args: {tabel: "0238", original: "0238"}',
     "mappings/qionghai_adr_xml.yaml:75: resource 'event', element 'seriousness': converter 'table_concept' takes "
     "no argument 'tabel' (it takes: table, original)"),
    ("args: {system: NMPA}", "args: {system: NMAP}",
     "mappings/qionghai_adr_xml.yaml:61: resource 'suspect_drug', element 'code': code system 'NMAP' is not in "
     "code_systems.yaml (add it under coding_systems or aliases, or write its URI)"),
    ("    for_each: drug\n    required: [identifier, code]", "    for_each: drugs\n    required: [identifier, code]",
     "mappings/qionghai_adr_xml.yaml:54: resource 'suspect_drug': for_each names unknown group 'drugs' "
     "(groups: drug)"),
    ("      date: {from: adr:Reaction/@onset, as: iso_datetime}", "      date: {from: adr:Reaction/@@onset, as: iso_datetime}",
     "mappings/qionghai_adr_xml.yaml:73: resource 'event', element 'date': 'adr:Reaction/@@onset' is not an XPath "
     "(Invalid expression)"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A copy of mappings/ as the gateway's mappings directory, and the working directory above it."""
    shutil.copytree(REPO_ROOT / "mappings", tmp_path / "mappings")
    monkeypatch.setenv("GATEWAY_MAPPINGS_DIR", str(tmp_path / "mappings"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("right,wrong,message", MISTAKES, ids=lambda v: v if "/" not in v else None)
def test_each_mistake_in_the_walkthrough_is_reported_as_the_readme_says(capsys, workdir, right, wrong, message):
    assert f"| `{message}` |" in WALKTHROUGH
    mapping = workdir / "mappings" / "qionghai_adr_xml.yaml"
    text = mapping.read_text(encoding="utf-8")
    assert text.count(right) == 1
    mapping.write_text(text.replace(right, wrong), encoding="utf-8")
    assert main(["mappings", "check", "mappings/qionghai_adr_xml.yaml"]) == 1
    assert capsys.readouterr().out.splitlines() == [message]


def test_every_mistake_the_readme_quotes_is_one_this_test_makes():
    quoted = re.findall(r"^\| `[^`]+` \| `(mappings/qionghai_adr_xml\.yaml:\d+: [^`]+)` \|$", WALKTHROUGH, re.M)
    assert quoted == [message for _right, _wrong, message in MISTAKES]


def test_the_yaml_the_readme_shows_is_in_the_mapping_file():
    mapping_lines = {line.split(" #")[0].rstrip() for line in MAPPING.read_text(encoding="utf-8").splitlines()}
    for block in re.findall(r"```yaml\n(.*?)```", WALKTHROUGH, re.S):
        for line in block.splitlines():
            code = line.split(" #")[0].rstrip()
            if code:
                assert code in mapping_lines, line


def test_the_finished_mapping_checks_clean_and_maps_the_sample_to_the_expected_bundle(capsys, workdir):
    assert main(["mappings", "check", "mappings/qionghai_adr_xml.yaml"]) == 0
    assert main(["mappings", "test", "qionghai_adr", str(SAMPLE), str(EXPECTED)]) == 0
    assert main(["mappings", "test", str(MAPPING), str(SAMPLE), str(EXPECTED)]) == 0
    expected = json.loads(EXPECTED.read_text(encoding="utf-8"))
    event = next(e["resource"] for e in expected["entry"] if e["resource"]["resourceType"] == "AdverseEvent")
    assert event["identifier"] == {"system": "https://lecheng-fhir-gateway.org/fhir/sid/QIONGHAI_PEOPLES_HOSPITAL/"
                                             "adverse-event", "value": "QH-ADR-2026-0015"}
    assert event["event"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/mdr"   # "MedDRA"
    assert [s["instance"] for s in event["suspectEntity"]] == [{"reference": "Medication/1"},
                                                               {"reference": "Medication/2"}]


def test_a_changed_mapping_shows_its_difference_from_the_expected_bundle(capsys, workdir):
    mapping = workdir / "mappings" / "qionghai_adr_xml.yaml"
    mapping.write_text(mapping.read_text(encoding="utf-8").replace("actuality: {value: actual}",
                                                                   "actuality: {value: potential}"), encoding="utf-8")
    assert main(["mappings", "test", "qionghai_adr", str(SAMPLE), str(EXPECTED)]) == 1
    diff = capsys.readouterr().out.splitlines()
    assert '-        "actuality": "actual",' in diff and '+        "actuality": "potential",' in diff


def test_the_report_posted_over_http_is_stored_and_found_by_the_readme_searches(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path), "TESTING": True})
    register(app, "qionghai-his", "hospital", "QIONGHAI_PEOPLES_HOSPITAL")
    with served(app) as base:
        headers = {"Authorization": f"Bearer {http_token(base, 'qionghai-his')}"}
        response = requests.post(f"{base}/ingest/qionghai_adr", data=SAMPLE.read_bytes(), timeout=30,
                                 headers={**headers, "Content-Type": "application/xml"})
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert bundle["type"] == "transaction-response"
        assert [e["response"]["status"] for e in bundle["entry"]] == ["201 Created"] * 6
        searches = re.findall(r"'http://127\.0\.0\.1:8080(/fhir/AdverseEvent\?[^']+)'", WALKTHROUGH)
        assert len(searches) == 3
        for search in searches:
            found = requests.get(base + search, headers=headers, timeout=30).json()
            assert found.get("total") == 1, (search, found)
            assert found["entry"][0]["resource"]["identifier"]["value"] == "QH-ADR-2026-0015"

        without_number = SAMPLE.read_bytes().replace(b' reportNo="QH-ADR-2026-0015"', b"")
        refused = requests.post(f"{base}/ingest/qionghai_adr", data=without_number, timeout=30,
                                headers={**headers, "Content-Type": "application/xml"})
        assert 400 <= refused.status_code < 500
        outcome = refused.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert any("/adr:ADRReport/@reportNo" in json.dumps(issue, ensure_ascii=False) for issue in outcome["issue"])
