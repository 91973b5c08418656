"""Python plugins run in-process by the native data plane, through real sockets."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, ClassVar

import pytest
from conftest import raw, request, route
from pygateway import ConfigError, Gateway
from pygateway.ctx import RequestBodyTooLarge
from pygateway.pipeline import nginx_page
from pygateway.plugin import Plugin

CALLS: list[str] = []


class Recorder(Plugin):
    """Records every phase it runs and leaves marks on the request and the response."""

    name = "test-recorder"
    priority = 50
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"stop_in": {"type": "string"}, "tag": {"type": "string"}},
    }

    def rewrite(self, conf: dict[str, Any], ctx: Any) -> Any:
        CALLS.append("rewrite")
        ctx.state["seen"] = ["rewrite"]
        if conf.get("stop_in") == "rewrite":
            return 418, {"stopped": "rewrite"}
        return None

    def access(self, conf: dict[str, Any], ctx: Any) -> Any:
        CALLS.append("access")
        ctx.state["seen"].append("access")
        ctx.set_header("X-From-Plugin", conf.get("tag", "yes"))
        ctx.remove_header("X-Secret")
        if conf.get("stop_in") == "access":
            return 403, "no", {"X-Why": "access"}
        return None

    def before_proxy(self, conf: dict[str, Any], ctx: Any) -> Any:
        CALLS.append("before_proxy")
        if conf.get("stop_in") == "before_proxy":
            return (503, None)
        return None

    def header_filter(self, conf: dict[str, Any], ctx: Any) -> None:
        CALLS.append("header_filter")
        ctx.response_headers["X-Seen"] = ",".join(ctx.state["seen"])
        ctx.response_headers["X-Upstream-Status"] = str(ctx.status)

    def log(self, conf: dict[str, Any], ctx: Any) -> None:
        CALLS.append(f"log:{ctx.status}")


class Boom(Plugin):
    name = "test-boom"
    priority = 40

    def access(self, conf: dict[str, Any], ctx: Any) -> Any:
        raise RuntimeError("plugin bug")


class Slow(Plugin):
    name = "test-slow"
    priority = 30
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"seconds": {"type": "number"}},
    }

    async def access(self, conf: dict[str, Any], ctx: Any) -> Any:
        await asyncio.sleep(conf.get("seconds", 0.5))
        ctx.set_header("X-Slept", "1")
        return None


class BodyReader(Plugin):
    """Reads the client body in access (sync or async) and reports its size upstream."""

    name = "test-body"
    priority = 20
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"reject": {"type": "string"}},
    }

    def access(self, conf: dict[str, Any], ctx: Any) -> Any:
        body = ctx.body()
        if conf.get("reject") and conf["reject"].encode() in body:
            return 400, {"error_msg": "rejected body"}
        ctx.set_header("X-Body-Size", str(len(body)))
        return None


class BodyRetry(Plugin):
    """Reads the body under a small limit (too large, twice), then under the default one."""

    name = "test-body-retry"
    priority = 21

    def access(self, conf: dict[str, Any], ctx: Any) -> Any:
        ctx.client_max_body_size = 100
        refused = 0
        for _ in range(2):
            try:
                ctx.body()
            except RequestBodyTooLarge:
                refused += 1
        ctx.client_max_body_size = 1024 * 1024
        ctx.set_header("X-Refused", str(refused))
        ctx.set_header("X-Body-Size", str(len(ctx.body())))
        return None


class AsyncBodyReader(Plugin):
    name = "test-body-async"
    priority = 19

    async def access(self, conf: dict[str, Any], ctx: Any) -> Any:
        body = await ctx.body_async()
        ctx.set_header("X-Async-Body-Size", str(len(body)))
        return None


class NumberHostAsync(Plugin):
    """An async access phase that sets the upstream host to a number (Lua would coerce it
    to a string), with a log phase that keeps the request's plugin run alive."""

    name = "test-number-host"
    priority = 17

    async def access(self, conf: dict[str, Any], ctx: Any) -> None:
        ctx.host = 123

    def log(self, conf: dict[str, Any], ctx: Any) -> None:
        pass


