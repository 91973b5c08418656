"""jwt-auth on both engines: tokens signed here (HS256 with the standard library, RS256 and
ES256 with ``cryptography``), sent as APISIX users send them, with APISIX's answers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from admin_client import admin_gateways
from conftest import request, route
from pygateway import Gateway
from pygateway.plugins.jwt_auth import JwtAuth

ec = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ec")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils  # noqa: E402


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(payload: dict[str, Any], alg: str = "HS256", key: Any = b"my-secret") -> str:
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    signed = f"{head}.{body}".encode()
    if alg == "HS256":
        sig = hmac.new(key, signed, hashlib.sha256).digest()
    elif alg == "RS256":
        sig = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    else:  # ES256: JWS wants r || s, 32 bytes each
        r, s = utils.decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{head}.{body}.{b64(sig)}"


def pem(private: Any) -> str:
    raw = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return raw.decode()


RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())


def consumers() -> list[dict[str, Any]]:
    return [
        {"username": "jack", "plugins": {"jwt-auth": {"key": "jack-key", "secret": "my-secret"}}},
        {
            "username": "rose",
            "plugins": {
                "jwt-auth": {"key": "rose-key", "algorithm": "RS256", "public_key": pem(RSA)}
            },
        },
        {
            "username": "ec",
            "plugins": {"jwt-auth": {"key": "ec-key", "algorithm": "ES256", "public_key": pem(EC)}},
        },
        {
            "username": "b64",
            "plugins": {
                "jwt-auth": {
                    "key": "b64-key",
                    "secret": base64.b64encode(b"\x00raw\xffkey").decode(),
                    "base64_secret": True,
                    "lifetime_grace_period": 30,
                }
            },
        },
    ]


def test_jwt_auth_tokens_claims_and_answers(origin: Any, engine: str) -> None:
    plugins = {"jwt-auth": {"hide_credentials": True}}
    config = {
        "consumers": consumers(),
        "routes": [
            route("/*", origin.addr, plugins=plugins),
            route("/strict", origin.addr, plugins={"jwt-auth": {"claims_to_verify": ["exp"]}}),
        ],
    }
    now = int(time.time())
    with Gateway(config=config, listen=["127.0.0.1:0"], workers=1, engine=engine) as gw:

        def call(path: str = "/", **headers: str) -> Any:
            return request(gw.url, path, headers=headers)

        def message(r: Any) -> str:
            return str(r.json()["message"])

        missing = call()
        assert missing.status == 401 and message(missing) == "Missing JWT token in request"
        assert missing.headers["www-authenticate"] == 'Bearer realm="jwt"'

        hs = token({"key": "jack-key", "exp": now + 60})
        ok = call(Authorization=f"Bearer {hs}")
        assert ok.status == 200, ok.body
        sent = ok.json()["headers"]
        assert sent["x-consumer-username"] == "jack" and "authorization" not in sent
        assert call(f"/?jwt={hs}&x=1").json()["path"] == "/?x=1"  # query, hidden
        assert call(Cookie=f"a=1; jwt={hs}").json()["headers"]["cookie"] == "a=1"  # cookie
        assert call(Authorization=hs).status == 200  # no Bearer prefix

        for name, tok in {
            "rs256": token({"key": "rose-key"}, "RS256", RSA),
            "es256": token({"key": "ec-key"}, "ES256", EC),
            "base64 secret": token({"key": "b64-key"}, key=b"\x00raw\xffkey"),
            "grace period": token({"key": "b64-key", "exp": now - 10}, key=b"\x00raw\xffkey"),
        }.items():
            r = call(Authorization=f"Bearer {tok}")
            assert r.status == 200, (name, r.body)

        nested = b64(b"[" * 5000 + b"]" * 5000)  # json's recursion limit: still a 401
        refused = {
            "JWT token invalid": "not.a-jwt",
            "JWT token invalid ": f"{nested}.{nested}.x",
            "missing user key in JWT token": token({"sub": "x"}),
            "Invalid user key in JWT token": token({"key": "nobody"}),
            "failed to verify jwt": token({"key": "jack-key"}, key=b"wrong"),
        }
        for expected, tok in refused.items():
            r = call(Authorization=f"Bearer {tok}")
            assert r.status == 401 and message(r) == expected.strip(), (expected, r.body)
            assert tok.encode() not in r.body
        # alg must be the consumer's: an HS256 token signed with rose's public key is refused
        confused = token({"key": "rose-key"}, "HS256", pem(RSA).encode())
        assert message(call(Authorization=f"Bearer {confused}")) == "failed to verify jwt"
        expired = token({"key": "jack-key", "exp": now - 5})
        assert message(call(Authorization=f"Bearer {expired}")) == "failed to verify jwt"
        early = token({"key": "jack-key", "nbf": now + 60})
        assert call(Authorization=f"Bearer {early}").status == 401
        # claims_to_verify makes a listed claim required
        no_exp = token({"key": "jack-key"})
        assert call("/", Authorization=f"Bearer {no_exp}").status == 200
        assert call("/strict", Authorization=f"Bearer {no_exp}").status == 401
        assert call("/strict", Authorization=f"Bearer {hs}").status == 200


def test_jwt_auth_consumer_checks_through_the_admin_api(tmp_path: Path) -> None:
    gen = admin_gateways(tmp_path)
    _, admin = next(gen)()
    try:
        r = admin.put("/consumers", {"username": "a", "plugins": {"jwt-auth": {"key": "k"}}})
        assert r.status == 400
        assert (
            'property "secret" is required when using HS based algorithms' in r.json()["error_msg"]
        )
        rs = {"key": "k", "algorithm": "RS256"}
        r = admin.put("/consumers", {"username": "a", "plugins": {"jwt-auth": rs}})
        assert "missing valid public key" in r.json()["error_msg"]
        bad64 = {"key": "k", "secret": "not base64!", "base64_secret": True}
        r = admin.put("/consumers", {"username": "a", "plugins": {"jwt-auth": bad64}})
        assert "base64_secret required but the secret is not in base64 format" in str(r.body)
        good = {"username": "a", "plugins": {"jwt-auth": {"key": "k", "secret": "s"}}}
        assert admin.put("/consumers", good).status == 201
        other = {"username": "b", "plugins": {"jwt-auth": {"key": "k", "secret": "t"}}}
        r = admin.put("/consumers", other)
        assert r.json()["error_msg"] == "duplicate key of plugin jwt-auth found with consumer: a"
        schema = admin.get("/plugins/jwt-auth").json()
        del schema["$comment"], schema["properties"]["_meta"]  # what APISIX injects
        assert schema == JwtAuth.schema
        listed = admin.get("/plugins/list").json()
        assert "jwt-auth" in listed
    finally:
        gen.close()
