"""Proxy behaviour end to end: headers, streaming, keep-alive, failures, retries, balancing."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter

import pytest
from conftest import raw, request, route
from origin import free_port


def test_no_route_is_404_with_apisix_body(gateway, origin):
    gw = gateway({"routes": [route("/only", origin.addr)]})
    r = request(gw.url, "/elsewhere")
    assert r.status == 404
    assert r.body == b'{"error_msg":"404 Route Not Found"}\n'


def test_proxies_method_path_query_and_body(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    r = request(gw.url, "/x/y?a=1&b=%20", method="POST", body=b"payload")
    assert r.status == 200
    echo = r.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/x/y?a=1&b=%20", "the request target must reach the origin as sent"
    assert echo["body"] == "payload"
    assert r.headers["server"].startswith("pygateway/")


def test_a_fragment_in_the_target_is_dropped_as_nginx_does(gateway, origin):
    gw = gateway({"routes": [route("/exact", origin.addr)]})
    reply = raw(gw.url, b"GET /exact?a=1#frag HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:100]
    assert b'"path": "/exact?a=1"' in reply


def test_forwarded_headers_set_and_client_xff_ignored_from_untrusted_peer(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    port = gw.addresses[0].rpartition(":")[2]
    r = request(
        gw.url,
        "/",
        headers={
            "Host": "example.test",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
        },
    )
    h = r.json()["headers"]
    assert h["x-forwarded-for"] == "127.0.0.1", "a client's own X-Forwarded-For must not be trusted"
    assert h["x-real-ip"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "example.test"
    assert h["x-forwarded-port"] == port


def test_forwarded_port_from_host_and_forwarded_header_only_from_trusted_peers(gateway, origin):
    # APISIX: X-Forwarded-Port is the Host header's port, else the listener's; a client's
    # RFC 7239 Forwarded header is cleared unless the peer is trusted.
    forged = {"Forwarded": "for=6.6.6.6;proto=https"}
    gw = gateway({"routes": [route("/*", origin.addr)]})
    h = request(gw.url, "/", headers={"Host": "example.test:8443", **forged}).json()["headers"]
    assert h["x-forwarded-port"] == "8443"
    assert h["x-forwarded-host"] == "example.test:8443"
    assert "forwarded" not in h, "an untrusted client's Forwarded header reached the upstream"
    h = request(gw.url, "/", headers={"Host": "[::1]"}).json()["headers"]
    assert h["x-forwarded-port"] == gw.addresses[0].rpartition(":")[2]
    trusting = gateway({"routes": [route("/*", origin.addr)]}, trusted_addresses=["127.0.0.0/8"])
    h = request(trusting.url, "/", headers=forged).json()["headers"]
    assert h["forwarded"] == "for=6.6.6.6;proto=https"


def test_untrusted_forwarding_claims_are_hidden_from_route_vars(gateway, origin, origin_b):
    # APISIX drops an untrusted peer's X-Forwarded-For (and overwrites X-Forwarded-Proto)
    # before routing: a client cannot steer a route (or a plugin) with them.
    claims = {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"}
    steered = [
        route("/*", origin_b.addr, id=name, priority=1, vars=[[f"http_{var}", "==", value]])
        for name, value in claims.items()
        for var in [name.lower().replace("-", "_")]
    ]
    config = {"routes": [*steered, route("/*", origin.addr, id="fallback")]}
    for claim in ({k: v} for k, v in claims.items()):
        untrusting = gateway(config)
        assert request(untrusting.url, "/", headers=claim).json()["origin"] == origin.name
        trusting = gateway(config, trusted_addresses=["127.0.0.0/8"])
        assert request(trusting.url, "/", headers=claim).json()["origin"] == origin_b.name


def test_xff_appended_and_client_taken_from_trusted_proxy(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]}, trusted_addresses=["127.0.0.0/8"])
    r = request(gw.url, "/", headers={"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"})
    h = r.json()["headers"]
    assert h["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
    assert h["x-real-ip"] == "1.2.3.4"
    assert h["x-forwarded-proto"] == "https"


def test_hop_by_hop_headers_removed_both_ways(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    r = request(
        gw.url,
        "/",
        headers={
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "secret",
            "Keep-Alive": "timeout=1",
            "TE": "trailers",
            "Proxy-Authorization": "Basic eA==",
            "X-Keep": "yes",
        },
    )
    h = r.json()["headers"]
    for name in ("x-drop-me", "keep-alive", "te", "proxy-authorization"):
        assert name not in h, f"hop-by-hop header {name} reached the upstream"
    assert h["x-keep"] == "yes"
    assert "keep-alive" not in r.headers, "the upstream's Keep-Alive reached the client"


@pytest.mark.parametrize(
    ("pass_host", "extra", "expected"),
    [
        ("pass", {}, "client.test"),
        ("node", {}, "127.0.0.1:{port}"),
        ("rewrite", {"upstream_host": "rewritten.test"}, "rewritten.test"),
    ],
)
def test_pass_host(gateway, origin, pass_host, extra, expected):
    up = {"nodes": {origin.addr: 1}, "pass_host": pass_host, **extra}
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]})
    r = request(gw.url, "/", headers={"Host": "client.test"})
    assert r.json()["headers"]["host"] == expected.format(port=origin.port)


def test_response_body_streams_chunk_by_chunk(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    host, _, port = gw.addresses[0].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /stream/8 HTTP/1.1\r\nHost: t\r\n\r\n")
        start = time.monotonic()
        data = b""
        first_at = None
        while not data.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if first_at is None and b"chunk 0" in data:
                first_at = time.monotonic() - start
        total = time.monotonic() - start
    assert first_at is not None, data
    assert first_at < total / 2, f"first chunk after {first_at:.2f}s of {total:.2f}s: buffered"
    assert b"chunk 7" in data


def test_request_body_streams_without_buffering(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    big = bytes(range(256)) * 8192  # 2 MiB

    def body():
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    host, _, port = gw.addresses[0].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/echo", body=body(), encode_chunked=True)
    r = conn.getresponse()
    echo = r.read()
    conn.close()
    import json

    got = json.loads(echo)
    assert got["headers"].get("transfer-encoding") == "chunked", "body was buffered into a length"
    assert got["body"].encode("latin-1") == big


def test_a_small_chunked_body_reaches_the_upstream_with_a_length(gateway, origin):
    # nginx (proxy_request_buffering on, APISIX's default) reads a chunked body whole and
    # sends a Content-Length: upstreams that cannot read chunked requests keep working.
    gw = gateway({"routes": [route("/*", origin.addr)]})
    pieces = [b"a" * 10000, b"b" * 10000, b"c" * 7]
    host, _, port = gw.addresses[0].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/echo", body=iter(pieces), encode_chunked=True)
    r = conn.getresponse()
    got = json.loads(r.read())
    conn.close()
    assert r.status == 200
    assert "transfer-encoding" not in got["headers"]
    assert got["headers"]["content-length"] == "20007"
    assert got["body"].encode("latin-1") == b"".join(pieces)


def test_upstream_connections_are_reused(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]}, workers=1)
    for _ in range(30):
        assert request(gw.url, "/").status == 200
    assert len(origin.connections) <= 2, f"{len(origin.connections)} upstream connections for 30"


def test_upstream_connection_close_is_handled(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]}, workers=1)
    for _ in range(5):
        assert request(gw.url, "/close").status == 200
        assert request(gw.url, "/").status == 200


def test_connect_refused_is_502(gateway):
    gw = gateway({"routes": [route("/*", f"127.0.0.1:{free_port()}")]})
    r = request(gw.url, "/")
    assert r.status == 502
    assert b"502 Bad Gateway" in r.body


def test_read_timeout_is_504(gateway, blackhole):
    up = {"nodes": {blackhole.addr: 1}, "timeout": {"connect": 1, "send": 1, "read": 0.3}}
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]})
    t0 = time.monotonic()
    r = request(gw.url, "/")
    assert r.status == 504
    assert time.monotonic() - t0 < 3
    assert b"<title>504 Gateway Time-out</title>" in r.body, "nginx's wording"
    assert r.headers["content-type"] == "text/html"


def test_no_upstream_or_no_node_is_503_as_apisix(gateway):
    # APISIX: "missing upstream configuration in Route or Service" and "no valid upstream
    # node" both end in core.response.exit(503).
    gw = gateway(
        {
            "routes": [
                {"id": "bare", "uri": "/bare", "plugins": {}},
                {"id": "empty", "uri": "/empty", "upstream": {"nodes": {}}},
                {"id": "empty-list", "uri": "/empty-list", "upstream": {"nodes": []}},
            ]
        }
    )
    for path in ("/bare", "/empty", "/empty-list"):
        r = request(gw.url, path)
        assert r.status == 503, (path, r.status)
        assert b"503 Service Temporarily Unavailable" in r.body


def test_nginx_only_response_headers_are_not_relayed(gateway, origin):
    # nginx's default proxy_hide_header: X-Pad and X-Accel-{Expires,Redirect,Limit-Rate,
    # Buffering,Charset}; other X-Accel-* names pass.
    gw = gateway({"routes": [route("/*", origin.addr)]})
    h = request(gw.url, "/accel").headers
    for name in ("x-accel-buffering", "x-accel-redirect", "x-pad"):
        assert name not in h, name
    assert h["x-accel-custom"] == "relayed"


def test_trace_is_refused_with_405_before_routing(gateway, origin):
    # nginx answers TRACE itself ("client sent TRACE method"); nothing reaches the upstream.
    gw = gateway({"routes": [route("/*", origin.addr)]})
    before = origin.requests
    r = request(gw.url, "/anything", method="TRACE")
    assert r.status == 405
    assert b"<title>405 Not Allowed</title>" in r.body
    assert origin.requests == before
    assert request(gw.url, "/anything").status == 200


def test_route_timeout_overrides_upstream_timeout(gateway, origin):
    up = {"nodes": {origin.addr: 1}, "timeout": {"connect": 1, "send": 1, "read": 5}}
    gw = gateway(
        {
            "routes": [
                {
                    "uri": "/sleep/*",
                    "upstream": up,
                    "timeout": {"connect": 1, "send": 1, "read": 0.2},
                }
            ]
        }
    )
    assert request(gw.url, "/sleep/1").status == 504


def test_reset_before_headers_is_502(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    assert request(gw.url, "/reset-before-headers").status == 502
    assert request(gw.url, "/").status == 200, "the gateway must keep serving"


def test_reset_mid_body_aborts_client_connection(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    host, _, port = gw.addresses[0].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/reset-mid-body")
    r = conn.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead):
        r.read()
    conn.close()


def test_upstream_5xx_is_passed_with_status_header(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    r = request(gw.url, "/status/503")
    assert r.status == 503
    assert r.headers["x-apisix-upstream-status"] == "503"
    assert "x-apisix-upstream-status" not in request(gw.url, "/status/404").headers


def test_retry_moves_to_next_node(gateway, origin):
    dead = f"127.0.0.1:{free_port()}"
    gw = gateway({"routes": [route("/*", dead, origin.addr)]})
    for _ in range(6):
        r = request(gw.url, "/")
        assert r.status == 200, "default retries (nodes-1) must reach the live node"
        assert "x-apisix-upstream-status" not in r.headers, "a retry that succeeded shows none"


def test_upstream_status_header_lists_every_failed_try(gateway, blackhole):
    # APISIX sets X-APISIX-Upstream-Status to nginx's $upstream_status when the last try is
    # a 5xx, the gateway's own 502/504 included (t/node/upstream-status-5xx.t).
    dead = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    up = {"nodes": {d: 1 for d in dead}, "retries": 2}
    slow = {"nodes": {blackhole.addr: 1}, "timeout": {"connect": 1, "send": 1, "read": 0.3}}
    gw = gateway(
        {
            "routes": [
                {"uri": "/dead", "upstream": up},
                {"uri": "/slow", "upstream": slow},
            ]
        }
    )
    r = request(gw.url, "/dead")
    assert (r.status, r.headers.get("x-apisix-upstream-status")) == (502, "502, 502, 502")
    r = request(gw.url, "/slow")
    assert (r.status, r.headers.get("x-apisix-upstream-status")) == (504, "504")


def test_retries_zero_disables_retry(gateway, origin):
    dead = f"127.0.0.1:{free_port()}"
    up = {"nodes": {dead: 1, origin.addr: 1}, "retries": 0}
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]})
    statuses = Counter(request(gw.url, "/").status for _ in range(6))
    assert statuses[502] >= 2 and statuses[200] >= 2, statuses


def test_bodyless_request_retried_after_reset(gateway, origin, origin_b):
    # node a resets before headers on this path; b answers normally
    gw = gateway({"routes": [route("/*", origin.addr, origin_b.addr)]})
    for _ in range(4):
        r = request(gw.url, "/reset-before-headers")
        assert r.status in (200, 502)
    # both nodes reset on that path: all tries fail → 502, never a hang
    assert request(gw.url, "/reset-before-headers").status == 502


def _resets_first_connection() -> tuple[str, threading.Thread, socket.socket]:
    """A node that resets its first connection before any response byte, then answers 200
    on the next one: (its address, its thread, its socket)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve() -> None:
        first, _ = srv.accept()
        first.recv(65536)
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        first.close()
        second, _ = srv.accept()
        second.recv(65536)
        second.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        second.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return f"127.0.0.1:{srv.getsockname()[1]}", t, srv


