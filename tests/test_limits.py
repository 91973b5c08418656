"""limit-count, limit-req and limit-conn end to end on both engines: the local policy, and
the redis and redis-cluster policies against real redis-server processes (one Redis shared
by a native and a python node counts once)."""

from __future__ import annotations

import concurrent.futures
import http.client
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis_server
from conftest import request, route
from origin import Origin
from pygateway import Gateway
from pygateway.plugin import Plugin

needs_redis = pytest.mark.skipif(not redis_server.available(), reason="redis-server missing")

Make = Callable[..., Gateway]


def lc(**conf: Any) -> dict[str, Any]:
    return {"limit-count": {"count": 2, "time_window": 60, **conf}}


def statuses(gw: Gateway, path: str, n: int, headers: dict[str, str] | None = None) -> list[int]:
    return [request(gw.url, path, headers=headers).status for _ in range(n)]


def quota(r: Any) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if "ratelimit" in k}


# -- limit-count, local ----------------------------------------------------------------


def test_count_admits_count_then_rejects_with_headers(gateway: Make, origin: Origin) -> None:
    gw = gateway({"routes": [route("/a", origin.addr, plugins=lc())]})
    first = request(gw.url, "/a")
    assert first.status == 200
    assert quota(first) == {
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "1",
        "x-ratelimit-reset": "60",
    }
    assert request(gw.url, "/a").headers["x-ratelimit-remaining"] == "0"
    third = request(gw.url, "/a")
    assert third.status == 503
    assert third.headers["x-ratelimit-remaining"] == "0"
    assert b"503 Service Temporarily Unavailable" in third.body
    assert origin.requests == 2, "a rejected request never reaches the upstream"


def test_rejected_code_and_message(gateway: Make, origin: Origin) -> None:
    plugins = lc(count=1, rejected_code=429, rejected_msg="slow down")
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    request(gw.url, "/a")
    r = request(gw.url, "/a")
    assert r.status == 429
    assert r.json() == {"error_msg": "slow down"}


def test_quota_headers_can_be_hidden(gateway: Make, origin: Origin) -> None:
    plugins = lc(show_limit_quota_header=False)
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    assert quota(request(gw.url, "/a")) == {}


def test_header_names_from_plugin_metadata(gateway: Make, origin: Origin) -> None:
    meta = {"id": "limit-count", "limit_header": "X-Quota", "remaining_header": "X-Left"}
    config = {"routes": [route("/a", origin.addr, plugins=lc())], "plugin_metadata": [meta]}
    gw = gateway(config)
    r = request(gw.url, "/a")
    assert r.headers["x-quota"] == "2" and r.headers["x-left"] == "1"
    assert r.headers["x-ratelimit-reset"] == "60"
    assert "x-ratelimit-limit" not in r.headers


@pytest.mark.parametrize(
    ("conf", "header", "values"),
    [
        ({"key": "http_x_user"}, "X-User", ["a", "a", "b"]),
        ({"key": "arg_user"}, None, ["a", "a", "b"]),
        (
            {"key": "$http_x_user $http_x_app", "key_type": "var_combination"},
            "X-User",
            ["a", "a", "b"],
        ),
    ],
)
def test_count_keys(
    gateway: Make, origin: Origin, conf: dict[str, Any], header: str | None, values: list[str]
) -> None:
    gw = gateway({"routes": [route("/a", origin.addr, plugins=lc(count=1, **conf))]})

    def send(v: str) -> int:
        if header is None:
            return request(gw.url, f"/a?user={v}").status
        return request(gw.url, "/a", headers={header: v}).status

    assert [send(v) for v in values] == [200, 503, 200]


def test_constant_key_is_one_counter_for_everyone(gateway: Make, origin: Origin) -> None:
    plugins = lc(count=1, key="all", key_type="constant")
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    assert request(gw.url, "/a", headers={"X-User": "a"}).status == 200
    assert request(gw.url, "/a", headers={"X-User": "b"}).status == 503


