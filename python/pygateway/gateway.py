"""The public face of a gateway node: config in, a running data plane out."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .config import (
    Config,
    ConfigError,
    ConfigIssue,
    NodeConfig,
    Snapshot,
    compile_config,
    diff,
    full,
    load_standalone,
)
from .config.compile import (
    ChangeSet,
    CompileCache,
    change_set_json,
    compile_route_into,
    compile_upstream_into,
    is_empty,
)
from .config.node import AdminSettings, admin_settings
from .pipeline import NATIVE_LIMITER_PRIORITY, Pipeline
from .plugin import PHASES, Plugin, PluginError, PluginRegistry, RegistryCatalog
from .plugins._limit import limiter_specs
from .runner import PluginRunner, PluginView
from .store.base import Change, Store
from .store.build import ConfigBuilder, parse_key
from .store.yaml import WATCH_INTERVAL, StandaloneStore

if TYPE_CHECKING:
    from .admin import AdminServer

log = logging.getLogger("pygateway")

DEFAULT_CONFIG = Path(__file__).parent / "defaults" / "apisix.yaml"
"""The embedded default: one route to the built-in demo origin."""

DEFAULT_STORE = "pygateway-store.jsonl"
"""The embedded store file of a node with the Admin API and no other source (in the cwd)."""

COALESCE = 0.01
"""Seconds a store change that needs a full rebuild waits for the rest of its burst (route
and upstream writes are published at once, on their own)."""

__all__ = ["COALESCE", "DEFAULT_CONFIG", "DEFAULT_STORE", "WATCH_INTERVAL", "Gateway"]


class Gateway:
    """One gateway node.

    ``routes`` is an APISIX standalone file (``apisix.yaml`` ending with ``#END``, or
    ``apisix.json``), watched for changes while running. ``config`` is the same content
    as a mapping, for embedding and tests. ``store`` is any :class:`~pygateway.store.Store`.
    Otherwise the node settings decide: ``etcd`` (APISIX's etcd layout), or with the
    Admin API (``admin``) the embedded store file; with none of these, the node serves the
    embedded default (a demo route to a built-in origin). Keyword overrides are node
    settings (``listen``, ``workers``, ``router``, ``trusted_addresses``, ``admin``...).
    """

    def __init__(
        self,
        routes: str | os.PathLike[str] | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        node: NodeConfig | None = None,
        store: Store | None = None,
        **overrides: Any,
    ) -> None:
        base = node or NodeConfig()
        if routes is not None:
            overrides["routes"] = os.fspath(routes)
        self.node = base.merged(overrides) if overrides else base
        if self.node.engine not in ("native", "python"):
            msg = f"engine {self.node.engine!r} is not available: use 'native' or 'python'"
            raise ConfigError([ConfigIssue("", None, "engine", msg)])
        self.plugins = PluginRegistry(self.node.plugin_paths, builtins=True, entry_points=True)
        """Every plugin this node can run (built-ins, entry points, ``plugin_paths``)."""
        # Configs may name any known plugin; the node's ``plugins:`` list decides what runs
        # here (APISIX's canary: a plugin enabled on some nodes only).
        self._catalog = RegistryCatalog(self.plugins)
        self._native = self.node.engine == "native"
        self._pipeline = Pipeline(
            self.plugins,
            enabled=self.node.plugins,
            plugin_timeout=self.node.plugin_timeout,
            skip_native=self._native,
        )
        self._sent_metadata: dict[str, Any] | None = None
        self._runner: PluginRunner | None = None
        self._admin_settings: AdminSettings | None = admin_settings(self.node)
        self.admin: AdminServer | None = None
        """The Admin API listener while running (when the node has one)."""
        self.admin_address: str | None = None
        """``HOST:PORT`` of the Admin API while running."""
        self.store: Store | None = store if store is not None else self._make_store(config)
        """Where the config comes from (None: the embedded demo, made at start)."""
        self._demo = self.store is None
        self._builder = ConfigBuilder(self._catalog)
        self._compiled = CompileCache()
        self._plane: Any = None
        self._snapshot = Snapshot()
        self._config: Config | None = None
        self._view: PluginView | None = None
        self._lock = threading.RLock()  # held from a store build to its publication
        self._stop = threading.Event()
        self._dirty = threading.Condition()
        self._pending = False
        self._changed: set[str] | None = set()
        """Store keys changed since the last publication; None: rebuild everything."""
        self._writer = threading.local()  # .active: this thread publishes its own writes
        self._publisher: threading.Thread | None = None
        self.addresses: list[str] = []
        """``HOST:PORT`` of each listener while running."""

    def _make_store(self, config: Mapping[str, Any] | None) -> Store | None:
        """The store the node settings ask for (None: the embedded demo config)."""
        if config is not None:
            return StandaloneStore(data=config, catalog=self._catalog)
        if self.node.routes is not None:
            return StandaloneStore(self.node.routes, catalog=self._catalog)
        etcd = self.node.etcd
        if etcd.get("endpoints"):
            from .store.encryption import APISIX_DEFAULT_KEYRING, FieldEncryption
            from .store.etcd import EtcdStore

            endpoints = etcd["endpoints"]
            enc = self.node.data_encryption
            encryption = (
                FieldEncryption(
                    enc.get("keyring", APISIX_DEFAULT_KEYRING), self.plugins.encrypt_fields
                )
                if enc.get("enable_encrypt_fields", True)
                else None
            )
            try:
                return EtcdStore(
                    [endpoints] if isinstance(endpoints, str) else list(endpoints),
                    etcd.get("prefix", "/apisix"),
                    timeout=float(etcd.get("timeout", 5.0)),
                    snapshot=etcd.get("snapshot"),
                    encryption=encryption,
                )
            except ValueError as err:
                raise ConfigError([ConfigIssue("node", None, "etcd", str(err))]) from None
        if self._admin_settings is not None:
            from .store.embedded import EmbeddedStore

            return EmbeddedStore(self._admin_settings.store or DEFAULT_STORE)
        return None

    @property
    def source(self) -> str:
        """Where the config comes from, in words (for logs and the CLI)."""
        store = self.store
        if self._demo or store is None:
            return "the embedded default config (demo route to a built-in origin)"
        if isinstance(store, StandaloneStore):
            return store.source
        path = getattr(store, "path", None)
        if path is not None:
            return f"embedded store {path}"
        endpoints = getattr(store, "endpoints", None) or self.node.etcd.get("endpoints")
        return f"etcd {endpoints} (prefix {store.prefix})"

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Gateway:
        """Load and validate the config, bind the listeners, serve in the background."""
        plane: Any
        settings: dict[str, Any] = {
            "router": self.node.router,
            "trusted_addresses": self.node.trusted_addresses,
            "demo_origin": "127.0.0.1:0" if self._demo else None,
            "debug": self.node.debug,
        }
        if self.node.engine == "python":
            from .engine import PythonDataPlane

            plane = PythonDataPlane(
                self.node.listen, self.node.workers, pipeline=self._pipeline, **settings
            )
        else:
            from . import _core

            level = os.environ.get("PYGATEWAY_LOG", "info" if self.node.debug else "warn")
            _core.set_log_level(level)
            plane = _core.DataPlane(self.node.listen, self.node.workers, **settings)
        if self._demo:
            address = plane.demo_address
            self.store = StandaloneStore(
                DEFAULT_CONFIG, loader=lambda: self._load_demo(address), watch=False
            )
        self._plane = plane
        if self.node.engine == "native":  # the python engine runs plugins on its own loop
            self._runner = PluginRunner(plane, self._pipeline, debug=self.node.debug)
            self._runner.start()
        self._stop.clear()
        try:
            self._start_source()
            self.addresses = plane.start()
            self._start_admin()
        except BaseException:
            if not self.addresses:
                self._plane = None  # never started: nothing to drain
            self.stop(0)
            raise
        return self

    def _start_source(self) -> None:
        """Load the store (raises ConfigError / StoreUnavailable), publish, follow changes."""
        store = self.store
        assert store is not None
        if isinstance(store, StandaloneStore):
            store.start(self._on_standalone)
            return
        store.start(self._on_change)
        with self._dirty:  # the build below reads everything the store announced so far
            self._pending, self._changed = False, set()
        self._publish(self._build())
        self._publisher = threading.Thread(
            target=self._follow, name="pygateway-config-publish", daemon=True
        )
        self._publisher.start()

    def _start_admin(self) -> None:
        settings = self._admin_settings
        if settings is None:
            return
        from .admin import AdminApi, AdminServer

        assert self.store is not None
        api = AdminApi(
            self.store,
            self._catalog,
            self.plugins,
            enabled=self.node.plugins,
            reload_plugins=self.reload_plugins,
            vouch=self._builder.vouch,
            write_scope=self._publishing_here,
        )
        server = AdminServer(api, settings)
        try:
            self.admin_address = server.start()
        except OSError as err:
            msg = f"cannot listen on {settings.listen}: {err.strerror or err}"
            raise ConfigError([ConfigIssue("node", None, "admin.listen", msg)]) from None
        self.admin = server

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; in-flight requests get ``drain_timeout`` seconds to finish."""
        self._stop.set()
        if self.admin is not None:
            self.admin.stop()
            self.admin = None
            self.admin_address = None
        if self.store is not None:
            self.store.close()
        with self._dirty:
            self._dirty.notify_all()
        if self._publisher is not None:
            self._publisher.join()
            self._publisher = None
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
        With a writable store (embedded, etcd) this rebuilds from the store's content;
        ``config`` is then refused (write through the Admin API).
        """
        store = self.store
        if isinstance(store, StandaloneStore):
            store.reload(config)
            return
        if config is not None:
            raise ValueError("this node's config lives in a store: write it through the Admin API")
        if store is not None:
            self._rebuild()

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
        self._builder.clear()  # plugin schemas may have changed: re-check store items
        if self._config is not None:
            if self.store is not None and not isinstance(self.store, StandaloneStore):
                self._rebuild(force=True)
            else:
                self._publish(self._config, force=True)

    # -- following a store -----------------------------------------------------------

    def _on_standalone(self, changes: Sequence[Change], resync: bool) -> None:
        """A standalone source was (re)validated as a whole: publish it as it is."""
        assert isinstance(self.store, StandaloneStore)
        self._publish(self.store.config)

    def _on_change(self, changes: Sequence[Change], resync: bool) -> None:
        """A store changed: wake the publisher (which publishes once per burst)."""
        with self._dirty:
            if resync or self._changed is None:
                self._changed = None
            else:
                self._changed.update(c.key for c in changes)
            self._pending = True
            if not getattr(self._writer, "active", False):
                self._dirty.notify()

    def _build(self) -> Config:
        assert self.store is not None
        return self._builder.build(self.store.items(""), source=self.source)

    def _rebuild(self, force: bool = False) -> None:
        """Build from the store and publish, with no other publication in between (one
        from another thread could otherwise be overwritten by an older build)."""
        with self._lock:
            self._publish(self._build(), force)

    @contextlib.contextmanager
    def _publishing_here(self) -> Iterator[None]:
        """Around an Admin API write: what the store announces from this thread is published
        by this thread as the block exits, not by the publisher thread. The answer then
        goes out once the data plane has the change, and a write wakes one thread, not
        three (on a node sharing two CPUs with its traffic, each wake-up is a chance to
        preempt a worker). While another thread builds (the lock is taken), the publisher
        thread is woken instead: a write never waits on a build that may wait on it."""
        self._writer.active = True
        try:
            yield
        finally:
            self._writer.active = False
            if self._lock.acquire(blocking=False):
                try:
                    self._publish_pending()
                finally:
                    self._lock.release()
            else:  # a build is under way on another thread: the publisher takes it from here
                with self._dirty:
                    self._dirty.notify()

    def _follow(self) -> None:
        while True:
            with self._dirty:
                while not self._pending and not self._stop.is_set():
                    self._dirty.wait()
                if self._stop.is_set():
                    return
            self._publish_pending(COALESCE)

    def _publish_pending(self, coalesce: float = 0.0) -> None:
        """Publish what the store announced since the last time: the changed routes and
        upstreams alone when possible, else a full rebuild (after ``coalesce`` seconds, for
        the rest of a burst to arrive)."""
        with self._dirty:
            if not self._pending:
                return
            self._pending = False
            changed, self._changed = self._changed, set()
        try:
            if changed is not None and self._publish_partial(changed):
                return
            if coalesce:
                time.sleep(coalesce)
                with self._dirty:  # what arrives from here on is in the build or in the next
                    self._pending, self._changed = False, set()
            self._rebuild()
        except Exception:
            log.exception("the store's config could not be applied")
            with self._dirty:
                self._changed = None  # what failed is retried with everything next time

    def _load_demo(self, demo_address: str | None) -> Config:
        assert demo_address is not None, "the data plane was created without a demo origin"
        port = demo_address.rpartition(":")[2]
        env = {**os.environ, "PYGATEWAY_DEMO_PORT": port}
        return load_standalone(DEFAULT_CONFIG, catalog=self._catalog, env=env)

    def _phases(
        self, plugins: dict[str, Any], global_rules: list[dict[str, Any]], limited: bool = False
    ) -> list[str]:
        """The phases a route's plugins (and the global rules') implement on this node.

        ``limited``: the route has native limiters. When none of its Python request plugins
        runs before them (no rewrite, no access above their priority), the request phases
        are one crossing after the limiters: ``late``.
        """
        enabled = self.node.plugins
        found: set[str] = set()
        early = False
        for source in (plugins, *global_rules):
            for name, conf in source.items():
                plugin = self.plugins.get(name)
                if plugin is None or (enabled is not None and name not in enabled):
                    continue
                if plugin.native and self._native:
                    continue
                methods = {p for p in PHASES if callable(getattr(plugin, p, None))}
                found |= methods
                meta = conf.get("_meta") if isinstance(conf, dict) else None
                priority = (meta or {}).get("priority", plugin.priority)
                if "rewrite" in methods or (
                    "access" in methods and priority >= NATIVE_LIMITER_PRIORITY
                ):
                    early = True
        if limited and not early and found & {"access", "before_proxy"}:
            found -= {"access", "before_proxy"}
            found.add("late")
        return sorted(found)

    def _limits(
        self, route: dict[str, Any], config: Config, groups: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The native limiters of a route: global rules' first, then the route's, each in
        priority order, with the object owning its counters. ``groups`` collects the
        limit-count confs by ``group``: members of a group must agree (APISIX)."""
        owners = [
            (f"global_rules/{i.id}", i.conf.get("plugins") or {})
            for i in config.global_rules.values()
        ]
        owners.append((f"routes/{route['id']}", route.get("plugins") or {}))
        found: list[dict[str, Any]] = []
        for owner, plugins in owners:
            specs = limiter_specs(self.plugins, self.node.plugins, owner, plugins)
            for spec in specs:
                group = spec["conf"].get("group") if spec["name"] == "limit-count" else None
                if not group:
                    continue
                bare = {k: v for k, v in spec["conf"].items() if k != "_meta"}
                if groups.setdefault(group, bare) != bare:
                    msg = (
                        "failed to check the configuration of plugin limit-count "
                        "err: group conf mismatched"
                    )
                    resource, _, ident = owner.partition("/")
                    issue = ConfigIssue(resource, ident, "plugins.limit-count.group", msg)
                    raise ConfigError([issue])
            found += specs
        return found

    def _route_plan(
        self,
        route: dict[str, Any],
        config: Config,
        global_rules: list[dict[str, Any]],
        groups: dict[str, Any],
    ) -> list[dict[str, Any]]:
        """Add to a compiled route what this node runs for it: its phases and (native)
        its limiters. Returns the route's limiter specs (on both engines)."""
        limits = self._limits(route, config, groups)  # checks groups on both engines
        route["phases"] = self._phases(
            route.get("plugins") or {}, global_rules, self._native and bool(limits)
        )
        if self._native:
            route["limits"] = limits
        return limits

    def _publish(self, config: Config, force: bool = False) -> None:
        """Compile and send only what changed to the data plane."""
        with self._lock:
            snapshot = compile_config(config, self._compiled)
            global_rules = _global_rules(config)
            groups: dict[str, Any] = {}
            for route in snapshot.routes.values():
                self._route_plan(route, config, global_rules, groups)
            view = PluginView(
                routes=dict(snapshot.routes),
                global_rules=global_rules,
                consumers=[dict(i.conf) for i in config.consumers.values()],
                plugin_metadata={k: dict(i.conf) for k, i in config.plugin_metadata.items()},
            )
            self._pipeline.consumer_groups = {
                k: dict(i.conf) for k, i in config.consumer_groups.items()
            }
            first = not self._config or force
            # a forced one (plugins reloaded) also drops what is no longer valid
            changes = full(snapshot, self._snapshot) if first else diff(self._snapshot, snapshot)
            metadata = {k: dict(i.conf) for k, i in config.plugin_metadata.items()}
            if first or metadata != self._sent_metadata:
                changes["plugin_metadata"] = metadata  # type: ignore[assignment]
                self._sent_metadata = metadata
            self._send(config, snapshot, view, changes)

    def _publish_partial(self, keys: set[str]) -> bool:
        """Publish a burst of route writes and upstream updates touching those objects alone
        (a write to a 10,000-route store costs what it costs with one route). False when
        the burst needs the full path: other resources, an upstream created, deleted or
        invalid (routes referring to it appear or go), a limit-count ``group`` (a check
        across routes)."""
        store = self.store
        if store is None or isinstance(store, StandaloneStore):
            return False
        ids: list[str] = []
        upstream_ids: list[str] = []
        for key in keys:
            parts = parse_key(key)
            if parts is None or parts[0] not in ("routes", "upstreams"):
                return False
            (ids if parts[0] == "routes" else upstream_ids).append(parts[1])
        with self._lock:
            old, current = self._snapshot, self._config
            if current is None:
                return False
            config = dataclasses.replace(
                current,
                routes=dict(current.routes),
                upstreams=dict(current.upstreams),
                warnings=[],
            )
            for ident in upstream_ids:
                entry = store.get(f"upstreams/{ident}")
                if entry is None or ident not in current.upstreams:
                    return False  # deleted or created: routes referring to it go or appear
                upstream = self._builder.item("upstreams", ident, entry, config)
                if upstream is None:
                    return False
                config.upstreams[ident] = upstream
            for ident in ids:
                key = f"routes/{ident}"
                entry = store.get(key)
                item = self._builder.item("routes", ident, entry, config) if entry else None
                if item is None:
                    config.routes.pop(ident, None)
                    if entry is None:
                        self._builder.forget(key)
                else:
                    config.routes[ident] = item
            snapshot = Snapshot(routes=dict(old.routes), upstreams=dict(old.upstreams))
            for ident in upstream_ids:
                compile_upstream_into(snapshot, config.upstreams[ident], self._compiled)
            global_rules = _global_rules(config)
            for ident in ids:
                snapshot.routes.pop(ident, None)
                snapshot.upstreams.pop(f"routes/{ident}", None)
                item = config.routes.get(ident)
                if item is not None:
                    compile_route_into(snapshot, item, config, self._compiled)
                route = snapshot.routes.get(ident)
                if route is None:
                    self._compiled.forget(f"route:{ident}", f"routes/{ident}")
                    continue
                specs = self._route_plan(route, config, global_rules, {})
                if any(s["name"] == "limit-count" and s["conf"].get("group") for s in specs):
                    return False  # members of a group are checked against each other
            view = self._view
            assert view is not None
            view = dataclasses.replace(view, routes=dict(snapshot.routes))
            touched = [f"routes/{i}" for i in ids] + [f"upstreams/{u}" for u in upstream_ids]
            changes = diff(old, snapshot, ids, touched)
            self._send(config, snapshot, view, changes)
        return True

    def _send(
        self, config: Config, snapshot: Snapshot, view: PluginView, changes: ChangeSet
    ) -> None:
        """Make a compiled config the current one: plugin view, then the data plane."""
        self._view = view
        if self._runner is not None:
            self._runner.view = view
        elif self._plane is not None:  # the python engine
            self._plane.view = view
        if not is_empty(changes):
            self._plane.apply(change_set_json(changes))
        self._snapshot = snapshot
        self._config = config
        for warning in config.warnings:
            log.warning("config: %s", warning)


def _global_rules(config: Config) -> list[dict[str, Any]]:
    """The ``plugins`` of each global rule."""
    return [dict(item.conf.get("plugins") or {}) for item in config.global_rules.values()]
