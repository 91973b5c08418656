"""Per-item checks: APISIX's schemas and checkers, APISIX's wording."""

from __future__ import annotations

from typing import Any

import pytest
from pygateway.config import schema
from pygateway.config.plugins import NO_PLUGINS, PluginCatalog
from pygateway.config.resources import (
    Problem,
    check_consumer,
    check_global_rule,
    check_plugin_config,
    check_route,
    check_service,
    check_upstream,
    parse_addr,
)


class Catalog:
    """A test catalogue: knows `limit-count` (needs an integer `count` > 0) and `echo`."""

    def known(self, name: str) -> bool:
        return name in ("limit-count", "echo")

    def check(self, name: str, conf: dict[str, Any]) -> str | None:
        if name == "limit-count" and not (isinstance(conf.get("count"), int) and conf["count"] > 0):
            return (
                'property "count" validation failed: '
                "value should match only one schema, but matches none"
            )
        return None


CATALOG: PluginCatalog = Catalog()
UP = {"nodes": {"127.0.0.1:1980": 1}}


def only(problems: list[Problem]) -> Problem:
    errors = [p for p in problems if not p.warning]
    assert len(errors) == 1, problems
    return errors[0]


def route(**kw: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"uri": "/hello", "upstream": dict(UP)}
    conf.update(kw)
    return {k: v for k, v in conf.items() if v is not None}


def test_valid_route_gets_defaults() -> None:
    conf = route()
    assert check_route(conf, NO_PLUGINS) == []
    assert conf["priority"] == 0 and conf["status"] == 1
    assert conf["upstream"]["type"] == "roundrobin"
    assert conf["upstream"]["pass_host"] == "pass"
    assert conf["upstream"]["scheme"] == "http"


def test_route_wrong_type() -> None:
    p = only(check_route(route(uri=1), NO_PLUGINS))
    assert p.message == (
        'invalid configuration: property "uri" validation failed: '
        "wrong type: expected string, got number"
    )
    assert p.path == "uri"
    assert p.detail == "wrong type: expected string, got number"


def test_route_methods_enum() -> None:
    p = only(check_route(route(methods=["GET", "FOO"]), NO_PLUGINS))
    assert p.message == (
        'invalid configuration: property "methods" validation failed: '
        "failed to validate item 2: matches none of the enum values"
    )
    assert p.path == "methods[1]"


def test_route_additional_property() -> None:
    p = only(check_route(route(foo=1), NO_PLUGINS))
    assert p.message == "invalid configuration: additional properties forbidden, found foo"


def test_route_uri_and_uris() -> None:
    p = only(check_route(route(uris=["/a"]), NO_PLUGINS))
    assert p.message == (
        "invalid configuration: allOf 1 failed: "
        "value should match only one schema, but matches both schemas 1 and 2"
    )
    p = only(check_route({"upstream": dict(UP)}, NO_PLUGINS))
    assert p.message == (
        "invalid configuration: allOf 1 failed: "
        "value should match only one schema, but matches none"
    )
    assert check_route(route(uri=None, uris=["/a", "/b"]), NO_PLUGINS) == []


def test_route_uri_too_long() -> None:
    p = only(check_route(route(uri="/" * 4097), NO_PLUGINS))
    assert p.detail == "string too long, expected at most 4096, got 4097"


def test_route_host_hosts_remote_addrs_exclusive() -> None:
    p = only(check_route(route(host="a.com", hosts=["b.com"]), NO_PLUGINS))
    assert p.message == "only one of host or hosts is allowed"
    p = only(check_route(route(remote_addr="1.1.1.1", remote_addrs=["2.2.2.2"]), NO_PLUGINS))
    assert p.message == "only one of remote_addr or remote_addrs is allowed"


def test_route_remote_addrs_ip_and_cidr() -> None:
    ok = route(remote_addrs=["10.0.0.1", "10.0.0.0/8", "::1", "fe80::/10"])
    assert check_route(ok, NO_PLUGINS) == []
    p = only(check_route(route(remote_addrs=["10.0.0.0/33"]), NO_PLUGINS))
    assert p.path == "remote_addrs[0]"
    assert p.detail == "object matches none of the required"


def test_route_needs_a_target() -> None:
    p = only(check_route({"uri": "/a"}, NO_PLUGINS))
    assert p.message.startswith(
        'invalid configuration: object matches none of the required: ["plugins","uri"] or '
    )
    targets: list[dict[str, Any]] = [{"upstream_id": 1}, {"service_id": "s"}, {"plugins": {}}]
    for target in targets:
        assert check_route({"uri": "/a", **target}, NO_PLUGINS) == []


