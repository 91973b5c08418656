"""lua-resty-expr expressions (route ``vars``, plugin ``_meta.filter``): check and evaluate.

An expression is a list.  Its first element is either a logical operator (``"AND"``,
``"OR"``, ``"!AND"``, ``"!OR"``) followed by sub-expressions, or a sub-expression itself
(then all elements are ANDed).  A leaf is ``[var, op, value]``, ``[var, "!", op, value]``
(negated) or ``[var, value]`` (short for ``==``).

:func:`check` returns lua-resty-expr's error text (without APISIX's prefix
``failed to validate the 'vars' expression: ``, see :func:`vars_error`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

from .validator import lua_number

__all__ = ["OPERATORS", "Expr", "check", "compile_expr", "evaluate", "vars_error"]

OPERATORS = ("==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has", "ipmatch")
LOGIC_OPS = ("AND", "OR", "!AND", "!OR")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class ExprError(ValueError):
    """An invalid expression; ``str()`` is lua-resty-expr's wording."""


@dataclass(frozen=True)
class _Leaf:
    var: str
    op: str
    value: Any
    reverse: bool


@dataclass(frozen=True)
class _Group:
    logic: str
    items: tuple[_Leaf | _Group, ...]


Expr = Union[_Leaf, _Group, None]


def _lua_str(value: object) -> str | None:
    """``tostring`` for the values Lua's string.upper/lower accept (strings, numbers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return lua_number(value)
    return None


@lru_cache(maxsize=256)
def _regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE if ignore_case else 0)


def _networks(values: Sequence[object]) -> tuple[Network, ...]:
    nets: list[Network] = []
    for v in values:
        if not isinstance(v, str):
            raise ExprError(f"invalid ip address: {v}")
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise ExprError(f"invalid ip address: {v}") from None
    return tuple(nets)


def _compile_leaf(rule: Sequence[Any]) -> _Leaf:
    reverse = False
    if len(rule) == 4:
        if rule[1] != "!":
            raise ExprError("bad 'not' expression")
        reverse = True
        var, op_raw, value, has_value = rule[0], rule[2], rule[3], True
    else:
        var = rule[0] if len(rule) > 0 else None
        op_raw = rule[1] if len(rule) > 1 else None
        value = rule[2] if len(rule) > 2 else None
        has_value = len(rule) > 2

    op: str | None = None
    if op_raw is not None:
        op = _lua_str(op_raw)
        if op is None:
            raise ExprError("invalid expression")
        op = op.lower()

    if not has_value and op not in OPERATORS:
        # `[var, value]` means `==`; like lua-resty-expr the value has been lower-cased.
        if op is None:
            raise ExprError("invalid expression")
        value, op, has_value = op, "==", True

    if var is None or op is None:
        raise ExprError("invalid expression")
    if op not in OPERATORS:
        raise ExprError(f"invalid operator '{op}'")
    if not isinstance(var, str):
        raise ExprError("invalid expression")

    if op == "ipmatch":
        if value is None or value == "":
            raise ExprError("invalid ip address")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ExprError("invalid ip address")
        value = _networks(values)
    elif op in ("~~", "~*"):
        if not isinstance(value, str):
            raise ExprError(f"invalid regex for operator '{op}': expected a string")
        try:
            _regex(value, op == "~*")
        except re.error as err:
            raise ExprError(f"invalid regex '{value}': {err}") from None
    return _Leaf(var, op, value, reverse)


def _compile(rule: Any) -> _Leaf | _Group:
    if not isinstance(rule, list) or len(rule) == 0:
        if isinstance(rule, list):
            raise ExprError("rule too short")
        raise ExprError("invalid expression")
    if isinstance(rule[0], list):
        return _Group("AND", tuple(_compile(r) for r in rule))
    head = _lua_str(rule[0])
    if head is not None and head.upper() in LOGIC_OPS:
        if len(rule) <= 2:
            raise ExprError("rule too short")
        return _Group(head.upper(), tuple(_compile(r) for r in rule[1:]))
    return _compile_leaf(rule)


def compile_expr(rule: Any) -> Expr:
    """Compile an expression; raise :class:`ExprError`. ``None`` means "always true"."""
    if rule is None:
        raise ExprError("missing argument rule")
    if not isinstance(rule, list):
        raise ExprError("rule should be wrapped inside brackets")
    if len(rule) == 0:
        return None
    if not isinstance(rule[0], list):
        head = _lua_str(rule[0])
        if head is None or head.upper() not in LOGIC_OPS:
            raise ExprError("rule should be wrapped inside brackets")
    return _compile(rule)


def check(rule: Any) -> str | None:
    """Return lua-resty-expr's error for an invalid expression, ``None`` if it is valid."""
    try:
        compile_expr(rule)
    except ExprError as err:
        return str(err)
    return None


