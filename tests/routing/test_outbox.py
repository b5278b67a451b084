"""The outbox table: same-transaction writes, per-resource order, leases, replay, what an organization was sent."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.routing import Outbox, ReplayRefused, Router, routed_resource_ids
from gateway.routing.routes import parse_routes
from gateway.runtime import Gateway
from gateway.store import ResourceStore, SearchParameterRegistry, make_engine

ROUTES = """
destinations:
  epc: {base_url: "http://127.0.0.1:9/fhir", organization: HAINAN_EPC}
  province: {base_url: "http://127.0.0.1:9/fhir", organization: HNMPA}
rules:
  - {name: orders, resource: MedicationRequest, to: epc}
  - {name: events, resource: AdverseEvent, to: province}
  - name: hold-drafts
    resource: MedicationRequest
    where: "status = 'draft'"
    hold: drafts are reviewed first
"""


@pytest.fixture
def gateway(tmp_path):
    """Just the parts routing writes with: the store, the router, the outbox (no mappings or profiles)."""
    (tmp_path / "routes.yaml").write_text(ROUTES)
    engine = make_engine(os.environ.get("GATEWAY_DATABASE_URL") or f"sqlite:///{tmp_path / 'gateway.db'}")
    return SimpleNamespace(store=ResourceStore(engine, SearchParameterRegistry.load()),
                           router=Router(parse_routes(ROUTES)), outbox=Outbox(engine))


def store(gateway, resource: dict, versions: int = 1) -> dict:
    with gateway.store.write() as tx:
        stored = tx.create(resource)
        gateway.router.route(tx.conn, [(stored, "create")], "RDE^O11", "H")
        for n in range(2, versions + 1):
            stored = tx.update({**stored, "note": [{"text": str(n)}]})
            gateway.router.route(tx.conn, [(stored, "update")], "RDE^O11", "H")
    return stored


def order(status: str = "active") -> dict:
    return {"resourceType": "MedicationRequest", "status": status, "intent": "order"}


def test_deliveries_commit_and_roll_back_with_the_resources(gateway):
    with pytest.raises(RuntimeError):
        with gateway.store.write() as tx:
            stored = tx.create(order())
            gateway.router.on_stored(tx, [(None, stored, "create")], None)
            raise RuntimeError("the message failed after routing")
    assert gateway.outbox.list() == []
    stored = store(gateway, order())
    (delivery,) = gateway.outbox.list()
    assert (delivery.res_id, delivery.version_id, delivery.status, delivery.rules) == (stored["id"], 1, "pending", "orders")


def test_unchanged_resources_are_not_routed_again(gateway):
    stored = store(gateway, order())
    with gateway.store.write() as tx:
        outcome = gateway.router.on_stored(tx, [(None, stored, "unchanged")], None)
    assert outcome.deliveries == 0 and len(gateway.outbox.list()) == 1


def test_versions_wait_for_earlier_ones_at_the_same_destination_only(gateway):
    first = store(gateway, order(), versions=3)
    other = store(gateway, order())
    rows = {(d.res_id, d.version_id): d.id for d in gateway.outbox.list()}
    assert gateway.outbox.due(100) == [rows[(first["id"], 1)], rows[(other["id"], 1)]]
    assert gateway.outbox.lease(rows[(first["id"], 1)], "w1", 30)
    assert not gateway.outbox.lease(rows[(first["id"], 2)], "w2", 30)          # not its turn
    assert gateway.outbox.due(100) == [rows[(other["id"], 1)]]                  # leased rows are not due
    assert gateway.outbox.failed(rows[(first["id"], 1)], "w1", 500, "HTTP 500", dead=True,
                                 next_attempt_at=time.time())
    assert gateway.outbox.due(100) == [rows[(first["id"], 2)], rows[(other["id"], 1)]]   # dead does not block
    assert gateway.outbox.due(1) == [rows[(first["id"], 2)]]                    # a page, not the backlog


def test_a_lease_is_exclusive_until_it_runs_out_and_only_its_holder_records_the_outcome(gateway):
    store(gateway, order())
    (delivery,) = gateway.outbox.list()
    assert gateway.outbox.lease(delivery.id, "w1", 0.2)
    assert not gateway.outbox.lease(delivery.id, "w2", 30)
    time.sleep(0.25)
    assert gateway.outbox.lease(delivery.id, "w2", 30)                          # w1 died, say
    assert not gateway.outbox.delivered(delivery.id, "w1", 200)                 # w1's late answer is ignored
    assert gateway.outbox.delivered(delivery.id, "w2", 201)
    done = gateway.outbox.get(delivery.id)
    assert (done.status, done.attempts, done.last_status_code) == ("delivered", 1, 201)
    assert not gateway.outbox.lease(delivery.id, "w3", 30)


def test_replay_requeues_once_and_never_moves_a_resource_backwards(gateway):
    stored = store(gateway, order(), versions=2)
    v1, v2 = gateway.outbox.list()
    assert gateway.outbox.lease(v1.id, "w", 30)
    gateway.outbox.failed(v1.id, "w", 400, "HTTP 400: bad", dead=True, next_attempt_at=time.time())
    assert gateway.outbox.lease(v2.id, "w", 30) and gateway.outbox.delivered(v2.id, "w", 200)
    with pytest.raises(ReplayRefused, match=f"version 2 of MedicationRequest/{stored['id']} was delivered to epc "
                                            "already; replaying version 1 would move it backwards"):
        gateway.outbox.replay(v1.id)
    with pytest.raises(ReplayRefused, match="was delivered already"):
        gateway.outbox.replay(v2.id)
    with pytest.raises(KeyError):
        gateway.outbox.replay(999)


def test_replaying_twice_is_one_delivery(gateway):
    store(gateway, order("draft"))
    (held,) = gateway.outbox.list()
    assert held.status == "held"
    first, second = gateway.outbox.replay(held.id), gateway.outbox.replay(held.id)
    assert (first.status, second.status) == ("pending", "pending")
    assert len(gateway.outbox.list()) == 1 and gateway.outbox.due(10) == [held.id]


def test_routed_resource_ids_are_what_an_organization_was_sent_or_will_be(gateway):
    active = store(gateway, order())
    draft = store(gateway, order("draft"))                                     # held: not routed to anyone yet
    event = store(gateway, {"resourceType": "AdverseEvent", "actuality": "actual"})
    engine = gateway.store.engine
    assert routed_resource_ids(engine, "HAINAN_EPC", "MedicationRequest") == {active["id"]}
    assert routed_resource_ids(engine, "HNMPA", "AdverseEvent") == {event["id"]}
    assert routed_resource_ids(engine, "HNMPA", "MedicationRequest") == set()
    with engine.connect() as conn:
        assert routed_resource_ids(conn, "HAINAN_EPC", "MedicationRequest") == {active["id"]}
    gateway.outbox.replay(next(d.id for d in gateway.outbox.list() if d.res_id == draft["id"]))
    assert routed_resource_ids(engine, "HAINAN_EPC", "MedicationRequest") == {active["id"], draft["id"]}


def test_deliveries_cli_lists_and_replays(gateway, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GATEWAY_ROUTES_FILE", str(tmp_path / "routes.yaml"))
    stored = store(gateway, order("draft"))
    (held,) = gateway.outbox.list()
    assert main(["--data-dir", str(tmp_path), "deliveries", "list", "--status", "held"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:4] == [str(held.id), "held", "epc", f"MedicationRequest/{stored['id']}/_history/1"]
    assert out[-1] == "total: held 1"
    assert main(["--data-dir", str(tmp_path), "deliveries", "replay", str(held.id)]) == 0
    assert capsys.readouterr().out == (f"delivery {held.id} (MedicationRequest/{stored['id']}/_history/1 to epc) "
                                       "queued again\n")
    assert gateway.outbox.get(held.id).status == "pending"
    assert main(["--data-dir", str(tmp_path), "deliveries", "replay", "4242"]) == 1
    assert capsys.readouterr().err == "error: delivery 4242 is not known\n"


def test_routes_error_stops_the_gateway(tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.replace("to: province", "to: nmpa"))
    with pytest.raises(Exception, match=r"routes.yaml:7: rule events: destination 'nmpa' is not defined"):
        Gateway.from_config(load_config({"DATA_DIR": str(tmp_path), "ROUTES_FILE": str(routes)}))
    assert parse_routes(ROUTES).rules[2].hold == "drafts are reviewed first"


def test_admin_deliveries_endpoint_pages_and_refuses_bad_queries(tmp_path, monkeypatch):
    from gateway import create_app
    from tests.routing.conftest import admin_client
    (tmp_path / "routes.yaml").write_text(ROUTES)
    app = create_app({"DATA_DIR": str(tmp_path), "ROUTES_FILE": str(tmp_path / "routes.yaml"), "TESTING": True})
    gateway, client = app.extensions["gateway"], admin_client(app)
    made = [store(gateway, order()) for _ in range(3)]
    first = client.get("/admin/deliveries?status=pending&destination=epc&limit=2").get_json()
    assert [d["resource"] for d in first["deliveries"]] == [f"MedicationRequest/{r['id']}/_history/1" for r in made[:2]]
    assert first["counts"] == {"pending": 3}
    rest = client.get(f"/admin/deliveries?status=pending&limit=2&after={first['next']}").get_json()
    assert [d["resource"] for d in rest["deliveries"]] == [f"MedicationRequest/{made[2]['id']}/_history/1"]
    assert rest["next"] is None
    bad = client.get("/admin/deliveries?status=lost")
    assert bad.status_code == 400
    assert bad.get_json()["issue"][0]["diagnostics"] == ("status must be one of pending, failed, delivered, dead, "
                                                         "held, not 'lost'")
    assert client.get("/admin/deliveries?limit=0").status_code == 400
    assert client.get("/admin/deliveries?after=x").status_code == 400
    missing = client.post("/admin/deliveries/999/replay")
    assert (missing.status_code, missing.get_json()["issue"][0]["code"]) == (404, "not-found")
