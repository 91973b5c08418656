"""Test helpers for plugin authors: an echo upstream, a gateway in a few lines, a client.

A plugin test needs an upstream to proxy to, a running gateway with the plugin registered,
and a way to send requests::

    from pygateway.testing import Origin, get, route, run_gateway

    def test_my_plugin():
        with Origin() as origin, run_gateway(
            routes=[route("/*", origin, plugins={"my-plugin": {"value": "x"}})],
            plugins=[MyPlugin],
        ) as gw:
            status, headers, body = get(gw, "/hello")
            assert status == 200
            assert origin.last["headers"]["x-mine"] == "x"

With pytest, the fixtures ``pygateway_origin`` and ``pygateway_gateway`` do the set-up and
the clean-up; enable them in your ``conftest.py``::

    pytest_plugins = ["pygateway.testing"]

Only the standard library is used; pytest is imported if it is installed (the fixtures exist
only then) and is never a dependency of pygateway.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, NamedTuple, Optional, TypeVar, Union

from .gateway import Gateway
from .plugin import Plugin, PluginRegistry

__all__ = [
    "Client",
    "GatewayFactory",
    "Origin",
    "Reply",
    "check_conf",
    "client",
    "eventually",
    "get",
    "post",
    "request",
    "route",
    "run_gateway",
    "start_gateway",
]

T = TypeVar("T")

HeaderInput = Optional[Union[Mapping[str, str], Iterable[tuple[str, str]]]]


# -- the echo upstream -----------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _EchoServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body are separate writes: avoid Nagle + delayed-ACK stalls.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers, up to the empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        record: dict[str, Any] = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "header_list": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        self.server.origin._record(record)
        status = 200
        if path.startswith("/status/"):
            try:
                status = int(path.rsplit("/", 1)[1])
            except ValueError:
                status = 400
        payload = json.dumps(record).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _EchoServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    origin: Origin


class Origin:
    """A threaded HTTP/1.1 upstream on a free ``127.0.0.1`` port that echoes each request.

    The response is JSON: ``{"method", "path" (with the query), "headers" (lower-cased
    names), "header_list", "body"}``; ``/status/<code>`` answers with that status.  Every
    request is also recorded in :attr:`requests` (same dicts, oldest first).  Started on
    construction; use it as a context manager or call :meth:`stop`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
        self._server.origin = self
        self.port: int = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="pygateway-test-origin", daemon=True
        )
        self._thread.start()
        self._stopped = False

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(record)

    @property
    def addr(self) -> str:
        """``127.0.0.1:PORT``: what an upstream's ``nodes`` needs."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A copy of the requests received so far (oldest first)."""
        with self._lock:
            return list(self._requests)

    @property
    def last(self) -> dict[str, Any]:
        """The latest request received (``AssertionError`` if none arrived)."""
        with self._lock:
            if not self._requests:
                raise AssertionError("the origin has received no request")
            return self._requests[-1]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Origin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- config helpers --------------------------------------------------------------------


