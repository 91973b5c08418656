"""The Admin API and the data plane together: writes are served, stores, the CLI flags."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pygateway.gateway as gateway_module
import pytest
from admin_client import (
    KEY,
    Admin,
    StrictMeta,
    admin_gateways,
    admin_settings,
    standalone_file_gateway,
)
from conftest import request, route
from origin import Origin, free_port
from pygateway import Gateway
from pygateway.config import ConfigError
from pygateway.store.base import Entry
from pygateway.store.build import ConfigBuilder
from pygateway.store.embedded import EmbeddedStore


@pytest.fixture
def admin_gateway(tmp_path: Path) -> Iterator[Any]:
    yield from admin_gateways(tmp_path)


def wait_for(check: Any, timeout: float = 1.0) -> float:
    """Seconds until ``check()`` is true; fails after ``timeout``."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.01)


def test_a_write_is_served_by_the_data_plane_within_a_second(
    admin_gateway: Any, origin: Origin
) -> None:
    gw, admin = admin_gateway()
    assert request(gw.url, "/new").status == 404
    assert admin.put("/routes/1", route("/new", origin.addr)).status == 201
    wait_for(lambda: request(gw.url, "/new").status == 200)
    admin.patch("/routes/1", {"uri": "/renamed"})
    wait_for(lambda: request(gw.url, "/renamed").status == 200)
    assert request(gw.url, "/new").status == 404
    admin.delete("/routes/1")
    wait_for(lambda: request(gw.url, "/renamed").status == 404)


def test_an_embedded_store_write_is_served_once_answered(
    admin_gateway: Any, origin: Origin, engine: str
) -> None:
    # The Admin API publishes its own write before answering: no wait, no retry.
    gw, admin = admin_gateway(engine=engine)
    for k in range(20):
        assert admin.put("/routes/1", route(f"/now{k}", origin.addr)).status in (200, 201)
        assert request(gw.url, f"/now{k}").status == 200, k
        assert request(gw.url, f"/now{k - 1}").status == 404, k


def test_numbers_past_the_data_planes_types_are_served_and_nan_is_refused(
    admin_gateway: Any, origin: Origin, engine: str
) -> None:
    """APISIX's schemas leave most integers unbounded (a priority or a weight of 1e23 is
    valid): such a route is served, the writes after it too, and the node restarts on its
    store. NaN and Infinity are not JSON: refused, as APISIX's encoder refuses them."""
    gw, admin = admin_gateway(engine=engine)
    huge = 99999999999999999999999
    big = {
        "uri": "/big",
        "priority": huge,
        "upstream": {
            "nodes": [{"host": "127.0.0.1", "port": origin.port, "weight": huge, "priority": huge}],
            "retries": huge,
            "keepalive_pool": {"size": huge, "idle_timeout": 60, "requests": huge},
        },
    }
    assert admin.put("/routes/big", big).status == 201
    assert request(gw.url, "/big").status == 200
    assert admin.put("/routes/after", route("/after", origin.addr)).status == 201
    assert request(gw.url, "/after").status == 200
    # seconds past what a Duration holds, and plugin integers past their types
    far = 1e300
    slow = {
        "uri": "/far",
        "timeout": {"connect": far, "send": far, "read": far},
        "plugins": {
            "limit-count": {"count": huge, "time_window": 1e20, "key": "remote_addr"},
            "limit-conn": {
                "conn": huge,
                "burst": huge,
                "default_conn_delay": far,
                "key": "remote_addr",
            },
            "limit-req": {"rate": far, "burst": far, "key": "remote_addr"},
        },
        "upstream": {
            "nodes": {origin.addr: 1},
            "retry_timeout": far,
            "keepalive_pool": {"size": 10, "idle_timeout": far, "requests": 10},
        },
    }
    assert admin.put("/routes/far", slow).status == 201
    assert request(gw.url, "/far").status == 200
    assert admin.put("/routes/later", route("/later", origin.addr)).status == 201
    assert request(gw.url, "/later").status == 200
    for text in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        timeout = b'{"connect": %s, "send": 1, "read": 1}' % text
        body = b'{"uri": "/nan", "upstream": {"nodes": {"%s": 1}, "timeout": %s}}' % (
            origin.addr.encode(),
            timeout,
        )
        r = admin.call("PUT", "/routes/nan", raw=body)
        assert r.status == 400 and "invalid request body: invalid number" in r.json()["error_msg"]
    gw.stop(0)
    again, _ = admin_gateway(engine=engine)
    assert request(again.url, "/big").status == 200 and request(again.url, "/after").status == 200


