"""fhir-gateway convert --mapping NAME FILE: hospital XML, CSV and JSON exports printed as a Bundle."""
from __future__ import annotations

import json

from conftest import SAMPLES
from gateway.cli import main


def test_convert_prints_a_csv_register_as_a_batch_of_every_row(capsys, tmp_path):
    code = main(["--data-dir", str(tmp_path), "convert", "--mapping", "device_first_use",
                 str(SAMPLES / "device_first_use.csv")])
    out, err = capsys.readouterr()
    bundle = json.loads(out)
    assert code == 0
    assert bundle["type"] == "batch"
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == \
        ["Organization", "Patient", "Device", "DeviceUseStatement"] * 2
    assert bundle["entry"][2]["request"] == {
        "method": "PUT", "url": "Device?identifier=https://lecheng-fhir-gateway.org/fhir/sid/device-udi-serial|"
                                "00643169007222:SN-PMC-778812"}
    assert "lc-dev-2" in err and "(from line 3, column 'udi_di')" in err      # a warning, located


def test_convert_prints_an_xml_prescription_as_one_transaction(capsys, tmp_path):
    code = main(["--data-dir", str(tmp_path), "convert", "--mapping", "hospital_prescription",
                 str(SAMPLES / "hospital_prescription.xml")])
    bundle = json.loads(capsys.readouterr().out)
    assert code == 0 and bundle["type"] == "transaction"
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == \
        ["Organization", "Patient", "Practitioner", "MedicationRequest"]


def test_convert_names_where_a_document_is_wrong(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    document = json.loads((SAMPLES / "online_clinic_prescription.json").read_text(encoding="utf-8"))
    document["items"][1]["dose"]["value"] = "two"
    bad.write_text(json.dumps(document), encoding="utf-8")
    code = main(["--data-dir", str(tmp_path), "convert", "--mapping", "online_clinic_prescription", str(bad)])
    assert code == 1
    assert "error: /items/1/dose/value: Not a valid number." in capsys.readouterr().err


def test_convert_refuses_an_unreadable_document_and_an_unknown_mapping(capsys, tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<Prescription xmlns='urn:hainan:his:rx:1'><Hospital></Prescription>")
    assert main(["--data-dir", str(tmp_path), "convert", "--mapping", "hospital_prescription", str(bad)]) == 2
    assert "error: line 1, column " in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "convert", "--mapping", "no_such", str(bad)]) == 2
    assert "no mapping named no_such" in capsys.readouterr().err
