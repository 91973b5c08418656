"""Route matching with the native router's semantics (``rust/router/``), in Python.

Matching order (lua-resty-radixtree, APISIX ``radixtree_host_uri``):

1. Host-bound routes first: the request host as an exact host, then the wildcard hosts
   (``*.foo.com``, ``*``) whose suffix ends the host, longest suffix first. For every
   candidate host its URI table runs; when nothing matches there the next host is tried.
2. Only if no host-bound route matched are the host-less routes tried.
3. Inside a URI table: the exact routes of the path first, then every stored prefix of the
   path, longest first. Under one key, routes are tried by priority (descending), longer
   template first, then ``seq``; the first whose methods, remote_addrs, vars and parameter
   template all pass wins, otherwise matching falls through to the next shorter key.

A :class:`RouteTable` is immutable once built: :meth:`RouteTable.with_changes` makes the
next version, and the data plane swaps its reference (readers never lock).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, Union

from ..config import expr

__all__ = [
    "IpSet",
    "Matched",
    "RequestFacts",
    "RouteTable",
    "RouterError",
    "UriTemplate",
    "path_mode",
]

T = TypeVar("T")

MAX_URI_LEN = 4096
"""Longest accepted URI template, as in APISIX's route schema."""
EXT_NAME = ":ext"
"""The capture name of an unnamed ``*`` segment (lua-resty-radixtree's)."""
METHOD_NAMES = frozenset(
    ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE")
)
_HOST_RE = re.compile(r"^\*?[0-9a-zA-Z\-._\[\]:]+$")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class RouterError(ValueError):
    """A route that cannot be compiled; the message names it."""


def path_mode(router: str) -> bool:
    """Whether ``router`` interprets ``:name`` segments (``radixtree_uri_with_parameter``)."""
    if router in ("radixtree_host_uri", "radixtree_uri"):
        return False
    if router == "radixtree_uri_with_parameter":
        return True
    raise ValueError(f"unknown router {router!r}")


class RequestFacts(Protocol):
    """What the router needs of a request (``RequestVars`` of the native router)."""

    method: str
    host: str
    path: str
    client: Address

    def var(self, name: str) -> str | None: ...


class IpSet:
    """IPv4/IPv6 addresses and CIDRs (``remote_addrs``, ``trusted_addresses``).

    An IPv4-mapped IPv6 address also matches the IPv4 networks, as dual-stack sockets
    report IPv4 peers that way.
    """

    def __init__(self, items: Iterable[str] = ()) -> None:
        self.v4: list[ipaddress.IPv4Network] = []
        self.v6: list[ipaddress.IPv6Network] = []
        for item in items:
            self.add(item)

    def add(self, text: str) -> None:
        _, slash, bits = text.partition("/")
        if slash and (not bits or len(bits) > 3 or not bits.isdigit()):
            raise ValueError(f"invalid ip address: {text}")
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"invalid ip address: {text}") from None
        if isinstance(net, ipaddress.IPv4Network):
            self.v4.append(net)
        else:
            self.v6.append(net)

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def matches(self, ip: Address) -> bool:
        if isinstance(ip, ipaddress.IPv4Address):
            return any(ip in net for net in self.v4)
        if any(ip in net for net in self.v6):
            return True
        mapped = ip.ipv4_mapped
        return mapped is not None and any(mapped in net for net in self.v4)


@dataclass(frozen=True)
class UriTemplate:
    """One ``uris`` entry, classified as lua-resty-radixtree does (``rust/router/path.rs``)."""

    template: str
    key: str
    exact: bool
    ext: bool = False
    regex: re.Pattern[str] | None = None
    names: tuple[str, ...] = ()

    @classmethod
    def compile(cls, template: str, params: bool) -> UriTemplate:
        if not template:
            raise RouterError(
                'invalid configuration: property "uri" validation failed: '
                "string too short, expected at least 1, got 0"
            )
        if len(template.encode()) > MAX_URI_LEN:
            raise RouterError(
                'invalid configuration: property "uri" validation failed: '
                f"string too long, expected at most {MAX_URI_LEN}, got {len(template)}"
            )
        colon = template.find(":") if params else -1
        star = template.find("*")
        if colon < 0 and star < 0:
            return cls(template, template, exact=True)
        cut = min(i for i in (colon, star) if i >= 0)
        is_param = colon >= 0 or star != len(template) - 1
        key = template[:cut]
        if is_param:
            regex, names = _param_regex(template, params)
            return cls(template, key, exact=False, regex=regex, names=names)
        ext = template == "*" or template.endswith("/*")
        return cls(template, key, exact=False, ext=ext)

    def check(self, path: str, out: list[tuple[str, str]]) -> bool:
        """Whether ``path`` (which reached this key) passes; appends captured parameters."""
        if self.regex is not None:
            m = self.regex.match(path)
            if m is None:
                return False
            for i, name in enumerate(self.names):
                value = m.group(i + 1)
                if value is not None:
                    out.append((name, value))
            return True
        if self.ext:
            out.append((EXT_NAME, path[len(self.key) :]))
        return True


