//! The `vars` route condition: a compiled lua-resty-expr (v1) expression.
//!
//! Compilation follows lua-resty-expr's rules and error texts; evaluation
//! follows its Lua comparison semantics (numbers are doubles, `tonumber`
//! conversions for numeric operators, `nil` for an absent variable).

use crate::router::ipmatch::IpMatcher;
use crate::router::RequestVars;
use regex::{Regex, RegexBuilder};
use serde_json::Value;

/// Size limit for one compiled `~~`/`~*` pattern (bytes of compiled program).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Nesting limit for logical groups, so hostile configuration cannot
/// exhaust the stack.
const MAX_DEPTH: usize = 64;

/// A compiled `vars` expression.
#[derive(Debug, Clone)]
pub struct Expr {
    /// `None` for the empty expression `[]`, which always holds.
    root: Option<Node>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logic {
    And,
    Or,
    NotAnd,
    NotOr,
}

#[derive(Debug, Clone)]
enum Node {
    Group(Logic, Vec<Node>),
    Cmp(Cmp),
}

#[derive(Debug, Clone)]
struct Cmp {
    var: Box<str>,
    op: Op,
    /// The `!` form: the comparison result is inverted.
    negate: bool,
}

/// The right-hand value of `==` / `~=` after Lua type analysis.
#[derive(Debug, Clone)]
enum Rhs {
    /// JSON `null` (Lua `nil`): compares against an absent variable.
    Nil,
    Str(Box<str>),
    Num(f64),
    /// A boolean, array or object: never equal to a string variable.
    Other,
}

#[derive(Debug, Clone)]
enum Op {
    Eq(Rhs),
    Ne(Rhs),
    Gt(Option<f64>),
    Ge(Option<f64>),
    Lt(Option<f64>),
    Le(Option<f64>),
    Regex(Box<Regex>),
    In(Vec<Box<str>>),
    /// Never holds for string variables (see `eval`).
    Has,
    IpMatch(IpMatcher),
}

const OPERATORS: [&str; 11] = [
    "==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has", "ipmatch",
];

impl Expr {
    /// Compiles a `vars` value. The error is lua-resty-expr's message
    /// (without APISIX's `failed to validate the 'vars' expression: ` prefix).
    pub fn compile(rule: &Value) -> Result<Expr, String> {
        let Value::Array(items) = rule else {
            return Err("rule should be wrapped inside brackets".into());
        };
        if items.is_empty() {
            return Ok(Expr { root: None });
        }
        if !items[0].is_array() {
            match items[0].as_str().and_then(logic_op) {
                Some(_) => {}
                None => return Err("rule should be wrapped inside brackets".into()),
            }
        }
        Ok(Expr {
            root: Some(compile_rules(items, 0)?),
        })
    }

    /// Evaluates the expression against the request's variables.
    pub fn eval<V: RequestVars + ?Sized>(&self, req: &V) -> bool {
        match &self.root {
            None => true,
            Some(n) => eval_node(n, req),
        }
    }
}

fn logic_op(s: &str) -> Option<Logic> {
    match s.to_ascii_uppercase().as_str() {
        "AND" => Some(Logic::And),
        "OR" => Some(Logic::Or),
        "!AND" => Some(Logic::NotAnd),
        "!OR" => Some(Logic::NotOr),
        _ => None,
    }
}

fn compile_rules(rules: &[Value], depth: usize) -> Result<Node, String> {
    if depth > MAX_DEPTH {
        return Err("expression nested too deeply".into());
    }
    if rules.is_empty() {
        return Err("rule too short".into());
    }
    if rules[0].is_array() {
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            let Value::Array(sub) = r else {
                return Err("invalid expression".into());
            };
            out.push(compile_rules(sub, depth + 1)?);
        }
        return Ok(Node::Group(Logic::And, out));
    }
    if let Some(op) = rules[0].as_str().and_then(logic_op) {
        if rules.len() <= 2 {
            return Err("rule too short".into());
        }
        let mut out = Vec::with_capacity(rules.len() - 1);
        for r in &rules[1..] {
            let Value::Array(sub) = r else {
                return Err("invalid expression".into());
            };
            out.push(compile_rules(sub, depth + 1)?);
        }
        return Ok(Node::Group(op, out));
    }
    compile_cmp(rules).map(Node::Cmp)
}

