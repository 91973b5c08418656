"""basic-auth: authenticate a consumer with HTTP Basic credentials.

The consumer is looked up by username through ``ctx.find_consumer("basic-auth", "username",
name)``; the password is compared in constant time.  Error bodies never echo credentials.
pygateway splits the decoded credentials at the first ``:`` (a password may contain ``:``).
"""

from __future__ import annotations

import hmac
import re
from typing import Any, ClassVar

from pygateway.ctx import Ctx
from pygateway.plugin import Plugin, Response

from ._util import (
    ANONYMOUS_CONSUMER_SCHEMA,
    attach_consumer,
    decode_base64,
    find_consumer,
    or_anonymous,
    realm_schema,
)

_BASIC_RE = re.compile(r"(?i:basic)\s(.+)")
_WS_RE = re.compile(r"\s+")


def parse_basic(authorization: str) -> tuple[str, str] | None:
    """``(username, password)`` from an ``Authorization: Basic ...`` value, or None."""
    m = _BASIC_RE.search(authorization)
    if m is None:
        return None
    raw = decode_base64(m.group(1))
    if raw is None:
        return None
    try:
        decoded = raw.decode("utf-8")
    except ValueError:
        return None
    username, sep, password = decoded.partition(":")
    if not sep:
        return None
    return _WS_RE.sub("", username), _WS_RE.sub("", password)


def password_equal(given: str, expected: object) -> bool:
    if not isinstance(expected, str):
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class BasicAuth(Plugin):
    name: ClassVar[str] = "basic-auth"
    priority: ClassVar[int] = 2520
    type: ClassVar[str | None] = "auth"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "title": "work with route or service object",
        "properties": {
            "hide_credentials": {"type": "boolean", "default": False},
            "realm": realm_schema("basic"),
            "anonymous_consumer": ANONYMOUS_CONSUMER_SCHEMA,
        },
    }
    consumer_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "title": "work with consumer object",
        "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
        "encrypt_fields": ["password"],
        "required": ["username", "password"],
    }

    def _find(self, ctx: Ctx) -> tuple[dict[str, Any] | None, str]:
        header = ctx.headers.get("Authorization")
        if header is None:
            return None, "Missing authorization in request"
        creds = parse_basic(header)
        if creds is None:
            ctx.log.warning("invalid authorization header format")
            return None, "Invalid authorization in request"
        username, password = creds
        consumer = find_consumer(ctx, self.name, "username", username)
        if consumer is None:
            ctx.log.warning("failed to find user: invalid user")
            return None, "Invalid user authorization"
        auth_conf = consumer.get("auth_conf") or {}
        if not password_equal(password, auth_conf.get("password")):
            return None, "Invalid user authorization"
        return consumer, ""

    def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        consumer, err = self._find(ctx)
        www = {"WWW-Authenticate": f'Basic realm="{conf.get("realm", "basic")}"'}
        consumer, err = or_anonymous(ctx, self.name, conf, consumer, err)
        if consumer is None:
            return 401, {"message": err}, www
        if conf.get("hide_credentials"):
            ctx.remove_header("Authorization")
        attach_consumer(ctx, consumer)
        return None
