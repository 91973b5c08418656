"""lua-resty-expr: validation wording and evaluation."""

from __future__ import annotations

from typing import Any

import pytest
from pygateway.config.expr import ExprError, check, compile_expr, evaluate, vars_error


def ev(rule: Any, **variables: object) -> bool:
    return evaluate(rule, variables.get)


def test_invalid_operator_wording() -> None:
    assert vars_error([["arg_name", "=", "json"]]) == (
        "failed to validate the 'vars' expression: invalid operator '='"
    )
    assert check([["arg_name", "!", "=", "json"]]) == "invalid operator '='"


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        (["arg_name", "==", "json"], "rule should be wrapped inside brackets"),
        ("x", "rule should be wrapped inside brackets"),
        ([["a", "x", "==", "b"]], "bad 'not' expression"),
        ([["a"]], "invalid expression"),
        ([[]], "rule too short"),
        (["AND", ["a", "==", "b"]], "rule too short"),
        ([["a", "ipmatch", ""]], "invalid ip address"),
        ([["a", "ipmatch", ["1.2.3.999"]]], "invalid ip address: 1.2.3.999"),
    ],
)
def test_invalid(rule: Any, error: str) -> None:
    assert check(rule) == error


def test_bad_regex_rejected() -> None:
    err = check([["uri", "~~", "([a-z"]])
    assert err is not None and err.startswith("invalid regex '([a-z'")


def test_valid_forms() -> None:
    for rule in (
        [],
        [["arg_a", "==", "1"]],
        [["arg_a", "1"]],
        [["arg_a", "!", "~~", "^x"]],
        ["OR", ["arg_a", "==", "1"], ["arg_b", "IN", ["1", "2"]]],
        ["!AND", ["arg_a", "==", "1"], ["OR", ["arg_b", "has", "x"], ["c", "~*", "Y"]]],
        [["remote_addr", "ipmatch", ["10.0.0.0/8", "::1"]]],
        [["http_x", "==", None]],
    ):
        assert check(rule) is None, rule


def test_compare_operators() -> None:
    assert ev([["arg_a", "==", "x"]], arg_a="x")
    assert not ev([["arg_a", "==", "x"]], arg_a="y")
    assert ev([["arg_a", "==", 10]], arg_a="10")
    assert ev([["arg_a", "~=", 10]], arg_a="abc")
    assert ev([["arg_a", "~=", "x"]])
    assert ev([["arg_a", ">", 5]], arg_a="6")
    assert not ev([["arg_a", ">", 5]], arg_a="x")
    assert ev([["arg_a", ">=", "5"]], arg_a="5")
    assert ev([["arg_a", "<", 5.5]], arg_a="5")
    assert ev([["arg_a", "<=", 5]], arg_a="0x5")
    assert ev([["uri", "~~", "^/api/v[0-9]+"]], uri="/api/v2/x")
    assert not ev([["uri", "~~", "^/API"]], uri="/api")
    assert ev([["uri", "~*", "^/API"]], uri="/api")
    assert not ev([["uri", "~~", "x"]])
    assert ev([["arg_a", "in", ["1", "2"]]], arg_a="2")
    assert not ev([["arg_a", "in", ["1", "2"]]], arg_a="3")
    assert ev([["graphql_root_fields", "has", "owner"]], graphql_root_fields=["owner", "x"])
    assert ev([["remote_addr", "ipmatch", ["10.0.0.0/8"]]], remote_addr="10.1.2.3")
    assert not ev([["remote_addr", "ipmatch", "10.0.0.0/8"]], remote_addr="11.1.2.3")
    assert ev([["remote_addr", "ipmatch", "::1"]], remote_addr="::1")


def test_not_and_null() -> None:
    assert ev([["arg_a", "!", "==", "x"]], arg_a="y")
    assert not ev([["arg_a", "!", "==", "x"]], arg_a="x")
    assert ev([["http_x", "==", None]])
    assert not ev([["http_x", "==", None]], http_x="1")


def test_shorthand_is_equality_lowercased_like_lua() -> None:
    assert ev([["arg_a", "json"]], arg_a="json")
    # lua-resty-expr lower-cases the second element before using it as the value
    assert ev([["arg_a", "JSON"]], arg_a="json")


def test_logic() -> None:
    rule_or = ["OR", ["arg_a", "==", "1"], ["arg_b", "==", "1"]]
    assert ev(rule_or, arg_b="1")
    assert not ev(rule_or)
    assert ev(["!OR", ["arg_a", "==", "1"], ["arg_b", "==", "1"]])
    rule_and = ["AND", ["arg_a", "==", "1"], ["arg_b", "==", "1"]]
    assert ev(rule_and, arg_a="1", arg_b="1")
    assert not ev(rule_and, arg_a="1")
    assert ev(["!AND", ["arg_a", "==", "1"], ["arg_b", "==", "1"]], arg_a="1")
    assert ev([["arg_a", "==", "1"], ["arg_b", "==", "2"]], arg_a="1", arg_b="2")
    nested = ["AND", ["arg_a", "==", "1"], ["OR", ["arg_b", "==", "x"], ["arg_c", "==", "y"]]]
    assert ev(nested, arg_a="1", arg_c="y")
    assert not ev(nested, arg_a="1")
    assert ev([])


def test_compiled_reuse_and_errors() -> None:
    compiled = compile_expr([["arg_a", "==", "1"]])
    assert evaluate(compiled, {"arg_a": "1"}.get)
    with pytest.raises(ExprError):
        evaluate([["a", "=", "b"]], lambda name: None)
