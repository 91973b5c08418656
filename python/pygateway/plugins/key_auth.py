"""key-auth: authenticate a consumer by an API key in a header (or query argument).

The consumer lookup goes through ``ctx.find_consumer("key-auth", "key", value)`` (see
docs/CONTRACT-plugins.md, "Consumers for auth plugins").  Error bodies never echo the key.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import (
    ANONYMOUS_CONSUMER_SCHEMA,
    attach_consumer,
    find_consumer,
    or_anonymous,
    realm_schema,
    remove_query_arg,
)


class KeyAuth(Plugin):
    name: ClassVar[str] = "key-auth"
    priority: ClassVar[int] = 2500
    type: ClassVar[str | None] = "auth"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "header": {"type": "string", "default": "apikey"},
            "query": {"type": "string", "default": "apikey"},
            "realm": realm_schema("key"),
            "hide_credentials": {"type": "boolean", "default": False},
            "anonymous_consumer": ANONYMOUS_CONSUMER_SCHEMA,
        },
    }
    consumer_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "properties": {"key": {"type": "string"}},
        "encrypt_fields": ["key"],
        "required": ["key"],
    }

    def _hide(self, conf: dict[str, Any], ctx: Ctx, header: bool, query: bool) -> None:
        hname, qname = conf.get("header", "apikey"), conf.get("query", "apikey")
        if header and ctx.headers.get(hname) is not None:
            ctx.remove_header(hname)
        if query and qname in (ctx.args or {}):
            ctx.query = remove_query_arg(ctx.query, qname)

    def _unauthorized(self, conf: dict[str, Any], message: str) -> Response:
        realm = conf.get("realm", "key")
        return 401, {"message": message}, {"WWW-Authenticate": f'apikey realm="{realm}"'}

    def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        hname, qname = conf.get("header", "apikey"), conf.get("query", "apikey")
        key = ctx.headers.get(hname)
        from_header = key is not None
        if key is None:
            key = (ctx.args or {}).get(qname)

        consumer: dict[str, Any] | None = None
        err = "Missing API key in request"
        if key is not None:
            consumer = find_consumer(ctx, self.name, "key", str(key))
            if consumer is None:
                ctx.log.warning("failed to find consumer: invalid api key")
                err = "Invalid API key in request"
            elif conf.get("hide_credentials"):
                self._hide(conf, ctx, from_header, not from_header)

        if consumer is None and conf.get("anonymous_consumer") and conf.get("hide_credentials"):
            self._hide(conf, ctx, True, True)
        consumer, err = or_anonymous(ctx, self.name, conf, consumer, err)
        if consumer is None:
            return self._unauthorized(conf, err)
        attach_consumer(ctx, consumer)
        return None
