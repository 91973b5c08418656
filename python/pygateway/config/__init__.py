"""pygateway's control plane: configuration parsing, validation and compilation.

Pure Python (PyYAML only); nothing here imports the Rust extension.

* :mod:`.standalone` loads APISIX's ``apisix.yaml`` / ``apisix.json`` into a :class:`Config`;
* :mod:`.compile` turns a Config into the snapshot the data plane consumes, and diffs;
* :mod:`.node` is the gateway's own settings file;
* :mod:`.schema`, :mod:`.validator`, :mod:`.expr`, :mod:`.plugins`, :mod:`.resources` are
  the building blocks (APISIX schemas, a JSON-Schema validator with APISIX's wording,
  lua-resty-expr, the plugin catalogue hook, per-item checks).
"""

from __future__ import annotations

from .compile import ChangeSet, Snapshot, compile_config, diff, full
from .errors import ConfigError, ConfigIssue
from .expr import ExprError, evaluate
from .node import NodeConfig, load_node_config
from .plugins import NO_PLUGINS, PluginCatalog
from .standalone import Config, Item, build_config, load_standalone, parse_standalone
from .validator import SchemaError, validate

__all__ = [
    "NO_PLUGINS",
    "ChangeSet",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ExprError",
    "Item",
    "NodeConfig",
    "PluginCatalog",
    "SchemaError",
    "Snapshot",
    "build_config",
    "compile_config",
    "diff",
    "evaluate",
    "full",
    "load_node_config",
    "load_standalone",
    "parse_standalone",
    "validate",
]
