"""Checks of single configuration items (a route, an upstream, ...), APISIX-worded.

Each ``check_*`` function validates one item in place (defaults are filled in) and
returns the problems found, in APISIX's wording.  Cross-item references (``upstream_id``
...) are checked by the loader (:mod:`pygateway.config.standalone`), which knows all items.
These functions are meant to be shared with a future Admin API.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import expr, schema
from .plugins import PluginCatalog, check_plugin_metadata, check_plugins
from .validator import PathItem, SchemaError, format_path, validate

__all__ = [
    "CHECKERS",
    "SUPPORTED_BALANCERS",
    "Problem",
    "check_consumer",
    "check_consumer_group",
    "check_credential",
    "check_global_rule",
    "check_plugin_config",
    "check_plugin_metadata_item",
    "check_route",
    "check_service",
    "check_upstream",
    "parse_addr",
]

SUPPORTED_BALANCERS = ("roundrobin", "chash", "least_conn", "ewma")
SUPPORTED_SCHEMES = ("http",)  # https upstreams: not in the data plane yet


@dataclass(frozen=True)
class Problem:
    """A problem in one item: ``path`` of the field, full APISIX ``message``, ``detail``."""

    path: str
    message: str
    detail: str
    warning: bool = False


def _problem(path: str, message: str) -> Problem:
    return Problem(path, message, message)


def _schema_problem(sch: dict[str, Any], conf: Any, base: list[PathItem]) -> Problem | None:
    try:
        validate(sch, conf)
    except SchemaError as err:
        return Problem(
            format_path([*base, *err.path]),
            "invalid configuration: " + err.message,
            err.detail,
        )
    return None


def _lua_fields(conf: dict[str, Any], names: tuple[str, ...]) -> list[Problem]:
    return [
        _problem(name, f'pygateway does not run Lua: field "{name}" is not supported')
        for name in names
        if name in conf
    ]


def parse_addr(addr: str) -> tuple[str, int | None]:
    """Split a hash-form node key, ``"host:port"`` / ``"[v6]:port"`` / ``"host"``.

    IPv6 hosts keep their brackets (``[::1]``), as APISIX does.  Raises ValueError on a
    non-numeric port.
    """
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise ValueError(f"invalid address {addr}")
        host, rest = addr[: end + 1], addr[end + 1 :]
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"invalid address {addr}")
        port_text = rest[1:]
    else:
        if addr.count(":") > 1:
            try:
                ipaddress.IPv6Address(addr)
            except ValueError:
                raise ValueError(f"invalid address {addr}") from None
            return f"[{addr}]", None
        host, sep, port_text = addr.partition(":")
        if not sep:
            return host, None
    if not port_text.isdigit():
        raise ValueError(f"invalid port {port_text}")
    return host, int(port_text)


def _upstream_extra(conf: dict[str, Any], base: str) -> list[Problem]:
    """APISIX's ``check_upstream_conf`` after the schema, plus what pygateway can't do."""

    def at(field: str) -> str:
        return f"{base}.{field}" if base else field

    problems: list[Problem] = []
    nodes = conf.get("nodes")
    if isinstance(nodes, dict):
        for addr in nodes:
            try:
                _, port = parse_addr(addr)
            except ValueError as err:
                problems.append(_problem(at(f"nodes.{addr}"), str(err)))
                continue
            if port is not None and not 1 <= port <= 65535:
                problems.append(_problem(at(f"nodes.{addr}"), f"invalid port {port}"))
    if conf.get("pass_host") == "rewrite" and not conf.get("upstream_host"):
        problems.append(
            _problem(
                at("upstream_host"), "`upstream_host` can't be empty when `pass_host` is `rewrite`"
            )
        )
    for field in ("service_name", "discovery_type", "discovery_args"):
        if field in conf:
            problems.append(
                _problem(
                    at(field),
                    f'pygateway does not support service discovery: field "{field}" '
                    "is not supported",
                )
            )
            break
    tls = conf.get("tls")
    mtls = ("client_cert", "client_key", "client_cert_id")
    if isinstance(tls, dict) and any(k in tls for k in mtls):
        problems.append(
            _problem(at("tls"), "pygateway does not support upstream mTLS (tls.client_cert) yet")
        )
    scheme = conf.get("scheme", "http")
    if scheme not in SUPPORTED_SCHEMES:
        problems.append(
            _problem(at("scheme"), f'pygateway does not support upstream scheme "{scheme}"')
        )
    balancer = conf.get("type", "roundrobin")
    if balancer not in SUPPORTED_BALANCERS:
        problems.append(
            _problem(at("type"), f'pygateway does not support upstream type "{balancer}"')
        )
    if balancer == "chash":
        problems.extend(_chash(conf, at))
    if balancer in SUPPORTED_BALANCERS and balancer != "roundrobin":
        note = f'upstream type "{balancer}" is not implemented yet: nodes are used round robin'
        problems.append(Problem(at("type"), note, note, warning=True))
    if "checks" in conf:
        problems.append(
            Problem(
                at("checks"),
                'health checks are not implemented yet, field "checks" is ignored',
                'health checks are not implemented yet, field "checks" is ignored',
                warning=True,
            )
        )
    return problems


def _chash(conf: dict[str, Any], at: Callable[[str], str]) -> list[Problem]:
    hash_on = conf.get("hash_on", "vars")
    if hash_on != "consumer" and "key" not in conf:
        return [_problem(at("key"), "missing key")]
    key_schema = {
        "vars": schema.UPSTREAM_HASH_VARS,
        "header": schema.UPSTREAM_HASH_HEADER,
        "cookie": schema.UPSTREAM_HASH_HEADER,
        "vars_combinations": schema.UPSTREAM_HASH_VARS_COMBINATIONS,
    }.get(hash_on)
    if key_schema is None:
        return []
    try:
        validate(key_schema, conf["key"])
    except SchemaError as err:
        return [Problem(at("key"), "invalid configuration: " + err.message, err.message)]
    return []


def _plugins(
    conf: dict[str, Any], catalog: PluginCatalog, *, consumer: bool = False
) -> list[Problem]:
    plugins = conf.get("plugins")
    if not isinstance(plugins, dict):
        return []
    found = check_plugins(plugins, catalog, consumer=consumer)
    if found is None:
        return []
    name, message = found
    if consumer:
        message = "invalid plugins configuration: " + message
    return [_problem(f"plugins.{name}", message)]


def _not_object(conf: Any) -> list[Problem]:
    from .validator import lua_type

    return [_problem("", f"wrong type: expected object, got {lua_type(conf)}")]


def check_upstream(conf: Any, catalog: PluginCatalog) -> list[Problem]:
    if not isinstance(conf, dict):
        return _not_object(conf)
    bad = _schema_problem(schema.UPSTREAM, conf, [])
    if bad is not None:
        return [bad]
    return _upstream_extra(conf, "")


def _check_route_or_service(conf: dict[str, Any], catalog: PluginCatalog) -> list[Problem]:
    problems: list[Problem] = []
    upstream = conf.get("upstream")
    if isinstance(upstream, dict):
        problems.extend(_upstream_extra(upstream, "upstream"))
    problems.extend(_plugins(conf, catalog))
    return problems


def check_route(conf: Any, catalog: PluginCatalog) -> list[Problem]:
    if not isinstance(conf, dict):
        return _not_object(conf)
    if "host" in conf and "hosts" in conf:
        return [_problem("", "only one of host or hosts is allowed")]
    if "remote_addr" in conf and "remote_addrs" in conf:
        return [_problem("", "only one of remote_addr or remote_addrs is allowed")]
    lua = _lua_fields(conf, ("filter_func", "script", "script_id"))
    if lua:
        return lua
    bad = _schema_problem(schema.ROUTE, conf, [])
    if bad is not None:
        return [bad]
    problems = _check_route_or_service(conf, catalog)
    if "vars" in conf:
        err = expr.vars_error(conf["vars"])
        if err is not None:
            problems.append(_problem("vars", err))
    return problems


def check_service(conf: Any, catalog: PluginCatalog) -> list[Problem]:
    if not isinstance(conf, dict):
        return _not_object(conf)
    lua = _lua_fields(conf, ("script",))
    if lua:
        return lua
    bad = _schema_problem(schema.SERVICE, conf, [])
    if bad is not None:
        return [bad]
    return _check_route_or_service(conf, catalog)


def check_consumer(conf: Any, catalog: PluginCatalog) -> list[Problem]:
    if not isinstance(conf, dict):
        return _not_object(conf)
    bad = _schema_problem(schema.CONSUMER, conf, [])
    if bad is not None:
        return [bad]
    return _plugins(conf, catalog, consumer=True)


def _plugins_holder(sch: dict[str, Any]) -> Callable[[Any, PluginCatalog], list[Problem]]:
    def check(conf: Any, catalog: PluginCatalog) -> list[Problem]:
        if not isinstance(conf, dict):
            return _not_object(conf)
        bad = _schema_problem(sch, conf, [])
        if bad is not None:
            return [bad]
        return _plugins(conf, catalog)

    return check


def check_credential(conf: Any, catalog: PluginCatalog) -> list[Problem]:
    """A consumer credential: its schema, then auth plugins only (consumer-side schemas).

    The plugin type comes from the catalogue's optional ``plugin_type(name)``.
    """
    if not isinstance(conf, dict):
        return _not_object(conf)
    bad = _schema_problem(schema.CREDENTIAL, conf, [])
    if bad is not None:
        return [bad]
    problems = _plugins(conf, catalog, consumer=True)
    if problems:
        return problems
    plugin_type = getattr(catalog, "plugin_type", None)
    for name in conf.get("plugins") or {}:
        if plugin_type is not None and plugin_type(name) != "auth":
            message = "only supports auth type plugins in consumer credential"
            return [_problem(f"plugins.{name}", message)]
    return []


check_consumer_group = _plugins_holder(schema.CONSUMER_GROUP)
check_plugin_config = _plugins_holder(schema.PLUGIN_CONFIG)
check_global_rule = _plugins_holder(schema.GLOBAL_RULE)


def check_plugin_metadata_item(conf: Any, catalog: PluginCatalog) -> list[Problem]:
    if not isinstance(conf, dict):
        return _not_object(conf)
    bad = _schema_problem(schema.PLUGIN_METADATA, conf, [])
    if bad is not None:
        return [bad]
    name = conf["id"]
    body = {k: v for k, v in conf.items() if k != "id"}
    err = check_plugin_metadata(name, body, catalog)
    return [] if err is None else [_problem("", err)]


CHECKERS: dict[str, Callable[[Any, PluginCatalog], list[Problem]]] = {
    "routes": check_route,
    "services": check_service,
    "upstreams": check_upstream,
    "consumers": check_consumer,
    "consumer_groups": check_consumer_group,
    "plugin_configs": check_plugin_config,
    "global_rules": check_global_rule,
    "plugin_metadata": check_plugin_metadata_item,
    "credentials": check_credential,
}
