"""The Admin API v3's resources, methods and answers, independent of the HTTP server.

:meth:`AdminApi.handle` takes a method, the path segments after ``/apisix/admin/``, the
query arguments and the decoded body, and returns ``(status, JSON body)``: the server
(:mod:`.server`) only moves bytes, checks keys and client addresses. Behaviour and wording
follow APISIX's ``apisix/admin/*.lua`` (see ``docs/admin.md`` for the differences).
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import PluginCatalog, build_config
from ..config.errors import ConfigError
from ..config.jsonvalue import json_copy
from ..config.resources import CHECKERS
from ..config.schema import SCHEMAS
from ..config.standalone import REFERENCES, UNSUPPORTED, item_id
from ..config.validator import SchemaError, validate
from ..plugin import PluginRegistry
from ..store.base import Entry, Store, StoreError, StoreUnavailable
from .configs import TIME_FIELDS, Answer, configs, duplicate_text, error_answer

__all__ = ["AdminApi", "Reply"]

Reply = tuple[int, Any]
"""(HTTP status, JSON-serialisable body)."""

NOT_FOUND: Reply = (404, {"message": "Key not found"})

# The key field of each auth plugin, for "duplicate key found with consumer" (APISIX's map).
PLUGIN_KEY_FIELDS = {
    "key-auth": "key",
    "basic-auth": "username",
    "jwt-auth": "key",
    "hmac-auth": "key_id",
    "ldap-auth": "user_dn",
}


@dataclass(frozen=True)
class Kind:
    """An Admin API resource: ``name`` in URLs and keys, ``kind`` in messages."""

    name: str
    kind: str
    methods: frozenset[str]
    post: bool = False


_FULL = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH"})
_NO_POST = frozenset({"GET", "PUT", "DELETE", "PATCH"})
_PLAIN = frozenset({"GET", "PUT", "DELETE"})

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("routes", "route", _FULL),
        Kind("services", "service", _FULL),
        Kind("upstreams", "upstream", _FULL),
        Kind("consumers", "consumer", _PLAIN),
        Kind("credentials", "credential", _PLAIN),
        Kind("consumer_groups", "consumer group", _NO_POST),
        Kind("plugin_configs", "plugin config", _NO_POST),
        Kind("global_rules", "global rule", _NO_POST),
        Kind("plugin_metadata", "plugin_metadata", _PLAIN),
    )
}

# /schema/<name>: APISIX's singular names, and the plural resource names.
SCHEMA_NAMES = {
    "route": "routes",
    "service": "services",
    "upstream": "upstreams",
    "consumer": "consumers",
    "credential": "credentials",
    "consumer_group": "consumer_groups",
    "plugin_config": "plugin_configs",
    "global_rule": "global_rules",
    "plugin_metadata": "plugin_metadata",
}


def _error(status: int, message: str) -> Reply:
    return status, {"error_msg": message}


def _ttl(args: Mapping[str, str]) -> float | None:
    """APISIX's ``?ttl=`` (checked a finite number by the server): seconds until the object
    is deleted; 0 or less deletes it at once (etcd grants its shortest lease then)."""
    ttl = args.get("ttl")
    return max(float(ttl), 0.0) if ttl is not None else None


def _merge(old: Any, patch: Any) -> Any:
    """APISIX's PATCH merge: objects merge recursively, ``null`` deletes, the rest replaces.

    An empty object replaces what it patches (``{"plugins": {}}`` removes every plugin):
    APISIX's ``core.table.merge`` replaces a value when either side ``isarray``, and
    LuaJIT's ``table.isarray`` holds for an empty table."""
    if not isinstance(old, dict) or not isinstance(patch, dict):
        return json_copy(patch)
    merged = dict(old)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif value == {}:
            merged[key] = {}
        else:
            merged[key] = _merge(old.get(key), value)
    return merged


def _set_path(conf: dict[str, Any], path: list[str], value: Any) -> str | None:
    """Replace the attribute at ``path`` (``upstream/nodes``), making missing levels (APISIX
    ``core.table.patch``); an error text if a level is not an object. A numeric part also
    indexes an array (1-based)."""
    node: Any = conf
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not (part.isdigit() and 0 < int(part) <= len(node)):
                return f"invalid sub-path: /{'/'.join(path[: i + 1])}"
            node = node[int(part) - 1]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            return f"invalid sub-path: /{'/'.join(path[: i + 1])}"
    last = path[-1]
    if isinstance(node, list) and last.isdigit() and 0 < int(last) <= len(node):
        node[int(last) - 1] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        return f"invalid sub-path: /{'/'.join(path)}"
    return None


