"""fault-injection: delay and/or abort requests, optionally by percentage and ``vars``.

``vars`` is a list of lua-resty-expr expressions; the fault applies when any of them matches.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, ClassVar

from pygateway.config import expr
from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import header_value, resolve_var

_VARS: dict[str, Any] = {"type": "array", "maxItems": 20, "items": {"type": "array"}}
_PERCENT: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": 100}


def sample_hit(percentage: int | None) -> bool:
    if percentage is None:
        return True
    return random.randint(1, 100) <= percentage


def vars_match(rules: list[Any], ctx: Ctx) -> bool:
    return any(expr.evaluate(rule, lambda name: ctx.var.get(name)) for rule in rules)


class FaultInjection(Plugin):
    name: ClassVar[str] = "fault-injection"
    priority: ClassVar[int] = 11000
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "abort": {
                "type": "object",
                "properties": {
                    "http_status": {"type": "integer", "minimum": 200},
                    "body": {"type": "string", "minLength": 0},
                    "headers": {
                        "type": "object",
                        "minProperties": 1,
                        "patternProperties": {
                            "^[^:]+$": {"oneOf": [{"type": "string"}, {"type": "number"}]}
                        },
                    },
                    "percentage": _PERCENT,
                    "vars": _VARS,
                },
                "required": ["http_status"],
            },
            "delay": {
                "type": "object",
                "properties": {
                    "duration": {"type": "number", "minimum": 0},
                    "percentage": _PERCENT,
                    "vars": _VARS,
                },
                "required": ["duration"],
            },
        },
        "minProperties": 1,
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        for part in ("abort", "delay"):
            for rule in (conf.get(part) or {}).get("vars") or []:
                err = expr.check(rule)
                if err is not None:
                    return err
        return None

    async def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        abort = conf.get("abort")
        delay = conf.get("delay")
        abort_vars = vars_match(abort["vars"], ctx) if abort and abort.get("vars") else True
        delay_vars = vars_match(delay["vars"], ctx) if delay and delay.get("vars") else True

        if delay and delay_vars and sample_hit(delay.get("percentage")):
            await asyncio.sleep(float(delay["duration"]))

        if abort and abort_vars and sample_hit(abort.get("percentage")):
            headers: dict[str, str] = {}
            for name, value in (abort.get("headers") or {}).items():
                if isinstance(value, str):
                    headers[name] = resolve_var(value, ctx.var)
                else:
                    headers[name] = header_value(value)
            # Without a body: nginx's page for the status (APISIX exit(code)).
            text = abort.get("body")
            body = resolve_var(text, ctx.var) if text is not None else None
            return abort["http_status"], body, headers
        return None
