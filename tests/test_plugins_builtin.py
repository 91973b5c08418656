"""Built-in plugins: documented behaviour case by case, phase methods called directly."""

from __future__ import annotations

import asyncio
import base64
import copy
import inspect
import json
import re
import time
import uuid
from typing import Any

from pygateway.ctx import SimpleCtx
from pygateway.plugin import PluginRegistry
from pygateway.plugins.basic_auth import BasicAuth
from pygateway.plugins.consumer_restriction import ConsumerRestriction
from pygateway.plugins.cors import Cors
from pygateway.plugins.fault_injection import FaultInjection
from pygateway.plugins.ip_restriction import IpRestriction
from pygateway.plugins.key_auth import KeyAuth
from pygateway.plugins.mocking import Mocking
from pygateway.plugins.proxy_rewrite import ProxyRewrite
from pygateway.plugins.redirect import Redirect
from pygateway.plugins.request_id import RequestId
from pygateway.plugins.response_rewrite import ResponseRewrite
from pygateway.plugins.serverless_post_function import ServerlessPostFunction
from pygateway.plugins.serverless_pre_function import ServerlessPreFunction

# -- helpers -------------------------------------------------------------------------------------


def make_ctx(
    *,
    uri: str = "/",
    status: int = 200,
    response_headers: dict[str, str] | None = None,
    var: dict[str, Any] | None = None,
    **kw: Any,
) -> SimpleCtx:
    """A SimpleCtx; ``uri`` is the path, ``var`` extra variables, plus the response head."""
    ctx = SimpleCtx(path=uri, **kw)
    ctx.set_response(status, response_headers)
    for name, value in (var or {}).items():
        ctx.var[name] = value  # type: ignore[index]
    return ctx


REGISTRY = PluginRegistry(builtins=True)


def conf_of(plugin: Any, conf: dict[str, Any], schema_type: str = "schema") -> dict[str, Any]:
    """Check like the config layer (schema with defaults, then check_schema); return the conf."""
    conf = copy.deepcopy(conf)
    err = REGISTRY.check(plugin.name, conf, schema_type)
    assert err is None, err
    return conf


def conf_error(plugin: Any, conf: dict[str, Any], schema_type: str = "schema") -> str:
    err = REGISTRY.check(plugin.name, copy.deepcopy(conf), schema_type)
    assert err is not None, "expected an error"
    return err


def run(value: Any) -> Any:
    if inspect.isawaitable(value):
        return asyncio.run(_await(value))
    return value


async def _await(value: Any) -> Any:
    return await value


def body_json(resp: Any) -> Any:
    body = resp[1]
    return body if isinstance(body, (dict, list)) else json.loads(body)


def resp_headers(resp: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in (resp[2] if len(resp) > 2 else {}).items()}


# -- request-id ------------------------------------------------------------------------------------


class TestRequestId:
    p = RequestId()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority) == ("request-id", 12015)

    def test_generates_uuid_upstream_and_response(self) -> None:
        conf = conf_of(self.p, {})
        ctx = make_ctx()
        run(self.p.rewrite(conf, ctx))
        rid = ctx.headers.get("X-Request-Id")
        assert uuid.UUID(rid).version == 4
        run(self.p.header_filter(conf, ctx))
        assert ctx.response_headers["X-Request-Id"] == rid

    def test_keeps_client_id(self) -> None:
        conf = conf_of(self.p, {"header_name": "X-Trace"})
        ctx = make_ctx(headers={"X-Trace": "abc"})
        run(self.p.rewrite(conf, ctx))
        assert ctx.headers.get("X-Trace") == "abc"
        run(self.p.header_filter(conf, ctx))
        assert ctx.response_headers["X-Trace"] == "abc"

    def test_not_in_response(self) -> None:
        conf = conf_of(self.p, {"include_in_response": False})
        ctx = make_ctx()
        run(self.p.rewrite(conf, ctx))
        run(self.p.header_filter(conf, ctx))
        assert "X-Request-Id" not in ctx.response_headers

    def test_upstream_response_header_wins(self) -> None:
        conf = conf_of(self.p, {})
        ctx = make_ctx(response_headers={"X-Request-Id": "from-upstream"})
        run(self.p.rewrite(conf, ctx))
        run(self.p.header_filter(conf, ctx))
        assert ctx.response_headers["X-Request-Id"] == "from-upstream"

    def test_nanoid(self) -> None:
        conf = conf_of(self.p, {"algorithm": "nanoid"})
        ctx = make_ctx()
        run(self.p.rewrite(conf, ctx))
        assert re.fullmatch(r"[A-Za-z0-9_-]{21}", ctx.headers.get("X-Request-Id"))

    def test_range_id(self) -> None:
        conf = conf_of(
            self.p, {"algorithm": "range_id", "range_id": {"length": 8, "char_set": "abcdef"}}
        )
        ctx = make_ctx()
        run(self.p.rewrite(conf, ctx))
        assert re.fullmatch(r"[a-f]{8}", ctx.headers.get("X-Request-Id"))

    def test_uuidv7_and_ksuid(self) -> None:
        for algo, pattern in (("uuidv7", r"[0-9a-f-]{36}"), ("ksuid", r"[0-9A-Za-z]{27}")):
            ctx = make_ctx()
            run(self.p.rewrite(conf_of(self.p, {"algorithm": algo}), ctx))
            assert re.fullmatch(pattern, ctx.headers.get("X-Request-Id"))

    def test_schema(self) -> None:
        conf = conf_of(self.p, {})
        assert conf["header_name"] == "X-Request-Id" and conf["algorithm"] == "uuid"
        assert "matches none of the enum values" in conf_error(self.p, {"algorithm": "x"})
        assert "minimum" in conf_error(self.p, {"range_id": {"length": 2}}) or "expected 2" in (
            conf_error(self.p, {"range_id": {"length": 2}})
        )


