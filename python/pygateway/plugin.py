"""Python plugins: the :class:`Plugin` base class and the :class:`PluginRegistry`.

A plugin is a subclass of :class:`Plugin` with an APISIX ``name``, a ``priority`` and a
JSON ``schema``; it implements any subset of the phase methods (``rewrite``, ``access``,
``before_proxy``, ``header_filter``, ``body_filter``, ``log``), each either ``def`` or
``async def``.  See ``docs/CONTRACT-plugins.md``.

The registry holds one instance per plugin class.  It discovers plugins from

* the built-in package :mod:`pygateway.plugins` (every module defining Plugin subclasses),
* ``plugin_paths`` directories (every ``*.py`` file is imported as a module),
* the entry-point group ``pygateway.plugins`` (an entry point names a Plugin subclass or a
  module holding some),
* explicit :meth:`PluginRegistry.register` calls (also usable as a class decorator).

:meth:`PluginRegistry.reload` re-imports the modules, calls ``destroy()`` on the old
instances and ``init()`` on the new ones (APISIX's ``PUT /apisix/admin/plugins/reload``).
:class:`RegistryCatalog` lets the configuration loader validate plugin confs against the
registered plugins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import pkgutil
import sys
import types
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from .config.schema import PLUGIN_INJECTED_META
from .config.validator import SchemaError, validate

__all__ = [
    "BUILTIN_PACKAGE",
    "ENTRY_POINT_GROUP",
    "PHASES",
    "Plugin",
    "PluginError",
    "PluginRegistry",
    "RegistryCatalog",
    "Response",
    "ResponseHeaders",
]

log = logging.getLogger("pygateway.plugin")

BUILTIN_PACKAGE = "pygateway.plugins"
ENTRY_POINT_GROUP = "pygateway.plugins"

PHASES = ("rewrite", "access", "before_proxy", "header_filter", "body_filter", "log")
"""Phase methods a plugin may define, in request order."""

SCHEMA_TYPES = ("schema", "consumer", "metadata")

ResponseHeaders = Union[Mapping[str, str], Sequence[tuple[str, str]]]
Response = Union[tuple[int, Any], tuple[int, Any, ResponseHeaders]]
"""What ``rewrite``/``access``/``before_proxy`` return to end the request:
``(status, body)`` or ``(status, body, headers)``.  A dict/list body is sent as JSON."""


class PluginError(Exception):
    """A plugin class is invalid or a plugin module failed to load."""


class Plugin:
    """Base class of Python plugins.

    Class attributes: ``name`` (APISIX name), ``priority`` (higher runs first in every
    phase), ``version``, ``schema`` (route-level conf), ``consumer_schema`` (conf under a
    consumer, auth plugins), ``metadata_schema`` (``plugin_metadata/<name>``), ``type``
    (``"auth"`` for authentication plugins), ``run_policy`` (``"prefer_route"``).

    Phase methods are looked up by name and are optional (sync or async)::

        def rewrite(self, conf, ctx) -> Response | None
        def access(self, conf, ctx) -> Response | None
        def before_proxy(self, conf, ctx) -> Response | None
        def header_filter(self, conf, ctx) -> None
        def body_filter(self, conf, ctx, chunk: bytes, eof: bool) -> bytes | None
        def log(self, conf, ctx) -> None

    A class with ``abstract = True`` in its own body (or a name starting with ``_``) is a
    base for other plugins and is not registered by module discovery.
    """

    name: ClassVar[str]
    priority: ClassVar[int]
    version: ClassVar[float] = 0.1
    schema: ClassVar[dict[str, Any]] = {"type": "object"}
    consumer_schema: ClassVar[dict[str, Any] | None] = None
    metadata_schema: ClassVar[dict[str, Any] | None] = None
    type: ClassVar[str | None] = None
    run_policy: ClassVar[str | None] = None
    native: ClassVar[bool] = False
    """Implemented by the native data plane (limit-*): the Python phase methods then serve
    only the python engine, the native engine runs its own implementation."""

    def check_schema(self, conf: dict[str, Any], schema_type: str) -> str | None:
        """Extra checks after JSON-Schema validation (defaults filled); return error text."""
        return None

    def init(self) -> None:
        """Called after the plugin is loaded or reloaded."""

    def destroy(self) -> None:
        """Called before the plugin is unloaded or reloaded."""


P = TypeVar("P", bound=type[Plugin])


def _class_label(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def validate_plugin_class(cls: object) -> None:
    """Raise :class:`PluginError` (naming the class) unless ``cls`` is a usable plugin."""
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginError(f"{cls!r} is not a subclass of pygateway.plugin.Plugin")
    label = _class_label(cls)
    name = getattr(cls, "name", None)
    if name is None:
        raise PluginError(f"plugin class {label}: missing 'name'")
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin class {label}: 'name' must be a non-empty string")
    priority = getattr(cls, "priority", None)
    if priority is None:
        raise PluginError(f"plugin class {label} ({name}): missing 'priority'")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise PluginError(f"plugin class {label} ({name}): 'priority' must be an integer")
    if not isinstance(cls.schema, dict):
        raise PluginError(f"plugin class {label} ({name}): missing 'schema' (a dict)")
    version = cls.version
    if not isinstance(version, (int, float)) or isinstance(version, bool):
        raise PluginError(f"plugin class {label} ({name}): 'version' must be a number")
    for attr in ("consumer_schema", "metadata_schema"):
        value = getattr(cls, attr)
        if value is not None and not isinstance(value, dict):
            raise PluginError(f"plugin class {label} ({name}): '{attr}' must be a dict or None")
    if cls.type is not None and not isinstance(cls.type, str):
        raise PluginError(f"plugin class {label} ({name}): 'type' must be a string or None")
    if cls.run_policy not in (None, "prefer_route"):
        raise PluginError(
            f"plugin class {label} ({name}): 'run_policy' must be None or 'prefer_route'"
        )
    for phase in PHASES:
        fn = getattr(cls, phase, None)
        if fn is not None and not callable(fn):
            raise PluginError(f"plugin class {label} ({name}): '{phase}' is not callable")


_NO_METADATA_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


INJECTED_MARK = "this is a mark for our injected plugin schema"
"""APISIX's ``$comment`` on a plugin schema it injected ``_meta`` into."""


