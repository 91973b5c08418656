"""What the gateway does with odd or hostile upstream responses (its HTTP/1.1 client side)."""

from __future__ import annotations

import http.client

import pytest
from conftest import request, route
from origin import Scripted


@pytest.fixture
def scripted():
    made: list[Scripted] = []

    def make(response: bytes, close: bool = True) -> Scripted:
        s = Scripted(response, close)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_chunked_response_with_trailers_is_relayed(gateway, scripted):
    up = scripted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        close=False,
    )
    gw = gateway({"routes": [route("/*", up.addr)]})
    for _ in range(3):
        r = request(gw.url, "/")
        assert (r.status, r.body) == (200, b"hello world")


def test_read_to_close_body_from_http10_upstream(gateway, scripted):
    up = scripted(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
    gw = gateway({"routes": [route("/*", up.addr)]})
    r = request(gw.url, "/")
    assert (r.status, r.body) == (200, b"until close")


def test_te_and_cl_response_is_read_as_chunked_and_not_reused(gateway, scripted):
    up = scripted(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle",
        close=False,
    )
    gw = gateway({"routes": [route("/*", up.addr)]}, workers=1)
    assert request(gw.url, "/").body == b"ok"
    assert request(gw.url, "/").body == b"ok", "a desynchronised connection was reused"


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
        b"HTTP/1.1 2000 Weird\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
    ids=["conflicting-cl", "negative-cl", "garbage", "bad-status", "unasked-101"],
)
def test_malformed_upstream_response_is_502(gateway, scripted, response):
    up = scripted(response)
    gw = gateway({"routes": [route("/*", up.addr)]})
    assert request(gw.url, "/").status == 502


def test_interim_100_continue_from_upstream_is_skipped(gateway, scripted):
    up = scripted(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    )
    gw = gateway({"routes": [route("/*", up.addr)]})
    r = request(gw.url, "/", method="POST", body=b"x")
    assert (r.status, r.body) == (201, b"ok")


def test_bad_chunk_mid_body_aborts_client(gateway, scripted):
    up = scripted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
    gw = gateway({"routes": [route("/*", up.addr)]})
    host, _, port = gw.addresses[0].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/")
    # Either the head never went out or the body stops short: never a complete-looking 200.
    with pytest.raises((http.client.IncompleteRead, http.client.RemoteDisconnected)):
        conn.getresponse().read()
    conn.close()


def test_expect_continue_is_answered_by_the_gateway(gateway, origin):
    gw = gateway({"routes": [route("/*", origin.addr)]})
    r = request(gw.url, "/", method="PUT", body=b"data", headers={"Expect": "100-continue"})
    assert r.status == 200
    echo = r.json()
    assert echo["body"] == "data"
    assert "expect" not in echo["headers"]
