"""request-id: tag every request with a unique id (upstream request header and response)."""

from __future__ import annotations

import secrets
import time
import uuid
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin

_RANGE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIGKLMNOPQRSTUVWXYZ0123456789"
_NANOID_ALPHABET = "-_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NANOID_SIZE = 21
_KSUID_EPOCH = 1400000000
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _nanoid() -> str:
    return "".join(_NANOID_ALPHABET[b & 63] for b in secrets.token_bytes(_NANOID_SIZE))


def _range_id(conf: dict[str, Any]) -> str:
    chars = str(conf.get("char_set") or _RANGE_CHARS)
    length = int(conf.get("length") or 16)
    return "".join(secrets.choice(chars) for _ in range(length))


def _uuidv7() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def _ksuid() -> str:
    ts = int(time.time()) - _KSUID_EPOCH
    num = int.from_bytes(ts.to_bytes(4, "big") + secrets.token_bytes(16), "big")
    out = []
    while num:
        num, rem = divmod(num, 62)
        out.append(_BASE62[rem])
    return "".join(reversed(out)).rjust(27, "0")


def generate_id(conf: dict[str, Any]) -> str:
    algorithm = conf.get("algorithm", "uuid")
    if algorithm == "nanoid":
        return _nanoid()
    if algorithm == "range_id":
        return _range_id(conf.get("range_id") or {})
    if algorithm == "uuidv7":
        return _uuidv7()
    if algorithm == "ksuid":
        return _ksuid()
    return str(uuid.uuid4())


class RequestId(Plugin):
    name: ClassVar[str] = "request-id"
    priority: ClassVar[int] = 12015
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "header_name": {"type": "string", "default": "X-Request-Id"},
            "include_in_response": {"type": "boolean", "default": True},
            "algorithm": {
                "type": "string",
                "enum": ["uuid", "nanoid", "range_id", "ksuid", "uuidv7"],
                "default": "uuid",
            },
            "range_id": {
                "type": "object",
                "properties": {
                    "length": {"type": "integer", "minimum": 6, "default": 16},
                    "char_set": {"type": "string", "minLength": 6, "default": _RANGE_CHARS},
                },
                "default": {"length": 16, "char_set": _RANGE_CHARS},
            },
        },
    }

    def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> None:
        header = conf.get("header_name", "X-Request-Id")
        value = ctx.headers.get(header)
        if not value:
            value = generate_id(conf)
            ctx.set_header(header, value)
        ctx.state["request-id-" + header] = value

    def header_filter(self, conf: dict[str, Any], ctx: Ctx) -> None:
        if not conf.get("include_in_response", True):
            return
        header = conf.get("header_name", "X-Request-Id")
        if ctx.response_headers.get(header):
            return
        value = ctx.state.get("request-id-" + header)
        if value:
            ctx.response_headers[header] = value
