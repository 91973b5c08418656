"""The node configuration: the gateway's own settings (YAML; keys mirror the CLI flags).

Example::

    listen: ["0.0.0.0:9080"]
    workers: 4
    engine: native            # or python
    routes: conf/apisix.yaml  # the standalone file
    router: radixtree_host_uri
    plugins: [key-auth, limit-count]
    trusted_addresses: ["10.0.0.0/8"]
    drain_timeout: 10
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError, ConfigIssue
from .validator import lua_type

__all__ = [
    "ADMIN_ROLES",
    "APISIX_DEFAULT_ADMIN_KEYS",
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_ALLOW_ADMIN",
    "DEFAULT_LISTEN",
    "ENGINES",
    "ROUTERS",
    "AdminKey",
    "AdminSettings",
    "NodeConfig",
    "admin_settings",
    "keyring_problem",
    "load_node_config",
]

DEFAULT_LISTEN = "127.0.0.1:9080"
ENGINES = ("native", "python")
ROUTERS = ("radixtree_host_uri", "radixtree_uri_with_parameter")
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9180"
DEFAULT_ALLOW_ADMIN = ("127.0.0.0/24", "::1")
ADMIN_ROLES = ("admin", "viewer")
APISIX_DEFAULT_ADMIN_KEYS = frozenset(
    {"edd1c9f034335f136f87ad84b625c8f1", "4054f7cf07e344346cd3f287985e76a2"}
)
"""The keys of APISIX's sample config.yaml: published, so never accepted."""


def _cpu_count() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class NodeConfig:
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    workers: int = field(default_factory=_cpu_count)
    engine: str = "native"
    debug: bool = False
    routes: str | None = None
    router: str = "radixtree_host_uri"
    plugins: list[str] | None = None
    """Enabled plugin names; None = all built-in plugins."""
    plugin_paths: list[str] = field(default_factory=list)
    trusted_addresses: list[str] = field(default_factory=list)
    drain_timeout: float = 10
    plugin_timeout: float = 5
    """Seconds an async plugin phase may take before the request fails with 504."""
    admin: dict[str, Any] = field(default_factory=dict)
    etcd: dict[str, Any] = field(default_factory=dict)
    data_encryption: dict[str, Any] = field(default_factory=dict)
    """APISIX's ``apisix.data_encryption``: ``enable_encrypt_fields`` (default true) and
    ``keyring`` (default APISIX's); applies to etcd, as in APISIX."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> NodeConfig:
        """Validate a mapping of settings; raise :class:`ConfigError` listing all problems."""
        values, issues = _check(data, source)
        if issues:
            raise ConfigError(issues)
        return cls(**values)

    def merged(self, overrides: Mapping[str, Any]) -> NodeConfig:
        """A copy with ``overrides`` applied (``None`` values are ignored: unset flags)."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        current.update({k: v for k, v in overrides.items() if v is not None})
        return NodeConfig.from_dict(current)

    def listen_addresses(self) -> list[tuple[str, int]]:
        return [_split_listen(a) for a in self.listen]


def _split_listen(addr: str) -> tuple[str, int]:
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = addr.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:  # 0: a free port
        raise ValueError(f'invalid listen address "{addr}", expected "HOST:PORT"')
    return host, int(port_text)


def _check(data: Mapping[str, Any], source: str | None) -> tuple[dict[str, Any], list[ConfigIssue]]:
    issues: list[ConfigIssue] = []
    values: dict[str, Any] = {}
    known = {f.name for f in dataclasses.fields(NodeConfig)}

    def bad(key: str, message: str) -> None:
        issues.append(ConfigIssue("node", None, key, message, message, source))

    def expect(key: str, value: Any, kind: str) -> bool:
        ok = {
            "string": isinstance(value, str),
            "boolean": isinstance(value, bool),
            "array": isinstance(value, list),
            "object": isinstance(value, dict),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        }[kind]
        if not ok:
            bad(key, f"wrong type: expected {kind}, got {lua_type(value)}")
        return ok

    def string_list(key: str, value: Any) -> bool:
        if not expect(key, value, "array"):
            return False
        for i, v in enumerate(value):
            if not isinstance(v, str):
                bad(f"{key}[{i}]", f"wrong type: expected string, got {lua_type(v)}")
                return False
        return True

    for key, value in data.items():
        if key not in known:
            hint = ", ".join(sorted(known))
            bad(str(key), f'unknown key "{key}" (known keys: {hint})')
            continue
        if key == "listen":
            if isinstance(value, str):
                value = [value]
            if not string_list(key, value):
                continue
            if not value:
                bad(key, "expect array to have at least 1 items")
                continue
            for i, addr in enumerate(value):
                try:
                    _split_listen(addr)
                except ValueError as err:
                    bad(f"listen[{i}]", str(err))
        elif key == "workers":
            if not expect(key, value, "integer"):
                continue
            if value < 1:
                bad(key, f"expected {value} to be at least 1")
        elif key in ("engine", "router"):
            if not expect(key, value, "string"):
                continue
            choices = ENGINES if key == "engine" else ROUTERS
            if value not in choices:
                bad(key, f"matches none of the enum values (expected one of: {', '.join(choices)})")
        elif key == "debug":
            expect(key, value, "boolean")
        elif key == "routes":
            if value is not None:
                expect(key, value, "string")
        elif key == "plugins":
            if value is not None:
                string_list(key, value)
        elif key == "plugin_paths":
            string_list(key, value)
        elif key == "trusted_addresses":
            if string_list(key, value):
                for i, cidr in enumerate(value):
                    try:
                        ipaddress.ip_network(cidr, strict=False)
                    except ValueError:
                        bad(f"{key}[{i}]", f'invalid IP address or CIDR "{cidr}"')
        elif key == "drain_timeout":
            if expect(key, value, "number") and value < 0:
                bad(key, f"expected {value} to be at least 0")
        elif key == "plugin_timeout":
            if expect(key, value, "number") and value <= 0:
                bad(key, f"expected {value} to be greater than 0")
        elif key in ("admin", "etcd", "data_encryption"):
            if value is None:
                value = {}
            if expect(key, value, "object"):
                _SECTIONS[key](value, bad)
        values[key] = value
    return values, issues


