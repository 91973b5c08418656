"""JSON-shaped values: decoding what others send (bounded), and copying what we pass around."""

from __future__ import annotations

import copy
import json
import math
from typing import Any, TypeVar

__all__ = ["MAX_DEPTH", "MAX_NODES", "TOO_DEEP", "check_value", "json_copy", "loads"]

T = TypeVar("T")

_SHARED = (str, int, float, bool, type(None))

MAX_DEPTH = 100
"""The deepest nesting of arrays and objects :func:`loads` accepts. Configs and request
bodies stay far below it; past it, every recursive walk (validation, copying, comparison)
would have to guard against Python's recursion limit."""

TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"

MAX_NODES = 10_000_000
"""The most values (scalars, lists and dicts) :func:`check_value` walks."""


def loads(raw: str | bytes | bytearray) -> Any:
    """:func:`json.loads` for what others send: refuses values nested deeper than
    :data:`MAX_DEPTH`, and numbers JSON cannot carry (``NaN``, ``Infinity``, or ``1e400``,
    which Python would read as infinite). Raises ValueError (``json.JSONDecodeError``, with
    its position, for malformed text)."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError(TOO_DEEP) from None
    check_value(value)
    return value


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON has no such numbers, and APISIX's encoder
    # refuses to write them.
    raise ValueError(f"invalid number {name}: JSON has no NaN or Infinity")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"invalid number {text}: out of range")
    return value


def check_value(value: Any) -> None:
    """Raise ValueError when ``value``'s lists and dicts nest deeper than :data:`MAX_DEPTH`,
    hold more than :data:`MAX_NODES` values (YAML aliases can multiply a small text), or
    it holds a float that is not finite (YAML's ``.inf`` and ``.nan``). Checked level by
    level, without recursion."""
    level: list[Any] = [value]
    depth, seen = 1, 0
    while level:
        seen += len(level)
        if seen > MAX_NODES:
            raise ValueError(f"more than {MAX_NODES} values")
        below: list[Any] = []
        for node in level:
            if isinstance(node, (dict, list)):
                if depth > MAX_DEPTH:
                    raise ValueError(TOO_DEEP)
                below.extend(node.values() if isinstance(node, dict) else node)
            elif isinstance(node, float) and not math.isfinite(node):
                raise ValueError(f"invalid number {node}: JSON has no NaN or Infinity")
        level = below
        depth += 1


def json_copy(value: T) -> T:
    """A deep copy of a JSON-shaped value: dicts and lists are new, immutable scalars are
    shared; anything else goes through :func:`copy.deepcopy`. About four times cheaper than
    ``deepcopy`` on decoded JSON, which has no cycles or shared parts for its memo to track."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [json_copy(v) for v in value]  # type: ignore[return-value]
    if isinstance(value, _SHARED):
        return value
    return copy.deepcopy(value)
