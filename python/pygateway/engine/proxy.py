"""Forwarding one request upstream (``rust/server/proxy.rs``): the upstream head, node
choice, retries, timeouts, and the error pages of the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field

from aiohttp import StreamReader

from .._version import __version__
from ..pipeline import nginx_page
from .request import RequestInfo, header_wire
from .upstream import (
    ClosedEarly,
    ConnectFailed,
    ConnectTimeout,
    ExchangeError,
    Node,
    ResponseHead,
    Timeouts,
    Upstream,
    UpstreamConn,
    connect,
    secs,
)

log = logging.getLogger("pygateway.engine")

SERVER = f"pygateway/{__version__}"
"""The ``Server`` header value (the native plane's)."""

HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
    )
)
"""Headers that describe one connection, never forwarded (RFC 9110 §7.6.1)."""

FRAMING = frozenset(
    (
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "trailer",
        "upgrade",
        "host",
        "keep-alive",
        "proxy-connection",
    )
)
"""Headers the gateway owns: plugins cannot set or remove them (smuggling)."""

CHUNKED_BUFFER_LIMIT = 1 << 20
"""The largest chunked client body read whole to be sent with a ``Content-Length``, as nginx
sends every body (it spools larger ones to disk; a larger one streams on chunked here)."""

_NGINX_HIDDEN = frozenset(
    {
        "x-pad",
        "x-accel-expires",
        "x-accel-redirect",
        "x-accel-limit-rate",
        "x-accel-buffering",
        "x-accel-charset",
    }
)
"""What nginx's ``proxy_hide_header`` hides from upstream responses by default (APISIX relays
none of them): ``X-Pad`` and the ``X-Accel-*`` controls meant for nginx itself."""
_NOT_RELAYED = HOP_BY_HOP | {"server"} | _NGINX_HIDDEN
_NOT_RELAYED_FRAMED = _NOT_RELAYED | {"content-length"}
_NOT_RELAYED_SWITCH = (_NOT_RELAYED - {"upgrade"}) | {"content-length"}
_DEFAULT_TIMEOUTS = Timeouts()

IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEADER_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# -- responses --------------------------------------------------------------------------


@dataclass
class Reply:
    """A response on its way to the client."""

    status: int
    headers: list[tuple[str, str]]
    """(name, value); framing headers are the gateway's (``length``)."""
    body: bytes | AsyncIterator[tuple[bytes, bool]] = b""
    """Whole, or (data, is_last) pieces streamed from the upstream."""
    length: int | None = None
    """Content-Length to send; None: chunked (or nothing, for bodiless responses). A
    ``content-length`` entry of ``headers`` (as the native plane shows plugins) is not sent."""
    on_end: list[Callable[[bool], None]] = field(default_factory=list)
    """Called once the body is over (``True`` when it ended cleanly)."""
    tunnel: tuple[UpstreamConn, float] | None = None
    """After a 101: the upstream connection to join the client's to, and the idle timeout."""
    reason: str | None = None
    """The upstream's reason phrase; None: the status code's own."""

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


def full(status: int, headers: list[tuple[str, str]], body: bytes) -> Reply:
    return Reply(status, headers, body, len(body))


def json_error(status: int, message: str) -> Reply:
    """``{"error_msg": ...}`` with APISIX's trailing newline."""
    body = (json.dumps({"error_msg": message}, separators=(",", ":")) + "\n").encode()
    return full(status, [("content-type", "application/json"), ("server", SERVER)], body)


def html_error(status: int) -> Reply:
    """nginx-style error page, as APISIX answers proxy failures."""
    return full(status, [("content-type", "text/html"), ("server", SERVER)], nginx_page(status))


def plugin_reply(status: int, headers: list[tuple[str, str]], body: bytes) -> Reply:
    """A response a plugin made; the gateway frames it."""
    kept = [(n, v) for n, v in plugin_headers(headers) if n.lower() != "server"]
    kept.append(("server", SERVER))
    return full(status if 100 <= status <= 999 else 500, kept, body)


