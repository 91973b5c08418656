"""Loading apisix.yaml / apisix.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pygateway.config import ConfigError, load_standalone, parse_standalone
from pygateway.config.errors import ConfigIssue
from pygateway.config.standalone import Config, substitute_env


class Catalog:
    def known(self, name: str) -> bool:
        return name in ("echo", "key-auth")

    def check(self, name: str, conf: dict[str, Any]) -> str | None:
        return None


def errors_of(text: str, **kw: Any) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        parse_standalone(text, **kw)
    return info.value.errors


MINIMAL = """
routes:
  -
    uri: /hello
    upstream:
        nodes:
            "127.0.0.1:1980": 1
        type: roundrobin
#END
"""


def test_minimal_example() -> None:
    config = parse_standalone(MINIMAL)
    assert list(config.routes) == ["arr_1"]
    item = config.routes["arr_1"]
    assert item.seq == 1
    assert item.conf["id"] == "arr_1"
    assert item.conf["uri"] == "/hello"
    assert item.conf["priority"] == 0  # default filled


def test_missing_end_flag(tmp_path: Path) -> None:
    path = tmp_path / "apisix.yaml"
    path.write_text(MINIMAL.replace("#END", ""))
    with pytest.raises(ConfigError) as info:
        load_standalone(path)
    (issue,) = info.value.errors
    assert issue.message == f"missing valid end flag in file {path}"
    assert str(issue) == f"missing valid end flag in file {path}"


def test_end_flag_must_be_at_the_end() -> None:
    errs = errors_of("routes: []\n#END\n" + "\n" * 12)
    assert errs[0].message == "missing valid end flag in file apisix.yaml"
    assert parse_standalone("routes: []\n#END   \n\n").routes == {}


@pytest.mark.parametrize("text", ["", "\n  \n", "#END", "#END\n"])
def test_empty_files_are_valid(text: str) -> None:
    config = parse_standalone(text)
    assert config == Config(source="apisix.yaml")


def test_load_json_without_end_flag(tmp_path: Path) -> None:
    path = tmp_path / "apisix.json"
    data = {
        "routes": [{"id": 1, "uri": "/a", "upstream_id": 7}],
        "upstreams": [{"id": 7, "nodes": {"a:1": 1}}],
    }
    path.write_text(json.dumps(data))
    config = load_standalone(path)
    assert list(config.routes) == ["1"]
    assert config.routes["1"].conf["id"] == "1"
    assert list(config.upstreams) == ["7"]


def test_json_syntax_error() -> None:
    (issue,) = errors_of('{"routes": [', fmt="json")
    assert issue.message.startswith("failed to decode json: ")
    assert issue.line == 1


def test_values_nested_too_deeply_are_a_config_error() -> None:
    """Past MAX_DEPTH (and past the parsers' own recursion) is a clear error, not a crash."""
    for depth in (150, 5000):
        nested = "[" * depth + "]" * depth
        (issue,) = errors_of(f'{{"routes": [{{"uri": "/a", "desc": {nested}}}]}}', fmt="json")
        assert issue.message == "failed to decode json: nested deeper than 100 levels"
        (issue,) = errors_of(f"routes:\n  - uri: /a\n    desc: {nested}\n#END\n")
        assert issue.message == "invalid YAML: nested deeper than 100 levels"


def test_yaml_syntax_error_has_position() -> None:
    (issue,) = errors_of("routes:\n  - uri: /a\n   bad: [\n#END\n")
    assert issue.line is not None and issue.column is not None
    assert issue.message.startswith("invalid YAML: ")
    assert str(issue).startswith(f"apisix.yaml:{issue.line}:{issue.column}: invalid YAML")


def test_yaml_duplicate_keys_rejected() -> None:
    (issue,) = errors_of("routes:\n  - uri: /a\n    uri: /b\n    upstream_id: 1\n#END\n")
    assert "duplicate key" in issue.message
    assert issue.line == 3


def test_env_substitution() -> None:
    text = """
routes:
  - uri: ${{URI}}
    priority: ${{PRIO:=7}}
    name: "${{NAME:= my route }}"
    upstream:
      nodes:
        "${{HOST}}:${{PORT:=80}}": 1
#END
"""
    config = parse_standalone(text, env={"URI": "/env", "HOST": "10.0.0.1"})
    conf = config.routes["arr_1"].conf
    assert conf["uri"] == "/env"
    assert conf["priority"] == 7  # YAML typing after substitution
    assert conf["name"] == "my route"
    assert conf["upstream"]["nodes"] == {"10.0.0.1:80": 1}
    (issue,) = errors_of(text, env={})
    assert issue.message == "failed to handle configuration: can't find environment variable URI"
    assert substitute_env("a ${{ X }} b", {"X": "1"}) == "a 1 b"


def test_env_substitution_json() -> None:
    text = (
        '{"routes": [{"uri": "${{URI}}", "priority": "${{P}}", "upstream_id": 1}],'
        ' "upstreams": [{"id": 1, "nodes": {"a:1": 1}}]}'
    )
    config = parse_standalone(text, fmt="json", env={"URI": "/j", "P": "3"})
    assert config.routes["arr_1"].conf["uri"] == "/j"
    assert config.routes["arr_1"].conf["priority"] == 3


def test_ids() -> None:
    text = """
routes:
  - uri: /a
    upstream_id: u1
  - id: 5
    uri: /b
    upstream_id: u1
  - uri: /c
    upstream_id: u1
upstreams:
  - id: u1
    nodes: {"a:80": 1}
consumers:
  - username: jack
plugin_metadata:
  - id: echo
    x: 1
#END
"""
    config = parse_standalone(text, catalog=Catalog())
    assert list(config.routes) == ["arr_1", "5", "arr_3"]
    assert [i.seq for i in config.routes.values()] == [1, 2, 3]
    assert list(config.consumers) == ["jack"]
    assert list(config.plugin_metadata) == ["echo"]


def test_duplicate_ids() -> None:
    text = "routes:\n  - {id: 1, uri: /a, plugins: {}}\n  - {id: '1', uri: /b, plugins: {}}\n#END\n"
    (issue,) = errors_of(text)
    assert issue.resource == "routes" and issue.id == "1"
    assert issue.message == "duplicate id [1] in routes: items 1 and 2"


def test_all_errors_are_collected() -> None:
    text = """
routes:
  - id: r1
    uri: 1
    upstream_id: u1
  - id: r2
    uri: /ok
    upstream_id: missing
  - id: r3
    uri: /x
    host: a.com
    hosts: [b.com]
    upstream_id: u1
  - id: r4
    uri: /v
    vars: [["arg_a", "=", "1"]]
    upstream_id: u1
  - id: r5
    uri: /t
    upstream:
      nodes: {"a:1": 1}
      timeout: {connect: 0, send: 1, read: 1}
upstreams:
  - id: u1
    nodes: {"a:1": 1}
    foo: bar
#END
"""
    errs = errors_of(text)
    by_id = {(e.resource, e.id): e for e in errs}
    assert len(errs) == 6
    e = by_id[("routes", "r1")]
    assert e.path == "uri"
    assert e.message == (
        'invalid configuration: property "uri" validation failed: '
        "wrong type: expected string, got number"
    )
    assert (e.line, e.column) == (3, 5)  # where the item starts
    assert str(e) == "apisix.yaml:3:5: routes[id=r1] uri: wrong type: expected string, got number"
    e = by_id[("routes", "r2")]
    assert e.message == "failed to fetch upstream info by upstream id [missing], response code: 404"
    assert str(e) == (
        "apisix.yaml:6:5: routes[id=r2] upstream_id: "
        "failed to fetch upstream info by upstream id [missing], response code: 404"
    )
    assert by_id[("routes", "r3")].message == "only one of host or hosts is allowed"
    assert by_id[("routes", "r4")].message == (
        "failed to validate the 'vars' expression: invalid operator '='"
    )
    assert str(by_id[("routes", "r5")]) == (
        "apisix.yaml:18:5: routes[id=r5] upstream.timeout.connect: expected 0 to be greater than 0"
    )
    assert str(by_id[("upstreams", "u1")]) == (
        "apisix.yaml:24:5: upstreams[id=u1]: additional properties forbidden, found foo"
    )
    kinds = sorted(e.resource for e in errs)
    assert kinds == ["routes"] * 5 + ["upstreams"]


def test_reference_wording() -> None:
    text = """
routes:
  - {id: 1, uri: /a, service_id: s9}
  - {id: 2, uri: /b, plugin_config_id: p9, upstream_id: u9}
services:
  - {id: s1, upstream_id: u8}
consumers:
  - {username: jack, group_id: g9}
#END
"""
    messages = sorted(e.message for e in errors_of(text))
    assert messages == [
        "failed to fetch consumer group info by consumer group id [g9], response code: 404",
        "failed to fetch plugin config info by plugin config id [p9], response code: 404",
        "failed to fetch service info by service id [s9], response code: 404",
        "failed to fetch upstream info by upstream id [u8], response code: 404",
        "failed to fetch upstream info by upstream id [u9], response code: 404",
    ]


def test_unknown_plugin_in_file() -> None:
    text = "routes:\n  - {id: 1, uri: /a, plugins: {key-auth: {}}}\n#END\n"
    (issue,) = errors_of(text)
    assert issue.message == "unknown plugin [key-auth]"
    assert issue.path == "plugins.key-auth"
    assert parse_standalone(text, catalog=Catalog()).routes["1"].conf["plugins"] == {"key-auth": {}}


def test_plugins_list_restricts_catalog() -> None:
    text = """
plugins:
  - name: echo
routes:
  - {id: 1, uri: /a, plugins: {key-auth: {}}}
#END
"""
    (issue,) = errors_of(text, catalog=Catalog())
    assert issue.message == "unknown plugin [key-auth]"
    ok = parse_standalone(text.replace("key-auth", "echo"), catalog=Catalog())
    assert ok.plugins == ["echo"]
    (issue,) = errors_of("plugins:\n  - name: nope\n#END\n", catalog=Catalog())
    assert issue.resource == "plugins" and issue.message == "unknown plugin [nope]"


@pytest.mark.parametrize("key", ["ssls", "stream_routes", "protos", "secrets"])
def test_unsupported_resources(key: str) -> None:
    (issue,) = errors_of(f"{key}:\n  - id: 1\n#END\n")
    assert issue.resource == key
    assert "not support" in issue.message


def test_unknown_top_level_key() -> None:
    (issue,) = errors_of("route:\n  - uri: /a\n#END\n")
    assert issue.message == 'unknown top-level key "route"'


def test_every_resource_kind() -> None:
    text = """
upstreams:
  - {id: u1, nodes: {"a:80": 1}}
services:
  - {id: s1, upstream_id: u1, hosts: [a.com], plugins: {echo: {}}}
plugin_configs:
  - {id: pc1, plugins: {echo: {}}}
consumer_groups:
  - {id: g1, plugins: {echo: {}}}
consumers:
  - {username: jack, group_id: g1, plugins: {key-auth: {key: k}}}
global_rules:
  - {id: 1, plugins: {echo: {}}}
plugin_metadata:
  - {id: echo, a: 1}
routes:
  - {id: r, uri: /a, service_id: s1, plugin_config_id: pc1}
#END
"""
    config = parse_standalone(text, catalog=Catalog())
    assert set(config.services) == {"s1"} and set(config.global_rules) == {"1"}
    assert set(config.consumer_groups) == {"g1"} and set(config.plugin_configs) == {"pc1"}
    (issue,) = errors_of("plugin_metadata:\n  - {id: nope}\n#END\n", catalog=Catalog())
    assert issue.message == "invalid plugin name"


def test_item_not_an_object() -> None:
    (issue,) = errors_of("routes:\n  - 5\n#END\n")
    assert issue.message == "invalid item data of [routes/1], val: 5, it should be an object"


def test_warnings_do_not_fail() -> None:
    text = "upstreams:\n  - {id: 1, nodes: {'a:1': 1}, checks: {active: {}}}\n#END\n"
    config = parse_standalone(text)
    assert [w.path for w in config.warnings] == ["checks"]


def test_issue_str_without_position() -> None:
    issue = ConfigIssue(
        "routes",
        "1",
        "upstream.timeout.connect",
        "invalid configuration: ...",
        "expected 0 to be greater than 0",
    )
    assert str(issue) == "routes[id=1] upstream.timeout.connect: expected 0 to be greater than 0"
    err = ConfigError([issue, ConfigIssue("", None, "", "boom", "boom")])
    assert str(err) == str(issue) + "\nboom"
