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

import ipaddress
import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Union

from .jsonvalue import json_copy

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


Check = Callable[[Any], None]
"""A compiled schema: returns when the value is valid, raises :class:`SchemaError` at the
first error (and, when compiled to fill defaults, fills them in place)."""

_COMPILED: dict[tuple[int, bool], tuple[Schema | bool, Check]] = {}
_COMPILED_MAX = 4096
_NO_DEFAULT = object()
_IMMUTABLE = (str, int, float, bool)


def validate(schema: Schema, value: Any, *, fill_defaults: bool = True) -> None:
    """Validate ``value`` against ``schema``; raise :class:`SchemaError` on the first error.

    ``default`` values of absent object properties are written into ``value`` when
    ``fill_defaults`` is true (as api7/jsonschema does).

    Each schema is compiled once (as api7/jsonschema generates code for it) into a tree of
    closures that test only the keywords it has; the schema must not change after its
    first use.
    """
    _compiled(schema, fill_defaults)(value)


def is_valid(schema: Schema, value: Any) -> bool:
    try:
        _compiled(schema, False)(value)
    except SchemaError:
        return False
    return True


def _compiled(schema: Schema | bool, fill: bool) -> Check:
    key = (id(schema), fill)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is schema:  # the entry holds the schema: its id is its own
        return hit[1]
    check = _Compiler(fill).node(schema)
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()
    _COMPILED[key] = (schema, check)
    return check


def _accept(value: Any) -> None:
    return None


def _reject(value: Any) -> None:
    raise SchemaError("expect false always")


def _matches(check: Check, value: Any) -> bool:
    try:
        check(value)
    except SchemaError:
        return False
    return True


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": _is_number,
    "integer": _is_integer,
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}

_OBJECT_KEYWORDS = (
    "properties",
    "additionalProperties",
    "patternProperties",
    "minProperties",
    "maxProperties",
    "dependencies",
    "required",
)
_ARRAY_KEYWORDS = ("items", "minItems", "maxItems", "uniqueItems")


def _type_test(name: str) -> Callable[[Any], bool]:
    test = _TYPE_TESTS.get(name)
    if test is None:
        raise ValueError(f"invalid JSON type: {name}")
    return test


def _sequence(steps: list[Check]) -> Check:
    if not steps:
        return _accept
    if len(steps) == 1:
        return steps[0]
    run = tuple(steps)

    def check(value: Any) -> None:
        for step in run:
            step(value)

    return check


