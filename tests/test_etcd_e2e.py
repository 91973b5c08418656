"""Gateway nodes sharing one etcd: a write through one node's Admin API is served by the
others; an etcd outage stops admin writes (503) but never the data plane."""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_client import KEY, Admin
from conftest import request
from etcd_server import Etcd, EtcdCluster
from origin import Origin, free_port
from pygateway import Gateway
from pygateway.store.encryption import APISIX_DEFAULT_KEYRING

pytestmark = pytest.mark.skipif(not Path("/usr/bin/etcd").exists(), reason="etcd not installed")

SERVED_WITHIN = 1.0
"""A route written on one node is served by another within this many seconds."""


def wait_status(base: str, path: str, status: int, timeout: float) -> float:
    """Poll ``path`` on ``base`` until it answers ``status``; returns the seconds it took."""
    start = time.monotonic()
    last: Any = None
    while time.monotonic() - start < timeout:
        try:
            last = request(base, path, timeout=2).status
        except OSError as err:
            last = err
        if last == status:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"{base}{path}: {status} not within {timeout}s (last: {last})")


@pytest.fixture
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def nodes(etcd: EtcdCluster) -> Iterator[Callable[..., tuple[Gateway, Admin, str]]]:
    """``nodes(data_encryption=None, **etcd_settings)`` → (gateway, its Admin API, its data
    plane base URL)."""
    started: list[Gateway] = []

    def make(
        data_encryption: dict[str, Any] | None = None, **etcd_settings: Any
    ) -> tuple[Gateway, Admin, str]:
        settings = {"endpoints": etcd.endpoints, "prefix": "/apisix", **etcd_settings}
        gw = Gateway(
            listen=["127.0.0.1:0"],
            workers=1,
            etcd=settings,
            data_encryption=data_encryption,
            admin={"listen": "127.0.0.1:0", "keys": [{"name": "admin", "key": KEY}]},
        ).start()
        started.append(gw)
        assert gw.admin_address is not None, "the node has no Admin API"
        return gw, Admin(f"http://{gw.admin_address}"), f"http://{gw.addresses[0]}"

    yield make
    for gw in started:
        gw.stop(0)


def route(uri: str, origin: Origin) -> dict[str, Any]:
    return {"uri": uri, "upstream": {"type": "roundrobin", "nodes": {origin.addr: 1}}}


def test_write_on_node_a_is_served_by_node_b_within_a_second(
    nodes: Callable[..., tuple[Gateway, Admin, str]], etcd: EtcdCluster, origin: Origin
) -> None:
    _, admin_a, base_a = nodes()
    _, admin_b, base_b = nodes()
    assert request(base_b, "/hello").status == 404

    r = admin_a.put("/routes/1", route("/hello", origin))
    assert r.status == 201, r.body
    assert r.json()["key"] == "/apisix/routes/1"
    took = wait_status(base_b, "/hello", 200, timeout=5)
    assert took < SERVED_WITHIN, f"node B served the route after {took:.2f}s"
    wait_status(base_a, "/hello", 200, timeout=SERVED_WITHIN)

    stored = Etcd(etcd.url).get("/apisix/routes/1")
    assert stored["uri"] == "/hello", "the route is not in APISIX's etcd layout"
    got = admin_b.get("/routes/1")
    assert got.status == 200 and got.json()["value"]["uri"] == "/hello"

    assert admin_b.delete("/routes/1").status == 200
    wait_status(base_a, "/hello", 404, timeout=SERVED_WITHIN)


def test_route_written_by_apisix_into_etcd_is_served(
    nodes: Callable[..., tuple[Gateway, Admin, str]], etcd: EtcdCluster, origin: Origin
) -> None:
    raw = Etcd(etcd.url)
    raw.put("/apisix/routes", "init_dir")
    raw.put("/apisix/upstreams/1", {"id": "1", "type": "roundrobin", "nodes": {origin.addr: 1}})
    raw.put(
        "/apisix/routes/00000000000000000042",
        {"id": "00000000000000000042", "uri": "/x", "upstream_id": "1"},
    )
    _, admin, base = nodes()
    wait_status(base, "/x", 200, timeout=SERVED_WITHIN)
    listed = admin.get("/routes")
    assert listed.status == 200 and listed.json()["total"] == 1


