"""End-to-end routing: which route serves a request (reference: apisix.md §3).

Every test starts an in-process gateway whose routes proxy to different origins ("a", "b",
"c"); the origin that answers (its ``X-Origin`` reply header) tells which route matched.
Requests come from 127.0.0.1. The default router is ``radixtree_host_uri``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import request, route
from origin import Origin
from pygateway import ConfigError, Gateway

MakeGateway = Callable[..., Gateway]

NOT_FOUND_BODY = b'{"error_msg":"404 Route Not Found"}\n'
NOT_FOUND = "404"
"""What :func:`served_by` reports for APISIX's route-not-found reply."""


# The origins are shared by the whole module: stopping one takes up to 0.5 s (the
# socketserver poll interval), which per test would dominate the run time. They override
# conftest's function-scoped fixtures of the same names.


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin("a").start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def origin_b() -> Iterator[Origin]:
    o = Origin("b").start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def origin_c() -> Iterator[Origin]:
    o = Origin("c").start()
    yield o
    o.stop()


def up(o: Origin) -> dict[str, Any]:
    """An inline upstream to one origin."""
    return {"nodes": {o.addr: 1}}


def served_by(
    gw: Gateway,
    path: str,
    *,
    method: str = "GET",
    host: str | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """The name of the origin that answered, ``"404"`` for route-not-found, else a summary."""
    hdrs = dict(headers or {})
    if host is not None:
        hdrs["Host"] = host
    r = request(gw.url, path, method=method, headers=hdrs)
    if r.status == 404 and r.body == NOT_FOUND_BODY:
        return NOT_FOUND
    if r.status == 200 and "x-origin" in r.headers:
        return r.headers["x-origin"]
    return f"HTTP {r.status} {r.body[:120]!r}"


Case = tuple[str, str, dict[str, Any]]


def case(path: str, want: str, **kw: Any) -> Case:
    """A request (``path`` plus :func:`served_by` keywords) and who should serve it."""
    return (path, want, kw)


def expect(gw: Gateway, rule: str, *cases: Case) -> None:
    """Send every case; fail listing each one that went to the wrong place."""
    wrong = []
    for path, want, kw in cases:
        got = served_by(gw, path, **kw)
        if got != want:
            extra = f" {kw}" if kw else ""
            wrong.append(f"{kw.get('method', 'GET')} {path}{extra}: want {want!r}, got {got!r}")
    assert not wrong, f"{rule}:\n  " + "\n  ".join(wrong)


# -- 1. exact and prefix URIs ---------------------------------------------------------------


def test_exact_uri_beats_prefix_uri(gateway: MakeGateway, origin: Origin, origin_b: Origin) -> None:
    gw = gateway(
        {
            "routes": [
                route("/a*", origin.addr, id="prefix", priority=100),
                route("/a", origin_b.addr, id="exact"),
            ]
        }
    )
    expect(
        gw,
        "an exact uri must beat a prefix uri that also covers the path, whatever its priority",
        case("/a", "b"),
        case("/ab", "a"),
        case("/a/x", "a"),
    )


def test_star_prefix_matches_its_stem_and_anything_after(
    gateway: MakeGateway, origin: Origin
) -> None:
    gw = gateway({"routes": [route("/aa*", origin.addr)]})
    expect(
        gw,
        "'/aa*' stores prefix '/aa' and must match /aa, /aab and /aa/x (not /a)",
        case("/aa", "a"),
        case("/aab", "a"),
        case("/aa/x", "a"),
        case("/a", NOT_FOUND),
        case("/ab", NOT_FOUND),
    )


def test_slash_star_prefix_does_not_match_the_bare_stem(
    gateway: MakeGateway, origin: Origin
) -> None:
    gw = gateway({"routes": [route("/aa/*", origin.addr)]})
    r = request(gw.url, "/aa")
    assert (r.status, r.body) == (404, NOT_FOUND_BODY), (
        f"'/aa/*' must not match /aa; want 404 {NOT_FOUND_BODY!r}, got {r.status} {r.body!r}"
    )
    assert r.headers.get("content-type", "").startswith("application/json"), (
        f"the 404 route-not-found reply must be JSON, got content-type {r.headers}"
    )
    expect(
        gw,
        "'/aa/*' stores prefix '/aa/' and must match /aa/ and /aa/x",
        case("/aa/", "a"),
        case("/aa/x/y", "a"),
        case("/aab", NOT_FOUND),
    )


def test_no_route_at_all_is_404_route_not_found(gateway: MakeGateway) -> None:
    gw = gateway({"routes": []})
    r = request(gw.url, "/anything")
    assert (r.status, r.body) == (404, NOT_FOUND_BODY), (
        f"an empty router must answer 404 {NOT_FOUND_BODY!r}, got {r.status} {r.body!r}"
    )


# -- 2. longest prefix ----------------------------------------------------------------------


def test_longest_prefix_wins_regardless_of_priority(
    gateway: MakeGateway, origin: Origin, origin_b: Origin
) -> None:
    gw = gateway(
        {
            "routes": [
                route("/api/*", origin.addr, priority=100),
                route("/api/v1/*", origin_b.addr, priority=0),
            ]
        }
    )
    expect(
        gw,
        "the longest matching prefix must win; priority only orders routes under one key",
        case("/api/v1/x", "b"),
        case("/api/v1/", "b"),
        case("/api/v2/x", "a"),
        case("/api/v1", "a"),
    )


# -- 3. fall-through ------------------------------------------------------------------------

# (field values that pass, field values that fail) for the request FALL_REQUEST.
CONSTRAINTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "methods": ({"methods": ["GET"]}, {"methods": ["POST", "PUT"]}),
    "hosts": ({"hosts": ["foo.com"]}, {"hosts": ["bar.com"]}),
    "vars": ({"vars": [["http_x_tag", "==", "t"]]}, {"vars": [["http_x_tag", "==", "u"]]}),
    "remote_addrs": ({"remote_addrs": ["127.0.0.0/8"]}, {"remote_addrs": ["10.0.0.0/8"]}),
}
FALL_REQUEST: dict[str, Any] = {"host": "foo.com", "headers": {"X-Tag": "t"}}


