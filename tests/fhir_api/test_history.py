"""_history at instance, type and system level: newest first, deletions included, _since, _count paging."""
from __future__ import annotations

import time

from test_writes import patient


def _setup(client):
    client.put("/fhir/Patient/a", json=patient(id="a"))
    client.put("/fhir/Patient/a", json=patient(id="a", gender="male"))
    client.post("/fhir/Organization", json={"resourceType": "Organization", "name": "BSH"})
    client.delete("/fhir/Patient/a")


def test_type_history_lists_every_version_of_the_type_newest_first(client):
    _setup(client)
    bundle = client.get("/fhir/Patient/_history").get_json()
    assert bundle["type"] == "history" and bundle["total"] == 3
    assert [(e["request"]["method"], e["response"]["etag"]) for e in bundle["entry"]] == [
        ("DELETE", 'W/"3"'), ("PUT", 'W/"2"'), ("PUT", 'W/"1"')]
    assert "resource" not in bundle["entry"][0]
    assert bundle["entry"][1]["resource"]["gender"] == "male"
    assert bundle["entry"][2]["request"]["url"] == "Patient/a"


def test_system_history_includes_every_type(client):
    _setup(client)
    bundle = client.get("/fhir/_history").get_json()
    assert bundle["total"] == 4
    org = next(e for e in bundle["entry"] if e["fullUrl"].startswith("http://localhost/fhir/Organization/"))
    assert org["request"] == {"method": "POST", "url": "Organization"}
    assert org["response"]["status"] == "201 Created"


def test_history_since_keeps_later_versions_only(client):
    client.put("/fhir/Patient/a", json=patient(id="a"))
    time.sleep(0.01)
    stamp = client.get("/fhir/Patient/a").get_json()["meta"]["lastUpdated"]
    time.sleep(0.01)
    client.put("/fhir/Patient/a", json=patient(id="a", gender="male"))
    bundle = client.get(f"/fhir/Patient/a/_history?_since={stamp}").get_json()
    assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"2"']
    assert client.get("/fhir/_history?_since=2999-01-01T00:00:00Z").get_json()["total"] == 0
    bad = client.get("/fhir/_history?_since=yesterday")
    assert bad.status_code == 400 and bad.get_json()["issue"][0]["expression"] == ["_since"]


def test_history_pages_with_count_and_next_links_each_version_once(client):
    for i in range(5):
        client.put("/fhir/Patient/a", json=patient(id="a", birthDate=f"198{i}-01-01"))
    seen, url = [], "/fhir/Patient/_history?_count=2"
    while url:
        bundle = client.get(url).get_json()
        assert bundle["total"] == 5
        seen += [e["response"]["etag"] for e in bundle["entry"]]
        client.put("/fhir/Patient/b", json=patient(id="b"))   # a write while paging shifts nothing
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        url = url and url[url.index("/fhir/"):]
    assert seen == ['W/"5"', 'W/"4"', 'W/"3"', 'W/"2"', 'W/"1"']


def test_history_of_unknown_resource_is_404(client):
    assert client.get("/fhir/Patient/nope/_history").status_code == 404
