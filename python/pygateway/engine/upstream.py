"""Upstreams of the Python engine: nodes, the balancer, keep-alive pools, the HTTP/1.1 client.

Mirrors ``rust/upstream/``: smooth weighted round robin per priority group, APISIX's
``keepalive_pool`` limits, and an HTTP/1.1 client driven inline by the request's task that
decides framing itself (content-length / chunked / read-to-close, RFC 9112 §6.3) and gives
a connection back to its pool only after a clean exchange.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import socket
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any, cast

__all__ = [
    "Balancer",
    "ConnectFailed",
    "ConnectTimeout",
    "ExchangeError",
    "Node",
    "Pool",
    "ResponseHead",
    "Timeouts",
    "Upstream",
    "UpstreamConn",
    "connect",
]

MAX_HEAD = 64 * 1024
"""Largest response head accepted from an upstream."""
MAX_HEADERS = 128
"""Most response headers accepted from an upstream."""
MAX_SCHEDULE = 4096
"""Longest precomputed balancer schedule; larger weight sums are scaled down."""
READ_CHUNK = 64 * 1024

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_STATUS_LINE = re.compile(rb"^HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?$")
_HOP_BY_HOP = frozenset(
    ("keep-alive", "proxy-connection", "te", "upgrade", "trailer", "proxy-authenticate")
)
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""A control character (other than HTAB) in a header value."""


@dataclass(frozen=True)
class Timeouts:
    """Seconds: connect, each send, each read (nginx's 60 s defaults)."""

    connect: float = 60.0
    send: float = 60.0
    read: float = 60.0

    @classmethod
    def of(cls, value: Mapping[str, Any] | None) -> Timeouts | None:
        if not value:
            return None
        return cls(float(value["connect"]), float(value["send"]), float(value["read"]))


def secs(value: float) -> float:
    """A timeout as the native plane applies it (at least 1 ms)."""
    return max(value, 0.001)


# -- errors ------------------------------------------------------------------------------


class ExchangeError(Exception):
    """An upstream failed while the request task talked to it."""


class ClosedEarly(ExchangeError):
    """Closed (or reset) before any response byte: maybe a stale keep-alive connection."""

    def __init__(self) -> None:
        super().__init__("upstream closed the connection")


class Malformed(ExchangeError):
    """Not a valid HTTP/1.x response."""

    def __init__(self, what: str) -> None:
        super().__init__(f"invalid response from upstream: {what}")


class ConnectTimeout(Exception):
    """The connect timeout expired."""


class ConnectFailed(Exception):
    """Name resolution or connection refused."""


# -- the connection --------------------------------------------------------------------


class _Protocol(asyncio.Protocol):
    """Bytes in a buffer, a waiter for more, write flow control."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(exc or ConnectionResetError("connection lost"))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait_data(self, timeout: float) -> None:
        """Until more bytes, EOF or an error (TimeoutError after ``timeout``)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        # A plain timer, not wait_for: this runs once per upstream read.
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def drain(self, timeout: float) -> None:
        if self.error is not None:
            raise self.error
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        if not self._paused:
            return
        self._drain = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._drain, timeout)
        finally:
            self._drain = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


@dataclass
class ResponseHead:
    """A parsed upstream response head."""

    status: int
    headers: list[tuple[str, str]]
    """Names lower-cased; hop-by-hop headers (and those Connection names) already left out."""
    framing: str
    """``empty``, ``length``, ``chunked`` or ``close``."""
    length: int
    reusable: bool
    reason: str | None = None
    """The status line's reason phrase (relayed as nginx relays it)."""