@pytest.mark.parametrize("retries", [1, 0])
def test_a_lone_node_is_retried_when_retries_allow(gateway, retries):
    # APISIX's balancer hands a single-node upstream's node back on every try.
    addr, t, srv = _resets_first_connection()
    up = {"nodes": {addr: 1}, "retries": retries}
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]}, workers=1)
    r = request(gw.url, "/")
    if retries:
        assert (r.status, r.body) == (200, b"ok"), "the lone node was not tried again"
    else:
        assert r.status == 502, "retries 0 must not retry"
    srv.close()
    t.join(1)


def test_retry_timeout_stops_retries(gateway, blackhole, origin):
    up = {
        "nodes": {blackhole.addr: 100, origin.addr: 1},
        "timeout": {"connect": 1, "send": 1, "read": 0.5},
        "retry_timeout": 0.1,
    }
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]})
    # APISIX answers a retry past retry_timeout with 502 ("proxy retry timeout")
    assert request(gw.url, "/").status == 502, "past retry_timeout the gateway must not retry"


def test_weighted_round_robin(gateway, origin, origin_b):
    up = {"nodes": {origin.addr: 3, origin_b.addr: 1}}
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]})
    seen = Counter(request(gw.url, "/").json()["origin"] for _ in range(40))
    assert seen == Counter({"a": 30, "b": 10}), seen