def apisix_encrypt(text: str, key: str = APISIX_DEFAULT_KEYRING[0]) -> str:
    """What APISIX's data_encryption stores: AES-128-CBC, key = IV, PKCS#7, base64 (as
    `openssl enc -aes-128-cbc -K <key> -iv <key> -base64` gives)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    raw = key.encode()
    padder = padding.PKCS7(128).padder()
    data = padder.update(text.encode()) + padder.finalize()
    enc = Cipher(algorithms.AES(raw), modes.CBC(raw[:16])).encryptor()
    return base64.b64encode(enc.update(data) + enc.finalize()).decode()


def test_consumer_secrets_are_encrypted_in_etcd_as_apisix_does(
    nodes: Callable[..., tuple[Gateway, Admin, str]], etcd: EtcdCluster, origin: Origin
) -> None:
    """APISIX 3.x (data_encryption on by default) keeps key-auth keys, basic-auth passwords
    ... as ciphertext in etcd: a node sharing its etcd must read them, and write them so."""
    assert apisix_encrypt("bar", "edd1c9f0985e76a2") == "77+NmbYqNfN+oLm0aX5akg=="  # APISIX's
    raw = Etcd(etcd.url)
    raw.put("/apisix/upstreams/1", {"type": "roundrobin", "nodes": {origin.addr: 1}})
    auth = {"key-auth": {}}
    raw.put("/apisix/routes/1", {"uri": "/auth", "upstream_id": "1", "plugins": auth})
    alice = {"username": "alice", "plugins": {"key-auth": {"key": apisix_encrypt("alice-key")}}}
    raw.put("/apisix/consumers/alice", alice)
    second = apisix_encrypt("bob-key", APISIX_DEFAULT_KEYRING[1])  # any key of the keyring
    raw.put("/apisix/consumers/bob", {"username": "bob"})
    raw.put("/apisix/consumers/bob/credentials/c1", {"plugins": {"key-auth": {"key": second}}})
    raw.put("/apisix/consumers/carol", {"plugins": {"key-auth": {"key": "carol-plain"}}})
    _, admin, base = nodes()

    def status(key: str) -> int:
        return int(request(base, "/auth", headers={"apikey": key}).status)

    wait_status(base, "/auth", 401, timeout=SERVED_WITHIN)
    assert status("alice-key") == 200 and status("bob-key") == 200
    assert status(apisix_encrypt("alice-key")) == 401, "the ciphertext works as a key"
    assert status("carol-plain") == 200  # written before encryption: used as it is
    got = admin.get("/consumers/alice").json()["value"]
    assert got["plugins"]["key-auth"]["key"] == "alice-key"  # APISIX decrypts on GET

    r = admin.put("/consumers/dave", {"plugins": {"key-auth": {"key": "dave-key"}}})
    assert r.status == 201, r.body
    stored = raw.get("/apisix/consumers/dave")
    assert stored["plugins"]["key-auth"]["key"] == apisix_encrypt("dave-key")
    limited = {"limit-count": {"count": 9, "time_window": 60, "redis_password": "pw"}}
    r = admin.patch("/routes/1", {"plugins": {**auth, **limited}})
    assert r.status == 200, r.body
    assert raw.get("/apisix/routes/1")["plugins"]["limit-count"]["redis_password"] == (
        apisix_encrypt("pw")
    )
    wait_status(base, "/auth", 401, timeout=SERVED_WITHIN)
    assert status("dave-key") == 200
    r = admin.put("/consumers/eve", {"plugins": {"key-auth": {"key": "dave-key"}}})
    assert r.status == 400 and "duplicate key" in r.json()["error_msg"]


def test_data_encryption_off_or_with_its_own_keyring(
    nodes: Callable[..., tuple[Gateway, Admin, str]], etcd: EtcdCluster, origin: Origin
) -> None:
    raw = Etcd(etcd.url)
    _, admin_off, _ = nodes(data_encryption={"enable_encrypt_fields": False})
    assert admin_off.put("/consumers/a", {"plugins": {"key-auth": {"key": "a-key"}}}).status == 201
    assert raw.get("/apisix/consumers/a")["plugins"]["key-auth"]["key"] == "a-key"
    own = "0123456789abcdef0123456789abcdef"  # AES-256
    _, admin_own, _ = nodes(data_encryption={"keyring": [own]})
    assert admin_own.put("/consumers/b", {"plugins": {"key-auth": {"key": "b-key"}}}).status == 201
    assert raw.get("/apisix/consumers/b")["plugins"]["key-auth"]["key"] == apisix_encrypt(
        "b-key", own
    )
    assert admin_own.get("/consumers/b").json()["value"]["plugins"]["key-auth"]["key"] == "b-key"
    # the node without encryption sees what etcd holds, once its watch brings it
    deadline = time.monotonic() + SERVED_WITHIN
    while (seen := admin_off.get("/consumers/b")).status == 404 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen.json()["value"]["plugins"]["key-auth"]["key"] == apisix_encrypt("b-key", own)


def test_invalid_updates_from_etcd_keep_the_last_valid_config_serving(
    nodes: Callable[..., tuple[Gateway, Admin, str]],
    etcd: EtcdCluster,
    origin: Origin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What another writer puts into etcd cannot break a node: an invalid update of an
    object keeps its last valid version serving (APISIX), a value nested past any sane depth
    is refused alone, and every later write is still applied, on this node and a new one."""
    raw = Etcd(etcd.url)
    raw.put("/apisix/upstreams/1", {"type": "roundrobin", "nodes": {origin.addr: 1}})
    raw.put("/apisix/routes/1", {"uri": "/r1", "upstream_id": "1"})
    raw.put("/apisix/routes/2", {"uri": "/r2", "upstream_id": "1"})
    raw.put("/apisix/ssls/1", {"snis": ["a.example.com"], "cert": "c", "key": "k"})
    caplog.set_level(logging.WARNING, logger="pygateway.store")
    _, admin, base = nodes()
    wait_status(base, "/r2", 200, timeout=SERVED_WITHIN)
    assert "ssls/1 is not served: pygateway does not support ssls" in caplog.text

    raw.put("/apisix/routes/1", {"uri": 123, "upstream_id": "1"})  # fails its schema
    raw.put("/apisix/routes/2", "garbage")  # not JSON
    raw.put("/apisix/upstreams/1", {"type": "roundrobin-typo", "nodes": {origin.addr: 1}})
    deep = "[" * 985 + "]" * 985
    raw.put("/apisix/routes/deep", f'{{"uri": "/deep", "upstream_id": "1", "desc": {deep}}}')
    raw.put("/apisix/routes/3", {"id": "99", "uri": "/r3", "upstream_id": "1"})  # id: the key's
    wait_status(base, "/r3", 200, timeout=SERVED_WITHIN)
    for path in ("/r1", "/r2"):
        assert request(base, path).status == 200, f"{path}: the last valid version was dropped"
    assert request(base, "/deep").status == 404

    r = admin.put("/routes/4", {"uri": "/r4", "upstream_id": "1"})
    assert r.status == 201, r.body
    wait_status(base, "/r4", 200, timeout=SERVED_WITHIN)
    # a plugin reload checks every object again; the kept versions stay (they pass)
    assert admin.call("PUT", "/plugins/reload").status == 200
    raw.put("/apisix/routes/5", {"uri": "/r5", "upstream_id": "1"})
    wait_status(base, "/r5", 200, timeout=SERVED_WITHIN)  # upstream 1: its kept version
    for path in ("/r1", "/r2"):
        assert request(base, path).status == 200, f"{path}: dropped by the plugin reload"
    assert admin.get("/routes/3").json()["value"]["uri"] == "/r3"

    raw.put("/apisix/upstreams/1", {"type": "roundrobin", "nodes": {origin.addr: 1}})
    _, _, base_new = nodes()  # a node starting now skips what is invalid and serves the rest
    wait_status(base_new, "/r4", 200, timeout=SERVED_WITHIN)
    assert request(base_new, "/r3").status == 200
    assert request(base_new, "/r1").status == 404 and request(base_new, "/deep").status == 404


