"""The plugin pipeline: order, _meta, global rules, short-circuits, errors, async, debug
header, consumer merge, body_filter; and SimpleCtx."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from pygateway.ctx import Headers, SimpleCtx
from pygateway.pipeline import Pipeline, PluginResponse, nginx_page, normalize_response
from pygateway.plugin import Plugin, PluginRegistry

Conf = dict[str, Any]


def recorder(name: str, priority: int, *phases: str, **extra: Any) -> type[Plugin]:
    """A plugin class appending ``name#phase`` to ``ctx.state["calls"]`` in each phase."""

    def make(phase: str) -> Any:
        if phase == "body_filter":

            def body_filter(self: Plugin, conf: Conf, ctx: Any, chunk: bytes, eof: bool) -> Any:
                ctx.state.setdefault("calls", []).append(f"{name}#{phase}")
                return None

            return body_filter

        def method(self: Plugin, conf: Conf, ctx: Any) -> Any:
            ctx.state.setdefault("calls", []).append(f"{name}#{phase}")
            stop = conf.get("stop")
            if stop == phase:
                return conf.get("status", 403), conf.get("body", {"message": name})
            return None

        return method

    attrs: dict[str, Any] = {"name": name, "priority": priority, **extra}
    for phase in phases:
        attrs[phase] = make(phase)
    return type(f"P_{name.replace('-', '_')}", (Plugin,), attrs)


ALL = ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")


def make_registry(*classes: type[Plugin]) -> PluginRegistry:
    reg = PluginRegistry()
    for cls in classes:
        reg.register(cls)
    return reg


def calls(ctx: SimpleCtx) -> list[str]:
    result: list[str] = ctx.state.get("calls", [])
    return result


@pytest.fixture
def reg() -> PluginRegistry:
    return make_registry(
        recorder("low", 10, *ALL),
        recorder("mid", 500, *ALL),
        recorder("high", 1000, *ALL),
    )


def run_all(pipe: Pipeline, ctx: SimpleCtx, route: Conf, rules: Any = ()) -> PluginResponse | None:
    run = pipe.start(ctx, route, rules)
    resp = run.run_phases()
    run.run_phase("header_filter")
    run.body_filter(b"x", True)
    run.run_phase("log")
    return resp


# -- order -------------------------------------------------------------------------------


def test_priority_order_every_phase(reg: PluginRegistry) -> None:
    ctx = SimpleCtx()
    route: Conf = {"low": {}, "high": {}, "mid": {}}
    assert run_all(Pipeline(reg), ctx, route) is None
    expected = []
    for phase in ALL:
        expected += [f"high#{phase}", f"mid#{phase}", f"low#{phase}"]
    assert calls(ctx) == expected


def test_meta_priority_overrides(reg: PluginRegistry) -> None:
    ctx = SimpleCtx()
    route: Conf = {
        "low": {"_meta": {"priority": 2000}},
        "high": {},
        "mid": {"_meta": {"priority": 1}},
    }
    run = Pipeline(reg).start(ctx, route)
    run.run_phase("access")
    assert calls(ctx) == ["low#access", "high#access", "mid#access"]


def test_meta_disable(reg: PluginRegistry) -> None:
    ctx = SimpleCtx()
    route: Conf = {"low": {}, "high": {"_meta": {"disable": True}}}
    Pipeline(reg).start(ctx, route).run_phase("access")
    assert calls(ctx) == ["low#access"]


def test_meta_filter_per_request(reg: PluginRegistry) -> None:
    pipe = Pipeline(reg)
    route: Conf = {"high": {"_meta": {"filter": [["arg_version", "==", "v2"]]}}, "low": {}}
    hit = SimpleCtx(query="version=v2")
    pipe.start(hit, route).run_phase("access")
    miss = SimpleCtx(query="version=v1")
    pipe.start(miss, route).run_phase("access")
    assert calls(hit) == ["high#access", "low#access"]
    assert calls(miss) == ["low#access"]


