"""pygateway.testing: the helpers plugin authors test their plugins with."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pygateway import ConfigError, Gateway
from pygateway.plugin import Plugin
from pygateway.testing import (
    GatewayFactory,
    Origin,
    check_conf,
    client,
    eventually,
    get,
    post,
    pygateway_gateway,  # noqa: F401  (the fixtures are importable, besides pytest_plugins)
    pygateway_origin,  # noqa: F401
    request,
    route,
    run_gateway,
    start_gateway,
)

LOGGED: list[str] = []


class Tagger(Plugin):
    name = "kit-tagger"
    priority = 20
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"tag": {"type": "string", "default": "t"}},
    }

    def access(self, conf: dict[str, Any], ctx: Any) -> Any:
        if ctx.headers.get("x-deny"):
            return 403, {"denied": True}
        ctx.set_header("X-Tag", conf["tag"])
        return None

    def header_filter(self, conf: dict[str, Any], ctx: Any) -> None:
        ctx.response_headers["X-Tagged"] = conf["tag"]

    def log(self, conf: dict[str, Any], ctx: Any) -> None:
        LOGGED.append(f"{ctx.uri}:{ctx.status}")


def refused(url: str) -> bool:
    try:
        get(url, "/", timeout=2)
    except OSError:
        return True
    return False


# -- Origin ------------------------------------------------------------------------------


def test_origin_echoes_and_records_requests() -> None:
    with Origin() as origin:
        assert origin.url == f"http://{origin.addr}"
        assert origin.addr.startswith("127.0.0.1:")
        r = get(origin, "/a/b?x=1", headers={"X-One": "1"})
        assert r.status == 200
        assert r.headers["content-type"] == "application/json"
        echo = r.json()
        assert echo["method"] == "GET"
        assert echo["path"] == "/a/b?x=1"
        assert echo["headers"]["x-one"] == "1"
        status, _, body = post(origin.url, "/p", "payload")
        assert status == 200
        assert b'"body": "payload"' in body
        assert get(origin, "/status/418").status == 418
        assert [q["path"] for q in origin.requests] == ["/a/b?x=1", "/p", "/status/418"]
        assert origin.last["method"] == "GET"
        origin.clear()
        assert origin.requests == []
        with pytest.raises(AssertionError):
            origin.last  # noqa: B018
        url = origin.url
    assert refused(url), "the origin still answers after the with block"
    origin.stop()  # idempotent


def test_request_sends_repeated_headers_and_a_host() -> None:
    with Origin() as origin:
        r = request(origin, "PUT", "/h", headers=[("X-A", "1"), ("X-A", "2"), ("Host", "h.test")])
        sent = r.json()["header_list"]
        assert ["x-a", "1"] in sent and ["x-a", "2"] in sent
        assert r.json()["headers"]["host"] == "h.test"
        assert [k for k, _ in sent].count("host") == 1
        c = client(origin)
        assert c.post("/c", b"xyz").json()["body"] == "xyz"
        assert c.get("/c").json()["method"] == "GET"


# -- run_gateway -------------------------------------------------------------------------


def test_run_gateway_registers_and_applies_a_plugin_class() -> None:
    LOGGED.clear()
    with Origin() as origin:
        routes = [route("/*", origin, plugins={"kit-tagger": {"tag": "x1"}}, id="r1")]
        with run_gateway(routes=routes, plugins=[Tagger], debug=True) as gw:
            assert isinstance(gw, Gateway)
            assert "kit-tagger" in gw.plugins
            r = get(gw, "/hello")
            assert r.status == 200
            assert origin.last["headers"]["x-tag"] == "x1"
            assert r.headers["x-tagged"] == "x1"
            assert r.headers["apisix-plugins"].startswith("kit-tagger#access")
            denied = get(gw, "/hello", headers={"X-Deny": "1"})
            assert (denied.status, denied.json()) == (403, {"denied": True})
            assert len(origin.requests) == 1
            eventually(lambda: "/hello:403" in LOGGED)
            url = gw.url
        assert refused(url), "the gateway still answers after the with block"


def test_run_gateway_with_consumers_and_global_rules() -> None:
    with Origin() as origin:
        with run_gateway(
            routes=[route("/*", origin, plugins={"key-auth": {}})],
            plugins=[Tagger],
            consumers=[{"username": "jack", "plugins": {"key-auth": {"key": "k1"}}}],
            global_rules=[{"id": "g", "plugins": {"kit-tagger": {"tag": "global"}}}],
            workers=1,
        ) as gw:
            assert get(gw, "/").status == 401
            ok = get(gw, "/", headers={"apikey": "k1"})
            assert ok.status == 200
            sent = ok.json()["headers"]
            assert sent["x-consumer-username"] == "jack"
            assert sent["x-tag"] == "global"


def test_run_gateway_from_a_standalone_file(tmp_path: Path) -> None:
    with Origin() as origin:
        path = tmp_path / "apisix.yaml"
        path.write_text(
            textwrap.dedent(
                f"""\
                routes:
                  - uri: /*
                    upstream: {{nodes: {{"{origin.addr}": 1}}}}
                    plugins: {{kit-tagger: {{tag: file}}}}
                #END
                """
            )
        )
        with run_gateway(path, [Tagger]) as gw:
            assert get(gw, "/").headers["x-tagged"] == "file"
        with pytest.raises(TypeError):
            start_gateway(str(path), consumers=[])


def test_invalid_plugin_conf_raises_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        with run_gateway(
            [route("/*", "127.0.0.1:1", plugins={"kit-tagger": {"tag": 1}})], [Tagger]
        ):
            pass
    assert "failed to check the configuration of plugin kit-tagger" in str(err.value)


def test_check_conf_fills_defaults_and_reports_errors() -> None:
    conf: dict[str, Any] = {}
    assert check_conf(Tagger, conf) is None
    assert conf == {"tag": "t"}
    assert check_conf(Tagger, {"tag": 5}) is not None
    assert check_conf(Tagger, {}, "metadata") is None  # APISIX: an empty object schema


def test_eventually_retries_then_fails() -> None:
    calls: list[int] = []

    def check() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert eventually(check) == 3
    with pytest.raises(AssertionError, match="boom"):

        def failing() -> bool:
            raise AssertionError("boom")

        eventually(failing, timeout=0.05)
    with pytest.raises(AssertionError, match="not met"):
        eventually(lambda: False, timeout=0.05)


# -- pytest fixtures ---------------------------------------------------------------------


def test_gateway_factory_stops_every_gateway() -> None:
    with Origin() as origin:
        make = GatewayFactory()
        a = make([route("/*", origin, plugins={"kit-tagger": {}})], plugins=[Tagger])
        b = make([route("/*", origin)], workers=1)
        urls = [a.url, b.url]
        assert get(a, "/").headers["x-tagged"] == "t"
        assert "x-tagged" not in get(b, "/").headers
        make.close()
        assert make.gateways == []
        assert all(refused(u) for u in urls)


def test_fixtures_imported_into_a_module(
    pygateway_origin: Origin,  # noqa: F811
    pygateway_gateway: GatewayFactory,  # noqa: F811
) -> None:
    gw = pygateway_gateway(
        [route("/*", pygateway_origin, plugins={"kit-tagger": {}})], plugins=[Tagger]
    )
    assert get(gw, "/").status == 200
    assert pygateway_origin.last["headers"]["x-tag"] == "t"


def test_fixtures_through_pytest_plugins_clean_up(tmp_path: Path) -> None:
    """A user's project: conftest.py enables the plugin; after the run nothing listens."""
    urls = tmp_path / "urls.txt"
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["pygateway.testing"]\n')
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            f"""\
            from pygateway.plugin import Plugin
            from pygateway.testing import get, route

            class Hello(Plugin):
                name = "user-hello"
                priority = 1

                def access(self, conf, ctx):
                    return 200, "hello from the plugin"

            def test_user(pygateway_origin, pygateway_gateway):
                gw = pygateway_gateway(
                    [route("/*", pygateway_origin, plugins={{"user-hello": {{}}}})],
                    plugins=[Hello],
                )
                r = get(gw, "/")
                assert (r.status, r.body) == (200, b"hello from the plugin")
                assert pygateway_origin.requests == []
                with open({str(urls)!r}, "w") as f:
                    f.write(gw.url + "\\n" + pygateway_origin.url)

            def test_fails(pygateway_gateway):
                assert pygateway_gateway.gateways == [], "state leaked between tests"
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
    gw_url, origin_url = urls.read_text().split("\n")
    assert refused(gw_url) and refused(origin_url), "a fixture left a server running"


def test_importable_without_pytest() -> None:
    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "import pygateway.testing as t\n"
        "assert not t.HAVE_PYTEST and not hasattr(t, 'pygateway_gateway')\n"
        "with t.Origin() as o:\n"
        "    assert t.get(o, '/').status == 200\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