@pytest.mark.parametrize("field", list(CONSTRAINTS))
def test_longest_prefix_failing_a_constraint_falls_through_to_shorter_prefix(
    gateway: MakeGateway, origin: Origin, origin_b: Origin, field: str
) -> None:
    passing, failing = CONSTRAINTS[field]
    gw = gateway(
        {
            "routes": [
                route("/api/*", origin.addr, id="short"),
                route("/api/v1/*", origin_b.addr, id="long-fails", **failing),
                route("/api/v2/*", origin_b.addr, id="long-passes", **passing),
            ]
        }
    )
    expect(
        gw,
        f"a longer prefix route whose {field} fails must fall through to the shorter prefix "
        f"(and win when its {field} passes)",
        case("/api/v1/x", "a", **FALL_REQUEST),
        case("/api/v2/x", "b", **FALL_REQUEST),
    )


@pytest.mark.parametrize("field", list(CONSTRAINTS))
def test_exact_route_failing_a_constraint_falls_through_to_prefix(
    gateway: MakeGateway, origin: Origin, origin_b: Origin, field: str
) -> None:
    passing, failing = CONSTRAINTS[field]
    gw = gateway(
        {
            "routes": [
                route("/api/*", origin.addr, id="prefix"),
                route("/api/v1", origin_b.addr, id="exact-fails", **failing),
                route("/api/v2", origin_b.addr, id="exact-passes", **passing),
            ]
        }
    )
    expect(
        gw,
        f"an exact route whose {field} fails must fall through to the prefix route "
        f"(and win when its {field} passes)",
        case("/api/v1", "a", **FALL_REQUEST),
        case("/api/v2", "b", **FALL_REQUEST),
    )


def test_first_route_of_a_key_failing_lets_the_next_one_of_the_same_key_serve(
    gateway: MakeGateway, origin: Origin, origin_b: Origin
) -> None:
    gw = gateway(
        {
            "routes": [
                route("/k", origin.addr, id="post-only", priority=10, methods=["POST"]),
                route("/k", origin_b.addr, id="any"),
            ]
        }
    )
    expect(
        gw,
        "when the best route of an exact key fails its method, the next route of that key serves",
        case("/k", "b"),
        case("/k", "a", method="POST"),
    )


# -- 4. order within one key ----------------------------------------------------------------


def test_higher_priority_wins_within_one_key(
    gateway: MakeGateway, origin: Origin, origin_b: Origin
) -> None:
    gw = gateway(
        {
            "routes": [
                route("/p/*", origin.addr, id="p-low", priority=0),
                route("/p/*", origin_b.addr, id="p-high", priority=5),
                route("/e", origin.addr, id="e-low", priority=-1),
                route("/e", origin_b.addr, id="e-high", priority=1),
            ]
        }
    )
    expect(
        gw,
        "under one key (same prefix or same exact path) the higher priority must win, "
        "even when it comes later in the file",
        case("/p/x", "b"),
        case("/e", "b"),
    )


