"""Both engines, one config: generated route tables and requests must route the same way.

Every route proxies to one echo origin with ``pass_host: rewrite`` and ``upstream_host`` set
to its own id, so the Host the origin saw names the route that served the request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Reply, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from origin import Origin
from pygateway import Gateway

SEGMENTS = ["a", "b", "ab", "a.b", "c"]
TEMPLATES = [
    "/",
    "/*",
    "/a",
    "/a*",
    "/a/*",
    "/a/b",
    "/a/b*",
    "/ab",
    "/a/*/b",
    "/:x",
    "/a/:x",
    "/a/:x/b",
    "/:x/*rest",
    "/a.b/:x",
    "/b/*p",
]
HOSTS = ["foo.com", "*.foo.com", "*", "bar.foo.com", "*foo.com", "other.test"]
VARS: list[Any] = [
    [["arg_k", "==", "1"]],
    [["arg_n", ">", 5]],
    [["http_x_t", "~~", "^a"]],
    [["cookie_c", "==", "v"]],
    [["arg_k", "!", "==", "1"]],
    ["OR", ["arg_k", "==", "1"], ["http_x_t", "==", "b"]],
    [["uri", "~~", "/a"]],
    [["arg_k", "in", ["1", "2"]]],
]
REMOTES = [["127.0.0.1"], ["10.0.0.0/8"], ["127.0.0.0/8", "::1"]]
METHODS = ["GET", "POST", "PUT", "DELETE"]


@st.composite
def route_tables(draw: st.DrawFn) -> dict[str, Any]:
    routes = []
    for i in range(draw(st.integers(1, 6))):
        r: dict[str, Any] = {
            "id": f"r{i}",
            "uris": draw(st.lists(st.sampled_from(TEMPLATES), min_size=1, max_size=2, unique=True)),
            "priority": draw(st.integers(0, 2)),
        }
        hosts = draw(
            st.none() | st.lists(st.sampled_from(HOSTS), min_size=1, max_size=2, unique=True)
        )
        if hosts:
            r["hosts"] = hosts
        methods = draw(st.none() | st.lists(st.sampled_from(METHODS), min_size=1, max_size=2))
        if methods:
            r["methods"] = sorted(set(methods))
        if draw(st.booleans()):
            r["vars"] = draw(st.sampled_from(VARS))
        if draw(st.integers(0, 4)) == 0:
            r["remote_addrs"] = draw(st.sampled_from(REMOTES))
        routes.append(r)
    return {"routes": routes}


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    depth = draw(st.integers(0, 3))
    # Odd segments check path normalization (escapes, dot segments, a 400 above the root).
    segment = st.sampled_from(SEGMENTS) | st.sampled_from(["%61", "..", ".", "", "%2e%2e"])
    path = "/" + "/".join(draw(segment) for _ in range(depth))
    if draw(st.booleans()):
        path += "/"
    args = draw(st.lists(st.sampled_from(["k=1", "k=2", "n=7", "n=3", "K=1"]), max_size=2))
    if args:
        path += "?" + "&".join(args)
    headers = {"Host": draw(st.sampled_from(["foo.com", "x.foo.com", "barfoo.com", "a.test"]))}
    if draw(st.booleans()):
        headers["X-T"] = draw(st.sampled_from(["abc", "b", "z"]))
    if draw(st.booleans()):
        headers["Cookie"] = draw(st.sampled_from(["c=v", "c=w; d=1"]))
    return {"method": draw(st.sampled_from(METHODS)), "path": path, "headers": headers}


@pytest.fixture(scope="module")
def echo() -> Iterator[Origin]:
    o = Origin("echo").start()
    yield o
    o.stop()


def _config(table: dict[str, Any], origin: Origin) -> dict[str, Any]:
    routes = []
    for r in table["routes"]:
        upstream = {"nodes": {origin.addr: 1}, "pass_host": "rewrite", "upstream_host": r["id"]}
        routes.append({**r, "upstream": upstream})
    return {"routes": routes}


def _outcome(reply: Reply) -> tuple[Any, ...]:
    """What must agree: status, the serving route and what it saw, the framing headers."""
    served = None
    if reply.headers.get("x-origin") == "echo":
        echo = reply.json()
        served = (echo["headers"]["host"], echo["method"], echo["path"])
    else:
        served = reply.body
    relevant = ("content-type", "x-apisix-upstream-status", "content-length")
    return (reply.status, served, tuple(reply.headers.get(h) for h in relevant))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    table=route_tables(),
    probes=st.lists(requests(), min_size=1, max_size=5),
    params=st.booleans(),
)
def test_engines_route_and_answer_alike(
    echo: Origin, table: dict[str, Any], probes: list[dict[str, Any]], params: bool
) -> None:
    config = _config(table, echo)
    router = "radixtree_uri_with_parameter" if params else "radixtree_host_uri"
    node = {"listen": ["127.0.0.1:0"], "workers": 1, "router": router}
    with (
        Gateway(config=config, engine="native", **node) as native,
        Gateway(config=config, engine="python", **node) as python,
    ):
        for probe in probes:
            want = _outcome(request(native.url, **probe))
            got = _outcome(request(python.url, **probe))
            assert got == want, f"{probe} on {table['routes']} ({router})"