def plugin_headers(
    headers: list[tuple[str, str]], valid: Collection[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """Response headers from plugins, without those framing the message (Host excepted).

    ``valid``: pairs known to be well-formed (a reply's own), not checked again.
    """
    return [
        (n, v)
        for n, v in headers
        if ((n, v) in valid or _valid_header(n, v))
        and (n.lower() not in FRAMING or n.lower() == "host")
    ]


def _valid_header(name: str, value: str) -> bool:
    return bool(_TOKEN.match(name)) and not _HEADER_VALUE_BAD.search(value)


# -- the upstream head ------------------------------------------------------------------


class HeaderList:
    """Lower-cased (name, value) pairs with ``HeaderMap``'s insert/remove semantics."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items

    def remove(self, name: str) -> None:
        self.items = [(n, v) for n, v in self.items if n != name]

    def set(self, name: str, value: str) -> None:
        """Replace every value of ``name`` (kept at its first place) or append it."""
        out: list[tuple[str, str]] = []
        done = False
        for n, v in self.items:
            if n == name:
                if not done:
                    out.append((n, value))
                    done = True
            else:
                out.append((n, v))
        if not done:
            out.append((name, value))
        self.items = out


@dataclass
class Changes:
    """What request plugins changed (``Job.proceed`` of the native plane)."""

    set_headers: list[tuple[str, str]] = field(default_factory=list)
    remove_headers: list[str] = field(default_factory=list)
    uri: str | None = None
    method: str | None = None
    host: str | None = None


def apply_header_changes(headers: HeaderList, changes: Changes) -> None:
    for name in changes.remove_headers:
        lname = name.lower()
        if _TOKEN.match(name) and lname not in FRAMING:
            headers.remove(lname)
    for name, value in changes.set_headers:
        lname = name.lower()
        if _valid_header(name, value) and lname not in FRAMING:
            headers.set(lname, header_wire(value))


# -- the request body -------------------------------------------------------------------


class ClientBodyError(Exception):
    """The client's body failed: 400, or 408 when it stalled."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestBody:
    """The client's body on its way upstream: streamed, or read whole by a plugin."""

    def __init__(self, stream: StreamReader | None, expect: Callable[[], None]) -> None:
        self.stream = stream
        self.buffered: bytes | None = None if stream is not None else b""
        self.prefix = b""
        """Read ahead by :meth:`prefetch` when the body was larger than its limit."""
        self.too_large = False
        self._expect = expect

    @property
    def exists(self) -> bool:
        return self.stream is not None

    async def _read(self, stall: float) -> bytes:
        assert self.stream is not None
        self._expect()
        try:
            return await asyncio.wait_for(self.stream.readany(), secs(stall))
        except asyncio.TimeoutError:
            raise ClientBodyError(408, "client stopped sending its body") from None
        except Exception as err:  # the client went away mid-body
            raise ClientBodyError(400, f"client body: {err}") from None

    async def prefetch(self, limit: int, stall: float) -> None:
        """Read the whole body if it is at most ``limit`` bytes (else keep what was read).

        Sync plugins call ``ctx.body()`` on the event loop, where they cannot wait for the
        client: their routes read it before the request phases.
        """
        if self.buffered is not None or self.too_large:
            return
        parts: list[bytes] = []
        size = 0
        while True:
            data = await self._read(stall)
            if not data:
                self.buffered = b"".join(parts)
                return
            parts.append(data)
            size += len(data)
            if size > limit:
                self.prefix = b"".join(parts)
                self.too_large = True
                return

    def for_plugin(self) -> bytes | None:
        """What ``ctx.body()`` gets: the body, or None when larger than the limit."""
        return None if self.too_large else self.buffered

    async def chunks(self, stall: float) -> AsyncIterator[bytes]:
        """The body pieces still to send (everything, for a buffered body)."""
        if self.buffered is not None:
            if self.buffered:
                yield self.buffered
            return
        if self.prefix:
            yield self.prefix
        while True:
            data = await self._read(stall)
            if not data:
                return
            yield data

    @property
    def resendable(self) -> bool:
        return self.buffered is not None


def _no_expect() -> None:
    pass


NO_BODY = RequestBody(None, _no_expect)
"""The body of every request without one (shared: nothing in it changes)."""


# -- forwarding -------------------------------------------------------------------------


class Failure(Exception):
    """How one upstream attempt failed: its status, and whether another node may be tried."""

    def __init__(self, status: int, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclass
class Forward:
    """A routed request on its way to its upstream."""

    route_id: str
    upstream: Upstream | None
    timeout: Timeouts | None
    client_host: str | None
    """The Host the client sent (or the plugins' ``ctx.host``); used by ``pass_host: pass``."""
    forwarded_host: str | None = None
    """``X-Forwarded-Host``: the client's Host, whatever plugins do (APISIX)."""
    upstream_key: str | None = None
    """The upstream the route names (None: it names none)."""
    upgrade: str | None = None
    """The client's ``Upgrade``, passed on (``enable_websocket``); a 101 makes a tunnel."""


_DROPPED = HOP_BY_HOP | {"proxy-authorization", "expect"}
"""Never sent upstream (the gateway answers ``Expect: 100-continue`` itself)."""
_KEPT_FROM_TRUSTED = ("x-forwarded-proto", "x-forwarded-host", "x-forwarded-port")


def prepare_head(info: RequestInfo, fwd: Forward) -> list[tuple[str, str]]:
    """The client's headers → the upstream's (X-Forwarded-*, X-Real-IP, hop-by-hop)."""
    items = info.headers
    drop: frozenset[str] | set[str] = _DROPPED
    named = [
        t.strip().lower() for n, v in items if n == "connection" for t in v.split(",") if t.strip()
    ]
    if named:  # and every header the Connection header names
        drop = (set(named) - {"host"}) | _DROPPED
    kept = [(n, v) for n, v in items if n not in drop]
    trusted_peer = info.peer_trusted
    peer_ip = info.peer[0]
    # name → value replacing every value of name (None: removed), appended when absent
    sets: dict[str, str | None] = {}
    prev = _first(kept, "x-forwarded-for") if trusted_peer else None
    sets["x-forwarded-for"] = f"{prev}, {peer_ip}" if prev is not None else peer_ip
    sets["x-real-ip"] = info.client_ip
    present = {n for n, _ in kept} if trusted_peer else ()
    proto, host, port = _KEPT_FROM_TRUSTED
    if proto not in present:
        sets[proto] = "http"
    if host not in present:
        sets[host] = fwd.forwarded_host
    if port not in present:
        sets[port] = _host_port(fwd.forwarded_host) or str(info.local[1])
    if not trusted_peer:
        # RFC 7239's header carries the same claims: only a trusted peer's reaches the
        # upstream (APISIX clears it for everyone else).
        sets["forwarded"] = None
    return _with_set(kept, sets)


def hide_claims(headers: list[tuple[str, str]], local_port: int) -> list[tuple[str, str]]:
    """An untrusted peer's forwarding claims, as APISIX leaves them before routing (so route
    ``vars``, plugins and the upstream never see them): its ``X-Forwarded-For`` and
    ``Forwarded`` dropped, the ``X-Forwarded-Proto``, ``-Host`` and ``-Port`` it sent replaced
    by what the gateway observed."""
    if not any(n.startswith("x-forwarded-") or n == "forwarded" for n, _ in headers):
        return headers
    host = _first(headers, "host")
    observed = {
        "x-forwarded-proto": "http",
        "x-forwarded-host": host,
        "x-forwarded-port": _host_port(host) or str(local_port),
    }
    out: list[tuple[str, str]] = []
    for n, v in headers:
        if n in observed:
            value = observed.pop(n)  # one value, where the first one was
            if value is not None:
                out.append((n, value))
        elif n not in _CLAIMS:  # dropped: X-Forwarded-For, Forwarded, repeated claims
            out.append((n, v))
    return out


_CLAIMS = frozenset(
    ("x-forwarded-for", "forwarded", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port")
)


def _host_port(host: str | None) -> str | None:
    """The port at the end of a Host header (``name:8443``, ``[::1]:8443``), as APISIX's
    ``X-Forwarded-Port`` takes it before falling back to the listener's port."""
    if not host:
        return None
    digits = host.rpartition(":")[2] if ":" in host else ""
    return digits if digits.isascii() and digits.isdigit() else None


def _first(items: list[tuple[str, str]], name: str) -> str | None:
    for n, v in items:
        if n == name:
            return v
    return None


def _with_set(items: list[tuple[str, str]], sets: dict[str, str | None]) -> list[tuple[str, str]]:
    """``HeaderList.set`` (or ``remove``, for None) of every entry of ``sets``, in one pass."""
    out: list[tuple[str, str]] = []
    done: set[str] = set()
    for n, v in items:
        if n in sets:
            if n in done:
                continue
            done.add(n)
            value = sets[n]
            if value is not None:
                out.append((n, value))
        else:
            out.append((n, v))
    for n, value in sets.items():
        if value is not None and n not in done:
            out.append((n, value))
    return out


def _host_for(up: Upstream, node: Node, client_host: str | None) -> str:
    if up.pass_host == "pass" and client_host is not None:
        return client_host
    if up.pass_host == "rewrite" and up.upstream_host is not None:
        return up.upstream_host
    return node.host_header


async def forward(
    info: RequestInfo,
    fwd: Forward,
    body: RequestBody,
    changes: Changes | None,
) -> Reply:
    """Send the request to a node of its upstream (retrying as nginx does); the reply."""
    up = fwd.upstream
    if up is None:
        # As APISIX: an upstream_id that names nothing is 502, a route without any upstream
        # 503 ("missing upstream configuration in Route or Service").
        log.warning("route %s: no upstream %s", fwd.route_id, fwd.upstream_key or "configured")
        return html_error(502 if fwd.upstream_key else 503)
    if up.balancer.is_empty():
        # APISIX: "no valid upstream node", 503.
        log.warning("route %s: upstream %s has no node", fwd.route_id, up.key)
        return html_error(503)
    timeouts = fwd.timeout or up.timeouts or _DEFAULT_TIMEOUTS
    # Framing follows the client's own request, whatever plugins do to headers.
    chunked = body.exists and info.header("content-length") is None
    items = prepare_head(info, fwd)
    if fwd.upgrade is not None:
        # nginx under APISIX: `Upgrade $http_upgrade`, `Connection upgrade`.
        items += [("upgrade", fwd.upgrade), ("connection", "upgrade")]
    if chunked:
        # nginx (`proxy_request_buffering on`, APISIX's default) reads a chunked body whole
        # and sends it with a length; up to CHUNKED_BUFFER_LIMIT here, and a larger one
        # streams on chunked.
        try:
            await body.prefetch(CHUNKED_BUFFER_LIMIT, timeouts.read)
        except ClientBodyError as err:
            log.info("route %s: %s", fwd.route_id, err)
            page = html_error(err.status)
            page.headers.append(("connection", "close"))
            return page
        if body.buffered is not None:
            items.append(("content-length", str(len(body.buffered))))
            chunked = False
    method = info.method
    target = info.request_uri
    if changes is not None:
        headers = HeaderList(items)
        apply_header_changes(headers, changes)
        items = headers.items
        if changes.method is not None and _TOKEN.match(changes.method):
            method = changes.method
        if changes.uri is not None:
            target = changes.uri
    deadline = time.monotonic() + up.retry_timeout if up.retry_timeout else None
    tried: list[int] = []
    last = Failure(502, "no node tried", True)
    statuses: list[int] = []  # nginx's $upstream_status: one per try
    while True:
        idx = up.balancer.pick(tried)
        if idx is None:
            break
        tried.append(idx)
        node = up.nodes[idx]
        host = _host_for(up, node, fwd.client_host)
        try:
            head, conn = await _exchange(
                node, method, target, items, host, chunked, body, timeouts, fwd.upgrade is not None
            )
        except Failure as failure:
            log.warning(
                "route %s: upstream %s node %s:%s: %s",
                fwd.route_id,
                up.key,
                node.host,
                node.port,
                failure,
            )
            last = failure
            statuses.append(failure.status)
            if not failure.retryable or len(tried) > up.retries:
                break
            if deadline is not None and time.monotonic() >= deadline:
                # APISIX: a retry past retry_timeout is refused with 502.
                last = Failure(502, "proxy retry timeout", False)
                break
            continue
        if head.status == 101:
            relayed = [(n, v) for n, v in head.headers if n not in _NOT_RELAYED_SWITCH]
            relayed += [("connection", "upgrade"), ("server", SERVER)]
            return Reply(101, relayed, b"", None, tunnel=(conn, secs(timeouts.read)))
        return _respond(head, conn, node, timeouts, statuses)
    page = html_error(last.status)
    shown = _upstream_status(statuses)
    if shown is not None:
        page.headers.append(("x-apisix-upstream-status", shown))
    return page


def _upstream_status(statuses: list[int]) -> str | None:
    """``X-APISIX-Upstream-Status`` as APISIX sets it: nginx's ``$upstream_status`` (every
    try, ``"502, 502, 503"``) when the last one is a 5xx, else None."""
    if not statuses or not 500 <= statuses[-1] < 600:
        return None
    return ", ".join(map(str, statuses))


async def _exchange(
    node: Node,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    host: str,
    chunked: bool,
    body: RequestBody,
    timeouts: Timeouts,
    upgrade: bool = False,
) -> tuple[ResponseHead, UpstreamConn]:
    """One try against one node; a stale pooled connection is retried once on a new one."""
    fresh_only = False
    head_bytes = _head(method, target, headers, host, chunked)
    while True:
        conn = None if fresh_only else node.pool.checkout()
        if conn is None:
            try:
                conn = await connect(node.host, node.port, node.addr, timeouts.connect)
            except ConnectTimeout as err:
                raise Failure(504, str(err), True) from None
            except ConnectFailed as err:
                raise Failure(502, str(err), True) from None
        head_sent = False
        body_taken = False
        send = secs(timeouts.send)
        try:
            await conn.write(head_bytes, send)
            head_sent = True
            if body.exists:
                body_taken = not body.resendable
                async for data in body.chunks(timeouts.read):
                    await conn.write(_frame(data, chunked), send)
                if chunked:
                    await conn.write(b"0\r\n\r\n", send)
            head = await conn.read_head(method, secs(timeouts.read), upgrade)
            return head, conn
        except ClientBodyError as err:
            conn.abort()
            raise Failure(err.status, str(err), False) from None
        except asyncio.TimeoutError:
            conn.abort()
            resendable = not body_taken and (not head_sent or method in IDEMPOTENT)
            what = "read timed out" if head_sent else "send timed out"
            raise Failure(504, what, resendable) from None
        except (ClosedEarly, ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            conn.abort()
            if conn.reused and not body_taken:
                fresh_only = True
                continue
            resendable = not body_taken and (not head_sent or method in IDEMPOTENT)
            raise Failure(502, "upstream closed the connection", resendable) from None
        except (ExchangeError, OSError) as err:
            conn.abort()
            resendable = not body_taken and (not head_sent or method in IDEMPOTENT)
            raise Failure(502, str(err), resendable) from None


def _frame(data: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data


def _head(
    method: str, target: str, headers: list[tuple[str, str]], host: str, chunked: bool
) -> bytes:
    """The request head; ``host`` replaces the Host header (at its place) or is appended."""
    lines = [f"{method} {target} HTTP/1.1"]
    seen_host = False
    for n, v in headers:
        if n == "host":
            if seen_host:
                continue
            seen_host = True
            v = host
        lines.append(f"{n}: {v}")
    if not seen_host:
        lines.append(f"host: {host}")
    if chunked:
        lines.append("transfer-encoding: chunked")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1", "replace")


def _respond(
    head: ResponseHead, conn: UpstreamConn, node: Node, timeouts: Timeouts, failed: list[int]
) -> Reply:
    framing = head.framing
    length: int | None = None
    if framing == "empty":
        headers = [(n, v) for n, v in head.headers if n not in _NOT_RELAYED]
        cl = next((v for n, v in headers if n == "content-length"), None)
        first = cl.split(",")[0].strip() if cl is not None else ""
        if first.isdigit():
            length = int(first)
        else:
            headers = [(n, v) for n, v in headers if n != "content-length"]
    else:
        # length: one canonical value, never an upstream's list such as "2, 2";
        # chunked / close: the client gets it chunked.
        headers = [(n, v) for n, v in head.headers if n not in _NOT_RELAYED_FRAMED]
        if framing == "length":
            length = head.length
            headers.append(("content-length", str(length)))
    headers.append(("server", SERVER))
    if head.status >= 500:
        shown = _upstream_status([*failed, head.status])
        if shown is not None:
            headers.append(("x-apisix-upstream-status", shown))
    conn.served += 1
    if framing == "empty":
        _release(conn, node, head.reusable)
        return Reply(head.status, headers, b"", length, reason=head.reason)
    whole = conn.buffered_body(head)
    if whole is not None:  # the common small response: no stream to drive
        _release(conn, node, head.reusable)
        return Reply(head.status, headers, whole, length, reason=head.reason)

    async def stream() -> AsyncIterator[tuple[bytes, bool]]:
        ok = False
        try:
            async for piece in conn.body(head, secs(timeouts.read)):
                yield piece
            ok = True
        finally:
            if ok:
                _release(conn, node, head.reusable)
            else:
                conn.abort()

    return Reply(head.status, headers, stream(), length, reason=head.reason)


def _release(conn: UpstreamConn, node: Node, reusable: bool) -> None:
    if reusable:
        node.pool.checkin(conn)
    else:
        conn.close()
