"""Compile a validated :class:`~pygateway.config.standalone.Config` into the snapshot the
Rust data plane consumes (format: ``docs/CONTRACT-snapshot.md``), and compute change sets.

Every reference is resolved here: a route carries its merged plugins, its hosts (its own
or its service's) and the key of its upstream.  Inline upstreams get the keys
``routes/<id>`` / ``services/<id>``, named ones ``upstreams/<id>``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .jsonvalue import json_copy
from .resources import parse_addr
from .standalone import Config, Item

__all__ = [
    "ChangeSet",
    "CompileCache",
    "Snapshot",
    "change_set_json",
    "compile_config",
    "compile_route",
    "compile_route_into",
    "compile_upstream",
    "compile_upstream_into",
    "diff",
    "full",
]

JSON = dict[str, Any]
ChangeSet = dict[str, list[Any]]

KEEPALIVE_DEFAULTS: JSON = {"size": 320, "idle_timeout": 60, "requests": 1000}


@dataclass
class Snapshot:
    """The compiled configuration: routes by id and upstreams by key, in order."""

    routes: dict[str, JSON] = field(default_factory=dict)
    upstreams: dict[str, JSON] = field(default_factory=dict)

    def to_dict(self) -> JSON:
        return {"routes": list(self.routes.values()), "upstreams": list(self.upstreams.values())}


def _num(value: Any) -> Any:
    """Integral floats (``1.0``) become ints; other values are returned unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_U32 = 2**32 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _int(value: Any, low: int, high: int) -> int:
    """An integer field as the data plane's type holds it. APISIX's schemas bound few of
    them (a weight or a priority of 1e23 is valid there); past the type's range, the end of
    the range stands for it."""
    return max(low, min(high, int(value)))


def _timeout(value: Any) -> JSON | None:
    if not isinstance(value, dict):
        return None
    return {k: _num(value[k]) for k in ("connect", "send", "read")}


def _bracket_v6(host: str) -> str:
    if host.startswith("["):
        return host
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return host
    return f"[{host}]"


def _nodes(nodes: Any, scheme: str) -> list[JSON]:
    default_port = 443 if scheme == "https" else 80
    out: list[JSON] = []
    if isinstance(nodes, dict):
        for addr, weight in nodes.items():
            host, port = parse_addr(addr)
            out.append(
                {
                    "host": host,
                    "port": default_port if port is None else port,
                    "weight": _int(weight, 0, _U32),
                    "priority": 0,
                }
            )
    elif isinstance(nodes, list):
        for node in nodes:
            port = node.get("port")
            out.append(
                {
                    "host": _bracket_v6(node["host"]),
                    "port": default_port if port is None else int(port),
                    "weight": _int(node["weight"], 0, _U32),
                    "priority": _int(node.get("priority", 0), _I64_MIN, _I64_MAX),
                }
            )
    return out


def compile_upstream(key: str, conf: JSON) -> JSON:
    """A validated upstream conf -> CompiledUpstream."""
    scheme = conf.get("scheme", "http")
    pool = {**KEEPALIVE_DEFAULTS, **(conf.get("keepalive_pool") or {})}
    retries = conf.get("retries")
    retry_timeout = conf.get("retry_timeout")
    return {
        "key": key,
        "nodes": _nodes(conf.get("nodes"), scheme),
        "type": conf.get("type", "roundrobin"),
        "retries": None if retries is None else _int(retries, 0, _U32),
        "retry_timeout": None if retry_timeout is None else _num(retry_timeout),
        "timeout": _timeout(conf.get("timeout")),
        "pass_host": conf.get("pass_host", "pass"),
        "upstream_host": conf.get("upstream_host"),
        "scheme": scheme,
        "keepalive_pool": {
            "size": _int(pool["size"], 0, _U32),
            "idle_timeout": _num(pool["idle_timeout"]),
            "requests": _int(pool["requests"], 0, _I64_MAX),
        },
    }