def test_empty_key_falls_back_to_the_client_address(gateway: Make, origin: Origin) -> None:
    plugins = lc(count=1, key="http_x_missing")
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    assert statuses(gw, "/a", 2) == [200, 503]


def test_counters_are_per_route_unless_grouped(gateway: Make, origin: Origin) -> None:
    config = {
        "routes": [
            route("/a", origin.addr, id="a", plugins=lc(count=1)),
            route("/b", origin.addr, id="b", plugins=lc(count=1)),
            route("/g1", origin.addr, id="g1", plugins=lc(count=1, group="g")),
            route("/g2", origin.addr, id="g2", plugins=lc(count=1, group="g")),
        ]
    }
    gw = gateway(config)
    assert [request(gw.url, p).status for p in ("/a", "/b")] == [200, 200]
    assert [request(gw.url, p).status for p in ("/g1", "/g2")] == [200, 503]


def test_group_members_must_agree(gateway: Make, origin: Origin) -> None:
    from pygateway.config import ConfigError

    config = {
        "routes": [
            route("/g1", origin.addr, id="g1", plugins=lc(count=1, group="g")),
            route("/g2", origin.addr, id="g2", plugins=lc(count=2, group="g")),
        ]
    }
    with pytest.raises(ConfigError, match="group conf mismatched"):
        gateway(config)


def test_meta_filter_limits_only_matching_requests(gateway: Make, origin: Origin) -> None:
    plugins = lc(count=1, _meta={"filter": [["arg_limited", "==", "yes"]]})
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    assert statuses(gw, "/a", 3) == [200, 200, 200]
    assert [request(gw.url, "/a?limited=yes").status for _ in range(2)] == [200, 503]


def test_unmatched_requests_consume_nothing(gateway: Make, origin: Origin) -> None:
    gw = gateway({"routes": [route("/a", origin.addr, plugins=lc(count=1))]})
    assert request(gw.url, "/nothing-here").status == 404
    assert request(gw.url, "/a").status == 200


def test_conf_change_starts_a_new_counter_same_conf_keeps_it(gateway: Make, origin: Origin) -> None:
    def config(count: int, name: str) -> dict[str, Any]:
        return {"routes": [route("/a", origin.addr, id="1", name=name, plugins=lc(count=count))]}

    gw = gateway(config(1, "first"))
    assert statuses(gw, "/a", 2) == [200, 503]
    gw.reload(config(1, "renamed"))  # other route fields changed, same plugin conf
    assert request(gw.url, "/a").status == 503
    gw.reload(config(2, "renamed"))
    assert statuses(gw, "/a", 3) == [200, 200, 503]


def test_rules_apply_every_window_with_prefixed_headers(gateway: Make, origin: Origin) -> None:
    rules = [
        {"count": 3, "time_window": 60, "key": "$remote_addr", "header_prefix": "minute"},
        {"count": 1, "time_window": 3600, "key": "${http_x_user}"},
    ]
    gw = gateway({"routes": [route("/a", origin.addr, plugins={"limit-count": {"rules": rules}})]})
    r = request(gw.url, "/a", headers={"X-User": "u"})
    assert r.status == 200
    assert r.headers["x-minute-ratelimit-limit"] == "3"
    assert r.headers["x-2-ratelimit-limit"] == "1"
    assert request(gw.url, "/a", headers={"X-User": "u"}).status == 503
    assert request(gw.url, "/a", headers={"X-User": "v"}).status == 200
    assert request(gw.url, "/a", headers={"X-User": "w"}).status == 503, "minute rule spent"


