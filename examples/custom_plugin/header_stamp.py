"""hello-stamp: stamp a value on the request sent upstream and echo it in the response.

A complete pygateway plugin, used by ``apisix.yaml`` next to this file::

    plugins:
      hello-stamp:
        value: from-the-gateway      # required
        header: X-Stamp              # optional, the default
        require: X-Client            # optional: answer 400 when the request lacks it

``hello-stamp-async`` does the same from an ``async def access`` that awaits a (simulated)
remote lookup first, ``delay`` seconds long (default 0), and appends the request method:
``X-Stamp: from-the-gateway;method=GET``.  An async phase runs on the plugin thread's event
loop, so other requests keep flowing while it waits; past the node's ``plugin_timeout`` the
request fails with 504.

Every ``*.py`` file of a ``plugin_paths`` directory is imported by the gateway and every
``Plugin`` subclass defined in it is registered, except classes whose name starts with ``_``
(such as ``_StampBase`` below, a shared base).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

_FORBIDDEN = {"host", "content-length", "transfer-encoding", "connection"}


class _StampBase(Plugin):
    """Schema, checks and the response side shared by both variants (not registered)."""

    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "value": {"type": "string", "minLength": 1},
            "header": {"type": "string", "default": "X-Stamp", "minLength": 1},
            "require": {"type": "string", "minLength": 1},
            "delay": {"type": "number", "minimum": 0, "maximum": 10, "default": 0},
        },
        "required": ["value"],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        # Runs after JSON-Schema validation, defaults already filled in.
        header = conf["header"]
        if not re.fullmatch(r"[A-Za-z0-9-]+", header):
            return f"invalid header name: {header}"
        if header.lower() in _FORBIDDEN:
            return f"header {header} cannot be stamped"
        return None

    def _missing(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        required = conf.get("require")
        if required and ctx.headers.get(required) is None:
            # Ends the request: the upstream is not contacted. A dict body is sent as JSON.
            return 400, {"error_msg": f"missing header {required}"}
        return None

    def _stamp(self, conf: dict[str, Any], ctx: Ctx, value: str) -> None:
        ctx.set_header(conf["header"], value)  # the request sent upstream
        ctx.state[self.name] = value  # shared with the later phases of this request

    def header_filter(self, conf: dict[str, Any], ctx: Ctx) -> None:
        value = ctx.state.get(self.name)
        if value is not None:
            ctx.response_headers[conf["header"]] = value


class HelloStamp(_StampBase):
    name: ClassVar[str] = "hello-stamp"
    priority: ClassVar[int] = 10

    def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        refused = self._missing(conf, ctx)
        if refused is not None:
            return refused
        self._stamp(conf, ctx, conf["value"])
        return None


class AsyncHelloStamp(_StampBase):
    name: ClassVar[str] = "hello-stamp-async"
    priority: ClassVar[int] = 9

    async def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        refused = self._missing(conf, ctx)
        if refused is not None:
            return refused
        value = await self._lookup(conf)
        self._stamp(conf, ctx, f"{value};method={ctx.method}")
        return None

    async def _lookup(self, conf: dict[str, Any]) -> str:
        # Stands for an HTTP call, a cache or a database query made with an async client.
        await asyncio.sleep(conf["delay"])
        return str(conf["value"])