@pytest.mark.parametrize("field", ["filter_func", "script"])
def test_lua_fields_refused(field: str) -> None:
    p = only(check_route(route(**{field: "function(vars) return true end"}), NO_PLUGINS))
    assert p.message == f'pygateway does not run Lua: field "{field}" is not supported'
    assert p.path == field
    p = only(check_service({"script": "return {}   -- some lua"}, NO_PLUGINS))
    assert p.message == 'pygateway does not run Lua: field "script" is not supported'


def test_route_bad_vars() -> None:
    p = only(check_route(route(vars=[["arg_name", "=", "json"]]), NO_PLUGINS))
    assert p.message == "failed to validate the 'vars' expression: invalid operator '='"
    assert p.path == "vars"
    assert check_route(route(vars=[["arg_name", "==", "json"]]), NO_PLUGINS) == []


def test_route_timeout() -> None:
    p = only(check_route(route(timeout={"connect": 0, "send": 1, "read": 1}), NO_PLUGINS))
    assert p.path == "timeout.connect"
    assert p.detail == "expected 0 to be greater than 0"
    p = only(check_route(route(timeout={"connect": 1, "send": 1}), NO_PLUGINS))
    assert p.detail == 'property "read" is required'
    assert p.path == "timeout"


def test_route_status_enum() -> None:
    p = only(check_route(route(status=2), NO_PLUGINS))
    assert p.path == "status"
    assert p.detail == "matches none of the enum values"


def test_inline_upstream_errors_have_full_path() -> None:
    up = {"nodes": {"127.0.0.1:1980": 1}, "timeout": {"connect": 0, "send": 1, "read": 1}}
    p = only(check_route(route(upstream=up), NO_PLUGINS))
    assert p.path == "upstream.timeout.connect"
    assert p.message == (
        'invalid configuration: property "upstream" validation failed: '
        'property "timeout" validation failed: property "connect" validation failed: '
        "expected 0 to be greater than 0"
    )


def test_upstream_node_forms() -> None:
    assert check_upstream({"nodes": {"127.0.0.1:80": 1, "[::1]:8080": 2}}, NO_PLUGINS) == []
    arr: dict[str, Any] = {"nodes": [{"host": "127.0.0.1", "port": 80, "weight": 1}]}
    assert check_upstream(arr, NO_PLUGINS) == []
    assert arr["nodes"][0]["priority"] == 0
    p = only(check_upstream({"nodes": [{"host": "a", "port": 80}]}, NO_PLUGINS))
    assert p.path == "nodes"
    assert p.detail == "object matches none of the required"
    p = only(check_upstream({"nodes": {"127.0.0.1:70000": 1}}, NO_PLUGINS))
    assert p.message == "invalid port 70000"


def test_upstream_fields() -> None:
    full = {
        "nodes": {"a.com": 1},
        "type": "roundrobin",
        "retries": 2,
        "retry_timeout": 1.5,
        "timeout": {"connect": 1, "send": 2, "read": 3},
        "pass_host": "rewrite",
        "upstream_host": "b.com",
        "scheme": "http",
        "keepalive_pool": {"size": 10, "idle_timeout": 5, "requests": 100},
        "name": "n",
        "desc": "d",
        "labels": {"env": "prod"},
    }
    assert check_upstream(full, NO_PLUGINS) == []
    p = only(check_upstream({"nodes": {"a": 1}, "scheme": "ftp"}, NO_PLUGINS))
    assert p.message == (
        'invalid configuration: property "scheme" validation failed: '
        "matches none of the enum values"
    )
    p = only(check_upstream({"nodes": {"a": 1}, "pass_host": "rewrite"}, NO_PLUGINS))
    assert p.message == "`upstream_host` can't be empty when `pass_host` is `rewrite`"
    p = only(check_upstream({"nodes": {"a": 1}, "retries": -1}, NO_PLUGINS))
    assert p.message == (
        'invalid configuration: property "retries" validation failed: expected -1 to be at least 0'
    )
    p = only(check_upstream({"nodes": {"a": 1}, "bogus": 1}, NO_PLUGINS))
    assert p.message == "invalid configuration: additional properties forbidden, found bogus"