class Shout(Plugin):
    """Upper-cases the response body chunk by chunk and appends a marker at the end."""

    name = "test-shout"
    priority = 18

    def body_filter(self, conf: dict[str, Any], ctx: Any, chunk: bytes, eof: bool) -> bytes:
        out = chunk.upper()
        return out + b"<END>" if eof else out


@pytest.fixture
def plugin_gateway(origin, engine):
    made: list[Gateway] = []

    def make(routes: list[dict[str, Any]], **node: Any) -> Gateway:
        node.setdefault("listen", ["127.0.0.1:0"])
        node.setdefault("workers", 2)
        gw = Gateway(config={"routes": routes}, engine=engine, **node)
        for cls in (
            Recorder,
            Boom,
            Slow,
            BodyReader,
            BodyRetry,
            AsyncBodyReader,
            NumberHostAsync,
            Shout,
        ):
            gw.register_plugin(cls)
        made.append(gw.start())
        return gw

    CALLS.clear()
    yield make
    for gw in made:
        gw.stop(0)


def test_phases_run_in_order_and_change_the_upstream_request(plugin_gateway, origin):
    gw = plugin_gateway([route("/*", origin.addr, plugins={"test-recorder": {"tag": "t1"}})])
    r = request(gw.url, "/x", headers={"X-Secret": "s"})
    assert r.status == 200
    sent = r.json()["headers"]
    assert sent["x-from-plugin"] == "t1"
    assert "x-secret" not in sent, "remove_header did not reach the upstream request"
    assert r.headers["x-seen"] == "rewrite,access"
    assert r.headers["x-upstream-status"] == "200"
    deadline = time.monotonic() + 2
    while "log:200" not in CALLS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert CALLS == ["rewrite", "access", "before_proxy", "header_filter", "log:200"]


@pytest.mark.parametrize(
    ("phase", "status", "body"),
    [
        ("rewrite", 418, b'{"stopped":"rewrite"}\n'),
        ("access", 403, b"no"),
        ("before_proxy", 503, nginx_page(503)),  # (503, None): nginx's page, as APISIX
    ],
)
def test_short_circuit_from_each_request_phase(plugin_gateway, origin, phase, status, body):
    gw = plugin_gateway([route("/*", origin.addr, plugins={"test-recorder": {"stop_in": phase}})])
    before = origin.requests
    r = request(gw.url, "/")
    assert (r.status, r.body) == (status, body)
    assert origin.requests == before, "a short-circuited request reached the upstream"
    if phase == "rewrite":
        assert r.headers["content-type"] == "application/json"
    if phase == "access":
        assert r.headers["x-why"] == "access"


def test_plugin_exception_is_500_and_gateway_keeps_serving(plugin_gateway, origin):
    gw = plugin_gateway(
        [
            route("/boom", origin.addr, plugins={"test-boom": {}}),
            route("/ok", origin.addr, plugins={"test-recorder": {}}),
        ]
    )
    r = request(gw.url, "/boom")
    assert r.status == 500
    assert b"plugin bug" not in r.body, "the exception text leaked to the client"
    assert request(gw.url, "/ok").status == 200


def test_a_host_set_to_a_number_is_sent_as_text(plugin_gateway, origin):
    gw = plugin_gateway([route("/n", origin.addr, plugins={"test-number-host": {}})])
    r = request(gw.url, "/n", timeout=5)
    assert r.status == 200
    assert r.json()["headers"]["host"] == "123"


def test_without_a_plugin_runner_plugin_routes_fail_at_once(plugin_gateway, origin, engine):
    if engine != "native":
        pytest.skip("the python engine runs plugins on its own loop, not a runner thread")
    gw = plugin_gateway(
        [
            route("/plain", origin.addr),
            route("/plugin", origin.addr, plugins={"test-recorder": {}}),
        ]
    )
    assert request(gw.url, "/plugin").status == 200
    assert gw._runner is not None
    gw._runner.stop()  # what a crashed runner thread leaves behind
    r = request(gw.url, "/plugin", timeout=5)
    assert r.status == 500, "a request waited for a runner that is gone"
    assert r.json() == {"error_msg": "internal error"}
    assert request(gw.url, "/plain").status == 200, "routes without plugins are unaffected"


