"""Load APISIX's standalone configuration file (``apisix.yaml`` / ``apisix.json``).

Behaviour follows ``apisix/core/config_yaml.lua``: a YAML file must end with ``#END``,
``${{VAR}}`` / ``${{VAR:=default}}`` is substituted in the text before YAML parsing (for
JSON: in the parsed strings), an item without ``id`` is ``arr_<n>`` (1-based position;
consumers use ``username``), every item is validated.  pygateway is stricter where
APISIX only logs: every problem (invalid items, duplicate ids, dangling references,
unsupported resources) is collected and reported, and the file is refused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError, ConfigIssue
from .jsonvalue import TOO_DEEP, check_value, json_copy, loads
from .plugins import NO_PLUGINS, PluginCatalog, RestrictedCatalog
from .resources import CHECKERS
from .schema import PLUGINS_LIST
from .validator import SchemaError, format_path, lua_number, validate

__all__ = [
    "RESOURCES",
    "UNSUPPORTED",
    "Config",
    "Item",
    "load_standalone",
    "parse_standalone",
    "substitute_env",
]

# Resource kinds, in the order they are checked and stored.
RESOURCES = (
    "upstreams",
    "services",
    "plugin_configs",
    "consumer_groups",
    "consumers",
    "routes",
    "global_rules",
    "plugin_metadata",
)
UNSUPPORTED = ("ssls", "stream_routes", "protos", "secrets")

_END_FLAG = re.compile(r"#END\s*$")
_ENV_REF = re.compile(r"\$\{\{\s*([A-Za-z0-9_]+[:=]?.*?)\s*\}\}", re.DOTALL)

# (resource, field, target resource, APISIX's name for the target)
REFERENCES = (
    ("routes", "upstream_id", "upstreams", "upstream"),
    ("routes", "service_id", "services", "service"),
    ("routes", "plugin_config_id", "plugin_configs", "plugin config"),
    ("services", "upstream_id", "upstreams", "upstream"),
    ("consumers", "group_id", "consumer_groups", "consumer group"),
)


@dataclass(frozen=True)
class Item:
    """One validated item: its id (a string), 1-based position, and the conf (with
    defaults filled in and ``id`` set, as APISIX stores it)."""

    id: str
    seq: int
    conf: dict[str, Any]


@dataclass
class Config:
    """A validated standalone configuration; each mapping is id -> Item in file order."""

    routes: dict[str, Item] = field(default_factory=dict)
    services: dict[str, Item] = field(default_factory=dict)
    upstreams: dict[str, Item] = field(default_factory=dict)
    consumers: dict[str, Item] = field(default_factory=dict)
    consumer_groups: dict[str, Item] = field(default_factory=dict)
    plugin_configs: dict[str, Item] = field(default_factory=dict)
    global_rules: dict[str, Item] = field(default_factory=dict)
    plugin_metadata: dict[str, Item] = field(default_factory=dict)
    plugins: list[str] | None = None
    """The ``plugins:`` list (enabled plugin names), None when the file has none."""
    source: str | None = None
    warnings: list[ConfigIssue] = field(default_factory=list)

    def items_of(self, resource: str) -> dict[str, Item]:
        if resource not in RESOURCES:
            raise KeyError(resource)
        result: dict[str, Item] = getattr(self, resource)
        return result


def item_id(value: object) -> str:
    """Lua ``tostring`` of an id."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return lua_number(value)
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


class _EnvError(Exception):
    pass


def _sub_env(text: str, env: Mapping[str, str]) -> tuple[str, bool]:
    used = False

    def repl(m: re.Match[str]) -> str:
        nonlocal used
        var = m.group(1)
        default: str | None = None
        pos = var.find(":=")
        if pos >= 0:
            default = var[pos + 2 :].strip()
            var = var[:pos]
        value = env.get(var, default)
        if value is None:
            raise _EnvError(
                f"failed to handle configuration: can't find environment variable {var}"
            )
        used = True
        return value

    return _ENV_REF.sub(repl, text), used


