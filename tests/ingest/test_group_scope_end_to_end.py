"""Issue 12's borrowed-segment reproductions end to end, over real HTTP and MLLP on loopback: what
the store holds afterwards is compared exactly, version by version, with what sending each group
in a message of its own stores."""
from __future__ import annotations

import socket

import pytest
import requests

from conftest import DATA, served
from gateway import create_app
from gateway.ingest.mllp import frame
from gateway.ingest.mllp_handler import mllp_server
from stored import stored_resources
from tests.security.credentials import http_token, register

GROUPS = DATA / "groups"
APPROVAL = "https://lecheng-fhir-gateway.org/fhir/StructureDefinition/pilot-zone-approval"


class Sender:
    """A hospital (BOAO_SUPER_HOSPITAL) sending HL7 to one gateway over HTTP or MLLP."""

    def __init__(self, app, transport: str):
        self.app, self.transport = app, transport
        self.gateway = app.extensions["gateway"]

    def __enter__(self):
        if self.transport == "http":
            self._served = served(self.app)
            self.base = self._served.__enter__()
            register(self.app, "scope-hospital", "hospital")
            self.token = http_token(self.base, "scope-hospital")
        else:
            self.server = mllp_server(self.gateway.pipeline, "127.0.0.1", 0)
            self.server.start()
        return self

    def __exit__(self, *exc):
        if self.transport == "http":
            self._served.__exit__(*exc)
        else:
            self.server.stop()

    def send(self, raw: bytes) -> list[str]:
        """One message in; its ACK's MSA fields out."""
        if self.transport == "http":
            response = requests.post(f"{self.base}/hl7v2", data=raw, timeout=30, headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": "x-application/hl7-v2+er7"})
            ack = response.content
        else:
            with socket.create_connection(self.server.address, timeout=30) as sock:
                sock.sendall(frame(raw.replace(b"|AL|NE|CHN|", b"|||CHN|")))   # original mode: AA/AE/AR
                ack = b""
                while b"\x1c\x0d" not in ack:
                    chunk = sock.recv(65536)
                    assert chunk, "connection closed before the ACK"
                    ack += chunk
        text = ack.strip(b"\x0b\x1c\r").decode("utf-8")
        return next(line.split("|") for line in text.split("\r") if line.startswith("MSA"))

    def history(self, resource_type: str, number: str) -> list[dict]:
        """Every version of the resource carrying identifier value ``number``."""
        found = next(r for r in self.gateway.store.search(resource_type, [], 100).resources
                     if any(i["value"] == number for i in _identifiers(r)))
        return [entry[0] for entry in self.gateway.store.history(resource_type, found["id"])]


def _identifiers(resource: dict) -> list[dict]:
    found = resource.get("identifier") or []
    return [found] if isinstance(found, dict) else found


def _without_meta(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != "meta"}


def _groups_of(raw: bytes, start: bytes) -> list[bytes]:
    """The message cut in one message per group starting at ``start`` (the same MSH, PID, PV1)."""
    lines = [line for line in raw.split(b"\r") if line]
    first = next(i for i, line in enumerate(lines) if line.startswith(start + b"|"))
    head, groups = lines[:first], []
    for line in lines[first:]:
        if line.startswith(start + b"|"):
            groups.append([])
        groups[-1].append(line)
    return [b"\r".join(head + group) + b"\r" for group in groups]


@pytest.fixture(params=["http", "mllp"])
def transport(request):
    return request.param


def _app(tmp_path, name: str):
    return create_app({"DATA_DIR": str(tmp_path / name), "TESTING": True})


def test_a_bare_cancel_changes_only_the_status_of_its_order(tmp_path, transport):
    with Sender(_app(tmp_path, "whole"), transport) as hospital:
        assert hospital.send((GROUPS / "rde_o11_order_7002.hl7").read_bytes())[1] == "AA"
        assert hospital.send((GROUPS / "rde_o11_new_7001_then_bare_cancel_7002.hl7").read_bytes())[1] == "AA"
        history = hospital.history("MedicationRequest", "QH-ORD-7002")
        whole = stored_resources(hospital.gateway)
    created, cancelled = sorted(history, key=lambda r: int(r["meta"]["versionId"]))
    assert cancelled["meta"]["versionId"] == "2" and cancelled["status"] == "cancelled"
    assert _without_meta(cancelled) == {**_without_meta(created), "status": "cancelled"}
    assert created["medicationCodeableConcept"]["coding"][0]["code"] == "H20030233"
    assert created["dosageInstruction"][0]["route"]["coding"][0]["code"] == "SL"
    assert created["dosageInstruction"][0]["timing"]["code"]["coding"][0]["code"] == "BID"
    assert created["dispenseRequest"]["quantity"]["value"] == 14

    with Sender(_app(tmp_path, "split"), transport) as hospital:
        assert hospital.send((GROUPS / "rde_o11_order_7002.hl7").read_bytes())[1] == "AA"
        for part in _groups_of((GROUPS / "rde_o11_new_7001_then_bare_cancel_7002.hl7").read_bytes(), b"ORC"):
            assert hospital.send(part)[1] == "AA"
        assert stored_resources(hospital.gateway) == whole


def test_an_order_without_rxr_stores_no_route(tmp_path, transport):
    raw = (GROUPS / "rde_o11_three_orders_dc_without_route.hl7").read_bytes()
    with Sender(_app(tmp_path, "whole"), transport) as hospital:
        msa = hospital.send(raw)
        whole = stored_resources(hospital.gateway)
    orders = {i["value"]: r for r in whole if r["resourceType"] == "MedicationRequest" for i in r["identifier"]}
    assert orders["QH-ORD-8001"]["dosageInstruction"][0]["route"]["coding"][0]["code"] == "PO"
    assert orders["QH-ORD-8002"]["dosageInstruction"][0]["route"]["coding"][0]["code"] == "SL"
    assert all("route" not in d for d in orders["QH-ORD-8003"].get("dosageInstruction", []))
    with Sender(_app(tmp_path, "split"), transport) as hospital:
        assert [hospital.send(part)[1] for part in _groups_of(raw, b"ORC")] == [msa[1]] * 3
        assert stored_resources(hospital.gateway) == whole


def test_a_device_after_a_drug_and_its_zlc_is_stored_without_that_approval(tmp_path, transport):
    with Sender(_app(tmp_path, "whole"), transport) as hospital:
        assert hospital.send((GROUPS / "pex_p07_zlc_after_drug_then_device.hl7").read_bytes())[1] == "AA"
        stored = stored_resources(hospital.gateway)
    device = next(r for r in stored if r["resourceType"] == "Device")
    assert device["type"]["coding"][0]["code"] == "PUMP-200"
    assert "extension" not in device


def test_an_imported_device_without_its_own_approval_is_flagged_not_given_the_drugs(tmp_path, transport):
    """A report of harm is never refused for a missing approval (profiles/README "Context"): the
    device is stored flagged needs-review, and the drug's approval is not lent to it."""
    with Sender(_app(tmp_path, "whole"), transport) as hospital:
        msa = hospital.send((GROUPS / "pex_p07_zlc_after_drug_then_imported_device.hl7").read_bytes())
        (device,) = hospital.gateway.store.search("Device", [], 10).resources
    assert msa[1] == "AA"
    assert "extension" not in device
    assert "needs-review" in [t.get("code") for t in device["meta"]["tag"]]
