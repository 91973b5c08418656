"""Compiling a Config into the data-plane snapshot (docs/CONTRACT-snapshot.md) and diffs."""

from __future__ import annotations

import json
from typing import Any

from pygateway.config import compile_config, diff, full, parse_standalone
from pygateway.config.compile import Snapshot, change_set_json


class Catalog:
    def known(self, name: str) -> bool:
        return True

    def check(self, name: str, conf: dict[str, Any]) -> str | None:
        return None


def snap(text: str) -> Snapshot:
    return compile_config(parse_standalone(text + "\n#END\n", catalog=Catalog()))


def test_hash_node_form() -> None:
    s = snap("""
routes:
  - id: 1
    uri: /hello
    upstream:
      nodes:
        "127.0.0.1:1980": 1
        "example.com": 2
        "[::1]:8080": 3
""")
    up = s.upstreams["routes/1"]
    assert up == {
        "key": "routes/1",
        "nodes": [
            {"host": "127.0.0.1", "port": 1980, "weight": 1, "priority": 0},
            {"host": "example.com", "port": 80, "weight": 2, "priority": 0},
            {"host": "[::1]", "port": 8080, "weight": 3, "priority": 0},
        ],
        "type": "roundrobin",
        "retries": None,
        "retry_timeout": None,
        "timeout": None,
        "pass_host": "pass",
        "upstream_host": None,
        "scheme": "http",
        "keepalive_pool": {"size": 320, "idle_timeout": 60, "requests": 1000},
    }
    route = s.routes["1"]
    assert route == {
        "id": "1",
        "name": None,
        "seq": 1,
        "uris": ["/hello"],
        "hosts": None,
        "methods": None,
        "remote_addrs": None,
        "vars": None,
        "priority": 0,
        "upstream": "routes/1",
        "timeout": None,
        "service_id": None,
        "plugins": {},
        "websocket": False,
    }


def test_array_node_form_and_upstream_fields() -> None:
    s = snap("""
upstreams:
  - id: u1
    scheme: http
    retries: 2
    retry_timeout: 1.5
    timeout: {connect: 1, send: 2.5, read: 3}
    pass_host: rewrite
    upstream_host: backend.local
    keepalive_pool: {size: 10}
    nodes:
      - {host: 10.0.0.1, port: 8443, weight: 5, priority: 1}
      - {host: 10.0.0.2, weight: 1}
      - {host: "::1", weight: 1}
routes:
  - {id: r, uri: /x, upstream_id: u1}
""")
    up = s.upstreams["upstreams/u1"]
    assert up["nodes"] == [
        {"host": "10.0.0.1", "port": 8443, "weight": 5, "priority": 1},
        {"host": "10.0.0.2", "port": 80, "weight": 1, "priority": 0},
        {"host": "[::1]", "port": 80, "weight": 1, "priority": 0},
    ]
    assert up["retries"] == 2 and up["retry_timeout"] == 1.5
    assert up["timeout"] == {"connect": 1, "send": 2.5, "read": 3}
    assert up["pass_host"] == "rewrite" and up["upstream_host"] == "backend.local"
    assert up["keepalive_pool"] == {"size": 10, "idle_timeout": 60, "requests": 1000}
    assert s.routes["r"]["upstream"] == "upstreams/u1"


def test_route_fields() -> None:
    s = snap("""
routes:
  - id: r
    name: the route
    uris: [/a, /b/*]
    host: API.Example.COM
    methods: [GET, POST]
    remote_addr: 10.0.0.0/8
    vars: [["arg_a", "==", "1"]]
    priority: 5
    timeout: {connect: 1, send: 1, read: 1}
    plugins: {echo: {body: hi}}
  - id: r2
    uri: /off
    status: 0
    plugins: {echo: {}}
""")
    assert list(s.routes) == ["r"]  # status 0 omitted
    r = s.routes["r"]
    assert r["name"] == "the route"
    assert r["uris"] == ["/a", "/b/*"]
    assert r["hosts"] == ["api.example.com"]
    assert r["methods"] == ["GET", "POST"]
    assert r["remote_addrs"] == ["10.0.0.0/8"]
    assert r["vars"] == [["arg_a", "==", "1"]]
    assert r["priority"] == 5
    assert r["upstream"] is None
    assert r["timeout"] == {"connect": 1, "send": 1, "read": 1}
    assert r["plugins"] == {"echo": {"body": "hi"}}


