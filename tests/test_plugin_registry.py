"""PluginRegistry: registration, discovery (package, plugin_paths, entry points), schema checks,
reload, and RegistryCatalog as the config package's plugin catalogue."""

from __future__ import annotations

import importlib.metadata
import os
import sys
import textwrap
import types
import uuid
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pygateway.config import ConfigError, build_config
from pygateway.config.plugins import check_plugin_metadata, check_plugins
from pygateway.plugin import Plugin, PluginError, PluginRegistry, RegistryCatalog

# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list plugin files append to (``import _pgw_events``)."""
    module = types.ModuleType("_pgw_events")
    log: list[str] = []
    module.log = log  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "_pgw_events", module)
    return log


def write(path: Path, source: str) -> None:
    path.write_text(textwrap.dedent(source))
    # make sure a same-second rewrite is never mistaken for the old file
    st = path.stat()
    os.utime(path, (st.st_atime + 10, st.st_mtime + 10))


PLUGIN_FILE = """
    from __future__ import annotations
    import _pgw_events
    from pygateway.plugin import Plugin

    class Hello(Plugin):
        name = "hello"
        priority = {priority}
        schema = {{
            "type": "object",
            "properties": {{"greeting": {{"type": "string", "default": "hi"}}}},
            "additionalProperties": False,
        }}

        def init(self):
            _pgw_events.log.append("init {tag}")

        def destroy(self):
            _pgw_events.log.append("destroy {tag}")

        def access(self, conf, ctx):
            return 200, "{tag}"
"""


class Basic(Plugin):
    name = "basic"
    priority = 100
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 1},
            "mode": {"type": "string", "default": "fast"},
        },
        "required": ["count"],
        "additionalProperties": False,
    }

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        if conf.get("count") == 13:
            return "unlucky count"
        return None


class Auth(Plugin):
    name = "auth-x"
    priority = 2500
    type = "auth"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"header": {"type": "string"}},
    }
    consumer_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "properties": {"key": {"type": "string"}},
        "required": ["key"],
    }
    metadata_schema: ClassVar[dict[str, Any] | None] = {
        "type": "object",
        "properties": {"realm": {"type": "string", "default": "gw"}},
    }


# -- registration ----------------------------------------------------------------------


def test_register_and_decorator() -> None:
    reg = PluginRegistry()
    assert reg.register(Basic) is Basic

    @reg.register
    class Other(Plugin):
        name = "other"
        priority = 200

    assert "basic" in reg and "other" in reg
    assert isinstance(reg["basic"], Basic)
    assert reg.names() == ["other", "basic"]  # priority descending
    assert reg.get("missing") is None
    assert len(reg) == 2


def test_one_instance_per_class_and_init_called(events: list[str]) -> None:
    class P(Plugin):
        name = "p"
        priority = 1

        def init(self) -> None:
            events.append("init")

    reg = PluginRegistry()
    reg.register(P)
    assert events == ["init"]
    assert reg["p"] is reg["p"]


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"priority": 1}, "missing 'name'"),
        ({"name": "x"}, "missing 'priority'"),
        ({"name": "x", "priority": "high"}, "'priority' must be an integer"),
        ({"name": "x", "priority": 1, "schema": None}, "missing 'schema'"),
        ({"name": "", "priority": 1}, "'name' must be a non-empty string"),
        ({"name": "x", "priority": 1, "run_policy": "sometimes"}, "run_policy"),
    ],
)
def test_invalid_plugin_class_names_the_class(attrs: dict[str, Any], message: str) -> None:
    cls = type("BrokenPlugin", (Plugin,), dict(attrs))
    with pytest.raises(PluginError) as info:
        PluginRegistry().register(cls)
    assert message in str(info.value)
    assert "BrokenPlugin" in str(info.value)


def test_register_not_a_plugin() -> None:
    with pytest.raises(PluginError, match="not a subclass"):
        PluginRegistry().register(int)  # type: ignore[type-var]


# -- plugin_paths ----------------------------------------------------------------------


