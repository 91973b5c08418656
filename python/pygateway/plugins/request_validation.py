"""request-validation: check the request's headers and body against JSON schemas before it
goes anywhere, as APISIX's plugin does: ``rejected_code`` (400) with ``rejected_msg``, else the
validator's message (APISIX's wording). A form body
(``application/x-www-form-urlencoded``) is validated as its decoded fields; any other body as
JSON. Header names are matched without regard to case."""

from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from pygateway.config.validator import SchemaError, is_valid, validate
from pygateway.ctx import Ctx, RequestBodyTooLarge
from pygateway.plugin import Plugin, Response


class _Headers(dict[str, str]):
    """Request headers by lower-cased name, looked up in any case (as ngx.req.get_headers)."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


class RequestValidation(Plugin):
    name: ClassVar[str] = "request-validation"
    priority: ClassVar[int] = 2800
    type: ClassVar[str | None] = "validation"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "header_schema": {"type": "object"},
            "body_schema": {"type": "object"},
            "max_req_body_size": {"type": "integer", "minimum": 1, "default": 67108864},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 400},
            "rejected_msg": {"type": "string", "minLength": 1, "maxLength": 256},
        },
        "anyOf": [{"required": ["header_schema"]}, {"required": ["body_schema"]}],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        for field in ("header_schema", "body_schema"):
            schema = conf.get(field)
            if schema is None:
                continue
            try:
                is_valid(schema, None)  # compiles it: a schema that cannot be is refused
            except Exception as err:
                return f"invalid {field}: {err}"
        return None

    def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        code, message = conf.get("rejected_code", 400), conf.get("rejected_msg")
        if conf.get("header_schema") is not None:
            headers = _Headers((k.lower(), v) for k, v in ctx.headers.items())
            problem = _check(conf["header_schema"], headers)
            if problem is not None:
                ctx.log.error("req schema validation failed: %s", problem)
                return code, message or problem
        body_schema = conf.get("body_schema")
        if body_schema is None:
            return None
        try:
            raw = ctx.body()
        except RequestBodyTooLarge as err:
            ctx.log.error("failed to get body: %s", err)
            return code, message
        if not raw or len(raw) > conf.get("max_req_body_size", 67108864):
            return code, message
        content_type = (ctx.headers.get("content-type") or "").lower()
        try:
            if content_type.startswith("application/x-www-form-urlencoded"):
                body: Any = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
            else:
                body = json.loads(raw)  # as cjson: no depth limit of ours on client data
        except (ValueError, RecursionError) as err:
            ctx.log.error("failed to decode the req body: %s", err)
            return code, message or f"failed to decode the req body: {err}"
        problem = _check(body_schema, body)
        if problem is not None:
            ctx.log.error("req schema validation failed: %s", problem)
            return code, message or problem
        return None


def _check(schema: dict[str, Any], value: Any) -> str | None:
    try:
        validate(schema, value, fill_defaults=False)
    except SchemaError as err:
        return err.message
    except RecursionError:
        return "failed to validate the req body: nested too deeply"
    return None
