"""jwt-auth: authenticate a consumer by a JSON Web Token (APISIX's plugin and its errors).

The token comes from the ``header`` (``Authorization``, a ``Bearer `` prefix dropped), else
the ``query`` argument, else the ``cookie``. Its payload's ``key_claim_name`` claim names the
consumer (``ctx.find_consumer("jwt-auth", "key", ...)``); the token's ``alg`` must be the
consumer's ``algorithm``; the signature is checked with the consumer's ``secret`` (HS*, with
``base64_secret``) or ``public_key`` (RS*, PS*, ES*, EdDSA); then ``exp`` and ``nbf``: those
present by default, those listed in ``claims_to_verify`` required. Every failure after the
token is found answers 401 ``failed to verify jwt`` or ``JWT token invalid``, never why in
detail (that goes to the log), and never the token.

HS256/384/512 use the standard library; the public-key algorithms use the ``cryptography``
package when it is installed (a consumer naming one is refused otherwise).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from email.utils import formatdate
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
    remove_query_arg,
)

HMAC_ALGORITHMS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
PUBLIC_KEY_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
)


class Token:
    """A parsed compact JWS: ``header.payload.signature``."""

    def __init__(self, raw: str) -> None:
        parts = raw.split(".")
        if len(parts) != 3:
            raise ValueError("invalid jwt string")
        self.raw_header, self.raw_payload, raw_signature = parts
        try:
            self.header = json.loads(_b64url(self.raw_header))
            self.payload = json.loads(_b64url(self.raw_payload))
            self.signature = _b64url(raw_signature)
        except (ValueError, binascii.Error, RecursionError):
            raise ValueError("invalid header or payload") from None
        if not isinstance(self.header, dict) or not isinstance(self.payload, dict):
            raise ValueError("invalid header or payload")

    @property
    def signed(self) -> bytes:
        return f"{self.raw_header}.{self.raw_payload}".encode("ascii")


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify_signature(token: Token, algorithm: str, key: bytes | str) -> bool:
    """Whether ``token`` is signed with ``key`` under ``algorithm`` (False on any error)."""
    digest = HMAC_ALGORITHMS.get(algorithm)
    if digest is not None:
        raw = key.encode("utf-8") if isinstance(key, str) else key
        expected = hmac.new(raw, token.signed, digest).digest()
        return hmac.compare_digest(expected, token.signature)
    try:
        return _verify_public(token, algorithm, key if isinstance(key, str) else key.decode())
    except Exception:  # a bad key or signature shape is a failed check, not a 500
        return False


_ES_CURVES: dict[str, tuple[Any, int]] = {}
"""ES algorithm -> (its curve class, bytes of r and of s); filled with cryptography loaded."""


def _verify_public(token: Token, algorithm: str, pem: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils

    _ES_CURVES.update(ES256=(ec.SECP256R1, 32), ES384=(ec.SECP384R1, 48), ES512=(ec.SECP521R1, 66))
    key = serialization.load_pem_public_key(pem.encode("utf-8"))
    data, sig = token.signed, token.signature
    bits = algorithm[2:]
    hash_alg: Any = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}.get(bits)
    try:
        if algorithm == "EdDSA" and isinstance(
            key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
        ):
            key.verify(sig, data)
        elif algorithm.startswith("RS") and isinstance(key, rsa.RSAPublicKey):
            key.verify(sig, data, padding.PKCS1v15(), hash_alg())
        elif algorithm.startswith("PS") and isinstance(key, rsa.RSAPublicKey):
            # Any salt length, as OpenSSL's verify (APISIX) accepts.
            pss = padding.PSS(mgf=padding.MGF1(hash_alg()), salt_length=padding.PSS.AUTO)
            key.verify(sig, data, pss, hash_alg())
        elif algorithm.startswith("ES") and isinstance(key, ec.EllipticCurvePublicKey):
            # JWS: r || s, each exactly the curve's size, on the curve the algorithm names.
            curve, size = _ES_CURVES[algorithm]
            if not isinstance(key.curve, curve) or len(sig) != 2 * size:
                return False
            r, s = int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
            key.verify(utils.encode_dss_signature(r, s), data, ec.ECDSA(hash_alg()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _http_time(seconds: float) -> str:
    try:
        return formatdate(seconds, usegmt=True)
    except (ValueError, OverflowError, OSError):  # NaN, infinities, years past 9999
        return str(seconds)


def verify_claims(
    payload: dict[str, Any], required: list[str] | None, leeway: int, now: float
) -> str | None:
    """APISIX's claim checks: ``exp`` and ``nbf`` when present, or those ``required`` (which
    must then be there); the reason for the log when one fails."""
    names = required or ["nbf", "exp"]
    for name in names:
        value = payload.get(name)
        if value is None:
            if required:
                return f"claim {name} is missing"
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"claim {name} is not a number"
        if name == "nbf" and not value < now + leeway:
            return f"'nbf' claim not valid until {_http_time(value)}"
        if name == "exp" and not value > now - leeway:
            return f"'exp' claim expired at {_http_time(value)}"
    return None


def _public_key_support() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


class JwtAuth(Plugin):
    name: ClassVar[str] = "jwt-auth"
    priority: ClassVar[int] = 2510
    type: ClassVar[str | None] = "auth"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "header": {"type": "string", "default": "authorization"},
            "query": {"type": "string", "default": "jwt"},
            "cookie": {"type": "string", "default": "jwt"},
            "hide_credentials": {"type": "boolean", "default": False},
            "key_claim_name": {"type": "string", "default": "key", "minLength": 1},
            "store_in_ctx": {"type": "boolean", "default": False},
            "realm": realm_schema("jwt"),
            "anonymous_consumer": ANONYMOUS_CONSUMER_SCHEMA,
            "claims_to_verify": {
                "type": "array",
                "items": {"type": "string", "enum": ["exp", "nbf"]},
                "uniqueItems": True,
            },
        },
    }
    consumer_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "properties": {
            "key": {"type": "string", "minLength": 1},
            "secret": {"type": "string", "minLength": 1},
            "algorithm": {
                "type": "string",
                "enum": [*HMAC_ALGORITHMS, *PUBLIC_KEY_ALGORITHMS],
                "default": "HS256",
            },
            "public_key": {"type": "string", "minLength": 1},
            "exp": {"type": "integer", "minimum": 1, "default": 86400},
            "base64_secret": {"type": "boolean", "default": False},
            "lifetime_grace_period": {"type": "integer", "minimum": 0, "default": 0},
        },
        "encrypt_fields": ["secret"],
        "required": ["key"],
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        if schema_type != "consumer":
            return None
        algorithm = conf.get("algorithm", "HS256")
        if algorithm in HMAC_ALGORITHMS:
            if not conf.get("secret"):
                return 'property "secret" is required when using HS based algorithms'
            if conf.get("base64_secret") and decode_base64(conf["secret"]) is None:
                return "base64_secret required but the secret is not in base64 format"
            return None
        if not conf.get("public_key"):
            return "missing valid public key"
        if not _public_key_support():
            return (
                f"algorithm {algorithm} needs the cryptography package (pip install cryptography)"
            )
        return None

    # -- the token -----------------------------------------------------------------------

    def _fetch(self, conf: dict[str, Any], ctx: Ctx) -> str | None:
        """The token (header, else query argument, else cookie), hidden if asked."""
        hide = conf.get("hide_credentials", False)
        header = conf.get("header", "authorization")
        token = ctx.headers.get(header)
        if token is not None:
            if hide:
                ctx.remove_header(header)
            return token[7:] if token[:7] in ("Bearer ", "bearer ") else token
        query = conf.get("query", "jwt")
        args = ctx.args or {}
        if query in args:
            if hide:
                ctx.query = remove_query_arg(ctx.query, query)
            return str(args[query])
        cookie = conf.get("cookie", "jwt")
        value = ctx.var.get(f"cookie_{cookie}")
        if value is not None and hide:
            kept = [
                part.strip()
                for part in (ctx.headers.get("cookie") or "").split(";")
                if part.strip() and part.strip().split("=", 1)[0] != cookie
            ]
            if kept:
                ctx.set_header("Cookie", "; ".join(kept))
            else:
                ctx.remove_header("Cookie")
        return None if value is None else str(value)

    def _consumer(self, conf: dict[str, Any], ctx: Ctx) -> tuple[dict[str, Any] | None, str]:
        """The authenticated consumer, or None and the 401's message."""
        raw = self._fetch(conf, ctx)
        if raw is None:
            return None, "Missing JWT token in request"
        try:
            token = Token(raw)
        except ValueError as err:
            ctx.log.warning("JWT token invalid: %s", err)
            return None, "JWT token invalid"
        user_key = token.payload.get(conf.get("key_claim_name", "key"))
        if user_key is None:
            return None, "missing user key in JWT token"
        consumer = find_consumer(ctx, self.name, "key", user_key)
        if consumer is None:
            ctx.log.warning("failed to find consumer: invalid user key")
            return None, "Invalid user key in JWT token"
        auth = consumer.get("auth_conf") or {}
        algorithm = auth.get("algorithm") or "HS256"
        if token.header.get("alg") != algorithm:
            ctx.log.warning("failed to verify jwt: algorithm mismatch, expected %s", algorithm)
            return None, "failed to verify jwt"
        key: bytes | str | None
        if algorithm in HMAC_ALGORITHMS:
            secret = auth.get("secret")
            key = decode_base64(secret) if secret and auth.get("base64_secret") else secret
        else:
            key = auth.get("public_key")
        if not key or not verify_signature(token, algorithm, key):
            ctx.log.warning("failed to verify jwt: signature mismatch")
            return None, "failed to verify jwt"
        leeway = int(auth.get("lifetime_grace_period") or 0)
        problem = verify_claims(token.payload, conf.get("claims_to_verify"), leeway, time.time())
        if problem is not None:
            ctx.log.warning("failed to verify jwt: %s", problem)
            return None, "failed to verify jwt"
        if conf.get("store_in_ctx"):
            ctx.state["jwt_auth_payload"] = token.payload  # APISIX: ctx.jwt_auth_payload
        return consumer, ""

    def _unauthorized(self, conf: dict[str, Any], message: str) -> Response:
        realm = conf.get("realm", "jwt")
        return 401, {"message": message}, {"WWW-Authenticate": f'Bearer realm="{realm}"'}

    def rewrite(self, conf: dict[str, Any], ctx: Ctx) -> Response | None:
        consumer, message = self._consumer(conf, ctx)
        consumer, message = or_anonymous(ctx, self.name, conf, consumer, message)
        if consumer is None:
            return self._unauthorized(conf, message)
        attach_consumer(ctx, consumer)
        return None
