"""A small JSON-Schema validator that speaks api7/jsonschema's error wording.

APISIX validates its configuration with api7/jsonschema (a code-generating Lua validator);
users know its messages (``property "uri" validation failed: wrong type: expected string,
got number``).  This module re-implements the keywords APISIX's schemas use, in the same
order, with the same wording, and additionally records the JSON path of the failing value.

Like the Lua library, validation stops at the first error and fills ``default`` values of
absent properties in place (callers validate a copy when they need the original).

Deliberate differences: values are typed the Python way (a ``dict`` is an object, a
``list`` an array; Lua cannot tell an empty object from an empty array), and ``None`` is
reported as ``null`` (Lua would say ``userdata``).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Union

__all__ = [
    "PathItem",
    "SchemaError",
    "format_path",
    "is_valid",
    "lua_number",
    "lua_quote",
    "lua_type",
    "validate",
]

PathItem = Union[str, int]
Schema = Mapping[str, Any]


@dataclass
class SchemaError(Exception):
    """A validation failure.

    ``reason`` is the innermost message (``expected 0 to be greater than 0``); ``frames``
    the wording api7/jsonschema puts in front of it while unwinding (``property "timeout"
    validation failed: ``), outermost first, each with the path segment it stands for
    (a property name, a 0-based item index, or None for ``allOf 1 failed: ``...).
    """

    reason: str
    frames: list[tuple[PathItem | None, str]] = field(default_factory=list)

    @property
    def path(self) -> list[PathItem]:
        return [seg for seg, _ in self.frames if seg is not None]

    @property
    def message(self) -> str:
        """The full api7/jsonschema message, exactly as APISIX reports it."""
        return "".join(prefix for _, prefix in self.frames) + self.reason

    @property
    def detail(self) -> str:
        """The message relative to :attr:`path` (prefixes naming path segments dropped)."""
        last = -1
        for i, (seg, _) in enumerate(self.frames):
            if seg is not None:
                last = i
        return "".join(prefix for _, prefix in self.frames[last + 1 :]) + self.reason

    def __str__(self) -> str:
        return self.message

    def nest(self, segment: PathItem | None, prefix: str) -> SchemaError:
        self.frames.insert(0, (segment, prefix))
        return self


def lua_type(value: object) -> str:
    """Name of the Lua type a JSON value would have (as api7/jsonschema reports it)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (dict, list, tuple)):
        return "table"
    if value is None:
        return "null"
    return type(value).__name__


def lua_number(value: object) -> str:
    """Format a number like LuaJIT's ``tostring`` (``%.14g``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) < 10**15:
            return str(value)
        return f"{value:.14g}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan" if math.copysign(1.0, value) > 0 else "-nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.14g}"
    return str(value)


def lua_quote(text: str) -> str:
    """Lua's ``string.format("%q", text)``."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\0":
            out.append("\\0")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_path(path: Sequence[PathItem]) -> str:
    """``["upstream", "nodes", 0, "port"]`` -> ``upstream.nodes[0].port``."""
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif out == "":
            out = seg
        else:
            out += "." + seg
    return out


