"""The command line: convert prints the Bundle or fails with reasons; serve stays on loopback."""
from __future__ import annotations

import json

from conftest import SAMPLES
from gateway.cli import main


def test_convert_prints_the_bundle(capsys, tmp_path):
    code = main(["--data-dir", str(tmp_path), "convert", str(SAMPLES / "rde_o11_two_orders_gb18030.hl7")])
    bundle = json.loads(capsys.readouterr().out)
    assert code == 0
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types.count("MedicationRequest") == 2 and types.count("Patient") == 1


def test_convert_fails_with_reasons_on_bad_input(capsys, tmp_path):
    code = main(["--data-dir", str(tmp_path), "convert", str(SAMPLES / "bad_missing_msg_type.hl7")])
    assert code == 2
    assert "MSH-9" in capsys.readouterr().err


def test_serve_refuses_a_public_address_until_there_is_authentication(capsys, tmp_path):
    assert main(["--data-dir", str(tmp_path), "serve", "--host", "0.0.0.0"]) == 2
    assert "127.0.0.1 only" in capsys.readouterr().err