def test_longer_template_wins_a_priority_tie_within_one_key(
    gateway: MakeGateway, origin: Origin, origin_b: Origin
) -> None:
    # Parameter mode: both templates are stored under the prefix "/u/".
    gw = gateway(
        {
            "routes": [
                route("/u/*", origin.addr, id="short-template"),
                route("/u/:id", origin_b.addr, id="long-template"),
            ]
        },
        router="radixtree_uri_with_parameter",
    )
    expect(
        gw,
        "with equal priority the longer template ('/u/:id' over '/u/*') must be tried first",
        case("/u/x", "b"),
        case("/u/x/y", "a"),
    )


def test_file_order_breaks_a_full_tie_within_one_key(
    gateway: MakeGateway, origin: Origin, origin_b: Origin
) -> None:
    first_a = gateway(
        {
            "routes": [
                route("/t/*", origin.addr, id="2"),
                route("/t/*", origin_b.addr, id="1"),
                route("/t", origin.addr, id="4"),
                route("/t", origin_b.addr, id="3"),
            ]
        }
    )
    expect(
        first_a,
        "with equal priority and template the route earlier in the file must win (not by id)",
        case("/t/x", "a"),
        case("/t", "a"),
    )
    first_b = gateway(
        {
            "routes": [
                route("/t/*", origin_b.addr, id="1"),
                route("/t/*", origin.addr, id="2"),
                route("/t", origin_b.addr, id="3"),
                route("/t", origin.addr, id="4"),
            ]
        }
    )
    expect(
        first_b,
        "with equal priority and template the route earlier in the file must win (not by id)",
        case("/t/x", "b"),
        case("/t", "b"),
    )


# -- 5. hosts -------------------------------------------------------------------------------


def test_host_bound_route_beats_host_less_route_regardless_of_priority_and_uri(
    gateway: MakeGateway, origin: Origin, origin_b: Origin
) -> None:
    gw = gateway(
        {
            "routes": [
                route("/h/x", origin.addr, id="host-less-exact", priority=100),
                route("/h/*", origin_b.addr, id="host-bound-prefix", hosts=["foo.com"]),
            ]
        }
    )
    expect(
        gw,
        "a matching host-bound route must beat a host-less one even with a less specific uri "
        "and lower priority",
        case("/h/x", "b", host="foo.com"),
        case("/h/x", "a", host="bar.com"),
        case("/h/y", NOT_FOUND, host="bar.com"),
    )


def test_wildcard_host_matches_subdomains_only(
    gateway: MakeGateway, origin: Origin, origin_b: Origin
) -> None:
    gw = gateway({"routes": [route("/w", origin.addr, hosts=["*.foo.com"])]})
    expect(
        gw,
        "'*.foo.com' is a suffix match on '.foo.com'",
        case("/w", "a", host="a.foo.com"),
        case("/w", "a", host="a.b.foo.com"),
        case("/w", NOT_FOUND, host="foo.com"),
        case("/w", NOT_FOUND, host="xfoo.com"),
        case("/w", NOT_FOUND, host="a.foo.com.evil"),
    )


def test_exact_host_beats_wildcard_host(
    gateway: MakeGateway, origin: Origin, origin_b: Origin, origin_c: Origin
) -> None:
    gw = gateway(
        {
            "routes": [
                route("/w", origin.addr, id="wild", hosts=["*.foo.com"]),
                route("/w", origin_c.addr, id="longer-wild", hosts=["*.b.foo.com"]),
                route("/w", origin_b.addr, id="exact", hosts=["a.foo.com"]),
                route("/w2", origin.addr, id="wild-w2", hosts=["*.foo.com"]),
            ]
        }
    )
    expect(
        gw,
        "an exact host must be tried before wildcards, a longer wildcard before a shorter one "
        "(file order is the opposite); a host key whose routes all fail falls through to the "
        "next host key",
        case("/w", "b", host="a.foo.com"),
        case("/w", "c", host="x.b.foo.com"),
        case("/w", "a", host="x.foo.com"),
        case("/w2", "a", host="a.foo.com"),
        case("/w2", "a", host="x.b.foo.com"),
    )


def test_host_match_is_case_insensitive_and_ignores_the_port(
    gateway: MakeGateway, origin: Origin
) -> None:
    gw = gateway(
        {
            "routes": [
                route("/c", origin.addr, id="lower", hosts=["foo.com"]),
                route("/d", origin.addr, id="mixed", host="Bar.COM"),
            ]
        }
    )
    expect(
        gw,
        "hosts compare lower-cased (route and request) and without the request's port",
        case("/c", "a", host="FOO.com"),
        case("/c", "a", host="foo.com:9999"),
        case("/c", "a", host="Foo.Com:80"),
        case("/d", "a", host="bar.com"),
        case("/d", "a", host="BAR.com:8080"),
        case("/c", "a", host="foo.com."),  # nginx's $host drops a trailing dot
        case("/c", "a", host="Foo.com.:80"),
        case("/c", NOT_FOUND, host="foo.co"),
    )


