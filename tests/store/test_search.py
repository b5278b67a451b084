"""FHIR search in the store: every parameter kind, modifier and prefix, chains, _has, _sort, keyset
paging and _include, on data where the right answer is not the trivial one (several patients and
dates, updated versions, deleted resources)."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import pytest

from gateway.store import ResourceStore, SearchParameterRegistry, make_engine
from gateway.store.search import SearchError, parse_search

REGISTRY = Path(__file__).resolve().parent.parent / "data" / "search" / "search_parameters.yaml"
SYS_A, SYS_B = "https://hospital-a.example/mrn", "https://hospital-b.example/mrn"
DRUGS = "https://lecheng-fhir-gateway.org/fhir/sid/nmpa-approval-number"
LECHENG = "https://lecheng-fhir-gateway.org/fhir/StructureDefinition"
UCUM = "http://unitsofmeasure.org"


def _patient(pid, family, given, birth, gender, identifiers, **extra):
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}],
            "birthDate": birth, "gender": gender,
            "identifier": [{"system": s, "value": v} for s, v in identifiers], **extra}


def _order(oid, patient, authored, code, status="active", **extra):
    return {"resourceType": "MedicationRequest", "id": oid, "status": status, "intent": "order",
            "subject": {"reference": f"Patient/{patient}"}, "authoredOn": authored,
            "medicationCodeableConcept": code, **extra}


def _event(eid, patient, seriousness, date, product):
    return {"resourceType": "AdverseEvent", "id": eid, "actuality": "actual",
            "subject": {"reference": f"Patient/{patient}"}, "date": date,
            "seriousness": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness",
                                        "code": seriousness}]},
            "suspectEntity": [{"instance": {"reference": product}}]}


def _empty_store(path: Path) -> ResourceStore:
    return ResourceStore(make_engine(f"sqlite:///{path}"), SearchParameterRegistry.load(REGISTRY),
                         ZoneInfo("Asia/Shanghai"), cursor_secret="test-secret")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ResourceStore:
    """The shared data set; tests only read it."""
    store = _empty_store(tmp_path_factory.mktemp("search") / "search.db")
    with store.write() as tx:
        tx.update({"resourceType": "Organization", "id": "org1", "name": "Boao Super Hospital"})
        tx.update(_patient("p1", "Zhāng", "Wěi", "1975-06-12", "male", [(SYS_A, "A1")],
                           managingOrganization={"reference": "Organization/org1"},
                           meta={"tag": [{"system": "urn:lecheng:tag", "code": "vip"}],
                                 "profile": [f"{LECHENG}/lecheng-patient"]}))
        tx.update(_patient("p2", "Wang", "Fang", "1980", "female", [(SYS_A, "A2"), (SYS_B, "B2")]))
        tx.update(_patient("p3", "Old", "Name", "1990-01-01", "female", [(SYS_A, "A3")]))
        tx.update(_patient("p4", "Zhang", "Deleted", "1960-02-02", "male", [(SYS_A, "A4")]))
        tx.update({"resourceType": "Patient", "id": "p5", "name": [{"text": "Anonymous"}]})
        tx.update(_order("m1", "p1", "2026-03-15T09:25:00+08:00",
                         {"coding": [{"system": DRUGS, "code": "H1", "display": "Aspirin tablets"}]},
                         requester={"reference": "Practitioner/dr1",
                                    "identifier": {"system": "urn:lecheng:staff", "value": "D-77"}},
                         dispenseRequest={"validityPeriod": {"start": "2026-03-15", "end": "2026-04-14"}}))
        tx.update(_order("m2", "p2", "2026-03-16", {"coding": [{"code": "H2"}], "text": "Imported insulin"},
                         status="completed",
                         dispenseRequest={"validityPeriod": {"start": "2026-03-16"}}))
        tx.update(_order("m3", "p1", "2026-04-01T10:00:00Z", {"coding": [{"system": DRUGS, "code": "H1"}]}))
        tx.update(_order("m4", "p4", "2026-03-15", {"coding": [{"system": DRUGS, "code": "H1"}]}))
        tx.update(_event("ae1", "p1", "serious", "2026-03-20T08:00:00+08:00", "Device/d1"))
        tx.update(_event("ae2", "p2", "non-serious", "2026-03-21", "Medication/insulin"))
        tx.update(_event("ae3", "p3", "serious", "2026-02-01", "Device/d1"))
        tx.update({"resourceType": "Device", "id": "d1", "patient": {"reference": "Patient/p1"},
                   "udiCarrier": [{"carrierHRF": "(01)00844588003288"}]})
        tx.update({"resourceType": "MedicationDispense", "id": "md1", "status": "completed",
                   "subject": {"reference": "Patient/p1"}, "authorizingPrescription": [{"reference": "MedicationRequest/m1"}],
                   "quantity": {"value": 30, "unit": "tablet", "system": UCUM, "code": "{tbl}"}})
        tx.update({"resourceType": "MedicationDispense", "id": "md2", "status": "completed",
                   "subject": {"reference": "Patient/p2"}, "quantity": {"value": 5.5, "unit": "mL",
                                                                          "system": UCUM, "code": "mL"}})
        tx.update({"resourceType": "MedicationDispense", "id": "md3", "status": "completed",
                   "subject": {"reference": "Patient/p2"}, "quantity": {"value": 5.46, "unit": "mL"}})
    with store.write() as tx:   # new versions and deletions: search sees only what is current
        tx.update(_patient("p3", "Li", "Zhangsan", "1990-01-01", "female", [(SYS_A, "A3")]))
        tx.delete("Patient", "p4")
        tx.delete("MedicationRequest", "m4")
        tx.delete("AdverseEvent", "ae3")
    return store


def search(store: ResourceStore, resource_type: str, query: str = "", **kwargs):
    parsed = parse_search(store.params, resource_type, parse_qsl(query, keep_blank_values=True), 100, 1000)
    assert not parsed.unknown, parsed.unknown
    return store.search(resource_type, parsed.criteria, kwargs.get("count", parsed.count),
                        kwargs.get("cursor", parsed.cursor), sort=parsed.sort, total=parsed.total,
                        includes=parsed.includes)


def ids(store: ResourceStore, resource_type: str, query: str = "") -> list[str]:
    return sorted(r["id"] for r in search(store, resource_type, query).resources)


# ---------------------------------------------------------------- token

def test_token_system_and_code_forms(store):
    assert ids(store, "Patient", f"identifier={SYS_A}|A2") == ["p2"]
    assert ids(store, "Patient", f"identifier={SYS_B}|A2") == []
    assert ids(store, "Patient", f"identifier={SYS_B}|") == ["p2"]
    assert ids(store, "Patient", "identifier=A1") == ["p1"]
    assert ids(store, "MedicationRequest", "code=|H2") == ["m2"]           # no system
    assert ids(store, "MedicationRequest", "code=|H1") == []               # H1 has a system
    assert ids(store, "MedicationRequest", f"code={DRUGS}|H1") == ["m1", "m3"]


def test_token_not_matches_resources_without_the_code_too(store):
    assert ids(store, "Patient", "gender:not=male") == ["p2", "p3", "p5"]


def test_token_text_searches_display_and_text(store):
    assert ids(store, "MedicationRequest", "code:text=aspirin") == ["m1"]
    assert ids(store, "MedicationRequest", "code:text=imported ins") == ["m2"]


def test_missing_on_token_string_and_reference(store):
    assert ids(store, "Patient", "gender:missing=true") == ["p5"]
    assert ids(store, "Patient", "birthdate:missing=false") == ["p1", "p2", "p3"]
    assert ids(store, "Patient", "organization:missing=false") == ["p1"]
    assert ids(store, "Patient", "family:missing=true") == ["p5"]


# ---------------------------------------------------------------- string

def test_string_starts_with_ignoring_case_and_accents(store):
    assert ids(store, "Patient", "name=zhang") == ["p1", "p3"]      # Zhāng, and given Zhangsan
    assert ids(store, "Patient", "family=ZHANG") == ["p1"]
    assert ids(store, "Patient", "family=ang") == []


def test_string_contains_and_exact(store):
    assert ids(store, "Patient", "family:contains=ang") == ["p1", "p2"]
    assert ids(store, "Patient", "family:exact=Zhāng") == ["p1"]
    assert ids(store, "Patient", "family:exact=Zhang") == []
    assert ids(store, "Patient", "family:exact=zhāng") == []


def test_only_the_current_version_is_searched_and_deleted_are_gone(store):
    assert ids(store, "Patient", "family=old") == []
    assert ids(store, "Patient", "family=li") == ["p3"]
    assert ids(store, "Patient", "identifier=A4") == []
    assert ids(store, "MedicationRequest", f"code={DRUGS}|H1") == ["m1", "m3"]   # m4 deleted


# ---------------------------------------------------------------- date

@pytest.mark.parametrize("query, expected", [
    ("authoredon=2026-03-15", ["m1"]),
    ("authoredon=2026-03", ["m1", "m2"]),
    ("authoredon=2026", ["m1", "m2", "m3"]),
    ("authoredon=ne2026-03-15", ["m2", "m3"]),
    ("authoredon=gt2026-03-15", ["m2", "m3"]),
    ("authoredon=ge2026-03-16", ["m2", "m3"]),
    ("authoredon=lt2026-03-16", ["m1"]),
    ("authoredon=le2026-03-16", ["m1", "m2"]),
    ("authoredon=sa2026-03-15", ["m2", "m3"]),
    ("authoredon=eb2026-04", ["m1", "m2"]),
    ("authoredon=gt2026-03-15T09:25:00%2B08:00", ["m2", "m3"]),   # 09:25:00 itself is not after
    ("authoredon=ge2026-03-15T09:25:00%2B08:00", ["m1", "m2", "m3"]),
    ("authoredon=2026-04-01T18:00%2B08:00", ["m3"]),              # minute precision, other zone
    ("authoredon=ge2026-03-16&authoredon=lt2026-04", ["m2"]),     # repeated = AND
    ("authoredon=2026-03-15,2026-04-01", ["m1", "m3"]),           # comma = OR
])
def test_date_prefixes_and_partial_dates(store, query, expected):
    assert ids(store, "MedicationRequest", query) == expected


def test_period_values_are_ranges_and_an_open_end_is_unbounded(store):
    # m1 valid 2026-03-15 .. 2026-04-14 (whole days), m2 from 2026-03-16 with no end
    assert ids(store, "MedicationRequest", "validity=2026-03") == []            # neither lies inside March
    assert ids(store, "MedicationRequest", "validity=ap2026-04-01") == ["m1", "m2"]
    assert ids(store, "MedicationRequest", "validity=gt2026-12-31") == ["m2"]
    assert ids(store, "MedicationRequest", "validity=sa2026-03-15") == ["m2"]
    assert ids(store, "MedicationRequest", "validity=eb2026-04-15") == ["m1"]
    # ge/le as the spec words them: the range beyond the value overlaps, or the value contains it
    assert ids(store, "MedicationRequest", "validity=le2026-04-14") == ["m1", "m2"]
    assert ids(store, "MedicationRequest", "validity=ge2026-04-14") == ["m2"]
    assert ids(store, "MedicationRequest", "validity=le2026-03-15") == []     # m1 starts on it, m2 after


def test_last_updated_is_searchable(store):
    first = search(store, "Patient", "_id=p1").resources[0]["meta"]["lastUpdated"]
    assert ids(store, "Patient", "_lastUpdated=ge2000-01-01") == ["p1", "p2", "p3", "p5"]
    stamps = {r["id"]: r["meta"]["lastUpdated"] for r in search(store, "Patient", "_lastUpdated=ge2000-01-01").resources}
    newer = ids(store, "Patient", f"_lastUpdated=gt{first}")
    # those written in p1's own millisecond are not after it; p3 was written later (an update)
    assert newer == sorted(i for i, stamp in stamps.items() if stamp > first)
    assert "p3" in newer


# ---------------------------------------------------------------- reference

def test_reference_forms(store):
    assert ids(store, "MedicationRequest", "patient=Patient/p1") == ["m1", "m3"]
    assert ids(store, "MedicationRequest", "patient=p2") == ["m2"]
    assert ids(store, "MedicationRequest", "subject=https://other.example/fhir/Patient/p2") == ["m2"]
    assert ids(store, "MedicationRequest", "subject:Patient=p1") == ["m1", "m3"]
    assert ids(store, "MedicationRequest", "subject:Organization=p1") == []
    assert ids(store, "AdverseEvent", "substance=Device/d1") == ["ae1"]          # ae3 deleted
    assert ids(store, "AdverseEvent", "substance=insulin") == ["ae2"]           # bare id, any type


def test_reference_identifier(store):
    assert ids(store, "MedicationRequest", "requester:identifier=urn:lecheng:staff|D-77") == ["m1"]
    assert ids(store, "MedicationRequest", "requester:identifier=D-78") == []


# ---------------------------------------------------------------- quantity

def test_quantity_with_implicit_precision_prefixes_and_units(store):
    assert ids(store, "MedicationDispense", "quantity=5.5") == ["md2", "md3"]          # [5.45, 5.55)
    assert ids(store, "MedicationDispense", "quantity=5.50") == ["md2"]                # [5.495, 5.505)
    assert ids(store, "MedicationDispense", f"quantity=5.5|{UCUM}|mL") == ["md2"]     # md3 has no system
    assert ids(store, "MedicationDispense", "quantity=5.5||mL") == ["md2", "md3"]      # code or unit
    assert ids(store, "MedicationDispense", "quantity=gt10") == ["md1"]
    assert ids(store, "MedicationDispense", "quantity=le5.46") == ["md3"]
    assert ids(store, "MedicationDispense", "quantity=ap28") == ["md1"]                # within 10%
    with pytest.raises(SearchError):
        ids(store, "MedicationDispense", "quantity=lots")


# ---------------------------------------------------------------- common parameters

def test_id_tag_and_profile(store):
    assert ids(store, "Patient", "_id=p1,p2,p4") == ["p1", "p2"]
    assert ids(store, "Patient", "_id:not=p1") == ["p2", "p3", "p5"]
    assert ids(store, "Patient", "_tag=urn:lecheng:tag|vip") == ["p1"]
    assert ids(store, "Patient", f"_profile={LECHENG}/lecheng-patient") == ["p1"]
    assert ids(store, "Patient", f"_profile:below={LECHENG}") == ["p1"]
    assert ids(store, "Patient", f"_profile={LECHENG}") == []


# ---------------------------------------------------------------- chains

def test_chained_search_on_patient_and_subject(store):
    assert ids(store, "MedicationRequest", f"patient.identifier={SYS_A}|A1") == ["m1", "m3"]
    assert ids(store, "MedicationRequest", "subject:Patient.name=wang") == ["m2"]
    assert ids(store, "MedicationRequest", "patient.family=old") == []              # p3's old version
    assert ids(store, "MedicationRequest", "patient.identifier=A4") == []           # deleted patient
    assert ids(store, "AdverseEvent", "subject.organization.name=boao") == ["ae1"]  # two links


def test_reverse_chain_has(store):
    assert ids(store, "Patient", "_has:AdverseEvent:subject:seriousness=serious") == ["p1"]  # ae3 deleted
    assert ids(store, "Patient", "_has:AdverseEvent:subject:seriousness=serious,non-serious") == ["p1", "p2"]
    assert ids(store, "Patient", "_has:MedicationRequest:patient:status=completed") == ["p2"]
    assert ids(store, "Patient", "_has:MedicationRequest:patient:_has:MedicationDispense:prescription:"
                                 "quantity=gt20") == ["p1"]


def test_unknown_parameters_are_collected_not_raised(store):
    parsed = parse_search(store.params, "Patient", [("shoe-size", "42"), ("patient.colour", "x"),
                                                    ("_has:Device:nope:x", "1"), ("name", "wang")])
    assert parsed.unknown == ["shoe-size", "_has:Device:nope:x"] or parsed.unknown == ["shoe-size",
                                                                                        "patient.colour",
                                                                                        "_has:Device:nope:x"]
    assert [c.param for c in parsed.criteria] == ["name"]


@pytest.mark.parametrize("key, value", [("name:below", "x"), ("birthdate:exact", "2000"), ("gender:missing", "maybe"),
                                        ("family.name", "x"), ("_sort", "shoe-size"), ("_count", "-1"),
                                        ("_include", "Patient:name"), ("_summary", "short"), ("_total", "some")])
def test_unusable_values_and_modifiers_are_errors(store, key, value):
    with pytest.raises(SearchError):
        parse_search(store.params, "Patient", [(key, value)])


# ---------------------------------------------------------------- sorting and paging

def test_sort_several_keys_and_descending(store):
    order = lambda q: [r["id"] for r in search(store, "Patient", q).resources]  # noqa: E731
    assert order("_sort=birthdate") == ["p1", "p2", "p3", "p5"]          # no birth date: last
    assert order("_sort=-birthdate") == ["p3", "p2", "p1", "p5"]
    assert order("_sort=gender,-_id") == ["p3", "p2", "p1", "p5"]      # female < male < none
    assert order("_sort=-_lastUpdated")[0] == "p3"                       # updated last
    orders = [r["id"] for r in search(store, "MedicationRequest", "_sort=-authoredon").resources]
    assert orders == ["m3", "m2", "m1"]


def _walk_pages(store, resource_type, query, count):
    seen, page = [], search(store, resource_type, query, count=count)
    pages = [page]
    while page.next_cursor:
        seen += [r["id"] for r in page.resources]
        page = search(store, resource_type, query, count=count, cursor=page.next_cursor)
        pages.append(page)
    seen += [r["id"] for r in page.resources]
    return seen, pages


def test_keyset_pages_forward_and_back_with_a_sort(store):
    seen, pages = _walk_pages(store, "Patient", "_sort=-birthdate", 1)
    assert seen == ["p3", "p2", "p1", "p5"]
    assert pages[0].previous_cursor is None and pages[-1].next_cursor is None
    back = search(store, "Patient", "_sort=-birthdate", count=1, cursor=pages[2].previous_cursor)
    assert [r["id"] for r in back.resources] == ["p2"]
    back = search(store, "Patient", "_sort=-birthdate", count=1, cursor=back.previous_cursor)
    assert [r["id"] for r in back.resources] == ["p3"] and back.previous_cursor is None


def test_cursor_is_tamper_safe_and_bound_to_its_query(store):
    cursor = search(store, "Patient", "_sort=birthdate", count=1).next_cursor
    with pytest.raises(SearchError, match="altered"):
        search(store, "Patient", "_sort=birthdate", count=1, cursor=cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1])
    with pytest.raises(SearchError, match="another search"):
        search(store, "Patient", "_sort=-birthdate", count=1, cursor=cursor)


def test_paging_1000_results_with_concurrent_inserts_returns_each_exactly_once(tmp_path):
    store = _empty_store(tmp_path / "paging.db")
    with store.write() as tx:
        for i in range(1000):
            tx.create({"resourceType": "Patient", "name": [{"family": f"Bulk{i % 7}"}],
                       "birthDate": f"{1930 + i % 90}-01-01"})
    stop = threading.Event()

    def writer():                            # another client keeps adding matches while we page
        while not stop.is_set():
            with store.write() as tx:
                tx.create({"resourceType": "Patient", "name": [{"family": "Bulk-thread"}], "birthDate": "1950"})
            time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for query in ("name=bulk", "name=bulk&_sort=birthdate,-_lastUpdated"):
            seen, page = [], search(store, "Patient", query, count=37)
            while True:
                seen += [r["id"] for r in page.resources]
                with store.write() as tx:    # and new matches land before and after the cursor between pages
                    for year in ("1929", "2025"):
                        tx.create({"resourceType": "Patient", "name": [{"family": "Bulk-new"}], "birthDate": year})
                if not page.next_cursor:
                    break
                page = search(store, "Patient", query, count=37, cursor=page.next_cursor)
            original = {r["id"] for r in search(store, "Patient", "name=bulk0,bulk1,bulk2,bulk3,bulk4,bulk5,bulk6",
                                                 count=1000).resources}
            assert len(original) == 1000
            assert len(seen) == len(set(seen))
            assert original <= set(seen)
    finally:
        stop.set()
        thread.join()


def test_total_modes(store):
    assert search(store, "Patient", "gender=female").total == 2
    assert search(store, "Patient", "gender=female&_total=none").total is None
    assert search(store, "Patient", "gender=female&_total=estimate").total == 2


# ---------------------------------------------------------------- _include / _revinclude

def _included(store, resource_type, query):
    return sorted(f"{r['resourceType']}/{r['id']}" for r in search(store, resource_type, query).included)


def test_include_targets_once_each(store):
    assert _included(store, "MedicationRequest", "_include=MedicationRequest:patient") == ["Patient/p1", "Patient/p2"]
    assert _included(store, "MedicationRequest", "status=active&_include=MedicationRequest:*") == ["Patient/p1"]
    assert _included(store, "MedicationRequest", "_include=MedicationRequest:subject:Organization") == []


def test_revinclude_and_iterate(store):
    assert _included(store, "Patient", "_id=p1&_revinclude=AdverseEvent:subject") == ["AdverseEvent/ae1"]
    assert _included(store, "AdverseEvent", "_id=ae1&_include=AdverseEvent:subject"
                                            "&_revinclude:iterate=MedicationRequest:patient") == \
        ["MedicationRequest/m1", "MedicationRequest/m3", "Patient/p1"]
    # without :iterate the revinclude applies to the matches (AdverseEvents) only: nothing points there
    assert _included(store, "AdverseEvent", "_id=ae1&_include=AdverseEvent:subject"
                                            "&_revinclude=MedicationRequest:patient") == ["Patient/p1"]
    assert _included(store, "Patient", "_id=p4&_revinclude=MedicationRequest:patient") == []


def test_every_declared_parameter_of_the_real_registry_indexes_and_searches(tmp_path):
    """The shipped search_parameters.yaml (whatever types it holds) loads, indexes and answers."""
    registry = SearchParameterRegistry.load()
    store = ResourceStore(make_engine(f"sqlite:///{tmp_path / 'real.db'}"), registry, ZoneInfo("Asia/Shanghai"))
    probe = {"token": "x", "uri": "http://x", "string": "x", "date": "ge2000", "reference": "Patient/x",
             "quantity": "gt1", "number": "1"}
    for resource_type in registry.resource_types():
        with store.write() as tx:
            tx.create({"resourceType": resource_type, "id": "probe"})
        for name, param in registry.for_type(resource_type).items():
            page = search(store, resource_type, f"{name}={probe[param.type]}")
            assert page.total in (0, 1)


@pytest.mark.parametrize("query", [
    "status=active&patient=Patient/p1&code:text=aspirin",
    "code:text=aspirin&patient=Patient/p1&status=active",
    "patient.identifier=A1&authoredon=ge2026-03-01&status:not=completed",
    "authoredon=ge2026-03-01&status:not=completed&patient.identifier=A1",
])
def test_the_answer_does_not_depend_on_which_criterion_drives_the_query(store, query):
    expected = ["m1"] if "aspirin" in query else ["m1", "m3"]
    assert ids(store, "MedicationRequest", query) == expected


def test_cursor_key_is_kept_in_the_database_for_every_process(tmp_path, monkeypatch):
    """Two gateways on one database (two machines: no data directory in common) honour each other's
    cursors; a gateway on another database does not."""
    from gateway import create_app
    monkeypatch.delenv("GATEWAY_DATABASE_URL", raising=False)
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    first = create_app({"DATA_DIR": str(tmp_path / "a"), "DATABASE_URL": shared, "TESTING": True}).extensions["gateway"].store
    second = create_app({"DATA_DIR": str(tmp_path / "b"), "DATABASE_URL": shared, "TESTING": True}).extensions["gateway"].store
    token = first.cursors.encode("fingerprint", False, ["1980"], "p1")
    assert second.cursors.decode(token, "fingerprint", 1) == (False, ["1980"], "p1")
    assert not list(tmp_path.glob("*/search-cursor.key"))
    other = create_app({"DATA_DIR": str(tmp_path / "elsewhere"), "TESTING": True}).extensions["gateway"].store
    with pytest.raises(SearchError, match="altered"):
        other.cursors.decode(token, "fingerprint", 1)


def test_chains_and_has_see_only_what_the_caller_may_see(tmp_path):
    """A hospital cannot learn through _has or a chain what another hospital sent."""
    from gateway.store import access
    store = _empty_store(tmp_path / "orgs.db")

    def sent_by(tx, resource, organization):
        with access.sending_as(organization):       # the sender owns what it stores first
            tx.update(resource)

    with store.write() as tx:
        sent_by(tx, _patient("pa", "Wang", "A", "1980", "female", [(SYS_A, "A1")]), "HOSP_A")
        sent_by(tx, _patient("pb", "Wang", "B", "1981", "male", [(SYS_B, "B1")]), "HOSP_B")
        sent_by(tx, _event("ae-a", "pa", "non-serious", "2026-03-01", "Device/d1"), "HOSP_A")
        sent_by(tx, _event("ae-b", "pa", "serious", "2026-03-02", "Device/d1"), "HOSP_B")
        sent_by(tx, _order("m-a", "pb", "2026-03-01", {"coding": [{"code": "H1"}]}), "HOSP_A")
    with access.restricted_to(access.AccessScope("HOSP_A")):
        assert ids(store, "Patient", "_has:AdverseEvent:subject:seriousness=serious") == []
        assert ids(store, "Patient", "_has:AdverseEvent:subject:seriousness=non-serious") == ["pa"]
        assert ids(store, "MedicationRequest", "patient.name=wang") == []          # pb is HOSP_B's
        assert ids(store, "MedicationRequest", "patient=pb") == ["m-a"]            # its own order still
    assert ids(store, "Patient", "_has:AdverseEvent:subject:seriousness=serious") == ["pa"]   # unrestricted
    assert ids(store, "MedicationRequest", "patient.name=wang") == ["m-a"]
