"""From store entries to a validated :class:`~pygateway.config.Config`, leniently.

APISIX's config objects check each item as it arrives from etcd and skip the invalid ones
with a log line; the rest keeps serving. :class:`ConfigBuilder` does the same over a store's
entries, with the standalone loader's checkers (:data:`~pygateway.config.resources.CHECKERS`)
and the gateway's plugin catalogue. Validated items are cached by ``(key, modified_index)``
so a write to a 1000-route store re-checks one item, not a thousand.

Consumer credentials (``consumers/<username>/credentials/<id>``) become extra entries of
``Config.consumers`` (id ``<username>/credentials/<id>``) that carry the consumer's
username, group and plugins overlaid with the credential's: that is what the auth plugins'
consumer lookup scans.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Optional

from ..config import Config, ConfigIssue, Item, PluginCatalog
from ..config.jsonvalue import json_copy
from ..config.resources import CHECKERS, Problem
from ..config.standalone import REFERENCES, RESOURCES, UNSUPPORTED, item_id
from .base import Entry

__all__ = ["ConfigBuilder", "KeyParts", "parse_key"]

log = logging.getLogger("pygateway.store")

KeyParts = tuple[str, str, Optional[str]]
"""(resource, id, credential id): ``consumers/jack/credentials/a`` is
``("credentials", "jack", "a")``, ``routes/1`` is ``("routes", "1", None)``."""


def parse_key(key: str) -> KeyParts | None:
    """Split a store key; None for keys that are not config objects (``gen_id``...)."""
    parts = key.split("/")
    if len(parts) == 2 and parts[0] and parts[1]:
        return parts[0], parts[1], None
    if len(parts) == 4 and parts[0] == "consumers" and parts[2] == "credentials" and parts[3]:
        return "credentials", parts[1], parts[3]
    return None


def _prepared(resource: str, ident: str, value: Any) -> Any:
    """A copy of a stored value with the identity fields APISIX derives from the key: an
    ``id`` stored in the value gives way to the key's, as APISIX's config sync does."""
    conf = json_copy(value)
    if isinstance(conf, dict):
        if resource == "consumers":
            conf.setdefault("username", ident)
        elif resource != "credentials":
            conf["id"] = ident
    return conf


_NO_UPSTREAM = "names no upstream: kept, its requests are answered 502 until the upstream exists"


def _issue(resource: str, ident: str, path: str, message: str) -> ConfigIssue:
    return ConfigIssue(resource, ident, path, message, message, "store")


class ConfigBuilder:
    """Builds Configs from store entries; one instance per gateway (it owns the cache)."""

    def __init__(self, catalog: PluginCatalog) -> None:
        self.catalog = catalog
        self._cache: dict[str, tuple[int, Item | None]] = {}
        self._good: dict[str, Item] = {}  # key -> its last valid item
        self._recheck: set[str] = set()  # kept items to check again (the plugins changed)
        self._vouched: dict[str, tuple[int, Item]] = {}  # written by another thread
        self._reported: set[tuple[str, int, str]] = set()

    def clear(self) -> None:
        """Forget every validated item (the plugins changed: re-check everything). The last
        valid versions kept for invalid updates stay, checked again before their next use."""
        self._cache.clear()
        self._recheck = set(self._good)
        self._vouched.clear()
        self._reported.clear()

    def _report(self, entry: Entry, issue: ConfigIssue, warning: bool = False) -> None:
        mark = (entry.key, entry.modified_index, str(issue))
        if mark in self._reported:
            return
        self._reported.add(mark)
        if warning:
            log.warning("config: %s", issue)
        elif entry.key in self._good:
            log.error(
                "store: %s is invalid, its last valid version keeps serving: %s", entry.key, issue
            )
        else:
            log.error("store: skipping %s (invalid): %s", entry.key, issue)

    def _unsupported(self, entry: Entry, resource: str) -> None:
        mark = (entry.key, entry.modified_index, "")
        if mark not in self._reported:
            self._reported.add(mark)
            log.warning(
                "store: %s is not served: pygateway does not support %s", entry.key, resource
            )

    def vouch(self, entry: Entry, checked: dict[str, Any]) -> None:
        """``entry`` was just written after passing the same checks (the Admin API), which
        gave ``checked`` (its value with the schema defaults filled): its item needs no
        second validation when the store's change arrives."""
        parts = parse_key(entry.key)
        if parts is None or parts[0] not in CHECKERS or not isinstance(entry.value, dict):
            return
        resource, ident, sub = parts
        ident = sub if sub is not None else ident
        if len(self._vouched) > 1024:  # written but never built (deleted meanwhile)
            self._vouched.clear()
        item = Item(ident, entry.created_index, _prepared(resource, ident, checked))
        self._vouched[entry.key] = (entry.modified_index, item)

    def _validate(self, resource: str, ident: str, entry: Entry) -> Item | None:
        cached = self._cache.get(entry.key)
        if cached is not None and cached[0] == entry.modified_index:
            return cached[1]
        vouched = self._vouched.pop(entry.key, None)
        if vouched is not None and vouched[0] == entry.modified_index:
            self._cache[entry.key] = vouched
            self._good[entry.key] = vouched[1]
            return vouched[1]
        conf: Any = _prepared(resource, ident, entry.value)
        item: Item | None = Item(ident, entry.created_index, conf)
        for p in self._problems(resource, entry.key, conf):
            self._report(entry, _issue(resource, ident, p.path, p.message), p.warning)
            if not p.warning:
                item = None
        if item is None:
            # APISIX keeps serving an object's last valid version when an update of it is
            # invalid (config_etcd's sync: "do not update the config cache").
            item = self._kept(resource, entry.key)
        else:
            self._good[entry.key] = item
            self._recheck.discard(entry.key)
        self._cache[entry.key] = (entry.modified_index, item)
        return item

    def _problems(self, resource: str, key: str, conf: Any) -> list[Problem]:
        """What the resource's checker finds in ``conf`` (defaults filled in place); a
        checker that raises makes ``conf`` invalid, it does not stop the other items."""
        try:
            return list(CHECKERS[resource](conf, self.catalog))
        except Exception as err:
            log.exception("store: checking %s failed", key)
            why = f"could not be checked: {type(err).__name__}"
            return [Problem("", why, why)]

    def _kept(self, resource: str, key: str) -> Item | None:
        """The last valid item of ``key``; one kept from before a plugin change must pass
        the new plugins' checks, or it goes too."""
        good = self._good.get(key)
        if good is None or key not in self._recheck:
            return good
        self._recheck.discard(key)
        if any(not p.warning for p in self._problems(resource, key, json_copy(good.conf))):
            log.error("store: %s: its kept version fails the reloaded plugins' checks", key)
            del self._good[key]
            return None
        return good

    def item(self, resource: str, ident: str, entry: Entry, config: Config) -> Item | None:
        """The valid item of ``entry`` whose references resolve in ``config``, or None
        (reported once)."""
        item = self._validate(resource, ident, entry)
        if item is None:
            return None
        missing = self._dangling(resource, item, config)
        if not missing:
            return item
        if [m.path for m in missing] == ["upstream_id"]:
            # APISIX keeps a route (or service) whose upstream is gone (deleted with
            # ?force=true, or never written to etcd) and answers its requests 502: they
            # must not fall through to another route that happens to match.
            self._report(entry, _issue(resource, ident, "upstream_id", _NO_UPSTREAM), True)
            return item
        self._report(entry, next(m for m in missing if m.path != "upstream_id"))
        return None

    def forget(self, key: str) -> None:
        """Drop the validated items of a deleted ``key``."""
        self._cache.pop(key, None)
        self._good.pop(key, None)
        self._recheck.discard(key)

    def build(self, entries: Iterable[Entry], source: str | None = None) -> Config:
        """A Config of every valid entry; invalid ones (and their dependents) are skipped."""
        config = Config(source=source)
        grouped: dict[str, list[tuple[str, str | None, Entry]]] = {}
        live: set[str] = set()
        for entry in entries:
            parts = parse_key(entry.key)
            if parts is None:
                continue
            resource, ident, sub = parts
            if resource not in CHECKERS:
                if resource in UNSUPPORTED:
                    self._unsupported(entry, resource)
                continue
            live.add(entry.key)
            grouped.setdefault(resource, []).append((ident, sub, entry))
        for key in [k for k in self._cache if k not in live]:
            self.forget(key)

        for resource in RESOURCES:
            target = config.items_of(resource)
            found = grouped.get(resource, [])
            found.sort(key=lambda t: (t[2].created_index, t[2].key))
            for ident, _, entry in found:
                item = self.item(resource, ident, entry, config)
                if item is not None:
                    target[ident] = item
        for username, cred_id, entry in grouped.get("credentials", []):
            assert cred_id is not None
            cred = self._validate("credentials", cred_id, entry)
            consumer = config.consumers.get(username)
            if cred is None or consumer is None:
                continue
            merged = dict(consumer.conf)
            merged["plugins"] = {
                **(consumer.conf.get("plugins") or {}),
                **(cred.conf.get("plugins") or {}),
            }
            merged["consumer_name"] = username
            merged["credential_id"] = cred_id
            ident = f"{username}/credentials/{cred_id}"
            config.consumers[ident] = Item(ident, entry.created_index, merged)
        return config

    @staticmethod
    def _dangling(resource: str, item: Item, config: Config) -> list[ConfigIssue]:
        """Every reference of ``item`` that names nothing."""
        missing = []
        for res, fld, target, name in REFERENCES:
            if res != resource or item.conf.get(fld) is None:
                continue
            ref = item_id(item.conf[fld])
            if ref not in config.items_of(target):
                message = f"failed to fetch {name} info by {name} id [{ref}], response code: 404"
                missing.append(_issue(resource, item.id, fld, message))
        return missing
