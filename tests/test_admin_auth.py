"""Admin API access: key carriers, roles, 401 bodies, refused keys, the client allow-list."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_client import KEY, VIEWER_KEY, Admin, admin_gateways, admin_settings
from conftest import request
from pygateway import Gateway
from pygateway.admin.server import check_token
from pygateway.config import ConfigError
from pygateway.config.node import AdminKey

ROUTE = {"uri": "/a", "upstream": {"nodes": {"127.0.0.1:1": 1}}}


@pytest.fixture
def admin_gateway(tmp_path: Path) -> Iterator[Any]:
    yield from admin_gateways(tmp_path)


def test_all_three_key_carriers_are_accepted(admin_gateway: Any) -> None:
    _, admin = admin_gateway()
    anon = Admin(admin.base, key=None)
    assert anon.call("GET", "/routes", headers={"X-API-KEY": KEY}).status == 200
    assert anon.call("GET", f"/routes?api_key={KEY}").status == 200
    assert anon.call("GET", "/routes", headers={"Cookie": f"x_api_key={KEY}"}).status == 200


def test_401_bodies(admin_gateway: Any, caplog: pytest.LogCaptureFixture) -> None:
    _, admin = admin_gateway()
    caplog.set_level(logging.WARNING)
    missing = Admin(admin.base, key=None).get("/routes")
    assert missing.status == 401
    assert missing.json() == {"error_msg": "failed to check token", "description": "missing apikey"}
    assert missing.headers["x-api-version"] == "v3"
    wrong = Admin(admin.base, key="not-the-key").get("/routes")
    assert wrong.status == 401 and wrong.json()["description"] == "wrong apikey"
    assert b"not-the-key" not in wrong.body
    for empty in ("/routes?api_key=", "/routes?api_key"):  # given, if empty: a wrong key
        r = Admin(admin.base, key=None).call("GET", empty, headers={"X-API-KEY": KEY})
        assert r.status == 401 and r.json()["description"] == "wrong apikey", empty
    assert "not-the-key" not in caplog.text and KEY not in caplog.text


def test_viewer_may_only_get(admin_gateway: Any) -> None:
    _, admin = admin_gateway()
    admin.put("/routes/1", ROUTE)
    viewer = Admin(admin.base, key=VIEWER_KEY)
    assert viewer.get("/routes/1").status == 200
    for reply in (viewer.put("/routes/2", ROUTE), viewer.delete("/routes/1")):
        assert reply.status == 401
        assert reply.json()["description"] == "invalid method for role viewer"


def test_check_token_compares_every_key() -> None:
    keys = [AdminKey("a", "k1"), AdminKey("v", "k2", "viewer")]
    assert check_token(keys, "k1", "DELETE") == (True, None)
    assert check_token(keys, "k2", "GET") == (True, None)
    assert check_token(keys, "k3", "GET") == (False, "wrong apikey")
    assert check_token(keys, None, "GET") == (False, "missing apikey")


@pytest.mark.parametrize(
    ("admin", "field"),
    [
        ({"keys": [{"key": "edd1c9f034335f136f87ad84b625c8f1"}]}, "admin.keys[0].key"),
        (
            {"keys": [{"key": "4054f7cf07e344346cd3f287985e76a2", "role": "viewer"}]},
            "admin.keys[0].key",
        ),
        ({"keys": [{"key": ""}]}, "admin.keys[0].key"),
        ({"listen": "127.0.0.1:9180"}, "admin.keys"),
        ({"keys": [{"key": KEY}], "listen": "127.0.0.1:9080"}, "admin.listen"),
    ],
)
def test_the_node_refuses_to_start_with_unsafe_admin_settings(
    admin: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Gateway(admin=admin, listen=["127.0.0.1:9080"])
    assert [e.path for e in info.value.errors] == [field]
    assert "edd1c9f0" not in str(info.value) and "4054f7cf" not in str(info.value)


def test_admin_key_required_false_opens_the_api(admin_gateway: Any, tmp_path: Path) -> None:
    settings = {"listen": "127.0.0.1:0", "admin_key_required": False, "store": str(tmp_path / "s")}
    _, admin = admin_gateway(admin=settings)
    assert Admin(admin.base, key=None).put("/routes/1", ROUTE).status == 201


def test_clients_outside_allow_admin_get_403(admin_gateway: Any, tmp_path: Path) -> None:
    settings = admin_settings(tmp_path / "s", allow_admin=["10.0.0.0/8"])
    _, admin = admin_gateway(admin=settings)
    r = admin.get("/routes")
    assert r.status == 403 and r.headers["x-api-version"] == "v3"


def test_node_config_shape_errors_name_the_field(tmp_path: Path) -> None:
    from pygateway.config import load_node_config

    path = tmp_path / "node.yaml"
    path.write_text(
        "admin:\n  keys: [{key: k, role: boss}]\n  allow_admin: [nope]\n  what: 1\n"
        "etcd:\n  endpoints: []\n  prefix: apisix\n"
    )
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    fields = sorted(e.path for e in info.value.errors)
    assert fields == [
        "admin.allow_admin[0]",
        "admin.keys[0].role",
        "admin.what",
        "etcd.endpoints",
        "etcd.prefix",
    ]


def test_relative_store_path_is_relative_to_the_node_file(tmp_path: Path) -> None:
    from pygateway.config import load_node_config

    path = tmp_path / "node.yaml"
    path.write_text("admin:\n  keys: [{key: k}]\n  store: data/store.jsonl\n")
    assert load_node_config(path).admin["store"] == str(tmp_path / "data" / "store.jsonl")


def test_head_outside_the_prefix_is_404(admin_gateway: Any) -> None:
    _, admin = admin_gateway()
    assert request(admin.base, "/other").status == 404