def test_rules_apply_when_their_key_resolves(gateway: Make, origin: Origin) -> None:
    """APISIX: a rule whose key resolves no variable does not apply; with none left the
    request fails (500); the first rule that refuses ends it (later ones are not counted)."""
    rules = [
        {"count": 1, "time_window": 60, "key": "${http_x_user}", "header_prefix": "user"},
        {"count": 3, "time_window": 60, "key": "$http_x_team", "header_prefix": "team"},
    ]
    gw = gateway({"routes": [route("/a", origin.addr, plugins={"limit-count": {"rules": rules}})]})
    assert request(gw.url, "/a").status == 500
    team = {"X-Team": "t"}
    r = request(gw.url, "/a", headers=team)
    assert r.status == 200 and "x-user-ratelimit-limit" not in r.headers
    both = {"X-User": "u", "X-Team": "t"}
    assert request(gw.url, "/a", headers=both).status == 200
    refused = request(gw.url, "/a", headers=both)
    assert refused.status == 503 and "x-team-ratelimit-remaining" not in refused.headers
    left = request(gw.url, "/a", headers=team).headers["x-team-ratelimit-remaining"]
    assert left == "0", "the refused request was counted by the later rule"


def test_amounts_from_variables_with_defaults(gateway: Make, origin: Origin) -> None:
    plugins = {"limit-count": {"count": "${http_count ?? 2}", "time_window": "$http_window"}}
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    window = {"Window": "60"}
    assert statuses(gw, "/a", 3, headers=window) == [200, 200, 503]
    assert request(gw.url, "/a").status == 500, "time_window resolved to nothing"
    assert request(gw.url, "/a", headers={"Window": "1.5"}).status == 500


def test_combination_keys_and_amounts_are_the_same_templates(gateway: Make, origin: Origin) -> None:
    """Both engines read ``${var ?? default}`` in keys and amounts alike; an empty variable
    takes the default."""
    key = {"key_type": "var_combination", "key": "${http_x_user ?? anon}"}
    plugins = {"limit-count": {"count": "${http_x_quota ?? 1}", "time_window": 60, **key}}
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    assert statuses(gw, "/a", 2, headers={"X-Quota": ""}) == [200, 503]
    assert request(gw.url, "/a", headers={"X-User": "anon"}).status == 503, "the default key"
    assert request(gw.url, "/a", headers={"X-User": "u"}).status == 200


def test_window_resets(gateway: Make, origin: Origin) -> None:
    gw = gateway({"routes": [route("/a", origin.addr, plugins=lc(count=1, time_window=1))]})
    assert statuses(gw, "/a", 2) == [200, 503]
    time.sleep(1.1)
    assert request(gw.url, "/a").status == 200


def test_sliding_window_counts_the_previous_window(gateway: Make, origin: Origin) -> None:
    plugins = lc(count=4, time_window=2, window_type="sliding")
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    results = statuses(gw, "/a", 6)
    assert results.count(200) == 4 and results[-1] == 503


def test_global_rule_limit_is_shared_by_routes(gateway: Make, origin: Origin) -> None:
    config = {
        "routes": [route("/a", origin.addr, id="a"), route("/b", origin.addr, id="b")],
        "global_rules": [{"id": "g", "plugins": lc(count=1)}],
    }
    gw = gateway(config)
    assert [request(gw.url, p).status for p in ("/a", "/b")] == [200, 503]


def test_consumer_name_key_after_key_auth(gateway: Make, origin: Origin) -> None:
    plugins = {"key-auth": {}, **lc(count=1, key="consumer_name")}
    config = {
        "routes": [route("/a", origin.addr, plugins=plugins)],
        "consumers": [
            {"username": "jack", "plugins": {"key-auth": {"key": "k1"}}},
            {"username": "jill", "plugins": {"key-auth": {"key": "k2"}}},
        ],
    }
    gw = gateway(config)
    assert request(gw.url, "/a").status == 401, "authentication runs before the limiter"
    sent = [request(gw.url, "/a", headers={"apikey": k}).status for k in ("k1", "k1", "k2")]
    assert sent == [200, 503, 200]