def test_async_plugin_does_not_block_other_requests(plugin_gateway, origin):
    gw = plugin_gateway(
        [
            route("/slow", origin.addr, plugins={"test-slow": {"seconds": 1.0}}),
            route("/fast", origin.addr, plugins={"test-recorder": {}}),
        ]
    )
    result: dict[str, Any] = {}

    def slow() -> None:
        result["slow"] = request(gw.url, "/slow")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    for _ in range(5):
        assert request(gw.url, "/fast").status == 200
    fast_time = time.monotonic() - t0
    t.join(5)
    assert fast_time < 0.8, f"requests waited {fast_time:.2f}s behind an async plugin"
    assert result["slow"].status == 200
    assert result["slow"].json()["headers"]["x-slept"] == "1"


def test_async_plugin_timeout_is_504(plugin_gateway, origin):
    gw = plugin_gateway(
        [route("/*", origin.addr, plugins={"test-slow": {"seconds": 3}})], plugin_timeout=0.3
    )
    t0 = time.monotonic()
    assert request(gw.url, "/").status == 504
    assert time.monotonic() - t0 < 2


def test_node_plugin_list_is_a_canary_switch(plugin_gateway, origin):
    gw = plugin_gateway(
        [route("/*", origin.addr, plugins={"test-recorder": {}, "request-id": {}})],
        plugins=["request-id"],
    )
    r = request(gw.url, "/")
    assert "x-request-id" in r.headers
    assert "x-seen" not in r.headers, "a plugin not enabled on this node ran"


def test_debug_header_lists_plugin_phases(plugin_gateway, origin):
    gw = plugin_gateway(
        [route("/*", origin.addr, plugins={"test-recorder": {}, "request-id": {}})], debug=True
    )
    r = request(gw.url, "/")
    assert r.headers["apisix-plugins"] == (
        "request-id#rewrite, test-recorder#rewrite, test-recorder#access, "
        "test-recorder#before_proxy, request-id#header_filter, test-recorder#header_filter, "
        "test-recorder#log"
    )


def test_invalid_plugin_conf_is_refused_with_apisix_wording(origin):
    gw = Gateway(
        config={"routes": [route("/*", origin.addr, plugins={"ip-restriction": {"whitelist": 1}})]},
        listen=["127.0.0.1:0"],
    )
    with pytest.raises(ConfigError) as err:
        gw.start()
    assert "failed to check the configuration of plugin ip-restriction err:" in str(err.value)