def test_node_array_form_and_priority_fallback(gateway, origin, origin_b):
    dead = free_port()
    up = {
        "nodes": [
            {"host": "127.0.0.1", "port": dead, "weight": 1, "priority": 10},
            {"host": "127.0.0.1", "port": origin_b.port, "weight": 1, "priority": 0},
        ]
    }
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]})
    assert request(gw.url, "/").json()["origin"] == "b"


def test_named_upstream_and_domain_node(gateway, origin):
    gw = gateway(
        {
            "upstreams": [{"id": "u1", "nodes": {f"localhost:{origin.port}": 1}}],
            "routes": [{"uri": "/*", "upstream_id": "u1"}],
        }
    )
    assert request(gw.url, "/").status == 200


def test_upstream_reason_phrases_are_relayed_as_nginx_does(gateway, origin):
    rewrite = {"response-rewrite": {"status_code": 598}}
    gw = gateway(
        {
            "routes": [
                route("/reason/*", origin.addr),
                route("/status/*", origin.addr),
                route("/rewritten/*", origin.addr, plugins=rewrite),
            ]
        }
    )

    def status_line(path: str) -> bytes:
        reply = raw(gw.url, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        return reply.split(b"\r\n", 1)[0]

    assert status_line("/reason/200/Fine") == b"HTTP/1.1 200 Fine"
    assert status_line("/reason/520/Origin%20Error") == b"HTTP/1.1 520 Origin Error"
    assert status_line("/reason/404/Not%20Found") == b"HTTP/1.1 404 Not Found"
    assert status_line("/status/599") == b"HTTP/1.1 599 "  # http.server has no phrase: none
    assert status_line("/rewritten/x") == b"HTTP/1.1 598 "  # not the upstream's for its 200
    assert status_line("/status/418") == b"HTTP/1.1 418 I'm a Teapot"  # the origin's phrase


def test_head_request(gateway, origin):
    mock = {"mocking": {"response_example": "hello", "content_type": "text/plain"}}
    gw = gateway({"routes": [route("/o/*", origin.addr), route("/m", plugins=mock)]})
    r = request(gw.url, "/o/", method="HEAD")
    assert r.status == 200 and r.body == b""
    assert request(gw.url, "/o/").status == 200
    # The gateway's own answers to HEAD are heads alone, or the next response on the
    # connection would start with their body.
    pipelined = (
        b"".join(f"HEAD {p} HTTP/1.1\r\nHost: a\r\n\r\n".encode() for p in ("/m", "/nomatch"))
        + b"GET /m HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    reply = raw(gw.url, pipelined)
    assert reply.count(b"HTTP/1.1 200") == 2 and b"HTTP/1.1 404" in reply, reply
    assert reply.endswith(b"\r\n\r\nhello") and b"Route Not Found" not in reply, reply
    assert reply.lower().count(b"content-length: 5") == 2


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host on HTTP/1.1
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n", b"400"),  # an empty label (nginx)
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", b"400"),  # not in an HTTP/1 request line
        (b"TRACE / HTTP/2.0\r\nHost: a\r\n\r\n", b"400"),  # the head before the method
        (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: .a\r\n\r\n", b"200"),  # nginx takes a leading dot
        (b"GET /\r\n\r\n", b"400"),  # HTTP/0.9
        (b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", b"400"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            b"400",
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", b"400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", b"400"),
        # nginx: 501 for a coding besides chunked (it would be dropped on the way upstream)
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"501",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        (b"GET /../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n", b"400"),
        (b"GET /a%00b HTTP/1.1\r\nHost: a\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 500_000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-H: v\r\n" * 100 + b"\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-H: v\r\n" * 89 + b"\r\n", b"200"),
    ],
)
def test_malformed_requests_get_4xx_and_gateway_survives(gateway, origin, payload, status):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    reply = raw(gw.url, payload)
    assert reply.startswith((b"HTTP/1.1 " + status, b"HTTP/1.0 " + status)), reply[:200]
    assert request(gw.url, "/").status == 200


def test_smuggled_request_behind_te_and_cl_is_not_a_second_request(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    smuggle = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    raw(gw.url, smuggle, timeout=2)
    assert origin.requests <= 1, "a request hidden in the body reached the origin"


def test_stop_closes_idle_keepalive_connections_without_waiting_for_drain(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    host, _, port = gw.addresses[0].rpartition(":")
    idle = http.client.HTTPConnection(host, int(port), timeout=5)
    idle.request("GET", "/")
    assert idle.getresponse().read()
    t0 = time.monotonic()
    gw.stop(drain_timeout=10)
    assert time.monotonic() - t0 < 2, "an idle keep-alive connection held the drain"
    idle.close()


def test_timeout_after_the_body_went_out_is_not_retried(gateway, blackhole, origin_b):
    # node a reads nothing and never answers; a retry would send b a POST without its body
    up = {
        "nodes": [
            {"host": "127.0.0.1", "port": blackhole.port, "weight": 1, "priority": 1},
            {"host": "127.0.0.1", "port": origin_b.port, "weight": 1, "priority": 0},
        ],
        "retries": 1,
        "timeout": {"connect": 1, "send": 1, "read": 0.5},
    }
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]})
    r = request(gw.url, "/x", method="POST", body=b"hello world")
    assert r.status == 504
    assert origin_b.requests == 0, "a request whose body was consumed was sent again"
    # a bodyless GET that timed out is still retried on the next node
    assert request(gw.url, "/x").status == 200


def test_client_stalling_its_body_gets_408(gateway, origin):
    up = {"nodes": {origin.addr: 1}, "timeout": {"connect": 1, "send": 1, "read": 0.5}}
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]})
    t0 = time.monotonic()
    reply = raw(
        gw.url, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhello", timeout=5
    )
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    assert time.monotonic() - t0 < 3


