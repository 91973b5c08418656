"""limit-req: a leaky bucket of ``rate`` requests per second with ``burst`` (APISIX).

Native engine: runs in Rust (``rust/limit``); this class gives the schema and the python
engine's implementation (local counters, or Redis through ``_redis``).
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
    resolve_key,
)


class LimitReq(Plugin):
    name: ClassVar[str] = "limit-req"
    priority: ClassVar[int] = 1001
    native: ClassVar[bool] = True
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "rate": {"type": "number", "exclusiveMinimum": 0},
            "burst": {"type": "number", "minimum": 0},
            "nodelay": {"type": "boolean", "default": False},
            **COMMON_PROPERTIES,
        },
        "required": ["rate", "burst", "key"],
        "encrypt_fields": ["redis_password"],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        return check_policy(conf)

    async def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        key = f"{conf_ident(self.name, ctx, conf)}:"
        key += resolve_key(ctx, conf["key"], conf.get("key_type", "var"))
        rate, burst = float(conf["rate"]), float(conf["burst"])
        target = compiled(conf).target
        if target is None:
            delay = counters(self).bucket(key, rate, burst)
        else:
            try:
                delay = await _redis.leaky_bucket(target, key, rate, burst)
            except _redis.StoreError as err:
                ctx.log.error("limit-req: %s", err)
                return None if conf.get("allow_degradation") else failed("req")
        if delay is None:
            return rejection(conf)
        if not conf.get("nodelay") and delay >= 0.001:
            await asyncio.sleep(delay)
        return None