def test_meta_filter_on_headers_and_ip(reg: PluginRegistry) -> None:
    pipe = Pipeline(reg)
    route: Conf = {
        "high": {
            "_meta": {
                "filter": [
                    "AND",
                    ["http_x_canary", "==", "yes"],
                    ["remote_addr", "ipmatch", ["10.0.0.0/8"]],
                ]
            }
        }
    }
    ctx = SimpleCtx(headers={"X-Canary": "yes"}, remote_addr="10.1.2.3")
    pipe.start(ctx, route).run_phase("access")
    other = SimpleCtx(headers={"X-Canary": "yes"}, remote_addr="192.168.1.1")
    pipe.start(other, route).run_phase("access")
    assert calls(ctx) == ["high#access"]
    assert calls(other) == []


def test_error_response_replaces_error_bodies() -> None:
    reg = make_registry(recorder("deny", 1, "access"))
    pipe = Pipeline(reg)
    route: Conf = {"deny": {"stop": "access", "status": 401, "_meta": {"error_response": "nope"}}}
    resp = pipe.start(SimpleCtx(), route).run_phase("access")
    assert resp is not None and (resp.status, resp.body) == (401, b"nope")
    assert resp.header("content-type") is None

    route = {"deny": {"stop": "access", "status": 429, "_meta": {"error_response": {"m": 1}}}}
    resp = pipe.start(SimpleCtx(), route).run_phase("access")
    assert resp is not None and resp.status == 429
    assert json.loads(resp.body) == {"m": 1}
    assert resp.header("Content-Type") == "application/json"

    # < 400: the plugin's own body
    route = {
        "deny": {"stop": "access", "status": 302, "body": "moved", "_meta": {"error_response": "x"}}
    }
    resp = pipe.start(SimpleCtx(), route).run_phase("access")
    assert resp is not None and (resp.status, resp.body) == (302, b"moved")


def test_enabled_list_canary(reg: PluginRegistry) -> None:
    ctx = SimpleCtx()
    route: Conf = {"low": {}, "mid": {}, "high": {}, "not-loaded": {}}
    pipe = Pipeline(reg, enabled=["low", "high", "not-loaded"])
    pipe.start(ctx, route).run_phase("access")
    assert calls(ctx) == ["high#access", "low#access"]
    pipe.enabled = ["mid"]
    ctx = SimpleCtx()
    pipe.start(ctx, route).run_phase("access")
    assert calls(ctx) == ["mid#access"]
    pipe.enabled = None
    ctx = SimpleCtx()
    pipe.start(ctx, route).run_phase("access")
    assert calls(ctx) == ["high#access", "mid#access", "low#access"]


# -- global rules --------------------------------------------------------------------------


def test_global_rules_run_first(reg: PluginRegistry) -> None:
    ctx = SimpleCtx()
    run = Pipeline(reg).start(ctx, {"high": {}}, [{"low": {}}])
    run.run_phases(("rewrite", "access"))
    assert calls(ctx) == ["low#rewrite", "high#rewrite", "low#access", "high#access"]


