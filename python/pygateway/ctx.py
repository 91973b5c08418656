"""The request context plugins see (``Ctx``) and a pure-Python implementation of it.

:class:`Ctx` is the structural type both engines implement (``docs/CONTRACT-plugins.md``).
:class:`SimpleCtx` builds one from plain request data; it records what plugins change in
the upstream request (:meth:`SimpleCtx.upstream_changes`) and carries the response status and
headers for ``header_filter``.  The pure-Python engine and the unit tests use it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any, Protocol, Union
from urllib.parse import parse_qsl, urlencode

__all__ = [
    "Ctx",
    "Headers",
    "RequestBodyTooLarge",
    "SimpleCtx",
    "UpstreamChanges",
    "Vars",
]

HeaderInput = Union[Mapping[str, str], Iterable[tuple[str, str]], None]

_DEFAULT_LOG = logging.getLogger("pygateway.plugins")


class RequestBodyTooLarge(Exception):
    """The request body exceeds ``client_max_body_size`` (the pipeline answers 413)."""


class Ctx(Protocol):
    """What a plugin phase sees; see the contract for the meaning of each member."""

    method: str
    uri: str
    query: str
    host: str
    args: dict[str, str]
    consumer: dict[str, Any] | None
    consumer_name: str | None
    state: dict[str, Any]
    status: int
    plugin_name: str
    plugin_global: bool
    """Whether the running plugin conf comes from a global rule."""
    log: logging.Logger

    @property
    def path(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def remote_addr(self) -> str: ...
    @property
    def server_port(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def var(self) -> Mapping[str, Any]: ...
    @property
    def route_id(self) -> str | None: ...
    @property
    def route_name(self) -> str | None: ...
    @property
    def service_id(self) -> str | None: ...
    @property
    def response_headers(self) -> MutableMapping[str, str]: ...

    def set_header(self, name: str, value: str) -> None: ...
    def remove_header(self, name: str) -> None: ...
    def body(self) -> bytes: ...
    async def body_async(self) -> bytes: ...
    def attach_consumer(self, consumer: dict[str, Any]) -> None: ...
    def plugin_metadata(self, name: str) -> dict[str, Any] | None: ...


class Headers(MutableMapping[str, str]):
    """Case-insensitive, order-keeping, multi-valued header mapping.

    ``h[name]`` / ``get`` give the first value, :meth:`get_all` every value; ``h[name] = v``
    replaces all values; :meth:`add` appends one; iteration yields each name once (as first
    spelled).
    """

    def __init__(self, items: HeaderInput = None) -> None:
        self._items: list[tuple[str, str]] = []
        if items is None:
            return
        pairs = items.items() if isinstance(items, Mapping) else items
        for name, value in pairs:
            self._items.append((str(name), str(value)))

    def __getitem__(self, name: str) -> str:
        key = name.lower()
        for n, v in self._items:
            if n.lower() == key:
                return v
        raise KeyError(name)

    def __setitem__(self, name: str, value: str) -> None:
        key = name.lower()
        for i, (n, _) in enumerate(self._items):
            if n.lower() == key:
                self._items[i] = (n, str(value))
                self._items = [
                    item for j, item in enumerate(self._items) if j <= i or item[0].lower() != key
                ]
                return
        self._items.append((name, str(value)))

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        kept = [item for item in self._items if item[0].lower() != key]
        if len(kept) == len(self._items):
            raise KeyError(name)
        self._items = kept

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(n.lower() == key for n, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for n, _ in self._items:
            if n.lower() not in seen:
                seen.add(n.lower())
                yield n

    def __len__(self) -> int:
        return len({n.lower() for n, _ in self._items})

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def get_all(self, name: str) -> list[str]:
        key = name.lower()
        return [v for n, v in self._items if n.lower() == key]

    def add(self, name: str, value: str) -> None:
        self._items.append((name, str(value)))

    def items_list(self) -> list[tuple[str, str]]:
        """Every (name, value) pair, in order."""
        return list(self._items)


def _raw_arg(query: str | None, name: str) -> str | None:
    """nginx's ``$arg_<name>``: the first value of ``name`` (any case) as sent, undecoded."""
    if not query:
        return None
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key.lower() == name.lower():
            return value
    return None