def test_consumer_limit_replaces_the_routes(gateway: Make, origin: Origin) -> None:
    plugins = {"key-auth": {}, **lc(count=100)}
    config = {
        "routes": [route("/a", origin.addr, plugins=plugins)],
        "consumers": [
            {"username": "jack", "plugins": {"key-auth": {"key": "k1"}, **lc(count=1)}},
            {"username": "jill", "plugins": {"key-auth": {"key": "k2"}}},
        ],
    }
    gw = gateway(config)
    jack = [request(gw.url, "/a", headers={"apikey": "k1"}) for _ in range(2)]
    assert [r.status for r in jack] == [200, 503]
    assert jack[0].headers["x-ratelimit-limit"] == "1"
    jill = request(gw.url, "/a", headers={"apikey": "k2"})
    assert jill.status == 200 and jill.headers["x-ratelimit-limit"] == "100"


def test_consumer_group_limit(gateway: Make, origin: Origin) -> None:
    config = {
        "routes": [route("/a", origin.addr, plugins={"key-auth": {}})],
        "consumer_groups": [{"id": "bronze", "plugins": lc(count=1)}],
        "consumers": [
            {"username": "jack", "group_id": "bronze", "plugins": {"key-auth": {"key": "k1"}}},
            {"username": "jill", "plugins": {"key-auth": {"key": "k2"}}},
        ],
    }
    gw = gateway(config)
    assert [request(gw.url, "/a", headers={"apikey": "k1"}).status for _ in range(2)] == [200, 503]
    assert [request(gw.url, "/a", headers={"apikey": "k2"}).status for _ in range(2)] == [200, 200]


SEEN: list[str] = []


class _Above(Plugin):
    name = "test-above-limits"
    priority = 2000

    def access(self, conf: dict[str, Any], ctx: Any) -> None:
        SEEN.append("above")


class _Below(Plugin):
    name = "test-below-limits"
    priority = 10

    def access(self, conf: dict[str, Any], ctx: Any) -> None:
        SEEN.append("below")
        ctx.set_header("X-Below", "1")

    def before_proxy(self, conf: dict[str, Any], ctx: Any) -> None:
        SEEN.append("before_proxy")


@pytest.mark.parametrize("above", [True, False], ids=["both-sides", "all-below"])
def test_python_plugins_run_on_their_side_of_the_limiters(
    engine: str, origin: Origin, above: bool
) -> None:
    plugins: dict[str, Any] = {"test-below-limits": {}, **lc(count=1)}
    if above:
        plugins["test-above-limits"] = {}
    config = {"routes": [route("/a", origin.addr, plugins=plugins)]}
    gw = Gateway(config=config, engine=engine, listen=["127.0.0.1:0"], workers=1, debug=True)
    gw.register_plugin(_Above)
    gw.register_plugin(_Below)
    first = ["above"] if above else []
    with gw:
        SEEN.clear()
        ok = request(gw.url, "/a")
        assert ok.status == 200
        assert [*first, "below", "before_proxy"] == SEEN
        assert ok.json()["headers"]["x-below"] == "1", "late changes reach the upstream"
        assert ok.headers["x-ratelimit-remaining"] == "0"
        SEEN.clear()
        refused = request(gw.url, "/a")
        assert refused.status == 503
        assert first == SEEN, "a refused request never reaches the plugins below"
        runner = gw._runner
        if runner is not None:  # native: the run kept for the late crossing is let go
            deadline = time.monotonic() + 5
            while runner._late and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not runner._late