def test_discovery_from_plugin_paths(tmp_path: Path, events: list[str]) -> None:
    write(tmp_path / "hello.py", PLUGIN_FILE.format(priority=10, tag="v1"))
    write(
        tmp_path / "two.py",
        """
        from pygateway.plugin import Plugin

        class _Private(Plugin):
            name = "private"
            priority = 1

        class Base(Plugin):
            abstract = True

        class A(Base):
            name = "a-plugin"
            priority = 5

        class B(Base):
            name = "b-plugin"
            priority = 7
        """,
    )
    write(tmp_path / "_helper.py", "raise RuntimeError('helpers are not imported')\n")
    write(tmp_path / "notes.txt", "not python")
    reg = PluginRegistry([tmp_path])
    assert reg.names() == ["hello", "b-plugin", "a-plugin"]
    assert events == ["init v1"]


def test_plugin_path_errors(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="not a directory"):
        PluginRegistry([tmp_path / "missing"])
    write(tmp_path / "bad.py", "def broken(:\n")
    with pytest.raises(PluginError, match=r"bad\.py"):
        PluginRegistry([tmp_path])


def test_duplicate_name_in_one_source(tmp_path: Path) -> None:
    write(
        tmp_path / "dup.py",
        """
        from pygateway.plugin import Plugin

        class One(Plugin):
            name = "same"
            priority = 1

        class Two(Plugin):
            name = "same"
            priority = 2
        """,
    )
    with pytest.raises(PluginError, match="defined twice"):
        PluginRegistry([tmp_path])


def test_later_source_overrides(tmp_path: Path, events: list[str]) -> None:
    write(tmp_path / "hello.py", PLUGIN_FILE.format(priority=10, tag="path"))

    class BuiltinHello(Plugin):
        name = "hello"
        priority = 1

        def destroy(self) -> None:
            events.append("destroy builtin")

    reg = PluginRegistry()
    reg.register(BuiltinHello)
    reg.load_paths([tmp_path])
    assert reg["hello"].priority == 10
    assert events == ["destroy builtin", "init path"]