class AdminApi:
    """The resources of the Admin API over ``store``.

    ``catalog`` checks plugin confs (the gateway's plugins); ``registry`` answers
    ``/plugins``; ``reload_plugins`` is ``PUT /plugins/reload``. ``write_scope`` is entered
    around each write (the gateway publishes what the write changed as it exits, before the
    answer goes out).
    """

    def __init__(
        self,
        store: Store,
        catalog: PluginCatalog,
        registry: PluginRegistry,
        *,
        enabled: list[str] | None = None,
        reload_plugins: Callable[[], None] | None = None,
        vouch: Callable[[Entry, dict[str, Any]], None] | None = None,
        write_scope: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.registry = registry
        self.enabled = enabled
        self.reload_plugins = reload_plugins
        self.vouch = vouch
        """Told of each write that passed every check without a warning."""
        self.clock = clock
        self._scope = write_scope or contextlib.nullcontext
        self._write = threading.Lock()
        # Of the write under way (writes are serialised by _write):
        self._ttl: float | None = None  # its ?ttl= (seconds until the object is deleted)
        self._warned = False  # its _check found warnings
        self._checked: dict[str, Any] | None = None  # what its _check validated

    # -- dispatch --------------------------------------------------------------------

    def handle(self, method: str, segments: list[str], args: Mapping[str, str], body: Any) -> Reply:
        """Answer one request; ``body`` is the decoded JSON (None when there was none)."""
        if not segments:
            return _error(404, "not found")
        head = segments[0]
        if head == "plugins":
            return self._plugins(method, segments[1:], args)
        if head == "schema":
            return self._schema(method, segments[1:], body)
        if head == "configs" and segments[1:] == ["validate"] and method == "POST":
            return self._validate_configs(body)
        if head in UNSUPPORTED:
            if method == "GET":
                return (200, {"total": 0, "list": []}) if len(segments) == 1 else NOT_FOUND
            return _error(400, f'pygateway does not support "{head}" yet')
        if head == "consumers" and len(segments) >= 3 and segments[2] == "credentials":
            kind = KINDS["credentials"]
            owner: str | None = segments[1]
            ident = segments[3] if len(segments) > 3 else None
            sub = segments[4:]
        elif head in KINDS and head != "credentials":
            kind = KINDS[head]
            owner = None
            ident = segments[1] if len(segments) > 1 and segments[1] else None
            sub = segments[2:]
        else:
            return _error(404, f"Unsupported resource type: {head}")
        if method not in kind.methods:
            if method in ("POST", "PATCH"):
                return _error(405, f"not supported `{method}` method for {kind.kind}")
            return _error(404, "not found")
        try:
            if method == "GET":
                return self._get(kind, owner, ident, args)
            with self._write, self._scope():
                self._checked = None
                self._ttl = _ttl(args)
                if method == "PUT":
                    return self._put(kind, owner, ident, body)
                if method == "POST":
                    if ident is not None:
                        return _error(400, f"wrong {kind.kind} id, do not need it")
                    return self._post(kind, body)
                if method == "DELETE":
                    return self._delete(kind, owner, ident, args)
                return self._patch(kind, ident, sub, body)
        except StoreUnavailable as err:
            return _error(503, str(err))
        except StoreError as err:
            return _error(400, str(err))

    def configs(self, method: str, headers: Mapping[str, str], raw: bytes) -> Answer:
        """``/apisix/admin/configs`` (GET, HEAD, PUT): see :mod:`.configs`."""
        try:
            with self._write, self._scope():  # a GET never mixes two configurations
                return configs(self.store, self.catalog, method, headers, raw)
        except StoreUnavailable as err:
            return error_answer(503, str(err))
        except StoreError as err:
            return error_answer(400, str(err))

    # -- keys and envelopes ----------------------------------------------------------

    @staticmethod
    def _key(kind: Kind, owner: str | None, ident: str) -> str:
        if kind.name == "credentials":
            return f"consumers/{owner}/credentials/{ident}"
        return f"{kind.name}/{ident}"

    @staticmethod
    def _collection(kind: Kind, owner: str | None) -> str:
        if kind.name == "credentials":
            return f"consumers/{owner}/credentials/"
        return f"{kind.name}/"

    def _full_key(self, key: str) -> str:
        return f"{self.store.prefix}/{key}"

    def _envelope(self, entry: Entry) -> dict[str, Any]:
        return {
            "key": self._full_key(entry.key),
            "value": entry.value,
            "createdIndex": entry.created_index,
            "modifiedIndex": entry.modified_index,
        }

    # -- GET -------------------------------------------------------------------------

    def _get(
        self, kind: Kind, owner: str | None, ident: str | None, args: Mapping[str, str]
    ) -> Reply:
        if ident is not None:
            entry = self.store.get(self._key(kind, owner, ident))
            return NOT_FOUND if entry is None else (200, self._envelope(entry))
        prefix = self._collection(kind, owner)
        entries = [e for e in self.store.items(prefix) if "/" not in e.key[len(prefix) :]]
        if not entries and kind.name == "credentials":
            return NOT_FOUND  # APISIX: credentials have no directory of their own in etcd
        fields = FILTER_FIELDS.get(kind.name, ())
        listed = [self._envelope(e) for e in entries if _matches(e.value, args, fields)]
        page_size = _number(args.get("page_size", ""))
        page_arg = _number(args.get("page", ""))
        if page_size is not None and page_arg is not None:  # APISIX pages only with both
            size = int(page_size)
            if not 10 <= size <= 500:
                return _error(400, "page_size must be between 10 and 500")
            page = max(1, int(page_arg))
            listed.sort(key=lambda e: e["createdIndex"])
            total = len(listed)
            listed = listed[(page - 1) * size : page * size]
            return 200, {"total": total, "list": listed}
        return 200, {"total": len(listed), "list": listed}

    # -- checks ----------------------------------------------------------------------

    def _check(self, kind: Kind, key: str, conf: Any, *, allow_time: bool = False) -> Reply | None:
        """Schema, plugins and references of ``conf`` to be stored at ``key``.

        As APISIX 3.14+, a copy is checked (its schema defaults filled in, kept in
        ``self._checked`` for the builder) and ``conf`` is stored as the client sent it."""
        if not isinstance(conf, dict):
            return None  # callers refuse non-objects before
        if not allow_time:
            # APISIX's text has two spaces; it also looks in upstream and plugins.
            parts = [("", conf), *((f"{k}.", conf.get(k)) for k in ("upstream", "plugins"))]
            for where, part in parts:
                if isinstance(part, dict):
                    for name in TIME_FIELDS:
                        # Lua: 0 and JSON null (cjson.null) are true; false and absence not
                        if name in part and part[name] is not False:
                            return _error(400, f"the property is forbidden:  {where}{name}")
        self._warned = False
        self._checked = checked = json_copy(conf)
        for problem in CHECKERS[kind.name](checked, self.catalog):
            if not problem.warning:
                return _error(400, problem.message)
            self._warned = True
        for res, fld, target, name in REFERENCES:
            if res != kind.name or conf.get(fld) is None:
                continue
            ref = item_id(conf[fld])
            if self.store.get(f"{target}/{ref}") is None:
                return _error(
                    400, f"failed to fetch {name} info by {name} id [{ref}], response code: 404"
                )
        if kind.name in ("consumers", "credentials"):
            return self._duplicate_keys(key, conf)
        if kind.name == "global_rules":
            return self._global_conflict(key, conf)
        return None

    def _global_conflict(self, own: str, conf: dict[str, Any]) -> Reply | None:
        """APISIX 3.15+: a plugin may be in one global rule only."""
        plugins = conf.get("plugins") or {}
        for entry in self.store.items("global_rules/"):
            if entry.key == own:
                continue
            theirs = entry.value.get("plugins") or {}
            for name in plugins:
                if name in theirs:
                    holder = entry.value.get("id", entry.key.split("/", 1)[1])
                    return _error(
                        400, f"plugin '{name}' already exists in global rule with id '{holder}'"
                    )
        return None

    def _duplicate_keys(self, own: str, conf: dict[str, Any]) -> Reply | None:
        """APISIX refuses an auth key that another consumer or credential already holds (a
        consumer does not conflict with its own credentials, a credential with itself)."""
        plugins = conf.get("plugins") or {}
        owner = own.split("/")[1]
        writing_credential = own.count("/") == 3
        for name, field_name in PLUGIN_KEY_FIELDS.items():
            value = (plugins.get(name) or {}).get(field_name)
            if not isinstance(value, str):
                continue
            for entry in self.store.items("consumers/"):
                parts = entry.key.split("/")
                if entry.key == own or (not writing_credential and parts[1] == owner):
                    continue
                other = (entry.value.get("plugins") or {}).get(name) or {}
                if other.get(field_name) != value:
                    continue
                holder = (
                    f"credential: {parts[3]} of consumer: {parts[1]}"
                    if len(parts) == 4
                    else f"consumer: {parts[1]}"
                )
                return _error(400, f"duplicate {field_name} of plugin {name} found with {holder}")
        return None

    def _stamp(self, conf: dict[str, Any], previous: Entry | None) -> None:
        now = int(self.clock())
        created = previous.value.get("create_time") if previous is not None else None
        conf["create_time"] = created if isinstance(created, int) else now
        conf["update_time"] = now

    def _store_put(self, key: str, conf: dict[str, Any]) -> tuple[Entry, bool]:
        """Store a checked conf (with the write's ``ttl``)."""
        entry, created = self.store.put(key, conf, self._ttl)
        # plugin_metadata is checked by the plugin's own schema: the builder checks the
        # stored value itself.
        checked = self._checked
        if (
            self.vouch is not None
            and not self._warned
            and checked is not None
            and not key.startswith("plugin_metadata/")
        ):
            # What the builder compiles: the checked copy (defaults filled), as stored.
            for name in ("id", "username", *TIME_FIELDS):
                if name in conf:
                    checked[name] = conf[name]
            self.vouch(entry, checked)
        self._checked = None
        return entry, created

    def _written(self, entry: Entry, created: bool) -> Reply:
        return (201 if created else 200), {"key": self._full_key(entry.key), "value": entry.value}

    # -- PUT / POST ------------------------------------------------------------------

    def _put(self, kind: Kind, owner: str | None, ident: str | None, body: Any) -> Reply:
        if body is None:
            return _error(400, "missing configurations")
        if not isinstance(body, dict):
            return _not_object(body)
        conf = json_copy(body)
        if kind.name == "consumers":
            if ident is not None and "username" in conf and conf["username"] != ident:
                return _error(400, "wrong username")
            if ident is not None:
                conf.setdefault("username", ident)
            bad = self._check(kind, f"consumers/{conf.get('username')}", conf)
            if bad is not None:
                return bad
            ident = str(conf["username"])
        else:
            from_path = ident is not None
            if ident is None and kind.name != "plugin_metadata":
                ident = item_id(conf["id"]) if conf.get("id") is not None else None
            if ident is None:
                what = "plugin name" if kind.name == "plugin_metadata" else f"{kind.kind} id"
                return _error(400, f"missing {what}")
            if (
                kind.name != "plugin_metadata"  # APISIX sets its id to the plugin's name
                and conf.get("id") is not None
                and item_id(conf["id"]) != ident
            ):
                return _error(400, f"wrong {kind.kind} id")
            if kind.name == "credentials":
                if self.store.get(f"consumers/{owner}") is None:
                    return _error(404, f"consumer [{owner}] not found")
                conf["id"] = ident
            elif kind.name == "plugin_metadata":
                conf["id"] = ident
            elif from_path:
                conf["id"] = ident  # APISIX: the path's id, a string, whatever the body says
            bad = self._check(kind, self._key(kind, owner, ident), conf)
            if bad is not None:
                return bad
        key = self._key(kind, owner, ident)
        if kind.name != "plugin_metadata":  # APISIX stamps no plugin_metadata
            self._stamp(conf, self.store.get(key))
        entry, created = self._store_put(key, conf)
        return self._written(entry, created)

    def _post(self, kind: Kind, body: Any) -> Reply:
        if body is None:
            return _error(400, "missing configurations")
        if not isinstance(body, dict):
            return _not_object(body)
        if body.get("id") is not None:
            return _error(400, f"wrong {kind.kind} id, do not need it")
        conf = json_copy(body)
        bad = self._check(kind, "", conf)
        if bad is not None:
            return bad
        ident = self.store.new_id()
        conf["id"] = ident
        self._stamp(conf, None)
        entry, _ = self._store_put(self._key(kind, None, ident), conf)
        return 201, {"key": self._full_key(entry.key), "value": entry.value}

    # -- DELETE ----------------------------------------------------------------------

    def _delete(
        self, kind: Kind, owner: str | None, ident: str | None, args: Mapping[str, str]
    ) -> Reply:
        if ident is None:
            return _error(400, f"missing {kind.kind} id")
        key = self._key(kind, owner, ident)
        if self.store.get(key) is None:
            return NOT_FOUND
        if args.get("force") != "true":
            for res, fld, target, name in REFERENCES:
                if target != kind.name:
                    continue
                for entry in self.store.items(f"{res}/"):
                    ref = entry.value.get(fld)
                    if ref is not None and item_id(ref) == ident:
                        user = KINDS[res].kind
                        holder = entry.key.split("/", 1)[1]
                        # Only APISIX's service check says "directly".
                        this = f"{name} directly" if name == "service" else name
                        return _error(
                            400,
                            f"can not delete this {this}, {user} [{holder}] is still using it now",
                        )
        if kind.name == "consumers":
            for entry in self.store.items(f"{key}/credentials/"):
                self.store.delete(entry.key)
        self.store.delete(key)
        # APISIX answers etcd's count of deleted keys, as a string.
        return 200, {"deleted": "1", "key": self._full_key(key)}

    # -- PATCH -----------------------------------------------------------------------

    def _patch(self, kind: Kind, ident: str | None, sub: list[str], body: Any) -> Reply:
        if ident is None:
            return _error(400, f"missing {kind.kind} id")
        sub = [s for s in sub if s]
        if body is None:
            return _error(400, "missing new configuration")
        if not sub and not isinstance(body, dict):
            return _error(400, "invalid configuration")
        key = self._key(kind, None, ident)
        previous = self.store.get(key)
        if previous is None:
            return NOT_FOUND
        if sub:
            conf = json_copy(previous.value)
            err = _set_path(conf, sub, json_copy(body))
            if err is not None:
                return _error(400, err)
            patched_times = False
        else:
            conf = _merge(previous.value, body)
            patched_times = "update_time" in body
        if conf.get("id") is not None and item_id(conf["id"]) != ident:
            return _error(400, f"wrong {kind.kind} id")
        conf["id"] = ident  # APISIX: the path's id, a string
        if not patched_times:
            conf["update_time"] = int(self.clock())
        bad = self._check(kind, key, conf, allow_time=True)
        if bad is not None:
            return bad
        entry, _ = self._store_put(key, conf)
        return 200, {"key": self._full_key(entry.key), "value": entry.value}

    # -- plugins, schema, configs ----------------------------------------------------

    def _plugin_names(self) -> list[str]:
        names = self.registry.names()
        if self.enabled is not None:
            names = [n for n in names if n in self.enabled]
        return sorted(names)

    def _plugin_schema(self, name: str, schema_type: str) -> Reply:
        plugin = self.registry.get(name)
        if plugin is None or name not in self._plugin_names():
            return _error(404, "plugin not found in subsystem http")
        if schema_type == "consumer":
            if plugin.consumer_schema is None:
                return _error(400, "not found schema")
            return 200, plugin.consumer_schema
        if schema_type == "metadata":
            return 200, plugin.metadata_schema or {}
        return 200, self.registry.route_schema(name)

    def _plugins(self, method: str, rest: list[str], args: Mapping[str, str]) -> Reply:
        if rest == ["reload"]:
            if method != "PUT":
                return _error(
                    405,
                    f"please use PUT method to reload the plugins, {method} method is not allowed.",
                )
            if self.reload_plugins is not None:
                with self._write:  # no write checked with the old schemas lands after it
                    self.reload_plugins()
            return 200, "done"
        if method != "GET":
            return _error(404, "not found")
        subsystem = args.get("subsystem", "http")
        if rest == ["list"]:
            if subsystem not in ("http", "stream"):
                return 400, "invalid subsystem passed"  # APISIX answers the bare text
            if subsystem == "stream":
                return 200, []
            # APISIX lists them by priority, highest first.
            found = [p for p in map(self.registry.get, self._plugin_names()) if p is not None]
            return 200, [p.name for p in sorted(found, key=lambda p: (-p.priority, p.name))]
        if subsystem not in ("http", "stream"):
            return _error(400, f"unsupported subsystem: {subsystem}")
        if args.get("all") != "true":
            if subsystem == "stream" or not rest:  # no stream plugins here
                return _error(404, f"plugin not found in subsystem {subsystem}")
            return self._plugin_schema(rest[0], args.get("schema_type", "schema"))
        if subsystem == "stream":
            return 200, {}
        described: dict[str, Any] = {}
        for name in self._plugin_names():
            plugin = self.registry[name]
            info: dict[str, Any] = {
                "priority": plugin.priority,
                "version": plugin.version,
                "schema": self.registry.route_schema(name),
            }
            if plugin.consumer_schema is not None:
                info["consumer_schema"] = plugin.consumer_schema
            if plugin.metadata_schema is not None:
                info["metadata_schema"] = plugin.metadata_schema
            if plugin.type is not None:
                info["type"] = plugin.type
            described[name] = info
        return 200, described

    def _schema(self, method: str, rest: list[str], body: Any) -> Reply:
        if method == "POST" and len(rest) == 2 and rest[0] == "validate":
            # APISIX checks the resource's JSON schema only, and answers its bare message.
            resource = SCHEMA_NAMES.get(rest[1], rest[1])
            if resource not in SCHEMAS:
                return _error(404, f"Unsupported resource type: {rest[1]}")
            try:
                validate(SCHEMAS[resource], json_copy(body))
            except SchemaError as err:
                return _error(400, err.message)
            return 200, ""
        if method != "GET" or not rest:
            return _error(404, "not found")
        if rest[0] == "plugins" and len(rest) == 2:
            return self._plugin_schema(rest[1], "schema")
        resource = SCHEMA_NAMES.get(rest[0], rest[0])
        if resource in SCHEMAS:
            return 200, SCHEMAS[resource]
        return _error(400, f"not found schema: {rest[0]}")

    def _validate_configs(self, body: Any) -> Reply:
        if body is None:
            return _error(400, "invalid request body: empty request body")
        try:
            build_config(body, source="<request>", catalog=self.catalog)
        except ConfigError as err:
            # APISIX's items: resource_type, resource_id, 0-based index, error.
            errors = [
                {
                    "resource_type": e.resource,
                    "resource_id": e.id or "",
                    "index": (e.position or 1) - 1,
                    "error": duplicate_text(e) or e.message,
                }
                for e in err.errors
            ]
            return 400, {"error_msg": "Configuration validation failed", "errors": errors}
        return 200, {}


def _not_object(body: Any) -> Reply:
    from ..config.validator import lua_type

    return _error(400, "invalid configuration: wrong type: expected object, got " + lua_type(body))


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _search(pattern: str, text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return pattern in text


FILTER_FIELDS = {"routes": ("service_id", "upstream_id")}
"""What ``?filter=`` may test, per resource (APISIX ``list_filter_fields``)."""


def _matches(value: dict[str, Any], args: Mapping[str, str], fields: Sequence[str] = ()) -> bool:
    """APISIX's list filters: ``name`` and ``uri`` are regexes, ``label`` a label key, and
    ``filter`` (``service_id=1&upstream_id=2``, URL-encoded) tests the resource's fields."""
    wanted = args.get("filter")
    if wanted:
        for key, values in urllib.parse.parse_qs(wanted, keep_blank_values=True).items():
            if key in fields and value.get(key) != values[-1]:
                return False
    name = args.get("name")
    if name is not None and not _search(name, value.get("name")):
        return False
    label = args.get("label")
    if label is not None and label not in (value.get("labels") or {}):
        return False
    uri = args.get("uri")
    if uri is not None:
        uris = [value["uri"]] if "uri" in value else list(value.get("uris") or [])
        if not any(_search(uri, u) for u in uris):
            return False
    return True
