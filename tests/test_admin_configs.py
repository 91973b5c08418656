"""GET / HEAD / PUT /apisix/admin/configs: the whole configuration at once (APISIX's
API-driven standalone mode), end to end through the Admin API and the data plane."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from admin_client import Admin, StrictMeta, admin_gateways, admin_settings, standalone_file_gateway
from conftest import request, route
from origin import Origin
from pygateway import Gateway
from pygateway.admin import AdminApi
from pygateway.plugin import PluginRegistry, RegistryCatalog
from pygateway.store.etcd import EtcdStore


@pytest.fixture
def admin_gateway(tmp_path: Path) -> Iterator[Any]:
    yield from admin_gateways(tmp_path)


def wait_for(check: Any, timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(0.01)


def put_configs(admin: Admin, body: Any, digest: str | None = "d1", **headers: str) -> Any:
    hdrs = dict(headers)
    if digest is not None:
        hdrs["X-Digest"] = digest
    if isinstance(body, bytes):
        return admin.call("PUT", "/configs", raw=body, headers=hdrs)
    return admin.call("PUT", "/configs", body, headers=hdrs)


def test_put_replaces_the_configuration_and_get_returns_it(
    admin_gateway: Any, origin: Origin, origin_b: Origin, engine: str
) -> None:
    gw, admin = admin_gateway(engine=engine)
    empty = admin.get("/configs")
    assert empty.status == 200 and empty.json()["routes_conf_version"] == 0
    assert "x-digest" not in empty.headers

    admin.put("/routes/old", route("/old", origin.addr))
    body = {
        "upstreams": [{"id": "u1", "nodes": {origin_b.addr: 1}, "type": "roundrobin"}],
        "routes": [
            {"id": "r1", "uri": "/one", "upstream_id": "u1"},
            {"uri": "/two", "upstream": {"nodes": {origin.addr: 1}, "type": "roundrobin"}},
        ],
        "routes_conf_version": 7,
    }
    r = put_configs(admin, body, "first")
    assert r.status == 202 and r.body == b""
    wait_for(lambda: request(gw.url, "/one").status == 200)
    assert request(gw.url, "/two").status == 200
    assert request(gw.url, "/old").status == 404  # replaced: what the list does not hold goes
    assert origin_b.requests > 0

    got = admin.get("/configs")
    assert got.headers["x-digest"] == "first" and int(got.headers["x-last-modified"]) > 0
    data = got.json()
    assert data["routes_conf_version"] == 7 and data["upstreams_conf_version"] == 1
    assert [x["id"] for x in data["routes"]] == ["r1", "arr_2"]  # the list order
    assert data["routes"][0]["uri"] == "/one" and data["upstreams"][0]["id"] == "u1"
    # The regular resources see the same objects.
    assert admin.get("/routes/r1").json()["value"]["uri"] == "/one"
    head = admin.call("HEAD", "/configs")
    assert head.status == 200 and head.headers["x-digest"] == "first"

    # The same digest again: accepted, nothing changes.
    assert put_configs(admin, {"routes": []}, "first").status == 204
    assert request(gw.url, "/one").status == 200


def test_conf_versions_keep_replace_or_refuse_per_resource(
    admin_gateway: Any, origin: Origin
) -> None:
    gw, admin = admin_gateway()
    up = {"id": "u1", "nodes": {origin.addr: 1}, "type": "roundrobin"}
    first = {
        "upstreams": [up],
        "routes": [{"id": "a", "uri": "/a", "upstream_id": "u1"}],
        "upstreams_conf_version": 3,
        "routes_conf_version": 3,
    }
    assert put_configs(admin, first, "v3").status == 202
    # routes at the same version are kept although the request lists none
    second = {"upstreams": [up], "upstreams_conf_version": 4, "routes_conf_version": 3}
    assert put_configs(admin, second, "v4").status == 202
    wait_for(lambda: request(gw.url, "/a").status == 200)
    assert admin.get("/configs").json()["routes"][0]["id"] == "a"

    lower = put_configs(admin, {"routes_conf_version": 2}, "v5")
    assert lower.status == 400
    assert lower.json() == {"error_msg": "routes_conf_version must be greater than or equal to (3)"}
    wrong = put_configs(admin, {"routes_conf_version": "4"}, "v5")
    assert wrong.json() == {"error_msg": "routes_conf_version must be a number"}
    # an absent version is the current one + 1: the resource is replaced (emptied here)
    assert put_configs(admin, {"upstreams": [up], "upstreams_conf_version": 4}, "v6").status == 202
    wait_for(lambda: request(gw.url, "/a").status == 404)
    assert admin.get("/configs").json()["routes_conf_version"] == 4


def test_bad_requests_change_nothing(admin_gateway: Any, origin: Origin) -> None:
    gw, admin = admin_gateway()
    good = {"routes": [{"id": "a", **route("/a", origin.addr)}]}
    assert put_configs(admin, good, "ok").status == 202
    wait_for(lambda: request(gw.url, "/a").status == 200)

    missing = put_configs(admin, good, None)
    assert missing.status == 400 and missing.json() == {"error_msg": "missing digest header"}
    empty = put_configs(admin, b"", "x")
    assert empty.json() == {"error_msg": "invalid request body: empty request body"}
    broken = put_configs(admin, b"{", "x")
    assert broken.status == 400 and broken.json()["error_msg"].startswith("invalid request body:")
    invalid = put_configs(admin, {"routes": [good["routes"][0], {"uri": 5}]}, "x")
    assert invalid.status == 400
    message = invalid.json()["error_msg"]
    assert message.startswith("invalid routes at index 1, err: ") and '"uri"' in message
    dup = {"routes": [{"id": "b", "uri": "/b", "upstream": {"nodes": {origin.addr: 1}}}] * 2}
    assert put_configs(admin, dup, "x").json() == {"error_msg": "found duplicate id b in routes"}
    dangling = put_configs(admin, {"routes": [{"id": "c", "uri": "/c", "upstream_id": "n"}]}, "x")
    assert dangling.status == 400 and "upstream" in dangling.json()["error_msg"]
    # YAML holds what JSON cannot: infinite numbers, and aliases that multiply a small text
    yaml_type = {"Content-Type": "application/yaml"}
    nan = f"routes:\n- id: n\n  uri: /n\n  upstream:\n    nodes: {{'{origin.addr}': 1}}\n"
    nan += "    timeout: {connect: .nan, send: 1, read: 1}\n"
    r = put_configs(admin, nan.encode(), "x", **yaml_type)
    assert r.status == 400 and "invalid number" in r.json()["error_msg"]
    bomb = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
    )
    r = put_configs(admin, bomb.encode(), "x", **yaml_type)
    assert r.status == 400 and "more than" in r.json()["error_msg"]
    deep = ("routes: " + "[" * 3000 + "]" * 3000 + "\n").encode()
    r = put_configs(admin, deep, "x", **yaml_type)
    assert r.status == 400 and "nested deeper than" in r.json()["error_msg"]

    assert admin.get("/configs").headers["x-digest"] == "ok"
    assert request(gw.url, "/a").status == 200


def test_yaml_in_and_out_and_the_configuration_survives_a_restart(
    tmp_path: Path, origin: Origin
) -> None:
    settings = admin_settings(tmp_path / "store.jsonl")
    text = (
        "routes:\n  - id: y\n    uri: /y\n    upstream:\n"
        f"      nodes:\n        '{origin.addr}': 1\n"
        "consumers:\n  - username: jack\n    plugins:\n      key-auth:\n        key: k1\n"
    ).encode()
    gw = Gateway(admin=settings, listen=["127.0.0.1:0"], workers=1).start()
    try:
        admin = Admin(f"http://{gw.admin_address}")
        r = put_configs(admin, text, "y1", **{"Content-Type": "application/yaml"})
        assert r.status == 202, r.body
        wait_for(lambda: request(gw.url, "/y").status == 200)
        got = admin.call("GET", "/configs", headers={"Accept": "application/yaml"})
        assert got.headers["content-type"].startswith("application/yaml")
        data = yaml.safe_load(got.body)
        assert data["routes"][0]["uri"] == "/y" and data["consumers"][0]["username"] == "jack"
    finally:
        gw.stop(0)
    gw = Gateway(admin=settings, listen=["127.0.0.1:0"], workers=1).start()
    try:
        admin = Admin(f"http://{gw.admin_address}")
        assert request(gw.url, "/y").status == 200
        assert admin.get("/configs").headers["x-digest"] == "y1"
    finally:
        gw.stop(0)


def test_a_standalone_file_node_answers_get_and_refuses_put(tmp_path: Path, origin: Origin) -> None:
    with standalone_file_gateway(tmp_path, origin.addr) as (gw, admin, _):
        assert admin.get("/configs").json()["routes"][0]["uri"] == "/a"
        refused = put_configs(admin, {"routes": []}, "x")
        assert refused.status == 400 and "read-only" in refused.json()["error_msg"]
        assert request(gw.url, "/a").status == 200


def test_equal_routes_follow_the_list_order_and_get_keeps_it(
    admin_gateway: Any, origin: Origin, origin_b: Origin
) -> None:
    gw, admin = admin_gateway()
    first = {"id": "z", "uri": "/same", "upstream": {"nodes": {origin.addr: 1}}}
    second = {"id": "a", "uri": "/same", "upstream": {"nodes": {origin_b.addr: 1}}}
    assert put_configs(admin, {"routes": [first, second]}, "o1").status == 202
    wait_for(lambda: request(gw.url, "/same").status == 200)
    assert origin.requests == 1 and origin_b.requests == 0  # the first listed wins
    assert [r["id"] for r in admin.get("/configs").json()["routes"]] == ["z", "a"]


def test_a_consumer_that_goes_takes_its_credentials_along(
    admin_gateway: Any, origin: Origin
) -> None:
    gw, admin = admin_gateway()
    admin.put("/routes/r", {**route("/r", origin.addr), "plugins": {"key-auth": {}}})
    admin.put("/consumers/jack", {})
    admin.put("/consumers/jack/credentials/c1", {"plugins": {"key-auth": {"key": "k1"}}})
    wait_for(lambda: request(gw.url, "/r", headers={"apikey": "k1"}).status == 200)
    assert (
        put_configs(admin, {"consumers": [{"username": "jill"}], "routes_conf_version": 0}).status
        == 202
    )
    wait_for(lambda: request(gw.url, "/r", headers={"apikey": "k1"}).status == 401)
    assert admin.get("/consumers/jack/credentials/c1").status == 404
    admin.put("/consumers/jack", {})  # back, without the old credential
    time.sleep(0.1)
    assert request(gw.url, "/r", headers={"apikey": "k1"}).status == 401


def test_conf_versions_must_be_finite_and_keep_their_fraction(admin_gateway: Any) -> None:
    _, admin = admin_gateway()
    for text in (b'{"routes_conf_version": NaN}', b'{"routes_conf_version": 1e400}'):
        r = put_configs(admin, text, "n")
        assert r.status == 400 and r.json() == {"error_msg": "routes_conf_version must be a number"}
    r = put_configs(
        admin, b"routes_conf_version: .inf\n", "n", **{"Content-Type": "application/yaml"}
    )
    assert r.status == 400
    assert put_configs(admin, {"routes_conf_version": 3}, "f1").status == 202
    assert put_configs(admin, {"routes_conf_version": 3.5}, "f2").status == 202
    assert admin.get("/configs").json()["routes_conf_version"] == 3.5


def test_kept_objects_stamped_by_the_admin_api_do_not_block_a_put(admin_gateway: Any) -> None:
    gw, admin = admin_gateway()
    gw.register_plugin(StrictMeta)
    assert (
        put_configs(admin, {"plugin_metadata": [{"id": "strict-meta", "fmt": "x"}]}).status == 202
    )
    assert admin.put("/plugin_metadata/strict-meta", {"fmt": "y"}).status in (200, 201)  # stamped
    versions = {k: v for k, v in admin.get("/configs").json().items() if k.endswith("_version")}
    r = put_configs(
        admin, {**versions, "routes_conf_version": versions["routes_conf_version"] + 1}, "d2"
    )
    assert r.status == 202, r.body


def test_an_etcd_node_has_no_configs_resource_as_in_apisix() -> None:
    """APISIX serves /configs in standalone mode only; elsewhere the path is unknown."""
    store = EtcdStore(["http://127.0.0.1:1"])  # never started: the answer needs no etcd
    catalog = RegistryCatalog(PluginRegistry())
    api = AdminApi(store, catalog, PluginRegistry())
    for method in ("GET", "PUT"):
        answer = api.configs(method, {"X-Digest": "x"}, b"{}")
        assert answer.status == 404
        assert json.loads(answer.body) == {"error_msg": "Unsupported resource type: configs"}