def test_rotating_forwarded_for_does_not_bypass(gateway: Make, origin: Origin) -> None:
    gw = gateway({"routes": [route("/a", origin.addr, plugins=lc(count=2))]})
    sent = [
        request(gw.url, "/a", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status for i in range(5)
    ]
    assert sent == [200, 200, 503, 503, 503]


def test_forwarded_for_counts_from_a_trusted_proxy(gateway: Make, origin: Origin) -> None:
    gw = gateway(
        {"routes": [route("/a", origin.addr, plugins=lc(count=1))]},
        trusted_addresses=["127.0.0.0/8"],
    )
    sent = [
        request(gw.url, "/a", headers={"X-Forwarded-For": ip}).status
        for ip in ("10.0.0.1", "10.0.0.1", "10.0.0.2")
    ]
    assert sent == [200, 503, 200]


RULE = {"count": 1, "time_window": 60, "key": "$remote_addr"}


def test_invalid_confs_are_refused_with_apisix_wording() -> None:
    from pygateway.config import ConfigError

    bad = [
        ({"count": 0, "time_window": 60}, "count"),
        ({"count": 1}, "matches none"),
        ({"count": 1, "time_window": 60, "policy": "redis"}, "redis_host"),
        ({"count": 1, "time_window": 60, "rejected_code": 600}, "rejected_code"),
        (
            {"count": 1, "time_window": 60, "rules": [RULE]},
            "count/time_window and rules cannot be specified at the same time",
        ),
        ({"rules": [RULE, RULE]}, "duplicate key '$remote_addr' in rules"),
        ({"group": "g", "rules": [RULE]}, "group and rules cannot be specified at the same time"),
    ]
    for conf, text in bad:
        cfg = {"routes": [route("/a", "127.0.0.1:1", plugins={"limit-count": conf})]}
        with pytest.raises(ConfigError) as info:
            Gateway(config=cfg, listen=["127.0.0.1:0"]).start().stop(0)
        message = str(info.value)
        assert "failed to check the configuration of plugin limit-count" in message
        assert text in message, message


# -- limit-req, limit-conn, local --------------------------------------------------------


def test_req_nodelay_rejects_beyond_burst(gateway: Make, origin: Origin) -> None:
    plugins = {"limit-req": {"rate": 1, "burst": 1, "key": "remote_addr", "nodelay": True}}
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    assert statuses(gw, "/a", 3) == [200, 200, 503]


def test_req_delays_excess_within_burst(gateway: Make, origin: Origin) -> None:
    plugins = {"limit-req": {"rate": 4, "burst": 1, "key": "remote_addr", "rejected_code": 429}}
    gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
    started = time.monotonic()
    assert sorted(_parallel(gw, "/a", 3)) == [200, 200, 429]
    assert time.monotonic() - started >= 0.2, "the request within burst waited about 1/rate"


def _parallel(gw: Gateway, path: str, n: int) -> list[int]:
    host, _, port = gw.addresses[0].rpartition(":")

    def one(_: int) -> int:
        c = http.client.HTTPConnection(host, int(port), timeout=20)
        try:
            c.request("GET", path)
            return c.getresponse().status
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_conn_limits_requests_in_flight_and_releases(gateway: Make, origin: Origin) -> None:
    plugins = {
        "limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}
    }
    gw = gateway({"routes": [route("/sleep/*", origin.addr, plugins=plugins)]})
    results = _parallel(gw, "/sleep/0.5", 4)
    assert sorted(results) == [200, 503, 503, 503]
    # Every slot came back: the next request passes.
    assert request(gw.url, "/sleep/0").status == 200


def test_conn_burst_is_delayed_not_rejected(gateway: Make, origin: Origin) -> None:
    plugins = {
        "limit-conn": {"conn": 1, "burst": 1, "default_conn_delay": 0.1, "key": "remote_addr"}
    }
    gw = gateway({"routes": [route("/sleep/*", origin.addr, plugins=plugins)]})
    assert sorted(_parallel(gw, "/sleep/0.5", 3)) == [200, 200, 503]


# -- redis and redis-cluster ---------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_process() -> Iterator[redis_server.RedisServer]:
    if not redis_server.available():
        pytest.skip("redis-server missing")
    r = redis_server.RedisServer().start()
    yield r
    r.cleanup()


@pytest.fixture
def redis(redis_process: redis_server.RedisServer) -> redis_server.RedisServer:
    """The module's redis-server, emptied: both engines use the same counter names."""
    redis_process.cli("flushall")
    return redis_process


def _redis_conf(r: redis_server.RedisServer, **conf: Any) -> dict[str, Any]:
    return {"policy": "redis", "redis_host": "127.0.0.1", "redis_port": r.port, **conf}


def _share_one_counter(
    engines: list[str], origin: Origin, r: redis_server.RedisServer, window_type: str
) -> None:
    """Two gateways on one Redis, requests spread over both: exactly ``count`` pass."""
    count = 50
    plugins = lc(count=count, time_window=60, key="all", key_type="constant")
    plugins["limit-count"].update(_redis_conf(r, window_type=window_type))
    config = {"routes": [route("/a", origin.addr, id="shared", plugins=plugins)]}
    nodes = [
        Gateway(config=config, listen=["127.0.0.1:0"], workers=2, engine=e).start() for e in engines
    ]
    try:
        urls = [g.addresses[0] for g in nodes]

        def one(i: int) -> int:
            host, _, port = urls[i % 2].rpartition(":")
            c = http.client.HTTPConnection(host, int(port), timeout=20)
            try:
                c.request("GET", "/a")
                return c.getresponse().status
            finally:
                c.close()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(3 * count)))
        assert results.count(200) == count, f"{engines} on one redis: {results.count(200)} passed"
        assert results.count(503) == 2 * count
    finally:
        for g in nodes:
            g.stop(0)