def test_keepalive_connections_survive_upstream_changes(
    admin_gateway: Any, origin: Origin, origin_b: Origin, engine: str
) -> None:
    # Pools belong to the node's address (APISIX: scheme#host#port), not to an upstream
    # version: editing an upstream or re-creating a route reconnects to nothing.
    gw, admin = admin_gateway(engine=engine)
    admin.put("/upstreams/u1", {"nodes": {origin.addr: 1}})
    admin.put("/routes/1", {"uri": "/ka", "upstream_id": "u1"})
    for _ in range(3):
        assert request(gw.url, "/ka").status == 200
    before = set(origin.connections)
    assert len(before) == 1
    new_version = {"nodes": {origin.addr: 3, origin_b.addr: 1}, "retries": 1}
    assert admin.patch("/upstreams/u1", new_version).status == 200
    assert admin.put("/routes/2", route("/ka2", origin.addr)).status == 201
    assert admin.delete("/routes/2").status == 200
    assert admin.put("/routes/2", route("/ka2", origin.addr)).status == 201
    for _ in range(8):
        assert request(gw.url, "/ka").status == 200
        assert request(gw.url, "/ka2").status == 200
    assert origin.connections == before


def test_ttl_objects_expire_from_the_store_and_the_data_plane(
    admin_gateway: Any, origin: Origin, engine: str
) -> None:
    # APISIX's ?ttl= (an etcd lease there): PUT, POST and PATCH; a write without it keeps.
    gw, admin = admin_gateway(engine=engine)
    assert admin.call("PUT", "/routes/t?ttl=0.5", route("/t", origin.addr)).status == 201
    r = admin.call("POST", "/routes?ttl=0.5", route("/p", origin.addr))
    assert r.status == 201
    posted = r.json()["key"].rsplit("/", 1)[1]
    admin.put("/routes/k", route("/k", origin.addr))
    assert admin.call("PATCH", "/routes/k?ttl=0.5", {"desc": "leased"}).status == 200
    assert admin.call("PUT", "/routes/k", route("/k", origin.addr)).status == 200
    assert request(gw.url, "/t").status == 200 and request(gw.url, "/p").status == 200
    wait_for(lambda: request(gw.url, "/t").status == 404 and request(gw.url, "/p").status == 404)
    assert admin.get("/routes/t").status == 404 and admin.get(f"/routes/{posted}").status == 404
    time.sleep(0.6)
    assert admin.get("/routes/k").status == 200 and request(gw.url, "/k").status == 200


def test_upstream_service_and_consumer_credentials_reach_the_data_plane(
    admin_gateway: Any, origin: Origin
) -> None:
    gw, admin = admin_gateway()
    admin.put("/upstreams/u1", {"nodes": {origin.addr: 1}})
    admin.put("/services/s1", {"upstream_id": "u1", "plugins": {"key-auth": {}}})
    admin.put("/routes/1", {"uri": "/auth", "service_id": "s1"})
    admin.put("/consumers", {"username": "jack"})
    assert admin.put("/consumers/jack/credentials/c1", {"plugins": {"key-auth": {"key": "ck"}}})
    wait_for(lambda: request(gw.url, "/auth", headers={"apikey": "ck"}).status == 200)
    assert request(gw.url, "/auth", headers={"apikey": "other"}).status == 401
    admin.delete("/consumers/jack/credentials/c1")
    wait_for(lambda: request(gw.url, "/auth", headers={"apikey": "ck"}).status == 401)
    # PATCH {"plugins": {}} removes every plugin (APISIX's merge replaces with an empty object)
    assert admin.patch("/services/s1", {"plugins": {}}).status == 200
    wait_for(lambda: request(gw.url, "/auth").status == 200)