# -- proxy-rewrite ---------------------------------------------------------------------------------


class TestProxyRewrite:
    p = ProxyRewrite()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority) == ("proxy-rewrite", 1008)

    def test_uri_with_vars(self) -> None:
        conf = conf_of(self.p, {"uri": "/new/$arg_name/${remote_addr}"})
        ctx = make_ctx(uri="/old", query="name=jack", remote_addr="10.0.0.1")
        run(self.p.rewrite(conf, ctx))
        assert ctx.uri == "/new/jack/10.0.0.1"
        assert ctx.query == "name=jack"

    def test_uri_with_query_is_merged(self) -> None:
        conf = conf_of(self.p, {"uri": "/new?x=1"})
        ctx = make_ctx(uri="/old", query="a=2")
        run(self.p.rewrite(conf, ctx))
        assert (ctx.uri, ctx.query) == ("/new", "x=1&a=2")

    def test_var_question_mark_stays_in_path(self) -> None:
        conf = conf_of(self.p, {"uri": "/v/$http_x"})
        ctx = make_ctx(uri="/old", headers={"X": "a?b"})
        run(self.p.rewrite(conf, ctx))
        assert ctx.uri == "/v/a?b"
        assert not ctx.query

    def test_missing_var_is_empty_and_default(self) -> None:
        conf = conf_of(self.p, {"uri": "/a/$arg_nope/${arg_nope ?? dflt}"})
        ctx = make_ctx(uri="/old")
        run(self.p.rewrite(conf, ctx))
        assert ctx.uri == "/a//dflt"

    def test_regex_uri_and_captures_in_headers(self) -> None:
        conf = conf_of(
            self.p,
            {
                "regex_uri": ["^/nomatch/(.*)", "/x/$1", "^/api/(\\w+)/(.*)", "/v2/$2/${1}"],
                "headers": {"set": {"X-Cap": "$1-$2", "X-Host": "$host"}},
            },
        )
        ctx = make_ctx(uri="/api/users/42", host="example.com")
        run(self.p.rewrite(conf, ctx))
        assert ctx.uri == "/v2/42/users"
        assert ctx.headers.get("X-Cap") == "users-42"
        assert ctx.headers.get("X-Host") == "example.com"

    def test_regex_uri_no_match_keeps_uri(self) -> None:
        conf = conf_of(self.p, {"regex_uri": ["^/zzz", "/y"]})
        ctx = make_ctx(uri="/keep")
        run(self.p.rewrite(conf, ctx))
        assert ctx.uri == "/keep"

    def test_uri_wins_over_regex_uri(self) -> None:
        conf = conf_of(self.p, {"uri": "/u", "regex_uri": ["^/(.*)", "/r/$1"]})
        ctx = make_ctx(uri="/keep")
        run(self.p.rewrite(conf, ctx))
        assert ctx.uri == "/u"

    def test_headers_add_set_remove(self) -> None:
        conf = conf_of(
            self.p,
            {
                "headers": {
                    "add": {"X-Add": "v2", "X-Multi": ["a", 1]},
                    "set": {"X-Set": "new", "X-Num": 5},
                    "remove": ["X-Drop"],
                }
            },
        )
        ctx = make_ctx(headers={"X-Add": "v1", "X-Set": "old", "X-Drop": "bye"})
        run(self.p.rewrite(conf, ctx))
        assert ctx.headers.get("X-Add") == "v1, v2"
        assert ctx.headers.get("X-Multi") == "a, 1"
        assert ctx.headers.get("X-Set") == "new"
        assert ctx.headers.get("X-Num") == "5"
        assert ctx.headers.get("X-Drop") is None

    def test_old_flat_headers_are_set(self) -> None:
        conf = conf_of(self.p, {"headers": {"X-Api-Version": "v2", "X-Ip": "$remote_addr"}})
        ctx = make_ctx(headers={"X-Api-Version": "v1"}, remote_addr="1.2.3.4")
        run(self.p.rewrite(conf, ctx))
        assert ctx.headers.get("X-Api-Version") == "v2"
        assert ctx.headers.get("X-Ip") == "1.2.3.4"

    def test_method_and_host(self) -> None:
        conf = conf_of(self.p, {"method": "POST", "host": "up.example.com:8080"})
        ctx = make_ctx(method="GET")
        run(self.p.rewrite(conf, ctx))
        assert ctx.method == "POST"
        assert ctx.host == "up.example.com:8080"

    def test_schema(self) -> None:
        assert "pattern" in conf_error(self.p, {"uri": "no-slash"})
        assert "enum" in conf_error(self.p, {"method": "FOO"})
        assert conf_error(self.p, {"regex_uri": ["a", "b", "c"]}) == (
            "The length of regex_uri should be an even number"
        )
        assert conf_error(self.p, {"regex_uri": ["(", "/x"]}).startswith("invalid regex_uri((, /x)")
        assert conf_error(self.p, {"headers": {"bad header": "x"}}) == (
            "invalid field character in header"
        )
        conf = conf_of(self.p, {"uri": "/x"})
        assert conf["use_real_request_uri_unsafe"] is False