class UpstreamConn:
    """One HTTP/1.1 connection to a node."""

    def __init__(self, transport: asyncio.Transport, proto: _Protocol) -> None:
        self.transport = transport
        self.proto = proto
        self.served = 0
        self.reused = False
        self.since = 0.0

    def looks_idle(self) -> bool:
        """Nothing readable (no EOF, no stray bytes): usable for another request."""
        p = self.proto
        return not p.buf and not p.eof and not self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    async def write(self, data: bytes, timeout: float) -> None:
        p = self.proto
        if p.eof:
            if p.error is not None:
                raise p.error
            # Closed by the upstream: what it already answered is still read (as a write
            # to a half-closed socket would succeed); nothing more can go out.
            return
        if self.transport.is_closing():
            raise ConnectionResetError("connection closed")
        self.transport.write(data)
        if p._paused or p.error is not None or self.transport.is_closing():
            await p.drain(timeout)

    async def _more(self, timeout: float) -> bool:
        """Wait for bytes; False at EOF. Raises the connection's error (reset)."""
        p = self.proto
        if p.eof:
            if p.error is not None:
                raise p.error
            return False
        await p.wait_data(timeout)
        if not p.buf and p.eof:
            if p.error is not None:
                raise p.error
            return False
        return True

    async def read_head(self, method: str, timeout: float, upgrade: bool = False) -> ResponseHead:
        """The response head (interim 1xx skipped); ``timeout`` bounds the whole wait. With
        ``upgrade`` (the request asked for a protocol upgrade), a 101 is the answer, its
        ``upgrade`` header kept, and the connection is then a tunnel's."""
        deadline = time.monotonic() + timeout
        got_any = False
        while True:
            head = self._parse_head(method)
            if head is not None:
                if 100 <= head.status < 200:
                    if head.status == 101:
                        if upgrade:
                            return head
                        raise Malformed("unexpected 101 response")
                    got_any = True
                    continue
                return head
            buf = self.proto.buf
            if len(buf) >= MAX_HEAD:
                raise Malformed("response head too large")
            before = len(buf)
            try:
                more = await self._more(max(deadline - time.monotonic(), 0.0))
            except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
                if not got_any and before == 0:
                    raise ClosedEarly() from None
                raise
            if not more:
                if got_any or self.proto.buf:
                    raise Malformed("connection closed inside the response head")
                raise ClosedEarly()
            if len(self.proto.buf) > before:
                got_any = True

    def _parse_head(self, method: str) -> ResponseHead | None:
        buf = self.proto.buf
        end = buf.find(b"\r\n\r\n")
        skip = 4
        lf = buf.find(b"\n\n")
        if lf >= 0 and (end < 0 or lf < end):
            end, skip = lf, 2
        if end < 0:
            return None
        raw = bytes(buf[:end])
        del buf[: end + skip]
        lines = raw.replace(b"\r\n", b"\n").split(b"\n")
        m = _STATUS_LINE.match(lines[0])
        if m is None:
            raise Malformed("unparsable response head")
        http10 = m.group(1) == b"0"
        status = int(m.group(2))
        if status < 100:
            raise Malformed("invalid status")
        if len(lines) - 1 > MAX_HEADERS:
            raise Malformed("too many headers")
        headers: list[tuple[str, str]] = []
        te: list[str] = []
        connection: list[str] = []
        switching = status == 101  # keeps its Upgrade header: the client's 101 names it
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise Malformed("invalid header name")
            value = value.strip(b" \t")
            if _BAD_VALUE.search(value):
                raise Malformed("invalid header value")
            lname = name.decode("ascii").lower()
            try:  # aiohttp writes headers as UTF-8: relayed byte for byte when they are
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                text = value.decode("latin-1")
            if lname == "transfer-encoding":
                te.append(text)
            elif lname == "connection":
                connection.append(text)
            elif lname not in _HOP_BY_HOP or (switching and lname == "upgrade"):
                headers.append((lname, text))
        framing, length, reusable = _framing(method, status, te, headers)
        reusable = reusable and not switching
        tokens = [t.strip().lower() for v in connection for t in v.split(",") if t.strip()]
        if http10:
            reusable = reusable and "keep-alive" in tokens
        else:
            reusable = reusable and "close" not in tokens
        if tokens:
            named = set(tokens) - ({"upgrade"} if switching else set())
            headers = [(n, v) for n, v in headers if n not in named]
        phrase = m.group(3) or b""
        reason = phrase.decode() if phrase.isascii() else ""  # as httparse: text or nothing
        return ResponseHead(status, headers, framing, length, reusable, reason)

    def buffered_body(self, head: ResponseHead) -> bytes | None:
        """The whole body of a ``length`` response when it has already arrived (else None)."""
        buf = self.proto.buf
        if head.framing != "length" or len(buf) < head.length:
            return None
        data = bytes(buf[: head.length])
        del buf[: head.length]
        return data

    async def body(self, head: ResponseHead, timeout: float) -> AsyncIterator[tuple[bytes, bool]]:
        """The response body as (data, is_last) pieces; ``timeout`` bounds each read.

        Raises on an upstream error or timeout mid-body (the client connection is then
        aborted). ``head.reusable`` stays true only if the body ended cleanly.
        """
        framing = head.framing
        p = self.proto
        if framing == "empty":
            return
        if framing == "length":
            left = head.length
            while left > 0:
                if not p.buf and not await self._more(timeout):
                    raise ExchangeError("upstream closed the connection mid-body")
                take = min(left, len(p.buf))
                data = bytes(p.buf[:take])
                del p.buf[:take]
                left -= take
                yield data, left == 0
            return
        if framing == "close":
            head.reusable = False
            while True:
                if not p.buf and not await self._more(timeout):
                    yield b"", True
                    return
                data = bytes(p.buf)
                p.buf.clear()
                yield data, False
        # chunked
        while True:
            line = await self._line(timeout)
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if (
                not size_text
                or len(size_text) > 16
                or not re.fullmatch(rb"[0-9a-fA-F]+", size_text)
            ):
                raise ExchangeError("invalid chunk size")
            size = int(size_text, 16)
            if size == 0:
                while await self._line(timeout):  # trailers: dropped
                    pass
                yield b"", True
                return
            while size > 0:
                if not p.buf and not await self._more(timeout):
                    raise ExchangeError("upstream closed the connection mid-body")
                take = min(size, len(p.buf))
                data = bytes(p.buf[:take])
                del p.buf[:take]
                size -= take
                yield data, False
            if await self._line(timeout):
                raise ExchangeError("invalid chunk end")

    async def _line(self, timeout: float) -> bytes:
        p = self.proto
        while True:
            i = p.buf.find(b"\n")
            if i >= 0:
                line = bytes(p.buf[:i])
                del p.buf[: i + 1]
                return line.rstrip(b"\r")
            if len(p.buf) > 4096:
                raise ExchangeError("chunk line too long")
            if not await self._more(timeout):
                raise ExchangeError("upstream closed the connection mid-body")


