"""What limit-conn, limit-count and limit-req share: the policy/Redis schema, key rules,
and the counters the python engine uses.

On the native engine these plugins run in Rust (``rust/limit``), at their APISIX
priorities, after the Python request plugins of the route; the classes here give the
schemas, the config checks and the python engine's implementation (local policy).
"""

from __future__ import annotations

import re
import threading
import time
from http import HTTPStatus
from typing import Any

from pygateway.ctx import Ctx

POLICIES = ("local", "redis", "redis-cluster")

KEY_TYPES = ("var", "var_combination", "constant")

REDIS_PROPERTIES: dict[str, Any] = {
    "redis_host": {"type": "string", "minLength": 2},
    "redis_port": {"type": "integer", "minimum": 1, "default": 6379},
    "redis_username": {"type": "string", "minLength": 1},
    "redis_password": {"type": "string", "minLength": 0},
    "redis_database": {"type": "integer", "minimum": 0, "default": 0},
    "redis_timeout": {"type": "integer", "minimum": 1, "default": 1000},
    "redis_ssl": {"type": "boolean", "default": False},
    "redis_ssl_verify": {"type": "boolean", "default": False},
    "redis_cluster_nodes": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "minLength": 2, "maxLength": 100},
    },
    "redis_cluster_name": {"type": "string"},
    "redis_cluster_ssl": {"type": "boolean", "default": False},
    "redis_cluster_ssl_verify": {"type": "boolean", "default": False},
    "redis_keepalive_timeout": {"type": "integer", "minimum": 1000, "default": 10000},
    "redis_keepalive_pool": {"type": "integer", "minimum": 1, "default": 100},
}

COMMON_PROPERTIES: dict[str, Any] = {
    "key": {"type": "string", "default": "remote_addr"},
    "key_type": {"type": "string", "enum": list(KEY_TYPES), "default": "var"},
    "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
    "rejected_msg": {"type": "string", "minLength": 1},
    "policy": {"type": "string", "enum": list(POLICIES), "default": "local"},
    "allow_degradation": {"type": "boolean", "default": False},
    **REDIS_PROPERTIES,
}


def check_policy(conf: dict[str, Any]) -> str | None:
    """The per-policy requirements APISIX expresses with if/then."""
    policy = conf.get("policy", "local")
    if policy == "redis" and not conf.get("redis_host"):
        return 'property "redis_host" is required'
    if policy == "redis-cluster":
        if not conf.get("redis_cluster_nodes"):
            return 'property "redis_cluster_nodes" is required'
        if not conf.get("redis_cluster_name"):
            return 'property "redis_cluster_name" is required'
    if policy != "local" and (conf.get("redis_ssl") or conf.get("redis_cluster_ssl")):
        return "redis_ssl is not supported by pygateway yet"
    return None


_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def resolve_key(ctx: Ctx, key: str, key_type: str) -> str:
    """The key value (APISIX: an empty key falls back to the client address)."""
    value: str | None
    if key_type == "constant":
        value = key
    elif key_type == "var_combination":
        resolved = 0

        def repl(m: re.Match[str]) -> str:
            nonlocal resolved
            v = ctx.var.get(m.group(1) or m.group(2))
            if v in (None, ""):
                return ""
            resolved += 1
            return str(v)

        text = _VAR.sub(repl, key)
        value = text if resolved else None
    else:
        v = ctx.var.get(key.lstrip("$"))
        value = None if v in (None, "") else str(v)
    return value if value is not None else str(ctx.remote_addr)


def resolve_amount(ctx: Ctx, value: Any) -> float | None:
    """``count: 10`` or ``count: "$http_quota"`` (APISIX 3.16+)."""
    if isinstance(value, str):
        text = str(ctx.var.get(value[1:]) or "") if value.startswith("$") else value
        try:
            number = float(text)
        except ValueError:
            return None
        return number if number > 0 else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


class LocalCounters:
    """The python engine's node-local counters (one lock: this engine runs on one loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fixed: dict[str, tuple[int, float]] = {}
        self._bucket: dict[str, tuple[float, float]] = {}
        self._conns: dict[str, int] = {}
        self._ops = 0

    def _sweep(self, now: float) -> None:
        self._ops += 1
        if self._ops % 1024:
            return
        self._fixed = {k: v for k, v in self._fixed.items() if v[1] > now}

    def count(self, key: str, limit: int, window: float, cost: int = 1) -> tuple[bool, int, float]:
        """Fixed window from the first request: (allowed, remaining, seconds to reset)."""
        now = time.monotonic()
        with self._lock:
            self._sweep(now)
            remaining, reset_at = self._fixed.get(key, (limit, 0.0))
            if reset_at <= now:
                remaining, reset_at = limit, now + window
            remaining -= cost
            self._fixed[key] = (remaining, reset_at)
        return remaining >= 0, max(remaining, 0), max(reset_at - now, 0.0)

    def bucket(self, key: str, rate: float, burst: float) -> float | None:
        """Leaky bucket: the delay in seconds, or None when rejected."""
        now = time.monotonic()
        with self._lock:
            prev = self._bucket.get(key)
            excess = 0.0 if prev is None else max(prev[0] - rate * (now - prev[1]) + 1, 0.0)
            if excess > burst:
                return None
            self._bucket[key] = (excess, now)
        return excess / rate

    def enter(self, key: str, maximum: int) -> int | None:
        with self._lock:
            n = self._conns.get(key, 0) + 1
            if n > maximum:
                return None
            self._conns[key] = n
            return n

    def leave(self, key: str) -> None:
        with self._lock:
            n = self._conns.get(key, 0) - 1
            if n <= 0:
                self._conns.pop(key, None)
            else:
                self._conns[key] = n


def counters(plugin: object) -> LocalCounters:
    """The counters of one plugin instance (one per gateway: gateways never share)."""
    found = plugin.__dict__.get("_counters")
    if found is None:
        found = plugin.__dict__["_counters"] = LocalCounters()
    return found


def owner_of(ctx: Ctx) -> str:
    """The object whose counters these are: the global rules, or the route."""
    return "global_rules" if ctx.plugin_global else f"routes/{ctx.var.get('route_id') or ''}"


def conf_ident(name: str, ctx: Ctx, conf: dict[str, Any]) -> str:
    """Counter identity: owner + conf (APISIX ``gen_limit_key``), or the group."""
    group = conf.get("group")
    if group:
        return f"{name}:group:{group}"
    stripped = {k: v for k, v in conf.items() if k != "_meta"}
    return f"{name}:{owner_of(ctx)}:{hash(repr(sorted(stripped.items())))}"


_NGINX_REASONS = {503: "Service Temporarily Unavailable", 413: "Request Entity Too Large"}


def rejection(
    conf: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> tuple[int, Any, list[tuple[str, str]]]:
    """The answer to a refused request: ``{"error_msg": rejected_msg}``, or without a
    message the bare status (nginx's error page, as APISIX's ``exit(code)``)."""
    code = int(conf.get("rejected_code", 503))
    msg = conf.get("rejected_msg")
    if msg:
        return code, {"error_msg": msg}, list(headers or [])
    reason = _NGINX_REASONS.get(code) or (
        HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else ""
    )
    line = f"{code} {reason}".rstrip()
    page = (
        f"<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}"
        "</h1></center>\r\n<hr><center>pygateway</center>\r\n</body>\r\n</html>\r\n"
    )
    return code, page, [*(headers or []), ("Content-Type", "text/html")]