# -- response-rewrite ------------------------------------------------------------------------------


def _body_through(plugin: Any, conf: dict[str, Any], ctx: Any, chunks: list[bytes]) -> bytes:
    out = b""
    for i, chunk in enumerate(chunks):
        res = run(plugin.body_filter(conf, ctx, chunk, i == len(chunks) - 1))
        out += chunk if res is None else res
    return out


class TestResponseRewrite:
    p = ResponseRewrite()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority) == ("response-rewrite", 899)

    def test_status_and_headers(self) -> None:
        conf = conf_of(
            self.p,
            {
                "status_code": 201,
                "headers": {
                    "set": {"X-Server-Id": 3, "X-Addr": "$remote_addr"},
                    "add": ["X-Add: one", "X-Add: two"],
                    "remove": ["X-Secret"],
                },
            },
        )
        ctx = make_ctx(status=200, response_headers={"X-Secret": "s"}, remote_addr="9.9.9.9")
        run(self.p.header_filter(conf, ctx))
        assert ctx.status == 201
        assert ctx.response_headers["X-Server-Id"] == "3"
        assert ctx.response_headers["X-Addr"] == "9.9.9.9"
        assert ctx.response_headers.get_all("X-Add") == ["one", "two"]  # two lines
        assert "X-Secret" not in ctx.response_headers

    def test_flat_headers(self) -> None:
        conf = conf_of(self.p, {"headers": {"X-A": "b"}})
        ctx = make_ctx()
        run(self.p.header_filter(conf, ctx))
        assert ctx.response_headers["X-A"] == "b"

    def test_body_replaced(self) -> None:
        conf = conf_of(self.p, {"body": '{"code":"ok"}\n'})
        ctx = make_ctx(response_headers={"Content-Length": "99", "ETag": "x"})
        run(self.p.header_filter(conf, ctx))
        assert "Content-Length" not in ctx.response_headers
        assert "ETag" not in ctx.response_headers
        assert _body_through(self.p, conf, ctx, [b"old1", b"old2"]) == b'{"code":"ok"}\n'

    def test_body_base64(self) -> None:
        conf = conf_of(self.p, {"body": base64.b64encode(b"\x00bin").decode(), "body_base64": True})
        ctx = make_ctx()
        run(self.p.header_filter(conf, ctx))
        assert _body_through(self.p, conf, ctx, [b"x"]) == b"\x00bin"

    def test_vars_not_matched(self) -> None:
        conf = conf_of(self.p, {"status_code": 500, "body": "no", "vars": [["status", "==", 404]]})
        ctx = make_ctx(status=200, var={"status": "200"})
        run(self.p.header_filter(conf, ctx))
        assert ctx.status == 200
        assert _body_through(self.p, conf, ctx, [b"orig"]) == b"orig"

    def test_vars_matched(self) -> None:
        conf = conf_of(self.p, {"body": "gone", "vars": [["status", "==", 404]]})
        ctx = make_ctx(status=404, var={"status": "404"})
        run(self.p.header_filter(conf, ctx))
        assert _body_through(self.p, conf, ctx, [b"orig"]) == b"gone"

    def test_filters_read_a_gzip_body_decoded(self) -> None:
        import gzip

        conf = conf_of(self.p, {"filters": [{"regex": "hello", "replace": "test"}]})
        ctx = make_ctx(response_headers={"Content-Encoding": "gzip", "Content-Length": "9"})
        run(self.p.header_filter(conf, ctx))
        assert "Content-Encoding" not in ctx.response_headers  # it goes out plain
        packed = gzip.compress(b"hello world")
        out = _body_through(self.p, conf, ctx, [packed[:5], packed[5:]])
        assert out == b"test world"
        # a coding the filters cannot read goes out as it came, header kept
        ctx = make_ctx(response_headers={"Content-Encoding": "br"})
        run(self.p.header_filter(conf, ctx))
        assert ctx.response_headers["Content-Encoding"] == "br"
        assert _body_through(self.p, conf, ctx, [b"\x1b\x0bhello"]) == b"\x1b\x0bhello"

    def test_filters_once_and_global(self) -> None:
        conf = conf_of(
            self.p,
            {
                "filters": [
                    {"regex": "X-Amzn-Trace-Id", "replace": "X-Trace", "scope": "global"},
                    {"regex": "(\\d+)", "replace": "<$1>"},
                ]
            },
        )
        ctx = make_ctx()
        run(self.p.header_filter(conf, ctx))
        out = _body_through(self.p, conf, ctx, [b"X-Amzn-Trace-Id 12 X-Amz", b"n-Trace-Id 34"])
        assert out == b"X-Trace <12> X-Trace 34"

    def test_filters_case_insensitive_option(self) -> None:
        conf = conf_of(
            self.p,
            {
                "filters": [
                    {"regex": "hello", "replace": "bye", "options": "ijo", "scope": "global"}
                ]
            },
        )
        ctx = make_ctx()
        run(self.p.header_filter(conf, ctx))
        assert _body_through(self.p, conf, ctx, [b"HeLLo hello"]) == b"bye bye"

    def test_schema(self) -> None:
        assert conf_error(self.p, {"body": "a", "filters": [{"regex": "a", "replace": "b"}]}) == (
            'failed to validate dependent schema for "body": value wasn\'t supposed to match schema'
        )
        assert conf_error(self.p, {"body": "!!!", "body_base64": True}) == "invalid base64 content"
        assert conf_error(self.p, {"vars": [["a", "bad-op", 1]]}).startswith(
            "failed to validate the 'vars' expression"
        )
        assert conf_error(self.p, {"filters": [{"regex": "(", "replace": ""}]}).startswith(
            'regex "(" validation failed'
        )
        assert conf_error(self.p, {"status_code": 100}) == (
            'property "status_code" validation failed: expected 100 to be at least 200'
        )
        conf = conf_of(self.p, {"filters": [{"regex": "a", "replace": "b"}]})
        assert conf["filters"][0]["scope"] == "once"
        assert conf["filters"][0]["options"] == "jo"


