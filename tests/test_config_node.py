"""The node configuration file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pygateway.config import ConfigError, NodeConfig, load_node_config


def test_defaults() -> None:
    node = NodeConfig()
    assert node.listen == ["127.0.0.1:9080"]
    assert node.workers == (os.cpu_count() or 1)
    assert node.engine == "native" and node.debug is False
    assert node.routes is None and node.router == "radixtree_host_uri"
    assert node.plugins is None and node.plugin_paths == []
    assert node.trusted_addresses == [] and node.drain_timeout == 10
    assert node.admin == {} and node.etcd == {}


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("")
    assert load_node_config(path) == NodeConfig()


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        """
listen: ["0.0.0.0:9080", "[::]:9443"]
workers: 2
engine: python
debug: true
routes: apisix.yaml
router: radixtree_uri_with_parameter
plugins: [echo, limit-count]
plugin_paths: [/opt/plugins]
trusted_addresses: [10.0.0.0/8, "::1"]
drain_timeout: 2.5
admin: {listen: "127.0.0.1:9180"}
etcd: null
"""
    )
    node = load_node_config(path)
    assert node.listen_addresses() == [("0.0.0.0", 9080), ("::", 9443)]
    assert node.workers == 2 and node.engine == "python" and node.debug
    assert node.routes == str(tmp_path / "apisix.yaml")  # relative to the node file
    assert node.router == "radixtree_uri_with_parameter"
    assert node.plugins == ["echo", "limit-count"]
    assert node.plugin_paths == ["/opt/plugins"]
    assert node.drain_timeout == 2.5
    assert node.admin == {"listen": "127.0.0.1:9180"} and node.etcd == {}


def test_unknown_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("listen: ['1.2.3.4:80']\nworker: 4\n")
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    (issue,) = info.value.errors
    assert issue.path == "worker"
    assert issue.message.startswith('unknown key "worker"')
    assert str(issue).startswith('node worker: unknown key "worker"')


@pytest.mark.parametrize(
    ("data", "path", "message"),
    [
        ({"workers": 0}, "workers", "expected 0 to be at least 1"),
        ({"workers": "2"}, "workers", "wrong type: expected integer, got string"),
        ({"engine": "rust"}, "engine", "matches none of the enum values"),
        ({"router": "radixtree_uri"}, "router", "matches none of the enum values"),
        ({"debug": "yes"}, "debug", "wrong type: expected boolean, got string"),
        ({"listen": ["9080"]}, "listen[0]", 'invalid listen address "9080"'),
        ({"listen": []}, "listen", "expect array to have at least 1 items"),
        ({"trusted_addresses": ["10.0.0.0/33"]}, "trusted_addresses[0]", "invalid IP"),
        ({"drain_timeout": -1}, "drain_timeout", "expected -1 to be at least 0"),
        ({"plugins": [1]}, "plugins[0]", "wrong type: expected string, got number"),
        ({"admin": []}, "admin", "wrong type: expected object, got table"),
        (
            {"data_encryption": {"keyring": ["qeddd145sfvddff3", "short"]}},
            "data_encryption.keyring[1]",
            "expected a 16 byte (AES-128) or 32 byte (AES-256) key, got 5 bytes",
        ),
        (
            {"data_encryption": {"enable_encrypt_fields": "no"}},
            "data_encryption.enable_encrypt_fields",
            "wrong type: expected boolean, got string",
        ),
    ],
)
def test_invalid_values(data: dict[str, object], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_dict(data)
    (issue,) = info.value.errors
    assert issue.path == path
    assert issue.message.startswith(message)


def test_all_errors_reported() -> None:
    with pytest.raises(ConfigError) as info:
        NodeConfig.from_dict({"workers": 0, "engine": "x", "nope": 1})
    assert [e.path for e in info.value.errors] == ["workers", "engine", "nope"]


def test_merged_overrides() -> None:
    node = NodeConfig.from_dict({"workers": 4, "listen": ["0.0.0.0:80"]})
    merged = node.merged({"workers": 2, "debug": True, "routes": None, "listen": "127.0.0.1:81"})
    assert merged.workers == 2 and merged.debug is True
    assert merged.listen == ["127.0.0.1:81"]
    assert node.workers == 4  # unchanged
    with pytest.raises(ConfigError):
        node.merged({"engine": "bogus"})


def test_yaml_error_position(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("listen: [\n")
    with pytest.raises(ConfigError) as info:
        load_node_config(path)
    assert info.value.errors[0].line is not None