def _upstream_key(route: Item, service: Item | None) -> str | None:
    conf = route.conf
    if "upstream" in conf:
        return f"routes/{route.id}"
    if "upstream_id" in conf:
        return f"upstreams/{_sid(conf['upstream_id'])}"
    if service is not None:
        if "upstream" in service.conf:
            return f"services/{service.id}"
        if "upstream_id" in service.conf:
            return f"upstreams/{_sid(service.conf['upstream_id'])}"
    return None


def _sid(value: Any) -> str:
    from .standalone import item_id

    return item_id(value)


def _hosts(conf: JSON) -> list[str] | None:
    if "host" in conf:
        return [str(conf["host"]).lower()]
    if "hosts" in conf:
        return [str(h).lower() for h in conf["hosts"]]
    return None


def compile_route(route: Item, config: Config) -> JSON:
    """A validated route (with its service and plugin_config) -> CompiledRoute."""
    conf = route.conf
    service = None
    if "service_id" in conf:
        service = config.services.get(_sid(conf["service_id"]))
    plugin_config = None
    if "plugin_config_id" in conf:
        plugin_config = config.plugin_configs.get(_sid(conf["plugin_config_id"]))

    plugins: JSON = {}
    if service is not None:
        plugins.update(json_copy(service.conf.get("plugins") or {}))
    if plugin_config is not None:
        plugins.update(json_copy(plugin_config.conf.get("plugins") or {}))
    plugins.update(json_copy(conf.get("plugins") or {}))

    hosts = _hosts(conf)
    if hosts is None and service is not None:
        hosts = _hosts(service.conf)

    if "remote_addr" in conf:
        remote_addrs: list[str] | None = [conf["remote_addr"]]
    else:
        remote_addrs = list(conf["remote_addrs"]) if "remote_addrs" in conf else None

    return {
        "id": route.id,
        "name": conf.get("name"),
        "seq": route.seq,
        "uris": [conf["uri"]] if "uri" in conf else list(conf["uris"]),
        "hosts": hosts,
        "methods": list(conf["methods"]) if conf.get("methods") else None,
        "remote_addrs": remote_addrs,
        "vars": json_copy(conf["vars"]) if conf.get("vars") else None,
        "priority": _int(conf.get("priority", 0), _I64_MIN, _I64_MAX),
        "upstream": _upstream_key(route, service),
        "timeout": _timeout(conf.get("timeout")),
        "service_id": _sid(conf["service_id"]) if "service_id" in conf else None,
        "plugins": plugins,
        "websocket": _websocket(conf, service),
    }


def _websocket(conf: JSON, service: Item | None) -> bool:
    """``enable_websocket``: the route's, else its service's (APISIX's access phase)."""
    if "enable_websocket" in conf:
        return bool(conf["enable_websocket"])
    return service is not None and bool(service.conf.get("enable_websocket"))


