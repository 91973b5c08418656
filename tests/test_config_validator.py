"""The JSON-Schema validator speaks api7/jsonschema's wording."""

from __future__ import annotations

from typing import Any

import pytest
from pygateway.config.validator import SchemaError, format_path, is_valid, lua_quote, validate


def err(schema: dict[str, Any], value: Any) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        validate(schema, value)
    return info.value


def test_wrong_type() -> None:
    e = err({"type": "object", "properties": {"uri": {"type": "string"}}}, {"uri": 1})
    assert e.message == 'property "uri" validation failed: wrong type: expected string, got number'
    assert e.path == ["uri"]
    assert e.detail == "wrong type: expected string, got number"


@pytest.mark.parametrize(
    ("value", "got"), [([], "table"), ({}, "table"), (True, "boolean"), ("x", "string")]
)
def test_lua_type_names(value: Any, got: str) -> None:
    assert err({"type": "integer"}, value).message == f"wrong type: expected integer, got {got}"


def test_integer_accepts_integral_float_and_rejects_bool() -> None:
    validate({"type": "integer"}, 3.0)
    assert err({"type": "integer"}, 1.5).message == "wrong type: expected integer, got number"
    assert err({"type": "number"}, False).message == "wrong type: expected number, got boolean"


def test_multiple_types() -> None:
    e = err({"type": ["string", "integer"]}, [1])
    assert e.message == "wrong type: expected one of string, integer, got table"


def test_string_lengths() -> None:
    assert (
        err({"type": "string", "maxLength": 4096}, "x" * 4097).message
        == "string too long, expected at most 4096, got 4097"
    )
    assert (
        err({"type": "string", "minLength": 1}, "").message
        == "string too short, expected at least 1, got 0"
    )


def test_pattern_is_lua_quoted() -> None:
    e = err({"type": "string", "pattern": r"^\S+$"}, "a b")
    assert e.message == r'failed to match pattern "^\\S+$" with "a b"'
    assert lua_quote('a"b\\') == '"a\\"b\\\\"'


def test_numbers() -> None:
    assert err({"minimum": 1}, 0).message == "expected 0 to be at least 1"
    assert err({"exclusiveMinimum": 0}, 0).message == "expected 0 to be greater than 0"
    assert err({"maximum": 65535}, 70000).message == "expected 70000 to be at most 65535"
    assert err({"exclusiveMaximum": 1}, 1.5).message == "expected 1.5 to be smaller than 1"
    assert err({"multipleOf": 2}, 3).message == "expected 3 to be a multiple of 2"
    validate({"multipleOf": 0.01}, 1.13)


def test_enum_and_const() -> None:
    assert err({"enum": ["GET", "POST"]}, "get").message == "matches none of the enum values"
    assert err({"const": 1}, 2).message == "failed to check const value"


def test_additional_properties() -> None:
    schema = {"type": "object", "properties": {"a": {}}, "additionalProperties": False}
    assert err(schema, {"a": 1, "foo": 2}).message == "additional properties forbidden, found foo"
    schema2 = {"type": "object", "additionalProperties": {"type": "string"}}
    e = err(schema2, {"x": 1})
    assert e.message == (
        "failed to validate additional property x: wrong type: expected string, got number"
    )
    assert e.path == ["x"]


def test_pattern_properties() -> None:
    schema = {"type": "object", "patternProperties": {".*": {"type": "integer", "minimum": 0}}}
    e = err(schema, {"127.0.0.1:80": -1})
    assert e.message == (
        'failed to validate 127.0.0.1:80 (matching ".*"): expected -1 to be at least 0'
    )
    assert e.path == ["127.0.0.1:80"]


def test_required_and_dependencies() -> None:
    schema = {"type": "object", "properties": {"x": {}}, "required": ["x", "y"]}
    assert err(schema, {"y": 1}).message == 'property "x" is required'
    assert err(schema, {"x": 1}).message == 'property "y" is required'
    dep = {"type": "object", "dependencies": {"a": ["b"]}}
    assert err(dep, {"a": 1}).message == 'property "b" is required when "a" is set'
    dep2 = {"type": "object", "dependencies": {"a": {"required": ["c"]}}}
    assert (
        err(dep2, {"a": 1}).message
        == 'failed to validate dependent schema for "a": property "c" is required'
    )


def test_arrays() -> None:
    items = {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2}
    assert err(items, []).message == "expect array to have at least 1 items"
    assert err(items, ["a", "b", "c"]).message == "expect array to have at most 2 items"
    e = err(items, ["a", 2])
    assert e.message == "failed to validate item 2: wrong type: expected string, got number"
    assert e.path == [1]
    uniq = {"type": "array", "uniqueItems": True}
    assert err(uniq, ["a", "b", "a"]).message == "expected unique items but items 1 and 3 are equal"


def test_combinators() -> None:
    one = {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}
    assert err(one, {}).message == "value should match only one schema, but matches none"
    assert (
        err(one, {"a": 1, "b": 1}).message
        == "value should match only one schema, but matches both schemas 1 and 2"
    )
    any_ = {"anyOf": [{"required": ["a"]}, {"required": ["b", "c"]}]}
    assert err(any_, {}).message == 'object matches none of the required: ["a"] or ["b","c"]'
    assert err({"anyOf": [{"type": "string"}]}, 1).message == "object matches none of the required"
    assert (
        err({"allOf": [{}, {"type": "string"}]}, 1).message
        == "allOf 2 failed: wrong type: expected string, got number"
    )
    assert err({"not": {"type": "string"}}, "x").message == "value wasn't supposed to match schema"


def test_formats() -> None:
    validate({"type": "string", "format": "ipv4"}, "10.0.0.1")
    validate({"type": "string", "format": "ipv6"}, "::1")
    assert (
        err({"type": "string", "format": "ipv4"}, "10.0.0").message
        == "expect valid ipv4 format but got: 10.0.0"
    )
    assert not is_valid({"format": "ipv6"}, "1.2.3.4")


def test_defaults_are_filled() -> None:
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "integer", "default": 5},
            "pool": {"type": "object", "properties": {"size": {"default": 320}}},
            "l": {"default": [1, 2]},
        },
    }
    value: dict[str, Any] = {"pool": {}}
    validate(schema, value)
    assert value == {"a": 5, "pool": {"size": 320}, "l": [1, 2]}
    other: dict[str, Any] = {}
    validate(schema, other)
    assert other["l"] is not value["l"]
    untouched: dict[str, Any] = {}
    validate(schema, untouched, fill_defaults=False)
    assert untouched == {}


def test_nested_path_and_detail() -> None:
    schema = {
        "type": "object",
        "properties": {
            "nodes": {
                "type": "array",
                "items": {"type": "object", "properties": {"port": {"maximum": 65535}}},
            }
        },
    }
    e = err(schema, {"nodes": [{"port": 1}, {"port": 70000}]})
    assert format_path(e.path) == "nodes[1].port"
    assert e.detail == "expected 70000 to be at most 65535"
    assert e.message == (
        'property "nodes" validation failed: failed to validate item 2: '
        'property "port" validation failed: expected 70000 to be at most 65535'
    )
