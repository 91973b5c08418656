"""The CLI as a user meets it: run, the embedded default, file watching, signals, validate."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import request, write_config
from origin import free_port

ROUTES = """\
routes:
  - id: r1
    uri: /*
    upstream:
      nodes:
        "{addr}": 1
#END
"""


def pygateway(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pygateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_without_arguments_serves_the_embedded_demo(cli):
    g = cli(port=9080)
    r = request(g.base, "/hello")
    assert r.status == 200
    assert b"hello from the pygateway demo origin" in r.body
    assert b"uri: /hello" in r.body
    code, out = g.stop()
    assert code == 0, out
    assert "listening on http://127.0.0.1:9080" in out
    assert "curl" in out


def test_sigterm_drains_in_flight_requests(cli, origin, tmp_path):
    routes = tmp_path / "apisix.yaml"
    routes.write_text(ROUTES.format(addr=origin.addr))
    port = free_port()
    g = cli("--routes", str(routes), "--listen", f"127.0.0.1:{port}", port=port)
    result: dict[str, int] = {}

    def slow() -> None:
        result["status"] = request(g.base, "/sleep/1").status

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    g.proc.send_signal(signal.SIGTERM)
    t.join(10)
    code = g.proc.wait(timeout=15)
    _, out = g.stop()
    assert result.get("status") == 200, f"in-flight request was cut: {result}\n{out}"
    assert code == 0, out


def _load(base: str, stop: threading.Event, failures: list[str], count: list[int]) -> None:
    end = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < end:
        try:
            r = request(base, "/", timeout=5)
            if r.status != 200:
                failures.append(f"status {r.status}")
        except OSError as e:
            failures.append(repr(e))
        count[0] += 1


def test_file_change_applies_within_a_second_without_failed_requests(
    cli, origin, origin_b, tmp_path
):
    routes = tmp_path / "apisix.yaml"
    routes.write_text(ROUTES.format(addr=origin.addr))
    port = free_port()
    g = cli("--routes", str(routes), "--listen", f"127.0.0.1:{port}", port=port)
    assert request(g.base, "/").json()["origin"] == "a"
    stop, failures, count = threading.Event(), [], [0]
    loader = threading.Thread(target=_load, args=(g.base, stop, failures, count))
    loader.start()
    try:
        time.sleep(0.3)
        write_config(routes, ROUTES.format(addr=origin_b.addr))
        t0 = time.monotonic()
        while request(g.base, "/").json()["origin"] != "b":
            assert time.monotonic() - t0 < 1.0, "the file change did not apply within 1 s"
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        stop.set()
        loader.join()
    assert count[0] > 10
    assert failures == [], failures[:5]


@pytest.mark.parametrize(
    ("bad_text", "expected_log"),
    [
        (
            ROUTES.replace("uri: /*", "uri: 42"),
            "routes[id=r1] uri",
        ),
        (
            'routes:\n  - id: r1\n    uri: /*\n    upstream:\n      nodes:\n        "{addr}": 1\n',
            "missing valid end flag",
        ),
        ("routes:\n  - id: r1\n    uri: [/a\n#END\n", "apisix.yaml"),
    ],
    ids=["schema-error", "missing-END", "yaml-syntax"],
)
def test_bad_file_is_rejected_and_previous_config_keeps_serving(
    cli, origin, origin_b, tmp_path, bad_text, expected_log
):
    routes = tmp_path / "apisix.yaml"
    routes.write_text(ROUTES.format(addr=origin.addr))
    port = free_port()
    g = cli("--routes", str(routes), "--listen", f"127.0.0.1:{port}", port=port)
    write_config(routes, bad_text.format(addr=origin_b.addr))
    time.sleep(1.0)
    r = request(g.base, "/")
    assert r.status == 200 and r.json()["origin"] == "a", "previous config must keep serving"
    # and a good file afterwards applies again
    write_config(routes, ROUTES.format(addr=origin_b.addr))
    t0 = time.monotonic()
    while request(g.base, "/").json()["origin"] != "b":
        assert time.monotonic() - t0 < 2
        time.sleep(0.05)
    _, out = g.stop()
    assert "rejected" in out and expected_log in out, out


def test_node_config_file_and_flag_override(cli, origin, tmp_path):
    routes = tmp_path / "apisix.yaml"
    routes.write_text(ROUTES.format(addr=origin.addr))
    p1, p2 = free_port(), free_port()
    node = tmp_path / "node.yaml"
    node.write_text(f"listen: ['127.0.0.1:{p1}']\nworkers: 1\nroutes: apisix.yaml\n")
    g = cli("--config", str(node), "--listen", f"127.0.0.1:{p2}", port=p2)
    assert request(g.base, "/").status == 200
    with pytest.raises(OSError):
        request(f"http://127.0.0.1:{p1}", "/", timeout=1)


def test_start_with_invalid_file_fails_listing_errors(tmp_path):
    routes = tmp_path / "apisix.yaml"
    routes.write_text("routes:\n  - id: r1\n    uri: 1\n  - id: r2\n    uri: /x\n#END\n")
    r = pygateway("run", "--routes", str(routes), "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert "routes[id=r1]" in r.stderr and "routes[id=r2]" in r.stderr, r.stderr


def test_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = pygateway("run", "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert f"failed to listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stderr


def test_python_engine_flag_serves(cli, origin, tmp_path):
    routes = tmp_path / "apisix.yaml"
    routes.write_text(ROUTES.format(addr=origin.addr))
    port = free_port()
    g = cli(
        "--engine", "python", "--routes", str(routes), "--listen", f"127.0.0.1:{port}", port=port
    )
    r = request(g.base, "/x?y=1")
    assert r.status == 200
    assert r.json()["path"] == "/x?y=1"
    assert r.headers["server"].startswith("pygateway/")
    code, out = g.stop()
    assert code == 0, out
    assert "python engine" in out


def test_validate_ok_and_every_error_listed(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(ROUTES.format(addr="127.0.0.1:1980"))
    r = pygateway("validate", str(good))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "routes:\n  - id: r1\n    uri: /a\n    methods: [GOT]\n    upstream_id: nope\n"
        "  - id: r2\n    uris: []\n    upstream: {nodes: {'127.0.0.1:1': 1}}\n#END\n"
    )
    r = pygateway("validate", str(good), str(bad))
    assert r.returncode == 1
    assert "routes[id=r1] methods" in r.stderr, r.stderr
    assert "failed to fetch upstream info by upstream id [nope]" in r.stderr, r.stderr
    assert "routes[id=r2]" in r.stderr, r.stderr


def test_validate_knows_the_nodes_plugins(tmp_path):
    routes = tmp_path / "apisix.yaml"
    routes.write_text(
        "routes:\n  - uri: /a\n    plugins:\n      limit-count: {count: 1, time_window: 60}\n"
        "      mine: {}\n    upstream: {nodes: {'127.0.0.1:1': 1}}\n#END\n"
    )
    r = pygateway("validate", str(routes))
    assert r.returncode == 1
    assert "unknown plugin" in r.stderr and "mine" in r.stderr, r.stderr
    assert "limit-count" not in r.stderr, "built-in plugins are known"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "mine.py").write_text(
        "from pygateway.plugin import Plugin\n\n\nclass Mine(Plugin):\n"
        "    name = 'mine'\n    priority = 1\n"
    )
    node = tmp_path / "node.yaml"
    node.write_text(f"plugin_paths: [{plugins}]\n")
    r = pygateway("validate", "--config", str(node), str(routes))
    assert r.returncode == 0, r.stderr


def test_malformed_flood_does_not_kill_workers(cli, origin, tmp_path):
    routes = tmp_path / "apisix.yaml"
    routes.write_text(ROUTES.format(addr=origin.addr))
    port = free_port()
    g = cli("--routes", str(routes), "--listen", f"127.0.0.1:{port}", "--workers", "1", port=port)
    junk = [b"\x00\xff" * 100, b"GET / HTTP/9.9\r\n\r\n", b"G\r\n\r\n", os.urandom(4096)]
    for payload in junk * 5:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(payload)
            try:
                s.recv(1024)
            except OSError:
                pass
    assert request(g.base, "/").status == 200
    assert g.proc.poll() is None


PLUGIN_V = """
from pygateway.plugin import Plugin


class Stamp(Plugin):
    name = "test-stamp"
    priority = 5

    def access(self, conf, ctx):
        ctx.set_header("X-Version", "{version}")
"""


def _stamp_node(cli, origin, tmp_path):
    """A node running the test-stamp plugin from a plugin_paths folder (version 1)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stamp.py").write_text(PLUGIN_V.format(version="1"))
    node = tmp_path / "node.yaml"
    node.write_text("plugin_paths: [plugins]\n")
    routes = tmp_path / "apisix.yaml"
    routes.write_text(
        "routes:\n  - uri: /*\n    plugins:\n      test-stamp: {}\n"
        f'    upstream:\n      nodes:\n        "{origin.addr}": 1\n#END\n'
    )
    port = free_port()
    g = cli(
        "--config", str(node), "--routes", str(routes), "--listen", f"127.0.0.1:{port}", port=port
    )
    return plugins, g


def test_sighup_reloads_plugin_code_without_failed_requests(cli, origin, tmp_path):
    plugins, g = _stamp_node(cli, origin, tmp_path)
    assert request(g.base, "/").json()["headers"]["x-version"] == "1"
    stop, failures, count = threading.Event(), [], [0]
    loader = threading.Thread(target=_load, args=(g.base, stop, failures, count))
    loader.start()
    try:
        time.sleep(0.2)
        write_config(plugins / "stamp.py", PLUGIN_V.format(version="2"))
        g.proc.send_signal(signal.SIGHUP)
        t0 = time.monotonic()
        while request(g.base, "/").json()["headers"]["x-version"] != "2":
            assert time.monotonic() - t0 < 3, "SIGHUP did not reload the plugin code"
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        loader.join()
    assert count[0] > 5
    assert failures == [], failures[:5]


def test_sighup_with_a_broken_plugin_file_keeps_the_node_serving(cli, origin, tmp_path):
    plugins, g = _stamp_node(cli, origin, tmp_path)
    write_config(plugins / "stamp.py", "this is not python (")
    g.proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert g.proc.poll() is None, "a broken plugin file took the node down"
    r = request(g.base, "/")
    assert r.status == 200 and r.json()["headers"]["x-version"] == "1"
    _, out = g.stop()
    assert "reload failed" in out