@needs_redis
def test_redis_two_gateways_share_one_counter_exactly(
    engine: str, origin: Origin, redis: redis_server.RedisServer
) -> None:
    _share_one_counter([engine, engine], origin, redis, "fixed")


@needs_redis
@pytest.mark.parametrize("window_type", ["fixed", "sliding"])
def test_redis_native_and_python_nodes_share_one_counter(
    origin: Origin, redis: redis_server.RedisServer, window_type: str
) -> None:
    _share_one_counter(["native", "python"], origin, redis, window_type)


def test_conf_hash_is_the_native_engines() -> None:
    """The same number as rust/limit/mod.rs ``conf_hash_is_fnv1a_...``: counter names agree."""
    from pygateway.plugins._limit import conf_hash

    conf = {
        "count": 2,
        "time_window": 60,
        "rejected_msg": 'sl\u00f6w "down"\n\u0001',
        "rate": 0.5,
        "burst": 1.0,
        "big": 1e16,
        "small": 1e-5,
        "tiny": 2.5e-7,
        "nested": {"b": [1, 2.5, True, None], "a": "x"},
        "_meta": {"filter": [["arg_a", "==", "1"]]},
    }
    assert conf_hash(conf) == 15269562751155801864


@needs_redis
def test_redis_over_tls(engine: str, gateway: Make, origin: Origin) -> None:
    r = redis_server.RedisServer(tls=True).start()
    try:
        plugins = lc(count=2, key="tls", key_type="constant", redis_ssl=True, **_redis_conf(r))
        gw = gateway({"routes": [route("/a", origin.addr, plugins=plugins)]})
        assert statuses(gw, "/a", 3) == [200, 200, 503]
        assert [k for k in r.cli("--scan", "--pattern", "*tls*").split() if k], "counted in redis"
        # Without TLS the same server cannot be used: the limiter fails (no degradation).
        plain = lc(count=2, key="tls2", key_type="constant", redis_timeout=300, **_redis_conf(r))
        gw2 = gateway({"routes": [route("/b", origin.addr, plugins=plain)]})
        assert request(gw2.url, "/b").status == 500
    finally:
        r.cleanup()


@needs_redis
def test_redis_repairs_a_key_without_ttl(
    engine: str, gateway: Make, origin: Origin, redis: redis_server.RedisServer
) -> None:
    plugins = lc(count=1, key="ttl-test", key_type="constant")
    plugins["limit-count"].update(_redis_conf(redis))
    gw = gateway({"routes": [route("/a", origin.addr, id="ttl", plugins=plugins)]})
    assert statuses(gw, "/a", 2) == [200, 503]
    keys = [k for k in redis.cli("--scan", "--pattern", "*ttl-test*").split() if k]
    assert len(keys) == 1
    redis.cli("persist", keys[0])  # the window lost its expiry
    assert request(gw.url, "/a").status == 200, "a key without TTL starts a new window"