# -- cors ----------------------------------------------------------------------------------------


class TestCors:
    p = Cors()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority) == ("cors", 4000)

    def test_defaults_simple_request(self) -> None:
        conf = conf_of(self.p, {})
        ctx = make_ctx(headers={"Origin": "https://a.com"})
        assert run(self.p.rewrite(conf, ctx)) is None
        run(self.p.header_filter(conf, ctx))
        h = ctx.response_headers
        assert h["Access-Control-Allow-Origin"] == "*"
        assert h["Access-Control-Allow-Methods"] == "*"
        assert h["Access-Control-Allow-Headers"] == "*"
        assert h["Access-Control-Max-Age"] == "5"
        assert "Access-Control-Allow-Credentials" not in h
        assert "Vary" not in h

    def test_preflight_answered(self) -> None:
        conf = conf_of(
            self.p,
            {
                "allow_origins": "https://a.com",
                "allow_methods": "GET,POST",
                "max_age": 600,
                "expose_headers": "X-Id",
            },
        )
        ctx = make_ctx(method="OPTIONS", headers={"Origin": "https://a.com"})
        resp = run(self.p.rewrite(conf, ctx))
        assert resp[0] == 200
        h = resp_headers(resp)
        assert h["access-control-allow-origin"] == "https://a.com"
        assert h["access-control-allow-methods"] == "GET,POST"
        assert h["access-control-max-age"] == "600"
        assert h["access-control-expose-headers"] == "X-Id"
        run(self.p.header_filter(conf, ctx))
        assert ctx.response_headers["Vary"] == "Origin"

    def test_origin_list(self) -> None:
        conf = conf_of(self.p, {"allow_origins": "https://a.com,https://b.com"})
        ctx = make_ctx(headers={"Origin": "https://b.com"})
        run(self.p.rewrite(conf, ctx))
        run(self.p.header_filter(conf, ctx))
        assert ctx.response_headers["Access-Control-Allow-Origin"] == "https://b.com"
        ctx = make_ctx(headers={"Origin": "https://evil.com"})
        run(self.p.rewrite(conf, ctx))
        run(self.p.header_filter(conf, ctx))
        assert "Access-Control-Allow-Origin" not in ctx.response_headers
        assert ctx.response_headers["Vary"] == "Origin"

    def test_double_star(self) -> None:
        conf = conf_of(
            self.p,
            {
                "allow_origins": "**",
                "allow_methods": "**",
                "allow_headers": "**",
                "allow_credential": True,
            },
        )
        ctx = make_ctx(
            headers={"Origin": "https://x.io", "Access-Control-Request-Headers": "X-Foo"}
        )
        run(self.p.rewrite(conf, ctx))
        run(self.p.header_filter(conf, ctx))
        h = ctx.response_headers
        assert h["Access-Control-Allow-Origin"] == "https://x.io"
        assert "PATCH" in h["Access-Control-Allow-Methods"]
        assert h["Access-Control-Allow-Headers"] == "X-Foo"
        assert h["Access-Control-Allow-Credentials"] == "true"

    def test_by_regex(self) -> None:
        conf = conf_of(self.p, {"allow_origins_by_regex": [r".*\.test\.com$"]})
        ctx = make_ctx(headers={"Origin": "http://a.test.com"})
        run(self.p.rewrite(conf, ctx))
        run(self.p.header_filter(conf, ctx))
        assert ctx.response_headers["Access-Control-Allow-Origin"] == "http://a.test.com"
        ctx = make_ctx(headers={"Origin": "http://a.other.com"})
        run(self.p.rewrite(conf, ctx))
        run(self.p.header_filter(conf, ctx))
        assert "Access-Control-Allow-Origin" not in ctx.response_headers

    def test_timing_allow_origin(self) -> None:
        conf = conf_of(self.p, {"timing_allow_origins": "https://a.com"})
        ctx = make_ctx(headers={"Origin": "https://a.com"})
        run(self.p.rewrite(conf, ctx))
        run(self.p.header_filter(conf, ctx))
        assert ctx.response_headers["Timing-Allow-Origin"] == "https://a.com"

    def test_schema(self) -> None:
        assert conf_error(self.p, {"allow_credential": True}) == (
            "you can not set '*' for other option when 'allow_credential' is true"
        )
        assert "pattern" in conf_error(self.p, {"allow_origins": "a.com"})
        assert conf_error(self.p, {"allow_origins_by_regex": ["("]})
        conf_of(
            self.p,
            {
                "allow_credential": True,
                "allow_origins": "https://a.com",
                "allow_methods": "GET",
                "allow_headers": "X-A",
            },
        )


# -- ip-restriction --------------------------------------------------------------------------------