class _Compiler:
    """Turns one schema (and its sub-schemas) into checks; keywords are tested in
    api7/jsonschema's order: type, object, array, string, number, enum, allOf, anyOf,
    oneOf, if/then/else, not, format, const."""

    def __init__(self, fill: bool) -> None:
        self.fill = fill
        self.memo: dict[int, Check] = {}  # sub-schemas shared within this schema

    def node(self, schema: Schema | bool) -> Check:
        if schema is True:
            return _accept
        if schema is False:
            return _reject
        assert isinstance(schema, Mapping)
        known = self.memo.get(id(schema))
        if known is not None:
            return known
        steps: list[Check] = []
        self._type(schema, steps)
        if any(k in schema for k in _OBJECT_KEYWORDS):
            steps.append(self._object(schema))
        if any(k in schema for k in _ARRAY_KEYWORDS):
            steps.append(self._array(schema))
        self._string(schema, steps)
        self._number(schema, steps)
        self._enum(schema, steps)
        self._compound(schema, steps)
        self._tail(schema, steps)
        check = _sequence(steps)
        self.memo[id(schema)] = check
        return check

    # -- type ------------------------------------------------------------------------

    def _type(self, schema: Schema, steps: list[Check]) -> None:
        stype = schema.get("type")
        if isinstance(stype, str):
            test = _type_test(stype)

            def type_one(value: Any) -> None:
                if not test(value):
                    raise SchemaError(f"wrong type: expected {stype}, got {lua_type(value)}")

            steps.append(type_one)
        elif isinstance(stype, list):
            tests = tuple(_type_test(t) for t in stype)
            names = ", ".join(stype)

            def type_any(value: Any) -> None:
                for t in tests:
                    if t(value):
                        return
                raise SchemaError(f"wrong type: expected one of {names}, got {lua_type(value)}")

            steps.append(type_any)

    # -- objects ---------------------------------------------------------------------

    def _object(self, schema: Schema) -> Check:
        properties: Mapping[str, Any] = schema.get("properties") or {}
        dependencies: Mapping[str, Any] = schema.get("dependencies") or {}
        required = list(schema.get("required") or [])
        props: list[tuple[str, Check, str, Check | None, str | None, Any]] = []
        for prop, sub in properties.items():
            default: Any = _NO_DEFAULT
            if (
                self.fill
                and isinstance(sub, Mapping)
                and "default" in sub
                and sub["default"] is not None
            ):
                default = sub["default"]
            props.append(
                (
                    prop,
                    self.node(sub),
                    f"property {lua_quote(prop)} validation failed: ",
                    self._dependency(prop, dependencies[prop]) if prop in dependencies else None,
                    f"property {lua_quote(prop)} is required" if prop in required else None,
                    default,
                )
            )
            if prop in required:
                required.remove(prop)
        others_required = [(p, f"property {lua_quote(p)} is required") for p in required]
        others_dependent = [
            (p, self._dependency(p, dep)) for p, dep in dependencies.items() if p not in properties
        ]
        additional = schema.get("additionalProperties")
        patterns = [
            (_compile(patt), self.node(sub), lua_quote(patt))
            for patt, sub in (schema.get("patternProperties") or {}).items()
        ]
        forbid = additional is not None and additional is not True
        extra = self.node(additional) if isinstance(additional, Mapping) else None
        scan = bool(patterns) or forbid
        min_props = schema.get("minProperties")
        max_props = schema.get("maxProperties")

        def check(value: Any) -> None:
            if not isinstance(value, dict):
                return
            for prop, sub, prefix, dep, missing, default in props:
                if prop in value:
                    try:
                        sub(value[prop])
                    except SchemaError as err:
                        raise err.nest(prop, prefix) from None
                    if dep is not None:
                        dep(value)
                    continue
                if missing is not None:
                    raise SchemaError(missing)
                if default is not _NO_DEFAULT:
                    value[prop] = default if isinstance(default, _IMMUTABLE) else json_copy(default)
            for prop, missing in others_required:
                if prop not in value:
                    raise SchemaError(missing)
            for prop, dep in others_dependent:
                if prop in value:
                    dep(value)
            if scan:
                for prop, item in list(value.items()):
                    matched = False
                    for rx, sub, quoted in patterns:
                        if rx.search(prop):
                            try:
                                sub(item)
                            except SchemaError as err:
                                raise err.nest(
                                    prop, f"failed to validate {prop} (matching {quoted}): "
                                ) from None
                            matched = True
                    if forbid and prop not in properties and not matched:
                        if extra is None:
                            raise SchemaError(f"additional properties forbidden, found {prop}")
                        try:
                            extra(item)
                        except SchemaError as err:
                            raise err.nest(
                                prop, f"failed to validate additional property {prop}: "
                            ) from None
            if min_props is not None and len(value) < min_props:
                raise SchemaError(f"expect object to have at least {min_props} properties")
            if max_props is not None and len(value) > max_props:
                raise SchemaError(f"expect object to have at most {max_props} properties")

        return check

    def _dependency(self, prop: str, dep: Any) -> Check:
        if isinstance(dep, list):
            needed = [(other, lua_quote(other)) for other in dep]
            quoted = lua_quote(prop)

            def check_list(value: dict[str, Any]) -> None:
                for other, other_quoted in needed:
                    if other not in value:
                        raise SchemaError(
                            f"property {other_quoted} is required when {quoted} is set"
                        )

            return check_list
        sub = self.node(dep)
        prefix = f"failed to validate dependent schema for {lua_quote(prop)}: "

        def check_schema(value: dict[str, Any]) -> None:
            try:
                sub(value)
            except SchemaError as err:
                raise err.nest(None, prefix) from None

        return check_schema

    # -- arrays ----------------------------------------------------------------------

    def _array(self, schema: Schema) -> Check:
        min_items = schema.get("minItems")
        max_items = schema.get("maxItems")
        items = schema.get("items")
        positional = [self.node(sub) for sub in items] if isinstance(items, list) else None
        every = self.node(items) if items is not None and positional is None else None
        extra = schema.get("additionalItems")
        extra_check = self.node(extra) if isinstance(extra, Mapping) else None
        unique = bool(schema.get("uniqueItems"))

        def check(value: Any) -> None:
            if not isinstance(value, list):
                return
            if min_items is not None and len(value) < min_items:
                raise SchemaError(f"expect array to have at least {min_items} items")
            if max_items is not None and len(value) > max_items:
                raise SchemaError(f"expect array to have at most {max_items} items")
            if positional is not None:
                for i, sub in enumerate(positional):
                    if i >= len(value):
                        break
                    try:
                        sub(value[i])
                    except SchemaError as err:
                        raise err.nest(i, f"failed to validate item {i + 1}: ") from None
                if extra is False and len(value) > len(positional):
                    raise SchemaError("found unexpected extra items in array")
                if extra_check is not None:
                    for i in range(len(positional), len(value)):
                        try:
                            extra_check(value[i])
                        except SchemaError as err:
                            raise err.nest(
                                i, f"failed to validate additional item {i + 1}: "
                            ) from None
            elif every is not None:
                for i, item in enumerate(value):
                    try:
                        every(item)
                    except SchemaError as err:
                        raise err.nest(i, f"failed to validate item {i + 1}: ") from None
            if unique:
                seen: dict[str, int] = {}
                for i, item in enumerate(value, start=1):
                    key = _canonical(item)
                    if key in seen:
                        raise SchemaError(
                            f"expected unique items but items {seen[key]} and {i} are equal"
                        )
                    seen[key] = i

        return check

    # -- strings and numbers ---------------------------------------------------------

    def _string(self, schema: Schema, steps: list[Check]) -> None:
        min_len = schema.get("minLength")
        max_len = schema.get("maxLength")
        pattern = schema.get("pattern")
        if min_len is None and max_len is None and pattern is None:
            return
        rx = _compile(pattern) if pattern is not None else None
        quoted = lua_quote(pattern) if pattern is not None else ""

        def check(value: Any) -> None:
            if not isinstance(value, str):
                return
            if min_len is not None and len(value) < min_len:
                raise SchemaError(
                    f"string too short, expected at least {min_len}, got {len(value)}"
                )
            if max_len is not None and len(value) > max_len:
                raise SchemaError(f"string too long, expected at most {max_len}, got {len(value)}")
            if rx is not None and not rx.search(value):
                raise SchemaError(f"failed to match pattern {quoted} with {lua_quote(value)}")

        steps.append(check)

    def _number(self, schema: Schema, steps: list[Check]) -> None:
        bounds: list[tuple[Callable[[Any, Any], bool], Any, str]] = []
        for key, failed, words in (
            ("minimum", operator.lt, "at least"),
            ("exclusiveMinimum", operator.le, "greater than"),
            ("maximum", operator.gt, "at most"),
            ("exclusiveMaximum", operator.ge, "smaller than"),
        ):
            ref = schema.get(key)
            if ref is not None and not isinstance(ref, bool):
                bounds.append((failed, ref, f"to be {words} {lua_number(ref)}"))
        mof = schema.get("multipleOf") or None
        if not bounds and mof is None:
            return

        def check(value: Any) -> None:
            if not _is_number(value):
                return
            for failed, ref, words in bounds:
                if failed(value, ref):
                    raise SchemaError(f"expected {lua_number(value)} {words}")
            if mof is not None:
                quotient = value / mof
                rounded = math.floor(quotient + 0.5)
                tol = 1e-12 * (1 if rounded == 0 else abs(rounded))
                if abs(quotient - rounded) > tol:
                    raise SchemaError(
                        f"expected {lua_number(value)} to be a multiple of {lua_number(mof)}"
                    )

        steps.append(check)

    # -- enum, compound, format, const -----------------------------------------------

    def _enum(self, schema: Schema, steps: list[Check]) -> None:
        if "enum" not in schema:
            return
        choices = list(schema["enum"])
        texts = frozenset(e for e in choices if type(e) is str)

        def check(value: Any) -> None:
            if type(value) is str:  # the common case: equal to a text choice, or to none
                if value in texts:
                    return
            elif any(_deep_equal(value, e) for e in choices):
                return
            raise SchemaError("matches none of the enum values")

        steps.append(check)

    def _compound(self, schema: Schema, steps: list[Check]) -> None:
        for i, sub in enumerate(schema.get("allOf", ()), start=1):
            steps.append(self._all_of(self.node(sub), f"allOf {i} failed: "))
        if "anyOf" in schema:
            subs = schema["anyOf"]
            any_of = tuple(self.node(sub) for sub in subs)
            reqs = [
                json.dumps(sub["required"], separators=(",", ":"))
                for sub in subs
                if isinstance(sub, Mapping) and "required" in sub
            ]
            message = "object matches none of the required" + (
                (": " + " or ".join(reqs)) if reqs else ""
            )

            def check_any(value: Any) -> None:
                for sub in any_of:
                    if _matches(sub, value):
                        return
                raise SchemaError(message)

            steps.append(check_any)
        if "oneOf" in schema:
            one_of = tuple(self.node(sub) for sub in schema["oneOf"])

            def check_one(value: Any) -> None:
                matched = 0
                for i, sub in enumerate(one_of, start=1):
                    if _matches(sub, value):
                        if matched:
                            raise SchemaError(
                                "value should match only one schema, but matches both schemas "
                                f"{matched} and {i}"
                            )
                        matched = i
                if not matched:
                    raise SchemaError("value should match only one schema, but matches none")

            steps.append(check_one)
        if "if" in schema:
            cond = self.node(schema["if"])
            then = self.node(schema["then"]) if "then" in schema else None
            other = self.node(schema["else"]) if "else" in schema else None

            def check_if(value: Any) -> None:
                if _matches(cond, value):
                    if then is not None and not _matches(then, value):
                        raise SchemaError("then clause did not match")
                elif other is not None and not _matches(other, value):
                    raise SchemaError("else clause did not match")

            steps.append(check_if)
        if "not" in schema:
            negated = self.node(schema["not"])

            def check_not(value: Any) -> None:
                if _matches(negated, value):
                    raise SchemaError("value wasn't supposed to match schema")

            steps.append(check_not)

    @staticmethod
    def _all_of(sub: Check, prefix: str) -> Check:
        def check(value: Any) -> None:
            try:
                sub(value)
            except SchemaError as err:
                raise err.nest(None, prefix) from None

        return check

    def _tail(self, schema: Schema, steps: list[Check]) -> None:
        fmt = schema.get("format")
        if fmt in ("ipv4", "ipv6", "cidr"):

            def check_format(value: Any) -> None:
                if isinstance(value, str) and not _format_ok(fmt, value):
                    raise SchemaError(f"expect valid {fmt} format but got: {value}")

            steps.append(check_format)
        if "const" in schema:
            const = schema["const"]

            def check_const(value: Any) -> None:
                if not _deep_equal(value, const):
                    raise SchemaError("failed to check const value")

            steps.append(check_const)
