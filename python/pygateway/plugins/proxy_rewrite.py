"""proxy-rewrite: rewrite the request sent upstream (uri, method, host, headers).

pygateway notes: the new path is stored decoded in ``ctx.uri`` (the engine escapes it for the
request line); a ``?`` in ``uri`` / the ``regex_uri`` result starts the query, which is put
before the client's own query (for ``regex_uri``, unless the client's decoded path has a ``?``
of its own: then the whole result is the path, as in APISIX).  ``use_real_request_uri_unsafe``
sets ``ctx.upstream_uri`` (the raw request target sent verbatim).  ``scheme`` (removed in
APISIX 3.0) is accepted with the value ``http`` only, for old configurations.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import compile_pcre, header_value, ngx_sub, resolve_captures, resolve_var

_METHODS = [
    "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY", "MOVE",
    "PROPFIND", "LOCK", "UNLOCK", "PATCH", "TRACE",
]  # fmt: skip

_SCALAR: list[dict[str, Any]] = [{"type": "string"}, {"type": "number"}]
_HEADER_VALUE: dict[str, Any] = {
    "oneOf": [
        *_SCALAR,
        {"type": "array", "minItems": 1, "items": {"oneOf": _SCALAR}},
    ]
}
_HEADER_MAP: dict[str, Any] = {
    "type": "object",
    "minProperties": 1,
    "patternProperties": {"^[^:]+$": _HEADER_VALUE},
}

_SENTINEL = "\ue000"  # stands for a '?' that came from a variable, not from the template
# RFC 7230 token characters for a header name; a value must not hold CR, LF or NUL.
_FIELD_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE_RE = re.compile(r"[\r\n\x00]")


def is_new_headers_conf(headers: dict[str, Any]) -> bool:
    return any(isinstance(headers.get(k), (dict, list)) for k in ("add", "set", "remove"))


def _split_target(target: str) -> tuple[str, str | None]:
    path, sep, query = target.partition("?")
    path = path.replace(_SENTINEL, "?")
    if not sep:
        return path, None
    return path, query.replace(_SENTINEL, "%3F")


class ProxyRewrite(Plugin):
    name: ClassVar[str] = "proxy-rewrite"
    priority: ClassVar[int] = 1008
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "uri": {
                "description": "new uri for upstream",
                "type": "string",
                "minLength": 1,
                "maxLength": 4096,
                "pattern": r"^\/.*",
            },
            "method": {"description": "proxy route method", "type": "string", "enum": _METHODS},
            "regex_uri": {
                "description": "new uri that substitute from client uri for upstream, "
                "lower priority than uri property",
                "type": "array",
                "minItems": 2,
                "items": {"description": "regex uri", "type": "string"},
            },
            "host": {
                "description": "new host for upstream",
                "type": "string",
                "pattern": r"^[0-9a-zA-Z-.]+(:\d{1,5})?$",
            },
            "scheme": {
                "description": "(deprecated) upstream scheme",
                "type": "string",
                "enum": ["http"],
            },
            "headers": {
                "description": "new headers for request",
                "oneOf": [
                    {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": False,
                        "properties": {
                            "add": _HEADER_MAP,
                            "set": _HEADER_MAP,
                            "remove": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "pattern": "^[^:]+$"},
                            },
                        },
                    },
                    {
                        "type": "object",
                        "minProperties": 1,
                        "patternProperties": {"^[^:]+$": {"oneOf": _SCALAR}},
                    },
                ],
            },
            "use_real_request_uri_unsafe": {
                "description": "use real_request_uri instead, THIS IS VERY UNSAFE.",
                "type": "boolean",
                "default": False,
            },
        },
        "minProperties": 1,
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        regex_uri = conf.get("regex_uri")
        if regex_uri:
            if len(regex_uri) % 2 != 0:
                return "The length of regex_uri should be an even number"
            for i in range(0, len(regex_uri), 2):
                pattern, replacement = regex_uri[i], regex_uri[i + 1]
                try:
                    ngx_sub("/fake_uri", pattern, replacement)
                except (re.error, ValueError) as err:
                    return f"invalid regex_uri({pattern}, {replacement}): {err}"
        headers = conf.get("headers")
        if isinstance(headers, dict) and not is_new_headers_conf(headers):
            for field, value in headers.items():
                if not field:
                    return "invalid field length in header"
                if not _FIELD_RE.match(field):
                    return "invalid field character in header"
                if isinstance(value, str) and _BAD_VALUE_RE.search(value):
                    return "invalid value character in header"
        return None

    def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        captures: list[str | None] | None = None
        new_path: str | None = None
        new_query: str | None = None
        have_target = False

        if conf.get("use_real_request_uri_unsafe"):
            real = ctx.var.get("real_request_uri") or ctx.var.get("request_uri") or ctx.uri
            setattr(ctx, "upstream_uri", str(real))  # noqa: B010 (optional Ctx extra)

        if conf.get("uri") is not None:
            target = resolve_var(conf["uri"], ctx.var, lambda s: s.replace("?", _SENTINEL))
            new_path, new_query = _split_target(target)
            have_target = True
        elif conf.get("regex_uri") is not None:
            regex_uri: list[str] = conf["regex_uri"]
            uri = str(ctx.uri)
            for i in range(0, len(regex_uri), 2):
                pattern, template = regex_uri[i], regex_uri[i + 1]
                try:
                    m = compile_pcre(pattern).search(uri)
                    if m is None:
                        continue
                    captures = [m.group(0), *m.groups()]
                    result, _ = ngx_sub(uri, pattern, template)
                except (re.error, ValueError) as err:
                    msg = f"failed to substitute the uri {uri} ({pattern}) with {template} : {err}"
                    ctx.log.error(msg)
                    return 500, {"error_msg": msg}
                if "?" in uri:
                    # APISIX: a "?" of the client's path (sent as %3F) makes the whole
                    # result a path; it must not start a query the client chose.
                    new_path, new_query = result, None
                else:
                    new_path, new_query = _split_target(result)
                have_target = True
                break
        ctx.state["proxy_rewrite_regex_uri_captures"] = captures

        if have_target and not conf.get("use_real_request_uri_unsafe"):
            assert new_path is not None
            ctx.uri = new_path
            if new_query is not None:
                orig = ctx.query
                ctx.query = f"{new_query}&{orig}" if orig else new_query
        elif have_target:
            # unsafe mode: the rewritten path replaces the raw target's path, query kept
            raw = str(getattr(ctx, "upstream_uri", "") or "")
            _, sep, raw_query = raw.partition("?")
            assert new_path is not None
            path = new_path if new_query is None else f"{new_path}?{new_query}"
            joiner = "&" if new_query is not None else "?"
            setattr(ctx, "upstream_uri", path + (joiner + raw_query if sep else ""))  # noqa: B010

        if conf.get("host"):
            ctx.host = conf["host"]

        headers = conf.get("headers")
        if headers:
            self._apply_headers(headers, ctx, captures)

        if conf.get("method"):
            ctx.method = conf["method"]
        return None

    @staticmethod
    def _resolve(value: Any, ctx: Ctx, captures: list[str | None] | None) -> str:
        text = resolve_captures(header_value(value), captures)
        return resolve_var(text, ctx.var)

    def _apply_headers(
        self, headers: dict[str, Any], ctx: Ctx, captures: list[str | None] | None
    ) -> None:
        if is_new_headers_conf(headers):
            add = headers.get("add") or {}
            set_ = headers.get("set") or {}
            remove = headers.get("remove") or []
        else:
            add, set_, remove = {}, headers, []

        for name, value in add.items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                resolved = self._resolve(item, ctx, captures)
                existing = ctx.headers.get(name)
                ctx.set_header(name, f"{existing}, {resolved}" if existing else resolved)
        for name, value in set_.items():
            if isinstance(value, list):
                ctx.set_header(name, ", ".join(self._resolve(v, ctx, captures) for v in value))
            else:
                ctx.set_header(name, self._resolve(value, ctx, captures))
        for name in remove:
            ctx.remove_header(name)