class TestIpRestriction:
    p = IpRestriction()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority) == ("ip-restriction", 3000)

    def test_whitelist(self) -> None:
        conf = conf_of(self.p, {"whitelist": ["127.0.0.1", "10.0.0.0/8", "fe80::/16"]})
        assert run(self.p.access(conf, make_ctx(remote_addr="10.1.2.3"))) is None
        assert run(self.p.access(conf, make_ctx(remote_addr="fe80::1"))) is None
        resp = run(self.p.access(conf, make_ctx(remote_addr="11.0.0.1")))
        assert resp[0] == 403
        assert body_json(resp) == {"message": "Your IP address is not allowed"}

    def test_blacklist_custom(self) -> None:
        conf = conf_of(
            self.p, {"blacklist": ["192.168.0.0/16"], "message": "go away", "response_code": 404}
        )
        assert run(self.p.access(conf, make_ctx(remote_addr="8.8.8.8"))) is None
        resp = run(self.p.access(conf, make_ctx(remote_addr="192.168.3.4")))
        assert resp[0] == 404 and body_json(resp) == {"message": "go away"}

    def test_schema(self) -> None:
        assert conf_error(self.p, {}) == "value should match only one schema, but matches none"
        assert conf_error(self.p, {"whitelist": ["1.1.1.1"], "blacklist": ["2.2.2.2"]}) == (
            "value should match only one schema, but matches both schemas 1 and 2"
        )
        assert conf_error(self.p, {"whitelist": ["not-an-ip"]}).startswith(
            'property "whitelist" validation failed: failed to validate item 1'
        )
        assert conf_error(self.p, {"blacklist": ["1.1.1.1"], "response_code": 500}) == (
            'property "response_code" validation failed: expected 500 to be at most 404'
        )


# -- redirect --------------------------------------------------------------------------------------


class TestRedirect:
    p = Redirect()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority) == ("redirect", 900)

    def test_uri_template(self) -> None:
        conf = conf_of(self.p, {"uri": "/test/${uri}/$arg_x/\\$host"})
        resp = run(self.p.rewrite(conf, make_ctx(uri="/hello", query="x=1")))
        assert resp[0] == 302
        assert resp_headers(resp)["location"] == "/test//hello/1/\\$host"

    def test_ret_code_and_append_query(self) -> None:
        conf = conf_of(self.p, {"uri": "/new?a=1", "ret_code": 301, "append_query_string": True})
        resp = run(self.p.rewrite(conf, make_ctx(query="b=2")))
        assert resp[0] == 301
        assert resp_headers(resp)["location"] == "/new?a=1&b=2"
        conf = conf_of(self.p, {"uri": "/new", "append_query_string": True})
        resp = run(self.p.rewrite(conf, make_ctx(query="b=2")))
        assert resp_headers(resp)["location"] == "/new?b=2"

    def test_regex_uri(self) -> None:
        conf = conf_of(self.p, {"regex_uri": ["^/api/(.*)", "/v2/$1"]})
        resp = run(self.p.rewrite(conf, make_ctx(uri="/api/users")))
        assert resp_headers(resp)["location"] == "/v2/users"
        assert run(self.p.rewrite(conf, make_ctx(uri="/other"))) is None

    def test_encode_uri(self) -> None:
        conf = conf_of(self.p, {"uri": "/a b$uri", "encode_uri": True})
        resp = run(self.p.rewrite(conf, make_ctx(uri="/x")))
        assert resp_headers(resp)["location"] == "/a%20b/x"

    def test_http_to_https(self) -> None:
        conf = conf_of(self.p, {"http_to_https": True})
        ctx = make_ctx(uri="/p", query="q=1", host="foo.com", scheme="http")
        resp = run(self.p.rewrite(conf, ctx))
        assert resp[0] == 301
        assert resp_headers(resp)["location"] == "https://foo.com/p?q=1"
        resp = run(self.p.rewrite(conf, make_ctx(method="POST", host="foo.com")))
        assert resp[0] == 308
        assert run(self.p.rewrite(conf, make_ctx(scheme="https"))) is None
        assert run(self.p.rewrite(conf, make_ctx(headers={"X-Forwarded-Proto": "https"}))) is None

    def test_schema(self) -> None:
        assert conf_error(self.p, {}) == "value should match only one schema, but matches none"
        assert conf_error(self.p, {"http_to_https": True, "append_query_string": True}) == (
            "only one of `http_to_https` and `append_query_string` can be configured."
        )
        assert conf_error(self.p, {"regex_uri": ["(", "/x"]}).startswith("invalid regex_uri")
        assert "validation failed" in conf_error(self.p, {"uri": "/x", "ret_code": 100})


# -- mocking ---------------------------------------------------------------------------------------


