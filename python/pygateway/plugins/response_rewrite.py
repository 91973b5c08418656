"""response-rewrite: change the status, headers and body of the response sent to the client.

``vars`` (a lua-resty-expr list over ``ctx.var``) decides, in ``header_filter``, whether the
rewrite applies.  ``filters`` buffer the whole body (up to ``max_resp_body_size``) and apply
regex substitutions at the end of the stream; ``body`` replaces the body.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, ClassVar

from pygateway.config import expr
from pygateway.ctx import Ctx
from pygateway.plugin import Plugin

from ._util import add_value, compile_pcre, decode_base64, header_value, ngx_sub, resolve_var

_SCALAR: list[dict[str, Any]] = [{"type": "string"}, {"type": "number"}]
_ADD_LINE_RE = re.compile(r"^([^:\s]+)\s*:\s*([^:]+)$")
_STATE_MATCHED = "response-rewrite.matched"
_STATE_BUF = "response-rewrite.buffer"
_STATE_SENT = "response-rewrite.sent"
_STATE_ENCODING = "response-rewrite.encoding"


def _is_new_headers_conf(headers: dict[str, Any]) -> bool:
    return any(isinstance(headers.get(k), (dict, list)) for k in ("add", "set", "remove"))


class ResponseRewrite(Plugin):
    name: ClassVar[str] = "response-rewrite"
    priority: ClassVar[int] = 899
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "max_resp_body_size": {
                "type": "integer",
                "minimum": 1,
                "default": 67108864,
                "description": "maximum response body size in bytes buffered into memory "
                "when filters are applied; larger responses are truncated",
            },
            "headers": {
                "description": "new headers for response",
                "anyOf": [
                    {
                        "type": "object",
                        "minProperties": 1,
                        "patternProperties": {"^[^:]+$": {"oneOf": _SCALAR}},
                    },
                    {
                        "properties": {
                            "add": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "pattern": "^[^:]+:[^:]*[^/]$"},
                            },
                            "set": {
                                "type": "object",
                                "minProperties": 1,
                                "patternProperties": {"^[^:]+$": {"oneOf": _SCALAR}},
                            },
                            "remove": {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "pattern": "^[^:]+$"},
                            },
                        },
                    },
                ],
            },
            "body": {"description": "new body for response", "type": "string"},
            "body_base64": {
                "description": "whether new body for response need base64 decode before return",
                "type": "boolean",
                "default": False,
            },
            "status_code": {
                "description": "new status code for response",
                "type": "integer",
                "minimum": 200,
                "maximum": 598,
            },
            "vars": {"type": "array"},
            "filters": {
                "description": "a group of filters that modify response body by replacing "
                "one specified string by another",
                "type": "array",
                "minItems": 1,
                "items": {
                    "description": "filter that modifies response body",
                    "type": "object",
                    "required": ["regex", "replace"],
                    "properties": {
                        "regex": {
                            "description": "match pattern on response body",
                            "type": "string",
                            "minLength": 1,
                        },
                        "scope": {
                            "description": "regex substitution range",
                            "type": "string",
                            "enum": ["once", "global"],
                            "default": "once",
                        },
                        "replace": {"description": "regex substitution content", "type": "string"},
                        "options": {
                            "description": "regex options",
                            "type": "string",
                            "default": "jo",
                        },
                    },
                },
            },
        },
        "dependencies": {
            "body": {"not": {"required": ["filters"]}},
            "filters": {"not": {"required": ["body"]}},
        },
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        headers = conf.get("headers")
        if isinstance(headers, dict) and not _is_new_headers_conf(headers):
            for field, value in headers.items():
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    return "invalid type as header value"
                if not field:
                    return "invalid field length in header"
        if conf.get("body_base64"):
            body = conf.get("body")
            if not body or decode_base64(body) is None:
                return "invalid base64 content"
        if "vars" in conf:
            err = expr.vars_error(conf["vars"])
            if err is not None:
                return err
        for flt in conf.get("filters") or []:
            try:
                compile_pcre(flt["regex"], flt.get("options", "jo"))
            except re.error as err:
                return f'regex "{flt["regex"]}" validation failed: {err}'
        return None

    def header_filter(self, conf: dict[str, Any], ctx: Ctx) -> None:
        matched = True
        if conf.get("vars"):
            matched = expr.evaluate(conf["vars"], lambda name: ctx.var.get(name))
        ctx.state[_STATE_MATCHED] = matched
        if not matched:
            return

        if conf.get("status_code"):
            ctx.status = conf["status_code"]

        resp = ctx.response_headers
        if conf.get("filters") or conf.get("body") is not None:
            # The filters see the body decoded (APISIX content-decode): gzip goes out plain;
            # another coding (which they cannot read) goes out as it came.
            encoding = resp.get("Content-Encoding")
            ctx.state[_STATE_ENCODING] = encoding
            keep = conf.get("body") is None and encoding and encoding.strip().lower() != "gzip"
            for name in ("Content-Length", "Content-Encoding", "Last-Modified", "ETag"):
                if keep and name == "Content-Encoding":
                    continue
                if name in resp:
                    del resp[name]

        headers = conf.get("headers")
        if not headers:
            return
        if _is_new_headers_conf(headers):
            for line in headers.get("add") or []:
                m = _ADD_LINE_RE.match(line)
                if m:
                    add_value(resp, m.group(1), resolve_var(m.group(2), ctx.var))
            set_ = headers.get("set") or {}
            remove = headers.get("remove") or []
        else:
            set_, remove = headers, []
        for name, value in set_.items():
            resp[name] = resolve_var(header_value(value), ctx.var)
        for name in remove:
            if name in resp:
                del resp[name]

    def body_filter(self, conf: dict[str, Any], ctx: Ctx, chunk: bytes, eof: bool) -> bytes | None:
        if not ctx.state.get(_STATE_MATCHED):
            return None

        filters = conf.get("filters")
        if filters:
            buf: bytearray = ctx.state.setdefault(_STATE_BUF, bytearray())
            limit = int(conf.get("max_resp_body_size", 67108864))
            room = limit - len(buf)
            if room > 0:
                buf += chunk[:room]
            if not eof:
                return b""
            encoding = ctx.state.get(_STATE_ENCODING)
            raw = bytes(buf)
            if encoding:
                if encoding.strip().lower() != "gzip":
                    ctx.log.error(
                        "filters may not work as expected due to unsupported compression "
                        "encoding type: %s",
                        encoding,
                    )
                    return raw
                try:
                    raw = zlib.decompress(raw, 16 + zlib.MAX_WBITS)
                except zlib.error as err:
                    ctx.log.error("filters may not work as expected: inflate gzip err: %s", err)
                    return bytes(buf)
            text = raw.decode("utf-8", "surrogateescape")
            for flt in filters:
                count = 1 if flt.get("scope", "once") == "once" else 0
                try:
                    text, _ = ngx_sub(
                        text, flt["regex"], flt["replace"], flt.get("options", "jo"), count=count
                    )
                except (re.error, ValueError) as err:
                    ctx.log.error('regex "%s" substitutes failed: %s', flt["regex"], err)
            return text.encode("utf-8", "surrogateescape")

        body = conf.get("body")
        if body is not None:
            if ctx.state.get(_STATE_SENT):
                return b""
            ctx.state[_STATE_SENT] = True
            if conf.get("body_base64"):
                return decode_base64(str(body)) or b""
            return str(body).encode("utf-8")
        return None