def route(
    uri: str,
    *upstreams: Origin | str,
    plugins: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A route dict: ``uri`` to the given origins / ``HOST:PORT`` nodes (weight 1 each).

    ``plugins`` and any other route field (``id``, ``methods``, ``hosts``...) are copied in.
    """
    route_: dict[str, Any] = {"uri": uri}
    if upstreams:
        nodes = {(u.addr if isinstance(u, Origin) else u): 1 for u in upstreams}
        route_["upstream"] = {"nodes": nodes}
    if plugins is not None:
        route_["plugins"] = dict(plugins)
    route_.update(fields)
    return route_


def check_conf(
    plugin: type[Plugin], conf: dict[str, Any], schema_type: str = "schema"
) -> str | None:
    """Validate ``conf`` against ``plugin``'s schema and ``check_schema`` (no gateway).

    Returns the error text (APISIX wording) or None; on success the defaults are filled in
    ``conf`` in place.  ``schema_type``: ``"schema"``, ``"consumer"`` or ``"metadata"``.
    """
    registry = PluginRegistry()
    registry.register(plugin)
    try:
        return registry.check(plugin.name, conf, schema_type)
    finally:
        registry.close()


# -- gateways --------------------------------------------------------------------------


def start_gateway(
    routes: Sequence[Mapping[str, Any]] | str | os.PathLike[str] = (),
    plugins: Iterable[type[Plugin]] = (),
    *,
    consumers: Sequence[Mapping[str, Any]] | None = None,
    global_rules: Sequence[Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
    **node_settings: Any,
) -> Gateway:
    """A started :class:`~pygateway.Gateway` with ``plugins`` registered; stop it yourself.

    ``routes`` is a list of route dicts, or the path of an APISIX standalone file.
    ``consumers``, ``global_rules`` and ``config`` (any other top-level keys: ``services``,
    ``upstreams``, ``plugin_metadata``, ``consumer_groups``...) complete an inline config.
    ``node_settings`` are node config keys (``debug=True``, ``plugin_timeout``,
    ``plugin_paths``, ``plugins`` = the enabled list...); ``listen`` defaults to a free
    ``127.0.0.1`` port and ``workers`` to 2.  Raises :class:`~pygateway.ConfigError` when the
    config (e.g. a plugin conf) is invalid.
    """
    node_settings.setdefault("listen", ["127.0.0.1:0"])
    node_settings.setdefault("workers", 2)
    if isinstance(routes, (str, os.PathLike)):
        if consumers is not None or global_rules is not None or config is not None:
            raise TypeError("consumers/global_rules/config need inline routes, not a file")
        gw = Gateway(routes, **node_settings)
    else:
        inline: dict[str, Any] = dict(config or {})
        inline["routes"] = [dict(r) for r in routes]
        if consumers is not None:
            inline["consumers"] = [dict(c) for c in consumers]
        if global_rules is not None:
            inline["global_rules"] = [dict(g) for g in global_rules]
        gw = Gateway(config=inline, **node_settings)
    # The registry exists once the Gateway is built; the config is validated by start(),
    # so plugins must be registered in between.
    for cls in plugins:
        gw.register_plugin(cls)
    try:
        return gw.start()
    except BaseException:
        with contextlib.suppress(Exception):
            gw.stop(0)
        raise


@contextlib.contextmanager
def run_gateway(
    routes: Sequence[Mapping[str, Any]] | str | os.PathLike[str] = (),
    plugins: Iterable[type[Plugin]] = (),
    *,
    consumers: Sequence[Mapping[str, Any]] | None = None,
    global_rules: Sequence[Mapping[str, Any]] | None = None,
    config: Mapping[str, Any] | None = None,
    **node_settings: Any,
) -> Iterator[Gateway]:
    """:func:`start_gateway` as a context manager: the gateway stops (no drain) on exit."""
    gw = start_gateway(
        routes,
        plugins,
        consumers=consumers,
        global_rules=global_rules,
        config=config,
        **node_settings,
    )
    try:
        yield gw
    finally:
        gw.stop(0)


# -- client ----------------------------------------------------------------------------


class Reply(NamedTuple):
    """A response: unpacks as ``status, headers, body``.

    ``headers`` has lower-cased names (repeated headers joined with ``", "``).
    """

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _base(target: Gateway | Origin | str) -> tuple[str, int]:
    url = target if isinstance(target, str) else target.url
    if "//" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"not an http://HOST:PORT address: {url!r}")
    return parts.hostname, parts.port


def request(
    target: Gateway | Origin | str,
    method: str = "GET",
    path: str = "/",
    headers: HeaderInput = None,
    body: bytes | str | None = None,
    timeout: float = 10,
) -> Reply:
    """One request on a new connection to a gateway, an origin or ``http://HOST:PORT``."""
    host, port = _base(target)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        has_host = any(k.lower() == "host" for k, _ in pairs)
        conn.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
        data = body.encode() if isinstance(body, str) else body
        if data is not None and not any(k.lower() == "content-length" for k, _ in pairs):
            pairs.append(("Content-Length", str(len(data))))
        for name, value in pairs:
            conn.putheader(name, value)
        conn.endheaders(data)
        resp = conn.getresponse()
        payload = resp.read()
        merged: dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}, {value}" if key in merged else value
        return Reply(resp.status, merged, payload)
    finally:
        conn.close()