/// Lua's `tostring` for the scalar JSON values that can stand where Lua
/// expects a string (an operator, a variable name).
fn lua_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(lua_number_text(n)),
        _ => None,
    }
}

fn lua_number_text(n: &serde_json::Number) -> String {
    match (n.as_i64(), n.as_f64()) {
        (Some(i), _) => i.to_string(),
        (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        (None, Some(f)) => f.to_string(),
        (None, None) => n.to_string(),
    }
}

fn compile_cmp(expr: &[Value]) -> Result<Cmp, String> {
    let negate = expr.len() == 4;
    let (l_v, op_v, r_v) = if negate {
        if expr[1].as_str() != Some("!") {
            return Err("bad 'not' expression".into());
        }
        (&expr[0], expr.get(2), expr.get(3))
    } else {
        (&expr[0], expr.get(1), expr.get(2))
    };

    let mut op = match op_v {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            lua_string(v)
                .ok_or_else(|| "invalid expression".to_string())?
                .to_lowercase(),
        ),
    };
    let mut rhs: Option<Value> = r_v.cloned();

    let known = |o: &Option<String>| o.as_deref().is_some_and(|o| OPERATORS.contains(&o));
    if rhs.is_none() && !known(&op) {
        // The two-element form `[var, value]` means `var == value`. As in
        // lua-resty-expr, the value has already been lower-cased above.
        match op.take() {
            Some(v) => rhs = Some(Value::String(v)),
            None => return Err("invalid expression".into()),
        }
        op = Some("==".into());
    }

    let var = lua_string(l_v).ok_or_else(|| "invalid expression".to_string())?;
    let Some(op) = op else {
        return Err("invalid expression".into());
    };
    let rhs = rhs.unwrap_or(Value::Null);

    let op = match op.as_str() {
        "==" => Op::Eq(to_rhs(&rhs)),
        "~=" => Op::Ne(to_rhs(&rhs)),
        ">" => Op::Gt(value_tonumber(&rhs)),
        ">=" => Op::Ge(value_tonumber(&rhs)),
        "<" => Op::Lt(value_tonumber(&rhs)),
        "<=" => Op::Le(value_tonumber(&rhs)),
        "~~" | "~*" => {
            let pat =
                lua_string(&rhs).ok_or_else(|| "invalid regex: expected a string".to_string())?;
            let re = RegexBuilder::new(&pat)
                .case_insensitive(op == "~*")
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("invalid regex '{pat}': {e}"))?;
            Op::Regex(Box::new(re))
        }
        "in" => Op::In(match &rhs {
            Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().map(Box::from))
                .collect(),
            _ => Vec::new(),
        }),
        "has" => Op::Has,
        "ipmatch" => {
            let list: Vec<&str> = match &rhs {
                Value::String(s) if !s.is_empty() => vec![s.as_str()],
                Value::Array(items) if !items.is_empty() => {
                    let mut out = Vec::with_capacity(items.len());
                    for it in items {
                        match it.as_str() {
                            Some(s) => out.push(s),
                            None => return Err(format!("invalid ip address: {it}")),
                        }
                    }
                    out
                }
                _ => return Err("invalid ip address".into()),
            };
            Op::IpMatch(IpMatcher::new(&list)?)
        }
        other => return Err(format!("invalid operator '{other}'")),
    };
    Ok(Cmp {
        var: var.into(),
        op,
        negate,
    })
}

fn to_rhs(v: &Value) -> Rhs {
    match v {
        Value::Null => Rhs::Nil,
        Value::String(s) => Rhs::Str(s.as_str().into()),
        Value::Number(n) => n.as_f64().map(Rhs::Num).unwrap_or(Rhs::Other),
        _ => Rhs::Other,
    }
}

fn value_tonumber(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => lua_tonumber(s),
        _ => None,
    }
}