class TestMocking:
    p = Mocking()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority) == ("mocking", 10900)

    def test_example(self) -> None:
        conf = conf_of(
            self.p,
            {
                "response_example": '{"a":"$arg_a"}',
                "response_status": 201,
                "response_headers": {"X-Mock": 1},
            },
        )
        resp = run(self.p.access(conf, make_ctx(query="a=7")))
        assert resp[0] == 201 and resp[1] == '{"a":"7"}'
        h = resp_headers(resp)
        assert h["content-type"] == "application/json;charset=utf8"
        assert h["x-mock-by"] == "pygateway"
        assert h["x-mock"] == "1"

    def test_schema_generation_json(self) -> None:
        conf = conf_of(
            self.p,
            {
                "with_mock_header": False,
                "response_schema": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "example": "jack"},
                        "age": {"type": "integer"},
                        "ok": {"type": "boolean"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "inner": {
                            "type": "object",
                            "properties": {"x": {"type": "number", "example": 1.5}},
                        },
                    },
                },
            },
        )
        resp = run(self.p.access(conf, make_ctx()))
        data = json.loads(resp[1])
        assert data["name"] == "jack"
        assert isinstance(data["age"], int) and isinstance(data["ok"], bool)
        assert data["tags"] and isinstance(data["tags"][0], str)
        assert data["inner"] == {"x": 1.5}
        assert "x-mock-by" not in resp_headers(resp)

    def test_schema_generation_xml(self) -> None:
        conf = conf_of(
            self.p,
            {
                "content_type": "application/xml",
                "response_schema": {"properties": {"name": {"type": "string", "example": "a<b"}}},
            },
        )
        resp = run(self.p.access(conf, make_ctx()))
        assert resp[1] == "<data><name>a&lt;b</name></data>"

    def test_delay(self) -> None:
        conf = conf_of(self.p, {"response_example": "x", "delay": 1})
        assert conf["delay"] == 1
        conf["delay"] = 0.05  # sub-second for the test
        start = time.monotonic()
        run(self.p.access(conf, make_ctx()))
        assert time.monotonic() - start >= 0.04

    def test_schema(self) -> None:
        assert conf_error(self.p, {}) == (
            'object matches none of the required: ["response_example"] or ["response_schema"]'
        )
        assert conf_error(self.p, {"response_example": "x", "content_type": "image/png"}) == (
            "unsupported content type!"
        )


# -- fault-injection -------------------------------------------------------------------------------


class TestFaultInjection:
    p = FaultInjection()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority) == ("fault-injection", 11000)

    def test_abort(self) -> None:
        conf = conf_of(
            self.p,
            {
                "abort": {
                    "http_status": 503,
                    "body": "Fault $remote_addr",
                    "headers": {"X-F": "$arg_k", "X-N": 1},
                }
            },
        )
        resp = run(self.p.rewrite(conf, make_ctx(remote_addr="1.1.1.1", query="k=v")))
        assert resp[:2] == (503, "Fault 1.1.1.1")
        assert resp_headers(resp) == {"x-f": "v", "x-n": "1"}

    def test_abort_vars(self) -> None:
        conf = conf_of(
            self.p,
            {
                "abort": {
                    "http_status": 403,
                    "vars": [
                        [["arg_name", "==", "jack"], ["arg_age", "!", "<", 18]],
                        [["http_x", "==", "y"]],
                    ],
                }
            },
        )
        assert run(self.p.rewrite(conf, make_ctx(query="name=jack&age=20")))[0] == 403
        assert run(self.p.rewrite(conf, make_ctx(query="name=jack&age=10"))) is None
        assert run(self.p.rewrite(conf, make_ctx(headers={"x": "y"})))[0] == 403

    def test_percentage_zero(self) -> None:
        conf = conf_of(self.p, {"abort": {"http_status": 500, "percentage": 0}})
        assert all(run(self.p.rewrite(conf, make_ctx())) is None for _ in range(20))

    def test_delay(self) -> None:
        conf = conf_of(self.p, {"delay": {"duration": 0.05}})
        start = time.monotonic()
        assert run(self.p.rewrite(conf, make_ctx())) is None
        assert time.monotonic() - start >= 0.04

    def test_delay_vars_not_matched(self) -> None:
        conf = conf_of(self.p, {"delay": {"duration": 2, "vars": [[["arg_slow", "==", "1"]]]}})
        start = time.monotonic()
        run(self.p.rewrite(conf, make_ctx()))
        assert time.monotonic() - start < 1

    def test_schema(self) -> None:
        assert conf_error(self.p, {}) == "expect object to have at least 1 properties"
        assert conf_error(self.p, {"abort": {"body": "x"}}) == (
            'property "abort" validation failed: property "http_status" is required'
        )
        assert "validation failed" in conf_error(self.p, {"delay": {"duration": -1}})
        assert conf_error(self.p, {"abort": {"http_status": 500, "vars": [["a", "bad", 1]]}})


# -- key-auth --------------------------------------------------------------------------------------

CONSUMERS: list[dict[str, Any]] = [
    {
        "username": "jack",
        "group_id": "g1",
        "plugins": {
            "key-auth": {"key": "secret-key"},
            "basic-auth": {"username": "jack", "password": "p@ss:word"},
        },
    },
    {"username": "anon", "plugins": {}},
]


