"""The python engine's pieces on their own, pinned to the native plane's unit tests
(``rust/router/path.rs``, ``rust/server/request.rs``, ``rust/upstream/balancer.rs``)."""

from __future__ import annotations

import ipaddress

import pytest
from pygateway.engine.request import BadRequest, normalize_path, request_host
from pygateway.engine.router import IpSet, RouteTable, UriTemplate
from pygateway.engine.upstream import Balancer


def check(t: UriTemplate, path: str) -> list[tuple[str, str]] | None:
    out: list[tuple[str, str]] = []
    return out if t.check(path, out) else None


def test_plain_templates_are_exact_or_prefix_and_colon_is_literal() -> None:
    assert (UriTemplate.compile("/a/b", False).key, UriTemplate.compile("/a/b", False).exact) == (
        "/a/b",
        True,
    )
    star = UriTemplate.compile("/aa/*", False)
    assert (star.key, star.exact, check(star, "/aa/x/y")) == ("/aa/", False, [(":ext", "x/y")])
    assert UriTemplate.compile("/user/:id", False).exact, "':' is literal in plain mode"
    mid = UriTemplate.compile("/a/*/c", False)
    assert mid.key == "/a/" and check(mid, "/a/x/y/c") == [(":ext", "x/y")]
    assert check(mid, "/a/x/y/d") is None


def test_parameter_templates_capture_segments() -> None:
    t = UriTemplate.compile("/user/:id/profile", True)
    assert t.key == "/user/" and check(t, "/user/42/profile") == [("id", "42")]
    assert check(t, "/user/42/x/profile") is None and check(t, "/user//profile") is None
    f = UriTemplate.compile("/file/:dir/*path", True)
    assert check(f, "/file/etc/a/b.txt") == [("dir", "etc"), ("path", "a/b.txt")]
    assert check(UriTemplate.compile("/v.1/:x", True), "/vX1/y") is None
    assert check(UriTemplate.compile("/:a/", True), "/x") is None


class Req:
    def __init__(self, path: str, host: str = "", method: str = "GET") -> None:
        self.path, self.host, self.method = path, host, method
        self.client = ipaddress.ip_address("127.0.0.1")

    def var(self, name: str) -> str | None:
        return None


def test_exact_then_longest_prefix_then_host_less() -> None:
    routes = [
        {"id": "p", "uris": ["/a*"]},
        {"id": "pp", "uris": ["/a/b*"]},
        {"id": "e", "uris": ["/a/b"], "methods": ["POST"]},
        {"id": "h", "uris": ["/*"], "hosts": ["*.foo.com"]},
    ]
    table: RouteTable[None] = RouteTable.empty(False).with_changes([(r, None) for r in routes], [])

    def hit(path: str, host: str = "", method: str = "GET") -> str | None:
        m = table.match(Req(path, host, method))
        return None if m is None else m.route_id

    assert hit("/a/b", method="POST") == "e"
    assert hit("/a/b") == "pp", "a failing exact route falls through to the prefixes"
    assert hit("/ax") == "p"
    assert hit("/a/b", host="x.foo.com") == "h", "host-bound routes come first"
    assert hit("/zz", host="foo.com") is None
    table = table.with_changes([], ["h"])
    assert hit("/a/b", host="x.foo.com") == "pp"


def test_normalize_path_as_nginx() -> None:
    assert normalize_path("/info/../private") == "/private"
    assert normalize_path("//admin") == "/admin"
    assert normalize_path("/a/./b/") == "/a/b/"
    assert normalize_path("/a/%2e%2e/b") == "/b"
    assert normalize_path("/a/b/..") == "/a/"
    assert normalize_path("/x%20y") == "/x y"
    for bad in ("/../etc", "/a%zz", "/a%00b", "/a%ff", "/a%2", "/api/..%2f..%2fadmin"):
        with pytest.raises(BadRequest):
            normalize_path(bad)


def test_request_host() -> None:
    assert request_host(["Foo.COM:8080"], None, False) == "foo.com"
    assert request_host(["[::1]:80"], None, False) == "[::1]"
    for hosts, authority in ((["a b"], None), (["a", "b"], None), (["b"], "a"), (["a:x"], None)):
        with pytest.raises(BadRequest):
            request_host(hosts, authority, False)
    with pytest.raises(BadRequest):
        request_host([], None, False)
    assert request_host([], None, True) == ""


def test_ipset_matches_v4_mapped_peers() -> None:
    s = IpSet(["10.0.0.0/8", "192.168.1.7"])
    assert s.matches(ipaddress.ip_address("10.200.3.4"))
    assert not s.matches(ipaddress.ip_address("192.168.1.8"))
    assert s.matches(ipaddress.ip_address("::ffff:10.1.2.3"))
    with pytest.raises(ValueError):
        IpSet(["1.2.3.4/"])


def test_smooth_weighted_round_robin_and_priority_groups() -> None:
    b = Balancer([(5, 0), (1, 0), (1, 0)])
    assert [b.pick([]) for _ in range(7)] == [0, 0, 1, 0, 2, 0, 0]
    g = Balancer([(1, 0), (1, 10), (1, 10)])
    assert g.pick([]) in (1, 2)
    assert g.pick([1, 2]) == 0 and g.pick([0, 1, 2]) is None
    assert Balancer([(0, 0)]).is_empty()