# -- package and entry points ----------------------------------------------------------


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    name = f"pgw_test_pkg_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "site" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_text('"""test plugins"""\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield name, root
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_load_package_and_builtins(
    package: tuple[str, Path], events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, root = package
    write(root / "hello.py", PLUGIN_FILE.format(priority=3, tag="pkg"))
    write(root / "_util.py", "VALUE = 1\n")
    reg = PluginRegistry()
    assert reg.load_package(name) == ["hello"]
    assert events == ["init pkg"]
    monkeypatch.setattr("pygateway.plugin.BUILTIN_PACKAGE", name)
    reg2 = PluginRegistry(builtins=True)
    assert reg2.names() == ["hello"]


def test_builtin_package_loads() -> None:
    """The real built-in package imports (whatever plugins it holds right now)."""
    reg = PluginRegistry()
    reg.load_builtins()
    for plugin in reg:
        assert isinstance(plugin, Plugin)


class FakeEntryPoints(list):  # type: ignore[type-arg]
    def select(self, *, group: str) -> list[importlib.metadata.EntryPoint]:
        return [ep for ep in self if ep.group == group]


def test_entry_points(
    package: tuple[str, Path], events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, root = package
    write(root / "hello.py", PLUGIN_FILE.format(priority=3, tag="ep"))
    write(
        root / "extra.py",
        """
        from pygateway.plugin import Plugin

        class One(Plugin):
            name = "ep-one"
            priority = 1

        class Two(Plugin):
            name = "ep-two"
            priority = 2
        """,
    )
    eps = FakeEntryPoints(
        [
            importlib.metadata.EntryPoint("hello", f"{name}.hello:Hello", "pygateway.plugins"),
            importlib.metadata.EntryPoint("extra", f"{name}.extra", "pygateway.plugins"),
            importlib.metadata.EntryPoint("other", f"{name}.extra:One", "other.group"),
        ]
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda: eps)
    reg = PluginRegistry(entry_points=True)
    assert reg.names() == ["hello", "ep-two", "ep-one"]
    assert events == ["init ep"]

    # Python 3.9 style: a dict of group -> entry points
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda: {"pygateway.plugins": eps[:1]})
    assert PluginRegistry(entry_points=True).names() == ["hello"]


def test_entry_point_errors(package: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    name, root = package
    write(root / "thing.py", "VALUE = 42\n")
    eps = FakeEntryPoints(
        [importlib.metadata.EntryPoint("thing", f"{name}.thing:VALUE", "pygateway.plugins")]
    )
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda: eps)
    with pytest.raises(PluginError, match="neither a Plugin subclass nor a module"):
        PluginRegistry(entry_points=True)
    eps[:] = [importlib.metadata.EntryPoint("gone", f"{name}.missing:X", "pygateway.plugins")]
    with pytest.raises(PluginError, match="entry point gone"):
        PluginRegistry(entry_points=True)


# -- schema checks ---------------------------------------------------------------------


def test_check_fills_defaults_and_accepts_meta() -> None:
    reg = PluginRegistry()
    reg.register(Basic)
    conf: dict[str, Any] = {"count": 2, "_meta": {"priority": 5, "disable": False}}
    assert reg.check("basic", conf) is None
    assert conf["mode"] == "fast"


@pytest.mark.parametrize(
    ("conf", "error"),
    [
        ({}, 'property "count" is required'),
        ({"count": 0}, 'property "count" validation failed: expected 0 to be at least 1'),
        ({"count": 1, "zzz": 1}, "additional properties forbidden, found zzz"),
        ({"count": 13}, "unlucky count"),
    ],
)
def test_check_errors(conf: dict[str, Any], error: str) -> None:
    reg = PluginRegistry()
    reg.register(Basic)
    err = reg.check("basic", conf)
    assert err is not None
    assert error in err


def test_check_unknown_and_schema_types() -> None:
    reg = PluginRegistry()
    reg.register(Auth)
    reg.register(Basic)
    assert reg.check("nope", {}) == "unknown plugin [nope]"
    # consumer conf: consumer_schema
    assert reg.check_consumer("auth-x", {"key": "k"}) is None
    assert "key" in (reg.check_consumer("auth-x", {}) or "")
    # non-auth plugin under a consumer: its route schema
    assert reg.check_consumer("basic", {"count": 1}) is None
    # metadata
    meta: dict[str, Any] = {}
    assert reg.check_metadata("auth-x", meta) is None
    assert meta == {"realm": "gw"}
    assert reg.check_metadata("basic", {"any": 1}) is None  # APISIX: an empty object schema
    assert reg.check_metadata("basic", []) is not None
    with pytest.raises(ValueError):
        reg.check("basic", {"count": 1}, "weird")


def test_check_schema_hook_sees_schema_type() -> None:
    seen: list[str] = []

    class Hook(Plugin):
        name = "hook"
        priority = 1

        def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
            seen.append(schema_type)
            if schema_type == "consumer":
                raise RuntimeError("boom")
            return None

    reg = PluginRegistry()
    reg.register(Hook)
    assert reg.check("hook", {}) is None
    assert "boom" in (reg.check_consumer("hook", {}) or "")
    assert seen == ["schema", "consumer"]


def test_registry_catalog_with_config_package() -> None:
    reg = PluginRegistry()
    reg.register(Basic)
    reg.register(Auth)
    catalog = RegistryCatalog(reg, enabled=["basic", "auth-x"])
    assert check_plugins({"basic": {"count": 1}}, catalog) is None
    assert check_plugins({"basic": {"count": 0}}, catalog) == (
        "basic",
        'failed to check the configuration of plugin basic err: property "count" validation '
        "failed: expected 0 to be at least 1",
    )
    # _meta is checked by the config package, then the plugin schema with _meta injected
    assert check_plugins({"basic": {"count": 1, "_meta": {"priority": 1}}}, catalog) is None
    assert check_plugins({"auth-x": {"key": "abc"}}, catalog, consumer=True) is None
    assert check_plugin_metadata("auth-x", {}, catalog) is None
    assert check_plugin_metadata("basic", {}, catalog) is None
    # canary: registered but not enabled on this node
    only_auth = RegistryCatalog(reg, enabled=["auth-x"])
    assert not only_auth.known("basic")
    assert check_plugins({"basic": {"count": 1}}, only_auth) == ("basic", "unknown plugin [basic]")
    assert RegistryCatalog(reg).known("basic")


def test_registry_catalog_in_standalone_config() -> None:
    reg = PluginRegistry()
    reg.register(Basic)
    catalog = RegistryCatalog(reg)
    good = {
        "routes": [
            {
                "id": "1",
                "uri": "/",
                "plugins": {"basic": {"count": 3}},
                "upstream": {"nodes": {"127.0.0.1:80": 1}},
            }
        ]
    }
    config = build_config(good, catalog=catalog)
    assert config is not None
    bad = {
        "routes": [
            {
                "id": "1",
                "uri": "/",
                "plugins": {"basic": {}},
                "upstream": {"nodes": {"127.0.0.1:80": 1}},
            }
        ]
    }
    with pytest.raises(ConfigError) as info:
        build_config(bad, catalog=catalog)
    assert "failed to check the configuration of plugin basic err" in str(info.value)


# -- reload ----------------------------------------------------------------------------


def test_reload_destroys_reimports_and_inits(tmp_path: Path, events: list[str]) -> None:
    write(tmp_path / "hello.py", PLUGIN_FILE.format(priority=10, tag="v1"))
    reg = PluginRegistry([tmp_path])
    old = reg["hello"]
    generation = reg.generation
    assert old.access({}, None) == (200, "v1")  # type: ignore[attr-defined]

    write(tmp_path / "hello.py", PLUGIN_FILE.format(priority=20, tag="v2"))
    write(
        tmp_path / "added.py",
        """
        from pygateway.plugin import Plugin

        class Added(Plugin):
            name = "added"
            priority = 1
        """,
    )
    assert reg.reload() == ["hello", "added"]
    new = reg["hello"]
    assert new is not old
    assert new.priority == 20
    assert new.access({}, None) == (200, "v2")  # type: ignore[attr-defined]
    assert events == ["init v1", "destroy v1", "init v2"]
    assert reg.generation > generation

    (tmp_path / "added.py").unlink()
    reg.reload()
    assert reg.names() == ["hello"]


def test_reload_failure_keeps_old_plugins(tmp_path: Path, events: list[str]) -> None:
    write(tmp_path / "hello.py", PLUGIN_FILE.format(priority=10, tag="v1"))
    reg = PluginRegistry([tmp_path])
    write(tmp_path / "hello.py", "this is not python\n")
    with pytest.raises(PluginError):
        reg.reload()
    assert reg["hello"].access({}, None) == (200, "v1")  # type: ignore[attr-defined]
    assert events == ["init v1"]


def test_reload_package_modules(package: tuple[str, Path], events: list[str]) -> None:
    name, root = package
    write(root / "hello.py", PLUGIN_FILE.format(priority=3, tag="p1"))
    reg = PluginRegistry()
    reg.load_package(name)
    module = sys.modules[f"{name}.hello"]
    write(root / "hello.py", PLUGIN_FILE.format(priority=4, tag="p2-longer"))
    reg.reload()
    assert sys.modules[f"{name}.hello"] is module  # importlib.reload: same module object
    assert reg["hello"].priority == 4
    assert events == ["init p1", "destroy p1", "init p2-longer"]


def test_reload_keeps_registered_classes_and_close(events: list[str]) -> None:
    class Kept(Plugin):
        name = "kept"
        priority = 1

        def init(self) -> None:
            events.append("init")

        def destroy(self) -> None:
            events.append("destroy")

    reg = PluginRegistry()
    reg.register(Kept)
    reg.reload()
    assert "kept" in reg
    reg.close()
    assert events == ["init", "destroy", "init", "destroy"]


def test_failing_init_on_reload_drops_plugin(events: list[str]) -> None:
    class Flaky(Plugin):
        name = "flaky"
        priority = 1
        calls = 0

        def init(self) -> None:
            type(self).calls += 1
            if type(self).calls > 1:
                raise RuntimeError("second init fails")

    reg = PluginRegistry()
    reg.register(Flaky)
    reg.reload()
    assert "flaky" not in reg
