"""Resource and audit JSON is stored deflated against a preset dictionary (gateway/store/content.py):
every reader still gets the JSON it was given, rows from before compression still read, and the
dictionary, being part of the stored format, never changes under existing rows."""
from __future__ import annotations

import hashlib

import orjson
from sqlalchemy import Boolean, LargeBinary, bindparam, select, text

from conftest import post_hl7, sample
from gateway.store import schema
from gateway.store.content import DICTIONARY_FILE, deflate, inflate
from tests.security.credentials import authenticated

# rows written with this dictionary can only be read with it: a new one is a new file and marker
DICTIONARY_SHA256 = "618b8320e468a54c128184c3a9c8c3ae3104b5218fcaede51496c3cf31bebea2"


def test_the_dictionary_is_the_one_existing_rows_were_written_with():
    assert hashlib.sha256(DICTIONARY_FILE.read_bytes()).hexdigest() == DICTIONARY_SHA256


def test_deflate_round_trips_odd_values():
    for value in [b"{}", b'{"a":"\xe5\xbc\xa0\xe4\xb8\x89"}', b"x" * 200_000, bytes(range(256)) * 10]:
        stored = deflate(value)
        assert stored[:1] == b"\x01" and inflate(stored) == value
    assert deflate(b"") == b"" and inflate(b"") == b""     # CURRENT_CONTENT stays empty


def test_an_order_is_stored_deflated_and_read_back_whole(both_stores_app):
    client = authenticated(both_stores_app, "hospital")
    _response, ack = post_hl7(client, sample("rde_o11_new_imported.hl7"))
    assert ack[1][1] == "AA"
    engine = both_stores_app.extensions["gateway"].store.engine
    raw_content = schema.resources.c.content.type.impl      # the column's bytes as the database holds them
    with engine.connect() as conn:
        row = conn.execute(select(schema.resources.c.res_id, schema.resources.c.content.label("json"),
                                  schema.resources.c.content.cast(raw_content).label("stored"))
                           .where(schema.resources.c.res_type == "MedicationRequest")).one()
    assert row.stored[:1] == b"\x01" and len(row.stored) < len(row.json) / 3
    order = orjson.loads(row.json)
    response = client.get(f"/fhir/MedicationRequest/{row.res_id}")
    assert response.status_code == 200 and response.get_json() == order
    assert order["identifier"][0]["value"] == "BSH-RX-0001"


def test_rows_written_before_compression_are_read_as_they_are(both_stores_app):
    """A store that ran an earlier version holds plain JSON: it reads, updates and keeps its history."""
    engine = both_stores_app.extensions["gateway"].store.engine
    patient = {"resourceType": "Patient", "id": "plain-1", "gender": "female",
               "identifier": [{"system": "https://lecheng-fhir-gateway.org/fhir/sid/BOAO_SUPER_HOSPITAL/mr",
                               "value": "PLAIN-1"}],
               "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}}
    with engine.begin() as conn:        # the earlier version's rows: plain JSON bytes, bypassing the column type
        conn.execute(text("INSERT INTO resources (res_type, res_id, version_id, last_updated, deleted, content) "
                          "VALUES ('Patient', 'plain-1', 1, '2026-01-01T00:00:00Z', :no, :json)")
                     .bindparams(bindparam("json", type_=LargeBinary), bindparam("no", type_=Boolean)),
                     {"json": orjson.dumps(patient), "no": False})
        conn.execute(text("INSERT INTO resource_versions (res_type, res_id, version_id, last_updated, deleted, "
                          "method, content) VALUES ('Patient', 'plain-1', 1, '2026-01-01T00:00:00Z', :no, "
                          "'POST', :empty)").bindparams(bindparam("empty", type_=LargeBinary),
                                                        bindparam("no", type_=Boolean)),
                     {"empty": b"", "no": False})
    admin = authenticated(both_stores_app, "admin")
    assert admin.get("/fhir/Patient/plain-1").get_json()["gender"] == "female"
    updated = admin.put("/fhir/Patient/plain-1", json={**patient, "gender": "male"})
    assert updated.status_code == 200, updated.get_data(as_text=True)
    assert admin.get("/fhir/Patient/plain-1/_history/1").get_json()["gender"] == "female"
    assert admin.get("/fhir/Patient/plain-1").get_json()["gender"] == "male"