SERVICES = """
upstreams:
  - {id: u1, nodes: {"a:1": 1}}
  - {id: u2, nodes: {"b:1": 1}}
services:
  - id: s1
    hosts: [Svc.Example.com]
    upstream: {nodes: {"c:1": 1}}
    plugins: {p-service: {from: service}, p-shared: {from: service}}
  - id: s2
    upstream_id: u2
plugin_configs:
  - id: pc
    plugins: {p-config: {from: config}, p-shared: {from: config}, p-route: {from: config}}
routes:
  - {id: inherit, uri: /1, service_id: s1}
  - {id: own-host, uri: /2, service_id: s1, host: Own.com}
  - {id: own-upstream-id, uri: /3, service_id: s1, upstream_id: u1}
  - {id: own-upstream, uri: /4, service_id: s1, upstream_id: u1, upstream: {nodes: {"d:1": 1}}}
  - {id: svc-upstream-id, uri: /5, service_id: s2}
  - id: merged
    uri: /6
    service_id: s1
    plugin_config_id: pc
    plugins: {p-route: {from: route}}
"""


def test_service_inheritance() -> None:
    s = snap(SERVICES)
    r = s.routes
    assert r["inherit"]["hosts"] == ["svc.example.com"]
    assert r["inherit"]["upstream"] == "services/s1"
    assert r["inherit"]["service_id"] == "s1"
    assert r["inherit"]["plugins"] == {
        "p-service": {"from": "service"},
        "p-shared": {"from": "service"},
    }
    assert r["own-host"]["hosts"] == ["own.com"]
    assert r["own-upstream-id"]["upstream"] == "upstreams/u1"
    assert r["own-upstream"]["upstream"] == "routes/own-upstream"
    assert r["svc-upstream-id"]["upstream"] == "upstreams/u2"
    assert r["merged"]["plugins"] == {
        "p-service": {"from": "service"},
        "p-shared": {"from": "config"},
        "p-config": {"from": "config"},
        "p-route": {"from": "route"},
    }
    assert set(s.upstreams) == {
        "upstreams/u1",
        "upstreams/u2",
        "services/s1",
        "routes/own-upstream",
    }
    assert s.upstreams["services/s1"]["nodes"][0]["host"] == "c"


def test_full_change_set_is_json() -> None:
    s = snap(SERVICES)
    changes = full(s)
    assert changes["delete_upstreams"] == [] and changes["delete_routes"] == []
    assert [u["key"] for u in changes["upsert_upstreams"]] == list(s.upstreams)
    assert [r["id"] for r in changes["upsert_routes"]] == list(s.routes)
    assert json.loads(change_set_json(changes)) == changes


def test_diff_only_the_changed_route() -> None:
    base = """
upstreams:
  - {id: u1, nodes: {"a:1": 1}}
routes:
  - {id: 1, uri: /a, upstream_id: u1}
  - {id: 2, uri: /b, upstream_id: u1}
  - {id: 3, uri: /c, upstream_id: u1}
"""
    old = snap(base)
    new = snap(base.replace("uri: /b", "uri: /bb"))
    changes = diff(old, new)
    assert [r["id"] for r in changes["upsert_routes"]] == ["2"]
    assert changes["upsert_routes"][0]["uris"] == ["/bb"]
    assert changes["delete_routes"] == []
    assert changes["upsert_upstreams"] == [] and changes["delete_upstreams"] == []
    assert diff(old, snap(base)) == {
        "upsert_upstreams": [],
        "delete_upstreams": [],
        "upsert_routes": [],
        "delete_routes": [],
    }


def test_diff_adds_and_deletes() -> None:
    old = snap("""
upstreams:
  - {id: u1, nodes: {"a:1": 1}}
routes:
  - {id: 1, uri: /a, upstream_id: u1}
  - {id: 2, uri: /b, upstream: {nodes: {"x:1": 1}}}
""")
    new = snap("""
upstreams:
  - {id: u1, nodes: {"a:1": 2}}
routes:
  - {id: 1, uri: /a, upstream_id: u1}
  - {id: 3, uri: /c, upstream_id: u1}
""")
    changes = diff(old, new)
    assert [u["key"] for u in changes["upsert_upstreams"]] == ["upstreams/u1"]
    assert changes["delete_upstreams"] == ["routes/2"]
    assert [r["id"] for r in changes["upsert_routes"]] == ["3"]
    assert changes["delete_routes"] == ["2"]


def test_disabling_a_route_deletes_it() -> None:
    on = snap("routes:\n  - {id: 1, uri: /a, plugins: {echo: {}}}")
    off = snap("routes:\n  - {id: 1, uri: /a, plugins: {echo: {}}, status: 0}")
    assert diff(on, off)["delete_routes"] == ["1"]


def test_seq_is_file_position() -> None:
    s = snap("routes:\n  - {id: b, uri: /b, plugins: {}}\n  - {id: a, uri: /a, plugins: {}}")
    assert [(r["id"], r["seq"]) for r in s.routes.values()] == [("b", 1), ("a", 2)]