def test_key_auth_with_consumers_and_hidden_credentials(origin, engine):
    config = {
        "consumers": [{"username": "jack", "plugins": {"key-auth": {"key": "k-123"}}}],
        "routes": [
            route("/*", origin.addr, plugins={"key-auth": {"hide_credentials": True}}),
        ],
    }
    with Gateway(config=config, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:
        assert request(gw.url, "/").status == 401
        bad = request(gw.url, "/", headers={"apikey": "nope"})
        assert bad.status == 401 and b"nope" not in bad.body
        ok = request(gw.url, "/", headers={"apikey": "k-123"})
        assert ok.status == 200
        sent = ok.json()["headers"]
        assert "apikey" not in sent, "hide_credentials leaked the key upstream"
        assert sent["x-consumer-username"] == "jack"


def test_routes_without_plugins_never_cross_into_python(plugin_gateway, origin):
    gw = plugin_gateway(
        [route("/plain", origin.addr), route("/p", origin.addr, plugins={"test-recorder": {}})]
    )
    for _ in range(5):
        assert request(gw.url, "/plain").status == 200
    assert CALLS == []


def test_debug_header_says_no_plugin_when_none_ran(plugin_gateway, origin):
    gw = plugin_gateway([route("/*", origin.addr)], debug=True)
    assert request(gw.url, "/").headers["apisix-plugins"] == "no plugin"


def test_plugins_cannot_change_message_framing(origin, engine):
    routes = [
        route(
            "/up",
            origin.addr,
            plugins={"proxy-rewrite": {"headers": {"set": {"Content-Length": "3"}}}},
        ),
        {
            "uri": "/mock",
            "plugins": {
                "mocking": {
                    "response_example": "forty-five bytes of mocked body, give or take.",
                    "response_headers": {"Content-Length": "1"},
                }
            },
        },
    ]
    with Gateway(config={"routes": routes}, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:
        r = request(gw.url, "/up", method="POST", body=b"GET /smuggled HTTP/1.1\r\n\r\n")
        assert r.status == 200
        assert r.json()["body"] == "GET /smuggled HTTP/1.1\r\n\r\n", "the body was cut short"
        assert origin.requests == 1, "a request was smuggled to the upstream"
        m = request(gw.url, "/mock")
        assert m.body == b"forty-five bytes of mocked body, give or take."
        assert m.headers["content-length"] == str(len(m.body))


def test_plugin_reads_the_body_and_the_upstream_still_gets_it(plugin_gateway, origin):
    gw = plugin_gateway([route("/*", origin.addr, plugins={"test-body": {"reject": "evil"}})])
    payload = b"x" * 70_000
    r = request(gw.url, "/", method="POST", body=payload)
    assert r.status == 200
    echo = r.json()
    assert echo["headers"]["x-body-size"] == str(len(payload))
    assert echo["body"].encode() == payload, "the body read by the plugin did not go upstream"
    bad = request(gw.url, "/", method="POST", body=b"some evil content")
    assert bad.status == 400
    # a chunked upload, read whole by the plugin, still reaches the upstream whole
    import http.client
    import json

    host, _, port = gw.addresses[0].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/", body=iter([b"ab", b"cd", b"ef"]), encode_chunked=True)
    got = json.loads(conn.getresponse().read())
    conn.close()
    assert got["body"] == "abcdef" and got["headers"]["x-body-size"] == "6"
    assert request(gw.url, "/", method="GET").json()["headers"]["x-body-size"] == "0"


def test_body_over_the_plugin_limit_is_413(plugin_gateway, origin):
    gw = plugin_gateway([route("/*", origin.addr, plugins={"test-body": {}})])
    r = request(gw.url, "/", method="POST", body=b"y" * (1024 * 1024 + 1))
    assert r.status == 413


def test_body_too_large_for_a_plugin_stays_whole(plugin_gateway, origin):
    """A body over a plugin's limit stays too large for every read under that limit, is read
    whole under a larger one, and reaches the upstream whole (nothing read is lost)."""
    gw = plugin_gateway([route("/*", origin.addr, plugins={"test-body-retry": {}})])
    payload = bytes(range(256)) * 300  # 76,800 bytes: many frames, over the first limit
    r = request(gw.url, "/", method="POST", body=payload)
    assert r.status == 200
    sent = r.json()
    assert sent["headers"]["x-refused"] == "2"
    assert sent["headers"]["x-body-size"] == str(len(payload))
    assert sent["body"].encode("latin-1") == payload


def test_async_plugin_reads_the_body(plugin_gateway, origin):
    gw = plugin_gateway([route("/*", origin.addr, plugins={"test-body-async": {}})])
    r = request(gw.url, "/", method="PUT", body=b"z" * 5000)
    assert r.status == 200
    assert r.json()["headers"]["x-async-body-size"] == "5000"
    assert len(r.json()["body"]) == 5000


def test_body_filter_rewrites_the_streamed_response(plugin_gateway, origin):
    gw = plugin_gateway(
        [
            route("/stream/*", origin.addr, plugins={"test-shout": {}}),
            route(
                "/rr",
                origin.addr,
                plugins={"response-rewrite": {"body": "replaced", "status_code": 201}},
            ),
        ]
    )
    r = request(gw.url, "/stream/3")
    assert r.body == b"CHUNK 0\nCHUNK 1\nCHUNK 2\n<END>"
    rr = request(gw.url, "/rr")
    assert (rr.status, rr.body) == (201, b"replaced")
    for _ in range(3):  # keep-alive and pooled connections stay in step
        assert request(gw.url, "/stream/1").body == b"CHUNK 0\n<END>"


def test_response_rewrite_vars_see_the_response_status(plugin_gateway, origin):
    """APISIX's own example: ``vars: [["status", "==", 200]]`` (nginx's $status)."""
    rewrite = {"body": "rewritten", "headers": {"set": {"X-St": "$status"}}}
    gw = plugin_gateway(
        [
            route(
                "/ok",
                origin.addr,
                plugins={"response-rewrite": {**rewrite, "vars": [["status", "==", 200]]}},
            ),
            route(
                "/no",
                origin.addr,
                plugins={"response-rewrite": {**rewrite, "vars": [["status", "==", 404]]}},
            ),
        ]
    )
    ok = request(gw.url, "/ok")
    assert (ok.status, ok.body, ok.headers.get("x-st")) == (200, b"rewritten", "200")
    no = request(gw.url, "/no")
    assert no.status == 200 and no.body != b"rewritten" and "x-st" not in no.headers


def test_response_phases_run_on_a_plugin_answer(origin, engine):
    # key-auth answers 401 in rewrite; cors still adds its headers in header_filter (APISIX)
    routes = [
        route(
            "/*",
            origin.addr,
            plugins={"key-auth": {}, "cors": {"allow_origins": "http://a.test"}},
        )
    ]
    with Gateway(config={"routes": routes}, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:
        r = request(gw.url, "/", headers={"Origin": "http://a.test"})
        assert r.status == 401
        assert r.headers.get("access-control-allow-origin") == "http://a.test"


@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_proto_counts_only_from_trusted_proxies(origin, engine, trusted):
    """redirect's http_to_https: a client's own X-Forwarded-Proto does not make a plain http
    request https (APISIX overwrites it unless the peer is in trusted_addresses)."""
    routes = [route("/*", origin.addr, plugins={"redirect": {"http_to_https": True}})]
    node: dict[str, Any] = {"trusted_addresses": ["127.0.0.0/8"]} if trusted else {}
    with Gateway(
        config={"routes": routes}, listen=["127.0.0.1:0"], workers=1, engine=engine, **node
    ) as gw:
        r = request(gw.url, "/x", headers={"X-Forwarded-Proto": "https"})
        if trusted:
            assert r.status == 200  # a trusted proxy says the client came over https
        else:
            assert r.status == 301 and r.headers["location"].startswith("https://")
        plain = request(gw.url, "/x")
        assert plain.status == 301
        # no body configured: nginx's page, as APISIX's exit(code)
        assert plain.body == nginx_page(301) and plain.headers["content-type"] == "text/html"


def test_regex_uri_keeps_an_encoded_question_mark_in_the_path(origin, engine):
    """proxy-rewrite regex_uri: a %3F of the client's path stays in the path (APISIX); it
    must not become a query separator the client chose."""
    plugins = {"proxy-rewrite": {"regex_uri": ["^/pr1/(.*)", "/x/$1"]}}
    routes = [route("/pr1/*", origin.addr, plugins=plugins)]
    with Gateway(config={"routes": routes}, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:
        r = request(gw.url, "/pr1/foo%3Fbar?a=1")
        assert r.status == 200
        assert r.json()["path"] == "/x/foo%3Fbar?a=1"
        plain = request(gw.url, "/pr1/foo?a=1")
        assert plain.json()["path"] == "/x/foo?a=1"


def test_non_ascii_header_bytes_are_the_same_on_both_engines(origin, engine):
    """UTF-8 in headers: plugins read it as text (proxy-rewrite escapes its bytes into the
    uri, as APISIX), a value a plugin sets goes upstream as UTF-8, and an upstream's
    response header is relayed byte for byte."""
    plugins = {"proxy-rewrite": {"uri": "/v/$http_y", "headers": {"set": {"X-Set": "é€"}}}}
    routes = [route("/u8", origin.addr, plugins=plugins)]
    with Gateway(config={"routes": routes}, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:
        reply = raw(
            gw.url,
            b"GET /u8 HTTP/1.1\r\nHost: a\r\nY: \xc3\xa9\r\nX-Echo: \xc3\xa9t\xc3\xa9\r\n"
            b"Connection: close\r\n\r\n",
        )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"\r\nx-echo: \xc3\xa9t\xc3\xa9" in head.lower(), head
    echo = json.loads(body)
    assert echo["path"] == "/v/%C3%A9"
    assert echo["headers"]["x-set"].encode("latin-1") == "é€".encode()


def test_response_rewrite_adds_separate_header_lines(origin, engine):
    """headers.add emits a line per value (nginx add_header): two cookies stay two."""
    import http.client

    add = ["Set-Cookie: a=1", "Set-Cookie: b=2"]
    plugins = {"response-rewrite": {"headers": {"add": add}}}
    routes = [route("/*", origin.addr, plugins=plugins)]
    with Gateway(config={"routes": routes}, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:
        host, _, port = gw.addresses[0].rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/x")
        resp = conn.getresponse()
        resp.read()
        conn.close()
        cookies = [v for k, v in resp.getheaders() if k.lower() == "set-cookie"]
        assert cookies == ["a=1", "b=2"]


def test_plugin_arg_vars_are_nginx_args(origin, engine):
    """$arg_* in plugin vars is nginx's: any case, undecoded (as the router's vars)."""
    abort = {"http_status": 403, "body": "stop", "vars": [[["arg_a", "==", "1"]]]}
    routes = [route("/*", origin.addr, plugins={"fault-injection": {"abort": abort}})]
    with Gateway(config={"routes": routes}, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:
        assert request(gw.url, "/x?A=1").status == 403
        assert request(gw.url, "/x?a=%31").status == 200


def test_rewritten_host_leaves_x_forwarded_host_alone(origin, engine):
    """proxy-rewrite host sets the upstream Host only: X-Forwarded-Host stays the client's."""
    routes = [route("/*", origin.addr, plugins={"proxy-rewrite": {"host": "new.example.com"}})]
    with Gateway(config={"routes": routes}, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:
        sent = request(gw.url, "/x", headers={"Host": "client.test"}).json()["headers"]
        assert sent["host"] == "new.example.com"
        assert sent["x-forwarded-host"] == "client.test"


def test_uri_blocker_refuses_matching_request_uris(origin, engine):
    plugins = {"uri-blocker": {"block_rules": ["^/private", r"token=\w+"], "rejected_msg": "no"}}
    quiet = {"uri-blocker": {"block_rules": [r"\.PHP$"], "case_insensitive": True}}
    config = {
        "routes": [
            route("/*", origin.addr, plugins=plugins),
            route("/q/*", origin.addr, plugins=quiet),
        ]
    }
    with Gateway(config=config, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:
        assert request(gw.url, "/public").status == 200
        blocked = request(gw.url, "/private/x")
        assert blocked.status == 403 and blocked.json() == {"error_msg": "no"}
        assert request(gw.url, "/a?token=abc").status == 403  # the query is matched too
        assert request(gw.url, "/q/index.html").status == 200
        page = request(gw.url, "/q/index.php")
        assert page.status == 403 and b"403 Forbidden" in page.body
    with pytest.raises(ConfigError) as err:
        Gateway(
            config={
                "routes": [
                    route("/*", origin.addr, plugins={"uri-blocker": {"block_rules": ["("]}})
                ]
            },
            listen=["127.0.0.1:0"],
            engine=engine,
        ).start()
    assert "uri-blocker" in str(err.value)


def test_ua_restriction_allow_and_deny_lists(origin, engine):
    deny = {"ua-restriction": {"denylist": ["curl/", "(?i)bot"]}}
    allow = {"ua-restriction": {"allowlist": ["^Mozilla/"], "message": "browsers only"}}
    bypass = {"ua-restriction": {"denylist": ["curl/"], "bypass_missing": True}}
    config = {
        "routes": [
            route("/deny", origin.addr, plugins=deny),
            route("/allow", origin.addr, plugins=allow),
            route("/bypass", origin.addr, plugins=bypass),
        ]
    }
    with Gateway(config=config, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:

        def status(path: str, agent: str | None) -> tuple[int, Any]:
            r = request(gw.url, path, headers={"User-Agent": agent} if agent else {})
            return r.status, r.json().get("message") if r.status == 403 else None

        assert status("/deny", "Mozilla/5.0") == (200, None)
        assert status("/deny", "curl/8.0") == (403, "Not allowed")
        assert status("/deny", "SomeBOT 1.0") == (403, "Not allowed")
        assert status("/allow", "Mozilla/5.0") == (200, None)
        assert status("/allow", "curl/8.0") == (403, "browsers only")
        assert status("/bypass", "Mozilla/5.0") == (200, None)
        assert status("/deny", None) == (403, "Not allowed")  # no User-Agent
        assert status("/bypass", None) == (200, None)


def test_referer_restriction_by_host(origin, engine):
    white = {"referer-restriction": {"whitelist": ["ok.test", "*.good.test"]}}
    black = {"referer-restriction": {"blacklist": ["bad.test"], "bypass_missing": True}}
    config = {
        "routes": [
            route("/white", origin.addr, plugins=white),
            route("/black", origin.addr, plugins=black),
        ]
    }
    with Gateway(config=config, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:

        def status(path: str, referer: str | None) -> int:
            return request(gw.url, path, headers={"Referer": referer} if referer else {}).status

        assert status("/white", "http://ok.test/page") == 200
        assert status("/white", "https://a.good.test:8443/x") == 200
        assert status("/white", "http://evil.test/") == 403
        assert status("/white", None) == 403  # no Referer, no bypass
        assert status("/white", "not a url") == 403
        refused = request(gw.url, "/white", headers={"Referer": "http://evil.test/"})
        assert refused.json() == {"message": "Your referer host is not allowed"}
        assert status("/black", "http://bad.test/") == 403
        assert status("/black", "http://fine.test/") == 200
        assert status("/black", None) == 200  # bypass_missing


def test_request_validation_of_headers_and_bodies(origin, engine):
    body_schema = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string", "minLength": 2}, "age": {"type": "integer"}},
    }
    header_schema = {"type": "object", "required": ["X-Tenant"]}
    plugins = {"request-validation": {"body_schema": body_schema}}
    strict = {"request-validation": {"header_schema": header_schema, "rejected_msg": "denied"}}
    config = {
        "routes": [
            route("/body", origin.addr, plugins=plugins),
            route("/hdr", origin.addr, plugins=strict),
        ]
    }
    with Gateway(config=config, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:

        def post(path: str, body: bytes, **headers: str) -> Any:
            return request(gw.url, path, method="POST", body=body, headers=headers)

        ok = post("/body", b'{"name": "ann", "age": 3}')
        assert ok.status == 200 and ok.json()["body"] == '{"name": "ann", "age": 3}'
        missing = post("/body", b'{"age": 3}')
        assert missing.status == 400 and b'property "name" is required' in missing.body
        assert post("/body", b'{"name": "a"}').status == 400
        assert post("/body", b"{not json").status == 400
        # client bodies decode as cjson does (APISIX: up to 1000 levels); past what Python's
        # decoder can nest, a 400, not a 500
        deep = post("/body", b'{"name": "ann", "x": ' + b"[" * 900 + b"]" * 900 + b"}")
        assert deep.status == 200
        deeper = post("/body", b'{"name": "ann", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}")
        assert deeper.status == 400 and b"failed to decode the req body" in deeper.body
        form = post("/body", b"name=bob", **{"Content-Type": "application/x-www-form-urlencoded"})
        assert form.status == 200
        assert request(gw.url, "/hdr", headers={"x-tenant": "t1"}).status == 200  # any case
        refused = request(gw.url, "/hdr")
        assert refused.status == 400 and refused.body == b"denied"