class Vars(Mapping[str, Any]):
    """APISIX variables of a :class:`SimpleCtx`, computed on access; missing → ``None``.

    ``uri``, ``request_uri``, ``host``, ``remote_addr``, ``server_port``, ``request_method``,
    ``scheme``, ``args``/``query_string``, ``is_args``, ``arg_*`` (raw, any case: nginx's),
    ``http_*``, ``cookie_*``,
    ``route_id``, ``route_name``, ``service_id``, ``consumer_name``, ``status`` (``"000"``
    before the response head), the matched path parameters by name; plus anything assigned
    with ``var[name] = value``.
    """

    _NAMES = (
        "uri",
        "request_uri",
        "real_request_uri",
        "host",
        "remote_addr",
        "server_port",
        "request_method",
        "scheme",
        "args",
        "query_string",
        "is_args",
        "route_id",
        "route_name",
        "service_id",
        "consumer_name",
        "status",
    )

    def __init__(self, ctx: SimpleCtx) -> None:
        self._ctx = ctx
        self._custom: dict[str, Any] = {}

    def _lookup(self, name: str) -> Any:
        if name in self._custom:
            return self._custom[name]
        ctx = self._ctx
        if name == "uri":
            return ctx.uri
        if name in ("request_uri", "real_request_uri"):
            return ctx.request_uri
        if name == "host":
            return ctx.host
        if name == "remote_addr":
            return ctx.remote_addr
        if name == "server_port":
            return str(ctx.server_port)
        if name == "request_method":
            return ctx.method
        if name == "scheme":
            return ctx.scheme
        if name in ("args", "query_string"):
            return ctx.query or None
        if name == "is_args":
            return "?" if ctx.query else ""
        if name in ("route_id", "route_name", "service_id", "consumer_name"):
            return getattr(ctx, name)
        if name == "status":  # nginx's $status: "000" until the response head is known
            return str(ctx.status) if ctx.status_known else "000"
        if name.startswith("arg_"):
            return _raw_arg(ctx.query, name[4:])
        if name.startswith("http_"):
            return ctx.headers.get(name[5:].replace("_", "-"))
        if name.startswith("cookie_"):
            return ctx.cookies().get(name[7:])
        return ctx.params.get(name)

    def __getitem__(self, name: str) -> Any:
        return self._lookup(name)

    def get(self, name: str, default: Any = None) -> Any:
        value = self._lookup(name)
        return default if value is None else value

    def __setitem__(self, name: str, value: Any) -> None:
        self._custom[name] = value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None

    def __iter__(self) -> Iterator[str]:
        names = [*self._NAMES, *self._ctx.params, *self._custom]
        seen: set[str] = set()
        for name in names:
            if name not in seen and self._lookup(name) is not None:
                seen.add(name)
                yield name

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class UpstreamChanges:
    """What plugins changed in the request sent upstream (None: unchanged)."""

    method: str | None = None
    uri: str | None = None
    query: str | None = None
    host: str | None = None
    upstream_uri: str | None = None
    set_headers: dict[str, tuple[str, str]] = field(default_factory=dict)
    """lower-cased name → (name, value), last write wins."""
    removed_headers: set[str] = field(default_factory=set)
    """lower-cased names removed (and not set again afterwards)."""

    @property
    def changed(self) -> bool:
        return any(
            v is not None for v in (self.method, self.uri, self.query, self.host, self.upstream_uri)
        ) or bool(self.set_headers or self.removed_headers)


def parse_args(query: str) -> dict[str, str]:
    args: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        args.setdefault(key, value)
    return args


