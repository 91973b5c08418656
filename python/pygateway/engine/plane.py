"""The pure-Python data plane: aiohttp's HTTP/1.1 server on one asyncio loop.

:class:`PythonDataPlane` has the interface the :class:`~pygateway.Gateway` uses on the
native ``_core.DataPlane`` (``start``, ``apply``, ``stop``, ``addresses``, ``running``,
``demo_address``, ``route_count``) and consumes the same change sets
(``docs/CONTRACT-snapshot.md``). The request pipeline, top to bottom, is :meth:`_handle`:
parse → route → request plugin phases → upstream → header_filter → body (body_filter) → log.

One thread runs one event loop (uvloop when installed) for every listener: ``workers`` is
accepted and ignored. Plugins run on that loop, in-process: sync phases inline, async ones
awaited, with the same :class:`~pygateway.pipeline.Execution` the native plane's runner uses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web, web_protocol, web_server
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import LineTooLong

from ..ctx import RequestBodyTooLarge, SimpleCtx
from ..pipeline import REQUEST_PHASES, Execution, Pipeline, Plan, PluginResponse, Step
from ..plugins._redis import close_clients as close_redis_clients
from ..runner import PLUGIN_BODY_LIMIT, Lazy, NativeCtx, PluginView, upstream_target
from .proxy import (
    NO_BODY,
    Changes,
    ClientBodyError,
    Forward,
    Reply,
    RequestBody,
    forward,
    hide_claims,
    html_error,
    json_error,
    plugin_headers,
    plugin_reply,
)
from .request import (
    BadRequest,
    RequestInfo,
    client_addr,
    header_text,
    normalize_path,
    request_host,
    split_target,
)
from .router import Address, IpSet, RouteTable, path_mode
from .upstream import Pools, Timeouts, Upstream, UpstreamConn

__all__ = ["EngineError", "PythonDataPlane"]

log = logging.getLogger("pygateway.engine")

MAX_HEADER_LINE = 64 * 1024
"""Longest request line or header field; beyond, 431 (the native plane allows ~400 KiB in all)."""
_RESPONSE_PHASES = frozenset(("header_filter", "body_filter", "log"))
_BODY_FRAMING = frozenset(("content-length", "transfer-encoding"))
_VERSIONS = {HttpVersion11: "HTTP/1.1", HttpVersion10: "HTTP/1.0"}


class EngineError(Exception):
    """The data plane refused an operation (bind failure, invalid change set...)."""


@dataclass(frozen=True)
class RouteEntry:
    """What a matched route carries into the data plane (derived once, at apply time)."""

    id: str
    upstream: str | None
    timeout: Timeouts | None
    phases: frozenset[str]
    plugins: Mapping[str, Any]
    name: str | None
    service_id: str | None
    websocket: bool = False
    """``enable_websocket``: protocol upgrades are proxied (a 101 becomes a tunnel)."""
    request_phases: bool = dataclasses.field(init=False)
    header_filter: bool = dataclasses.field(init=False)
    body_filter: bool = dataclasses.field(init=False)
    response_phases: bool = dataclasses.field(init=False)
    meta: Mapping[str, Any] = dataclasses.field(init=False)
    """``name`` and ``service_id``, as the plugin ctx reads them from a route."""

    def __post_init__(self) -> None:
        facts = {
            "request_phases": not self.phases.isdisjoint(REQUEST_PHASES),
            "header_filter": "header_filter" in self.phases,
            "body_filter": "body_filter" in self.phases,
            "response_phases": not self.phases.isdisjoint(_RESPONSE_PHASES),
            "meta": {"name": self.name, "service_id": self.service_id},
        }
        for name, value in facts.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True, eq=False)
class _RoutePlan:
    """A route's plugin plan as this engine runs it, cached per route."""

    plugins: Any
    rules: Any
    epoch: tuple[int, int]
    plan: Plan
    sync: bool
    """No request phase is async and no consumer can join (nothing runs in rewrite)."""
    phases: tuple[str, ...]
    """The request phases with plugins (when ``sync``)."""


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _bind(addr: str) -> socket.socket:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise EngineError(f"invalid listen address {addr!r}: expected HOST:PORT")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        raise EngineError(f"invalid listen address {addr!r}: expected HOST:PORT") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, int(port)))
        sock.listen(4096)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise EngineError(f"failed to listen on {addr}: {err}") from None
    return sock