def test_upstream_chash_and_unsupported() -> None:
    ok = {"nodes": {"a": 1}, "type": "chash", "hash_on": "header", "key": "X-User"}
    (w,) = check_upstream(ok, NO_PLUGINS)
    assert w.warning and "not implemented yet" in w.message, "chash must warn, not pass silently"
    probs = check_upstream({"nodes": {"a": 1}, "type": "chash"}, NO_PLUGINS)
    assert [p.message for p in probs if not p.warning] == ["missing key"]
    p = only(check_upstream({"nodes": {"a": 1}, "scheme": "https"}, NO_PLUGINS))
    assert p.message == 'pygateway does not support upstream scheme "https"'
    p = only(check_upstream({"nodes": {"a": 1}, "scheme": "grpc"}, NO_PLUGINS))
    assert p.message == 'pygateway does not support upstream scheme "grpc"'
    p = only(check_upstream({"service_name": "a", "discovery_type": "dns"}, NO_PLUGINS))
    assert "service discovery" in p.message
    probs = check_upstream({"nodes": {"a": 1}, "checks": {"active": {}}}, NO_PLUGINS)
    assert [p.warning for p in probs] == [True]


def test_parse_addr() -> None:
    assert parse_addr("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_addr("example.com") == ("example.com", None)
    assert parse_addr("[::1]:8080") == ("[::1]", 8080)
    assert parse_addr("[::1]") == ("[::1]", None)
    assert parse_addr("::1") == ("[::1]", None)
    with pytest.raises(ValueError, match="invalid port x"):
        parse_addr("a:x")


def test_unknown_plugin() -> None:
    p = only(check_route(route(plugins={"key-auth": {}}), NO_PLUGINS))
    assert p.message == "unknown plugin [key-auth]"
    assert p.path == "plugins.key-auth"


def test_plugin_check_wording() -> None:
    p = only(check_route(route(plugins={"limit-count": {"count": 0}}), CATALOG))
    assert p.message == (
        "failed to check the configuration of plugin limit-count err: "
        'property "count" validation failed: value should match only one schema, '
        "but matches none"
    )
    assert check_route(route(plugins={"limit-count": {"count": 1}}), CATALOG) == []


def test_plugin_meta() -> None:
    meta = {
        "disable": False,
        "priority": 5,
        "filter": [["arg_a", "==", "1"]],
        "error_response": "x",
    }
    assert check_route(route(plugins={"echo": {"_meta": meta}}), CATALOG) == []
    p = only(check_route(route(plugins={"echo": {"_meta": {"bogus": 1}}}), CATALOG))
    assert p.message == (
        "failed to check the configuration of plugin echo err: "
        'property "_meta" validation failed: additional properties forbidden, found bogus'
    )
    p = only(check_route(route(plugins={"echo": {"_meta": {"filter": [["a", "=", 1]]}}}), CATALOG))
    assert p.message == "failed to validate the 'vars' expression: invalid operator '='"
    p = only(check_route(route(plugins={"echo": {"_meta": {"pre_function": "x"}}}), CATALOG))
    assert "pre_function" in p.message
    # a disabled plugin with a bad conf is accepted, as in APISIX
    disabled = {"limit-count": {"count": 0, "_meta": {"disable": True}}}
    assert check_route(route(plugins=disabled), CATALOG) == []
    p = only(check_route(route(plugins={"echo": 1}), CATALOG))
    assert p.message == "invalid plugin conf 1 for plugin [echo]"


def test_other_resources() -> None:
    assert check_service({"hosts": ["a.com"], "upstream": dict(UP)}, NO_PLUGINS) == []
    p = only(check_service({"host": "a.com"}, NO_PLUGINS))
    assert p.message == "invalid configuration: additional properties forbidden, found host"
    p = only(check_consumer({"plugins": {}}, NO_PLUGINS))
    assert p.message == 'invalid configuration: property "username" is required'
    p = only(check_consumer({"username": "jack", "plugins": {"key-auth": {}}}, NO_PLUGINS))
    assert p.message == "invalid plugins configuration: unknown plugin [key-auth]"
    assert check_consumer({"username": "jack", "plugins": {"echo": {}}}, CATALOG) == []
    p = only(check_global_rule({"plugins": {}}, NO_PLUGINS))
    assert p.message == 'invalid configuration: property "id" is required'
    assert check_plugin_config({"id": 1, "plugins": {"echo": {}}}, CATALOG) == []


def test_schema_ids() -> None:
    from pygateway.config.validator import is_valid

    assert is_valid(schema.ID_SCHEMA, "abc-1_2.3")
    assert is_valid(schema.ID_SCHEMA, 7)
    assert not is_valid(schema.ID_SCHEMA, 0)
    assert not is_valid(schema.ID_SCHEMA, "a/b")
    assert not is_valid(schema.ID_SCHEMA, "x" * 65)
