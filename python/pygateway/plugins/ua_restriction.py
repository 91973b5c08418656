"""ua-restriction: allow or deny requests by their ``User-Agent`` (PCRE rules), as APISIX's
plugin does: 403 ``{"message": message}``; a request without the header is refused unless
``bypass_missing``."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import compile_pcre, pcre_problem, restriction_schema


@lru_cache(maxsize=1024)
def _rules(rules: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(compile_pcre(rule, "jo") for rule in rules)


class UaRestriction(Plugin):
    name: ClassVar[str] = "ua-restriction"
    priority: ClassVar[int] = 2999
    schema: ClassVar[dict[str, Any]] = restriction_schema(
        "allowlist", "denylist", {"type": "string", "minLength": 1}, "Not allowed"
    )

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        return pcre_problem([*(conf.get("allowlist") or ()), *(conf.get("denylist") or ())])

    def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        refused = 403, {"message": conf.get("message", "Not allowed")}
        agent = ctx.headers.get("user-agent")
        if agent is None:
            return None if conf.get("bypass_missing") else refused
        agent = agent.strip()
        if conf.get("allowlist"):
            allowed = any(p.search(agent) for p in _rules(tuple(conf["allowlist"])))
        else:
            allowed = not any(p.search(agent) for p in _rules(tuple(conf.get("denylist") or ())))
        return None if allowed else refused
