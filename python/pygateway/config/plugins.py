"""How configuration checking asks about plugins.

The configuration layer knows no plugin itself.  Whoever owns the plugins (built-in or
loaded from ``plugin_paths``) passes a :class:`PluginCatalog`; with the default
:data:`NO_PLUGINS` every configured plugin is ``unknown plugin [name]``, as in an APISIX
whose ``plugins:`` list does not contain it.

Optional extras a catalogue may provide (looked up with ``getattr``):
``check_consumer(name, conf) -> str | None`` (consumer-side schema of auth plugins) and
``check_metadata(name, conf) -> str | None`` (``plugin_metadata``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from . import expr
from .schema import PLUGIN_INJECTED_META
from .validator import SchemaError, validate

__all__ = [
    "NO_PLUGINS",
    "EmptyCatalog",
    "PluginCatalog",
    "RestrictedCatalog",
    "check_plugin_metadata",
    "check_plugins",
]


@runtime_checkable
class PluginCatalog(Protocol):
    def known(self, name: str) -> bool:
        """Is the plugin available (loaded and enabled)?"""
        ...

    def check(self, name: str, conf: dict[str, Any]) -> str | None:
        """Check a plugin conf (``_meta`` already checked); return the error text or None."""
        ...


class EmptyCatalog:
    """A catalogue with no plugins."""

    def known(self, name: str) -> bool:
        return False

    def check(self, name: str, conf: dict[str, Any]) -> str | None:
        return f"unknown plugin [{name}]"


NO_PLUGINS: PluginCatalog = EmptyCatalog()


class RestrictedCatalog:
    """Only the plugins of ``enabled`` (e.g. the ``plugins:`` list of apisix.yaml)."""

    def __init__(self, inner: PluginCatalog, enabled: Iterable[str]) -> None:
        self.inner = inner
        self.enabled = frozenset(enabled)

    def known(self, name: str) -> bool:
        return name in self.enabled and self.inner.known(name)

    def check(self, name: str, conf: dict[str, Any]) -> str | None:
        return self.inner.check(name, conf)

    def check_consumer(self, name: str, conf: dict[str, Any]) -> str | None:
        fn = getattr(self.inner, "check_consumer", None)
        if fn is None:
            return self.inner.check(name, conf)
        result: str | None = fn(name, conf)
        return result

    def check_metadata(self, name: str, conf: dict[str, Any]) -> str | None:
        fn = getattr(self.inner, "check_metadata", None)
        if fn is None:
            return None
        result: str | None = fn(name, conf)
        return result


_META_ONLY = {"type": "object", "properties": {"_meta": PLUGIN_INJECTED_META}}
"""A plugin conf's ``_meta``, alone (one schema object: validate compiles each once)."""


def _check_meta(conf: Mapping[str, Any]) -> str | None:
    meta = conf.get("_meta")
    if meta is None:
        return None
    try:
        validate(_META_ONLY, dict(conf))
    except SchemaError as err:
        return err.message
    assert isinstance(meta, dict)
    if "pre_function" in meta:
        return 'pygateway does not run Lua: field "_meta.pre_function" is not supported'
    return None


def check_plugins(
    plugins: Mapping[str, Any], catalog: PluginCatalog, *, consumer: bool = False
) -> tuple[str, str] | None:
    """Check a ``plugins`` object the way APISIX's ``plugin.check_schema`` does.

    Returns ``(plugin name, APISIX-worded error)`` for the first bad plugin, else None.
    """
    for name, conf in plugins.items():
        if not isinstance(conf, dict):
            encoded = json.dumps(conf, separators=(",", ":"))
            return name, f"invalid plugin conf {encoded} for plugin [{name}]"
        if not catalog.known(name):
            return name, f"unknown plugin [{name}]"
        err = _check_meta(conf)
        if err is None:
            checker = getattr(catalog, "check_consumer", None) if consumer else None
            err = checker(name, conf) if checker is not None else catalog.check(name, conf)
        if err is not None:
            meta = conf.get("_meta")
            disabled = isinstance(meta, dict) and meta.get("disable") is True
            if not disabled:
                return name, f"failed to check the configuration of plugin {name} err: {err}"
        meta = conf.get("_meta")
        if isinstance(meta, dict) and "filter" in meta:
            verr = expr.vars_error(meta["filter"])
            if verr is not None:
                return name, verr
    return None


def check_plugin_metadata(name: str, conf: dict[str, Any], catalog: PluginCatalog) -> str | None:
    """Check one ``plugin_metadata`` entry (``conf`` without its ``id``)."""
    if not catalog.known(name):
        return "invalid plugin name"
    fn = getattr(catalog, "check_metadata", None)
    if fn is None:
        return None
    err: str | None = fn(name, conf)
    if err is not None:
        return "invalid configuration: " + err
    return None