def test_route_with_several_hosts_matches_each(gateway: MakeGateway, origin: Origin) -> None:
    gw = gateway({"routes": [route("/m", origin.addr, hosts=["x.com", "y.com", "*.z.com"])]})
    expect(
        gw,
        "a route with several hosts must match any of them and nothing else",
        case("/m", "a", host="x.com"),
        case("/m", "a", host="y.com"),
        case("/m", "a", host="q.z.com"),
        case("/m", NOT_FOUND, host="w.com"),
        case("/m", NOT_FOUND, host="z.com"),
    )


def test_host_bound_route_failing_uri_or_method_falls_back_to_host_less_routes(
    gateway: MakeGateway, origin: Origin, origin_b: Origin
) -> None:
    gw = gateway(
        {
            "routes": [
                route("/*", origin.addr, id="catch-all"),
                route("/only/*", origin_b.addr, id="bound", hosts=["foo.com"], methods=["GET"]),
            ]
        }
    )
    expect(
        gw,
        "when no host-bound route matches (uri, method...), the host-less routes must be tried",
        case("/only/x", "b", host="foo.com"),
        case("/other", "a", host="foo.com"),
        case("/only/x", "a", host="foo.com", method="POST"),
        case("/only/x", "a", host="bar.com"),
    )


# -- 6. uris, methods, status ---------------------------------------------------------------


def test_uris_list_matches_each_uri(gateway: MakeGateway, origin: Origin) -> None:
    r = {"uris": ["/x", "/y/*"], "upstream": up(origin)}
    gw = gateway({"routes": [r]})
    expect(
        gw,
        "a route with 'uris' must match each of its uris (exact and prefix)",
        case("/x", "a"),
        case("/y/z", "a"),
        case("/x/z", NOT_FOUND),
        case("/y", NOT_FOUND),
        case("/z", NOT_FOUND),
    )


def test_method_mismatch_is_404_not_405(gateway: MakeGateway, origin: Origin) -> None:
    gw = gateway({"routes": [route("/m", origin.addr, methods=["POST", "PUT"])]})
    r = request(gw.url, "/m", method="GET")
    assert (r.status, r.body) == (404, NOT_FOUND_BODY), (
        f"a method no route accepts must give 404 {NOT_FOUND_BODY!r} (APISIX has no 405), "
        f"got {r.status} {r.body!r}"
    )
    expect(
        gw,
        "a route with methods must serve exactly those methods",
        case("/m", "a", method="POST"),
        case("/m", "a", method="PUT"),
        case("/m", NOT_FOUND, method="DELETE"),
    )


