"""Values longer than the store keeps get the same clear answer on SQLite and PostgreSQL (issue 13:
PostgreSQL answered 500 or AR 207 where SQLite accepted them): HL7 names the field (ERR-3 102),
FHIR answers 400 with the element, and nothing is stored."""
from __future__ import annotations

from sqlalchemy import func, select

from gateway.store import schema
from gateway.store.search_parameters import INDEX_VALUE_MAX_CHARS
from tests.security.credentials import authenticated
from tests.store.test_write_races import FHIR_JSON, _patient, _post_hl7, _rde

TOO_LONG = INDEX_VALUE_MAX_CHARS + 45


def _stored(app) -> int:
    with app.extensions["gateway"].store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(schema.resources)).scalar_one()


def _ack(response) -> tuple[str, list[list[str]]]:
    segments = [s.split("|") for s in response.data.decode().split("\r") if s]
    return next(s for s in segments if s[0] == "MSA")[1], [s for s in segments if s[0] == "ERR" and s[4] == "E"]


def test_an_overlong_control_id_is_ar_at_msh10_and_logged(both_stores_app):
    hospital = authenticated(both_stores_app, "hospital")
    response = _post_hl7(hospital, _rde("LONG-1", "C" * TOO_LONG, "LONG-MRN-1"))
    code, errors = _ack(response)
    assert code == "AR" and errors[0][2] == "MSH^1^10^1" and errors[0][3].startswith("102^")
    assert f"{TOO_LONG} characters" in errors[0][8]
    logged = both_stores_app.extensions["gateway"].message_log.get(int(response.headers["X-Message-Log-Id"]))
    assert logged.status == "rejected" and logged.raw.startswith(b"MSH|") and len(logged.control_id) == 255
    assert _stored(both_stores_app) == 0


def test_an_overlong_order_number_or_mrn_is_ae_at_its_field_and_nothing_is_stored(both_stores_app):
    hospital = authenticated(both_stores_app, "hospital")
    for raw, where in [(_rde("O" * TOO_LONG, "LONG-2", "LONG-MRN-2"), "ORC^4^2^1"),
                       (_rde("LONG-3", "LONG-3", "M" * TOO_LONG), "PID^2^3^1")]:
        code, errors = _ack(_post_hl7(hospital, raw))
        assert code == "AE" and errors[0][2] == where and errors[0][3].startswith("102^"), errors
        assert "identifier" in errors[0][8] and f"at most {INDEX_VALUE_MAX_CHARS}" in errors[0][8]
    assert _stored(both_stores_app) == 0


def test_an_overlong_identifier_over_fhir_is_400_naming_the_element(both_stores_app):
    admin = authenticated(both_stores_app, "admin")
    response = admin.post("/fhir/Patient", json=_patient("P" * TOO_LONG), content_type=FHIR_JSON)
    assert response.status_code == 400
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "too-long" and issue["expression"] == ["Patient.identifier"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1b0c8e-0000-4000-8000-000000000001", "resource": _patient("P" * TOO_LONG),
         "request": {"method": "POST", "url": "Patient"}}]}
    assert admin.post("/fhir", json=bundle, content_type=FHIR_JSON).status_code == 400
    assert _stored(both_stores_app) == 0
    assert admin.post("/fhir/Patient", json=_patient("P" * INDEX_VALUE_MAX_CHARS),
                      content_type=FHIR_JSON).status_code == 201          # the limit itself is kept


# A NUL byte in a field: PostgreSQL text cannot hold U+0000, SQLite can. Found by the HTTP fuzz test
# once its module-scoped gateway ran on PostgreSQL too (a CSV row's device type: 500 there, stored here).

def test_a_nul_in_a_searchable_hl7_field_is_ae_at_its_field_on_both_stores(both_stores_app):
    hospital = authenticated(both_stores_app, "hospital")
    code, errors = _ack(_post_hl7(hospital, _rde("NUL-1", "NUL-1", "NUL\x00MRN")))
    assert code == "AE" and errors[0][2] == "PID^2^3^1" and errors[0][3].startswith("102^"), errors
    assert "U+0000" in errors[0][8]
    assert _stored(both_stores_app) == 0


def test_a_nul_in_the_control_id_is_logged_and_answered_alike_on_both_stores(both_stores_app):
    hospital = authenticated(both_stores_app, "hospital")
    raw = _rde("NUL-2", "NUL\x00CTRL", "NUL-MRN-2")
    response = _post_hl7(hospital, raw)
    assert response.status_code == 200 and b"MSA|AA|" in response.data, response.data
    logged = both_stores_app.extensions["gateway"].message_log.get(int(response.headers["X-Message-Log-Id"]))
    assert logged.raw == raw and logged.control_id == "NULCTRL"


def test_a_nul_in_a_searchable_fhir_element_is_400_naming_it(both_stores_app):
    admin = authenticated(both_stores_app, "admin")
    response = admin.post("/fhir/Patient", json=_patient("P\x00NUL"), content_type=FHIR_JSON)
    assert response.status_code == 400, response.data
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "invalid" and issue["expression"] == ["Patient.identifier"]
    assert "U+0000" in issue["diagnostics"]
    assert _stored(both_stores_app) == 0


def test_a_nul_in_a_search_value_is_400_naming_the_parameter(both_stores_app):
    admin = authenticated(both_stores_app, "admin")
    response = admin.get("/fhir/Patient?identifier=P%00NUL")
    assert response.status_code == 400, response.data
    issue = response.get_json()["issue"][0]
    assert "U+0000" in issue["diagnostics"] and issue["expression"] == ["identifier"]