class TestKeyAuth:
    p = KeyAuth()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority, self.p.type) == ("key-auth", 2500, "auth")

    def test_missing(self) -> None:
        conf = conf_of(self.p, {})
        resp = run(self.p.rewrite(conf, make_ctx(consumers=CONSUMERS)))
        assert resp[0] == 401
        assert body_json(resp) == {"message": "Missing API key in request"}
        assert resp_headers(resp)["www-authenticate"] == 'apikey realm="key"'

    def test_invalid_does_not_leak(self) -> None:
        conf = conf_of(self.p, {})
        ctx = make_ctx(headers={"apikey": "wrong-key-123"}, consumers=CONSUMERS)
        resp = run(self.p.rewrite(conf, ctx))
        assert resp[0] == 401
        assert body_json(resp) == {"message": "Invalid API key in request"}
        assert "wrong-key-123" not in json.dumps(body_json(resp))
        assert ctx.consumer is None

    def test_header_ok(self) -> None:
        conf = conf_of(self.p, {})
        ctx = make_ctx(headers={"apikey": "secret-key"}, consumers=CONSUMERS)
        assert run(self.p.rewrite(conf, ctx)) is None
        assert ctx.consumer_name == "jack"
        assert ctx.headers.get("X-Consumer-Username") == "jack"
        assert ctx.headers.get("apikey") == "secret-key"

    def test_query_ok_and_hidden(self) -> None:
        conf = conf_of(self.p, {"query": "k", "hide_credentials": True})
        ctx = make_ctx(query="a=1&k=secret-key&b=2", consumers=CONSUMERS)
        assert run(self.p.rewrite(conf, ctx)) is None
        assert ctx.consumer_name == "jack"
        assert ctx.query == "a=1&b=2"

    def test_custom_header_hidden(self) -> None:
        conf = conf_of(self.p, {"header": "X-Key", "hide_credentials": True})
        ctx = make_ctx(headers={"X-Key": "secret-key"}, consumers=CONSUMERS)
        assert run(self.p.rewrite(conf, ctx)) is None
        assert ctx.headers.get("X-Key") is None

    def test_anonymous_consumer(self) -> None:
        conf = conf_of(self.p, {"anonymous_consumer": "anon"})
        ctx = make_ctx(consumers=CONSUMERS)
        assert run(self.p.rewrite(conf, ctx)) is None
        assert ctx.consumer_name == "anon"
        conf = conf_of(self.p, {"anonymous_consumer": "nobody"})
        resp = run(self.p.rewrite(conf, make_ctx(consumers=CONSUMERS)))
        assert resp[0] == 401 and body_json(resp) == {"message": "Invalid user authorization"}

    def test_schema(self) -> None:
        conf = conf_of(self.p, {})
        assert (conf["header"], conf["query"], conf["hide_credentials"]) == (
            "apikey",
            "apikey",
            False,
        )
        conf_of(self.p, {"key": "abc"}, "consumer")
        assert conf_error(self.p, {}, "consumer") == 'property "key" is required'
        assert "validation failed" in conf_error(self.p, {"realm": 'a"b'})