def test_route_changes_every_100ms_fail_no_request(
    admin_gateway: Any, origin: Origin, origin_b: Origin
) -> None:
    gw, admin = admin_gateway(workers=2)
    admin.put("/routes/1", route("/*", origin.addr))
    wait_for(lambda: request(gw.url, "/").status == 200)
    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def load() -> None:
        end = time.monotonic() + 10
        while not stop.is_set() and time.monotonic() < end and served[0] < 5000:
            try:
                r = request(gw.url, "/x", timeout=5)
                if r.status != 200:
                    failures.append(f"status {r.status}")
            except OSError as err:
                failures.append(repr(err))
            served[0] += 1

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(20):
        target = origin_b if i % 2 == 0 else origin
        r = admin.put("/routes/1", route("/*", target.addr, desc=f"change {i}"))
        assert r.status == 200
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(15)
    assert served[0] > 20, "the load loop did not run"
    assert not failures, failures[:5]
    assert origin.requests > 0 and origin_b.requests > 0


def test_invalid_store_items_are_skipped_and_the_rest_serves(
    tmp_path: Path, admin_gateway: Any, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "store.jsonl"
    store = EmbeddedStore(path)
    store.start(lambda c, r: None)
    store.put("routes/good", {"id": "good", **route("/good", origin.addr)})
    store.put("routes/bad", {"id": "bad", "uri": "/bad", "methods": ["GOT"]})
    store.put("routes/dangling", {"id": "dangling", "uri": "/d", "service_id": "missing"})
    both = {"id": "both", "uri": "/b", "service_id": "missing", "upstream_id": "missing"}
    store.put("routes/both", both)  # kept only when the upstream is all that is missing
    store.close()
    caplog.set_level(logging.ERROR, logger="pygateway.store")
    gw, _ = admin_gateway(admin=admin_settings(path))
    assert request(gw.url, "/good").status == 200
    assert gw.config is not None and list(gw.config.routes) == ["good"]
    assert "routes/bad" in caplog.text and "methods" in caplog.text
    assert "routes/dangling" in caplog.text and "service_id" in caplog.text
    assert "routes/both" in caplog.text


def test_kept_versions_of_invalid_updates_are_checked_again_after_a_plugin_change() -> None:
    class Catalog:
        def __init__(self, names: set[str]) -> None:
            self.names = names

        def known(self, name: str) -> bool:
            return name in self.names

        def check(self, name: str, conf: dict[str, Any]) -> str | None:
            return None if name in self.names else f"unknown plugin [{name}]"

    catalog = Catalog({"p", "q"})
    builder = ConfigBuilder(catalog)  # type: ignore[arg-type]
    up = {"nodes": {"127.0.0.1:1": 1}}
    good_p = Entry("routes/p", {"uri": "/p", "upstream": up, "plugins": {"p": {}}}, 1, 1)
    good_q = Entry("routes/q", {"uri": "/q", "upstream": up, "plugins": {"q": {}}}, 2, 2)
    assert sorted(builder.build([good_p, good_q]).routes) == ["p", "q"]
    bad_p = Entry("routes/p", {"uri": 5}, 1, 3)
    bad_q = Entry("routes/q", {"uri": 5}, 2, 4)
    assert sorted(builder.build([bad_p, bad_q]).routes) == ["p", "q"]  # last valid versions
    catalog.names = {"q"}  # a reload without plugin p
    builder.clear()
    assert list(builder.build([bad_p, bad_q]).routes) == ["q"]


def test_a_route_whose_upstream_is_gone_answers_502_and_does_not_fall_through(
    admin_gateway: Any, origin: Origin, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    # APISIX keeps the route and answers 502 ("failed to find upstream by id"); skipping it
    # would hand its requests to whatever other route matches.
    gw, admin = admin_gateway(engine=engine)
    admin.put("/upstreams/u1", {"nodes": {origin.addr: 1}})
    admin.put("/routes/api", {"uri": "/api/*", "upstream_id": "u1", "priority": 1})
    admin.put("/services/s1", {"upstream_id": "u1"})
    admin.put("/routes/svc", {"uri": "/svc", "service_id": "s1"})
    admin.put("/routes/all", route("/*", origin.addr))
    assert request(gw.url, "/api/x").status == 200
    caplog.set_level(logging.WARNING, logger="pygateway.store")
    assert admin.call("DELETE", "/upstreams/u1?force=true").status == 200
    wait_for(lambda: request(gw.url, "/api/x").status == 502)
    assert request(gw.url, "/svc").status == 502
    assert request(gw.url, "/other").status == 200
    assert "routes/api" in caplog.text or "routes[id=api]" in caplog.text
    admin.put("/upstreams/u1", {"nodes": {origin.addr: 1}})
    wait_for(lambda: request(gw.url, "/api/x").status == 200)
    assert request(gw.url, "/svc").status == 200


def test_a_route_write_to_a_1000_route_store_touches_that_route_only(
    tmp_path: Path,
    admin_gateway: Any,
    origin: Origin,
    origin_b: Origin,
    monkeypatch: pytest.MonkeyPatch,
    engine: str,
) -> None:
    path = tmp_path / "store.jsonl"
    store = EmbeddedStore(path)
    store.start(lambda c, r: None)
    for i in range(1000):
        body = {"id": f"r{i}", **route(f"/r{i}", origin.addr, plugins={"request-id": {}})}
        store.put(f"routes/r{i}", body)
    store.close()
    gw, admin = admin_gateway(admin=admin_settings(path), engine=engine)
    assert gw.config is not None and len(gw.config.routes) == 1000
    sent: list[dict[str, Any]] = []
    rebuilt: list[int] = []
    real_json, real_build = gateway_module.change_set_json, gw._build
    monkeypatch.setattr(gateway_module, "change_set_json", lambda c: sent.append(c) or real_json(c))
    monkeypatch.setattr(gw, "_build", lambda: rebuilt.append(1) or real_build())

    assert admin.patch("/routes/r7", {"uri": "/moved"}).status == 200
    wait_for(lambda: request(gw.url, "/moved").status == 200)
    assert request(gw.url, "/r7").status == 404 and request(gw.url, "/r8").status == 200
    admin.put("/routes/new", route("/new", origin.addr))
    admin.delete("/routes/r9")
    wait_for(lambda: request(gw.url, "/new").status == 200)
    wait_for(lambda: request(gw.url, "/r9").status == 404)
    assert not rebuilt, "a route write rebuilt the whole config"
    routes = [r["id"] for c in sent for r in c["upsert_routes"]]
    deleted = [r for c in sent for r in c["delete_routes"]]
    assert routes == ["r7", "new"] and deleted == ["r9"], sent
    assert len(gw.config.routes) == 1000

    # A new upstream takes the full path (routes referring to it may appear), which still
    # sends only what changed; an update of an existing one does not.
    admin.put("/upstreams/u1", {"nodes": {origin.addr: 1}})
    wait_for(lambda: bool(rebuilt))
    admin.put("/routes/via", {"uri": "/via", "upstream_id": "u1"})
    wait_for(lambda: request(gw.url, "/via").status == 200)
    rebuilt.clear()
    sent.clear()
    before = origin_b.requests
    admin.patch("/upstreams/u1", {"nodes": {origin_b.addr: 1}})
    wait_for(lambda: request(gw.url, "/via").status == 200 and origin_b.requests > before)
    assert not rebuilt
    assert [u["key"] for c in sent for u in c["upsert_upstreams"]] == ["upstreams/u1"], sent
    assert not any(c["upsert_routes"] for c in sent)
    assert request(gw.url, "/r8").status == 200


def test_a_publication_that_failed_is_retried_in_full_with_the_next_write(
    admin_gateway: Any, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    gw, admin = admin_gateway()
    plane, failures = gw._plane, [1]

    class Flaky:
        """The data plane, refusing the first change set it is given."""

        def __getattr__(self, name: str) -> Any:
            return getattr(plane, name)

        def apply(self, changes: str) -> None:
            if failures:
                failures.pop()
                raise RuntimeError("refused once")
            plane.apply(changes)

    gw._plane = Flaky()
    try:
        admin.put("/routes/a", route("/a", origin.addr))
        wait_for(lambda: "refused once" in caplog.text)
        assert request(gw.url, "/a").status == 404  # the last good config keeps serving
        admin.put("/routes/b", route("/b", origin.addr))
        wait_for(lambda: request(gw.url, "/b").status == 200)
        assert request(gw.url, "/a").status == 200
    finally:
        gw._plane = plane


def test_route_writes_publish_what_a_full_rebuild_would(
    admin_gateway: Any, origin: Origin, engine: str
) -> None:
    """The route-only path and the full path agree, whatever the mix of writes."""
    gw, admin = admin_gateway(engine=engine)
    admin.put("/upstreams/u1", {"nodes": {origin.addr: 1}})
    admin.put("/services/s1", {"upstream_id": "u1", "hosts": ["svc.test"]})
    admin.put("/plugin_configs/p1", {"plugins": {"request-id": {}}})
    admin.put(
        "/global_rules/g1",
        {"plugins": {"limit-conn": {"conn": 5, "burst": 0, "default_conn_delay": 0.1}}},
    )
    writes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("PUT", "/routes/a", route("/a", origin.addr)),
        ("PUT", "/routes/b", {"uri": "/b", "service_id": "s1"}),
        (
            "PUT",
            "/routes/c",
            {
                "uri": "/c",
                "upstream_id": "u1",
                "plugin_config_id": "p1",
                "plugins": {"limit-count": {"count": 2, "time_window": 60}},
            },
        ),
        ("PATCH", "/routes/a", {"status": 0}),
        ("PUT", "/routes/d", {"uri": "/d", "upstream_id": "nope"}),  # refused: dangling
        (
            "PATCH",
            "/routes/c",
            {"plugins": {"limit-count": {"count": 3, "time_window": 60, "group": "g"}}},
        ),
        ("DELETE", "/routes/b", None),
        ("PATCH", "/routes/a", {"status": 1, "uri": "/a2"}),
        ("PATCH", "/upstreams/u1", {"nodes": {origin.addr: 2}, "retries": 1}),
        ("PUT", "/upstreams/u2", {"nodes": {origin.addr: 1}}),
        ("PUT", "/routes/f", {"uri": "/f", "upstream_id": "u2"}),
        ("PATCH", "/upstreams/u2", {"type": "chash", "key": "remote_addr"}),
        ("DELETE", "/routes/f", None),
        ("DELETE", "/upstreams/u2", None),
    ]
    for method, path, body in writes:
        admin.call(method, path, body)
        time.sleep(0.05)  # one burst each
        wait_for(lambda: not gw._pending)
        with gw._lock:
            routes = copy.deepcopy(gw._snapshot.routes)
            upstreams = copy.deepcopy(gw._snapshot.upstreams)
        gw._publish(gw._build())
        assert gw._snapshot.routes == routes, (method, path)
        assert gw._snapshot.upstreams == upstreams, (method, path)
    assert request(gw.url, "/a2").status == 200
    assert request(gw.url, "/", headers={"Host": "svc.test"}).status == 404

    # Items the Admin API vouched for are what a fresh validation of the store gives.
    admin.put("/consumers/jack", {"plugins": {"key-auth": {"key": "k1"}}})
    admin.put(
        "/consumers/jack/credentials/c1",
        {"plugins": {"basic-auth": {"username": "u", "password": "p"}}},
    )
    admin.post("/routes", route("/posted", origin.addr))
    wait_for(lambda: request(gw.url, "/posted").status == 200)
    assert gw.store is not None and gw.config is not None
    fresh = ConfigBuilder(gw._catalog).build(gw.store.items(""))
    for resource in ("routes", "services", "upstreams", "consumers", "global_rules"):
        mine = {k: (i.seq, i.conf) for k, i in gw.config.items_of(resource).items()}
        theirs = {k: (i.seq, i.conf) for k, i in fresh.items_of(resource).items()}
        assert mine == theirs, resource


def test_a_limit_count_group_mismatch_written_as_a_route_is_refused_on_both_engines(
    admin_gateway: Any, origin: Origin, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    gw, admin = admin_gateway(engine=engine)

    def member(count: int) -> dict[str, Any]:
        return {"limit-count": {"count": count, "time_window": 60, "group": "g"}}

    admin.put("/routes/c", route("/c", origin.addr, plugins=member(2)))
    wait_for(lambda: request(gw.url, "/c").status == 200)
    admin.put("/routes/e", route("/e", origin.addr, plugins=member(3)))
    wait_for(lambda: "group conf mismatched" in caplog.text)
    assert request(gw.url, "/e").status == 404  # the last good config keeps serving
    assert request(gw.url, "/c").status == 200


def test_route_only_churn_leaves_no_compiled_leftovers(admin_gateway: Any, origin: Origin) -> None:
    gw, admin = admin_gateway()
    for i in range(50):
        ident = admin.post("/routes", route(f"/x{i}", origin.addr)).json()["value"]["id"]
        admin.delete(f"/routes/{ident}")
        admin.put("/routes/off", {**route(f"/off{i}", origin.addr), "status": i % 2})
    wait_for(lambda: request(gw.url, "/off49").status == 200)
    cache = gw._compiled
    assert set(cache._entries) <= {"route:off", "routes/off"}, sorted(cache._entries)[:5]
    assert cache._seen <= {"route:off", "routes/off"}


def test_reloaded_plugins_drop_routes_they_no_longer_accept(
    admin_gateway: Any, origin: Origin, engine: str
) -> None:
    gw, admin = admin_gateway(engine=engine)
    admin.put("/routes/a", route("/a", origin.addr))
    admin.put("/routes/b", route("/b", origin.addr))
    wait_for(lambda: request(gw.url, "/b").status == 200)
    config = gw._build()
    del config.routes["a"]  # what a reload does to a route its new schemas refuse
    gw._publish(config, force=True)
    assert request(gw.url, "/a").status == 404 and request(gw.url, "/b").status == 200


def test_a_route_write_during_a_plugin_reload_is_not_lost(
    admin_gateway: Any, origin: Origin, engine: str
) -> None:
    gw, admin = admin_gateway(engine=engine)
    admin.put("/routes/w", route("/w0", origin.addr))
    wait_for(lambda: request(gw.url, "/w0").status == 200)
    real_build = gw._build

    def build_while_writing() -> Any:
        config = real_build()
        gw._build = real_build
        assert admin.patch("/routes/w", {"uri": "/w1"}).status == 200  # lands meanwhile
        end = time.monotonic() + 0.5  # give the publisher time to publish it first, if it can
        while time.monotonic() < end and request(gw.url, "/w1").status != 200:
            time.sleep(0.01)
        return config

    gw._build = build_while_writing  # type: ignore[method-assign]
    gw.reload_plugins()
    wait_for(lambda: request(gw.url, "/w1").status == 200)
    admin.put("/routes/x", route("/x", origin.addr))
    wait_for(lambda: request(gw.url, "/x").status == 200)
    assert request(gw.url, "/w0").status == 404 and request(gw.url, "/w1").status == 200


def test_metadata_refused_by_its_plugin_schema_once_stamped_is_never_vouched(
    admin_gateway: Any,
) -> None:
    gw, admin = admin_gateway()
    gw.register_plugin(StrictMeta)
    admin.put("/plugin_metadata/strict-meta", {"fmt": "x"})
    admin.put("/routes/r", route("/r", "127.0.0.1:1"))
    wait_for(lambda: gw.config is not None and "r" in gw.config.routes)
    assert gw.store is not None and gw.config is not None
    fresh = ConfigBuilder(gw._catalog).build(gw.store.items(""))
    assert {k: i.conf for k, i in gw.config.plugin_metadata.items()} == {
        k: i.conf for k, i in fresh.plugin_metadata.items()
    }


# -- read-only sources -----------------------------------------------------------------------


def test_standalone_file_makes_the_admin_api_read_only(tmp_path: Path, origin: Origin) -> None:
    with standalone_file_gateway(tmp_path, origin.addr) as (_, admin, routes):
        listed = admin.get("/routes").json()
        assert listed["total"] == 1 and listed["list"][0]["value"]["uri"] == "/a"
        r = admin.put("/routes/r2", {"uri": "/b", "upstream": {"nodes": {origin.addr: 1}}})
        assert r.status == 400
        message = r.json()["error_msg"]
        assert "standalone file" in message and str(routes) in message and "read-only" in message
        assert admin.delete("/routes/r1").status == 400
        assert not (tmp_path / "unused.jsonl").exists()


def test_inline_config_and_demo_keep_working_without_admin(gateway: Any, origin: Origin) -> None:
    gw = gateway({"routes": [route("/x", origin.addr)]})
    assert gw.admin is None and gw.admin_address is None
    assert request(gw.url, "/x").status == 200
    gw.reload({"routes": [route("/y", origin.addr)]})
    assert request(gw.url, "/y").status == 200
    with pytest.raises(ConfigError):
        gw.reload({"routes": [{"uri": 5}]})
    assert request(gw.url, "/y").status == 200


def test_reload_with_a_mapping_is_refused_for_a_writable_store(admin_gateway: Any) -> None:
    gw, _ = admin_gateway()
    with pytest.raises(ValueError, match="Admin API"):
        gw.reload({"routes": []})
    gw.reload()  # rebuilds from the store


# -- CLI -------------------------------------------------------------------------------------


def pygateway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pygateway", "run", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_cli_admin_listen_without_a_key_refuses_to_start() -> None:
    r = pygateway("--listen", f"127.0.0.1:{free_port()}", "--admin-listen", "127.0.0.1:0")
    assert r.returncode == 2
    assert "admin.keys" in r.stderr and "--admin-key" in r.stderr


def test_cli_refuses_the_apisix_sample_key_and_a_shared_port() -> None:
    r = pygateway("--admin-key", "edd1c9f034335f136f87ad84b625c8f1")
    assert r.returncode == 2 and "sample admin key" in r.stderr
    assert "edd1c9f034335f136f87ad84b625c8f1" not in r.stderr
    port = free_port()
    r = pygateway("--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{port}",
                  "--admin-key", KEY)  # fmt: skip
    assert r.returncode == 2 and "admin.listen" in r.stderr


def test_cli_admin_key_from_the_environment_and_store_flag(
    cli: Any, tmp_path: Path, origin: Origin
) -> None:
    port, admin_port = free_port(), free_port()
    store = tmp_path / "cli-store.jsonl"
    g = cli(
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        "--store",
        str(store),
        port=port,
        env={"PYGATEWAY_ADMIN_KEY": KEY},
    )
    admin = Admin(f"http://127.0.0.1:{admin_port}").wait()
    assert admin.put("/routes/1", route("/cli", origin.addr)).status == 201
    wait_for(lambda: request(g.base, "/cli").status == 200)
    assert store.exists()
    code, out = g.stop()
    assert code == 0, out
    assert f"Admin API on http://127.0.0.1:{admin_port}/apisix/admin" in out
    assert KEY not in out


def test_plain_run_has_no_admin_api(cli: Any) -> None:
    port = free_port()
    g = cli("--listen", f"127.0.0.1:{port}", port=port, env={"PYGATEWAY_ADMIN_KEY": ""})
    _, out = g.stop()
    assert "Admin API" not in out and "curl" in out


def test_etcd_flags_select_the_etcd_store(tmp_path: Path) -> None:
    from pygateway.cli import _admin_overrides, _parser
    from pygateway.config import NodeConfig

    args = _parser().parse_args(
        ["run", "--etcd", "http://10.0.0.1:2379, http://10.0.0.2:2379", "--etcd-prefix", "/gw"]
    )
    overrides = _admin_overrides(NodeConfig(), args)
    assert overrides["etcd"] == {
        "endpoints": ["http://10.0.0.1:2379", "http://10.0.0.2:2379"],
        "prefix": "/gw",
    }
    gw = Gateway(node=NodeConfig().merged(overrides))
    assert type(gw.store).__name__ == "EtcdStore"
    assert "etcd" in gw.source and "/gw" in gw.source