def _check_listen(key: str, value: Any, bad: Callable[[str, str], None]) -> None:
    if not isinstance(value, str):
        bad(key, f"wrong type: expected string, got {lua_type(value)}")
        return
    try:
        _split_listen(value)
    except ValueError as err:
        bad(key, str(err))


def _check_strings(key: str, value: Any, bad: Callable[[str, str], None]) -> bool:
    if not isinstance(value, list):
        bad(key, f"wrong type: expected array, got {lua_type(value)}")
        return False
    for i, v in enumerate(value):
        if not isinstance(v, str):
            bad(f"{key}[{i}]", f"wrong type: expected string, got {lua_type(v)}")
            return False
    return True


def _check_admin(admin: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    """The ``admin:`` section's shape; :func:`admin_settings` checks what needs the whole node."""
    for key, value in admin.items():
        where = f"admin.{key}"
        if key == "listen":
            _check_listen(where, value, bad)
        elif key == "keys":
            if not isinstance(value, list):
                bad(where, f"wrong type: expected array, got {lua_type(value)}")
                continue
            for i, entry in enumerate(value):
                at = f"{where}[{i}]"
                if not isinstance(entry, dict):
                    bad(at, f"wrong type: expected object, got {lua_type(entry)}")
                    continue
                for field_name in entry:
                    if field_name not in ("name", "key", "role"):
                        bad(f"{at}.{field_name}", f'unknown key "{field_name}"')
                for field_name in ("name", "key"):
                    if field_name in entry and not isinstance(entry[field_name], str):
                        found = lua_type(entry[field_name])
                        bad(f"{at}.{field_name}", f"wrong type: expected string, got {found}")
                if "key" not in entry:
                    bad(f"{at}.key", "missing the admin key")
                if entry.get("role", "admin") not in ADMIN_ROLES:
                    bad(f"{at}.role", "matches none of the enum values (expected admin or viewer)")
        elif key == "admin_key_required":
            if not isinstance(value, bool):
                bad(where, f"wrong type: expected boolean, got {lua_type(value)}")
        elif key == "allow_admin":
            if _check_strings(where, value, bad):
                for i, cidr in enumerate(value):
                    try:
                        ipaddress.ip_network(cidr, strict=False)
                    except ValueError:
                        bad(f"{where}[{i}]", f'invalid IP address or CIDR "{cidr}"')
        elif key == "store":
            if not isinstance(value, str) or not value:
                bad(where, "expected the path of the embedded store file")
        else:
            hint = "admin_key_required, allow_admin, keys, listen, store"
            bad(where, f'unknown key "{key}" (known keys: {hint})')


def _check_etcd(etcd: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    for key, value in etcd.items():
        where = f"etcd.{key}"
        if key == "endpoints":
            if isinstance(value, str):
                value = [value]
            if _check_strings(where, value, bad) and not value:
                bad(where, "expect array to have at least 1 items")
        elif key == "prefix":
            if not isinstance(value, str) or not value.startswith("/"):
                bad(where, 'expected a key prefix starting with "/" (default "/apisix")')
        elif key == "timeout":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                bad(where, "expected a number of seconds greater than 0")
        elif key == "snapshot":
            if not isinstance(value, str) or not value:
                bad(where, "expected the path of the snapshot file")
        else:
            bad(where, f'unknown key "{key}" (known keys: endpoints, prefix, snapshot, timeout)')


def keyring_problem(keyring: list[str] | tuple[str, ...]) -> tuple[int, str] | None:
    """The first unusable key of a ``data_encryption`` keyring: (index, why), or None."""
    for i, key in enumerate(keyring):
        size = len(key.encode())
        if size not in (16, 32):
            return i, f"expected a 16 byte (AES-128) or 32 byte (AES-256) key, got {size} bytes"
    return None


def _check_data_encryption(conf: dict[str, Any], bad: Callable[[str, str], None]) -> None:
    for key, value in conf.items():
        where = f"data_encryption.{key}"
        if key == "enable_encrypt_fields":
            if not isinstance(value, bool):
                bad(where, f"wrong type: expected boolean, got {lua_type(value)}")
        elif key == "keyring":
            if isinstance(value, str):  # APISIX takes one key as a string
                value = conf[key] = [value]
            if _check_strings(where, value, bad):
                problem = keyring_problem(value)
                if problem is not None:
                    bad(f"{where}[{problem[0]}]", problem[1])
        else:
            hint = "enable_encrypt_fields, keyring"
            bad(where, f'unknown key "{key}" (known keys: {hint})')


_SECTIONS: dict[str, Callable[[dict[str, Any], Callable[[str, str], None]], None]] = {
    "admin": _check_admin,
    "etcd": _check_etcd,
    "data_encryption": _check_data_encryption,
}


@dataclass(frozen=True)
class AdminKey:
    """One Admin API key: ``role`` is ``admin`` (every method) or ``viewer`` (GET only)."""

    name: str
    key: str = field(repr=False)
    role: str = "admin"


@dataclass(frozen=True)
class AdminSettings:
    """The Admin API of a node (from its ``admin:`` settings)."""

    listen: str = DEFAULT_ADMIN_LISTEN
    keys: tuple[AdminKey, ...] = ()
    key_required: bool = True
    allow: tuple[str, ...] = DEFAULT_ALLOW_ADMIN
    """Client CIDRs allowed to call the Admin API."""
    store: str | None = None
    """The embedded store file (when the node has neither etcd nor a standalone file)."""


def admin_settings(node: NodeConfig) -> AdminSettings | None:
    """The node's Admin API, None when it is off (no ``admin`` settings).

    Raises :class:`ConfigError` naming the field for a missing or empty key, APISIX's
    published sample keys (unless ``admin_key_required: false``) or an admin port that is
    also a data-plane port.
    """
    admin = node.admin
    if not admin:
        return None
    issues: list[ConfigIssue] = []

    def bad(key: str, message: str) -> None:
        issues.append(ConfigIssue("node", None, key, message, message))

    required = bool(admin.get("admin_key_required", True))
    keys: list[AdminKey] = []
    for i, entry in enumerate(admin.get("keys") or []):
        key = str(entry.get("key") or "")
        if not key.strip():
            if required:
                bad(f"admin.keys[{i}].key", "the admin key is empty: set a secret key")
            continue
        if required and key in APISIX_DEFAULT_ADMIN_KEYS:
            bad(
                f"admin.keys[{i}].key",
                "this is APISIX's published sample admin key: choose your own secret key",
            )
            continue
        keys.append(AdminKey(str(entry.get("name") or f"key{i}"), key, entry.get("role", "admin")))
    if required and not keys and not issues:
        bad(
            "admin.keys",
            "the Admin API needs an admin key (--admin-key KEY, PYGATEWAY_ADMIN_KEY or "
            "admin.keys in the node config), or admin_key_required: false",
        )
    listen = admin.get("listen", DEFAULT_ADMIN_LISTEN)
    admin_port = _split_listen(listen)[1]
    for i, (_, port) in enumerate(node.listen_addresses()):
        if port != 0 and port == admin_port:
            bad("admin.listen", f"port {port} is also the data plane's (listen[{i}])")
    if issues:
        raise ConfigError(issues)
    allow = tuple(admin.get("allow_admin", DEFAULT_ALLOW_ADMIN))
    return AdminSettings(listen, tuple(keys), required, allow, admin.get("store"))


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    """Read a node config YAML file; raise :class:`ConfigError` on any problem."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        msg = f"failed to open file {source} : {err.strerror}"
        raise ConfigError([ConfigIssue("", None, "", msg, msg, source)]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        msg = f"invalid YAML: {err.problem}"
        raise ConfigError(
            [
                ConfigIssue(
                    "",
                    None,
                    "",
                    msg,
                    msg,
                    source,
                    mark.line + 1 if mark else None,
                    mark.column + 1 if mark else None,
                )
            ]
        ) from None
    if data is None:
        return NodeConfig()
    if not isinstance(data, dict):
        msg = f"the node configuration should be a mapping, got {lua_type(data)}"
        raise ConfigError([ConfigIssue("", None, "", msg, msg, source)])
    node = NodeConfig.from_dict(data, source=source)
    # Relative file paths are relative to the node config file.
    base = os.path.dirname(os.path.abspath(source))
    changes: dict[str, Any] = {}
    if node.routes is not None and not os.path.isabs(node.routes):
        changes["routes"] = os.path.join(base, node.routes)
    if any(not os.path.isabs(p) for p in node.plugin_paths):
        changes["plugin_paths"] = [os.path.join(base, p) for p in node.plugin_paths]
    for section, key in (("admin", "store"), ("etcd", "snapshot")):
        value = getattr(node, section).get(key)
        if isinstance(value, str) and not os.path.isabs(value):
            changes[section] = {**getattr(node, section), key: os.path.join(base, value)}
    return dataclasses.replace(node, **changes) if changes else node