@needs_redis
def test_redis_down_fails_or_degrades_then_recovers(
    engine: str, gateway: Make, origin: Origin
) -> None:
    r = redis_server.RedisServer().start()
    try:
        strict = lc(count=100, redis_timeout=200, **_redis_conf(r))
        lenient = lc(count=100, redis_timeout=200, allow_degradation=True, **_redis_conf(r))
        gw = gateway(
            {
                "routes": [
                    route("/strict", origin.addr, plugins=strict),
                    route("/lenient", origin.addr, plugins=lenient),
                ]
            }
        )
        assert request(gw.url, "/strict").status == 200
        r.stop()
        down = request(gw.url, "/strict")
        assert down.status == 500
        assert down.json() == {"error_msg": "failed to limit count"}
        assert request(gw.url, "/lenient").status == 200
        r.start()
        deadline = time.monotonic() + 10
        while request(gw.url, "/strict").status != 200:
            assert time.monotonic() < deadline, "no recovery after redis came back"
            time.sleep(0.1)
    finally:
        r.cleanup()


@needs_redis
def test_redis_limit_req_and_conn(
    engine: str, gateway: Make, origin: Origin, redis: redis_server.RedisServer
) -> None:
    req = {"rate": 1, "burst": 0, "key": "remote_addr", "nodelay": True, **_redis_conf(redis)}
    conn = {
        "conn": 1,
        "burst": 0,
        "default_conn_delay": 0.1,
        "key": "remote_addr",
        **_redis_conf(redis),
    }
    gw = gateway(
        {
            "routes": [
                route("/req", origin.addr, plugins={"limit-req": req}),
                route("/sleep/*", origin.addr, plugins={"limit-conn": conn}),
            ]
        }
    )
    assert statuses(gw, "/req", 2) == [200, 503]
    assert sorted(_parallel(gw, "/sleep/0.5", 3)) == [200, 503, 503]
    deadline = time.monotonic() + 5
    while request(gw.url, "/sleep/0").status != 200:  # the release is asynchronous
        assert time.monotonic() < deadline, "limit-conn slot never released in redis"
        time.sleep(0.05)


@needs_redis
def test_redis_cluster_policy(engine: str, gateway: Make, origin: Origin) -> None:
    cluster = redis_server.RedisCluster().start()
    try:
        plugins = lc(
            count=3,
            policy="redis-cluster",
            redis_cluster_nodes=cluster.addresses,
            redis_cluster_name="test",
        )
        sliding = lc(
            count=3,
            window_type="sliding",
            policy="redis-cluster",
            redis_cluster_nodes=cluster.addresses,
            redis_cluster_name="test",
        )
        gw = gateway(
            {
                "routes": [
                    route("/a", origin.addr, plugins=plugins),
                    route("/s", origin.addr, plugins=sliding),
                ]
            }
        )
        results = [request(gw.url, "/a", headers={"X-N": str(i)}).status for i in range(5)]
        assert results == [200, 200, 200, 503, 503]
        assert statuses(gw, "/s", 5) == [200, 200, 200, 503, 503]
        # Keys spread over the nodes: many distinct keys, all counted.
        per_key = lc(
            count=1,
            key="http_x_k",
            **{
                "policy": "redis-cluster",
                "redis_cluster_nodes": cluster.addresses,
                "redis_cluster_name": "test",
            },
        )
        gw2 = gateway({"routes": [route("/k", origin.addr, plugins=per_key)]})
        for i in range(20):
            assert request(gw2.url, "/k", headers={"X-K": f"k{i}"}).status == 200
            assert request(gw2.url, "/k", headers={"X-K": f"k{i}"}).status == 503
        assert sum(int(n.cli("dbsize")) for n in cluster.nodes) >= 20
        assert all(int(n.cli("dbsize")) > 0 for n in cluster.nodes)
    finally:
        cluster.cleanup()