def _framing(
    method: str, status: int, te: Sequence[str], headers: list[tuple[str, str]]
) -> tuple[str, int, bool]:
    """RFC 9112 §6.3 body length rules for a response: (framing, length, reusable)."""
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return "empty", 0, True
    has_length = any(n == "content-length" for n, _ in headers)
    if te:
        tokens = [t.strip() for v in te for t in v.split(",") if t.strip()]
        chunked = bool(tokens) and tokens[-1].lower() == "chunked"
        # TE with Content-Length is a smuggling smell: honour TE, never reuse.
        return ("chunked", 0, not has_length) if chunked else ("close", 0, False)
    length: int | None = None
    for name, value in headers:
        if name != "content-length":
            continue
        for part in value.split(","):
            part = part.strip(" \t")
            if not part or not part.isdigit() or not part.isascii() or len(part) > 19:
                raise Malformed("invalid content-length")
            n = int(part)
            if length is not None and length != n:
                raise Malformed("conflicting content-length")
            length = n
    if length is None:
        return "close", 0, False
    if length == 0:
        return "empty", 0, True
    return "length", length, True


async def connect(host: str, port: int, addr: str | None, timeout: float) -> UpstreamConn:
    """A new connection (resolving ``host`` unless ``addr`` is known)."""
    loop = asyncio.get_running_loop()
    if addr is None:
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), secs(timeout)
            )
        except asyncio.TimeoutError:
            raise ConnectTimeout("name resolution timed out") from None
        except OSError as err:
            raise ConnectFailed(f"failed to resolve {host}: {err}") from None
        if not infos:
            raise ConnectFailed(f"no address for {host}")
        addr = str(infos[0][4][0])
    try:
        transport, proto = await asyncio.wait_for(
            loop.create_connection(_Protocol, addr, port), secs(timeout)
        )
    except asyncio.TimeoutError:
        raise ConnectTimeout("connect timed out") from None
    except OSError as err:
        raise ConnectFailed(f"connect failed: {err}") from None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    return UpstreamConn(transport, proto)


# -- pools, nodes, balancer ------------------------------------------------------------