def test_route_without_methods_serves_every_method(gateway: MakeGateway, origin: Origin) -> None:
    gw = gateway({"routes": [route("/any", origin.addr)]})
    expect(
        gw,
        "a route without methods must accept every method",
        *(case("/any", "a", method=m) for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")),
    )


def test_status_0_disables_a_route(gateway: MakeGateway, origin: Origin, origin_b: Origin) -> None:
    gw = gateway(
        {
            "routes": [
                route("/s", origin.addr, id="off", status=0),
                route("/s2", origin.addr, id="off-with-fallback", status=0, priority=10),
                route("/s2*", origin_b.addr, id="fallback"),
                route("/s3", origin.addr, id="on", status=1),
            ]
        }
    )
    expect(
        gw,
        "a route with status 0 must not be routed at all",
        case("/s", NOT_FOUND),
        case("/s2", "b"),
        case("/s3", "a"),
    )


# -- 7. remote_addrs ------------------------------------------------------------------------


def test_remote_addrs_match_the_client_by_ip_and_cidr(gateway: MakeGateway, origin: Origin) -> None:
    gw = gateway(
        {
            "routes": [
                route("/loopback-cidr", origin.addr, remote_addrs=["127.0.0.0/8"]),
                route("/other-cidr", origin.addr, remote_addrs=["10.0.0.0/8"]),
                route("/exact-ip", origin.addr, remote_addr="127.0.0.1"),
                route("/other-ip", origin.addr, remote_addr="127.0.0.2"),
                route("/mixed", origin.addr, remote_addrs=["10.0.0.0/8", "127.0.0.1/32"]),
                route("/v6-any", origin.addr, remote_addrs=["::/0"]),
                route("/v6-loopback", origin.addr, remote_addrs=["::1"]),
            ]
        }
    )
    expect(
        gw,
        "remote_addrs must match the client 127.0.0.1 by IP or CIDR, and v6 ranges never match it",
        case("/loopback-cidr", "a"),
        case("/other-cidr", NOT_FOUND),
        case("/exact-ip", "a"),
        case("/other-ip", NOT_FOUND),
        case("/mixed", "a"),
        case("/v6-any", NOT_FOUND),
        case("/v6-loopback", NOT_FOUND),
    )


# -- 8. vars (lua-resty-expr) ---------------------------------------------------------------


def vars_gateway(gateway: MakeGateway, origin: Origin, exprs: dict[str, list[Any]]) -> Gateway:
    """One exact route ``/<name>`` per expression, all to origin "a"."""
    return gateway(
        {"routes": [route(f"/{n}", origin.addr, id=n, vars=v) for n, v in exprs.items()]}
    )


def test_vars_eq_and_ne(gateway: MakeGateway, origin: Origin) -> None:
    gw = vars_gateway(
        gateway,
        origin,
        {
            "eq": [["arg_k", "==", "v"]],
            "eqnum": [["arg_n", "==", 5]],
            "ne": [["arg_k", "~=", "v"]],
        },
    )
    expect(
        gw,
        "'==' / '~=' (a number operand compares the variable as a number; absent ~= x is true)",
        case("/eq?k=v", "a"),
        case("/eq?k=w", NOT_FOUND),
        case("/eq?k=vv", NOT_FOUND),
        case("/eq", NOT_FOUND),
        case("/eqnum?n=5", "a"),
        case("/eqnum?n=5.0", "a"),
        case("/eqnum?n=6", NOT_FOUND),
        case("/eqnum?n=five", NOT_FOUND),
        case("/ne?k=w", "a"),
        case("/ne?k=v", NOT_FOUND),
        case("/ne", "a"),
    )


def test_vars_numeric_comparisons(gateway: MakeGateway, origin: Origin) -> None:
    gw = vars_gateway(
        gateway,
        origin,
        {
            "gt": [["arg_n", ">", 10]],
            "ge": [["arg_n", ">=", 10]],
            "lt": [["arg_n", "<", 10]],
            "le": [["arg_n", "<=", "10"]],
        },
    )
    expect(
        gw,
        "'>' '>=' '<' '<=' compare as numbers (9 < 10, not as strings); non-numbers never match",
        case("/gt?n=11", "a"),
        case("/gt?n=10.5", "a"),
        case("/gt?n=10", NOT_FOUND),
        case("/gt?n=9", NOT_FOUND),
        case("/gt?n=abc", NOT_FOUND),
        case("/gt", NOT_FOUND),
        case("/ge?n=10", "a"),
        case("/ge?n=100", "a"),
        case("/ge?n=9.99", NOT_FOUND),
        case("/lt?n=9", "a"),
        case("/lt?n=-1", "a"),
        case("/lt?n=10", NOT_FOUND),
        case("/lt?n=100", NOT_FOUND),
        case("/lt?n=x", NOT_FOUND),
        case("/le?n=10", "a"),
        case("/le?n=9", "a"),
        case("/le?n=11", NOT_FOUND),
    )


def test_vars_regex_operators(gateway: MakeGateway, origin: Origin) -> None:
    gw = vars_gateway(
        gateway,
        origin,
        {
            "re": [["http_x_name", "~~", "^abc[0-9]+$"]],
            "search": [["http_user_agent", "~~", "curl"]],
            "rei": [["http_x_name", "~*", "^abc[0-9]+$"]],
        },
    )
    expect(
        gw,
        "'~~' is a case-sensitive regex search, '~*' a case-insensitive one; absent never matches",
        case("/re", "a", headers={"X-Name": "abc12"}),
        case("/re", NOT_FOUND, headers={"X-Name": "ABC12"}),
        case("/re", NOT_FOUND, headers={"X-Name": "abc12x"}),
        case("/re", NOT_FOUND),
        case("/search", "a", headers={"User-Agent": "my curl/8.0"}),
        case("/search", NOT_FOUND, headers={"User-Agent": "wget"}),
        case("/rei", "a", headers={"X-Name": "ABC12"}),
        case("/rei", "a", headers={"X-Name": "abc3"}),
        case("/rei", NOT_FOUND, headers={"X-Name": "ABC"}),
    )


def test_vars_in(gateway: MakeGateway, origin: Origin) -> None:
    gw = vars_gateway(gateway, origin, {"in": [["arg_k", "in", ["a", "b"]]]})
    expect(
        gw,
        "'in' tests membership of the variable's value in the given list",
        case("/in?k=a", "a"),
        case("/in?k=b", "a"),
        case("/in?k=c", NOT_FOUND),
        case("/in?k=ab", NOT_FOUND),
        case("/in", NOT_FOUND),
    )


def test_vars_has_never_matches_a_string_variable(gateway: MakeGateway, origin: Origin) -> None:
    # lua-resty-expr's has_element returns false unless the variable is a Lua table; request
    # headers and args are strings, so 'has' is false for them (no comma splitting), as in
    # pygateway.config.expr.
    gw = vars_gateway(
        gateway,
        origin,
        {
            "has": [["http_x_list", "has", "a"]],
            "nothas": [["http_x_list", "!", "has", "a"]],
        },
    )
    expect(
        gw,
        "'has' needs a list-valued variable, so it never matches a header string "
        "(and '! has' always does)",
        case("/has", NOT_FOUND, headers={"X-List": "a"}),
        case("/has", NOT_FOUND, headers={"X-List": "a,b"}),
        case("/nothas", "a", headers={"X-List": "a"}),
        case("/nothas", "a", headers={"X-List": "a, b"}),
    )


def test_vars_negation(gateway: MakeGateway, origin: Origin) -> None:
    gw = vars_gateway(
        gateway,
        origin,
        {
            "noteq": [["arg_k", "!", "==", "v"]],
            "notin": [["arg_k", "!", "in", ["a", "b"]]],
            "notre": [["uri", "!", "~~", "x$"]],
        },
    )
    expect(
        gw,
        "'!' negates the operator that follows it (an absent variable satisfies '! ==')",
        case("/noteq?k=w", "a"),
        case("/noteq", "a"),
        case("/noteq?k=v", NOT_FOUND),
        case("/notin?k=c", "a"),
        case("/notin?k=a", NOT_FOUND),
        case("/notre", "a"),
    )


def test_vars_ipmatch(gateway: MakeGateway, origin: Origin) -> None:
    gw = vars_gateway(
        gateway,
        origin,
        {
            "local": [["remote_addr", "ipmatch", ["127.0.0.0/8"]]],
            "ten": [["remote_addr", "ipmatch", "10.0.0.0/8"]],
            "header": [["http_x_ip", "ipmatch", ["192.168.0.0/16", "::1"]]],
        },
    )
    expect(
        gw,
        "'ipmatch' tests an address variable against IPs/CIDRs (list or single string)",
        case("/local", "a"),
        case("/ten", NOT_FOUND),
        case("/header", "a", headers={"X-Ip": "192.168.3.4"}),
        case("/header", "a", headers={"X-Ip": "::1"}),
        case("/header", NOT_FOUND, headers={"X-Ip": "192.169.0.1"}),
        case("/header", NOT_FOUND, headers={"X-Ip": "not-an-ip"}),
        case("/header", NOT_FOUND),
    )


def test_vars_two_element_shorthand_means_eq(gateway: MakeGateway, origin: Origin) -> None:
    gw = vars_gateway(
        gateway,
        origin,
        {
            "short": [["arg_k", "v"]],
            "shorthdr": [["http_x_k", "yes"]],
        },
    )
    expect(
        gw,
        "[var, value] is short for [var, '==', value]",
        case("/short?k=v", "a"),
        case("/short?k=w", NOT_FOUND),
        case("/short", NOT_FOUND),
        case("/shorthdr", "a", headers={"X-K": "yes"}),
        case("/shorthdr", NOT_FOUND, headers={"X-K": "no"}),
    )


def test_vars_logical_operators_nest(gateway: MakeGateway, origin: Origin) -> None:
    a1, b1, c1 = ["arg_a", "==", "1"], ["arg_b", "==", "1"], ["arg_c", "==", "1"]
    gw = vars_gateway(
        gateway,
        origin,
        {
            "implicit": [a1, b1],
            "and": ["AND", a1, b1],
            "or": ["OR", a1, ["AND", b1, c1]],
            "notand": ["!AND", a1, b1],
            "notor": ["!OR", a1, b1],
            "deep": ["AND", ["OR", a1, b1], ["!OR", c1, ["arg_d", "==", "1"]]],
        },
    )
    expect(
        gw,
        "a list of leaves is an AND; 'AND'/'OR'/'!AND'/'!OR' heads combine and nest",
        case("/implicit?a=1&b=1", "a"),
        case("/implicit?a=1", NOT_FOUND),
        case("/and?a=1&b=1", "a"),
        case("/and?b=1", NOT_FOUND),
        case("/or?a=1", "a"),
        case("/or?b=1&c=1", "a"),
        case("/or?b=1", NOT_FOUND),
        case("/or", NOT_FOUND),
        case("/notand?a=1", "a"),
        case("/notand", "a"),
        case("/notand?a=1&b=1", NOT_FOUND),
        case("/notor", "a"),
        case("/notor?b=1", NOT_FOUND),
        case("/deep?a=1", "a"),
        case("/deep?b=1&c=1", NOT_FOUND),
        case("/deep?b=1&d=1", NOT_FOUND),
        case("/deep", NOT_FOUND),
    )


def test_vars_eq_null_matches_an_absent_variable(gateway: MakeGateway, origin: Origin) -> None:
    gw = vars_gateway(
        gateway,
        origin,
        {
            "nohdr": [["http_x_debug", "==", None]],
            "noarg": [["arg_debug", "==", None]],
        },
    )
    expect(
        gw,
        "['http_x', '==', null] matches only when the variable is absent",
        case("/nohdr", "a"),
        case("/nohdr", NOT_FOUND, headers={"X-Debug": "1"}),
        case("/noarg", "a"),
        case("/noarg?other=1", "a"),
        case("/noarg?debug=1", NOT_FOUND),
    )


def test_vars_read_args_headers_cookies_uri_host_and_remote_addr(
    gateway: MakeGateway, origin: Origin
) -> None:
    gw = vars_gateway(
        gateway,
        origin,
        {
            "arg": [["arg_user", "==", "tom"]],
            "hdr": [["http_x_api_key", "==", "k1"]],
            "cookie": [["cookie_session", "==", "abc"]],
            "uri": [["uri", "==", "/uri"]],
            "host": [["host", "==", "foo.com"]],
            "addr": [["remote_addr", "==", "127.0.0.1"]],
        },
    )
    expect(
        gw,
        "vars must read arg_*, http_* (dashes as '_'), cookie_*, uri, host (lower-case, no port) "
        "and remote_addr",
        case("/arg?x=1&user=tom", "a"),
        case("/arg?user=tommy", NOT_FOUND),
        case("/hdr", "a", headers={"X-Api-Key": "k1"}),
        case("/hdr", NOT_FOUND, headers={"X-Api-Key": "k2"}),
        case("/cookie", "a", headers={"Cookie": "a=1; session=abc; b=2"}),
        case("/cookie", NOT_FOUND, headers={"Cookie": "session=abcd"}),
        case("/cookie", NOT_FOUND, headers={"Cookie": "xsession=abc"}),
        case("/uri", "a"),
        case("/uri?q=1", "a"),
        case("/host", "a", host="FOO.com:8080"),
        case("/host", NOT_FOUND, host="bar.com"),
        case("/addr", "a"),
    )


def test_vars_uri_is_the_canonical_path(gateway: MakeGateway, origin: Origin) -> None:
    gw = gateway({"routes": [route("/re/*", origin.addr, vars=[["uri", "~~", "^/re/[0-9]+$"]])]})
    expect(
        gw,
        "the 'uri' variable is the canonical path without the query",
        case("/re/123", "a"),
        case("/re/123?x=y", "a"),
        case("/re/x/../456", "a"),
        case("/re/12a", NOT_FOUND),
    )


# -- 9. services ----------------------------------------------------------------------------


def test_route_inherits_service_hosts_and_upstream(
    gateway: MakeGateway, origin: Origin, origin_b: Origin, origin_c: Origin
) -> None:
    gw = gateway(
        {
            "upstreams": [{"id": "u-c", "nodes": {origin_c.addr: 1}}],
            "services": [{"id": "s1", "hosts": ["svc.com"], "upstream": up(origin_b)}],
            "routes": [
                {"id": "host-less", "uri": "/svc/*", "priority": 100, "upstream": up(origin)},
                {"id": "inherits", "uri": "/svc/*", "service_id": "s1"},
                {"id": "own-up", "uri": "/own/*", "service_id": "s1", "upstream": up(origin)},
                {"id": "own-up-id", "uri": "/uid/*", "service_id": "s1", "upstream_id": "u-c"},
                {"id": "own-host", "uri": "/oh/*", "service_id": "s1", "hosts": ["own.com"]},
            ],
        }
    )
    expect(
        gw,
        "a route with service_id matches on the service's hosts (unless it has its own) and "
        "proxies to the service upstream unless it has its own upstream/upstream_id",
        case("/svc/x", "b", host="svc.com"),
        case("/svc/x", "b", host="SVC.com:81"),
        case("/svc/x", "a", host="other.com"),
        case("/own/x", "a", host="svc.com"),
        case("/own/x", NOT_FOUND, host="other.com"),
        case("/uid/x", "c", host="svc.com"),
        case("/oh/x", "b", host="own.com"),
        case("/oh/x", NOT_FOUND, host="svc.com"),
    )


# -- 10. parameter mode ---------------------------------------------------------------------


def test_param_mode_colon_matches_exactly_one_segment(gateway: MakeGateway, origin: Origin) -> None:
    gw = gateway(
        {"routes": [route("/user/:name", origin.addr)]}, router="radixtree_uri_with_parameter"
    )
    expect(
        gw,
        "'/user/:name' must match one non-empty segment after /user/",
        case("/user/tom", "a"),
        case("/user/tom.jones", "a"),
        case("/user/tom/x", NOT_FOUND),
        case("/user/", NOT_FOUND),
        case("/user", NOT_FOUND),
        case("/users/tom", NOT_FOUND),
    )


def test_param_mode_star_name_matches_the_rest(gateway: MakeGateway, origin: Origin) -> None:
    gw = gateway(
        {
            "routes": [
                route("/files/*path", origin.addr),
                route("/org/:org/repo/:repo", origin.addr),
            ]
        },
        router="radixtree_uri_with_parameter",
    )
    expect(
        gw,
        "'/files/*path' must match everything under /files/; params in the middle must match",
        case("/files/a", "a"),
        case("/files/a/b/c.txt", "a"),
        case("/files/", "a"),
        case("/files", NOT_FOUND),
        case("/org/o/repo/r", "a"),
        case("/org/o/repo/r/x", NOT_FOUND),
        case("/org/o/x/r", NOT_FOUND),
    )


def test_param_mode_keeps_exact_and_longest_prefix_rules(
    gateway: MakeGateway, origin: Origin, origin_b: Origin, origin_c: Origin
) -> None:
    gw = gateway(
        {
            "routes": [
                route("/user/:name", origin.addr, priority=100),
                route("/user/me", origin_b.addr),
                route("/*", origin_c.addr),
                route("/user/admin/*", origin_b.addr),
            ]
        },
        router="radixtree_uri_with_parameter",
    )
    expect(
        gw,
        "in parameter mode an exact uri still beats a param route; a param route failing its "
        "pattern falls through to shorter prefixes",
        case("/user/me", "b"),
        case("/user/tom", "a"),
        case("/user/admin/x", "b"),
        case("/user/tom/x", "c"),
        case("/users", "c"),
    )


# -- 11. Lua-only fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("filter_func", "function(vars) return vars['arg_x'] == '1' end"),
        ("script", "local _M = {} return _M"),
    ],
    ids=["filter_func", "script"],
)
def test_lua_only_route_fields_are_refused_at_load(
    gateway: MakeGateway, origin: Origin, field: str, value: str
) -> None:
    config = {"routes": [route("/lua", origin.addr, id="lua-route", **{field: value})]}
    with pytest.raises(ConfigError) as info:
        gateway(config)
    text = str(info.value)
    assert "lua-route" in text and field in text, (
        f"the ConfigError for a route with {field!r} must name the route id and the field, "
        f"got: {text!r}"
    )