def substitute_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """Replace ``${{VAR}}`` / ``${{VAR:=default}}`` in ``text``; raise ValueError if a
    variable without default is not set."""
    try:
        return _sub_env(text, os.environ if env is None else env)[0]
    except _EnvError as err:
        raise ValueError(str(err)) from None


def _sub_env_json(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        new, used = _sub_env(value, env)
        if not used:
            return new
        try:
            number = float(new)
        except ValueError:
            if new in ("true", "false"):
                return new == "true"
            return new
        return int(number) if number.is_integer() and "." not in new else number
    if isinstance(value, list):
        return [_sub_env_json(v, env) for v in value]
    if isinstance(value, dict):
        return {_sub_env(k, env)[0]: _sub_env_json(v, env) for k, v in value.items()}
    return value


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (silently lost otherwise)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _file_issue(
    message: str, source: str | None, line: int | None = None, column: int | None = None
) -> ConfigIssue:
    return ConfigIssue("", None, "", message, message, source, line, column)


Positions = dict[tuple[str, int], tuple[int, int]]


def _positions(text: str) -> Positions:
    """(resource, 1-based item index) -> (line, column) of each item of a YAML document."""
    found: Positions = {}
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:  # pragma: no cover - the text was parsed successfully before
        return found
    if not isinstance(root, yaml.MappingNode):
        return found
    for key_node, value_node in root.value:
        if isinstance(key_node, yaml.ScalarNode) and isinstance(value_node, yaml.SequenceNode):
            for i, item in enumerate(value_node.value, start=1):
                mark = item.start_mark
                found[(str(key_node.value), i)] = (mark.line + 1, mark.column + 1)
    return found


def _parse_text(text: str, source: str, fmt: str, env: Mapping[str, str]) -> tuple[Any, Positions]:
    if fmt == "json":
        try:
            data = loads(text) if text.strip() else None
        except json.JSONDecodeError as err:
            raise ConfigError(
                [_file_issue(f"failed to decode json: {err.msg}", source, err.lineno, err.colno)]
            ) from None
        except ValueError as err:
            raise ConfigError([_file_issue(f"failed to decode json: {err}", source)]) from None
        try:
            return _sub_env_json(data, env), {}
        except _EnvError as err:
            raise ConfigError([_file_issue(str(err), source)]) from None

    if text.strip() and not _END_FLAG.search(text.encode("utf-8")[-10:].decode("utf-8", "replace")):
        raise ConfigError([_file_issue(f"missing valid end flag in file {source}", source)])
    try:
        resolved, _ = _sub_env(text, env)
    except _EnvError as err:
        raise ConfigError([_file_issue(str(err), source)]) from None
    try:
        data = yaml.load(resolved, Loader=_Loader)  # a SafeLoader subclass
        check_value(data)
    except RecursionError:
        raise ConfigError([_file_issue(f"invalid YAML: {TOO_DEEP}", source)]) from None
    except ValueError as err:
        raise ConfigError([_file_issue(f"invalid YAML: {err}", source)]) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        column = mark.column + 1 if mark is not None else None
        problem = err.problem or str(err)
        context = f" ({err.context})" if err.context else ""
        raise ConfigError(
            [_file_issue(f"invalid YAML: {problem}{context}", source, line, column)]
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError([_file_issue(f"invalid YAML: {err}", source)]) from None
    return data, _positions(resolved)


def load_standalone(
    path: str | os.PathLike[str],
    *,
    catalog: PluginCatalog = NO_PLUGINS,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read and validate an ``apisix.yaml`` (or ``.json``: no ``#END`` needed).

    Raises :class:`ConfigError` with every problem found.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ConfigError(
            [_file_issue(f"failed to open file {source} : {err.strerror}", source)]
        ) from None
    fmt = "json" if source.endswith(".json") else "yaml"
    return parse_standalone(text, source=source, fmt=fmt, catalog=catalog, env=env)


def parse_standalone(
    text: str,
    *,
    source: str = "apisix.yaml",
    fmt: str = "yaml",
    catalog: PluginCatalog = NO_PLUGINS,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Validate the text of a standalone file (``fmt`` is ``"yaml"`` or ``"json"``)."""
    if fmt not in ("yaml", "json"):
        raise ValueError(f"unknown format {fmt!r}")
    data, positions = _parse_text(text, source, fmt, os.environ if env is None else env)
    return build_config(data, source=source, catalog=catalog, positions=positions)


def build_config(
    data: Any,
    *,
    source: str | None = None,
    catalog: PluginCatalog = NO_PLUGINS,
    positions: Positions | None = None,
) -> Config:
    """Validate already-parsed standalone data (a mapping, or None for empty).

    ``positions`` maps (resource, 1-based index) to the item's (line, column), to locate
    the issues.
    """
    config = Config(source=source)
    issues: list[ConfigIssue] = []
    where = positions or {}

    def make(
        resource: str, ident: str | None, path: str, message: str, detail: str, index: int
    ) -> ConfigIssue:
        line, column = where.get((resource, index), (None, None))
        return ConfigIssue(
            resource, ident, path, message, detail or message, source, line, column, index or None
        )

    def issue(
        resource: str,
        ident: str | None,
        path: str,
        message: str,
        detail: str = "",
        index: int = 0,
    ) -> None:
        issues.append(make(resource, ident, path, message, detail, index))

    if data is None:
        return config
    if not isinstance(data, dict):
        raise ConfigError(
            [_file_issue("the configuration should be a mapping of resource lists", source)]
        )

    for key in data:
        if key in RESOURCES or key == "plugins":
            continue
        if key in UNSUPPORTED:
            if data[key]:
                issue(key, None, "", f'pygateway does not support "{key}" yet')
            continue
        if isinstance(key, str) and key.endswith("_conf_version"):
            continue
        issue("", None, str(key), f"unknown top-level key {json.dumps(str(key))}")

    if "plugins" in data and data["plugins"] is not None:
        plugins = data["plugins"]
        try:
            validate(PLUGINS_LIST, plugins)
        except SchemaError as err:
            issue(
                "plugins",
                None,
                format_path(err.path),
                "invalid configuration: " + err.message,
                err.detail,
            )
        else:
            names = [p["name"] for p in plugins if not p.get("stream")]
            config.plugins = names
            for i, name in enumerate(names):
                if not catalog.known(name):
                    issue("plugins", None, f"[{i}]", f"unknown plugin [{name}]")
            catalog = RestrictedCatalog(catalog, names)

    for resource in RESOURCES:
        items = data.get(resource)
        if items is None:
            continue
        if not isinstance(items, list):
            issue(
                resource,
                None,
                "",
                "wrong type: expected array, got "
                + ("table" if isinstance(items, dict) else type(items).__name__),
            )
            continue
        store = config.items_of(resource)
        checker = CHECKERS[resource]
        for index, raw in enumerate(items, start=1):
            if not isinstance(raw, dict):
                issue(
                    resource,
                    f"arr_{index}",
                    "",
                    f"invalid item data of [{resource}/{index}], val: "
                    f"{json.dumps(raw, default=str)}, it should be an object",
                    index=index,
                )
                continue
            conf = json_copy(raw)
            raw_id = conf.get("id")
            if raw_id is None and resource == "consumers":
                raw_id = conf.get("username")
            ident = item_id(raw_id) if raw_id is not None else f"arr_{index}"
            problems = checker(conf, catalog)
            for p in problems:
                target = config.warnings if p.warning else issues
                target.append(make(resource, ident, p.path, p.message, p.detail, index))
            if ident in store:
                issue(
                    resource,
                    ident,
                    "id",
                    f"duplicate id [{ident}] in {resource}: items {store[ident].seq} and {index}",
                    index=index,
                )
                continue
            if resource != "consumers" or "id" in conf:
                conf["id"] = ident
            store[ident] = Item(ident, index, conf)

    for resource, fld, target_kind, name in REFERENCES:
        targets = config.items_of(target_kind)
        for item in config.items_of(resource).values():
            ref = item.conf.get(fld)
            if ref is None:
                continue
            ref_id = item_id(ref)
            if ref_id not in targets:
                issue(
                    resource,
                    item.id,
                    fld,
                    f"failed to fetch {name} info by {name} id [{ref_id}], response code: 404",
                    index=item.seq,
                )

    if issues:
        raise ConfigError(issues)
    return config