def _inject_meta(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` whose properties accept ``_meta`` (APISIX plugin_injected_schema),
    marked as APISIX marks it."""
    injected = dict(schema)
    props = dict(injected.get("properties") or {})
    props["_meta"] = PLUGIN_INJECTED_META
    injected["properties"] = props
    injected["$comment"] = INJECTED_MARK
    return injected


def _is_discoverable(obj: object, module: types.ModuleType) -> bool:
    return (
        isinstance(obj, type)
        and issubclass(obj, Plugin)
        and obj is not Plugin
        and obj.__module__ == module.__name__
        and not obj.__name__.startswith("_")
        and not obj.__dict__.get("abstract", False)
    )


def plugin_classes(module: types.ModuleType) -> list[type[Plugin]]:
    """The Plugin subclasses defined in ``module`` (not imported into it), in source order."""
    found = [obj for obj in vars(module).values() if _is_discoverable(obj, module)]
    return found


@dataclass(frozen=True)
class _Source:
    kind: str  # "package" | "path" | "entry_points" | "class"
    value: Any


def _path_module_name(directory: Path, stem: str) -> str:
    digest = zlib.crc32(str(directory).encode()) & 0xFFFFFFFF
    return f"pygateway_plugin_paths._{digest:08x}.{stem}"


def _exec_file(name: str, path: Path) -> types.ModuleType:
    """Import ``path`` as module ``name`` from source (never a stale ``.pyc``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise PluginError(f"cannot import plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    source = path.read_bytes()
    code = compile(source, str(path), "exec")
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        raise
    return module


class PluginRegistry:
    """Plugin classes by name, one instance each.

    ``plugin_paths``, ``builtins`` and ``entry_points`` are loaded at construction (in the
    order built-ins, entry points, plugin_paths; a later source overrides an earlier plugin
    of the same name, as APISIX's ``extra_lua_path`` overrides built-ins).
    """

    def __init__(
        self,
        plugin_paths: Iterable[str | os.PathLike[str]] = (),
        *,
        builtins: bool = False,
        entry_points: bool = False,
    ) -> None:
        self._classes: dict[str, type[Plugin]] = {}
        self._instances: dict[str, Plugin] = {}
        self._schemas: dict[tuple[str, str], dict[str, Any]] = {}
        self._sources: list[_Source] = []
        self.generation = 0
        """Bumped whenever the set of plugins changes (register, load, reload)."""
        if builtins:
            self.load_builtins()
        if entry_points:
            self.load_entry_points()
        if plugin_paths:
            self.load_paths(plugin_paths)

    # -- lookup -------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._instances

    def __len__(self) -> int:
        return len(self._instances)

    def __iter__(self) -> Iterator[Plugin]:
        """Instances, priority descending (then name)."""
        return iter(self.plugins())

    def get(self, name: str) -> Plugin | None:
        return self._instances.get(name)

    def __getitem__(self, name: str) -> Plugin:
        return self._instances[name]

    def names(self) -> list[str]:
        """Plugin names, priority descending (then name)."""
        return [p.name for p in self.plugins()]

    def plugins(self) -> list[Plugin]:
        return sorted(self._instances.values(), key=lambda p: (-p.priority, p.name))

    # -- registration -------------------------------------------------------------------

    def register(self, cls: P) -> P:
        """Register a Plugin subclass (instantiate, ``init()``); returns ``cls``.

        Usable as a decorator: ``@registry.register``.
        """
        validate_plugin_class(cls)
        self._install({cls.name: cls})
        self._sources.append(_Source("class", cls))
        return cls

    def _install(self, classes: Mapping[str, type[Plugin]]) -> None:
        for name, cls in classes.items():
            old = self._instances.get(name)
            if old is not None:
                if type(old) is not cls:
                    log.warning(
                        "plugin %s: %s overrides %s",
                        name,
                        _class_label(cls),
                        _class_label(type(old)),
                    )
                self._destroy(old)
            self._instances.pop(name, None)
            self._classes.pop(name, None)
            self._forget_schemas(name)
            instance = cls()
            self._init(instance)
            self._classes[name] = cls
            self._instances[name] = instance
        self.generation += 1

    def _forget_schemas(self, name: str) -> None:
        for key in [k for k in self._schemas if k[0] == name]:
            del self._schemas[key]

    @staticmethod
    def _init(instance: Plugin) -> None:
        instance.init()

    @staticmethod
    def _destroy(instance: Plugin) -> None:
        try:
            instance.destroy()
        except Exception:
            log.exception("plugin %s: destroy() failed", instance.name)

    def load_package(self, package: str) -> list[str]:
        """Import every module of ``package`` and register its plugins; return the names."""
        classes = self._collect(_Source("package", package), reload=False)
        self._sources.append(_Source("package", package))
        self._install(classes)
        return list(classes)

    def load_builtins(self) -> list[str]:
        """Load the built-in plugins (the package :data:`BUILTIN_PACKAGE`)."""
        return self.load_package(BUILTIN_PACKAGE)

    def load_paths(self, paths: Iterable[str | os.PathLike[str]]) -> list[str]:
        """Import every ``*.py`` file of each directory and register its plugins."""
        names: list[str] = []
        for path in paths:
            directory = Path(path).resolve()
            if not directory.is_dir():
                raise PluginError(f"plugin path {directory} is not a directory")
            source = _Source("path", directory)
            classes = self._collect(source, reload=False)
            self._sources.append(source)
            self._install(classes)
            names.extend(classes)
        return names

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register the plugins named by the entry points of ``group``."""
        source = _Source("entry_points", group)
        classes = self._collect(source, reload=False)
        self._sources.append(source)
        self._install(classes)
        return list(classes)

    # -- discovery ----------------------------------------------------------------------

    def _collect(self, source: _Source, *, reload: bool) -> dict[str, type[Plugin]]:
        modules: list[types.ModuleType] = []
        extra: list[type[Plugin]] = []
        if source.kind == "package":
            modules = self._package_modules(source.value, reload=reload)
        elif source.kind == "path":
            modules = self._path_modules(source.value)
        elif source.kind == "entry_points":
            modules, extra = self._entry_point_objects(source.value, reload=reload)
        elif source.kind == "class":
            extra = [source.value]
        classes: dict[str, type[Plugin]] = {}
        for module in modules:
            for cls in plugin_classes(module):
                extra.append(cls)
        for cls in extra:
            validate_plugin_class(cls)
            prev = classes.get(cls.name)
            if prev is not None and prev is not cls:
                raise PluginError(
                    f"plugin {cls.name} is defined twice: {_class_label(prev)} and "
                    f"{_class_label(cls)}"
                )
            classes[cls.name] = cls
        return classes

    @staticmethod
    def _import(name: str, *, reload: bool) -> types.ModuleType:
        try:
            module = sys.modules.get(name)
            if module is not None and reload:
                return importlib.reload(module)
            return importlib.import_module(name)
        except PluginError:
            raise
        except Exception as err:
            raise PluginError(f"failed to import plugin module {name}: {err!r}") from err

    def _package_modules(self, package: str, *, reload: bool) -> list[types.ModuleType]:
        pkg = self._import(package, reload=False)
        paths = getattr(pkg, "__path__", None)
        if paths is None:
            raise PluginError(f"{package} is not a package")
        modules = []
        for info in sorted(pkgutil.iter_modules(paths), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            modules.append(self._import(f"{package}.{info.name}", reload=reload))
        return modules

    @staticmethod
    def _path_modules(directory: Path) -> list[types.ModuleType]:
        if not directory.is_dir():
            raise PluginError(f"plugin path {directory} is not a directory")
        modules = []
        for file in sorted(directory.glob("*.py")):
            if file.name.startswith("_"):
                continue
            name = _path_module_name(directory, file.stem)
            try:
                modules.append(_exec_file(name, file))
            except PluginError:
                raise
            except Exception as err:
                raise PluginError(f"failed to import plugin file {file}: {err!r}") from err
        return modules

    def _entry_point_objects(
        self, group: str, *, reload: bool
    ) -> tuple[list[types.ModuleType], list[type[Plugin]]]:
        eps: Any = importlib.metadata.entry_points()
        if hasattr(eps, "select"):
            selected = list(eps.select(group=group))
        else:  # Python 3.9: a dict of group -> entry points
            selected = list(eps.get(group, ()))
        modules: list[types.ModuleType] = []
        classes: list[type[Plugin]] = []
        for ep in selected:
            try:
                if reload:
                    self._import(ep.value.split(":", 1)[0].strip(), reload=True)
                obj = ep.load()
            except PluginError:
                raise
            except Exception as err:
                raise PluginError(f"failed to load plugin entry point {ep.name}: {err!r}") from err
            if isinstance(obj, types.ModuleType):
                modules.append(obj)
            elif isinstance(obj, type) and issubclass(obj, Plugin):
                classes.append(obj)
            else:
                raise PluginError(
                    f"plugin entry point {ep.name} ({ep.value}) is neither a Plugin subclass "
                    "nor a module"
                )
        return modules, classes

    # -- reload -------------------------------------------------------------------------

    def reload(self) -> list[str]:
        """Re-import every plugin module, ``destroy()`` the old instances, ``init()`` new ones.

        The new plugin set is collected first; if a module fails to import, a
        :class:`PluginError` is raised and the old plugins stay in place.  Returns the names.
        """
        importlib.invalidate_caches()
        classes: dict[str, type[Plugin]] = {}
        for source in self._sources:
            classes.update(self._collect(source, reload=True))
        for instance in self._instances.values():
            self._destroy(instance)
        self._instances = {}
        self._classes = {}
        self._schemas = {}
        for name, cls in classes.items():
            instance = cls()
            try:
                self._init(instance)
            except Exception:
                log.exception("plugin %s: init() failed, plugin not loaded", name)
                continue
            self._classes[name] = cls
            self._instances[name] = instance
        self.generation += 1
        return self.names()

    def close(self) -> None:
        """``destroy()`` every plugin (process exit)."""
        for instance in self._instances.values():
            self._destroy(instance)

    # -- schema checks ------------------------------------------------------------------

    def _schema(self, plugin: Plugin, schema_type: str) -> dict[str, Any]:
        key = (plugin.name, schema_type)
        cached = self._schemas.get(key)
        if cached is not None:
            return cached
        if schema_type == "metadata":
            # APISIX injects an empty object schema for a plugin that has none.
            schema = dict(plugin.metadata_schema or _NO_METADATA_SCHEMA)
        elif schema_type == "consumer" and plugin.consumer_schema is not None:
            schema = _inject_meta(plugin.consumer_schema)
        else:
            schema = _inject_meta(plugin.schema)
        self._schemas[key] = schema
        return schema

    def route_schema(self, name: str) -> dict[str, Any] | None:
        """Plugin ``name``'s schema as APISIX shows it (``_meta`` injected and marked)."""
        plugin = self._instances.get(name)
        return self._schema(plugin, "schema") if plugin is not None else None

    def encrypt_fields(self, name: str, schema_type: str = "schema") -> tuple[str, ...]:
        """The ``encrypt_fields`` of plugin ``name``'s schema of that type (APISIX: the
        consumer schema falls back to ``schema``); empty for an unknown plugin."""
        plugin = self._instances.get(name)
        schema = self._schema(plugin, schema_type) if plugin is not None else None
        fields = (schema or {}).get("encrypt_fields") or ()
        return tuple(f for f in fields if isinstance(f, str))

    def check(self, name: str, conf: dict[str, Any], schema_type: str = "schema") -> str | None:
        """Validate ``conf`` (defaults filled in place); return the error text or None.

        ``schema_type`` is ``"schema"`` (route/service/global rule...), ``"consumer"``
        (``consumer_schema`` if the plugin has one, else ``schema``) or ``"metadata"``.
        """
        if schema_type not in SCHEMA_TYPES:
            raise ValueError(f"unknown schema type {schema_type!r}")
        plugin = self._instances.get(name)
        if plugin is None:
            return f"unknown plugin [{name}]"
        schema = self._schema(plugin, schema_type)
        if not isinstance(conf, dict):
            return f"wrong type: expected object, got {type(conf).__name__}"
        try:
            validate(schema, conf)
        except SchemaError as err:
            return err.message
        try:
            return plugin.check_schema(conf, schema_type)
        except Exception as err:
            log.exception("plugin %s: check_schema() raised", name)
            return f"check_schema raised {err!r}"

    def check_consumer(self, name: str, conf: dict[str, Any]) -> str | None:
        return self.check(name, conf, "consumer")

    def check_metadata(self, name: str, conf: dict[str, Any]) -> str | None:
        return self.check(name, conf, "metadata")


class RegistryCatalog:
    """The config package's ``PluginCatalog`` backed by a :class:`PluginRegistry`.

    ``enabled`` is the node's ``plugins:`` list (None: every registered plugin).
    """

    def __init__(self, registry: PluginRegistry, enabled: Iterable[str] | None = None) -> None:
        self.registry = registry
        self.enabled: frozenset[str] | None = None if enabled is None else frozenset(enabled)

    def known(self, name: str) -> bool:
        return name in self.registry and (self.enabled is None or name in self.enabled)

    def check(self, name: str, conf: dict[str, Any]) -> str | None:
        return self.registry.check(name, conf, "schema")

    def check_consumer(self, name: str, conf: dict[str, Any]) -> str | None:
        return self.registry.check(name, conf, "consumer")

    def check_metadata(self, name: str, conf: dict[str, Any]) -> str | None:
        return self.registry.check(name, conf, "metadata")

    def plugin_type(self, name: str) -> str | None:
        """The plugin's ``type`` (``"auth"`` for authentication plugins), None if unknown."""
        plugin = self.registry.get(name)
        return None if plugin is None else plugin.type


def phase_method(plugin: Plugin, phase: str) -> Callable[..., Any] | None:
    """The bound phase method of ``plugin`` or None; see :data:`PHASES`."""
    fn = getattr(plugin, phase, None)
    return fn if callable(fn) else None


def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)