/// Lua 5.1 `tonumber(string)`: surrounding whitespace allowed, decimal with
/// optional exponent, or hexadecimal `0x..`; no `inf`/`nan` words.
pub(crate) fn lua_tonumber(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    if t.is_empty() {
        return None;
    }
    let (neg, body) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let v = u128::from_str_radix(hex, 16).ok()? as f64;
        return Some(if neg { -v } else { v });
    }
    if !t
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    if !body
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == b'.')
    {
        return None;
    }
    t.parse::<f64>().ok()
}

fn eval_node<V: RequestVars + ?Sized>(node: &Node, req: &V) -> bool {
    match node {
        Node::Cmp(c) => eval_cmp(c, req),
        Node::Group(logic, items) => match logic {
            Logic::And => items.iter().all(|n| eval_node(n, req)),
            Logic::Or => items.iter().any(|n| eval_node(n, req)),
            Logic::NotAnd => !items.iter().all(|n| eval_node(n, req)),
            Logic::NotOr => !items.iter().any(|n| eval_node(n, req)),
        },
    }
}

fn eval_cmp<V: RequestVars + ?Sized>(c: &Cmp, req: &V) -> bool {
    let value = req.var(&c.var);
    let l = value.as_deref();
    compare(l, &c.op) != c.negate
}