def test_global_rules_duplicate_names_dropped(
    reg: PluginRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = SimpleCtx()
    rules = [{"low": {}, "mid": {}}, {"low": {}}]
    with caplog.at_level(logging.ERROR):
        Pipeline(reg).start(ctx, {}, rules).run_phase("access")
    assert calls(ctx) == ["mid#access"]
    assert "Found low configured across different global rules" in caplog.text


def test_same_plugin_in_global_rule_and_route_runs_twice(reg: PluginRegistry) -> None:
    ctx = SimpleCtx()
    Pipeline(reg).start(ctx, {"low": {}}, [{"low": {}}]).run_phase("access")
    assert calls(ctx) == ["low#access", "low#access"]


def test_prefer_route_skips_global_instance() -> None:
    reg = make_registry(recorder("pref", 5, "access", run_policy="prefer_route"))
    ctx = SimpleCtx()
    Pipeline(reg).start(ctx, {"pref": {}}, [{"pref": {}}]).run_phase("access")
    assert calls(ctx) == ["pref#access"]
    ctx = SimpleCtx()  # disabled on the route: the global instance runs
    Pipeline(reg).start(ctx, {"pref": {"_meta": {"disable": True}}}, [{"pref": {}}]).run_phase(
        "access"
    )
    assert calls(ctx) == ["pref#access"]
    ctx = SimpleCtx()
    Pipeline(reg).start(ctx, {}, [{"pref": {}}]).run_phase("access")
    assert calls(ctx) == ["pref#access"]


def test_global_short_circuit_stops_route(reg: PluginRegistry) -> None:
    ctx = SimpleCtx()
    run = Pipeline(reg).start(ctx, {"high": {}}, [{"low": {"stop": "rewrite"}}])
    resp = run.run_phases()
    assert resp is not None and resp.status == 403 and resp.plugin == "low"
    assert calls(ctx) == ["low#rewrite"]


def test_no_route_global_rules_still_run(reg: PluginRegistry) -> None:
    ctx = SimpleCtx()
    Pipeline(reg).start(ctx, None, [{"mid": {}}]).run_phases(("rewrite", "access"))
    assert calls(ctx) == ["mid#rewrite", "mid#access"]


# -- short-circuit ---------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["rewrite", "access", "before_proxy"])
def test_short_circuit_stops_later_plugins(reg: PluginRegistry, phase: str) -> None:
    ctx = SimpleCtx()
    route: Conf = {"high": {}, "mid": {"stop": phase, "status": 401}, "low": {}}
    run = Pipeline(reg).start(ctx, route)
    resp = run.run_phases()
    assert resp is not None
    assert (resp.status, resp.plugin, resp.phase) == (401, "mid", phase)
    assert json.loads(resp.body) == {"message": "mid"}
    assert resp.body.endswith(b"\n")
    assert resp.header("content-type") == "application/json"
    got = calls(ctx)
    assert got[-2:] == [f"high#{phase}", f"mid#{phase}"]
    later = ALL[ALL.index(phase) + 1 : 3]
    assert not any(c.endswith(f"#{p}") for c in got for p in later)
    assert f"low#{phase}" not in got
    # the response sticks: running a request phase again changes nothing
    assert run.run_phase("access") is resp
    # header_filter and log still run
    run.run_phase("header_filter")
    run.run_phase("log")
    assert calls(ctx)[-6:] == [
        "high#header_filter",
        "mid#header_filter",
        "low#header_filter",
        "high#log",
        "mid#log",
        "low#log",
    ]


class Responder(Plugin):
    name = "responder"
    priority = 1

    def access(self, conf: Conf, ctx: Any) -> Any:
        return conf["value"]


@pytest.mark.parametrize(
    ("value", "status", "body", "headers"),
    [
        ((200, "text"), 200, b"text", []),
        ((201, b"raw"), 201, b"raw", []),
        ((200, {"a": 1}), 200, b'{"a":1}\n', [("Content-Type", "application/json")]),
        ((200, [1, "é"]), 200, '[1,"é"]\n'.encode(), [("Content-Type", "application/json")]),
        (
            (200, {"a": 1}, {"Content-Type": "application/x"}),
            200,
            b'{"a":1}\n',
            [("Content-Type", "application/x")],
        ),
        # a bare status of 300 or more: nginx's page (APISIX exit(code) → ngx.exit)
        (
            (404, None, [("X-A", "1"), ("X-A", "2")]),
            404,
            nginx_page(404),
            [("X-A", "1"), ("X-A", "2"), ("Content-Type", "text/html")],
        ),
        (
            (204, None, {"X-List": ["a", "b"], "X-None": None}),
            204,
            b"",
            [("X-List", "a"), ("X-List", "b")],
        ),
        (503, 503, nginx_page(503), [("Content-Type", "text/html")]),
        ((404, ""), 404, b"", []),  # an empty body is a body
        ((None, "ignored"), None, None, None),
    ],
)
def test_response_normalisation(value: Any, status: Any, body: Any, headers: Any) -> None:
    reg = make_registry(Responder)
    resp = Pipeline(reg).start(SimpleCtx(), {"responder": {"value": value}}).run_phase("access")
    if status is None:
        assert resp is None
        return
    assert resp is not None
    assert (resp.status, resp.body, resp.headers) == (status, body, headers)


@pytest.mark.parametrize("value", ["oops", (1, 2, 3, 4), (999, "x"), ("200", "x"), (True, "x")])
def test_bad_return_value_is_500(value: Any) -> None:
    reg = make_registry(Responder)
    resp = Pipeline(reg).start(SimpleCtx(), {"responder": {"value": value}}).run_phase("access")
    assert resp is not None and resp.status == 500


def test_normalize_response_direct() -> None:
    assert normalize_response(None) is None
    resp = normalize_response((500, {"x": 1}), error_response="sorry")
    assert resp is not None and resp.body == b"sorry"


# -- errors ----------------------------------------------------------------------------------


class Boom(Plugin):
    name = "boom"
    priority = 50

    def access(self, conf: Conf, ctx: Any) -> Any:
        if ctx.headers.get("x-boom"):
            raise ValueError("kaboom")
        ctx.state["boom"] = "ok"
        return None

    def header_filter(self, conf: Conf, ctx: Any) -> None:
        raise RuntimeError("header trouble")

    def log(self, conf: Conf, ctx: Any) -> None:
        raise RuntimeError("log trouble")

    def body_filter(self, conf: Conf, ctx: Any, chunk: bytes, eof: bool) -> bytes:
        raise RuntimeError("body trouble")


def test_exception_is_500_and_later_requests_fine(caplog: pytest.LogCaptureFixture) -> None:
    reg = make_registry(Boom, recorder("low", 1, "access", "header_filter", "log"))
    pipe = Pipeline(reg)
    route: Conf = {"boom": {}, "low": {}}
    ctx = SimpleCtx(headers={"X-Boom": "1"})
    with caplog.at_level(logging.ERROR, logger="pygateway.plugins.boom"):
        resp = pipe.start(ctx, route).run_phase("access")
    assert resp is not None and resp.status == 500
    assert json.loads(resp.body) == {"error_msg": "internal error"}
    assert calls(ctx) == []  # low never ran
    record = next(r for r in caplog.records if r.name == "pygateway.plugins.boom")
    assert record.exc_info is not None and "kaboom" in caplog.text

    ok = SimpleCtx()
    run = pipe.start(ok, route)
    assert run.run_phase("access") is None
    assert ok.state["boom"] == "ok"
    # errors after the request phases are logged; the other plugins still run
    assert run.run_phase("header_filter") is None
    assert run.body_filter(b"data", True) == b"data"
    assert run.run_phase("log") is None
    assert calls(ok) == ["low#access", "low#header_filter", "low#log"]


def test_request_body_too_large_is_413() -> None:
    class Reader(Plugin):
        name = "reader"
        priority = 1

        def access(self, conf: Conf, ctx: Any) -> Any:
            ctx.body()
            return None

    reg = make_registry(Reader)
    ctx = SimpleCtx(body=b"x" * 100, client_max_body_size=10)
    resp = Pipeline(reg).start(ctx, {"reader": {}}).run_phase("access")
    assert resp is not None and resp.status == 413


# -- async -----------------------------------------------------------------------------------


class AsyncPlugin(Plugin):
    name = "async-plugin"
    priority = 100

    async def access(self, conf: Conf, ctx: Any) -> Any:
        await asyncio.sleep(conf.get("sleep", 0))
        ctx.state.setdefault("calls", []).append("async-plugin#access")
        if conf.get("deny"):
            return 403, {"error": "denied"}
        return None

    async def body_filter(self, conf: Conf, ctx: Any, chunk: bytes, eof: bool) -> bytes:
        await asyncio.sleep(0)
        return chunk.upper()


def test_async_phases() -> None:
    reg = make_registry(AsyncPlugin, recorder("low", 1, "access"))
    pipe = Pipeline(reg)
    ctx = SimpleCtx()

    async def main() -> Any:
        run = pipe.start(ctx, {"async-plugin": {}, "low": {}})
        assert run.plan.has_async("access")
        resp = await run.run_phases_async()
        return resp, await run.body_filter_async(b"abc", True)

    resp, chunk = asyncio.run(main())
    assert resp is None and chunk == b"ABC"
    assert calls(ctx) == ["async-plugin#access", "low#access"]

    ctx = SimpleCtx()
    resp = asyncio.run(pipe.start(ctx, {"async-plugin": {"deny": True}}).run_phase_async("access"))
    assert resp is not None and resp.status == 403


def test_async_timeout_is_504() -> None:
    reg = make_registry(AsyncPlugin, recorder("low", 1, "access"))
    pipe = Pipeline(reg, plugin_timeout=0.05)
    ctx = SimpleCtx()
    route: Conf = {"async-plugin": {"sleep": 5}, "low": {}}
    resp = asyncio.run(pipe.start(ctx, route).run_phase_async("access"))
    assert resp is not None and resp.status == 504
    assert calls(ctx) == []
    # the sync runner applies the same timeout
    resp = pipe.start(SimpleCtx(), route).run_phase("access")
    assert resp is not None and resp.status == 504


def test_sync_run_phase_runs_async_methods() -> None:
    reg = make_registry(AsyncPlugin)
    pipe = Pipeline(reg)
    ctx = SimpleCtx()
    run = pipe.start(ctx, {"async-plugin": {}})
    assert run.run_phase("access") is None
    assert run.body_filter(b"q", False) == b"Q"
    assert calls(ctx) == ["async-plugin#access"]

    async def inside_loop() -> Any:
        return pipe.start(SimpleCtx(), {"async-plugin": {}}).run_phase("access")

    resp = asyncio.run(inside_loop())  # cannot block inside a running loop: 500, logged
    assert resp is not None and resp.status == 500


def test_async_sync_mix_and_exceptions_in_async() -> None:
    class AsyncBoom(Plugin):
        name = "async-boom"
        priority = 9

        async def rewrite(self, conf: Conf, ctx: Any) -> Any:
            raise KeyError("x")

    reg = make_registry(AsyncBoom)
    resp = asyncio.run(
        Pipeline(reg).start(SimpleCtx(), {"async-boom": {}}).run_phase_async("rewrite")
    )
    assert resp is not None and resp.status == 500


# -- debug header ----------------------------------------------------------------------------


def test_debug_header(reg: PluginRegistry) -> None:
    pipe = Pipeline(reg)
    run = pipe.start(SimpleCtx(), {})
    run.run_phases()
    run.run_phase("header_filter")
    assert run.debug_header() == "no plugin"

    reg2 = make_registry(
        recorder("limit-conn", 1003, "access", "log"), recorder("limit-count", 1002, "access")
    )
    run = Pipeline(reg2).start(SimpleCtx(), {"limit-count": {}, "limit-conn": {}})
    run.run_phases()
    run.run_phase("header_filter")
    assert run.debug_header() == "limit-conn#access, limit-count#access, limit-conn#log"


def test_debug_header_skips_filtered_and_stops_at_short_circuit(reg: PluginRegistry) -> None:
    route: Conf = {
        "high": {"_meta": {"filter": [["arg_x", "==", "1"]]}},
        "mid": {"stop": "access"},
        "low": {},
    }
    run = Pipeline(reg).start(SimpleCtx(), route)
    run.run_phases()
    entries = run.debug_entries()
    assert entries[:4] == ["mid#rewrite", "low#rewrite", "mid#access", "mid#body_filter"]
    assert "high#access" not in entries


# -- consumer merge --------------------------------------------------------------------------


class KeyAuth(Plugin):
    name = "key-auth"
    priority = 2500
    type = "auth"

    def rewrite(self, conf: Conf, ctx: Any) -> Any:
        ctx.state.setdefault("calls", []).append("key-auth#rewrite")
        consumer = ctx.find_consumer("key-auth", "key", ctx.headers.get("apikey"))
        if consumer is None:
            return 401, {"message": "Invalid API key in request"}
        ctx.attach_consumer(consumer)
        return None


class Limit(Plugin):
    """Records which conf it saw in rewrite and access."""

    name = "limit"
    priority = 1000

    def rewrite(self, conf: Conf, ctx: Any) -> None:
        ctx.state.setdefault("calls", []).append(f"limit#rewrite:{conf['count']}")

    def access(self, conf: Conf, ctx: Any) -> None:
        ctx.state.setdefault("calls", []).append(f"limit#access:{conf['count']}")


class Tag(Plugin):
    name = "tag"
    priority = 10

    def rewrite(self, conf: Conf, ctx: Any) -> None:
        ctx.state.setdefault("calls", []).append(f"tag#rewrite:{conf['v']}")

    def access(self, conf: Conf, ctx: Any) -> None:
        ctx.state.setdefault("calls", []).append(f"tag#access:{conf['v']}")


CONSUMERS = [
    {
        "username": "jack",
        "group_id": "gold",
        "plugins": {"key-auth": {"key": "jack-key"}, "limit": {"count": 3}},
    },
    {"username": "jill", "group_id": "gold", "plugins": {"key-auth": {"key": "jill-key"}}},
    {"username": "solo", "plugins": {"key-auth": {"key": "solo-key"}}},
]
GROUPS = {"gold": {"id": "gold", "plugins": {"limit": {"count": 2}, "tag": {"v": "group"}}}}


@pytest.fixture
def consumer_pipe() -> Pipeline:
    return Pipeline(make_registry(KeyAuth, Limit, Tag), consumer_groups=GROUPS)


def test_consumer_beats_group_beats_route(consumer_pipe: Pipeline) -> None:
    route: Conf = {"key-auth": {}, "limit": {"count": 1}}
    ctx = SimpleCtx(headers={"apikey": "jack-key"}, consumers=CONSUMERS)
    assert consumer_pipe.start(ctx, route).run_phases() is None
    assert ctx.consumer_name == "jack"
    assert calls(ctx) == [
        "key-auth#rewrite",
        "limit#rewrite:1",  # the route's conf, before auth
        "limit#rewrite:3",  # rewrite_in_consumer: consumer conf (consumer > group)
        "tag#rewrite:group",  # rewrite_in_consumer: added by the group
        "limit#access:3",
        "tag#access:group",
    ]


def test_group_beats_route(consumer_pipe: Pipeline) -> None:
    route: Conf = {"key-auth": {}, "limit": {"count": 1}, "tag": {"v": "route"}}
    ctx = SimpleCtx(headers={"apikey": "jill-key"}, consumers=CONSUMERS)
    consumer_pipe.start(ctx, route).run_phases()
    assert calls(ctx)[-2:] == ["limit#access:2", "tag#access:group"]


def test_consumer_without_plugins_keeps_route(consumer_pipe: Pipeline) -> None:
    route: Conf = {"key-auth": {}, "limit": {"count": 1}}
    ctx = SimpleCtx(headers={"apikey": "solo-key"}, consumers=CONSUMERS)
    run = consumer_pipe.start(ctx, route)
    plan = run.plan
    run.run_phases()
    assert calls(ctx) == ["key-auth#rewrite", "limit#rewrite:1", "limit#access:1"]
    # only key-auth's own conf came from the consumer: the plan changed, no extra rewrite
    assert run.plan is not plan


def test_auth_failure_no_merge(consumer_pipe: Pipeline) -> None:
    ctx = SimpleCtx(headers={"apikey": "wrong"}, consumers=CONSUMERS)
    resp = consumer_pipe.start(ctx, {"key-auth": {}, "limit": {"count": 1}}).run_phases()
    assert resp is not None and resp.status == 401
    assert calls(ctx) == ["key-auth#rewrite"]


def test_consumer_plan_cached(consumer_pipe: Pipeline) -> None:
    route: Conf = {"key-auth": {}, "limit": {"count": 1}}
    plans = []
    for _ in range(2):
        ctx = SimpleCtx(headers={"apikey": "jack-key"}, consumers=CONSUMERS)
        run = consumer_pipe.start(ctx, route)
        run.run_phases()
        plans.append(run.plan)
    assert plans[0] is plans[1]


# -- body_filter -----------------------------------------------------------------------------


def test_body_filter_chains_chunks() -> None:
    class Upper(Plugin):
        name = "upper"
        priority = 20

        def body_filter(self, conf: Conf, ctx: Any, chunk: bytes, eof: bool) -> bytes:
            return chunk.upper()

    class Suffix(Plugin):
        name = "suffix"
        priority = 10

        def body_filter(self, conf: Conf, ctx: Any, chunk: bytes, eof: bool) -> Any:
            if eof:
                return chunk.decode() + conf["text"]  # str is encoded
            return None  # keep the chunk

    class Wrong(Plugin):
        name = "wrong"
        priority = 5

        def body_filter(self, conf: Conf, ctx: Any, chunk: bytes, eof: bool) -> Any:
            return 42  # ignored, logged

    reg = make_registry(Upper, Suffix, Wrong)
    run = Pipeline(reg).start(SimpleCtx(), {"suffix": {"text": "!"}, "upper": {}, "wrong": {}})
    assert run.body_filter(b"ab", False) == b"AB"
    assert run.body_filter(b"cd", True) == b"CD!"


# -- plans -----------------------------------------------------------------------------------


def test_plan_cached_by_identity(reg: PluginRegistry) -> None:
    pipe = Pipeline(reg)
    route: Conf = {"low": {}}
    rule: Conf = {"mid": {}}
    plan = pipe.plan(route, [rule])
    assert pipe.plan(route, [rule]) is plan
    assert pipe.plan({"low": {}}, [rule]) is not plan
    assert pipe.plan(route, []) is not plan
    assert [s.name for s in plan.steps("access")] == ["mid", "low"]
    reg.register(recorder("extra", 1, "access"))  # registry changed: plans rebuilt
    assert pipe.plan(route, [rule]) is not plan


def test_plan_cache_bounded(reg: PluginRegistry) -> None:
    pipe = Pipeline(reg, cache_size=3)
    routes = [{"low": {}} for _ in range(10)]
    for r in routes:
        pipe.plan(r)
    assert len(pipe._cache) == 3


def test_ctx_plugin_name_and_logger() -> None:
    seen: list[tuple[str, str]] = []

    class Who(Plugin):
        name = "who"
        priority = 1

        def access(self, conf: Conf, ctx: Any) -> None:
            seen.append((ctx.plugin_name, ctx.log.name))

    Pipeline(make_registry(Who)).start(SimpleCtx(), {"who": {}}).run_phase("access")
    assert seen == [("who", "pygateway.plugins.who")]


def test_run_phase_rejects_unknown_phase(reg: PluginRegistry) -> None:
    run = Pipeline(reg).start(SimpleCtx(), {})
    with pytest.raises(ValueError):
        run.run_phase("balancer")
    with pytest.raises(ValueError):
        run.run_phase("body_filter")


def test_header_filter_changes_response(reg: PluginRegistry) -> None:
    class Header(Plugin):
        name = "hdr"
        priority = 1

        def header_filter(self, conf: Conf, ctx: Any) -> None:
            ctx.response_headers["X-Added"] = "1"
            del ctx.response_headers["server"]
            ctx.status = 299

    ctx = SimpleCtx()
    ctx.set_response(200, [("Server", "up"), ("Content-Length", "3")])
    Pipeline(make_registry(Header)).start(ctx, {"hdr": {}}).run_phase("header_filter")
    assert ctx.status == 299
    assert dict(ctx.response_headers) == {"Content-Length": "3", "X-Added": "1"}


# -- SimpleCtx -------------------------------------------------------------------------------


def test_simple_ctx_request_and_vars() -> None:
    ctx = SimpleCtx(
        method="post",
        path="/users/42",
        query="a=1&a=2&b=&c=x%20y",
        headers=[
            ("Host", "example.com:8080"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("Cookie", "sid=abc; t=1"),
        ],
        remote_addr="10.0.0.1",
        server_port=9080,
        route_id="r1",
        route_name="users",
        service_id="s1",
        params={"id": "42"},
    )
    assert ctx.host == "example.com"
    assert ctx.headers.get("x-forwarded-for") == "1.1.1.1"
    assert ctx.args == {"a": "1", "b": "", "c": "x y"}
    var = ctx.var
    assert var["uri"] == "/users/42"
    assert var["request_uri"] == "/users/42?a=1&a=2&b=&c=x%20y"
    assert var["request_method"] == "POST"
    assert var["host"] == "example.com"
    assert var["server_port"] == "9080"
    assert var["remote_addr"] == "10.0.0.1"
    assert var["scheme"] == "http"
    assert var["arg_a"] == "1" and var["arg_c"] == "x%20y"  # raw, as nginx
    assert var["arg_A"] == "1"  # any case
    assert var["http_x_forwarded_for"] == "1.1.1.1"
    assert var["cookie_sid"] == "abc"
    assert var["route_id"] == "r1" and var["route_name"] == "users" and var["service_id"] == "s1"
    assert var["id"] == "42"
    assert var["missing"] is None and var.get("missing", "d") == "d"
    assert "missing" not in var and "uri" in var
    var["custom"] = "v"
    assert var["custom"] == "v"
    assert {"uri", "id", "custom"} <= set(var)
    assert var["consumer_name"] is None
    ctx.attach_consumer({"username": "jack", "group_id": "g"})
    assert var["consumer_name"] == "jack" and ctx.consumer_group_id == "g"


def test_simple_ctx_records_upstream_changes() -> None:
    ctx = SimpleCtx(path="/a", query="x=1", headers={"X-Old": "1", "X-Keep": "k"})
    assert not ctx.upstream_changes().changed
    ctx.set_header("X-New", "n")
    ctx.remove_header("x-old")
    ctx.set_header("x-gone", "v")
    ctx.remove_header("X-Gone")
    ctx.uri = "/b"
    ctx.method = "put"
    ctx.args = {"y": "2 3"}
    ctx.host = "up.example"
    ch = ctx.upstream_changes()
    assert ch.changed
    assert ch.set_headers == {"x-new": ("X-New", "n")}
    assert ch.removed_headers == {"x-old", "x-gone"}
    assert (ch.uri, ch.method, ch.query, ch.host) == ("/b", "PUT", "y=2+3", "up.example")
    assert ctx.path == "/b" and ctx.var["uri"] == "/b" and ctx.var["arg_y"] == "2+3"  # raw
    assert ctx.upstream_headers() == [("X-Keep", "k"), ("X-New", "n")]
    assert ctx.var["http_x_new"] == "n"  # later plugins see the change
    ctx.query = "z=9"
    assert ctx.args == {"z": "9"}
    ctx.upstream_uri = "/raw%2F?q"
    assert ch.upstream_uri == "/raw%2F?q"


def test_simple_ctx_body() -> None:
    assert SimpleCtx(body=b"hi").body() == b"hi"
    assert SimpleCtx().body() == b""
    reads: list[int] = []

    def reader() -> bytes:
        reads.append(1)
        return b"lazy"

    ctx = SimpleCtx(body_reader=reader)
    assert ctx.body() == b"lazy" and ctx.body() == b"lazy" and reads == [1]

    async def areader() -> bytes:
        return b"async"

    assert asyncio.run(SimpleCtx(body_reader=areader).body_async()) == b"async"
    with pytest.raises(TypeError):
        SimpleCtx(body_reader=areader).body()


def test_simple_ctx_consumers_and_extras() -> None:
    ctx = SimpleCtx(
        consumers=CONSUMERS,
        plugin_metadata={"cors": {"allow_origins": {}}},
        plugin_attr={"redirect": {"https_port": 8443}},
    )
    found = ctx.find_consumer("key-auth", "key", "jill-key")
    assert found is not None and found["username"] == "jill"
    assert found["auth_conf"] == {"key": "jill-key"} and found["consumer_name"] == "jill"
    assert ctx.find_consumer("key-auth", "key", "nope") is None
    assert ctx.get_consumer("solo") is not None and ctx.get_consumer("x") is None
    assert ctx.plugin_metadata("cors") == {"allow_origins": {}}
    assert ctx.plugin_attr("redirect") == {"https_port": 8443}


def test_headers_mapping() -> None:
    h = Headers([("A", "1"), ("b", "2"), ("a", "3")])
    assert h["a"] == "1" and h.get_all("A") == ["1", "3"]
    assert list(h) == ["A", "b"] and len(h) == 2
    h["A"] = "x"
    assert h.get_all("a") == ["x"]
    h.add("a", "y")
    assert h.items_list() == [("A", "x"), ("b", "2"), ("a", "y")]
    del h["A"]
    assert "a" not in h
    with pytest.raises(KeyError):
        del h["a"]
    assert 1 not in h


@pytest.mark.parametrize("stop", [None, "access", "before_proxy"])
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_flat_run_matches_the_phase_by_phase_run(stop: str | None, stage: int) -> None:
    """The runner's hot path (Execution.run_flat) runs, traces and answers as run_phases."""
    high = recorder("high", 2000, "access")
    low = recorder("low", 10, "access", "before_proxy")
    reg = make_registry(high, low)
    route = {"high": {}, "low": {"stop": stop} if stop else {}}
    phases = {0: ("access", "before_proxy"), 1: ("access",), 2: ("access", "before_proxy")}
    results = []
    for flat in (True, False):
        run = Pipeline(reg).start(SimpleCtx(), route)
        run.stage = stage
        pairs = run.plan.flat_request_steps(stage)
        assert pairs is not None
        resp = run.run_flat(pairs) if flat else run.run_phases(phases[stage])
        results.append((calls(run.ctx), run.trace, resp and (resp.status, resp.body)))
    assert results[0] == results[1]
    # rewrite steps (the consumer's plugins join after them) take the general path
    auth = make_registry(recorder("auth", 2500, "rewrite"), low)
    plan = Pipeline(auth).start(SimpleCtx(), {"auth": {}, "low": {}}).plan
    assert plan.flat_request_steps(0) is None