# -- basic-auth ------------------------------------------------------------------------------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class TestBasicAuth:
    p = BasicAuth()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority, self.p.type) == ("basic-auth", 2520, "auth")

    def test_missing(self) -> None:
        resp = run(self.p.rewrite(conf_of(self.p, {}), make_ctx(consumers=CONSUMERS)))
        assert resp[0] == 401
        assert body_json(resp) == {"message": "Missing authorization in request"}
        assert resp_headers(resp)["www-authenticate"] == 'Basic realm="basic"'

    def test_bad_format(self) -> None:
        for value in ("Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
            ctx = make_ctx(headers={"Authorization": value}, consumers=CONSUMERS)
            resp = run(self.p.rewrite(conf_of(self.p, {}), ctx))
            assert body_json(resp) == {"message": "Invalid authorization in request"}

    def test_wrong_user_or_password(self) -> None:
        for user, pw in (("nobody", "x"), ("jack", "wrong-pass")):
            ctx = make_ctx(headers={"Authorization": _basic(user, pw)}, consumers=CONSUMERS)
            resp = run(self.p.rewrite(conf_of(self.p, {}), ctx))
            assert resp[0] == 401
            assert body_json(resp) == {"message": "Invalid user authorization"}
            assert "wrong-pass" not in json.dumps(body_json(resp))

    def test_padding_is_optional(self) -> None:
        # nginx's decode_base64 accepts a value without its "=" padding
        value = _basic("jack", "p@ss:word").rstrip("=")
        assert not value.endswith("=") and len(value.split()[1]) % 4
        ctx = make_ctx(headers={"Authorization": value}, consumers=CONSUMERS)
        assert run(self.p.rewrite(conf_of(self.p, {}), ctx)) is None
        assert ctx.consumer_name == "jack"

    def test_ok_and_hide(self) -> None:
        ctx = make_ctx(headers={"Authorization": _basic("jack", "p@ss:word")}, consumers=CONSUMERS)
        assert run(self.p.rewrite(conf_of(self.p, {"hide_credentials": True}), ctx)) is None
        assert ctx.consumer_name == "jack"
        assert ctx.headers.get("Authorization") is None
        assert ctx.headers.get("X-Consumer-Username") == "jack"

    def test_ok_kept(self) -> None:
        value = _basic("jack", "p@ss:word")
        ctx = make_ctx(headers={"Authorization": value}, consumers=CONSUMERS)
        assert run(self.p.rewrite(conf_of(self.p, {}), ctx)) is None
        assert ctx.headers.get("Authorization") == value

    def test_schema(self) -> None:
        conf_of(self.p, {"username": "a", "password": "b"}, "consumer")
        assert conf_error(self.p, {"username": "a"}, "consumer") == (
            'property "password" is required'
        )
        assert conf_of(self.p, {})["realm"] == "basic"


# -- consumer-restriction --------------------------------------------------------------------------


class TestConsumerRestriction:
    p = ConsumerRestriction()

    def test_meta(self) -> None:
        assert (self.p.name, self.p.priority) == ("consumer-restriction", 2400)

    def _ctx(self, name: str | None, **kw: Any) -> Any:
        ctx = make_ctx(consumers=CONSUMERS, **kw)
        if name is not None:
            ctx.attach_consumer(next(c for c in CONSUMERS if c["username"] == name))
        return ctx

    def test_whitelist(self) -> None:
        conf = conf_of(self.p, {"whitelist": ["jack"]})
        assert run(self.p.access(conf, self._ctx("jack"))) is None
        resp = run(self.p.access(conf, self._ctx("anon")))
        assert resp[0] == 403 and body_json(resp) == {"message": "The consumer_name is forbidden."}

    def test_blacklist_custom(self) -> None:
        conf = conf_of(
            self.p, {"blacklist": ["jack"], "rejected_code": 401, "rejected_msg": "nope"}
        )
        assert run(self.p.access(conf, self._ctx("anon"))) is None
        resp = run(self.p.access(conf, self._ctx("jack")))
        assert resp[0] == 401 and body_json(resp) == {"message": "nope"}

    def test_no_consumer(self) -> None:
        conf = conf_of(self.p, {"whitelist": ["jack"]})
        resp = run(self.p.access(conf, self._ctx(None)))
        assert resp[0] == 401
        assert body_json(resp) == {
            "message": "The request is rejected, please check the consumer_name for this request"
        }

    def test_allowed_by_methods(self) -> None:
        conf = conf_of(self.p, {"allowed_by_methods": [{"user": "jack", "methods": ["GET"]}]})
        assert run(self.p.access(conf, self._ctx("jack", method="GET"))) is None
        assert run(self.p.access(conf, self._ctx("jack", method="POST")))[0] == 403
        assert run(self.p.access(conf, self._ctx("anon", method="POST"))) is None

    def test_route_and_group(self) -> None:
        conf = conf_of(self.p, {"type": "route_id", "whitelist": ["r1"]})
        assert run(self.p.access(conf, self._ctx(None, route_id="r1"))) is None
        resp = run(self.p.access(conf, self._ctx(None, route_id="r2")))
        assert body_json(resp) == {"message": "The route_id is forbidden."}
        conf = conf_of(self.p, {"type": "consumer_group_id", "blacklist": ["g1"]})
        assert run(self.p.access(conf, self._ctx("jack")))[0] == 403

    def test_schema(self) -> None:
        assert conf_error(self.p, {}).startswith("object matches none of the required")
        assert "validation failed" in conf_error(self.p, {"whitelist": ["a"], "type": "x"})
        assert "validation failed" in conf_error(
            self.p, {"allowed_by_methods": [{"user": "a", "methods": ["FOO"]}]}
        )


# -- serverless ------------------------------------------------------------------------------------

HANDLER_EXIT = """
def handler(conf, ctx):
    if ctx.headers.get("x-block"):
        return 403, {"message": "blocked by " + ctx.plugin_name}
    ctx.state["seen"] = True
"""


class TestServerless:
    pre = ServerlessPreFunction()
    post = ServerlessPostFunction()

    def test_meta(self) -> None:
        assert (self.pre.name, self.pre.priority) == ("serverless-pre-function", 10000)
        assert (self.post.name, self.post.priority) == ("serverless-post-function", -2000)

    def test_access_default_phase(self) -> None:
        conf = conf_of(self.pre, {"functions": [HANDLER_EXIT]})
        assert conf["phase"] == "access"
        ctx = make_ctx()
        assert run(self.pre.rewrite(conf, ctx)) is None
        assert "seen" not in ctx.state
        assert run(self.pre.access(conf, ctx)) is None
        assert ctx.state["seen"] is True
        resp = run(self.pre.access(conf, make_ctx(headers={"X-Block": "1"})))
        assert resp[0] == 403

    def test_rewrite_phase_and_order(self) -> None:
        first = "def handler(conf, ctx):\n    ctx.state.setdefault('order', []).append(1)\n"
        second = "async def handler(conf, ctx):\n    ctx.state['order'].append(2)\n    return 418\n"
        third = "def handler(conf, ctx):\n    ctx.state['order'].append(3)\n"
        conf = conf_of(self.post, {"phase": "rewrite", "functions": [first, second, third]})
        ctx = make_ctx()
        assert run(self.post.rewrite(conf, ctx)) == (418, "")
        assert ctx.state["order"] == [1, 2]

    def test_header_and_body_filter(self) -> None:
        hf = "def handler(conf, ctx):\n    ctx.response_headers['X-Fn'] = 'yes'\n"
        conf = conf_of(self.pre, {"phase": "header_filter", "functions": [hf]})
        ctx = make_ctx()
        run(self.pre.header_filter(conf, ctx))
        assert ctx.response_headers["X-Fn"] == "yes"
        bf = "def handler(conf, ctx, chunk, eof):\n    return chunk.upper()\n"
        conf = conf_of(self.pre, {"phase": "body_filter", "functions": [bf]})
        assert run(self.pre.body_filter(conf, make_ctx(), b"abc", True)) == b"ABC"

    def test_check_errors(self) -> None:
        assert conf_error(self.pre, {"functions": ["def handler(:"]}).startswith(
            "failed to compile"
        )
        assert "handler" in conf_error(self.pre, {"functions": ["x = 1"]})
        assert "error while loading" in conf_error(self.pre, {"functions": ["1/0"]})
        assert "async" in conf_error(
            self.pre, {"phase": "log", "functions": ["async def handler(conf, ctx):\n    pass\n"]}
        )
        assert "validation failed" in conf_error(self.pre, {"functions": []})
        assert "validation failed" in conf_error(self.pre, {"phase": "x", "functions": ["x"]})