def _param_regex(template: str, params: bool) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    parts: list[str] = []
    names: list[str] = []
    for seg in template.split("/"):
        if params and seg.startswith(":"):
            names.append(seg[1:])
            parts.append("([^/]+)")
        elif seg.startswith("*"):
            names.append(seg[1:] or EXT_NAME)
            parts.append("(.*)")
        else:
            parts.append(re.escape(seg))
    if not names:
        return None, ()
    return re.compile("(?s)" + "/".join(parts) + r"\Z"), tuple(names)


@dataclass(frozen=True, eq=False)
class Route(Generic[T]):
    """A compiled route: what matching checks, and the payload the data plane attached."""

    id: str
    payload: T
    priority: int
    seq: int
    methods: frozenset[str]
    remote: IpSet | None
    vars: Any
    has_vars: bool
    uris: tuple[UriTemplate, ...]
    hosts: tuple[tuple[str, bool], ...]
    """(host or wildcard suffix, is_exact); empty for a host-less route."""


def compile_route(spec: Mapping[str, Any], payload: T, params: bool) -> Route[T]:
    """A CompiledRoute (``docs/CONTRACT-snapshot.md``) → :class:`Route`."""
    rid = str(spec.get("id") or "")

    def fail(message: str) -> RouterError:
        return RouterError(f"route '{rid}': {message}")

    if not rid:
        raise fail("missing route id")
    raw_uris = spec.get("uris") or []
    if not raw_uris:
        raise fail(
            'invalid configuration: property "uris" validation failed: '
            "expect array to have at least 1 items"
        )
    uris: list[UriTemplate] = []
    for u in raw_uris:
        if any(t.template == u for t in uris):
            continue
        try:
            uris.append(UriTemplate.compile(u, params))
        except RouterError as err:
            raise fail(str(err)) from None
    hosts: list[tuple[str, bool]] = []
    for i, h in enumerate(spec.get("hosts") or []):
        if h != "*" and not _HOST_RE.match(h):
            raise fail(
                'invalid configuration: property "hosts" validation failed: '
                f"failed to validate item {i + 1}: failed to match pattern "
                f'"^\\\\*?[0-9a-zA-Z-._\\\\[\\\\]:]+$" with "{h}"'
            )
        lower = h.lower()
        key = (lower[1:], False) if lower.startswith("*") else (lower, True)
        if key not in hosts:
            hosts.append(key)
    methods = spec.get("methods") or []
    for i, m in enumerate(methods):
        if m not in METHOD_NAMES:
            raise fail(
                'invalid configuration: property "methods" validation failed: '
                f"failed to validate item {i + 1}: matches none of the enum values"
            )
    remote: IpSet | None = None
    if spec.get("remote_addrs"):
        remote = IpSet()
        for i, a in enumerate(spec["remote_addrs"]):
            try:
                remote.add(a)
            except ValueError as err:
                raise fail(
                    'invalid configuration: property "remote_addrs" validation failed: '
                    f"failed to validate item {i + 1}: {err}"
                ) from None
    raw_vars = spec.get("vars")
    compiled: Any = None
    if raw_vars is not None:
        try:
            compiled = expr.compile_expr(raw_vars)
        except expr.ExprError as err:
            raise fail(f"failed to validate the 'vars' expression: {err}") from None
    return Route(
        id=rid,
        payload=payload,
        priority=int(spec.get("priority") or 0),
        seq=int(spec.get("seq") or 0),
        methods=frozenset(methods),
        remote=remote,
        vars=compiled,
        has_vars=compiled is not None,
        uris=tuple(uris),
        hosts=tuple(hosts),
    )


@dataclass(frozen=True)
class Matched(Generic[T]):
    """The route a request matched and the template parameters it captured."""

    route_id: str
    payload: T
    params: list[tuple[str, str]]