fn compare(l: Option<&str>, op: &Op) -> bool {
    fn num(l: Option<&str>) -> Option<f64> {
        l.and_then(lua_tonumber)
    }
    match op {
        Op::Eq(r) => match r {
            Rhs::Nil => l.is_none(),
            Rhs::Str(s) => l == Some(&**s),
            Rhs::Num(n) => num(l) == Some(*n),
            Rhs::Other => false,
        },
        Op::Ne(r) => match r {
            Rhs::Nil => l.is_some(),
            Rhs::Str(s) => l != Some(&**s),
            Rhs::Num(n) => num(l) != Some(*n),
            Rhs::Other => true,
        },
        Op::Gt(r) => matches!((num(l), r), (Some(a), Some(b)) if a > *b),
        Op::Ge(r) => matches!((num(l), r), (Some(a), Some(b)) if a >= *b),
        Op::Lt(r) => matches!((num(l), r), (Some(a), Some(b)) if a < *b),
        Op::Le(r) => matches!((num(l), r), (Some(a), Some(b)) if a <= *b),
        Op::Regex(re) => l.is_some_and(|s| re.is_match(s)),
        Op::In(list) => l.is_some_and(|s| list.iter().any(|x| **x == *s)),
        // lua-resty-expr's `has` needs a table on the left; request variables are
        // strings, so (as in APISIX) it never holds for them.
        Op::Has => false,
        Op::IpMatch(m) => l.is_some_and(|s| m.matches_str(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::borrow::Cow;
    use std::collections::HashMap;
    use std::net::IpAddr;

    struct Vars(HashMap<&'static str, &'static str>);
    impl RequestVars for Vars {
        fn method(&self) -> &str {
            "GET"
        }
        fn host(&self) -> &str {
            ""
        }
        fn path(&self) -> &str {
            "/"
        }
        fn remote_addr(&self) -> Option<IpAddr> {
            None
        }
        fn var(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.get(name).map(|v| Cow::Borrowed(*v))
        }
    }

    fn vars(pairs: &[(&'static str, &'static str)]) -> Vars {
        Vars(pairs.iter().copied().collect())
    }

    fn ok(rule: Value, v: &Vars) -> bool {
        Expr::compile(&rule).unwrap().eval(v)
    }

    fn err(rule: Value) -> String {
        Expr::compile(&rule).unwrap_err()
    }

    #[test]
    fn equality_and_nil() {
        let v = vars(&[("arg_a", "1"), ("arg_s", "hello"), ("arg_n", "0x10")]);
        assert!(ok(json!([["arg_s", "==", "hello"]]), &v));
        assert!(!ok(json!([["arg_s", "==", "Hello"]]), &v));
        assert!(ok(json!([["arg_a", "==", 1]]), &v));
        assert!(ok(json!([["arg_a", "==", 1.0]]), &v));
        assert!(ok(json!([["arg_n", "==", 16]]), &v));
        assert!(!ok(json!([["arg_a", "==", "1.0"]]), &v));
        assert!(ok(json!([["http_x", "==", null]]), &v));
        assert!(!ok(json!([["arg_a", "==", null]]), &v));
        assert!(!ok(json!([["arg_a", "==", true]]), &v));
        assert!(ok(json!([["arg_a", "~=", "2"]]), &v));
        assert!(!ok(json!([["arg_a", "~=", 1]]), &v));
        assert!(ok(json!([["arg_s", "~=", 1]]), &v));
        assert!(ok(json!([["arg_a", "~=", null]]), &v));
        assert!(!ok(json!([["http_x", "~=", null]]), &v));
        assert!(ok(json!([["http_x", "~=", "a"]]), &v));
    }

    #[test]
    fn two_element_form_is_eq_and_lowercases_like_lua() {
        let v = vars(&[("arg_name", "jack"), ("arg_id", "5")]);
        assert!(ok(json!([["arg_name", "jack"]]), &v));
        // lua-resty-expr lower-cases the operator slot before reusing it as the value
        assert!(ok(json!([["arg_name", "JACK"]]), &v));
        assert!(ok(json!([["arg_id", 5]]), &v));
        assert!(!ok(json!([["arg_name", "rose"]]), &v));
        // `[var, "=="]` is `var == nil`
        assert!(ok(json!([["arg_zz", "=="]]), &v));
    }

    #[test]
    fn numeric_comparisons() {
        let v = vars(&[("arg_n", " 10 "), ("arg_s", "abc"), ("arg_e", "1e2")]);
        assert!(ok(json!([["arg_n", ">", 9]]), &v));
        assert!(!ok(json!([["arg_n", ">", 10]]), &v));
        assert!(ok(json!([["arg_n", ">=", "10"]]), &v));
        assert!(ok(json!([["arg_n", "<", 10.5]]), &v));
        assert!(ok(json!([["arg_n", "<=", 10]]), &v));
        assert!(ok(json!([["arg_e", "==", 100]]), &v));
        assert!(!ok(json!([["arg_s", ">", 1]]), &v));
        assert!(!ok(json!([["arg_s", "<", 1]]), &v));
        assert!(!ok(json!([["arg_missing", "<", 1]]), &v));
        assert!(!ok(json!([["arg_n", ">", "x"]]), &v));
        assert!(!ok(json!([["arg_n", ">", null]]), &v));
        assert_eq!(lua_tonumber("inf"), None);
        assert_eq!(lua_tonumber("nan"), None);
        assert_eq!(lua_tonumber("-0x1f"), Some(-31.0));
        assert_eq!(lua_tonumber("  .5 "), Some(0.5));
        assert_eq!(lua_tonumber("1 2"), None);
    }

    #[test]
    fn regex_ops() {
        let v = vars(&[("uri", "/Hello/World"), ("arg_x", "abc")]);
        assert!(ok(json!([["uri", "~~", "^/Hello/"]]), &v));
        assert!(!ok(json!([["uri", "~~", "^/hello/"]]), &v));
        assert!(ok(json!([["uri", "~*", "^/hello/"]]), &v));
        assert!(ok(json!([["uri", "~~", "World$"]]), &v));
        assert!(!ok(json!([["arg_missing", "~~", ".*"]]), &v));
        assert!(ok(json!([["arg_x", "!", "~~", "^b"]]), &v));
        assert!(!ok(json!([["arg_x", "!", "~~", "^a"]]), &v));
        assert!(err(json!([["uri", "~~", "("]])).starts_with("invalid regex"));
    }

    #[test]
    fn in_has_ipmatch() {
        let v = vars(&[
            ("arg_c", "red"),
            ("http_tags", "a, b,c"),
            ("remote_addr", "10.1.2.3"),
            ("http_v6", "2001:db8::9"),
        ]);
        assert!(ok(json!([["arg_c", "in", ["blue", "red"]]]), &v));
        assert!(!ok(json!([["arg_c", "in", ["blue"]]]), &v));
        assert!(!ok(json!([["arg_c", "in", "red"]]), &v));
        assert!(!ok(json!([["arg_missing", "in", ["red"]]]), &v));
        assert!(ok(json!([["arg_c", "!", "in", ["blue"]]]), &v));
        // as in APISIX: a string variable is not a list
        assert!(!ok(json!([["http_tags", "has", "b"]]), &v));
        assert!(ok(json!([["http_tags", "!", "HAS", "c"]]), &v));
        assert!(!ok(json!([["arg_missing", "has", "d"]]), &v));
        assert!(ok(json!([["remote_addr", "ipmatch", "10.0.0.0/8"]]), &v));
        assert!(ok(
            json!([["remote_addr", "ipmatch", ["1.1.1.1", "10.1.2.3"]]]),
            &v
        ));
        assert!(!ok(
            json!([["remote_addr", "ipmatch", "192.168.0.0/16"]]),
            &v
        ));
        assert!(ok(json!([["http_v6", "ipmatch", "2001:db8::/32"]]), &v));
        assert!(ok(
            json!([["remote_addr", "!", "ipmatch", "192.168.0.0/16"]]),
            &v
        ));
        assert!(!ok(json!([["arg_c", "ipmatch", "0.0.0.0/0"]]), &v));
        assert_eq!(
            err(json!([["remote_addr", "ipmatch", ""]])),
            "invalid ip address"
        );
        assert_eq!(
            err(json!([["remote_addr", "ipmatch", []]])),
            "invalid ip address"
        );
        assert_eq!(
            err(json!([["remote_addr", "ipmatch", "1.2.3.4/99"]])),
            "invalid ip address: 1.2.3.4/99"
        );
    }

    #[test]
    fn logical_groups() {
        let v = vars(&[("arg_a", "1"), ("arg_b", "2")]);
        let t = json!(["arg_a", "==", "1"]);
        let f = json!(["arg_b", "==", "9"]);
        assert!(ok(json!(["AND", t, t]), &v));
        assert!(!ok(json!(["AND", t, f]), &v));
        assert!(ok(json!(["OR", f, t]), &v));
        assert!(!ok(json!(["OR", f, f]), &v));
        assert!(ok(json!(["!AND", t, f]), &v));
        assert!(!ok(json!(["!AND", t, t]), &v));
        assert!(ok(json!(["!OR", f, f]), &v));
        assert!(!ok(json!(["!OR", t, f]), &v));
        assert!(ok(json!(["or", f, t]), &v));
        // nesting: list of rules containing groups
        assert!(ok(
            json!([t, ["OR", f, ["AND", t, ["arg_b", "==", "2"]]]]),
            &v
        ));
        assert!(!ok(
            json!([t, ["OR", f, ["!AND", t, ["arg_b", "==", "2"]]]]),
            &v
        ));
        assert!(ok(json!([]), &v));
    }

    #[test]
    fn compile_errors_use_lua_resty_expr_wording() {
        assert_eq!(err(json!([["arg_a", "=", "1"]])), "invalid operator '='");
        assert_eq!(
            err(json!([["arg_a", "MATCH", "1"]])),
            "invalid operator 'match'"
        );
        assert_eq!(
            err(json!([["arg_a", "!", "=", "1"]])),
            "invalid operator '='"
        );
        assert_eq!(
            err(json!([["arg_a", "not", "==", "1"]])),
            "bad 'not' expression"
        );
        assert_eq!(
            err(json!(["arg_a", "==", "1"])),
            "rule should be wrapped inside brackets"
        );
        assert_eq!(
            err(json!({"a": 1})),
            "rule should be wrapped inside brackets"
        );
        assert_eq!(err(json!(["AND", ["arg_a", "==", "1"]])), "rule too short");
        assert_eq!(err(json!([[]])), "rule too short");
        assert_eq!(err(json!([["arg_a"]])), "invalid expression");
        assert_eq!(err(json!([[1, 2, 3]])), "invalid operator '2'");
        assert_eq!(err(json!([["a", "==", "1"], "x"])), "invalid expression");
        assert_eq!(err(json!([["arg_a", "!", "~~"]])), "invalid operator '!'");
    }

    #[test]
    fn deep_nesting_is_rejected_not_overflowing() {
        let mut v = json!(["a", "==", "1"]);
        for _ in 0..200 {
            v = json!([v]);
        }
        assert!(Expr::compile(&v).is_err());
    }
}
