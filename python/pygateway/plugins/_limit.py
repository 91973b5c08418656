"""What limit-conn, limit-count and limit-req share: the policy/Redis schema, key rules,
and the counters the python engine uses.

On the native engine these plugins run in Rust (``rust/limit``), at their APISIX
priorities, after the Python request plugins of the route; the classes here give the
schemas, the config checks and the python engine's implementation: local counters here,
the Redis policies in ``_redis``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pygateway.ctx import Ctx
from pygateway.pipeline import nginx_page

if TYPE_CHECKING:
    from pygateway.plugin import PluginRegistry

from ._redis import Target
from ._util import resolve_var

POLICIES = ("local", "redis", "redis-cluster")

KEY_TYPES = ("var", "var_combination", "constant")

# No defaults here: APISIX only fills the redis fields of the policy in use (if/then),
# and the data planes read them with their defaults (rust/limit, _redis.py).
REDIS_PROPERTIES: dict[str, Any] = {
    "redis_host": {"type": "string", "minLength": 2},
    "redis_port": {"type": "integer", "minimum": 1},
    "redis_username": {"type": "string", "minLength": 1},
    "redis_password": {"type": "string", "minLength": 0},
    "redis_database": {"type": "integer", "minimum": 0},
    "redis_timeout": {"type": "integer", "minimum": 1},
    "redis_ssl": {"type": "boolean"},
    "redis_ssl_verify": {"type": "boolean"},
    "redis_cluster_nodes": {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "minLength": 2, "maxLength": 100},
    },
    "redis_cluster_name": {"type": "string"},
    "redis_cluster_ssl": {"type": "boolean"},
    "redis_cluster_ssl_verify": {"type": "boolean"},
    "redis_keepalive_timeout": {"type": "integer", "minimum": 1000},
    "redis_keepalive_pool": {"type": "integer", "minimum": 1},
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


def limiter_specs(
    registry: PluginRegistry,
    enabled: Collection[str] | None,
    owner: str,
    plugins: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """What the native data plane runs of ``owner``'s plugins: its enabled, not disabled
    limiters, in priority order, as ``{name, owner, conf, filter}`` (rust/limit ``LimiterSpec``)."""
    specs = []
    for name, conf in plugins.items():
        plugin = registry.get(name)
        if plugin is None or not plugin.native or not isinstance(conf, dict):
            continue
        if enabled is not None and name not in enabled:
            continue
        meta = conf.get("_meta") or {}
        if meta.get("disable") is True:
            continue
        priority = meta.get("priority", plugin.priority)
        spec = {"name": name, "owner": owner, "conf": conf, "filter": meta.get("filter")}
        specs.append((-priority, spec))
    return [spec for _, spec in sorted(specs, key=lambda s: s[0])]


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
    return None


def resolve_key(ctx: Ctx, key: str, key_type: str) -> str:
    """The key value (APISIX: an empty key falls back to the client address)."""
    value: str | None
    if key_type == "constant":
        value = key
    elif key_type == "var_combination":
        value = resolve_rule_key(ctx, key)  # the same template rules as the native limiters
    else:
        v = ctx.var.get(key.lstrip("$"))
        value = None if v in (None, "") else str(v)
    return value if value is not None else str(ctx.remote_addr)


def resolve_amount(ctx: Ctx, value: Any) -> float | None:
    """``count: 10``, ``"$http_quota"`` or ``"${http_quota ?? 10}"`` (APISIX 3.16+); None when
    the resolved text is not a positive integer (the request then fails, as in APISIX)."""
    if isinstance(value, str):
        text = resolve_var(value, _Present(ctx.var)) if "$" in value else value
        try:
            number = float(text.strip())
        except ValueError:
            return None
        return number if number > 0 and number.is_integer() else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def resolve_rule_key(ctx: Ctx, key: str) -> str | None:
    """A ``rules[]`` or ``var_combination`` key: a template (``"${http_user}"``, ``"$a $b"``,
    ``"${a ?? x}"``); None when no variable of it resolved (a rule then does not apply, as in
    APISIX; another key falls back to the client address)."""
    resolved = 0

    def count(value: str) -> str:
        nonlocal resolved
        resolved += 1
        return value

    text = resolve_var(key, _Present(ctx.var), count)
    return text if resolved else None


class _Present(Mapping[str, Any]):
    """``ctx.var`` where an empty value counts as absent (the native limiters' view)."""

    def __init__(self, var: Mapping[str, Any]) -> None:
        self._var = var

    def __getitem__(self, name: str) -> Any:
        value = self._var.get(name)
        if value is None or value == "":
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(self._var)

    def __len__(self) -> int:
        return len(self._var)


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
    """The object whose counters these are: the route (``routes/<id>``, as the native
    engine names it), or the global rules (the native engine's ``global_rules/<id>``: the
    rule's id is not known to a plugin phase here)."""
    return "global_rules" if ctx.plugin_global else f"routes/{ctx.var.get('route_id') or ''}"


def conf_ident(name: str, ctx: Ctx, conf: dict[str, Any]) -> str:
    """Counter identity: owner + conf (APISIX ``gen_limit_key``), or the group; the same
    text as the native engine's, so nodes of both engines on one Redis share counters."""
    group = conf.get("group")
    if group:
        return f"{name}:group:{group}"
    return f"{name}:{owner_of(ctx)}:{compiled(conf).hash}"


class Compiled:
    """What a conf object always gives: its hash and its Redis target (None: local)."""

    __slots__ = ("conf", "hash", "target")

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf  # held so that id(conf) stays this conf's while cached
        self.hash = conf_hash(conf)
        self.target = Target.of(conf)


_COMPILED: dict[int, Compiled] = {}


def compiled(conf: dict[str, Any]) -> Compiled:
    """The cached :class:`Compiled` of a conf object (confs are replaced, never mutated)."""
    found = _COMPILED.get(id(conf))
    if found is None or found.conf is not conf:
        if len(_COMPILED) >= 4096:
            _COMPILED.clear()
        found = _COMPILED[id(conf)] = Compiled(conf)
    return found


def conf_hash(conf: dict[str, Any]) -> int:
    """FNV-1a (64 bit) over the conf's JSON without ``_meta``, written as serde_json
    writes it (compact, keys sorted, its float layout): rust/limit/mod.rs ``conf_hash``."""
    h = 0xCBF29CE484222325
    text = _json({k: v for k, v in conf.items() if k != "_meta"})
    for b in text.encode("utf-8", "surrogatepass"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _json(value: Any) -> str:
    if isinstance(value, dict):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ",".join(f"{_STR(k)}:{_json(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_json(v) for v in value) + "]"
    if isinstance(value, str):
        return _STR(value)
    if value is None or isinstance(value, bool):
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    return _STR(str(value))


_STR = json.JSONEncoder(ensure_ascii=False).encode  # escapes exactly as serde_json does


def _float(x: float) -> str:
    """A float as serde_json writes it: the shortest digits (as Python's), plain from 1e-5
    to below 1e16, else ``1e+16``, ``2.5e-7``."""
    if not math.isfinite(x):
        return "null"
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    if not digits:
        return sign + "0.0"
    k = int(exp or 0) - len(frac)
    stripped = digits.rstrip("0")
    k += len(digits) - len(stripped)
    digits = stripped
    kk = len(digits) + k  # 10^(kk-1) <= |x| < 10^kk
    if 0 <= k and kk <= 16:
        return f"{sign}{digits}{'0' * k}.0"
    if 0 < kk <= 16:
        return f"{sign}{digits[:kk]}.{digits[kk:]}"
    if -5 < kk <= 0:
        return f"{sign}0.{'0' * -kk}{digits}"
    if len(digits) == 1:
        return f"{sign}{digits}e{kk - 1:+d}"
    return f"{sign}{digits[0]}.{digits[1:]}e{kk - 1:+d}"


def failed(plugin: str) -> tuple[int, dict[str, str]]:
    """The answer when the counters cannot be reached (and no ``allow_degradation``)."""
    return 500, {"error_msg": f"failed to limit {plugin}"}


def rejection(
    conf: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> tuple[int, Any, list[tuple[str, str]]]:
    """The answer to a refused request: ``{"error_msg": rejected_msg}``, or without a
    message the bare status (nginx's error page, as APISIX's ``exit(code)``)."""
    code = int(conf.get("rejected_code", 503))
    msg = conf.get("rejected_msg")
    if msg:
        return code, {"error_msg": msg}, list(headers or [])
    page = nginx_page(code)
    return code, page, [*(headers or []), ("Content-Type", "text/html")]
