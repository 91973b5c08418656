"""limit-conn: at most ``conn`` (+ ``burst``, delayed) requests in flight per key (APISIX).

Native engine: runs in Rust (``rust/limit``); this class gives the schema and the python
engine's implementation (local counters, or Redis through ``_redis``); the slot is released
in the log phase.
"""

from __future__ import annotations

import asyncio
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
)

_HELD = "limit-conn.held"


class LimitConn(Plugin):
    name: ClassVar[str] = "limit-conn"
    priority: ClassVar[int] = 1003
    native: ClassVar[bool] = True
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "conn": {"oneOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "string"}]},
            "burst": {"type": "integer", "minimum": 0},
            "default_conn_delay": {"type": "number", "exclusiveMinimum": 0},
            "only_use_default_delay": {"type": "boolean", "default": False},
            **COMMON_PROPERTIES,
        },
        "required": ["conn", "burst", "default_conn_delay", "key"],
        "encrypt_fields": ["redis_password"],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        return check_policy(conf)

    async def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        conn = resolve_amount(ctx, conf["conn"])
        if conn is None:
            return failed("conn")
        key = resolve_key(ctx, conf["key"], conf.get("key_type", "var"))
        full = f"{conf_ident(self.name, ctx, conf)}:{key}"
        limit = int(conn)
        maximum = limit + int(conf["burst"])
        target = compiled(conf).target
        if target is None:
            n = counters(self).enter(full, maximum)
        else:
            try:
                n = await _redis.conn_enter(target, full, maximum)
            except _redis.StoreError as err:
                ctx.log.error("limit-conn: %s", err)
                return None if conf.get("allow_degradation") else failed("conn")
        if n is None:
            return rejection(conf)
        ctx.state.setdefault(_HELD, []).append((target, full))
        if n > limit:
            delay = float(conf["default_conn_delay"])
            if not conf.get("only_use_default_delay"):
                delay *= (n - 1) // max(limit, 1)
            await asyncio.sleep(delay)
        return None

    def log(self, conf: dict[str, Any], ctx: Ctx) -> None:
        for target, key in ctx.state.pop(_HELD, []):
            if target is None:
                counters(self).leave(key)
            else:  # released in the background: the log phase never waits for Redis
                _redis.spawn(_leave(ctx, target, key))


async def _leave(ctx: Ctx, target: _redis.Target, key: str) -> None:
    try:
        await _redis.conn_leave(target, key)
    except _redis.StoreError as err:
        ctx.log.warning("limit-conn: failed to release a connection: %s", err)
