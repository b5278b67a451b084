"""``fhir-gateway mappings check`` and ``mappings test``, and the gateway refusing to start on a
broken mapping: every mistake a ``file:line: message``, never a traceback (issue 16)."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import SAMPLES
from gateway.cli import main
from gateway.config import REPO_ROOT

BROKEN = """\
name: broken
source: hl7v2
message_types: [ZZZ^Z01]
groups:
  order: {start: ORC}
resources:
  - key: patient
    type: Patient
    required: [identifier, nmae]
    elements:
      identifer: {from: PID-3, as: identifiers}
      gender: {from: PID-8, as: table, args: {table: "9999"}}
  - key: order
    type: MedicationRequest
    for_each: ordr
    elements:
      status: {value: active}
  - key: event
    type: AdverseEvent
    when: {feild: PID-3}
    elements:
      identifier[0]: {from: PES-5, as: entity_identifier}
      subject: {ref: patiant}
      seriousness: {from: PEO-9, as: table_concept, args: {table: "0238", orignal: "0238"}}
      date: {from: PEO-3x, as: datetime}
      category[]: {from: PEO-8, as: codeable_concept, args: {default_system: MedDRAx}}
"""


@pytest.fixture
def mappings_dir(tmp_path, monkeypatch):
    """A copy of mappings/ the gateway is configured to read (GATEWAY_MAPPINGS_DIR)."""
    directory = tmp_path / "mappings"
    shutil.copytree(REPO_ROOT / "mappings", directory)
    monkeypatch.setenv("GATEWAY_MAPPINGS_DIR", str(directory))
    monkeypatch.chdir(tmp_path)
    return directory


def test_check_passes_over_the_shipped_mappings(capsys, mappings_dir):
    assert main(["mappings", "check"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no problems" in captured.err


def test_check_names_every_mistake_with_its_file_and_line(capsys, mappings_dir):
    (mappings_dir / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    assert main(["mappings", "check", "mappings/broken.yaml"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "mappings/broken.yaml:9: resource 'patient', required: 'Patient.nmae' is not an element of R4 Patient "
        "(did you mean 'name'?)",
        "mappings/broken.yaml:11: resource 'patient', element 'identifer': 'Patient.identifer' is not an element "
        "of R4 Patient (did you mean 'identifier'?)",
        "mappings/broken.yaml:12: resource 'patient', element 'gender': table '9999' is not in tables.yaml",
        "mappings/broken.yaml:15: resource 'order': for_each names unknown group 'ordr' (groups: order)",
        "mappings/broken.yaml:20: resource 'event', when: a condition is {field: X, in: [...]}, {present: X}, "
        "{absent: X}, {any: [...]}, {all: [...]} or {not: {...}}; found {'feild': 'PID-3'}",
        "mappings/broken.yaml:22: resource 'event', element 'identifier[0]': AdverseEvent.identifier is a single "
        "element (0..1 in R4): write 'identifier', not 'identifier[0]'",
        "mappings/broken.yaml:23: resource 'event', element 'subject': ref names unknown resource 'patiant'",
        "mappings/broken.yaml:24: resource 'event', element 'seriousness': converter 'table_concept' takes no "
        "argument 'orignal' (it takes: table, original)",
        "mappings/broken.yaml:25: resource 'event', element 'date': 'PEO-3x' is not a field reference like "
        "'RXE-2' or 'PID-3.4'",
        "mappings/broken.yaml:26: resource 'event', element 'category[]': code system 'MedDRAx' is not in "
        "code_systems.yaml (add it under coding_systems or aliases, or write its URI)",
    ]


def test_check_reports_a_yaml_syntax_error_at_its_line(capsys, mappings_dir):
    (mappings_dir / "broken.yaml").write_text("name: broken\nresources:\n  - key: a\n    type: [Patient\n",
                                              encoding="utf-8")
    assert main(["mappings", "check", "mappings/broken.yaml"]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("mappings/broken.yaml:5: not valid YAML: ")


def test_the_gateway_refuses_to_start_on_a_broken_mapping_with_the_same_messages(capsys, mappings_dir, tmp_path):
    (mappings_dir / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    assert main(["mappings", "check"]) == 1
    listed = capsys.readouterr().out.splitlines()
    assert main(["--data-dir", str(tmp_path / "var"), "convert", str(SAMPLES / "rde_o11_cancel.hl7")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[:-1] == [f"error: {line}" for line in listed] and len(listed) == 10
    assert "Traceback" not in "\n".join(err)
    with pytest.raises(Exception) as refused:            # the app factory (gunicorn's wsgi.py) too
        from gateway import create_app
        create_app({"DATA_DIR": str(tmp_path / "var2")})
    assert str(refused.value).splitlines() == listed


def test_mappings_test_prints_the_bundle_then_matches_it_ignoring_ids(capsys, mappings_dir, tmp_path):
    sample = str(SAMPLES / "rde_o11_cancel.hl7")
    assert main(["mappings", "test", "rde_o11", sample]) == 0
    bundle = json.loads(capsys.readouterr().out)
    order = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest")
    assert order["fullUrl"] == "MedicationRequest/1" and order["resource"]["subject"] == {"reference": "Patient/1"}
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(bundle), encoding="utf-8")
    assert main(["mappings", "test", "rde_o11", sample, str(expected)]) == 0
    assert "maps to" in capsys.readouterr().err


def test_mappings_test_shows_the_difference_from_the_expected_bundle(capsys, mappings_dir, tmp_path):
    sample = str(SAMPLES / "rde_o11_cancel.hl7")
    main(["mappings", "test", "rde_o11", sample])
    expected = tmp_path / "expected.json"
    expected.write_text(capsys.readouterr().out.replace('"cancelled"', '"active"'), encoding="utf-8")
    assert main(["mappings", "test", "rde_o11", sample, str(expected)]) == 1
    diff = capsys.readouterr().out.splitlines()
    assert '-        "status": "active",' in diff and '+        "status": "cancelled",' in diff


def test_mappings_test_takes_a_mapping_file_not_yet_in_the_directory(capsys, mappings_dir, tmp_path):
    draft = tmp_path / "draft.yaml"
    draft.write_text((mappings_dir / "rde_o11.yaml").read_text(encoding="utf-8").replace("name: rde_o11", "name: draft"),
                     encoding="utf-8")
    assert main(["mappings", "test", str(draft), str(SAMPLES / "rde_o11_cancel.hl7")]) == 0
    assert json.loads(capsys.readouterr().out)["entry"]
    (tmp_path / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    assert main(["mappings", "test", str(tmp_path / "broken.yaml"), str(SAMPLES / "rde_o11_cancel.hl7")]) == 2
    err = capsys.readouterr().err.splitlines()            # named relative to the working directory
    assert err[0].startswith("broken.yaml:9: ") and err[1].startswith("broken.yaml:11: ") and len(err) == 10
