"""Shared code of serverless-pre-function / serverless-post-function: run user functions.

pygateway runs **Python** instead of Lua: each entry of ``functions`` is Python source that
defines ``def handler(conf, ctx)`` (or ``async def``, in rewrite / access / before_proxy).  The
source is compiled once (``check_schema`` reports syntax errors and a missing ``handler``).
In rewrite / access / before_proxy a handler may return a response (``(status, body)`` or
``(status, body, headers)``, or just a status), which ends the request; the first non-None
result wins.  In ``body_filter`` a handler that takes four parameters is called as
``handler(conf, ctx, chunk, eof)`` and may return replacement bytes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Response

PHASES = ["rewrite", "access", "header_filter", "body_filter", "log", "before_proxy"]

Handler = Callable[..., Any]
_CACHE: dict[str, Handler] = {}


class ServerlessError(ValueError):
    pass


def load_handler(source: str) -> Handler:
    """Compile ``source`` and return its ``handler``; cached by source text."""
    cached = _CACHE.get(source)
    if cached is not None:
        return cached
    try:
        code = compile(source, "<serverless function>", "exec")
    except SyntaxError as err:
        raise ServerlessError(f"failed to compile: {err}") from None
    namespace: dict[str, Any] = {"__name__": "pygateway.serverless"}
    try:
        exec(code, namespace)
    except Exception as err:
        raise ServerlessError(f"error while loading: {type(err).__name__}: {err}") from None
    handler: Handler | None = namespace.get("handler")
    if handler is None or not callable(handler):
        kind = "missing" if handler is None else type(handler).__name__
        raise ServerlessError(
            f"only accept a Python function named 'handler', the input code's handler is {kind}"
        )
    if len(_CACHE) > 1024:
        _CACHE.clear()
    _CACHE[source] = handler
    return handler


def _accepts(handler: Handler, n: int) -> bool:
    try:
        inspect.signature(handler).bind(*range(n))
    except (TypeError, ValueError):
        return False
    return True


def _as_response(result: Any) -> Response:
    """A handler's return value as a Response (a bare status becomes ``(status, "")``)."""
    if isinstance(result, int) and not isinstance(result, bool):
        return result, ""
    if isinstance(result, tuple) and len(result) in (2, 3) and isinstance(result[0], int):
        resp: Response = result
        return resp
    raise TypeError(f"a serverless handler returned {type(result).__name__}, not a response")


class ServerlessMixin:
    """The shared implementation (not a Plugin subclass, so never registered itself)."""

    name: ClassVar[str]

    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "phase": {"type": "string", "default": "access", "enum": PHASES},
            "functions": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
        "required": ["functions"],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        phase = conf.get("phase", "access")
        for source in conf.get("functions") or []:
            try:
                handler = load_handler(source)
            except ServerlessError as err:
                return str(err)
            if inspect.iscoroutinefunction(handler) and phase not in (
                "rewrite",
                "access",
                "before_proxy",
            ):
                return f"an async handler can not run in the {phase} phase"
        return None

    @staticmethod
    def _handlers(conf: dict[str, Any]) -> list[Handler]:
        return [load_handler(src) for src in conf.get("functions") or []]

    async def _run(self, phase: str, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        if conf.get("phase", "access") != phase:
            return None
        for handler in self._handlers(conf):
            result = handler(conf, ctx)
            if inspect.isawaitable(result):
                result = await result
            if result is not None:
                return _as_response(result)
        return None

    def _run_sync(self, phase: str, conf: dict[str, Any], ctx: Ctx) -> None:
        if conf.get("phase", "access") != phase:
            return
        for handler in self._handlers(conf):
            handler(conf, ctx)

    async def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        return await self._run("rewrite", conf, ctx)

    async def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        return await self._run("access", conf, ctx)

    async def before_proxy(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        return await self._run("before_proxy", conf, ctx)

    def header_filter(self, conf: dict[str, Any], ctx: Ctx) -> None:
        self._run_sync("header_filter", conf, ctx)

    def log(self, conf: dict[str, Any], ctx: Ctx) -> None:
        self._run_sync("log", conf, ctx)

    def body_filter(self, conf: dict[str, Any], ctx: Ctx, chunk: bytes, eof: bool) -> bytes | None:
        if conf.get("phase", "access") != "body_filter":
            return None
        out: bytes | None = None
        for handler in self._handlers(conf):
            if _accepts(handler, 4):
                result = handler(conf, ctx, chunk if out is None else out, eof)
                if isinstance(result, str):
                    result = result.encode("utf-8")
                if isinstance(result, (bytes, bytearray)):
                    out = bytes(result)
            else:
                handler(conf, ctx)
        return out
