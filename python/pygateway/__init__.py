"""pygateway: an APISIX-compatible API gateway you pip install.

A Rust data plane (hyper + tokio) proxies and routes; Python validates APISIX config and
runs the control plane. Start one in a few lines::

    from pygateway import Gateway

    with Gateway(config={"routes": [{"uri": "/*", "upstream": {"nodes": {"127.0.0.1:8080": 1}}}]},
                 listen=["127.0.0.1:0"]) as gw:
        print(gw.url)
"""

from __future__ import annotations

from ._version import __version__
from .config import ConfigError, ConfigIssue, NodeConfig, load_node_config
from .gateway import Gateway

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "Gateway",
    "NodeConfig",
    "__version__",
    "load_node_config",
]
