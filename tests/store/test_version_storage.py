"""A resource's current JSON is stored once (in ``resources``); superseded versions keep theirs in
``resource_versions``. Every version still reads back exactly as it was written."""
from __future__ import annotations

from sqlalchemy import func, select

from gateway.store import schema


def _patient(name: str, resource_id: str = "p1") -> dict:
    return {"resourceType": "Patient", "id": resource_id, "name": [{"family": name}]}


def _stored_json_bytes(store) -> tuple[int, int]:
    r, v = schema.resources, schema.resource_versions
    with store.engine.connect() as conn:
        return (conn.execute(select(func.sum(func.length(r.c.content)))).scalar_one() or 0,
                conn.execute(select(func.sum(func.length(v.c.content)))).scalar_one() or 0)


def test_a_new_resource_keeps_its_json_once(gateway):
    store = gateway.store
    with store.write() as tx:
        tx.create(_patient("Wang"))
    current, versions = _stored_json_bytes(store)
    assert current > 0 and versions == 0
    assert store.vread("Patient", "p1", "1")["name"] == [{"family": "Wang"}]
    assert store.history("Patient", "p1")[0][0]["name"] == [{"family": "Wang"}]


def test_every_version_reads_back_after_updates_a_delete_and_a_resurrection(gateway):
    store = gateway.store
    with store.write() as tx:
        tx.create(_patient("Wang"))
    with store.write() as tx:
        tx.update(_patient("Li"))
    with store.write() as tx:
        tx.delete("Patient", "p1")
    with store.write() as tx:
        tx.update(_patient("Zhang"))
    assert [store.vread("Patient", "p1", str(n))["name"][0]["family"] for n in (1, 2, 4)] == ["Wang", "Li", "Zhang"]
    history = store.history("Patient", "p1")
    assert [(entry["meta"]["versionId"], method, deleted) for entry, method, deleted in history] == [
        ("4", "PUT", False), ("3", "DELETE", True), ("2", "PUT", False), ("1", "POST", False)]
    assert [e["name"][0]["family"] for e, _m, deleted in history if not deleted] == ["Zhang", "Li", "Wang"]
    page = store.history_page("Patient", "p1")
    assert [e.resource.get("name", [{}])[0].get("family") for e in page.entries] == ["Zhang", None, "Li", "Wang"]
    v = schema.resource_versions
    with store.engine.connect() as conn:
        empty = conn.execute(select(v.c.version_id).where(func.length(v.c.content) == 0)).scalars().all()
    assert empty == [4]                 # only the current version defers to resources.content
