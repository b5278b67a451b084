"""The shared sample messages and the Microsoft FHIR-Converter externals, read end to end."""
from pathlib import Path

import pytest

from gateway.hl7v2 import parse_message

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"


def load(name: str):
    return parse_message((DATA / name).read_bytes())


def test_every_good_sample_parses_without_warnings():
    names = sorted(p.name for p in DATA.glob("*.hl7") if not p.name.startswith("bad_"))
    assert len(names) == 9
    for name in names:
        assert load(name).warnings == [], name


def test_new_order_sample_reads_the_t_escape_in_the_dosage_text():
    msg = load("rde_o11_new_imported.hl7")
    assert msg.get("RXE-7.2") == "首剂 600 mg，之后每两周 300 mg & 皮下注射"


def test_new_order_sample_keeps_the_local_zlc_approval_segment():
    msg = load("rde_o11_new_imported.hl7")
    assert msg.segments[-1].name == "ZLC"
    assert msg.get("ZLC-2") == "LC2026-A-0042"
    assert msg.get("ZLC-5.2") == "Hainan Medical Products Administration"


def test_new_order_sample_keeps_both_patient_identifiers():
    pid = load("rde_o11_new_imported.hl7").segment("PID")
    assert [(rep[0][0], rep[3][0], rep[4][0]) for rep in pid.field(3)] == [
        ("H0012345", "BOAO_SUPER_HOSPITAL", "MR"), ("46010019900101123X", "CHNMPS", "NNCHN")]


def test_gb18030_sample_has_two_order_groups():
    groups = load("rde_o11_two_orders_gb18030.hl7").groups("ORC")
    assert [[s.name for s in g] for g in groups] == [["ORC", "RXE", "RXR"]] * 2
    assert [g[0].value(2) for g in groups] == ["HMU-RX-1001", "HMU-RX-1002"]
    assert [g[1].value(2, comp=2) for g in groups] == ["阿托伐他汀钙片 20 mg", "硫酸氢氯吡格雷片 75 mg"]


def test_gb18030_sample_old_style_rxe1_timing_is_readable():
    assert load("rde_o11_two_orders_gb18030.hl7").get("RXE-1.2") == "QD"


def test_cancel_sample_has_order_control_ca():
    msg = load("rde_o11_cancel.hl7")
    assert (msg.get("ORC-1"), msg.get("ORC-2")) == ("CA", "BSH-RX-0001")


def test_dispense_sample_reads_lot_and_expiry():
    rxd = load("rds_o13_dispense.hl7").segment("RXD")
    assert (rxd.value(18), rxd.value(19)) == ("LOT2026A17", "20271231")


def test_v282_device_sample_reads_the_prt_udi():
    msg = load("oru_r01_device_use.hl7")
    assert msg.version == "2.8.2"
    assert msg.get("PRT-16") == "00643169007222"
    assert (msg.get("PRT-19"), msg.get("PRT-20")) == ("LOT-MC2A-0911", "SN-PMC-778812")


def test_adverse_event_sample_groups_peo_with_its_pcr():
    groups = load("pex_p07_adverse_event.hl7").groups("PEO", members={"PCR"})
    assert [[s.name for s in g] for g in groups] == [["PEO", "PCR"]]
    assert groups[0][1].value(20) == "S"  # PCR-20 causality


@pytest.mark.parametrize("name,segments", [("RDE-O11-01.hl7", 19), ("RDE-O11-02.hl7", 24),
                                           ("RDS-O13-01.hl7", 19)])
def test_lf_terminated_v28_externals_split_into_their_segments(name, segments):
    msg = load(name)
    assert msg.version == "2.8"
    assert len(msg.segments) == segments


def test_external_keeps_timestamps_with_offsets_verbatim():
    msg = load("RDE-O11-01.hl7")
    assert msg.get("PID-7") == "198808181126+0215"
    assert msg.get("MSH-7") == "202108181126+0215"


def test_external_second_orc_group_is_its_own_order():
    groups = load("RDE-O11-02.hl7").groups("ORC")
    assert [g[0].value(2) for g in groups] == ["1163422591", "1422591"]


def test_external_subcomponents_of_the_patient_name_are_read():
    msg = load("RDE-O11-01.hl7")
    assert msg.get("PID-5.1.1") == "EVERYMAN"
    assert msg.get("PID-5.1.5") == "Aniston"
    assert msg.get("PID-5(2).1.1") == "Josh"
