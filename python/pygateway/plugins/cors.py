"""cors: Cross-Origin Resource Sharing response headers; answers preflight ``OPTIONS`` with 200.

``*`` allows everything (not allowed with ``allow_credential``); ``**`` forces "allow all" even
with credentials: ``allow_origins: "**"`` echoes the request's Origin, ``allow_methods: "**"``
lists every method and ``allow_headers: "**"`` echoes ``Access-Control-Request-Headers``.
``allow_origins_by_metadata`` reads ``plugin_metadata/cors`` through
``ctx.plugin_metadata("cors")`` when the engine provides it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import compile_pcre

_ORIGINS_PATTERN = r"^(\*|\*\*|null|\w+://[^,]+(,\w+://[^,]+)*)$"
_ALL_METHODS = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"
_STATE_ORIGIN = "cors.origin"
_REGEX_LIST: dict[str, Any] = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 4096},
    "minItems": 1,
    "uniqueItems": True,
}


def _allowed_origin(allow_origins: str | None, req_origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for a comma-separated origin list, or None."""
    if allow_origins is None:
        return None
    if allow_origins == "**":
        allow_origins = req_origin or "*"
    if "," in allow_origins:
        origins = {o for o in allow_origins.split(",") if o}
        return req_origin if req_origin in origins else None
    return allow_origins


def _match_by_regex(rules: list[str], req_origin: str | None) -> str | None:
    if not req_origin:
        return None
    for rule in rules:
        if compile_pcre(rule, "j").search(req_origin):
            return req_origin
    return None


def _matches(req_origin: str | None, allowed: str | None) -> bool:
    return allowed == "*" or (allowed is not None and req_origin == allowed)


class Cors(Plugin):
    name: ClassVar[str] = "cors"
    priority: ClassVar[int] = 4000
    metadata_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "properties": {
            "allow_origins": {
                "type": "object",
                "additionalProperties": {"type": "string", "pattern": _ORIGINS_PATTERN},
            },
        },
    }
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "allow_origins": {"type": "string", "pattern": _ORIGINS_PATTERN, "default": "*"},
            "allow_methods": {"type": "string", "default": "*"},
            "allow_headers": {"type": "string", "default": "*"},
            "expose_headers": {"type": "string"},
            "max_age": {"type": "integer", "default": 5},
            "allow_credential": {"type": "boolean", "default": False},
            "allow_origins_by_regex": _REGEX_LIST,
            "allow_origins_by_metadata": _REGEX_LIST,
            "timing_allow_origins": {"type": "string", "pattern": _ORIGINS_PATTERN},
            "timing_allow_origins_by_regex": _REGEX_LIST,
        },
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        if schema_type == "metadata":
            return None
        if conf.get("allow_credential"):
            keys = ("allow_origins", "allow_methods", "allow_headers", "expose_headers",
                    "timing_allow_origins")  # fmt: skip
            if any(conf.get(k, "*" if k.startswith("allow_") else None) == "*" for k in keys):
                return "you can not set '*' for other option when 'allow_credential' is true"
        for key in ("allow_origins_by_regex", "timing_allow_origins_by_regex"):
            for rule in conf.get(key) or []:
                try:
                    compile_pcre(rule, "j")
                except re.error as err:
                    return str(err)
        return None

    def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        ctx.state[_STATE_ORIGIN] = ctx.headers.get("Origin")
        if ctx.method == "OPTIONS":
            # The headers are also set by header_filter; giving them here too keeps the
            # preflight answer right whatever the engine does with early responses.
            return 200, "", self.cors_headers(conf, ctx)
        return None

    def _by_metadata(self, conf: dict[str, Any], ctx: Ctx, req_origin: str | None) -> str | None:
        keys = conf.get("allow_origins_by_metadata")
        getter = getattr(ctx, "plugin_metadata", None)
        if not keys or getter is None:
            return None
        metadata = getter(self.name) or {}
        origins_map = metadata.get("allow_origins") or {}
        for key in keys:
            allowed = _allowed_origin(origins_map.get(key), req_origin)
            if _matches(req_origin, allowed):
                return req_origin
        return None

    def cors_headers(self, conf: dict[str, Any], ctx: Ctx) -> dict[str, str]:
        """The CORS response headers for this request (without Vary)."""
        req_origin: str | None = ctx.state.get(_STATE_ORIGIN, ctx.headers.get("Origin"))
        out: dict[str, str] = {}
        allow_origins = conf.get("allow_origins", "*")

        allowed: str | None = None
        local = True
        if conf.get("allow_origins_by_metadata"):
            allowed = self._by_metadata(conf, ctx, req_origin)
            local = not _matches(req_origin, allowed) and allow_origins not in (None, "*")
        if local:
            regex_rules = conf.get("allow_origins_by_regex")
            if regex_rules is None:
                allowed = _allowed_origin(allow_origins, req_origin)
            else:
                allowed = _match_by_regex(regex_rules, req_origin)
        if not _matches(req_origin, allowed) and conf.get("allow_origins_by_metadata"):
            allowed = self._by_metadata(conf, ctx, req_origin)

        if allowed:
            methods = conf.get("allow_methods", "*")
            out["Access-Control-Allow-Origin"] = allowed
            out["Access-Control-Allow-Methods"] = _ALL_METHODS if methods == "**" else methods
            out["Access-Control-Max-Age"] = str(conf.get("max_age", 5))
            if conf.get("expose_headers"):
                out["Access-Control-Expose-Headers"] = conf["expose_headers"]
            if conf.get("allow_headers", "*") == "**":
                requested = ctx.headers.get("Access-Control-Request-Headers")
                if requested:
                    out["Access-Control-Allow-Headers"] = requested
            else:
                out["Access-Control-Allow-Headers"] = conf.get("allow_headers", "*")
            if conf.get("allow_credential"):
                out["Access-Control-Allow-Credentials"] = "true"

        timing: str | None = None
        if conf.get("timing_allow_origins_by_regex"):
            timing = _match_by_regex(conf["timing_allow_origins_by_regex"], req_origin)
        elif conf.get("timing_allow_origins"):
            timing = _allowed_origin(conf["timing_allow_origins"], req_origin)
        if timing and _matches(req_origin, timing):
            out["Timing-Allow-Origin"] = timing
        return out

    def header_filter(self, conf: dict[str, Any], ctx: Ctx) -> None:
        resp = ctx.response_headers
        if conf.get("allow_origins", "*") != "*":
            vary = resp.get("Vary")
            if not vary:
                resp["Vary"] = "Origin"
            elif "origin" not in [v.strip().lower() for v in vary.split(",")]:
                resp["Vary"] = f"{vary}, Origin"
        for name, value in self.cors_headers(conf, ctx).items():
            resp[name] = value
