"""redirect: answer with a redirect (``uri`` template, ``regex_uri`` or ``http_to_https``).

``http_to_https`` redirects to ``https://$host$request_uri`` (301 for GET/HEAD, 308 otherwise)
unless the request is already https (``X-Forwarded-Proto`` counts).  The https port comes from
the plugin attribute ``https_port`` when the engine exposes ``ctx.plugin_attr("redirect")``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import ngx_sub, uri_safe_encode, var_lookup

_REG = (
    r"(\\\$[0-9a-zA-Z_]+)|"  # \$host
    r"\$\{([0-9a-zA-Z_]+)\}|"  # ${host}
    r"\$([0-9a-zA-Z_]+)|"  # $host
    r"(\$|[^$\\]+)"  # $ or others
)
_SEG_RE = re.compile(_REG, re.IGNORECASE)


def concat_new_uri(template: str, var: Any) -> str:
    out: list[str] = []
    for m in _SEG_RE.finditer(template):
        escaped, braced, plain, other = m.groups()
        if braced or plain:
            value = var_lookup(var, braced or plain)
            if value is not None:
                out.append(str(value))
        else:
            out.append(escaped or other or "")
    return "".join(out)


class Redirect(Plugin):
    name: ClassVar[str] = "redirect"
    priority: ClassVar[int] = 900
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "ret_code": {"type": "integer", "minimum": 200, "default": 302},
            "uri": {"type": "string", "minLength": 2, "pattern": _REG},
            "regex_uri": {
                "description": "params for generating new uri that substitute from client uri, "
                "first param is regular expression, the second one is uri template",
                "type": "array",
                "maxItems": 2,
                "minItems": 2,
                "items": {"description": "regex uri", "type": "string"},
            },
            "http_to_https": {"type": "boolean"},
            "encode_uri": {"type": "boolean", "default": False},
            "append_query_string": {"type": "boolean", "default": False},
        },
        "oneOf": [
            {"required": ["uri"]},
            {"required": ["regex_uri"]},
            {"required": ["http_to_https"]},
        ],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        regex_uri = conf.get("regex_uri")
        if regex_uri:
            pattern, replacement = regex_uri[0], regex_uri[1]
            try:
                ngx_sub("/fake_uri", pattern, replacement)
            except (re.error, ValueError) as err:
                return f"invalid regex_uri ({pattern}, {replacement}), err:{err}"
        if conf.get("http_to_https") and conf.get("append_query_string"):
            return "only one of `http_to_https` and `append_query_string` can be configured."
        return None

    def _https_port(self, ctx: Ctx) -> int | None:
        getter = getattr(ctx, "plugin_attr", None)
        attr = getter(self.name) if getter is not None else None
        port = attr.get("https_port") if isinstance(attr, dict) else None
        return port if isinstance(port, int) else None

    def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        ret_code: int = conf.get("ret_code", 302)
        uri: str | None = conf.get("uri")
        regex_uri: list[str] | None = conf.get("regex_uri")

        scheme = ctx.headers.get("X-Forwarded-Proto") or ctx.scheme
        if conf.get("http_to_https") and scheme != "https":
            port = self._https_port(ctx)
            if port is None or port == 443 or port <= 0 or port > 65535:
                uri = "https://$host$request_uri"
            else:
                uri = f"https://$host:{port}$request_uri"
            ret_code = 301 if ctx.method in ("GET", "HEAD") else 308

        new_uri: str | None = None
        if uri:
            new_uri = concat_new_uri(uri, ctx.var)
        elif regex_uri:
            try:
                new_uri, n = ngx_sub(str(ctx.uri), regex_uri[0], regex_uri[1])
            except (re.error, ValueError) as err:
                ctx.log.error(
                    "failed to substitute the uri:%s (%s) with %s, error:%s",
                    ctx.uri,
                    regex_uri[0],
                    regex_uri[1],
                    err,
                )
                return 500, ""
            if n < 1:
                return None
        if new_uri is None:
            return None

        index = new_uri.find("?")
        if conf.get("encode_uri"):
            if index >= 0:
                new_uri = uri_safe_encode(new_uri[:index]) + new_uri[index:]
            else:
                new_uri = uri_safe_encode(new_uri)
        if conf.get("append_query_string") and ctx.query:
            new_uri += ("&" if index >= 0 else "?") + ctx.query
        return ret_code, None, {"Location": new_uri}  # the body: nginx's page (APISIX)
