"""A small Admin API client and a gateway-with-Admin-API factory for the tests."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from conftest import Reply, request
from pygateway import Gateway
from pygateway.plugin import Plugin

KEY = "test-admin-key-0123456789"
VIEWER_KEY = "test-viewer-key-0123456789"


@dataclass
class Admin:
    """Calls ``/apisix/admin`` on ``base`` with an admin key."""

    base: str
    key: str | None = KEY

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        if self.key is not None:
            hdrs.setdefault("X-API-KEY", self.key)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        return request(self.base, "/apisix/admin" + path, method, hdrs, data)

    def wait(self, deadline: float = 15) -> Admin:
        """Return once the Admin API answers (a node binds it after the data plane)."""
        end = time.monotonic() + deadline
        while True:
            try:
                self.get("/routes")
                return self
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)

    def get(self, path: str) -> Reply:
        return self.call("GET", path)

    def put(self, path: str, body: Any) -> Reply:
        return self.call("PUT", path, body)

    def post(self, path: str, body: Any) -> Reply:
        return self.call("POST", path, body)

    def patch(self, path: str, body: Any) -> Reply:
        return self.call("PATCH", path, body)

    def delete(self, path: str) -> Reply:
        return self.call("DELETE", path)


def admin_settings(store: Path, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "keys": [
            {"name": "admin", "key": KEY, "role": "admin"},
            {"name": "viewer", "key": VIEWER_KEY, "role": "viewer"},
        ],
        "store": str(store),
    }
    settings.update(extra)
    return settings


def admin_gateways(tmp_path: Path) -> Iterator[Any]:
    """The body of an ``admin_gateway`` fixture: ``admin_gateway(**node)`` → (gateway, Admin),
    with an embedded store in ``tmp_path``; every gateway is stopped afterwards."""
    started: list[Gateway] = []

    def make(**node: Any) -> tuple[Gateway, Admin]:
        admin = node.pop("admin", None) or admin_settings(tmp_path / "store.jsonl")
        node.setdefault("listen", ["127.0.0.1:0"])
        node.setdefault("workers", 1)
        gw = Gateway(admin=admin, **node).start()
        started.append(gw)
        assert gw.admin_address is not None
        return gw, Admin(f"http://{gw.admin_address}")

    yield make
    for gw in started:
        gw.stop(0)


@contextlib.contextmanager
def standalone_file_gateway(tmp_path: Path, upstream: str) -> Iterator[tuple[Gateway, Admin, Path]]:
    """A node serving a standalone file (route ``r1``: ``/a`` to ``upstream``) with the
    Admin API on (read-only): (gateway, Admin, the file)."""
    routes = tmp_path / "apisix.yaml"
    routes.write_text(
        "routes:\n  - id: r1\n    uri: /a\n    upstream:\n"
        f'      nodes:\n        "{upstream}": 1\n#END\n'
    )
    settings = admin_settings(tmp_path / "unused.jsonl")
    gw = Gateway(routes=routes, listen=["127.0.0.1:0"], workers=1, admin=settings).start()
    try:
        yield gw, Admin(f"http://{gw.admin_address}"), routes
    finally:
        gw.stop(0)


class StrictMeta(Plugin):
    """A plugin whose metadata schema allows no field but its own (not even time stamps)."""

    name = "strict-meta"
    priority = 1
    metadata_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "properties": {"fmt": {"type": "string"}},
        "additionalProperties": False,
    }
