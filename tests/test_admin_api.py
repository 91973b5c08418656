"""The Admin API v3 resources: methods, envelopes, status codes and APISIX's error texts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_client import Admin, admin_gateways

UPSTREAM = {"nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"}
ROUTE = {"uri": "/hello", "upstream": UPSTREAM}


@pytest.fixture
def admin_gateway(tmp_path: Path) -> Iterator[Any]:
    yield from admin_gateways(tmp_path)


@pytest.fixture
def admin(admin_gateway: Any) -> Admin:
    _, client = admin_gateway()
    return client


def error(reply: Any) -> str:
    return str(reply.json()["error_msg"])


# -- PUT / GET / envelopes -----------------------------------------------------------------


def test_put_creates_with_201_then_replaces_with_200(admin: Admin) -> None:
    r = admin.put("/routes/1", ROUTE)
    assert r.status == 201, r.body
    body = r.json()
    assert body["key"] == "/apisix/routes/1"
    value = body["value"]
    assert value["id"] == "1" and value["uri"] == "/hello"
    # APISIX 3.14+ stores what was sent: no schema defaults (priority, status, hash_on...)
    assert "priority" not in value and "status" not in value
    assert value["upstream"] == ROUTE["upstream"]
    assert isinstance(value["create_time"], int) and value["update_time"] >= value["create_time"]
    assert r.headers["x-api-version"] == "v3"

    again = admin.put("/routes/1", {**ROUTE, "uri": "/bye"})
    assert again.status == 200
    assert again.json()["value"]["create_time"] == value["create_time"]

    got = admin.get("/routes/1")
    assert got.status == 200
    env = got.json()
    assert env["key"] == "/apisix/routes/1" and env["value"]["uri"] == "/bye"
    assert env["modifiedIndex"] > env["createdIndex"] > 0


def test_get_missing_key_is_404_key_not_found(admin: Admin) -> None:
    r = admin.get("/routes/nope")
    assert r.status == 404 and r.json() == {"message": "Key not found"}
    assert r.headers["x-api-version"] == "v3"


def test_put_id_rules(admin: Admin) -> None:
    assert error(admin.put("/routes/1", {**ROUTE, "id": "2"})) == "wrong route id"
    r = admin.put("/routes", ROUTE)
    assert r.status == 400 and error(r) == "missing route id"
    assert admin.put("/routes", {**ROUTE, "id": "from-body"}).status == 201
    assert admin.get("/routes/from-body").status == 200
    assert admin.put("/routes/7", {**ROUTE, "id": 7}).status == 201  # integer ids
    assert admin.get("/routes/7").json()["value"]["id"] == "7"  # APISIX: the path's id
    assert admin.put("/routes", {**ROUTE, "id": 8}).status == 201
    assert admin.get("/routes/8").json()["value"]["id"] == 8  # no path id: the body's
    assert admin.patch("/routes/8", {"desc": "d"}).json()["value"]["id"] == "8"
    assert admin.get("//routes//7").status == 200  # nginx's merge_slashes
    bad = admin.put("/routes/" + "x" * 65, ROUTE)
    assert bad.status == 400 and 'property "id" validation failed' in error(bad)
    assert error(admin.call("PUT", "/routes/1")) == "missing configurations"


def test_time_fields_are_refused_from_clients(admin: Admin) -> None:
    r = admin.put("/routes/1", {**ROUTE, "create_time": 1})
    assert r.status == 400 and error(r) == "the property is forbidden:  create_time"  # sic
    r = admin.put("/routes/1", {**ROUTE, "upstream": {**UPSTREAM, "update_time": 0}})
    assert error(r) == "the property is forbidden:  upstream.update_time"  # 0 is true in Lua
    r = admin.put("/routes/1", {**ROUTE, "create_time": None})
    assert error(r) == "the property is forbidden:  create_time"  # so is cjson.null


def test_validation_errors_use_apisix_wording(admin: Admin) -> None:
    r = admin.put("/routes/1", {**ROUTE, "methods": ["GOT"]})
    assert r.status == 400
    assert error(r) == (
        'invalid configuration: property "methods" validation failed: '
        "failed to validate item 1: matches none of the enum values"
    )
    r = admin.put("/routes/1", {**ROUTE, "host": "a.com", "hosts": ["b.com"]})
    assert error(r) == "only one of host or hosts is allowed"
    r = admin.put("/routes/1", {**ROUTE, "foo": 1})
    assert error(r).startswith("invalid configuration: additional properties forbidden")
    r = admin.put("/routes/1", {**ROUTE, "vars": [["arg_a", "=", "1"]]})
    assert error(r) == "failed to validate the 'vars' expression: invalid operator '='"
    r = admin.put("/routes/1", {**ROUTE, "plugins": {"no-such-plugin": {}}})
    assert error(r) == "unknown plugin [no-such-plugin]"
    r = admin.put("/routes/1", {**ROUTE, "plugins": {"key-auth": {"header": 5}}})
    assert error(r).startswith("failed to check the configuration of plugin key-auth err:")
    r = admin.put("/routes/1", "not an object")
    assert error(r) == "invalid configuration: wrong type: expected object, got string"


def test_references_are_checked_against_the_store(admin: Admin) -> None:
    r = admin.put("/routes/1", {"uri": "/a", "upstream_id": "99999999"})
    assert r.status == 400
    assert error(r) == "failed to fetch upstream info by upstream id [99999999], response code: 404"
    r = admin.put("/routes/1", {"uri": "/a", "service_id": "s"})
    assert error(r) == "failed to fetch service info by service id [s], response code: 404"
    assert admin.put("/upstreams/u1", UPSTREAM).status == 201
    assert admin.put("/routes/1", {"uri": "/a", "upstream_id": "u1"}).status == 201


# -- POST ------------------------------------------------------------------------------------


def test_post_generates_20_digit_ids(admin: Admin) -> None:
    first = admin.post("/routes", ROUTE)
    second = admin.post("/routes", ROUTE)
    assert first.status == 201 and second.status == 201
    a, b = first.json()["value"]["id"], second.json()["value"]["id"]
    assert len(a) == 20 and a.isdigit() and int(b) > int(a)
    assert first.json()["key"] == f"/apisix/routes/{a}"
    assert admin.get(f"/routes/{a}").status == 200
    r = admin.post("/routes", {**ROUTE, "id": "1"})
    assert r.status == 400 and error(r) == "wrong route id, do not need it"
    r = admin.post("/routes/1", ROUTE)  # an id in the URL: nothing is created
    assert r.status == 400 and error(r) == "wrong route id, do not need it"
    assert admin.get("/routes").json()["total"] == 2
    assert error(admin.call("POST", "/routes")) == "missing configurations"


def test_post_on_a_resource_without_post_is_405(admin: Admin) -> None:
    r = admin.post("/consumers", {"username": "jack"})
    assert r.status == 405 and error(r) == "not supported `POST` method for consumer"


# -- DELETE ----------------------------------------------------------------------------------


def test_delete_answers_deleted_and_key(admin: Admin) -> None:
    admin.put("/routes/abc", ROUTE)
    r = admin.delete("/routes/abc")  # "deleted" is etcd's count of deleted keys, not the id
    assert r.status == 200 and r.json() == {"deleted": "1", "key": "/apisix/routes/abc"}
    assert admin.get("/routes/abc").status == 404
    assert admin.delete("/routes/abc").status == 404
    assert error(admin.delete("/routes")) == "missing route id"


def test_delete_of_a_referenced_object_needs_force(admin: Admin) -> None:
    admin.put("/upstreams/u1", UPSTREAM)
    admin.put("/routes/1", {"uri": "/a", "upstream_id": "u1"})
    r = admin.delete("/upstreams/u1")
    assert r.status == 400
    assert error(r) == "can not delete this upstream, route [1] is still using it now"
    admin.put("/services/s1", {"upstream_id": "u1"})
    admin.delete("/routes/1")
    r = admin.delete("/upstreams/u1")
    assert error(r) == "can not delete this upstream, service [s1] is still using it now"
    assert admin.call("DELETE", "/upstreams/u1?force=true").status == 200
    admin.put("/routes/2", {"uri": "/b", "service_id": "s1"})
    r = admin.delete("/services/s1")
    assert error(r) == "can not delete this service directly, route [2] is still using it now"
    admin.put("/consumer_groups/g", {"plugins": {}})
    admin.put("/consumers", {"username": "jack", "group_id": "g"})
    r = admin.delete("/consumer_groups/g")
    assert error(r) == "can not delete this consumer group, consumer [jack] is still using it now"


# -- PATCH -----------------------------------------------------------------------------------


def test_patch_merges_null_deletes_arrays_replace(admin: Admin) -> None:
    admin.put("/routes/1", {**ROUTE, "desc": "d", "methods": ["GET", "POST"], "labels": {"a": "1"}})
    before = admin.get("/routes/1").json()["value"]
    r = admin.patch("/routes/1", {"desc": None, "methods": ["PUT"], "labels": {"b": "2"}})
    assert r.status == 200, r.body
    value = r.json()["value"]
    assert "desc" not in value
    assert value["methods"] == ["PUT"]
    assert value["labels"] == {"a": "1", "b": "2"}
    assert value["upstream"]["nodes"] == UPSTREAM["nodes"]
    assert value["create_time"] == before["create_time"]


def test_patch_with_an_empty_object_replaces_instead_of_merging(admin: Admin) -> None:
    # APISIX: LuaJIT's isarray({}) is true, so an empty object replaces the old value.
    plugins = {"request-id": {}, "limit-count": {"count": 5, "time_window": 60}}
    admin.put("/routes/1", {**ROUTE, "plugins": plugins, "labels": {"a": "1"}})
    r = admin.patch("/routes/1", {"plugins": {}, "labels": {"b": "2"}})
    assert r.status == 200, r.body
    value = r.json()["value"]
    assert value["plugins"] == {} and value["labels"] == {"a": "1", "b": "2"}
    # one level down: that plugin's conf is replaced by {} (then checked: count is required)
    admin.put("/routes/1", {**ROUTE, "plugins": plugins})
    r = admin.patch("/routes/1", {"plugins": {"limit-count": {}}})
    assert r.status == 400 and "limit-count" in error(r), r.body
    r = admin.patch("/routes/1", {"plugins": {"request-id": {}}})
    assert r.status == 200 and r.json()["value"]["plugins"] == plugins
    # an empty body changes nothing but update_time
    assert admin.patch("/routes/1", {}).json()["value"]["plugins"] == plugins


def test_patch_of_a_sub_path_replaces_that_attribute(admin: Admin) -> None:
    admin.put("/routes/1", ROUTE)
    r = admin.patch("/routes/1/upstream/nodes", {"127.0.0.1:1981": 2})
    assert r.status == 200, r.body
    assert r.json()["value"]["upstream"]["nodes"] == {"127.0.0.1:1981": 2}
    r = admin.patch("/routes/1/uri", "/other")
    assert r.json()["value"]["uri"] == "/other"
    r = admin.patch("/routes/1/nothing/here", 1)
    assert r.status == 400  # made, then refused by the schema
    # missing levels are made (APISIX core.table.patch)
    r = admin.patch("/routes/1/plugins/request-id", {})
    assert r.status == 200 and r.json()["value"]["plugins"] == {"request-id": {}}
    r = admin.patch("/routes/1/uri/x", "y")
    assert r.status == 400 and error(r) == "invalid sub-path: /uri"
    admin.put(
        "/routes/2",
        {
            "uri": "/n",
            "upstream": {
                "type": "roundrobin",
                "nodes": [
                    {"host": "127.0.0.1", "port": 1, "weight": 1},
                    {"host": "127.0.0.1", "port": 2, "weight": 1},
                ],
            },
        },
    )
    r = admin.patch("/routes/2/upstream/nodes/9/port", 3)  # no 9th node: nothing replaced
    assert r.status == 400 and error(r) == "invalid sub-path: /upstream/nodes/9"
    r = admin.call("PATCH", "/routes/1/desc")
    assert r.status == 400 and error(r) == "missing new configuration"


def test_patch_errors(admin: Admin) -> None:
    assert admin.patch("/routes/none", {"uri": "/a"}).status == 404
    assert error(admin.patch("/routes", {"uri": "/a"})) == "missing route id"
    admin.put("/routes/1", ROUTE)
    assert error(admin.patch("/routes/1", {"id": "2"})) == "wrong route id"
    r = admin.patch("/routes/1", {"methods": ["GOT"]})
    assert r.status == 400 and "matches none of the enum values" in error(r)
    assert admin.get("/routes/1").json()["value"].get("methods") is None  # unchanged


# -- lists -----------------------------------------------------------------------------------


def test_list_paging_and_filters(admin: Admin) -> None:
    for i in range(25):
        body = {**ROUTE, "uri": f"/p{i}", "name": f"route-{i}"}
        if i % 5 == 0:
            body["labels"] = {"team": "a"}
        assert admin.put(f"/routes/r{i:02d}", body).status == 201
    listed = admin.get("/routes").json()
    assert listed["total"] == 25 and len(listed["list"]) == 25
    assert {"key", "value", "createdIndex", "modifiedIndex"} <= set(listed["list"][0])
    page = admin.get("/routes?page=3&page_size=10").json()
    assert page["total"] == 25 and len(page["list"]) == 5
    assert page["list"][0]["value"]["id"] == "r20"  # by createdIndex
    r = admin.get("/routes?page=1&page_size=5")
    assert r.status == 400 and error(r) == "page_size must be between 10 and 500"
    assert admin.get("/routes?page=1&page_size=501").status == 400
    assert admin.get("/routes?page=inf&page_size=10").json()["total"] == 25  # not a number
    assert admin.get("/routes?page=1&page_size=nan").status == 200
    # APISIX pages only when both are given: page_size alone lists everything
    assert admin.get("/routes?page_size=5").json()["total"] == 25
    assert len(admin.get("/routes?page_size=10").json()["list"]) == 25
    assert admin.get("/routes?name=route-1").json()["total"] == 11  # a regex: 1, 10..19
    assert admin.get("/routes?label=team").json()["total"] == 5
    assert admin.get("/routes?uri=/p2").json()["total"] == 6  # /p2, /p20../p24
    assert admin.get("/upstreams").json() == {"total": 0, "list": []}
    admin.put("/services/s1", {"upstream": UPSTREAM})
    admin.put("/routes/with-service", {"uri": "/s", "service_id": "s1"})
    only = admin.get("/routes?filter=service_id%3Ds1").json()
    assert [e["value"]["id"] for e in only["list"]] == ["with-service"]
    assert admin.get("/routes?filter=service_id%3Dnope").json()["total"] == 0
    assert admin.get("/routes?filter=name%3Dx").json()["total"] == 26  # not a filter field


# -- the other resources ---------------------------------------------------------------------


def test_services_upstreams_plugin_configs_global_rules_consumer_groups(admin: Admin) -> None:
    assert admin.put("/services/s1", {"upstream": UPSTREAM}).status == 201
    assert admin.put("/upstreams/u1", UPSTREAM).status == 201
    pc = {"plugins": {"request-id": {}}}
    assert admin.put("/plugin_configs/pc1", pc).status == 201
    assert admin.put("/global_rules/g1", pc).status == 201
    assert admin.put("/consumer_groups/cg1", pc).status == 201
    for path in ("/services/s1", "/upstreams/u1", "/plugin_configs/pc1", "/global_rules/g1"):
        assert admin.get(path).status == 200
        assert admin.patch(path, {"desc": "x"} if "global" not in path else pc).status == 200
    assert admin.patch("/consumer_groups/cg1", {"desc": "x"}).status == 200
    r = admin.post("/plugin_configs", pc)
    assert r.status == 405
    r = admin.put("/global_rules/g2", {"plugins": {"key-auth": {"header": 1}}})
    assert r.status == 400
    r = admin.put("/global_rules/g2", pc)  # APISIX 3.15+: a plugin in one global rule only
    assert error(r) == "plugin 'request-id' already exists in global rule with id 'g1'"
    assert admin.put("/global_rules/g1", pc).status == 200  # itself is no conflict
    r = admin.put("/upstreams/u2", {"nodes": {"127.0.0.1:1": 1}, "type": "nope"})
    assert r.status == 400 and "type" in error(r)


DUP_C1 = "duplicate key of plugin key-auth found with credential: c1 of consumer: jack"


def test_consumers_put_on_the_collection_and_credentials(admin: Admin) -> None:
    r = admin.put("/consumers", {"username": "jack", "plugins": {"key-auth": {"key": "k1"}}})
    assert r.status == 201 and r.json()["key"] == "/apisix/consumers/jack"
    assert admin.put("/consumers/jack", {"username": "jack"}).status == 200
    assert error(admin.put("/consumers/jack", {"username": "bob"})) == "wrong username"
    r = admin.put("/consumers", {"plugins": {}})
    assert r.status == 400 and 'property "username" is required' in error(r)

    cred = {"plugins": {"key-auth": {"key": "c-key"}}}
    r = admin.put("/consumers/jack/credentials/c1", cred)
    assert r.status == 201, r.body
    assert r.json()["key"] == "/apisix/consumers/jack/credentials/c1"
    got = admin.get("/consumers/jack/credentials")
    assert got.json()["total"] == 1
    # none: 404, as APISIX (credentials have no directory of their own in etcd)
    assert admin.get("/consumers/nobody/credentials").status == 404
    assert admin.get("/consumers/jack/credentials/c1").status == 200
    assert admin.get("/consumers").json()["total"] == 1  # credentials are not consumers
    r = admin.put("/consumers/jack/credentials/c2", {"plugins": {"request-id": {}}})
    assert error(r) == "only supports auth type plugins in consumer credential"
    r = admin.put("/consumers/ghost/credentials/c1", cred)
    assert r.status == 404
    r = admin.put("/consumers", {"username": "bob", "plugins": {"key-auth": {"key": "c-key"}}})
    assert error(r) == DUP_C1
    admin.put("/consumers", {"username": "ann", "plugins": {"key-auth": {"key": "a-key"}}})
    r = admin.put("/consumers", {"username": "bob", "plugins": {"key-auth": {"key": "a-key"}}})
    assert error(r) == "duplicate key of plugin key-auth found with consumer: ann"
    # a consumer does not conflict with its own credentials, a credential with itself
    own = {"username": "jack", "plugins": {"key-auth": {"key": "c-key"}}}
    assert admin.put("/consumers", own).status == 200
    assert admin.put("/consumers", {"username": "jack"}).status == 200
    assert admin.put("/consumers/jack/credentials/c1", cred).status == 200
    r = admin.put("/consumers/jack/credentials/c3", cred)
    assert error(r) == DUP_C1
    assert admin.post("/consumers/jack/credentials", cred).status == 405
    assert admin.delete("/consumers/jack/credentials/c1").status == 200
    admin.put("/consumers/jack/credentials/c1", cred)
    assert admin.delete("/consumers/jack").status == 200
    assert admin.get("/consumers/jack/credentials/c1").status == 404  # went with the consumer


def test_plugin_metadata(admin: Admin) -> None:
    r = admin.put("/plugin_metadata/key-auth", {})
    assert r.status == 201  # no metadata schema: APISIX injects an empty object schema
    r = admin.put("/plugin_metadata/limit-count", {"id": "other", "limit_header": "X-Q"})
    assert r.status == 201  # the id is the plugin's name, whatever the body says (APISIX)
    assert r.json()["value"] == {"id": "limit-count", "limit_header": "X-Q"}  # no time stamps
    r = admin.put("/plugin_metadata/no-such-plugin", {})
    assert r.status == 400 and error(r) == "invalid plugin name"
    assert error(admin.put("/plugin_metadata", {})) == "missing plugin name"


def test_plugins_schema_and_validate(admin: Admin) -> None:
    names = admin.get("/plugins/list").json()
    everything = admin.get("/plugins?all=true").json()
    priorities = [everything[n]["priority"] for n in names]
    assert "key-auth" in names and priorities == sorted(priorities, reverse=True)
    schema = admin.get("/plugins/key-auth").json()
    assert schema["type"] == "object"
    # as APISIX shows it: _meta injected, and marked (t/admin/plugins.t)
    assert schema["$comment"] == "this is a mark for our injected plugin schema"
    assert "_meta" in schema["properties"]
    assert admin.get("/schema/plugins/key-auth").json() == schema
    assert "key" in admin.get("/plugins/key-auth?schema_type=consumer").json()["properties"]
    everything = admin.get("/plugins?all=true").json()
    assert everything["key-auth"]["type"] == "auth" and "priority" in everything["key-auth"]
    assert admin.get("/plugins/nope").status == 404
    r = admin.get("/schema/nope")
    assert r.status == 400 and error(r) == "not found schema: nope"
    r = admin.get("/plugins/list?subsystem=foo")
    assert r.status == 400 and r.body == b"invalid subsystem passed"
    # APISIX's plugins.get: all=true lists, otherwise one plugin of one subsystem
    r = admin.get("/plugins")
    assert r.status == 404 and error(r) == "plugin not found in subsystem http"
    r = admin.get("/plugins/limit-count?subsystem=stream")
    assert r.status == 404 and error(r) == "plugin not found in subsystem stream"
    r = admin.get("/plugins/limit-count?subsystem=asdf")
    assert r.status == 400 and error(r) == "unsupported subsystem: asdf"
    assert admin.get("/plugins?all=true&subsystem=stream").json() == {}
    r = admin.get("/plugins/limit-count?schema_type=consumer")
    assert r.status == 400 and error(r) == "not found schema"
    assert error(admin.delete("/consumers")) == "missing consumer id"
    assert admin.get("/schema/route").json()["type"] == "object"
    assert admin.get("/schema/routes").status == 200
    assert admin.get("/schema/plugins/key-auth").json()["type"] == "object"
    ok = admin.post("/schema/validate/routes", ROUTE)
    assert ok.status == 200 and ok.body == b""
    bad = admin.post("/schema/validate/routes", {"uri": 1, "upstream": UPSTREAM})
    assert bad.status == 400
    assert error(bad) == 'property "uri" validation failed: wrong type: expected string, got number'
    assert error(admin.post("/schema/validate/nope", ROUTE)) == "Unsupported resource type: nope"
    good = admin.post("/configs/validate", {"routes": [ROUTE]})
    assert good.status == 200
    bad = admin.post("/configs/validate", {"routes": [{"uri": 1}]})
    assert bad.status == 400 and bad.json()["errors"][0]["resource_type"] == "routes"
    dup = {"routes": [{**ROUTE, "id": "r1"}, {**ROUTE, "id": "ok"}, {**ROUTE, "id": "r1"}]}
    errors = admin.post("/configs/validate", dup).json()["errors"]
    assert errors == [
        {
            "resource_type": "routes",
            "resource_id": "r1",
            "index": 2,
            "error": "found duplicate id r1 in routes",
        }
    ]


def test_plugins_reload(admin_gateway: Any) -> None:
    gw, admin = admin_gateway()
    calls: list[int] = []
    original = gw.reload_plugins
    gw_api = gw.admin.api
    gw_api.reload_plugins = lambda: (calls.append(1), original())[1]
    r = admin.call("GET", "/plugins/reload")
    assert r.status == 405
    assert error(r) == "please use PUT method to reload the plugins, GET method is not allowed."
    r = admin.call("PUT", "/plugins/reload")
    assert r.status == 200 and r.body == b"done" and calls == [1]


# -- protocol --------------------------------------------------------------------------------


def test_unknown_resource_invalid_json_head_and_body_limit(admin: Admin) -> None:
    r = admin.get("/foo")
    assert r.status == 404 and error(r) == "Unsupported resource type: foo"
    r = admin.call("PUT", "/routes/1", raw=b"{not json")
    assert r.status == 400 and error(r).startswith("invalid request body: ")
    assert r.json()["req_body"] == "{not json"
    for depth in (150, 5000):  # past what any config nests (5000: past the decoder itself)
        deep = b'{"uri": "/a", "desc": ' + b"[" * depth + b"]" * depth + b"}"
        r = admin.call("PUT", "/routes/1", raw=deep)
        assert r.status == 400 and error(r) == "invalid request body: nested deeper than 100 levels"
    head = admin.call("HEAD", "")
    assert head.status == 200 and head.headers["x-api-version"] == "v3"
    big = {"uri": "/a", "desc": "x" * (1536 * 1024)}
    r = admin.put("/routes/1", big)
    size = len(json.dumps(big))
    assert r.status == 400 and error(r) == (
        f"invalid request body: request size {size} is greater than the maximum size "
        "1572864 allowed"
    )
    for bad in ("abc", "inf", "nan", ""):
        r = admin.call("GET", f"/routes?ttl={bad}")
        assert error(r) == "invalid argument ttl: should be a number", bad
    r = admin.call("DELETE", "/plugins/list")
    assert r.status == 404
    r = admin.put("/ssls/1", {})
    assert r.status == 400 and "ssls" in error(r)