Entry = tuple[Route[Any], UriTemplate]


def _order(entry: Entry) -> tuple[int, int, int, str]:
    route, template = entry
    return (-route.priority, -len(template.template), route.seq, route.id)


@dataclass
class _UriTable:
    """One URI router: exact paths and prefixes to their entries, in matching order."""

    exact: dict[str, list[Entry]] = field(default_factory=dict)
    prefix: dict[str, list[Entry]] = field(default_factory=dict)
    prefix_lengths: list[int] = field(default_factory=list)

    def add(self, entry: Entry) -> None:
        template = entry[1]
        table = self.exact if template.exact else self.prefix
        table.setdefault(template.key, []).append(entry)

    def seal(self) -> None:
        for bucket in (*self.exact.values(), *self.prefix.values()):
            bucket.sort(key=_order)
        self.prefix_lengths = sorted({len(k) for k in self.prefix}, reverse=True)

    def candidates(self, path: str) -> Iterable[list[Entry]]:
        bucket = self.exact.get(path)
        if bucket is not None:
            yield bucket
        n = len(path)
        prefix = self.prefix
        for length in self.prefix_lengths:
            if length <= n:
                found = prefix.get(path[:length])
                if found is not None:
                    yield found


def _try(entry: Entry, req: RequestFacts) -> list[tuple[str, str]] | None:
    route, template = entry
    if route.methods and req.method not in route.methods:
        return None
    if route.remote is not None and not route.remote.matches(req.client):
        return None
    if route.has_vars and not expr.evaluate(route.vars, req.var):
        return None
    params: list[tuple[str, str]] = []
    if not template.check(req.path, params):
        return None
    return params


def _in_table(table: _UriTable, req: RequestFacts) -> Matched[Any] | None:
    for bucket in table.candidates(req.path):
        for entry in bucket:
            params = _try(entry, req)
            if params is not None:
                return Matched(entry[0].id, entry[0].payload, params)
    return None


class RouteTable(Generic[T]):
    """An immutable set of routes with the native router's matching rules."""

    def __init__(self, routes: Mapping[str, Route[T]], params: bool) -> None:
        self.params = params
        self.routes: dict[str, Route[T]] = dict(routes)
        self._uri = _UriTable()
        self._exact_hosts: dict[str, _UriTable] = {}
        self._wild_hosts: dict[str, _UriTable] = {}
        for route in self.routes.values():
            entries = [(route, t) for t in route.uris]
            if not route.hosts:
                tables = [self._uri]
            else:
                tables = [
                    (self._exact_hosts if exact else self._wild_hosts).setdefault(h, _UriTable())
                    for h, exact in route.hosts
                ]
            for table in tables:
                for entry in entries:
                    table.add(entry)
        for table in (self._uri, *self._exact_hosts.values(), *self._wild_hosts.values()):
            table.seal()
        self._wild_lengths = sorted({len(s) for s in self._wild_hosts}, reverse=True)
        self._has_hosts = bool(self._exact_hosts or self._wild_hosts)

    @classmethod
    def empty(cls, params: bool) -> RouteTable[T]:
        return cls({}, params)

    def __len__(self) -> int:
        return len(self.routes)

    def with_changes(
        self,
        upserts: Sequence[tuple[Mapping[str, Any], T]],
        deletes: Sequence[str],
    ) -> RouteTable[T]:
        """The next version: removals, then upserts. All or nothing (raises RouterError)."""
        compiled = [compile_route(spec, payload, self.params) for spec, payload in upserts]
        routes = dict(self.routes)
        for rid in deletes:
            routes.pop(rid, None)
        for route in compiled:
            routes.pop(route.id, None)  # a replaced route takes its new place in order
            routes[route.id] = route
        return RouteTable(routes, self.params)

    def _host_tables(self, host: str) -> Iterable[_UriTable]:
        table = self._exact_hosts.get(host)
        if table is not None:
            yield table
        n = len(host)
        wild = self._wild_hosts
        for length in self._wild_lengths:
            if length <= n:
                found = wild.get(host[n - length :])
                if found is not None:
                    yield found

    def match(self, req: RequestFacts) -> Matched[T] | None:
        """The route for a request; None means APISIX's 404."""
        if self._has_hosts:
            for table in self._host_tables(req.host):
                m = _in_table(table, req)
                if m is not None:
                    return m
        return _in_table(self._uri, req)
