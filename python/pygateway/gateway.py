"""The public face of a gateway node: config in, a running data plane out."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from .config import (
    Config,
    ConfigError,
    ConfigIssue,
    NodeConfig,
    Snapshot,
    build_config,
    compile_config,
    diff,
    full,
    load_standalone,
)
from .config.compile import change_set_json, is_empty
from .pipeline import Pipeline
from .plugin import PHASES, Plugin, PluginError, PluginRegistry, RegistryCatalog
from .runner import PluginRunner, PluginView

log = logging.getLogger("pygateway")

DEFAULT_CONFIG = Path(__file__).parent / "defaults" / "apisix.yaml"
"""The embedded default: one route to the built-in demo origin."""

WATCH_INTERVAL = 0.25
"""Seconds between checks of the standalone file (APISIX checks every second)."""


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Gateway:
    """One gateway node.

    ``routes`` is an APISIX standalone file (``apisix.yaml`` ending with ``#END``, or
    ``apisix.json``), watched for changes while running. ``config`` is the same content
    as a mapping, for embedding and tests. With neither, the node serves the embedded
    default (a demo route to a built-in origin). Keyword overrides are node settings
    (``listen``, ``workers``, ``router``, ``trusted_addresses``, ``drain_timeout``...).
    """

    def __init__(
        self,
        routes: str | os.PathLike[str] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        node: NodeConfig | None = None,
        **overrides: Any,
    ) -> None:
        base = node or NodeConfig()
        if routes is not None:
            overrides["routes"] = os.fspath(routes)
        self.node = base.merged(overrides) if overrides else base
        if self.node.engine != "native":
            msg = f"engine {self.node.engine!r} is not available yet: use 'native'"
            raise ConfigError([ConfigIssue("", None, "engine", msg)])
        self.plugins = PluginRegistry(self.node.plugin_paths, builtins=True, entry_points=True)
        """Every plugin this node can run (built-ins, entry points, ``plugin_paths``)."""
        # Configs may name any known plugin; the node's ``plugins:`` list decides what runs
        # here (APISIX's canary: a plugin enabled on some nodes only).
        self._catalog = RegistryCatalog(self.plugins)
        self._pipeline = Pipeline(
            self.plugins, enabled=self.node.plugins, plugin_timeout=self.node.plugin_timeout
        )
        self._runner: PluginRunner | None = None
        self._inline = dict(config) if config is not None else None
        self._demo = self._inline is None and self.node.routes is None
        self._plane: Any = None
        self._snapshot = Snapshot()
        self._config: Config | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._stamp: tuple[int, int, int] | None = None
        self.addresses: list[str] = []
        """``HOST:PORT`` of each listener while running."""

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Gateway:
        """Load and validate the config, bind the listeners, serve in the background."""
        from . import _core

        _core.set_log_level(os.environ.get("PYGATEWAY_LOG", "info" if self.node.debug else "warn"))
        plane = _core.DataPlane(
            self.node.listen,
            self.node.workers,
            router=self.node.router,
            trusted_addresses=self.node.trusted_addresses,
            demo_origin="127.0.0.1:0" if self._demo else None,
            debug=self.node.debug,
        )
        config = self._load_demo(plane.demo_address) if self._demo else self._load()
        self._plane = plane
        self._runner = PluginRunner(plane, self._pipeline, debug=self.node.debug)
        self._runner.start()
        self._publish(config)
        self.addresses = plane.start()
        self._stop.clear()
        if self.node.routes is not None:
            self._stamp = _file_stamp(self.node.routes)
            self._watcher = threading.Thread(
                target=self._watch, name="pygateway-config-watch", daemon=True
            )
            self._watcher.start()
        return self

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; in-flight requests get ``drain_timeout`` seconds to finish."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._plane is not None:
            drain = self.node.drain_timeout if drain_timeout is None else drain_timeout
            self._plane.stop(drain)
        if self._runner is not None:
            self._runner.stop()
            self._runner = None
        self.addresses = []

    def serve_forever(self) -> None:
        """Serve until SIGINT or SIGTERM (graceful drain); SIGHUP reloads the config file."""
        if self._plane is None or not self._plane.running:
            self.start()
        done = threading.Event()

        def on_stop(signum: int, frame: FrameType | None) -> None:
            log.warning("signal %d: draining (up to %ss)", signum, self.node.drain_timeout)
            done.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            try:
                self.reload_plugins()
                self.reload()
            except (ConfigError, PluginError) as err:
                log.error("reload failed, keeping the previous plugins and config:\n%s", err)

        previous = {
            s: signal.signal(s, h)
            for s, h in (
                (signal.SIGINT, on_stop),
                (signal.SIGTERM, on_stop),
                (signal.SIGHUP, on_hup),
            )
        }
        try:
            while not done.wait(0.2):
                pass
            self.stop()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(0)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the first listener."""
        if not self.addresses:
            raise RuntimeError("the gateway is not running")
        host, _, port = self.addresses[0].rpartition(":")
        return f"http://{host}:{port}"

    @property
    def config(self) -> Config | None:
        """The config being served."""
        return self._config

    # -- config ----------------------------------------------------------------------

    def reload(self, config: Mapping[str, Any] | None = None) -> None:
        """Re-read the config file (or apply ``config``); on error the old config stays.

        Raises :class:`ConfigError` listing every problem when the new config is invalid.
        """
        if config is not None:
            self._inline = dict(config)
        self._publish(self._load())

    def register_plugin(self, cls: type[Plugin]) -> type[Plugin]:
        """Make a plugin class available to this node (usable as a decorator)."""
        self.plugins.register(cls)
        self._pipeline.clear_cache()
        return cls

    def reload_plugins(self) -> None:
        """Re-import plugin modules: ``destroy()`` then ``init()`` (APISIX plugins/reload)."""
        if self._runner is not None:
            self._runner.call(self.plugins.reload)
        else:
            self.plugins.reload()
        self._pipeline.clear_cache()
        if self._config is not None:
            self._publish(self._config, force=True)

    def _load(self) -> Config:
        if self._inline is not None:
            return build_config(self._inline, source="<config>", catalog=self._catalog)
        if self.node.routes is not None:
            return load_standalone(self.node.routes, catalog=self._catalog)
        return build_config({}, source="<empty>", catalog=self._catalog)

    def _load_demo(self, demo_address: str | None) -> Config:
        assert demo_address is not None, "the data plane was created without a demo origin"
        port = demo_address.rpartition(":")[2]
        env = {**os.environ, "PYGATEWAY_DEMO_PORT": port}
        return load_standalone(DEFAULT_CONFIG, catalog=self._catalog, env=env)

    def _phases(self, plugins: dict[str, Any], global_rules: list[dict[str, Any]]) -> list[str]:
        """The phases a route's plugins (and the global rules') implement on this node."""
        enabled = self.node.plugins
        names = set(plugins)
        for rule in global_rules:
            names.update(rule)
        found: set[str] = set()
        for name in names:
            plugin = self.plugins.get(name)
            if plugin is None or (enabled is not None and name not in enabled):
                continue
            found.update(p for p in PHASES if callable(getattr(plugin, p, None)))
        return sorted(found)

    def _publish(self, config: Config, force: bool = False) -> None:
        """Compile and send only what changed to the data plane."""
        with self._lock:
            snapshot = compile_config(config)
            global_rules = [
                dict(item.conf.get("plugins") or {}) for item in config.global_rules.values()
            ]
            for route in snapshot.routes.values():
                route["phases"] = self._phases(route.get("plugins") or {}, global_rules)
            if self._runner is not None:
                self._runner.view = PluginView(
                    routes=dict(snapshot.routes),
                    global_rules=global_rules,
                    consumers=[dict(i.conf) for i in config.consumers.values()],
                    plugin_metadata={k: dict(i.conf) for k, i in config.plugin_metadata.items()},
                )
            first = not self._config or force
            changes = full(snapshot) if first else diff(self._snapshot, snapshot)
            if not is_empty(changes):
                self._plane.apply(change_set_json(changes))
            self._snapshot = snapshot
            self._config = config
        for warning in config.warnings:
            log.warning("config: %s", warning)

    def _watch(self) -> None:
        path = self.node.routes
        assert path is not None
        while not self._stop.wait(WATCH_INTERVAL):
            stamp = _file_stamp(path)
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                self._publish(load_standalone(path, catalog=self._catalog))
                log.warning("config reloaded from %s", path)
            except ConfigError as err:
                log.error("config file %s rejected, keeping the previous config:\n%s", path, err)
            except Exception:
                log.exception("config file %s could not be applied", path)
