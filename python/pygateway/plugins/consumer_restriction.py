"""consumer-restriction: allow or deny by consumer name, consumer group, route or service."""

from __future__ import annotations

from typing import Any, ClassVar

from pygateway.config.schema import METHOD_SCHEMA
from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response


def _value(kind: str, ctx: Ctx) -> str | None:
    if kind == "route_id":
        value = ctx.route_id
    elif kind == "service_id":
        value = ctx.service_id
    elif kind == "consumer_group_id":
        value = getattr(ctx, "consumer_group_id", None)
        if value is None and isinstance(ctx.consumer, dict):
            value = ctx.consumer.get("group_id")
    else:
        value = ctx.consumer_name
    return None if value is None or value == "" else str(value)


def _method_allowed(rules: list[dict[str, Any]], method: str, user: str) -> bool:
    for rule in rules:
        if rule.get("user") == user:
            return method in (rule.get("methods") or [])
    return True


class ConsumerRestriction(Plugin):
    name: ClassVar[str] = "consumer-restriction"
    priority: ClassVar[int] = 2400
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "type": {
                "type": "string",
                "enum": ["consumer_name", "service_id", "route_id", "consumer_group_id"],
                "default": "consumer_name",
            },
            "blacklist": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "whitelist": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "allowed_by_methods": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "user": {"type": "string"},
                        "methods": {"type": "array", "minItems": 1, "items": METHOD_SCHEMA},
                    },
                },
            },
            "rejected_code": {"type": "integer", "minimum": 200, "default": 403},
            "rejected_msg": {"type": "string"},
        },
        "anyOf": [
            {"required": ["blacklist"]},
            {"required": ["whitelist"]},
            {"required": ["allowed_by_methods"]},
        ],
    }

    @staticmethod
    def _reject(conf: dict[str, Any]) -> Response:
        msg = conf.get("rejected_msg")
        if msg is None:
            msg = f"The {conf.get('type', 'consumer_name')} is forbidden."
        code: int = conf.get("rejected_code", 403)
        return code, {"message": msg}

    def access(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        kind = conf.get("type", "consumer_name")
        value = _value(kind, ctx)
        if value is None:
            return 401, {
                "message": f"The request is rejected, please check the {kind} for this request"
            }
        if value in (conf.get("blacklist") or []):
            return self._reject(conf)
        block = False
        whitelisted = False
        whitelist = conf.get("whitelist")
        if whitelist:
            whitelisted = value in whitelist
            block = not whitelisted
        rules = conf.get("allowed_by_methods")
        if rules and not whitelisted and not _method_allowed(rules, ctx.method, value):
            block = True
        return self._reject(conf) if block else None
