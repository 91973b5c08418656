"""limit-count: at most ``count`` requests per ``time_window`` seconds per key (APISIX).

Native engine: runs in Rust (``rust/limit``); this class gives the schema, the checks and
the python engine's implementation (local counters, or Redis through ``_redis``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from . import _redis
from ._limit import (
    COMMON_PROPERTIES,
    check_policy,
    compiled,
    conf_ident,
    counters,
    failed,
    rejection,
    resolve_amount,
    resolve_key,
    resolve_rule_key,
)

_HEADERS = "limit-count.headers"
Window = tuple[bool, int, float]
"""A counter's state after a request: (allowed, remaining, seconds to reset)."""
_AMOUNT = {"oneOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "string"}]}


class LimitCount(Plugin):
    name: ClassVar[str] = "limit-count"
    priority: ClassVar[int] = 1002
    native: ClassVar[bool] = True
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "count": _AMOUNT,
            "time_window": _AMOUNT,
            "window_type": {"type": "string", "enum": ["fixed", "sliding"], "default": "fixed"},
            "group": {"type": "string"},
            "show_limit_quota_header": {"type": "boolean", "default": True},
            "sync_interval": {"type": "number", "default": -1},
            "rules": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "count": _AMOUNT,
                        "time_window": _AMOUNT,
                        "key": {"type": "string"},
                        "header_prefix": {"type": "string"},
                    },
                    "required": ["count", "time_window", "key"],
                },
            },
            **COMMON_PROPERTIES,
        },
        "encrypt_fields": ["redis_password", "sentinel_password"],
    }
    metadata_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "properties": {
            "limit_header": {"type": "string", "default": "X-RateLimit-Limit"},
            "remaining_header": {"type": "string", "default": "X-RateLimit-Remaining"},
            "reset_header": {"type": "string", "default": "X-RateLimit-Reset"},
        },
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        if schema_type == "metadata":
            return None
        rules = conf.get("rules")
        if rules is not None:
            if "count" in conf or "time_window" in conf:
                return "count/time_window and rules cannot be specified at the same time"
            if conf.get("group"):
                return "group and rules cannot be specified at the same time"
            seen: set[str] = set()
            for rule in rules:
                if rule["key"] in seen:
                    return f"duplicate key '{rule['key']}' in rules"
                seen.add(rule["key"])
        elif "count" not in conf or "time_window" not in conf:
            return "value should match only one schema, but matches none"
        interval = conf.get("sync_interval", -1)
        if conf.get("policy") in ("redis", "redis-cluster") and interval != -1:
            # APISIX checks it for the Redis policies only (the local one has no sync).
            if interval < 0.1:
                return "sync_interval should not be smaller than 0.1"
            window = conf.get("time_window")
            if isinstance(window, (int, float)) and interval >= window:
                return "sync_interval should be smaller than time_window"
        return check_policy(conf)

    def sync_variant(self, phase: str, conf: dict[str, Any]) -> Callable[..., Any] | None:
        """The local policy counts without waiting: its ``access`` needs no coroutine (the
        python engine runs it inline; the Redis policies stay ``async``)."""
        if phase == "access" and compiled(conf).target is None:
            return self.access_local
        return None

    async def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        target = compiled(conf).target
        if target is None:
            return self.access_local(conf, ctx)
        window_of = (
            _redis.count_sliding if conf.get("window_type") == "sliding" else _redis.count_fixed
        )
        decision = self._decide(conf, ctx)
        try:
            key, count, window = next(decision)
            while True:
                state: Window | None
                try:
                    state = await window_of(target, key, count, window)
                except _redis.StoreError as err:
                    ctx.log.error("limit-count: %s", err)
                    if not conf.get("allow_degradation"):
                        decision.close()
                        return failed("count")
                    state = None
                key, count, window = decision.send(state)
        except StopIteration as done:
            result: Response | None = done.value
            return result

    def access_local(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        """``access`` with the local policy's counters."""
        store = counters(self)
        decision = self._decide(conf, ctx)
        try:
            request = next(decision)
            while True:
                request = decision.send(store.count(*request))
        except StopIteration as done:
            result: Response | None = done.value
            return result

    def _decide(
        self, conf: dict[str, Any], ctx: Ctx
    ) -> Generator[tuple[str, int, float], Window | None, Response | None]:
        """The decision for one request, whatever the store: yields each counter to take
        (key, count, window) and is sent its state (None: not counted, degraded)."""
        ident = conf_ident(self.name, ctx, conf)
        explicit = conf.get("rules")
        rules = explicit or [
            {"count": conf["count"], "time_window": conf["time_window"], "key": conf.get("key")}
        ]
        key_type = conf.get("key_type", "var")
        show = conf.get("show_limit_quota_header", True)
        headers: list[tuple[str, str]] = []
        applied = 0
        for i, rule in enumerate(rules):
            if explicit:
                # A rule applies when a variable of its key resolves (APISIX).
                key = resolve_rule_key(ctx, rule["key"])
                if key is None:
                    continue
            else:
                key = resolve_key(ctx, rule.get("key") or "remote_addr", key_type)
            applied += 1
            count = resolve_amount(ctx, rule["count"])
            window = resolve_amount(ctx, rule["time_window"])
            if count is None or window is None:
                return failed("count")
            scope = f"{ident}:{i}" if len(rules) > 1 else ident
            state = yield f"{scope}:{key}", int(count), window
            if state is None:
                continue
            allowed, remaining, reset = state
            if show:
                prefix = (rule.get("header_prefix") or str(i + 1)) if explicit else None
                headers += _quota(ctx, prefix, int(count), remaining, reset)
            if not allowed:  # the first rule that refuses ends it (APISIX)
                return rejection(conf, headers)
        if not applied and not conf.get("allow_degradation"):
            return failed("count")  # rules[] of which none applies (APISIX: 500)
        if headers:
            ctx.state.setdefault(_HEADERS, []).extend(headers)
        return None

    def header_filter(self, conf: dict[str, Any], ctx: Ctx) -> None:
        for name, value in ctx.state.pop(_HEADERS, []):
            ctx.response_headers[name] = value


def _quota(
    ctx: Ctx, prefix: str | None, limit: int, remaining: int, reset: float
) -> list[tuple[str, str]]:
    meta = ctx.plugin_metadata("limit-count") or {}
    names = (
        meta.get("limit_header", "X-RateLimit-Limit"),
        meta.get("remaining_header", "X-RateLimit-Remaining"),
        meta.get("reset_header", "X-RateLimit-Reset"),
    )
    out = []
    for name, value in zip(names, (limit, remaining, int(-(-reset // 1)))):
        if prefix is not None:
            name = f"X-{prefix}-{name[2:]}" if name[:2].lower() == "x-" else f"{prefix}-{name}"
        out.append((name, str(value)))
    return out