class Pool:
    """Idle connections to one node, within APISIX's ``keepalive_pool`` limits."""

    def __init__(self, size: int, idle_timeout: float, requests: int) -> None:
        self.size = size
        self.idle_timeout = idle_timeout
        self.requests = requests
        self.idle: list[UpstreamConn] = []

    def checkout(self) -> UpstreamConn | None:
        """The most recently used live idle connection, if any."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.looks_idle() or now - conn.since > self.idle_timeout:
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def checkin(self, conn: UpstreamConn) -> None:
        """Give back a connection whose exchange completed cleanly."""
        if (
            self.size == 0
            or conn.served >= self.requests
            or self.idle_timeout <= 0
            or not conn.looks_idle()
        ):
            conn.close()
            return
        if len(self.idle) >= self.size:
            self.idle.pop(0).close()  # evict the least recently used
        conn.since = time.monotonic()
        self.idle.append(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class Pools:
    """The keep-alive pools of every node, by address and limits: one pool however many
    upstreams name a node, and the same pool across config versions (APISIX keys its pools
    by ``scheme#host#port``), so an upstream edit keeps the connections to the nodes that
    stay. A pool lives while an upstream holds it."""

    def __init__(self) -> None:
        self._pools: weakref.WeakValueDictionary[tuple[str, int, int, float, int], Pool] = (
            weakref.WeakValueDictionary()
        )

    def get(self, host: str, port: int, size: int, idle_timeout: float, requests: int) -> Pool:
        key = (host, port, size, idle_timeout, requests)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(size, idle_timeout, requests)
        return pool


@dataclass
class Node:
    """One node of an upstream."""

    host: str
    port: int
    addr: str | None
    """The host when it is an IP literal; names are resolved per connect."""
    host_header: str
    """The Host used with ``pass_host: node``."""
    pool: Pool


class _Group:
    def __init__(self, schedule: list[int], members: list[int]) -> None:
        self.schedule = schedule
        self.members = members
        self.cursor = 0


class Balancer:
    """Weighted round robin over node priority groups (nginx's smooth algorithm)."""

    def __init__(self, nodes: Sequence[tuple[int, int]]) -> None:
        priorities = sorted({p for w, p in nodes if w > 0}, reverse=True)
        self.groups: list[_Group] = []
        for prio in priorities:
            members = [i for i, (w, p) in enumerate(nodes) if w > 0 and p == prio]
            weights = [nodes[i][0] for i in members]
            schedule = [members[k] for k in _smooth_schedule(weights)]
            self.groups.append(_Group(schedule, members))

    def is_empty(self) -> bool:
        return not self.groups

    def node_count(self) -> int:
        return sum(len(g.members) for g in self.groups)

    def pick(self, tried: Sequence[int]) -> int | None:
        """The next node not in ``tried``, highest priority group first. A lone node is
        picked again whatever was tried: as in APISIX, a retry has nowhere else to go (the
        caller's ``retries`` bounds the tries)."""
        if len(self.groups) == 1 and len(self.groups[0].members) == 1:
            return self.groups[0].members[0]
        for group in self.groups:
            n = len(group.schedule)
            if not tried:  # a first try: the group's next node
                node = group.schedule[group.cursor % n]
                group.cursor += 1
                return node
            if all(m in tried for m in group.members):
                continue
            for _ in range(n):
                at = group.cursor % n
                group.cursor += 1
                node = group.schedule[at]
                if node not in tried:
                    return node
        return None


def _smooth_schedule(weights: Sequence[int]) -> list[int]:
    g = 0
    for w in weights:
        g = math.gcd(g, w)
    g = max(g, 1)
    eff = [w // g for w in weights]
    total = sum(eff)
    if total > MAX_SCHEDULE:
        eff = [max(w * MAX_SCHEDULE // total, 1) for w in eff]
        total = sum(eff)
    current = [0] * len(eff)
    out: list[int] = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(eff):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


class Upstream:
    """A live upstream, built once per config change (from a CompiledUpstream), its nodes'
    pools taken from ``pools``."""

    def __init__(self, conf: Mapping[str, Any], pools: Pools) -> None:
        self.key = str(conf["key"])
        scheme = conf.get("scheme") or "http"
        if scheme != "http":
            raise ValueError(f'upstream {self.key}: scheme "{scheme}" is not supported yet')
        pool = {"size": 320, "idle_timeout": 60.0, "requests": 1000}
        pool.update(conf.get("keepalive_pool") or {})
        self.nodes: list[Node] = []
        for n in conf.get("nodes") or []:
            host = str(n["host"]).lstrip("[").rstrip("]")
            port = int(n["port"])
            try:
                addr: str | None = str(ipaddress.ip_address(host))
            except ValueError:
                addr = None
            shown = f"[{host}]" if ":" in host else host
            self.nodes.append(
                Node(
                    host=host,
                    port=port,
                    addr=addr,
                    host_header=shown if port == 80 else f"{shown}:{port}",
                    pool=pools.get(
                        host,
                        port,
                        int(pool["size"]),
                        float(pool["idle_timeout"]),
                        int(pool["requests"]),
                    ),
                )
            )
        self.balancer = Balancer(
            [(int(n.get("weight", 1)), int(n.get("priority", 0))) for n in conf.get("nodes") or []]
        )
        retries = conf.get("retries")
        self.retries = max(self.balancer.node_count() - 1, 0) if retries is None else int(retries)
        retry_timeout = conf.get("retry_timeout")
        self.retry_timeout = float(retry_timeout) if retry_timeout and retry_timeout > 0 else None
        self.timeouts = Timeouts.of(conf.get("timeout"))
        self.pass_host = conf.get("pass_host") or "pass"
        self.upstream_host: str | None = conf.get("upstream_host")
        if self.pass_host == "rewrite" and self.upstream_host is None:
            raise ValueError(f"upstream {self.key}: pass_host rewrite needs upstream_host")

    def close(self, keep: Set[int] = frozenset()) -> None:
        """Close every idle connection of its pools but those whose ``id`` is in ``keep``
        (pools a live upstream still uses, when this one was replaced or removed)."""
        for node in self.nodes:
            if id(node.pool) not in keep:
                node.pool.close()