def test_etcd_outage_keeps_serving_refuses_writes_and_recovers(
    nodes: Callable[..., tuple[Gateway, Admin, str]], etcd: EtcdCluster, origin: Origin
) -> None:
    _, admin_a, base_a = nodes(timeout=2.0)
    _, _, base_b = nodes(timeout=2.0)
    assert admin_a.put("/routes/1", route("/hello", origin)).status == 201
    wait_status(base_b, "/hello", 200, timeout=5)
    wait_status(base_a, "/hello", 200, timeout=5)

    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal served
        deadline = time.monotonic() + 30
        for i in range(100_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            base = base_a if i % 2 else base_b
            try:
                status = request(base, "/hello", timeout=5).status
            except OSError as err:
                failures.append(f"{base}: {err}")
                continue
            served += 1
            if status != 200:
                failures.append(f"{base}: HTTP {status}")
            time.sleep(0.002)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.2)
        member = etcd.members[0]
        member.kill()
        time.sleep(0.3)
        start = time.monotonic()
        r = admin_a.put("/routes/2", route("/two", origin))
        assert r.status == 503, (r.status, r.body)
        assert "etcd is unavailable" in r.json()["error_msg"]
        assert time.monotonic() - start < 3.0, "the admin write outlived the etcd timeout"
        assert admin_a.get("/routes/1").status == 200, "reads must come from the cache"
        time.sleep(0.5)  # keep the load running through the outage

        etcd.start_member(member)
        time.sleep(0.3)
    finally:
        stop.set()
        loader.join(timeout=40)
    assert not failures, f"{len(failures)} failed data-plane requests: {failures[:5]}"
    assert served > 50, f"the load loop made only {served} requests"

    # full recovery: writes go through again and reach both nodes
    deadline = time.monotonic() + 10
    while True:
        r = admin_a.put("/routes/2", route("/two", origin))
        if r.status in (200, 201) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status == 201, (r.status, r.body)
    wait_status(base_b, "/two", 200, timeout=5)
    wait_status(base_a, "/two", 200, timeout=SERVED_WITHIN)


def test_cli_node_on_etcd_with_admin_api(
    cli: Callable[..., Any], etcd: EtcdCluster, origin: Origin
) -> None:
    port, admin_port = free_port(), free_port()
    g = cli(
        "--etcd",
        ",".join(etcd.endpoints),
        "--admin-key",
        KEY,
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        "--listen",
        f"127.0.0.1:{port}",
        port=port,
    )
    admin = Admin(f"http://127.0.0.1:{admin_port}")
    wait_status(admin.base, "/apisix/admin/routes?api_key=" + KEY, 200, timeout=5)
    assert admin.put("/routes/cli", route("/cli", origin)).status == 201
    wait_status(g.base, "/cli", 200, timeout=SERVED_WITHIN)
    assert Etcd(etcd.url).get("/apisix/routes/cli")["uri"] == "/cli"
    _, out = g.stop()
    assert "etcd" in out, out
