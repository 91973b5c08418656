"""JSON schemas of the APISIX 3.x resources pygateway understands.

Transcribed field by field from APISIX's ``apisix/schema_def.lua`` so that the same
documents pass and fail, with the same messages (see :mod:`pygateway.config.validator`).
Fields pygateway cannot honour (Lua code, service discovery, ...) stay in the schema so
that they are recognised, and are refused afterwards with a clear message by
:mod:`pygateway.config.resources`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CONSUMER",
    "CONSUMER_GROUP",
    "CREDENTIAL",
    "GLOBAL_RULE",
    "HOST_DEF",
    "ID_SCHEMA",
    "METHODS",
    "PLUGINS",
    "PLUGINS_LIST",
    "PLUGIN_CONFIG",
    "PLUGIN_INJECTED_META",
    "PLUGIN_METADATA",
    "ROUTE",
    "SCHEMAS",
    "SERVICE",
    "TIMEOUT",
    "UPSTREAM",
]

JSON = dict[str, Any]

ID_SCHEMA: JSON = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-zA-Z0-9-_.]+$"},
        {"type": "integer", "minimum": 1},
    ]
}

HOST_DEF_PATTERN = r"^\*$|^\*?[0-9a-zA-Z-._\[\]:]+$"
HOST_DEF: JSON = {"type": "string", "pattern": HOST_DEF_PATTERN}

_IPV4_SEG = "([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])"
_IPV4_DEF = r"\.".join([_IPV4_SEG] * 4)
_IPV6_DEF = "([a-fA-F0-9]{0,4}:){1,8}(:[a-fA-F0-9]{0,4}){0,8}([a-fA-F0-9]{0,4})?"

IP_DEF: list[JSON] = [
    {"title": "IPv4", "type": "string", "format": "ipv4"},
    {"title": "IPv4/CIDR", "type": "string", "pattern": "^" + _IPV4_DEF + "/([12]?[0-9]|3[0-2])$"},
    {"title": "IPv6", "type": "string", "format": "ipv6"},
    {"title": "IPv6/CIDR", "type": "string", "pattern": "^" + _IPV6_DEF + "/[0-9]{1,3}$"},
]

TIMESTAMP_DEF: JSON = {"type": "integer"}

REMOTE_ADDR_DEF: JSON = {"description": "client IP", "type": "string", "anyOf": IP_DEF}

LABEL_VALUE_DEF: JSON = {
    "description": "value of label",
    "type": "string",
    "pattern": r"^\S+$",
    "maxLength": 256,
    "minLength": 1,
}

LABELS_DEF: JSON = {
    "description": "key/value pairs to specify attributes",
    "type": "object",
    "patternProperties": {".*": LABEL_VALUE_DEF},
}

RULE_NAME_DEF: JSON = {"type": "string", "maxLength": 256, "minLength": 1}

DESC_DEF: JSON = {"type": "string", "maxLength": 256}

TIMEOUT: JSON = {
    "type": "object",
    "properties": {
        "connect": {"type": "number", "exclusiveMinimum": 0},
        "send": {"type": "number", "exclusiveMinimum": 0},
        "read": {"type": "number", "exclusiveMinimum": 0},
    },
    "required": ["connect", "send", "read"],
}

METHODS = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
]  # fmt: skip

METHOD_SCHEMA: JSON = {"description": "HTTP method", "type": "string", "enum": METHODS}

_STATUSES: JSON = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "integer", "minimum": 200, "maximum": 599},
    "uniqueItems": True,
}


def _statuses(default: list[int]) -> JSON:
    return {**_STATUSES, "default": default}


def _counter(minimum: int, default: int) -> JSON:
    return {"type": "integer", "minimum": minimum, "maximum": 254, "default": default}


HEALTH_CHECKER_ACTIVE: JSON = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["http", "https", "tcp"], "default": "http"},
        "timeout": {"type": "number", "default": 1},
        "concurrency": {"type": "integer", "default": 10},
        "host": HOST_DEF,
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "http_method": {"type": "string", "enum": METHODS, "default": "GET"},
        "http_path": {"type": "string", "default": "/"},
        "http_req_body": {"type": "string", "default": ""},
        "https_verify_certificate": {"type": "boolean", "default": True},
        "healthy": {
            "type": "object",
            "properties": {
                "interval": {"type": "integer", "minimum": 1, "default": 1},
                "http_statuses": _statuses([200, 302]),
                "successes": _counter(1, 2),
            },
        },
        "unhealthy": {
            "type": "object",
            "properties": {
                "interval": {"type": "integer", "minimum": 1, "default": 1},
                "http_statuses": _statuses([429, 404, 500, 501, 502, 503, 504, 505]),
                "http_failures": _counter(1, 5),
                "tcp_failures": _counter(1, 2),
                "timeouts": _counter(1, 3),
            },
        },
        "req_headers": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "uniqueItems": True},
        },
    },
}

HEALTH_CHECKER_PASSIVE: JSON = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["http", "https", "tcp"], "default": "http"},
        "healthy": {
            "type": "object",
            "properties": {
                "http_statuses": _statuses([*range(200, 209), 226, *range(300, 309)]),
                "successes": _counter(0, 5),
            },
        },
        "unhealthy": {
            "type": "object",
            "properties": {
                "http_statuses": _statuses([429, 500, 503]),
                "tcp_failures": _counter(0, 2),
                "timeouts": _counter(0, 7),
                "http_failures": _counter(0, 5),
            },
        },
    },
}

HEALTH_CHECKER: JSON = {
    "type": "object",
    "properties": {"active": HEALTH_CHECKER_ACTIVE, "passive": HEALTH_CHECKER_PASSIVE},
    "anyOf": [{"required": ["active"]}, {"required": ["active", "passive"]}],
}

NODES_SCHEMA: JSON = {
    "anyOf": [
        {
            "type": "object",
            "patternProperties": {
                ".*": {"description": "weight of node", "type": "integer", "minimum": 0}
            },
        },
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "host": HOST_DEF,
                    "port": {
                        "description": "port of node",
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 65535,
                    },
                    "weight": {"description": "weight of node", "type": "integer", "minimum": 0},
                    "priority": {
                        "description": "priority of node",
                        "type": "integer",
                        "default": 0,
                    },
                    "metadata": {"description": "metadata of node", "type": "object"},
                },
                "required": ["host", "weight"],
            },
        },
    ]
}

CERTIFICATE_SCHEME: JSON = {"type": "string", "minLength": 128, "maxLength": 64 * 1024}
PRIVATE_KEY_SCHEMA: JSON = {"type": "string", "minLength": 64, "maxLength": 64 * 1024}

UPSTREAM: JSON = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "name": RULE_NAME_DEF,
        "desc": DESC_DEF,
        "labels": LABELS_DEF,
        "create_time": TIMESTAMP_DEF,
        "update_time": TIMESTAMP_DEF,
        "nodes": NODES_SCHEMA,
        "retries": {"type": "integer", "minimum": 0},
        "retry_timeout": {"type": "number", "minimum": 0},
        "timeout": TIMEOUT,
        "tls": {
            "type": "object",
            "properties": {
                "client_cert_id": ID_SCHEMA,
                "client_cert": CERTIFICATE_SCHEME,
                "client_key": PRIVATE_KEY_SCHEMA,
                "verify": {"type": "boolean", "default": False},
            },
            "dependencies": {
                "client_cert": {"required": ["client_key"]},
                "client_key": {"required": ["client_cert"]},
                "client_cert_id": {"not": {"required": ["client_cert", "client_key"]}},
            },
        },
        "keepalive_pool": {
            "type": "object",
            "properties": {
                "size": {"type": "integer", "default": 320, "minimum": 1},
                "idle_timeout": {"type": "number", "default": 60, "minimum": 0},
                "requests": {"type": "integer", "default": 1000, "minimum": 1},
            },
        },
        "type": {
            "description": "algorithms of load balancing",
            "type": "string",
            "default": "roundrobin",
        },
        "checks": HEALTH_CHECKER,
        "hash_on": {
            "type": "string",
            "default": "vars",
            "enum": ["vars", "header", "cookie", "consumer", "vars_combinations"],
        },
        "key": {"description": "the key of chash for dynamic load balancing", "type": "string"},
        "scheme": {
            "default": "http",
            "enum": ["grpc", "grpcs", "http", "https", "tcp", "tls", "udp", "kafka"],
        },
        "discovery_type": {"description": "discovery type", "type": "string"},
        "discovery_args": {
            "type": "object",
            "properties": {
                "namespace_id": {"type": "string"},
                "group_name": {"type": "string"},
            },
        },
        "pass_host": {
            "description": "mod of host passing",
            "type": "string",
            "enum": ["pass", "node", "rewrite"],
            "default": "pass",
        },
        "upstream_host": HOST_DEF,
        "service_name": {"type": "string", "maxLength": 256, "minLength": 1},
    },
    "oneOf": [{"required": ["nodes"]}, {"required": ["service_name", "discovery_type"]}],
    "additionalProperties": False,
}

UPSTREAM_HASH_VARS: JSON = {
    "type": "string",
    "pattern": (
        r"^((uri|server_name|server_addr|request_uri|remote_port"
        r"|remote_addr|query_string|host|hostname|mqtt_client_id)"
        r"|arg_[0-9a-zA-z_-]+)$"
    ),
}
UPSTREAM_HASH_HEADER: JSON = {"type": "string", "pattern": r"^[a-zA-Z0-9-_]+$"}
UPSTREAM_HASH_VARS_COMBINATIONS: JSON = {"type": "string"}

PLUGINS: JSON = {"type": "object"}

_SCRIPT: JSON = {"type": "string", "minLength": 10, "maxLength": 102400}

_HOSTS: JSON = {"type": "array", "items": HOST_DEF, "minItems": 1, "uniqueItems": True}

ROUTE: JSON = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "name": RULE_NAME_DEF,
        "desc": DESC_DEF,
        "labels": LABELS_DEF,
        "create_time": TIMESTAMP_DEF,
        "update_time": TIMESTAMP_DEF,
        "uri": {"type": "string", "minLength": 1, "maxLength": 4096},
        "uris": {
            "type": "array",
            "items": {"description": "HTTP uri", "type": "string"},
            "minItems": 1,
            "uniqueItems": True,
        },
        "priority": {"type": "integer", "default": 0},
        "methods": {"type": "array", "items": METHOD_SCHEMA, "uniqueItems": True},
        "host": HOST_DEF,
        "hosts": _HOSTS,
        "remote_addr": REMOTE_ADDR_DEF,
        "remote_addrs": {
            "type": "array",
            "items": REMOTE_ADDR_DEF,
            "minItems": 1,
            "uniqueItems": True,
        },
        "timeout": TIMEOUT,
        "vars": {"type": "array"},
        "filter_func": {"type": "string", "minLength": 10, "pattern": r"^function"},
        "script": _SCRIPT,
        "script_id": ID_SCHEMA,
        "plugins": PLUGINS,
        "plugin_config_id": ID_SCHEMA,
        "upstream": UPSTREAM,
        "service_id": ID_SCHEMA,
        "upstream_id": ID_SCHEMA,
        "enable_websocket": {"description": "enable websocket for request", "type": "boolean"},
        "status": {
            "description": "route status, 1 to enable, 0 to disable",
            "type": "integer",
            "enum": [1, 0],
            "default": 1,
        },
    },
    "allOf": [
        {"oneOf": [{"required": ["uri"]}, {"required": ["uris"]}]},
        {
            "oneOf": [
                {"not": {"anyOf": [{"required": ["host"]}, {"required": ["hosts"]}]}},
                {"required": ["host"]},
                {"required": ["hosts"]},
            ]
        },
        {
            "oneOf": [
                {"not": {"anyOf": [{"required": ["remote_addr"]}, {"required": ["remote_addrs"]}]}},
                {"required": ["remote_addr"]},
                {"required": ["remote_addrs"]},
            ]
        },
    ],
    "anyOf": [
        {"required": ["plugins", "uri"]},
        {"required": ["upstream", "uri"]},
        {"required": ["upstream_id", "uri"]},
        {"required": ["service_id", "uri"]},
        {"required": ["plugins", "uris"]},
        {"required": ["upstream", "uris"]},
        {"required": ["upstream_id", "uris"]},
        {"required": ["service_id", "uris"]},
        {"required": ["script", "uri"]},
        {"required": ["script", "uris"]},
    ],
    "not": {
        "anyOf": [
            {"required": ["script", "plugins"]},
            {"required": ["script", "plugin_config_id"]},
        ]
    },
    "additionalProperties": False,
}

SERVICE: JSON = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "name": RULE_NAME_DEF,
        "desc": DESC_DEF,
        "labels": LABELS_DEF,
        "create_time": TIMESTAMP_DEF,
        "update_time": TIMESTAMP_DEF,
        "plugins": PLUGINS,
        "upstream": UPSTREAM,
        "upstream_id": ID_SCHEMA,
        "script": _SCRIPT,
        "enable_websocket": {"description": "enable websocket for request", "type": "boolean"},
        "hosts": _HOSTS,
    },
    "additionalProperties": False,
}

CONSUMER: JSON = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "username": {
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "pattern": r"^[a-zA-Z0-9_\-]+$",
        },
        "desc": DESC_DEF,
        "labels": LABELS_DEF,
        "create_time": TIMESTAMP_DEF,
        "update_time": TIMESTAMP_DEF,
        "group_id": ID_SCHEMA,
        "plugins": PLUGINS,
    },
    "required": ["username"],
    "additionalProperties": False,
}

# A consumer's credential (``/consumers/<username>/credentials/<id>``): one auth plugin.
CREDENTIAL: JSON = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "name": RULE_NAME_DEF,
        "desc": DESC_DEF,
        "labels": LABELS_DEF,
        "create_time": TIMESTAMP_DEF,
        "update_time": TIMESTAMP_DEF,
        "plugins": {"type": "object", "maxProperties": 1},
    },
    "additionalProperties": False,
}

GLOBAL_RULE: JSON = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "create_time": TIMESTAMP_DEF,
        "update_time": TIMESTAMP_DEF,
        "plugins": PLUGINS,
    },
    "required": ["id", "plugins"],
    "additionalProperties": False,
}

# `plugins:` of apisix.yaml. (APISIX's own copy misplaces `additionalProperties = false`
# inside `properties`, so extra keys are in fact accepted; we keep that behaviour.)
PLUGINS_LIST: JSON = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "stream": {"type": "boolean"},
        },
        "required": ["name"],
    },
}

PLUGIN_CONFIG: JSON = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "name": {"type": "string"},
        "desc": DESC_DEF,
        "labels": LABELS_DEF,
        "create_time": TIMESTAMP_DEF,
        "update_time": TIMESTAMP_DEF,
        "plugins": PLUGINS,
    },
    "required": ["id", "plugins"],
    "additionalProperties": False,
}

CONSUMER_GROUP: JSON = {
    "type": "object",
    "properties": {
        "id": ID_SCHEMA,
        "name": RULE_NAME_DEF,
        "desc": DESC_DEF,
        "labels": LABELS_DEF,
        "create_time": TIMESTAMP_DEF,
        "update_time": TIMESTAMP_DEF,
        "plugins": PLUGINS,
    },
    "required": ["id", "plugins"],
    "additionalProperties": False,
}

# An item of `plugin_metadata:`: the id is the plugin name, the other keys are the
# plugin's metadata (checked by the plugin catalogue).
PLUGIN_METADATA: JSON = {
    "type": "object",
    "properties": {"id": {"type": "string", "minLength": 1}},
    "required": ["id"],
}

# `_meta`, injected by APISIX into every plugin's schema.
PLUGIN_INJECTED_META: JSON = {
    "type": "object",
    "properties": {
        "disable": {"type": "boolean"},
        "error_response": {"oneOf": [{"type": "string"}, {"type": "object"}]},
        "priority": {"description": "priority of plugins by customized order", "type": "integer"},
        "filter": {
            "description": "filter determines whether the plugin needs to be executed at runtime",
            "type": "array",
        },
        "pre_function": {"type": "string"},
    },
    "additionalProperties": False,
}

SCHEMAS: dict[str, JSON] = {
    "routes": ROUTE,
    "services": SERVICE,
    "upstreams": UPSTREAM,
    "consumers": CONSUMER,
    "consumer_groups": CONSUMER_GROUP,
    "plugin_configs": PLUGIN_CONFIG,
    "global_rules": GLOBAL_RULE,
    "plugin_metadata": PLUGIN_METADATA,
    "credentials": CREDENTIAL,
}