# -- 12. canonical paths --------------------------------------------------------------------


def test_paths_are_routed_in_canonical_form(
    gateway: MakeGateway, origin: Origin, origin_b: Origin
) -> None:
    gw = gateway(
        {
            "routes": [
                route("/b", origin.addr, id="b"),
                route("/a/*", origin_b.addr, id="a-prefix"),
            ]
        }
    )
    expect(
        gw,
        "the router must see the canonical path (dot segments resolved, slashes merged, "
        "percent-escapes decoded)",
        case("/a/../b", "a"),
        case("//b", "a"),
        case("/a//../b", "a"),
        case("/./b", "a"),
        case("/a/%2e%2e/b", "a"),
        case("/a/%2E%2E/b", "a"),
        case("/%62", "a"),
        case("/a/./x", "b"),
        case("/a/x/../y", "b"),
        case("/a/..", NOT_FOUND),
    )


@pytest.mark.parametrize("path", ["/../b", "/a/../../b", "/a/%2e%2e/%2e%2e/b", "/%2e%2e/b"])
def test_dot_dot_above_root_is_400(gateway: MakeGateway, origin: Origin, path: str) -> None:
    gw = gateway({"routes": [route("/*", origin.addr)]})
    before = origin.requests
    r = request(gw.url, path)
    assert r.status == 400, (
        f"{path!r} climbs above the root and must be refused with 400, got {r.status} {r.body!r}"
    )
    assert origin.requests == before, f"{path!r} must not reach the origin"
