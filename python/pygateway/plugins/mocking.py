"""mocking: answer with mock data without contacting the upstream.

``response_example`` is sent as is (``$var`` interpolated); otherwise a minimal example is
generated from ``response_schema`` (a property's ``example`` when given, else a fixed
placeholder per type, so the output is deterministic) and encoded as JSON or XML according to
``content_type``.  ``with_mock_header`` adds ``x-mock-by: pygateway``.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, ClassVar
from xml.sax.saxutils import escape

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import header_value, resolve_var

SUPPORTED_CONTENT_TYPES = frozenset(
    {"application/xml", "application/json", "text/plain", "text/html", "text/xml"}
)
MOCK_HEADER_VALUE = "pygateway"


def _media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.split(";", 1)[0]


def generate(prop: dict[str, Any]) -> Any:
    """A minimal value satisfying the (simple) JSON schema ``prop``."""
    typ = str(prop.get("type", "")).lower()
    example = prop.get("example")
    if typ == "object":
        props = prop.get("properties")
        return {k: generate(v) for k, v in props.items()} if isinstance(props, dict) else {}
    if typ == "array":
        items = prop.get("items")
        return [generate(items)] if isinstance(items, dict) else None
    if typ == "string":
        return example if isinstance(example, str) else "string"
    if typ == "integer":
        if isinstance(example, (int, float)) and not isinstance(example, bool):
            return math.floor(example)
        return 0
    if typ == "number":
        if isinstance(example, (int, float)) and not isinstance(example, bool):
            return example
        return 0.0
    if typ == "boolean":
        return example if isinstance(example, bool) else True
    return None


def _xml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def to_xml(value: Any, tag: str) -> str:
    """Serialise like xml2lua.toXml: a list repeats the element once per item."""
    if isinstance(value, list):
        return "".join(to_xml(item, tag) for item in value)
    if isinstance(value, dict):
        inner = "".join(to_xml(v, k) for k, v in value.items() if v is not None)
        return f"<{tag}>{inner}</{tag}>"
    if value is None:
        return ""
    return f"<{tag}>{_xml_value(value)}</{tag}>"


class Mocking(Plugin):
    name: ClassVar[str] = "mocking"
    priority: ClassVar[int] = 10900
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "delay": {"type": "integer", "default": 0},
            "response_status": {"type": "integer", "default": 200, "minimum": 100},
            "content_type": {"type": "string", "default": "application/json;charset=utf8"},
            "response_example": {"type": "string"},
            "response_schema": {"type": "object"},
            "with_mock_header": {"type": "boolean", "default": True},
            "response_headers": {
                "type": "object",
                "minProperties": 1,
                "patternProperties": {
                    "^[^:]+$": {"oneOf": [{"type": "string"}, {"type": "number"}]}
                },
            },
        },
        "anyOf": [{"required": ["response_example"]}, {"required": ["response_schema"]}],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        ctype = conf.get("content_type", "application/json;charset=utf8")
        if _media_type(ctype) not in SUPPORTED_CONTENT_TYPES:
            return "unsupported content type!"
        return None

    def build(self, conf: dict[str, Any], ctx: Ctx) -> tuple[int, str, dict[str, str]]:
        content_type = conf.get("content_type", "application/json;charset=utf8")
        content = ""
        if conf.get("response_example") is not None:
            content = conf["response_example"]
        else:
            output = generate({"type": "object", **(conf.get("response_schema") or {})})
            media = _media_type(content_type)
            if media in ("application/xml", "text/xml"):
                content = to_xml(output, "data")
            elif media in ("application/json", "text/plain"):
                content = json.dumps(output, separators=(",", ":"))
            else:
                ctx.log.error("json schema body only support xml and json content type")

        headers = {"Content-Type": content_type}
        if conf.get("with_mock_header", True):
            headers["x-mock-by"] = MOCK_HEADER_VALUE
        for key, value in (conf.get("response_headers") or {}).items():
            headers[key] = resolve_var(header_value(value), ctx.var)
        return conf.get("response_status", 200), resolve_var(content, ctx.var), headers

    async def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        response = self.build(conf, ctx)
        delay = conf.get("delay", 0)
        if delay > 0:
            await asyncio.sleep(delay)
        return response