def get(
    target: Gateway | Origin | str, path: str = "/", headers: HeaderInput = None, **kw: Any
) -> Reply:
    """``GET path``; see :func:`request`."""
    return request(target, "GET", path, headers=headers, **kw)


def post(
    target: Gateway | Origin | str,
    path: str = "/",
    body: bytes | str | None = b"",
    headers: HeaderInput = None,
    **kw: Any,
) -> Reply:
    """``POST path`` with ``body``; see :func:`request`."""
    return request(target, "POST", path, headers=headers, body=body, **kw)


class Client:
    """Requests bound to one gateway: ``client(gw).get("/x")``."""

    def __init__(self, target: Gateway | Origin | str, timeout: float = 10) -> None:
        self.target = target
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str = "/",
        headers: HeaderInput = None,
        body: bytes | str | None = None,
    ) -> Reply:
        return request(self.target, method, path, headers, body, timeout=self.timeout)

    def get(self, path: str = "/", headers: HeaderInput = None) -> Reply:
        return self.request("GET", path, headers)

    def post(self, path: str = "/", body: bytes | str = b"", headers: HeaderInput = None) -> Reply:
        return self.request("POST", path, headers, body)


def client(target: Gateway | Origin | str, timeout: float = 10) -> Client:
    return Client(target, timeout)


def eventually(check: Callable[[], T], timeout: float = 2.0, interval: float = 0.01) -> T:
    """Call ``check`` until it returns a truthy value (returned) or ``timeout`` passes.

    For effects that happen after the response, such as the ``log`` phase.  An
    ``AssertionError`` raised by ``check`` counts as "not yet"; the last one is re-raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        failure: AssertionError | None = None
        try:
            result = check()
            if result:
                return result
        except AssertionError as err:
            failure = err
        if time.monotonic() >= deadline:
            if failure is not None:
                raise failure
            raise AssertionError(f"condition not met within {timeout}s: {check!r}")
        time.sleep(interval)


# -- pytest plugin ---------------------------------------------------------------------


class GatewayFactory:
    """``make(routes, plugins=[...], **settings)`` → a started gateway; see
    :func:`start_gateway`.  :meth:`close` stops every gateway it started."""

    def __init__(self) -> None:
        self.gateways: list[Gateway] = []

    def __call__(
        self,
        routes: Sequence[Mapping[str, Any]] | str | os.PathLike[str] = (),
        plugins: Iterable[type[Plugin]] = (),
        **settings: Any,
    ) -> Gateway:
        gw = start_gateway(routes, plugins, **settings)
        self.gateways.append(gw)
        return gw

    def close(self) -> None:
        while self.gateways:
            self.gateways.pop().stop(0)


try:
    import pytest
except ImportError:  # pytest is optional: the helpers above work without it
    HAVE_PYTEST = False
else:
    HAVE_PYTEST = True

if HAVE_PYTEST:

    @pytest.fixture
    def pygateway_origin() -> Iterator[Origin]:
        """An echo :class:`Origin`, stopped after the test."""
        with Origin() as origin:
            yield origin

    @pytest.fixture
    def pygateway_gateway() -> Iterator[GatewayFactory]:
        """A :class:`GatewayFactory`: ``pygateway_gateway(routes, plugins=[...], **settings)``
        starts a gateway; every gateway started is stopped after the test."""
        factory = GatewayFactory()
        try:
            yield factory
        finally:
            factory.close()
