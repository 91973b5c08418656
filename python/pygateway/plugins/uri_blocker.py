"""uri-blocker: refuse requests whose ``request_uri`` (path and query, as sent) matches one of
``block_rules`` (PCRE, ``case_insensitive`` adding ``(?i)``), as APISIX's plugin does: with
``rejected_code`` (403), and ``{"error_msg": rejected_msg}`` when set, else nginx's page."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import compile_pcre, pcre_problem


@lru_cache(maxsize=1024)
def _blocking(rules: tuple[str, ...], case_insensitive: bool) -> re.Pattern[str]:
    """The rules as one alternation, compiled once per conf (APISIX's block_rules_concat)."""
    return compile_pcre(("(?i)" if case_insensitive else "") + "|".join(rules), "jo")


class UriBlocker(Plugin):
    name: ClassVar[str] = "uri-blocker"
    priority: ClassVar[int] = 2900
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "block_rules": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 4096},
                "uniqueItems": True,
            },
            "rejected_code": {"type": "integer", "minimum": 200, "default": 403},
            "rejected_msg": {"type": "string", "minLength": 1},
            "case_insensitive": {"type": "boolean", "default": False},
        },
        "required": ["block_rules"],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        return pcre_problem(conf.get("block_rules") or [])

    def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        rules = tuple(conf.get("block_rules") or ())
        pattern = _blocking(rules, bool(conf.get("case_insensitive"))) if rules else None
        if pattern is None or pattern.search(str(ctx.var.get("request_uri") or "")) is None:
            return None
        message = conf.get("rejected_msg")
        return conf.get("rejected_code", 403), {"error_msg": message} if message else None