@lru_cache(maxsize=512)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _is_integer(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer()


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_ok(name: str, value: object) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "number":
        return _is_number(value)
    if name == "integer":
        return _is_integer(value)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    raise ValueError(f"invalid JSON type: {name}")


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _deep_equal(a: object, b: object) -> bool:
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
        return False
    return _canonical(a) == _canonical(b)


def _format_ok(fmt: str, value: str) -> bool:
    try:
        if fmt == "ipv4":
            ipaddress.IPv4Address(value)
            return True
        if fmt == "ipv6":
            ipaddress.IPv6Address(value.split("%", 1)[0])
            return True
    except ValueError:
        return False
    if fmt == "cidr":
        try:
            ipaddress.ip_network(value, strict=False)
            return True
        except ValueError:
            return False
    return True


class _Fail(Exception):
    """Internal: a failed sub-schema check inside anyOf/oneOf/not (no message needed)."""


def validate(schema: Schema, value: Any, *, fill_defaults: bool = True) -> None:
    """Validate ``value`` against ``schema``; raise :class:`SchemaError` on the first error.

    ``default`` values of absent object properties are written into ``value`` when
    ``fill_defaults`` is true (as api7/jsonschema does).
    """
    _Validator(fill_defaults).check(schema, value)


def is_valid(schema: Schema, value: Any) -> bool:
    try:
        _Validator(False).check(schema, value)
    except SchemaError:
        return False
    return True


class _Validator:
    def __init__(self, fill_defaults: bool) -> None:
        self.fill = fill_defaults

    def matches(self, schema: Schema, value: Any) -> bool:
        try:
            self.check(schema, value)
        except SchemaError:
            return False
        return True

    def check(self, schema: Schema | bool, value: Any) -> None:
        if schema is True:
            return
        if schema is False:
            raise SchemaError("expect false always")
        assert isinstance(schema, Mapping)

        # -- type
        stype = schema.get("type")
        if isinstance(stype, str):
            if not _type_ok(stype, value):
                raise SchemaError(f"wrong type: expected {stype}, got {lua_type(value)}")
        elif isinstance(stype, list):
            if not any(_type_ok(t, value) for t in stype):
                raise SchemaError(
                    f"wrong type: expected one of {', '.join(stype)}, got {lua_type(value)}"
                )

        # -- object keywords
        if isinstance(value, dict) and any(
            k in schema
            for k in (
                "properties",
                "additionalProperties",
                "patternProperties",
                "minProperties",
                "maxProperties",
                "dependencies",
                "required",
            )
        ):
            self._check_object(schema, value)

        # -- array keywords
        if isinstance(value, list) and any(
            k in schema for k in ("items", "minItems", "maxItems", "uniqueItems")
        ):
            self._check_array(schema, value)

        # -- string keywords
        if isinstance(value, str):
            if "minLength" in schema and len(value) < schema["minLength"]:
                raise SchemaError(
                    f"string too short, expected at least {schema['minLength']}, got {len(value)}"
                )
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                raise SchemaError(
                    f"string too long, expected at most {schema['maxLength']}, got {len(value)}"
                )
            pattern = schema.get("pattern")
            if pattern is not None and not _compile(pattern).search(value):
                raise SchemaError(
                    f"failed to match pattern {lua_quote(pattern)} with {lua_quote(value)}"
                )

        # -- number keywords
        if _is_number(value):
            self._check_number(schema, value)

        # -- enum
        if "enum" in schema and not any(_deep_equal(value, e) for e in schema["enum"]):
            raise SchemaError("matches none of the enum values")

        # -- compound
        for i, sub in enumerate(schema.get("allOf", ()), start=1):
            try:
                self.check(sub, value)
            except SchemaError as err:
                raise err.nest(None, f"allOf {i} failed: ") from None

        if "anyOf" in schema:
            subs = schema["anyOf"]
            if not any(self.matches(sub, value) for sub in subs):
                reqs = [
                    json.dumps(sub["required"], separators=(",", ":"))
                    for sub in subs
                    if isinstance(sub, Mapping) and "required" in sub
                ]
                suffix = (": " + " or ".join(reqs)) if reqs else ""
                raise SchemaError("object matches none of the required" + suffix)

        if "oneOf" in schema:
            matched = 0
            for i, sub in enumerate(schema["oneOf"], start=1):
                if self.matches(sub, value):
                    if matched:
                        raise SchemaError(
                            "value should match only one schema, but matches both schemas "
                            f"{matched} and {i}"
                        )
                    matched = i
            if not matched:
                raise SchemaError("value should match only one schema, but matches none")

        if "if" in schema:
            if self.matches(schema["if"], value):
                if "then" in schema and not self.matches(schema["then"], value):
                    raise SchemaError("then clause did not match")
            elif "else" in schema and not self.matches(schema["else"], value):
                raise SchemaError("else clause did not match")

        if "not" in schema and self.matches(schema["not"], value):
            raise SchemaError("value wasn't supposed to match schema")

        fmt = schema.get("format")
        if isinstance(value, str) and fmt in ("ipv4", "ipv6", "cidr"):
            if not _format_ok(fmt, value):
                raise SchemaError(f"expect valid {fmt} format but got: {value}")

        if "const" in schema and not _deep_equal(value, schema["const"]):
            raise SchemaError("failed to check const value")

    def _check_number(self, schema: Schema, value: float) -> None:
        checks = (
            ("minimum", -1, "at least"),
            ("exclusiveMinimum", 0, "greater than"),
            ("maximum", 1, "at most"),
            ("exclusiveMaximum", 0, "smaller than"),
        )
        for key, _, words in checks:
            ref = schema.get(key)
            if ref is None or isinstance(ref, bool):
                continue
            if key == "minimum":
                failed = value < ref
            elif key == "exclusiveMinimum":
                failed = value <= ref
            elif key == "maximum":
                failed = value > ref
            else:
                failed = value >= ref
            if failed:
                raise SchemaError(f"expected {lua_number(value)} to be {words} {lua_number(ref)}")
        mof = schema.get("multipleOf")
        if mof:
            quotient = value / mof
            rounded = math.floor(quotient + 0.5)
            tol = 1e-12 * (1 if rounded == 0 else abs(rounded))
            if abs(quotient - rounded) > tol:
                raise SchemaError(
                    f"expected {lua_number(value)} to be a multiple of {lua_number(mof)}"
                )

    def _check_object(self, schema: Schema, value: dict[str, Any]) -> None:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        dependencies: Mapping[str, Any] = schema.get("dependencies") or {}
        required = list(schema.get("required") or [])

        for prop, sub in properties.items():
            if prop in value:
                try:
                    self.check(sub, value[prop])
                except SchemaError as err:
                    raise err.nest(
                        prop, f"property {lua_quote(prop)} validation failed: "
                    ) from None
                if prop in dependencies:
                    self._check_dependency(prop, dependencies[prop], value)
            elif prop in required:
                raise SchemaError(f"property {lua_quote(prop)} is required")
            if prop in required:
                required.remove(prop)
            if (
                self.fill
                and prop not in value
                and isinstance(sub, Mapping)
                and "default" in sub
                and sub["default"] is not None
            ):
                value[prop] = copy.deepcopy(sub["default"])

        for prop in required:
            if prop not in value:
                raise SchemaError(f"property {lua_quote(prop)} is required")

        for prop, dep in dependencies.items():
            if prop not in properties and prop in value:
                self._check_dependency(prop, dep, value)

        additional = schema.get("additionalProperties")
        patterns: Mapping[str, Any] = schema.get("patternProperties") or {}
        forbid = additional is not None and additional is not True
        if patterns or forbid:
            for prop, item in list(value.items()):
                matched = False
                for patt, sub in patterns.items():
                    if _compile(patt).search(prop):
                        try:
                            self.check(sub, item)
                        except SchemaError as err:
                            raise err.nest(
                                prop, f"failed to validate {prop} (matching {lua_quote(patt)}): "
                            ) from None
                        matched = True
                if forbid and prop not in properties and not matched:
                    if isinstance(additional, Mapping):
                        try:
                            self.check(additional, item)
                        except SchemaError as err:
                            raise err.nest(
                                prop, f"failed to validate additional property {prop}: "
                            ) from None
                    else:
                        raise SchemaError(f"additional properties forbidden, found {prop}")

        count = len(value)
        if "minProperties" in schema and count < schema["minProperties"]:
            raise SchemaError(
                f"expect object to have at least {schema['minProperties']} properties"
            )
        if "maxProperties" in schema and count > schema["maxProperties"]:
            raise SchemaError(f"expect object to have at most {schema['maxProperties']} properties")

    def _check_dependency(self, prop: str, dep: Any, value: dict[str, Any]) -> None:
        if isinstance(dep, list):
            for other in dep:
                if other not in value:
                    raise SchemaError(
                        f"property {lua_quote(other)} is required when {lua_quote(prop)} is set"
                    )
            return
        try:
            self.check(dep, value)
        except SchemaError as err:
            raise err.nest(
                None, f"failed to validate dependent schema for {lua_quote(prop)}: "
            ) from None

    def _check_array(self, schema: Schema, value: list[Any]) -> None:
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise SchemaError(f"expect array to have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(f"expect array to have at most {schema['maxItems']} items")
        items = schema.get("items")
        if isinstance(items, list):
            for i, sub in enumerate(items):
                if i >= len(value):
                    break
                try:
                    self.check(sub, value[i])
                except SchemaError as err:
                    raise err.nest(i, f"failed to validate item {i + 1}: ") from None
            extra = schema.get("additionalItems")
            if extra is False and len(value) > len(items):
                raise SchemaError("found unexpected extra items in array")
            if isinstance(extra, Mapping):
                for i in range(len(items), len(value)):
                    try:
                        self.check(extra, value[i])
                    except SchemaError as err:
                        raise err.nest(i, f"failed to validate additional item {i + 1}: ") from None
        elif items is not None:
            for i, item in enumerate(value):
                try:
                    self.check(items, item)
                except SchemaError as err:
                    raise err.nest(i, f"failed to validate item {i + 1}: ") from None
        if schema.get("uniqueItems"):
            seen: dict[str, int] = {}
            for i, item in enumerate(value, start=1):
                key = _canonical(item)
                if key in seen:
                    raise SchemaError(
                        f"expected unique items but items {seen[key]} and {i} are equal"
                    )
                seen[key] = i