def vars_error(rule: Any) -> str | None:
    """Like :func:`check`, worded as APISIX reports it."""
    err = check(rule)
    if err is None:
        return None
    return "failed to validate the 'vars' expression: " + err


_NUM_RE = re.compile(r"^\s*[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)\s*$")
_HEX_RE = re.compile(r"^\s*[-+]?0[xX][0-9a-fA-F]+\s*$")


def _tonumber(value: object) -> float | None:
    """Lua's ``tonumber`` on a string or number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        if _NUM_RE.match(value):
            return float(value)
        if _HEX_RE.match(value):
            return float(int(value.strip(), 16))
    return None


def _lua_eq(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num):
        return a == b
    if isinstance(a, num) or isinstance(b, num):
        return False
    return a == b


def _compare(left: object, op: str, right: Any) -> bool:
    if op == "==":
        if isinstance(right, (int, float)) and not isinstance(right, bool):
            n = _tonumber(left)
            return n is not None and n == right
        return _lua_eq(left, right)
    if op == "~=":
        if isinstance(right, (int, float)) and not isinstance(right, bool):
            n = _tonumber(left)
            return n is None or n != right
        return not _lua_eq(left, right)
    if op in (">", ">=", "<", "<="):
        a, b = _tonumber(left), _tonumber(right)
        if a is None or b is None:
            return False
        if op == ">":
            return a > b
        if op == ">=":
            return a >= b
        if op == "<":
            return a < b
        return a <= b
    if op in ("~~", "~*"):
        if left is None or left is False:
            return False
        text = _lua_str(left)
        if text is None or not isinstance(right, str):
            return False
        return _regex(right, op == "~*").search(text) is not None
    if op == "in":
        return isinstance(right, list) and any(_lua_eq(left, v) for v in right)
    if op == "has":
        return isinstance(left, (list, tuple)) and any(_lua_eq(v, right) for v in left)
    if op == "ipmatch":
        if not isinstance(left, str):
            return False
        try:
            addr = ipaddress.ip_address(left)
        except ValueError:
            return False
        return any(addr.version == net.version and addr in net for net in right)
    return False


def _eval(node: _Leaf | _Group, lookup: Callable[[str], object | None]) -> bool:
    if isinstance(node, _Leaf):
        return _compare(lookup(node.var), node.op, node.value) != node.reverse
    if node.logic in ("AND", "!AND"):
        result = all(_eval(item, lookup) for item in node.items)
    else:
        result = any(_eval(item, lookup) for item in node.items)
    return not result if node.logic.startswith("!") else result


def evaluate(expr: Any, lookup: Callable[[str], object | None]) -> bool:
    """Evaluate an expression (raw list or the result of :func:`compile_expr`).

    ``lookup(name)`` returns the variable's value (``None`` when absent).  An empty
    expression is true.  Raises :class:`ExprError` if ``expr`` is invalid.
    """
    compiled = expr if isinstance(expr, (_Leaf, _Group)) else compile_expr(expr)
    if compiled is None:
        return True
    return _eval(compiled, lookup)