class CompileCache:
    """Compiled routes and upstreams, reused while the items they come from are the same
    objects (a store's config builder keeps unchanged items): a write to a large store
    recompiles what it touched only. The cache holds the items, so identity is safe."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[Item | None, ...], JSON]] = {}
        self._seen: set[str] = set()

    def get(self, key: str, sources: tuple[Item | None, ...], make: Callable[[], JSON]) -> JSON:
        self._seen.add(key)
        hit = self._entries.get(key)
        if hit is not None and len(hit[0]) == len(sources):
            if all(a is b for a, b in zip(hit[0], sources)):
                return dict(hit[1])  # callers may add keys to the top level
        value = make()
        self._entries[key] = (sources, value)
        return dict(value)

    def forget(self, *keys: str) -> None:
        """Drop the entries of items that are gone (a partial compilation does not sweep)."""
        for key in keys:
            self._entries.pop(key, None)
            self._seen.discard(key)

    def sweep(self) -> None:
        """Forget what the last compilation did not use."""
        for key in [k for k in self._entries if k not in self._seen]:
            del self._entries[key]
        self._seen.clear()


def compile_config(config: Config, cache: CompileCache | None = None) -> Snapshot:
    """Compile a validated configuration.  Routes with ``status: 0`` are left out."""
    memo = cache or CompileCache()
    snap = Snapshot()
    for item in config.upstreams.values():
        compile_upstream_into(snap, item, memo)
    for item in config.services.values():
        if isinstance(item.conf.get("upstream"), dict):
            key = f"services/{item.id}"
            upstream = item.conf["upstream"]
            snap.upstreams[key] = memo.get(key, (item,), partial(compile_upstream, key, upstream))
    for item in config.routes.values():
        compile_route_into(snap, item, config, memo)
    memo.sweep()
    return snap


def compile_upstream_into(snap: Snapshot, item: Item, memo: CompileCache) -> None:
    """Put a named upstream (``upstreams/<id>``) into ``snap``."""
    key = f"upstreams/{item.id}"
    snap.upstreams[key] = memo.get(key, (item,), partial(compile_upstream, key, item.conf))


def compile_route_into(snap: Snapshot, item: Item, config: Config, memo: CompileCache) -> None:
    """Put a route (and its inline upstream) into ``snap``, or nothing for ``status: 0``."""
    conf = item.conf
    if conf.get("status", 1) == 0:
        return
    if isinstance(conf.get("upstream"), dict):
        key = f"routes/{item.id}"
        upstream = conf["upstream"]
        snap.upstreams[key] = memo.get(key, (item,), partial(compile_upstream, key, upstream))
    service = config.services.get(_sid(conf["service_id"])) if "service_id" in conf else None
    plugin_config = (
        config.plugin_configs.get(_sid(conf["plugin_config_id"]))
        if "plugin_config_id" in conf
        else None
    )
    snap.routes[item.id] = memo.get(
        f"route:{item.id}",
        (item, service, plugin_config),
        partial(compile_route, item, config),
    )


def _empty() -> ChangeSet:
    return {
        "upsert_upstreams": [],
        "delete_upstreams": [],
        "upsert_routes": [],
        "delete_routes": [],
    }


def full(snapshot: Snapshot, previous: Snapshot | None = None) -> ChangeSet:
    """The change set of a full load: everything upserted, and what ``previous`` had that
    ``snapshot`` has not deleted."""
    changes = _empty()
    changes["upsert_upstreams"] = [json_copy(u) for u in snapshot.upstreams.values()]
    changes["upsert_routes"] = [json_copy(r) for r in snapshot.routes.values()]
    if previous is not None:
        changes["delete_upstreams"] = [k for k in previous.upstreams if k not in snapshot.upstreams]
        changes["delete_routes"] = [r for r in previous.routes if r not in snapshot.routes]
    return changes


def diff(
    old: Snapshot,
    new: Snapshot,
    routes: Iterable[str] | None = None,
    upstreams: Iterable[str] | None = None,
) -> ChangeSet:
    """What turns ``old`` into ``new``: new or changed items upserted, removed ones deleted.

    ``routes`` / ``upstreams``: the only ids / keys that may differ (a partial update),
    instead of comparing everything."""
    changes = _empty()
    _diff_kind(changes, "upstreams", old.upstreams, new.upstreams, upstreams)
    _diff_kind(changes, "routes", old.routes, new.routes, routes)
    return changes


def _diff_kind(
    changes: ChangeSet,
    kind: str,
    old: dict[str, JSON],
    new: dict[str, JSON],
    keys: Iterable[str] | None,
) -> None:
    for key in list(dict.fromkeys([*new, *old])) if keys is None else keys:
        item = new.get(key)
        if item is None:
            if key in old:
                changes[f"delete_{kind}"].append(key)
        elif old.get(key) != item:
            changes[f"upsert_{kind}"].append(json_copy(item))


def is_empty(changes: ChangeSet) -> bool:
    return not any(changes.values())


def change_set_json(changes: ChangeSet) -> str:
    """Serialise a change set for ``_core.Gateway.apply``."""
    return json.dumps(changes, separators=(",", ":"), ensure_ascii=False)