def _sock_addr(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


MAX_REQUEST_HEADERS = 100
"""Header fields a request may have: past it, 431 (hyper's default, the native plane's)."""

_REASONS = {
    203: "Non Authoritative Information",
    413: "Payload Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    418: "I'm a teapot",
}
"""The phrases of the native plane (the http crate's) where Python's differ."""


class _Response(web.StreamResponse):
    """A response whose headers are exactly the gateway's (no default Content-Type)."""

    async def _prepare_headers(self) -> None:
        had_type = "Content-Type" in self.headers
        await super()._prepare_headers()
        if not had_type:
            self.headers.popall("Content-Type", None)


class _WholeResponse(_Response):
    """A response whose body is at hand: its head goes out with the body, in one write."""

    _send_headers_immediately = False


class _Request:
    """A request as :class:`~pygateway.runner.NativeCtx` reads it (``_core.Job``'s members)."""

    __slots__ = ("_body", "_info", "_params", "route_id")

    def __init__(
        self, info: RequestInfo, route_id: str, params: list[tuple[str, str]], body: RequestBody
    ) -> None:
        self._info = info
        self.route_id = route_id
        self._params = params
        self._body = body

    @property
    def method(self) -> str:
        return self._info.method.upper()

    @property
    def path(self) -> str:
        return self._info.path

    @property
    def query(self) -> str | None:
        return self._info.query

    @property
    def host(self) -> str:
        return self._info.host

    @property
    def remote_addr(self) -> str:
        return self._info.client_ip

    @property
    def server_port(self) -> int:
        return self._info.local[1]

    @property
    def request_uri(self) -> str:
        return self._info.request_uri

    def headers(self) -> list[tuple[str, str]]:
        info = self._info
        # As the native plane (and APISIX): X-Forwarded-Proto is the gateway's own scheme
        # unless the peer is a trusted proxy.
        trusted = info.peer_trusted
        kept = [(n, header_text(v)) for n, v in info.headers if trusted or n != "x-forwarded-proto"]
        if not trusted:
            kept.append(("x-forwarded-proto", "http"))
        return kept

    def params(self) -> list[tuple[str, str]]:
        return self._params

    def read_body(self, limit: int) -> bytes | None:
        """Read ahead before the request phases (see ``RequestBody.prefetch``)."""
        return self._body.for_plugin()


class _Ctx(NativeCtx):
    """The plugin ctx: made on demand from the request, as on the native plane.

    Nothing in it refers back to it, so a request's ctx is freed when the request ends,
    not left to the cycle collector.
    """

    _body_reader = Lazy(lambda ctx: functools.partial(_plugin_body, cast(_Request, ctx._job)))

    async def body_async(self) -> bytes:
        return self.body()  # read ahead already: nothing to wait for


@dataclass(frozen=True)
class _Peer:
    """What a connection's requests share: the two ends' addresses."""

    ip: Address
    addr: tuple[str, int]
    local: tuple[str, int]
    trusted: bool


class _Handler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering malformed requests as the native plane does."""

    peer: _Peer | None = None
    """Set by the first request of the connection."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400 and isinstance(exc, LineTooLong):
            status = 431
        if isinstance(exc, ConnectionError):  # the client went away: nothing to answer
            log.info("client connection lost: %s", exc)
        elif status >= 500:
            log.error("error handling a request", exc_info=exc)
        reply = html_error(status)
        resp = web.Response(
            status=status, body=reply.body if isinstance(reply.body, bytes) else b""
        )
        for name, value in reply.headers:
            resp.headers[name] = value
        resp.force_close()
        return resp


class _Server(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)


def _request_factory(
    message: Any,
    payload: Any,
    protocol: web_protocol.RequestHandler,
    writer: Any,
    task: asyncio.Task[None],
) -> web.BaseRequest:
    unsupported = message is not web_protocol.ERROR and message.version not in _VERSIONS
    if message is web_protocol.ERROR or unsupported:
        message = message._replace(version=HttpVersion11)  # error pages are HTTP/1.1
    request = _HttpRequest(message, payload, protocol, writer, task, protocol._loop)
    # HTTP/0.9, or HTTP/2.0 in an HTTP/1 request line: 400, as the native plane (hyper) answers
    request.unsupported_version = unsupported
    return request


def _refused_head(request: web.BaseRequest) -> int | None:
    """The status of a request head the native plane's parser (hyper) refuses and aiohttp
    takes, checked in the order hyper meets them; None when it is fine."""
    if isinstance(request, _HttpRequest) and request.unsupported_version:
        return 400  # HTTP/0.9, HTTP/2.0 in an HTTP/1 request line
    if len(request.raw_headers) > MAX_REQUEST_HEADERS:
        return 431
    codings = request.headers.getall("Transfer-Encoding", ())  # aiohttp: one at most
    if codings:
        if request.version == HttpVersion10:
            return 400  # no chunked framing in HTTP/1.0 (nginx and hyper: 400)
        if codings[0].strip().lower() != "chunked":
            return 501  # nginx: "unknown Transfer-Encoding"; a coding would be lost upstream
    return None


class _HttpRequest(web.BaseRequest):
    unsupported_version = False
    """The request line named a version other than HTTP/1.0 and 1.1."""


class PythonDataPlane:
    """The gateway's data plane on asyncio + aiohttp (``--engine python``).

    Same constructor as ``_core.DataPlane`` plus ``pipeline``: the plugin pipeline it runs
    in-process. ``view`` (a :class:`~pygateway.runner.PluginView`) is what plugins see of
    the config; the gateway replaces it on every config change.
    """

    def __init__(
        self,
        listen: Sequence[str],
        workers: int,
        router: str = "radixtree_host_uri",
        trusted_addresses: Sequence[str] = (),
        header_read_timeout: float = 60.0,
        demo_origin: str | None = None,
        debug: bool = False,
        *,
        pipeline: Pipeline | None = None,
    ) -> None:
        try:
            params = path_mode(router)
        except ValueError as err:
            raise ValueError(str(err)) from None
        if not header_read_timeout > 0:
            raise ValueError("header_read_timeout must be > 0")
        try:
            self._trusted = IpSet(trusted_addresses)
        except ValueError as err:
            raise EngineError(f"trusted_addresses: {err}") from None
        self._listen = list(listen)
        self.workers = workers
        """Accepted for compatibility; the Python engine serves on one event loop."""
        self._keepalive = header_read_timeout
        self.debug = debug
        self.pipeline = pipeline
        self.view = PluginView()
        self._routes: RouteTable[RouteEntry] = RouteTable.empty(params)
        self._upstreams: dict[str, Upstream] = {}
        self._pools = Pools()
        self._apply_lock = threading.Lock()
        self._demo_sock = _bind(demo_origin) if demo_origin is not None else None
        self._demo_addr = _sock_addr(self._demo_sock) if self._demo_sock is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._http: list[web_server.Server] = []
        self._addrs: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._plans: dict[str, _RoutePlan] = {}

    # -- the Gateway's interface ----------------------------------------------------

    def start(self) -> list[str]:
        """Bind the listeners and serve on a background thread; return "HOST:PORT" strings."""
        if self._thread is not None:
            raise EngineError("gateway is already running")
        socks = [_bind(a) for a in self._listen]
        loop = _new_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="pygateway-python-engine", daemon=True)
        self._thread.start()
        ready.wait(10)
        try:
            self._call(self._open(socks), 10)
        except BaseException:
            self._halt()
            raise
        self._addrs = [_sock_addr(s) for s in socks]
        return list(self._addrs)

    def apply(self, changes: str) -> None:
        """Apply a JSON change set (``docs/CONTRACT-snapshot.md``): all or nothing."""
        try:
            cs = json.loads(changes)
        except ValueError as err:
            raise EngineError(f"invalid change set: {err}") from None
        # plugin_metadata reaches plugins through the view (PluginView.plugin_metadata).
        unknown = set(cs) - {
            "upsert_upstreams",
            "delete_upstreams",
            "upsert_routes",
            "delete_routes",
            "plugin_metadata",
        }
        if unknown:
            raise EngineError(f"invalid change set: unknown field `{sorted(unknown)[0]}`")
        with self._apply_lock:
            try:
                built = [Upstream(c, self._pools) for c in cs.get("upsert_upstreams") or []]
                upserts = [(r, self._entry(r)) for r in cs.get("upsert_routes") or []]
                routes = self._routes.with_changes(upserts, cs.get("delete_routes") or [])
            except (ValueError, KeyError, TypeError) as err:
                raise EngineError(str(err)) from None
            upstreams = dict(self._upstreams)
            old: list[Upstream] = []
            for up in built:
                replaced = upstreams.get(up.key)
                if replaced is not None:
                    old.append(replaced)
                upstreams[up.key] = up
            self._upstreams = upstreams
            self._routes = routes
            for key in cs.get("delete_upstreams") or []:
                gone = upstreams.get(key)
                if gone is not None:
                    old.append(gone)
                    upstreams = dict(upstreams)
                    del upstreams[key]
                    self._upstreams = upstreams
            self._close_later(old)

    def stop(self, drain_timeout: float) -> None:
        """Stop accepting; in-flight requests get ``drain_timeout`` seconds to finish."""
        if self._thread is None or self._loop is None:
            return
        # aiohttp reads a zero timeout as "no timeout": the shortest drain is 10 ms.
        drain = max(drain_timeout, 0.01)
        try:
            self._call(self._close(drain), drain + 10)
        except Exception:
            log.exception("python engine: shutdown failed")
        self._halt()
        self._addrs = []

    def addresses(self) -> list[str]:
        return list(self._addrs)

    @property
    def demo_address(self) -> str | None:
        return self._demo_addr

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def route_count(self) -> int:
        return len(self._routes)

    def call(self, fn: Callable[[], Any], timeout: float = 30) -> Any:
        """Run ``fn`` on the engine's loop between requests (plugins never see a half reload)."""
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            return fn()

        async def run() -> Any:
            return fn()

        return self._call(run(), timeout)

    # -- lifecycle on the loop ------------------------------------------------------

    def _call(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        fut: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def _halt(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            if not thread.is_alive():
                loop.close()
        self._loop = None
        self._thread = None

    def _server(self, handler: Callable[[web.BaseRequest], Any]) -> web_server.Server:
        return _Server(
            handler,
            request_factory=_request_factory,
            auto_decompress=False,
            keepalive_timeout=self._keepalive,
            max_line_size=MAX_HEADER_LINE,
            max_field_size=MAX_HEADER_LINE,
            access_log=None,
        )

    async def _open(self, socks: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        http = self._server(self._handle)
        self._http.append(http)
        for sock in socks:
            self._servers.append(await loop.create_server(http, sock=sock, backlog=4096))
        if self._demo_sock is not None:
            demo = self._server(_demo)
            self._http.append(demo)
            self._servers.append(await loop.create_server(demo, sock=self._demo_sock))
            self._demo_sock = None

    async def _close(self, drain: float) -> None:
        for srv in self._servers:
            srv.close()
        for http in self._http:
            http.pre_shutdown()  # idle keep-alive connections close now, busy ones after
        await asyncio.gather(*(http.shutdown(drain) for http in self._http), return_exceptions=True)
        for srv in self._servers:
            await srv.wait_closed()
        self._servers.clear()
        self._http.clear()
        for up in self._upstreams.values():
            up.close()
        await close_redis_clients()

    def _close_later(self, old: list[Upstream]) -> None:
        """Idle connections of replaced upstreams are closed on the loop (it owns them),
        but for the pools that live upstreams share."""
        loop = self._loop
        if not old:
            return
        if loop is None or loop.is_closed():
            self._close_unshared(old)
            return
        loop.call_soon_threadsafe(self._close_unshared, old)

    def _close_unshared(self, old: list[Upstream]) -> None:
        # The live upstreams as they are now, not at apply time: a later apply may have
        # taken one of these pools back.
        keep = {id(n.pool) for up in self._upstreams.values() for n in up.nodes}
        for up in old:
            up.close(keep)

    def _entry(self, r: Mapping[str, Any]) -> RouteEntry:
        return RouteEntry(
            id=str(r["id"]),
            upstream=r.get("upstream"),
            timeout=Timeouts.of(r.get("timeout")),
            phases=frozenset(r.get("phases") or ()),
            plugins=r.get("plugins") or {},
            name=r.get("name"),
            service_id=r.get("service_id"),
            websocket=bool(r.get("websocket")),
        )

    # -- one request ----------------------------------------------------------------

    def _peer(self, request: web.BaseRequest) -> _Peer:
        """The connection's addresses, derived on its first request."""
        proto = request.protocol
        known = proto.peer if isinstance(proto, _Handler) else None
        if known is not None:
            return known
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        local = transport.get_extra_info("sockname") if transport is not None else None
        peer_t = (str(peer[0]), int(peer[1])) if peer else ("127.0.0.1", 0)
        local_t = (str(local[0]), int(local[1])) if local else ("127.0.0.1", 0)
        ip = ipaddress.ip_address(peer_t[0])
        found = _Peer(
            ip=ip,
            addr=(str(ip), peer_t[1]),
            local=(str(ipaddress.ip_address(local_t[0])), local_t[1]),
            trusted=bool(self._trusted) and self._trusted.matches(ip),
        )
        if isinstance(proto, _Handler):
            proto.peer = found
        return found

    def _info(self, request: web.BaseRequest) -> RequestInfo:
        """The request as the router sees it; raises BadRequest (400)."""
        raw = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in request.raw_headers]
        authority, target = split_target(request.raw_path)
        host_headers = [v for n, v in raw if n == "host"]
        version = request.version
        host = request_host(host_headers, authority, version < HttpVersion11)
        path, _, query = target.partition("?")
        peer = self._peer(request)
        if peer.trusted:
            xff = [v for n, v in raw if n == "x-forwarded-for"]
            client = client_addr(xff, peer.ip, self._trusted)
            client_ip = str(client)
        else:
            client, client_ip = peer.ip, peer.addr[0]
            raw = hide_claims(raw, peer.local[1])
        return RequestInfo(
            method=request.method,
            request_uri=target,
            headers=raw,
            host=host,
            path=normalize_path(path),
            query=query if "?" in target else None,
            client=client,
            peer=peer.addr,
            local=peer.local,
            version=_VERSIONS.get(version) or f"HTTP/{version.major}.{version.minor}",
            client_ip=client_ip,
            peer_trusted=peer.trusted,
        )

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        refused = _refused_head(request)
        if refused is not None:
            reply = html_error(refused)
            reply.headers.append(("connection", "close"))
            return await self._send(request, reply, None)
        if request.method == "TRACE":
            # nginx refuses TRACE before any phase runs ("client sent TRACE method").
            return await self._send(request, html_error(405), None)
        try:
            info = self._info(request)
        except BadRequest as err:
            log.info("bad request: %s", err)
            reply = html_error(400)
            reply.headers.append(("connection", "close"))
            return await self._send(request, reply, None)
        m = self._routes.match(info)
        if m is None:
            return await self._send(request, json_error(404, "404 Route Not Found"), None)
        route = m.payload
        upstream = self._upstreams.get(route.upstream) if route.upstream else None
        client_host = info.header("host")
        if client_host is None:
            client_host, _ = split_target(request.raw_path)
        fwd = Forward(route.id, upstream, route.timeout, client_host, client_host, route.upstream)
        if route.websocket:
            fwd.upgrade = _upgrade_asked(info)
        body = (
            RequestBody(request.content, _expect_continue(request))
            if request.body_exists
            else NO_BODY
        )
        if not route.phases or self.pipeline is None:
            reply = await forward(info, fwd, body, None)
            if self.debug:
                reply.headers.append(("apisix-plugins", "no plugin"))
            return await self._send(request, reply, None)
        return await self._with_plugins(request, info, m.params, route, fwd, body)

    async def _with_plugins(
        self,
        request: web.BaseRequest,
        info: RequestInfo,
        params: list[tuple[str, str]],
        route: RouteEntry,
        fwd: Forward,
        body: RequestBody,
    ) -> web.StreamResponse:
        """A route with plugins: the phases around the upstream exchange."""
        assert self.pipeline is not None
        view = self.view
        conf = view.routes.get(route.id)
        plugins = conf.get("plugins") if conf is not None else route.plugins
        ctx = _Ctx(_Request(info, route.id, params, body), route.meta, view)  # type: ignore[arg-type]
        known = self._plan(route.id, plugins or {}, view.global_rules)
        run = Execution(self.pipeline, ctx, known.plan)
        debug: str | None = None
        reply: Reply | None = None
        changes: Changes | None = None
        if route.request_phases:
            try:
                if body.exists:
                    await body.prefetch(PLUGIN_BODY_LIMIT, (route.timeout or Timeouts()).read)
                if known.sync:
                    resp = run.run_phases(known.phases)
                else:
                    resp = await _request_phases(run)
            except ClientBodyError as err:  # the client stalled or broke its body
                reply, resp = html_error(err.status), None
            except Exception:
                log.exception("plugin phases failed")
                reply, resp = _internal_error(), None
            if self.debug:
                debug = run.debug_header()
            if resp is not None:
                reply = plugin_reply(resp.status, resp.headers, resp.body)
            elif reply is None and ctx.changes.changed:
                ch = ctx.changes
                changes = Changes(
                    set_headers=[(n, v) for n, v in ch.set_headers.values()],
                    remove_headers=sorted(ch.removed_headers),
                    uri=upstream_target(ch, info.request_uri),
                    method=ch.method,
                    host=ch.host,
                )
                if ch.host is not None:
                    fwd.client_host = ch.host
        if reply is None:
            reply = await forward(info, fwd, body, changes)
        if route.header_filter:
            try:
                ctx.set_response(reply.status, reply.headers)
                if run.plan.has_async("header_filter"):
                    await run.run_phase_async("header_filter")
                else:
                    run.run_phase("header_filter")
                _replace_head(reply, ctx.status, ctx.response_headers.items_list())
            except Exception:
                log.exception("header_filter failed")
                if reply.tunnel is not None:
                    reply.tunnel[0].close()  # the 101 is not sent: no tunnel
                return await self._send(request, _internal_error(), None)
            if self.debug:
                debug = run.debug_header()
        if debug is not None:
            reply.headers = [(n, v) for n, v in reply.headers if n.lower() != "apisix-plugins"]
            reply.headers.append(("apisix-plugins", debug))
        if route.body_filter:
            _filter_body(reply, run)
        if route.response_phases and run.plan.steps("log"):
            return await self._send(request, reply, lambda: self._log(run, reply))
        return await self._send(request, reply, None)

    def _plan(self, route_id: str, plugins: Any, rules: Any) -> _RoutePlan:
        """The route's plan (the pipeline's, with the plugins' sync variants), cached."""
        assert self.pipeline is not None
        epoch = self.pipeline.epoch
        known = self._plans.get(route_id)
        if (
            known is not None
            and known.plugins is plugins
            and known.rules is rules
            and known.epoch == epoch
        ):
            return known
        plan = _with_sync_variants(self.pipeline.plan(plugins, rules))
        known = _RoutePlan(
            plugins,
            rules,
            epoch,
            plan,
            sync=not plan.steps("rewrite") and not any(plan.has_async(p) for p in REQUEST_PHASES),
            phases=tuple(p for p in REQUEST_PHASES if plan.steps(p)),
        )
        if len(self._plans) > 65536:
            self._plans.clear()
        self._plans[route_id] = known
        return known

    def _log(self, run: Execution, reply: Reply) -> None:
        """The log phase, once the response is over (not holding up the connection)."""
        ctx = run.ctx
        assert isinstance(ctx, SimpleCtx)
        ctx.set_response(reply.status, reply.headers)
        if run.plan.has_async("log"):
            task = asyncio.ensure_future(run.run_phase_async("log"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            run.run_phase("log")

    async def _send(
        self,
        request: web.BaseRequest,
        reply: Reply,
        after: Callable[[], None] | None,
    ) -> web.StreamResponse:
        """Write the reply; a body failing mid-way closes the client connection."""
        if reply.tunnel is not None:
            try:
                return await _tunnel(request, reply, reply.tunnel)
            finally:
                _log_phase(after)
        headers: list[tuple[str, str]] = []
        close = reply.status == 408
        for name, value in reply.headers:
            lname = name.lower()
            if lname in _BODY_FRAMING:
                continue
            if lname == "connection" and value.lower() == "close":
                close = True
            headers.append((name, value))
        whole = isinstance(reply.body, bytes)
        reason = reply.reason if reply.reason is not None else _REASONS.get(reply.status)
        resp = (_WholeResponse if whole else _Response)(
            status=reply.status, reason=reason, headers=headers
        )
        if reply.length is not None:
            resp.content_length = reply.length
        if close:
            resp.force_close()
        head_only = request.method == "HEAD"
        if head_only and isinstance(reply.body, bytes) and reply.length is None:
            resp.content_length = len(reply.body)
        try:
            await resp.prepare(request)
            if isinstance(reply.body, bytes):
                if reply.body and not head_only:  # HEAD: the head alone, as nginx
                    await resp.write(reply.body)  # with the head, in one write
            else:
                try:
                    async for data, _last in reply.body:
                        if data:
                            await resp.write(data)
                except Exception as err:
                    log.warning("response body aborted: %s", err)
                    if request.transport is not None:
                        request.transport.close()
                    return resp
            await resp.write_eof()
            if close and request.protocol is not None:
                request.protocol.force_close()  # no lingering over a stalled or bad body
        except (ConnectionError, asyncio.CancelledError):
            if not whole:
                await _discard(reply.body)
            raise
        finally:
            _log_phase(after)
        return resp


def _log_phase(after: Callable[[], None] | None) -> None:
    """Run the log phase once the response is over; its failure is logged, never raised."""
    if after is not None:
        try:
            after()
        except Exception:
            log.exception("log phase failed")


def _upgrade_asked(info: RequestInfo) -> str | None:
    """The protocol the client asks to switch to: ``Upgrade``, with ``upgrade`` among the
    ``Connection`` tokens."""
    protocol = info.header("upgrade")
    if protocol is None:
        return None
    tokens = (t.strip().lower() for n, v in info.headers if n == "connection" for t in v.split(","))
    return protocol if "upgrade" in tokens else None


TUNNEL_HIGH_WATER = 256 * 1024
"""Bytes queued towards one side of a tunnel before the other side's reading pauses."""


class _Tunnel:
    """A client connection joined to an upstream one after a 101. It takes the place of
    aiohttp's payload parser (``set_parser``, as its WebSocketResponse does, for the bytes
    that came with the request), then of its protocol (:class:`_TunnelProtocol`), so the
    client's bytes go upstream as they arrive; :meth:`pump` copies the upstream's to the
    client until either side ends or nothing moves for ``idle`` seconds (nginx's
    ``proxy_read_timeout``)."""

    def __init__(self, conn: UpstreamConn, client: asyncio.Transport, idle: float) -> None:
        self.conn = conn
        self.client = client
        self.idle = idle
        self.last = time.monotonic()
        self.client_gone = False

    # aiohttp's payload-parser slot: the client's bytes
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.last = time.monotonic()
        upstream = self.conn.transport
        if not upstream.is_closing():
            upstream.write(bytes(data))
            if upstream.get_write_buffer_size() > TUNNEL_HIGH_WATER:
                self.client.pause_reading()  # resumed by pump once the upstream drained
        return False, b""

    def feed_eof(self) -> None:
        self.client_gone = True
        self.conn.proto._wake()

    async def pump(self) -> None:
        """Upstream to client until either side ends (a half-close ends the tunnel: aiohttp
        closes a client connection at its EOF) or ``idle`` passes with no byte moved."""
        p = self.conn.proto
        upstream = self.conn.transport
        while not self.client_gone and not self.client.is_closing():
            if p.buf and self.client.get_write_buffer_size() <= TUNNEL_HIGH_WATER:
                self.last = time.monotonic()
                data = bytes(p.buf)
                p.buf.clear()
                self.client.write(data)
                continue
            if p.buf:
                upstream.pause_reading()  # the client reads slower than the upstream sends
            elif p.eof:
                return
            else:
                upstream.resume_reading()
            if upstream.get_write_buffer_size() <= TUNNEL_HIGH_WATER:
                self.client.resume_reading()
            left = self.last + self.idle - time.monotonic()
            if left <= 0:
                log.debug("tunnel idle for %.0fs: closed", self.idle)
                return
            stalled = bool(p.buf) or self.client_paused()  # no callback: polled while so
            try:
                await p.wait_data(min(left, 0.05) if stalled else left)
            except asyncio.TimeoutError:
                continue

    def client_paused(self) -> bool:
        reading = getattr(self.client, "is_reading", None)
        return reading is not None and not reading()


class _TunnelProtocol(asyncio.Protocol):
    """The client connection's protocol while it is a tunnel's: bytes to the tunnel, the end
    to the tunnel and to aiohttp's protocol (whose bookkeeping needs it)."""

    def __init__(self, tunnel: _Tunnel, http: asyncio.Protocol) -> None:
        self.tunnel = tunnel
        self.http = http

    def data_received(self, data: bytes) -> None:
        self.tunnel.feed_data(data)

    def eof_received(self) -> bool:
        self.tunnel.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.feed_eof()
        self.http.connection_lost(exc)

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()


async def _tunnel(
    request: web.BaseRequest, reply: Reply, tunnel: tuple[UpstreamConn, float]
) -> web.StreamResponse:
    """Answer 101 with the upstream's headers, then join the two connections."""
    conn, idle = tunnel
    resp = web.StreamResponse(status=101, headers=reply.headers)
    try:
        await resp.prepare(request)
        client, proto = request.transport, request.protocol
        if client is None or proto is None:
            return resp
        joined = _Tunnel(conn, client, idle)
        proto.set_parser(joined)  # type: ignore[arg-type]  # takes what came after the head
        # From here the client's bytes bypass aiohttp, whose protocol drops them once the
        # node drains: a draining node keeps its tunnels until they end or the drain times out.
        client.set_protocol(_TunnelProtocol(joined, proto))
        await joined.pump()
    finally:
        conn.close()
        if request.protocol is not None:
            request.protocol.force_close()
        if request.transport is not None:
            request.transport.close()
    return resp


def _plugin_body(job: _Request) -> bytes:
    data = job.read_body(PLUGIN_BODY_LIMIT)
    if data is None:
        raise RequestBodyTooLarge(f"request body larger than {PLUGIN_BODY_LIMIT} bytes")
    return data


async def _discard(body: Any) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            pass


def _internal_error() -> Reply:
    return json_error(500, "internal error")


def _expect_continue(request: web.BaseRequest) -> Callable[[], None]:
    """Answers ``Expect: 100-continue`` the first time the body is read (as hyper does)."""
    sent = False

    def send() -> None:
        nonlocal sent
        if sent:
            return
        sent = True
        expect = request.headers.get("Expect", "")
        if expect.lower() == "100-continue" and request.version == HttpVersion11:
            transport = request.transport
            if transport is not None and not transport.is_closing():
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    return send


async def _request_phases(run: Execution) -> PluginResponse | None:
    """The request phases, each sync or awaited: after rewrite a consumer's plugins may
    have joined the plan (``run.plan`` changes)."""
    for phase in REQUEST_PHASES:
        plan = run.plan
        if plan.has_async(phase) or (phase == "rewrite" and plan.steps("rewrite")):
            resp = await run.run_phase_async(phase)
        else:
            resp = run.run_phase(phase)
        if resp is not None:
            return resp
    return None


def _with_sync_variants(plan: Plan) -> Plan:
    """``plan`` where a plugin offers a sync variant of an async phase for its conf
    (``sync_variant(phase, conf)``, e.g. limit-count's local policy): no task per call."""

    def swapped(steps: tuple[Step, ...]) -> list[Step]:
        out = []
        for step in steps:
            variant = getattr(step.plugin, "sync_variant", None)
            if variant is not None:
                methods = dict(step.methods)
                for phase, (_fn, is_async) in step.methods.items():
                    sync = variant(phase, step.conf) if is_async else None
                    if sync is not None:
                        methods[phase] = (sync, False)
                if methods != step.methods:
                    step = dataclasses.replace(step, methods=methods)
            out.append(step)
        return out

    global_steps = swapped(plan.global_steps)
    route_steps = swapped(plan.route_steps)
    if global_steps == list(plan.global_steps) and route_steps == list(plan.route_steps):
        return plan
    return Plan.build(global_steps, route_steps, plan.route_plugins)


def _replace_head(reply: Reply, status: int, headers: list[tuple[str, str]]) -> None:
    """header_filter's status and headers; the body's framing stays the gateway's."""
    if 100 <= status <= 999 and status != reply.status:
        reply.status = status
        reply.reason = None  # the upstream's phrase was for its status
    length = [(n, v) for n, v in reply.headers if n.lower() == "content-length"]
    # A reply's own headers are well-formed (parsed from the upstream, or the gateway's).
    reply.headers = [*plugin_headers(headers, set(reply.headers)), *length[:1]]


def _filter_body(reply: Reply, run: Execution) -> None:
    """Run the body through the plugins' body_filter; the client gets it chunked."""
    source = reply.body
    reply.length = None
    reply.headers = [(n, v) for n, v in reply.headers if n.lower() != "content-length"]
    use_async = run.plan.has_async("body_filter")

    async def filtered() -> Any:
        async def pieces() -> Any:
            if isinstance(source, bytes):
                yield source, True
            else:
                async for piece in source:
                    yield piece

        ended = False
        async for data, last in pieces():
            if use_async:
                out = await run.body_filter_async(data, last)
            else:
                out = run.body_filter(data, last)
            ended = last
            yield out, last
        if not ended:
            out = (
                await run.body_filter_async(b"", True) if use_async else run.body_filter(b"", True)
            )
            yield out, True

    reply.body = filtered()


async def _demo(request: web.BaseRequest) -> web.StreamResponse:
    """The built-in demo origin of the embedded default config."""
    text = (
        "hello from the pygateway demo origin\n"
        f"method: {request.method}\nuri: {request.raw_path}\n"
        f"host: {request.headers.get('Host', '-')}\n"
        f"x-forwarded-for: {request.headers.get('X-Forwarded-For', '-')}\n"
    )
    return web.Response(text=text, headers={"Content-Type": "text/plain; charset=utf-8"})
