"""Tests of the hello-stamp plugins with pygateway.testing (run: pytest examples/custom_plugin).

The fixtures come from ``pytest_plugins = ["pygateway.testing"]`` in ``conftest.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pygateway import ConfigError
from pygateway.testing import GatewayFactory, Origin, check_conf, get, post, route, run_gateway

# The gateway imports every file of a plugin_paths directory, this one included: make the
# import below work wherever that happens (pytest puts this directory on sys.path itself).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from header_stamp import AsyncHelloStamp, HelloStamp


def test_schema_defaults_and_errors() -> None:
    conf = {"value": "v"}
    assert check_conf(HelloStamp, conf) is None
    assert conf["header"] == "X-Stamp", "the default was not filled in"
    assert "value" in str(check_conf(HelloStamp, {}))
    assert check_conf(HelloStamp, {"value": "v", "header": "bad header"}) == (
        "invalid header name: bad header"
    )
    assert check_conf(HelloStamp, {"value": "v", "header": "Host"}) is not None


def test_stamps_the_upstream_request_and_the_response() -> None:
    # No fixtures: everything is a context manager.
    with Origin() as origin:
        routes = [route("/*", origin, plugins={"hello-stamp": {"value": "v1"}})]
        with run_gateway(routes=routes, plugins=[HelloStamp]) as gw:
            status, headers, _body = get(gw, "/anything")
        assert status == 200
        assert origin.last["headers"]["x-stamp"] == "v1"
        assert headers["x-stamp"] == "v1"


def test_custom_header_and_required_request_header(
    pygateway_origin: Origin, pygateway_gateway: GatewayFactory
) -> None:
    conf = {"value": "v2", "header": "X-Team", "require": "X-Client"}
    gw = pygateway_gateway(
        [route("/*", pygateway_origin, plugins={"hello-stamp": conf})], plugins=[HelloStamp]
    )
    refused = get(gw, "/")
    assert refused.status == 400
    assert refused.json() == {"error_msg": "missing header X-Client"}
    assert pygateway_origin.requests == [], "a refused request reached the upstream"

    ok = get(gw, "/", headers={"X-Client": "c"})
    assert ok.status == 200
    assert ok.json()["headers"]["x-team"] == "v2"
    assert ok.headers["x-team"] == "v2"
    assert "x-stamp" not in ok.headers


def test_async_variant(pygateway_origin: Origin, pygateway_gateway: GatewayFactory) -> None:
    gw = pygateway_gateway(
        [route("/*", pygateway_origin, plugins={"hello-stamp-async": {"value": "up"}})],
        plugins=[AsyncHelloStamp],
    )
    r = post(gw, "/upload", b"hello")
    assert r.status == 200
    assert r.json()["body"] == "hello"
    assert r.json()["headers"]["x-stamp"] == "up;method=POST"
    assert r.headers["x-stamp"] == "up;method=POST"


def test_async_variant_slower_than_plugin_timeout_is_504(
    pygateway_origin: Origin, pygateway_gateway: GatewayFactory
) -> None:
    conf = {"value": "slow", "delay": 2}
    gw = pygateway_gateway(
        [route("/*", pygateway_origin, plugins={"hello-stamp-async": conf})],
        plugins=[AsyncHelloStamp],
        plugin_timeout=0.2,
    )
    assert get(gw, "/").status == 504
    assert pygateway_origin.requests == []


def test_both_plugins_in_priority_order_in_debug_mode(
    pygateway_origin: Origin, pygateway_gateway: GatewayFactory
) -> None:
    plugins = {
        "hello-stamp-async": {"value": "b", "header": "X-B"},
        "hello-stamp": {"value": "a", "header": "X-A"},
    }
    gw = pygateway_gateway(
        [route("/*", pygateway_origin, plugins=plugins)],
        plugins=[HelloStamp, AsyncHelloStamp],
        debug=True,
    )
    r = get(gw, "/")
    assert (r.headers["x-a"], r.headers["x-b"]) == ("a", "b;method=GET")
    assert r.headers["apisix-plugins"] == (
        "hello-stamp#access, hello-stamp-async#access, "
        "hello-stamp#header_filter, hello-stamp-async#header_filter"
    )


def test_invalid_conf_is_refused_at_start(pygateway_gateway: GatewayFactory) -> None:
    try:
        pygateway_gateway(
            [route("/*", "127.0.0.1:1", plugins={"hello-stamp": {}})], plugins=[HelloStamp]
        )
    except ConfigError as err:
        assert "failed to check the configuration of plugin hello-stamp" in str(err)
    else:
        raise AssertionError("a conf without 'value' was accepted")
    assert pygateway_gateway.gateways == []