def test_reset_on_a_reused_connection_is_retried_on_a_fresh_one(gateway):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def serve() -> None:
        first, _ = srv.accept()
        first.recv(65536)
        first.sendall(ok)  # keep-alive
        first.recv(65536)  # the second request on the same connection: reset it
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        first.close()
        second, _ = srv.accept()
        second.recv(65536)
        second.sendall(ok)
        second.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    gw = gateway({"routes": [route("/*", f"127.0.0.1:{port}")]}, workers=1)
    assert request(gw.url, "/").body == b"ok"
    assert request(gw.url, "/").body == b"ok", "a stale keep-alive reset reached the client"
    t.join(5)
    srv.close()


def test_ipv6_listener_and_ipv6_node(gateway):
    import http.server

    class Echo(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = self.headers.get("Host", "").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class V6(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    try:
        srv = V6(("::1", 0), Echo)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    up = {"nodes": {f"[::1]:{port}": 1}, "pass_host": "node"}
    gw = gateway({"routes": [{"uri": "/*", "upstream": up}]}, listen=["[::1]:0"])
    assert gw.addresses[0].startswith("[::1]:")
    r = request(gw.url, "/")
    assert (r.status, r.body) == (200, f"[::1]:{port}".encode())
    srv.shutdown()
    srv.server_close()
