"""The standalone store: APISIX's ``apisix.yaml`` (or ``.json``, or an inline mapping), read-only.

The whole content is validated at once, strictly (one bad item refuses the file, every
problem listed), exactly as ``pygateway validate`` does; the file is re-checked every
:data:`WATCH_INTERVAL` seconds and a rejected file keeps the last good config serving.
The validated :class:`~pygateway.config.Config` is kept in :attr:`StandaloneStore.config`
for the gateway; the entries are what the (read-only) Admin API shows.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..config import Config, ConfigError, PluginCatalog, build_config, load_standalone
from ..config.plugins import NO_PLUGINS
from ..config.standalone import RESOURCES
from .base import Change, Entry, Listener, ReadOnlyStore, Store

__all__ = ["READ_ONLY_MESSAGE", "WATCH_INTERVAL", "StandaloneStore", "config_entries"]

log = logging.getLogger("pygateway.store")

WATCH_INTERVAL = 0.25
"""Seconds between checks of the standalone file (APISIX checks every second)."""

READ_ONLY_MESSAGE = (
    "the configuration comes from the standalone file {source}: "
    "the Admin API is read-only, edit the file instead"
)


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def config_entries(config: Config, revision: int) -> dict[str, Entry]:
    """The store entries of a validated config (APISIX: every item's index is the file's)."""
    entries: dict[str, Entry] = {}
    for resource in RESOURCES:
        for item in config.items_of(resource).values():
            key = f"{resource}/{item.id}"
            entries[key] = Entry(key, item.conf, revision, revision)
    return entries


class StandaloneStore(Store):
    """A read-only :class:`Store` over a standalone file (``path``) or a mapping (``data``).

    ``loader`` replaces the file loader (the embedded demo config substitutes variables).
    """

    read_only = True

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        data: Mapping[str, Any] | None = None,
        catalog: PluginCatalog = NO_PLUGINS,
        loader: Callable[[], Config] | None = None,
        watch: bool = True,
    ) -> None:
        self.path = None if path is None else os.fspath(path)
        self.source = self.path or "<config>"
        self._data = None if data is None else dict(data)
        self._catalog = catalog
        self._loader = loader
        self._watch_file = watch and self.path is not None and loader is None
        self.config: Config = Config()
        """The last good (validated) config."""
        self._entries: dict[str, Entry] = {}
        self._revision = 0
        self._listener: Listener | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def load(self) -> Config:
        """Read and validate the source; raises :class:`ConfigError` (nothing changes then)."""
        if self._data is not None:  # inline, or a mapping given to reload()
            return build_config(self._data, source="<config>", catalog=self._catalog)
        if self._loader is not None:
            return self._loader()
        if self.path is not None:
            return load_standalone(self.path, catalog=self._catalog)
        return build_config({}, source="<config>", catalog=self._catalog)

    def start(self, listener: Listener) -> None:
        self._listener = listener
        if self.path is not None:
            self._stamp = _file_stamp(self.path)
        self._apply(self.load())
        if self._watch_file:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._watch, name="pygateway-config-watch", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._listener = None

    def reload(self, data: Mapping[str, Any] | None = None) -> None:
        """Re-read the file (or take ``data``); raises :class:`ConfigError` and keeps the old."""
        if data is not None:
            previous, self._data = self._data, dict(data)
            try:
                config = self.load()
            except ConfigError:
                self._data = previous
                raise
        else:
            config = self.load()
        self._apply(config)

    def _apply(self, config: Config) -> None:
        with self._lock:
            self._revision = max(self._revision + 1, _stamp_revision(self._stamp))
            self.config = config
            self._entries = config_entries(config, self._revision)
            changes = [Change(k, e) for k, e in sorted(self._entries.items())]
            if self._listener is not None:
                self._listener(changes, True)

    def _watch(self) -> None:
        path = self.path
        assert path is not None
        while not self._stop.wait(WATCH_INTERVAL):
            stamp = _file_stamp(path)
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                self._apply(load_standalone(path, catalog=self._catalog))
                log.warning("config reloaded from %s", path)
            except ConfigError as err:
                log.error("config file %s rejected, keeping the previous config:\n%s", path, err)
            except Exception:
                log.exception("config file %s could not be applied", path)

    # -- the Store interface ---------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def items(self, prefix: str) -> list[Entry]:
        entries = self._entries
        return sorted((e for k, e in entries.items() if k.startswith(prefix)), key=lambda e: e.key)

    def _refuse(self) -> ReadOnlyStore:
        return ReadOnlyStore(READ_ONLY_MESSAGE.format(source=self.source))

    def put(self, key: str, value: dict[str, Any], ttl: float | None = None) -> tuple[Entry, bool]:
        raise self._refuse()

    def delete(self, key: str) -> Entry | None:
        raise self._refuse()

    def new_id(self) -> str:
        raise self._refuse()

    def replace(self, puts: Sequence[tuple[str, dict[str, Any]]], deletes: Sequence[str]) -> None:
        raise self._refuse()


def _stamp_revision(stamp: tuple[int, int, int] | None) -> int:
    """APISIX uses the file's mtime as every item's index; seconds keep it readable."""
    return 0 if stamp is None else stamp[0] // 1_000_000_000