class SimpleCtx:
    """A :class:`Ctx` over plain request data.

    ``body`` is the request body, or ``body_reader`` (sync, or async for
    :meth:`body_async`) produces it on demand.  ``consumers`` backs :meth:`find_consumer` /
    :meth:`get_consumer`; ``plugin_metadata`` and ``plugin_attr`` back the optional extras of
    the same names.
    """

    def __init__(
        self,
        *,
        method: str = "GET",
        path: str = "/",
        query: str = "",
        headers: HeaderInput = None,
        host: str | None = None,
        scheme: str = "http",
        remote_addr: str = "127.0.0.1",
        server_port: int = 80,
        route_id: str | None = None,
        route_name: str | None = None,
        service_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        body_reader: Callable[[], bytes] | Callable[[], Awaitable[bytes]] | None = None,
        client_max_body_size: int | None = None,
        consumers: Iterable[dict[str, Any]] = (),
        plugin_metadata: Mapping[str, dict[str, Any]] | None = None,
        plugin_attr: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        self._headers = Headers(headers)
        self._method = method.upper()
        self._uri = path
        self._query = query
        self._args = parse_args(query)
        self._host = host if host is not None else self._host_from_headers()
        self.scheme = scheme
        self.remote_addr = remote_addr
        self.server_port = server_port
        self.route_id = route_id
        self.route_name = route_name
        self.service_id = service_id
        self.params: dict[str, Any] = dict(params or {})
        self.request_uri = path + ("?" + query if query else "")
        self._body = body
        self._body_reader = body_reader
        self.client_max_body_size = client_max_body_size
        self._consumers = list(consumers)
        self._plugin_metadata = dict(plugin_metadata or {})
        self._plugin_attr = dict(plugin_attr or {})

        self.consumer: dict[str, Any] | None = None
        self.consumer_name: str | None = None
        self.consumer_group_id: str | None = None
        self.state: dict[str, Any] = {}
        self.status = 200
        self.response_headers: Headers = Headers()
        self.plugin_name = ""
        self.plugin_global = False
        self.log: logging.Logger = _DEFAULT_LOG
        self.changes = UpstreamChanges()
        self.var = Vars(self)

    def _host_from_headers(self) -> str:
        host = self._headers.get("host", "")
        if host.startswith("["):
            end = host.find("]")
            return host[: end + 1] if end > 0 else host
        return host.rsplit(":", 1)[0] if host.count(":") == 1 else host

    # -- request, settable --------------------------------------------------------------

    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        self._method = value.upper()
        self.changes.method = self._method

    @property
    def uri(self) -> str:
        return self._uri

    @uri.setter
    def uri(self, value: str) -> None:
        self._uri = value
        self.changes.uri = value

    @property
    def path(self) -> str:
        return self._uri

    @path.setter
    def path(self, value: str) -> None:
        self.uri = value

    @property
    def query(self) -> str:
        return self._query

    @query.setter
    def query(self, value: str) -> None:
        self._query = value or ""
        self._args = parse_args(self._query)
        self.changes.query = self._query

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @args.setter
    def args(self, value: Mapping[str, Any]) -> None:
        self.query = urlencode({k: v for k, v in value.items() if v is not None}, doseq=True)

    @property
    def host(self) -> str:
        return self._host

    @host.setter
    def host(self, value: str) -> None:
        self._host = value
        self.changes.host = value

    @property
    def upstream_uri(self) -> str | None:
        return self.changes.upstream_uri

    @upstream_uri.setter
    def upstream_uri(self, value: str | None) -> None:
        self.changes.upstream_uri = value

    # -- headers ------------------------------------------------------------------------

    @property
    def headers(self) -> Headers:
        return self._headers

    def set_header(self, name: str, value: str) -> None:
        """Set a request header (replacing every value) for later plugins and upstream."""
        value = str(value)
        self._headers[name] = value
        key = name.lower()
        self.changes.removed_headers.discard(key)
        self.changes.set_headers[key] = (name, value)

    def remove_header(self, name: str) -> None:
        key = name.lower()
        if name in self._headers:
            del self._headers[name]
        self.changes.set_headers.pop(key, None)
        self.changes.removed_headers.add(key)

    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for raw in self._headers.get_all("cookie"):
            try:
                jar.load(raw)
            except Exception:
                continue
        return {k: morsel.value for k, morsel in jar.items()}

    def upstream_changes(self) -> UpstreamChanges:
        return self.changes

    def upstream_headers(self) -> list[tuple[str, str]]:
        """The request headers as they go upstream (after every plugin change)."""
        return self._headers.items_list()

    # -- body ---------------------------------------------------------------------------

    def _checked(self, data: bytes) -> bytes:
        limit = self.client_max_body_size
        if limit is not None and limit > 0 and len(data) > limit:
            raise RequestBodyTooLarge(f"request body of {len(data)} bytes exceeds {limit}")
        self._body = data
        return data

    def body(self) -> bytes:
        """The request body (read once, then cached); 413 beyond ``client_max_body_size``."""
        if self._body is not None:
            return self._checked(self._body)
        if self._body_reader is None:
            return self._checked(b"")
        data = self._body_reader()
        if not isinstance(data, (bytes, bytearray)):
            close = getattr(data, "close", None)
            if close is not None:
                close()
            raise TypeError("body_reader is async; use await ctx.body_async()")
        return self._checked(bytes(data))

    async def body_async(self) -> bytes:
        if self._body is not None or self._body_reader is None:
            return self.body()
        data = self._body_reader()
        if not isinstance(data, (bytes, bytearray)):
            data = await data
        return self._checked(bytes(data))

    # -- consumers ----------------------------------------------------------------------

    def attach_consumer(self, consumer: dict[str, Any]) -> None:
        self.consumer = consumer
        name = consumer.get("consumer_name") or consumer.get("username")
        self.consumer_name = None if name is None else str(name)
        group = consumer.get("group_id")
        self.consumer_group_id = None if group is None else str(group)

    def find_consumer(self, plugin_name: str, key_field: str, value: Any) -> dict[str, Any] | None:
        for consumer in self._consumers:
            conf = (consumer.get("plugins") or {}).get(plugin_name)
            if isinstance(conf, dict) and conf.get(key_field) == value:
                found = dict(consumer)
                found["auth_conf"] = conf
                found.setdefault("consumer_name", consumer.get("username"))
                return found
        return None

    def get_consumer(self, username: str) -> dict[str, Any] | None:
        for consumer in self._consumers:
            if consumer.get("username") == username:
                found = dict(consumer)
                found.setdefault("consumer_name", username)
                return found
        return None

    def plugin_metadata(self, name: str) -> dict[str, Any] | None:
        return self._plugin_metadata.get(name)

    def plugin_attr(self, name: str) -> dict[str, Any] | None:
        return self._plugin_attr.get(name)

    # -- response -----------------------------------------------------------------------

    status_known = False
    """Whether :attr:`status` is the response's (set with :meth:`set_response`)."""

    def set_response(self, status: int, headers: HeaderInput = None) -> None:
        """The engine sets the response head before ``header_filter``."""
        self.status = status
        self.status_known = True
        self.response_headers = Headers(headers)
