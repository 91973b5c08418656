//! Rate limiting in the data plane: APISIX's limit-conn, limit-count and limit-req.
//!
//! The control plane validates the plugin confs (APISIX's schemas) and hands each route
//! the list of limiters that apply to it, global rules first, each with the object that
//! owns it (`routes/1`, `global_rules/g`). Here a conf becomes a [`Limiter`]; per request,
//! [`Limits::resolve`] reads the keys from the request (synchronously, while the request
//! view is borrowed) and [`Resolved::check`] asks the counters (local or Redis).
//!
//! Counter identity follows APISIX's `gen_limit_key`: owner, a hash of the plugin conf and
//! the key value, so changing the conf starts a new counter and saving the same conf again
//! keeps it; with `group` it is the group and the key value only.

pub mod local;
pub mod redis;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::StatusCode;
use serde::Deserialize;

use crate::config::{saturating, seconds};
use crate::router::{Expr, RequestVars};
use serde_json::Value;

use local::{CountState, LocalStore};
use redis::{Backend, Target};

/// APISIX priorities: limit-conn runs first, then limit-count, then limit-req.
pub const NAMES: [&str; 3] = ["limit-conn", "limit-count", "limit-req"];

/// One limiter plugin instance as the control plane sends it.
#[derive(Debug, Clone, Deserialize)]
pub struct LimiterSpec {
    /// Plugin name.
    pub name: String,
    /// The object whose conf this is (`routes/1`, `services/2`, `global_rules/g`).
    pub owner: String,
    /// The plugin conf.
    pub conf: Value,
    /// `_meta.filter`: the limiter runs only for requests matching this vars expression.
    #[serde(default)]
    pub filter: Option<Value>,
}

/// Header names of limit-count, from `plugin_metadata/limit-count`.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    limit: String,
    remaining: String,
    reset: String,
}

impl Default for HeaderNames {
    fn default() -> Self {
        HeaderNames {
            limit: "X-RateLimit-Limit".into(),
            remaining: "X-RateLimit-Remaining".into(),
            reset: "X-RateLimit-Reset".into(),
        }
    }
}

impl HeaderNames {
    /// From the plugin metadata object (missing fields keep their default).
    pub fn from_metadata(meta: Option<&Value>) -> Self {
        let mut names = HeaderNames::default();
        let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
        if let Some(v) = field("limit_header") {
            names.limit = v.to_owned();
        }
        if let Some(v) = field("remaining_header") {
            names.remaining = v.to_owned();
        }
        if let Some(v) = field("reset_header") {
            names.reset = v.to_owned();
        }
        names
    }
}

/// How the key is read from the request.
#[derive(Debug, Clone, PartialEq)]
enum KeySpec {
    Var(String),
    Combination(Vec<Piece>),
    Constant(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// `$name`, `${name}` or `${name ?? default}`.
    Var(String, Option<String>),
}

/// Text with its variables resolved, and how many resolved (APISIX `resolve_var`: a
/// variable that is absent or empty gives its default, else nothing).
fn render(pieces: &[Piece], vars: &dyn RequestVars) -> (String, usize) {
    let mut out = String::new();
    let mut resolved = 0;
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name, default) => match vars.var(name).filter(|v| !v.is_empty()) {
                Some(v) => {
                    resolved += 1;
                    out.push_str(&v);
                }
                None => {
                    if let Some(d) = default {
                        resolved += 1;
                        out.push_str(d);
                    }
                }
            },
        }
    }
    (out, resolved)
}

impl KeySpec {
    fn parse(key: &str, key_type: &str) -> Result<Self, String> {
        match key_type {
            "var" => Ok(KeySpec::Var(key.trim_start_matches('$').to_owned())),
            "constant" => Ok(KeySpec::Constant(key.to_owned())),
            "var_combination" => Ok(KeySpec::Combination(parse_combination(key))),
            other => Err(format!("unknown key_type {other:?}")),
        }
    }

    /// The key value; None when nothing resolved (the caller falls back to the client).
    fn resolve(&self, vars: &dyn RequestVars) -> Option<String> {
        match self {
            KeySpec::Constant(c) => Some(c.clone()),
            KeySpec::Var(name) => vars
                .var(name)
                .filter(|v| !v.is_empty())
                .map(Cow::into_owned),
            KeySpec::Combination(pieces) => {
                let (out, resolved) = render(pieces, vars);
                (resolved > 0).then_some(out)
            }
        }
    }
}

/// `"$remote_addr $http_x"` → pieces (APISIX `resolve_var`: `$name` or `${name}`).
fn parse_combination(s: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '$' {
            text.push(c);
            continue;
        }
        let rest = &s[i + 1..];
        let (name, used) = if let Some(inner) = rest.strip_prefix('{') {
            match inner.find('}') {
                Some(end) => (inner[..end].trim(), end + 2),
                None => ("", 0),
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(rest.len());
            (&rest[..end], end)
        };
        if name.is_empty() {
            text.push(c);
            continue;
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        let piece = match name.split_once("??") {
            Some((n, d)) => Piece::Var(n.trim().to_owned(), Some(d.trim().to_owned())),
            None => Piece::Var(name.to_owned(), None),
        };
        pieces.push(piece);
        // `used` counts bytes after the `$`: skip the characters that lie within them.
        while chars.peek().is_some_and(|(j, _)| *j <= i + used) {
            chars.next();
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// A number that may come from variables (`count: "$http_quota"`,
/// `"${http_quota ?? 10}"`, APISIX 3.16+).
#[derive(Debug, Clone, PartialEq)]
enum Amount {
    Fixed(f64),
    Template(Vec<Piece>),
}

impl Amount {
    fn parse(v: &Value, field: &str) -> Result<Self, String> {
        match v {
            Value::Number(n) => n
                .as_f64()
                .filter(|x| *x > 0.0)
                .map(Amount::Fixed)
                .ok_or_else(|| format!("{field} must be greater than 0")),
            // Text without variables is resolved like a template too (APISIX): "10" counts,
            // "1.5" fails each request, as in the python engine.
            Value::String(s) => Ok(match s.trim().parse::<f64>() {
                Ok(x) if x > 0.0 && x.fract() == 0.0 => Amount::Fixed(x),
                _ => Amount::Template(parse_combination(s)),
            }),
            _ => Err(format!("{field} must be a number or a string")),
        }
    }

    fn resolve(&self, vars: &dyn RequestVars) -> Option<f64> {
        match self {
            Amount::Fixed(x) => Some(*x),
            // APISIX: a positive integer once resolved, else the request fails.
            Amount::Template(pieces) => render(pieces, vars)
                .0
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0 && x.fract() == 0.0),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct PolicyConf {
    #[serde(default = "local_policy")]
    policy: String,
    #[serde(default)]
    redis_host: Option<String>,
    #[serde(default = "redis_port", deserialize_with = "saturating::u16")]
    redis_port: u16,
    #[serde(default)]
    redis_username: Option<String>,
    #[serde(default)]
    redis_password: Option<String>,
    #[serde(default, deserialize_with = "saturating::u32")]
    redis_database: u32,
    #[serde(default = "redis_timeout")]
    redis_timeout: f64,
    #[serde(default)]
    redis_ssl: bool,
    #[serde(default)]
    redis_ssl_verify: bool,
    #[serde(default)]
    redis_cluster_nodes: Vec<String>,
    #[serde(default)]
    redis_cluster_ssl: bool,
    #[serde(default)]
    redis_cluster_ssl_verify: bool,
    #[serde(default)]
    allow_degradation: bool,
}

fn local_policy() -> String {
    "local".into()
}
fn redis_port() -> u16 {
    6379
}
fn redis_timeout() -> f64 {
    1000.0
}
fn default_key() -> String {
    "remote_addr".into()
}
fn default_key_type() -> String {
    "var".into()
}
fn default_rejected() -> u16 {
    503
}
fn yes() -> bool {
    true
}

fn userinfo(user: &Option<String>, password: &Option<String>) -> String {
    match (user, password) {
        (_, None) => String::new(),
        (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
        (None, Some(p)) => format!(":{}@", enc(p)),
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Where the counters of one limiter live.
#[derive(Debug, Clone)]
enum Policy {
    Local,
    Redis(Arc<Backend>),
}

impl PolicyConf {
    fn build(&self) -> Result<Policy, String> {
        let timeout = seconds((self.redis_timeout / 1000.0).max(0.001));
        match self.policy.as_str() {
            "local" => Ok(Policy::Local),
            "redis" => {
                let host = self
                    .redis_host
                    .as_deref()
                    .ok_or("redis_host is required with policy redis")?;
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                };
                // TLS: `rediss`; without `redis_ssl_verify` (APISIX's default) the server's
                // certificate is not checked.
                let (scheme, fragment) = match (self.redis_ssl, self.redis_ssl_verify) {
                    (false, _) => ("redis", ""),
                    (true, true) => ("rediss", ""),
                    (true, false) => ("rediss", "#insecure"),
                };
                let url = format!(
                    "{scheme}://{}{host}:{}/{}{fragment}",
                    userinfo(&self.redis_username, &self.redis_password),
                    self.redis_port,
                    self.redis_database
                );
                Ok(Policy::Redis(Arc::new(Backend::new(
                    Target::Single(url),
                    timeout,
                ))))
            }
            "redis-cluster" => {
                if self.redis_cluster_nodes.is_empty() {
                    return Err("redis_cluster_nodes is required with policy redis-cluster".into());
                }
                let nodes = self
                    .redis_cluster_nodes
                    .iter()
                    .map(|n| format!("redis://{n}"))
                    .collect();
                let tls = match (self.redis_cluster_ssl, self.redis_cluster_ssl_verify) {
                    (false, _) => None,
                    (true, true) => Some(true),
                    (true, false) => Some(false),
                };
                Ok(Policy::Redis(Arc::new(Backend::new(
                    Target::Cluster(nodes, self.redis_password.clone(), tls),
                    timeout,
                ))))
            }
            other => Err(format!("policy {other:?} is not supported")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RuleConf {
    count: Value,
    time_window: Value,
    key: String,
    #[serde(default)]
    header_prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct CountConf {
    #[serde(default)]
    count: Option<Value>,
    #[serde(default)]
    time_window: Option<Value>,
    #[serde(default)]
    rules: Option<Vec<RuleConf>>,
    #[serde(default)]
    window_type: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_key_type")]
    key_type: String,
    #[serde(default = "default_rejected")]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default = "yes")]
    show_limit_quota_header: bool,
    #[serde(flatten)]
    policy: PolicyConf,
}

#[derive(Debug, Clone, Deserialize)]
struct ReqConf {
    rate: f64,
    burst: f64,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_key_type")]
    key_type: String,
    #[serde(default = "default_rejected")]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    nodelay: bool,
    #[serde(flatten)]
    policy: PolicyConf,
}

#[derive(Debug, Clone, Deserialize)]
struct ConnConf {
    conn: Value,
    #[serde(deserialize_with = "saturating::u64")]
    burst: u64,
    default_conn_delay: f64,
    #[serde(default)]
    only_use_default_delay: bool,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_key_type")]
    key_type: String,
    #[serde(default = "default_rejected")]
    rejected_code: u16,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(flatten)]
    policy: PolicyConf,
}

/// One window of a limit-count: the plain `count`/`time_window` or one of `rules[]`.
#[derive(Debug, Clone)]
struct Rule {
    count: Amount,
    window: Amount,
    key: KeySpec,
    /// Header names get `X-<prefix>-` (rules only).
    prefix: Option<String>,
    /// One of `rules[]`: it applies only when a variable of its key resolves (APISIX).
    optional: bool,
}

/// What happens to a request a limiter turns away.
#[derive(Debug, Clone)]
struct Reject {
    status: StatusCode,
    msg: Option<String>,
}

/// What every limiter has: counter identity, refusal, policy, degradation.
#[derive(Debug)]
struct Common {
    ident: String,
    reject: Reject,
    policy: Policy,
    degrade: bool,
}

impl Common {
    fn new(ident: String, code: u16, msg: Option<String>, p: &PolicyConf) -> Result<Self, String> {
        Ok(Common {
            ident,
            reject: reject(code, msg)?,
            policy: p.build()?,
            degrade: p.allow_degradation,
        })
    }
}

/// A compiled limit-count.
#[derive(Debug)]
pub struct CountLimit {
    common: Common,
    rules: Vec<Rule>,
    sliding: bool,
    show_headers: bool,
}

/// A compiled limit-req.
#[derive(Debug)]
pub struct ReqLimit {
    common: Common,
    rate: f64,
    burst: f64,
    key: KeySpec,
    nodelay: bool,
}

/// A compiled limit-conn.
#[derive(Debug)]
pub struct ConnLimit {
    common: Common,
    conn: Amount,
    burst: u64,
    delay: f64,
    only_default_delay: bool,
    key: KeySpec,
}

/// One compiled limiter.
#[derive(Debug, Clone)]
pub enum Limiter {
    /// limit-conn.
    Conn(Arc<ConnLimit>),
    /// limit-count.
    Count(Arc<CountLimit>),
    /// limit-req.
    Req(Arc<ReqLimit>),
}

/// FNV-1a over the conf's JSON text (keys sorted by serde_json's map): stable across nodes
/// and versions, so nodes sharing Redis agree on counter names.
fn conf_hash(conf: &Value) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut strip = conf.clone();
    if let Some(m) = strip.as_object_mut() {
        m.remove("_meta");
    }
    for b in serde_json::to_string(&strip).unwrap_or_default().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn reject(code: u16, msg: Option<String>) -> Result<Reject, String> {
    Ok(Reject {
        status: StatusCode::from_u16(code).map_err(|_| format!("bad rejected_code {code}"))?,
        msg,
    })
}

impl Limiter {
    /// The plugin name.
    pub fn name(&self) -> &'static str {
        match self {
            Limiter::Conn(_) => "limit-conn",
            Limiter::Count(_) => "limit-count",
            Limiter::Req(_) => "limit-req",
        }
    }

    /// Compiles one spec; errors name the plugin and field.
    pub fn build(spec: &LimiterSpec) -> Result<Limiter, String> {
        let fail = |e: String| format!("plugin {} of {}: {e}", spec.name, spec.owner);
        let ident = |group: Option<&str>| match group {
            Some(g) => format!("{}:group:{g}", spec.name),
            None => format!("{}:{}:{}", spec.name, spec.owner, conf_hash(&spec.conf)),
        };
        match spec.name.as_str() {
            "limit-count" => {
                let c: CountConf =
                    serde_json::from_value(spec.conf.clone()).map_err(|e| fail(e.to_string()))?;
                let rules = match (&c.rules, &c.count, &c.time_window) {
                    (Some(rules), _, _) => rules
                        .iter()
                        .enumerate()
                        .map(|(i, r)| {
                            Ok(Rule {
                                count: Amount::parse(&r.count, "count")?,
                                window: Amount::parse(&r.time_window, "time_window")?,
                                // A rule's key is always a template (APISIX resolve_var).
                                key: KeySpec::Combination(parse_combination(&r.key)),
                                prefix: Some(
                                    r.header_prefix
                                        .clone()
                                        .unwrap_or_else(|| (i + 1).to_string()),
                                ),
                                optional: true,
                            })
                        })
                        .collect::<Result<Vec<_>, String>>()
                        .map_err(fail)?,
                    (None, Some(count), Some(window)) => vec![Rule {
                        count: Amount::parse(count, "count").map_err(fail)?,
                        window: Amount::parse(window, "time_window").map_err(fail)?,
                        key: KeySpec::parse(&c.key, &c.key_type).map_err(fail)?,
                        prefix: None,
                        optional: false,
                    }],
                    _ => return Err(fail("count and time_window, or rules, are required".into())),
                };
                let ident = ident(c.group.as_deref());
                Ok(Limiter::Count(Arc::new(CountLimit {
                    common: Common::new(ident, c.rejected_code, c.rejected_msg, &c.policy)
                        .map_err(fail)?,
                    rules,
                    sliding: c.window_type.as_deref() == Some("sliding"),
                    show_headers: c.show_limit_quota_header,
                })))
            }
            "limit-req" => {
                let c: ReqConf =
                    serde_json::from_value(spec.conf.clone()).map_err(|e| fail(e.to_string()))?;
                if c.rate <= 0.0 || c.burst < 0.0 {
                    return Err(fail("rate must be > 0 and burst >= 0".into()));
                }
                Ok(Limiter::Req(Arc::new(ReqLimit {
                    common: Common::new(ident(None), c.rejected_code, c.rejected_msg, &c.policy)
                        .map_err(fail)?,
                    rate: c.rate,
                    burst: c.burst,
                    key: KeySpec::parse(&c.key, &c.key_type).map_err(fail)?,
                    nodelay: c.nodelay,
                })))
            }
            "limit-conn" => {
                let c: ConnConf =
                    serde_json::from_value(spec.conf.clone()).map_err(|e| fail(e.to_string()))?;
                Ok(Limiter::Conn(Arc::new(ConnLimit {
                    common: Common::new(ident(None), c.rejected_code, c.rejected_msg, &c.policy)
                        .map_err(fail)?,
                    conn: Amount::parse(&c.conn, "conn").map_err(fail)?,
                    burst: c.burst,
                    delay: c.default_conn_delay,
                    only_default_delay: c.only_use_default_delay,
                    key: KeySpec::parse(&c.key, &c.key_type).map_err(fail)?,
                })))
            }
            other => Err(format!("{other} is not a native limiter")),
        }
    }
}

/// The limiters of one route, in execution order.
#[derive(Debug, Default)]
pub struct Limits {
    steps: Vec<(Limiter, Option<Expr>)>,
}

impl Limits {
    /// Compiles a route's specs (already in order: global rules first, then by priority).
    pub fn build(specs: &[LimiterSpec]) -> Result<Option<Arc<Limits>>, String> {
        if specs.is_empty() {
            return Ok(None);
        }
        let steps = specs
            .iter()
            .map(|spec| {
                let filter = match &spec.filter {
                    Some(f) => Some(Expr::compile(f).map_err(|e| {
                        format!("plugin {} of {}: _meta.filter: {e}", spec.name, spec.owner)
                    })?),
                    None => None,
                };
                Ok((Limiter::build(spec)?, filter))
            })
            .collect::<Result<_, String>>()?;
        Ok(Some(Arc::new(Limits { steps })))
    }

    /// The limiters of a request whose consumer configures some: the consumer's conf of a
    /// plugin replaces the route's (APISIX merge: consumer over route), the others stay;
    /// the result is in priority order.
    pub fn overlay(route: Option<&Limits>, consumer: &Limits) -> Limits {
        let mut steps: Vec<(Limiter, Option<Expr>)> = route
            .map(|r| {
                r.steps
                    .iter()
                    .filter(|(l, _)| !consumer.steps.iter().any(|(c, _)| c.name() == l.name()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        steps.extend(consumer.steps.iter().cloned());
        steps.sort_by_key(|(l, _)| NAMES.iter().position(|n| *n == l.name()));
        Limits { steps }
    }

    /// Reads every key and amount from the request.
    pub fn resolve(&self, vars: &dyn RequestVars) -> Resolved {
        let client = || {
            vars.var("remote_addr")
                .map(Cow::into_owned)
                .unwrap_or_default()
        };
        let key_of = |ident: &str, spec: &KeySpec| {
            let value = spec.resolve(vars).unwrap_or_else(client);
            format!("{ident}:{value}")
        };
        let steps = self
            .steps
            .iter()
            .filter(|(_, filter)| filter.as_ref().is_none_or(|f| f.eval(vars)))
            .map(|(l, _)| match l {
                Limiter::Conn(c) => Ready::Conn {
                    key: key_of(&c.common.ident, &c.key),
                    max: c.conn.resolve(vars).map(|x| x as u64),
                    lim: c.clone(),
                },
                Limiter::Req(r) => Ready::Req {
                    key: key_of(&r.common.ident, &r.key),
                    lim: r.clone(),
                },
                Limiter::Count(c) => Ready::Count {
                    windows: c
                        .rules
                        .iter()
                        .enumerate()
                        .filter_map(|(i, r)| {
                            let value = match r.key.resolve(vars) {
                                Some(v) => v,
                                None if r.optional => return None,
                                None => client(),
                            };
                            let ident = if c.rules.len() > 1 {
                                format!("{}:{i}", c.common.ident)
                            } else {
                                c.common.ident.to_string()
                            };
                            Some(Window {
                                key: format!("{ident}:{value}"),
                                count: r.count.resolve(vars).map(|x| x as u64),
                                window: r.window.resolve(vars).map(seconds),
                                prefix: r.prefix.clone(),
                            })
                        })
                        .collect(),
                    lim: c.clone(),
                },
            })
            .collect();
        Resolved { steps }
    }
}

struct Window {
    key: String,
    count: Option<u64>,
    window: Option<Duration>,
    prefix: Option<String>,
}

enum Ready {
    Conn {
        lim: Arc<ConnLimit>,
        key: String,
        max: Option<u64>,
    },
    Count {
        lim: Arc<CountLimit>,
        windows: Vec<Window>,
    },
    Req {
        lim: Arc<ReqLimit>,
        key: String,
    },
}

/// A request turned away, or failed by the limiter.
#[derive(Debug)]
pub struct Refusal {
    /// Status to answer with.
    pub status: StatusCode,
    /// `error_msg` of the JSON body; None = the status's standard text.
    pub msg: Option<String>,
    /// Headers to send (quota headers of limit-count).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// An admitted request: headers for the response, and connections to release at its end.
#[derive(Default)]
pub struct Admitted {
    /// Quota headers, added to the response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// limit-conn slots, released when dropped.
    pub guards: Vec<ConnGuard>,
}

/// A limit-conn slot: released when dropped, however the request ended.
pub struct ConnGuard {
    key: String,
    policy: Policy,
    store: Arc<LocalStore>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        match &self.policy {
            Policy::Local => self.store.conn_leave(&self.key),
            Policy::Redis(b) => {
                let (b, key) = (b.clone(), std::mem::take(&mut self.key));
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Err(e) = redis::conn_leave(&b, &key).await {
                            log::warn!("limit-conn: failed to release a connection: {e}");
                        }
                    });
                }
            }
        }
    }
}

fn header(name: &str, prefix: Option<&str>) -> Option<HeaderName> {
    let full = match prefix {
        Some(p) => match name.get(..2) {
            Some(x) if x.eq_ignore_ascii_case("x-") => format!("X-{p}-{}", &name[2..]),
            _ => format!("{p}-{name}"),
        },
        None => name.to_owned(),
    };
    HeaderName::from_bytes(full.as_bytes()).ok()
}

fn quota_headers(
    out: &mut Vec<(HeaderName, HeaderValue)>,
    names: &HeaderNames,
    prefix: Option<&str>,
    limit: u64,
    st: &CountState,
) {
    let reset = st.reset.ceil().max(0.0) as u64;
    for (name, value) in [
        (&names.limit, limit),
        (&names.remaining, st.remaining),
        (&names.reset, reset),
    ] {
        if let Some(n) = header(name, prefix) {
            out.push((n, HeaderValue::from(value)));
        }
    }
}

fn refused(r: &Reject, headers: Vec<(HeaderName, HeaderValue)>) -> Refusal {
    Refusal {
        status: r.status,
        msg: r.msg.clone(),
        headers,
    }
}

fn failed(plugin: &str) -> Refusal {
    Refusal {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        msg: Some(format!("failed to limit {plugin}")),
        headers: Vec::new(),
    }
}

/// The keys of one request, ready to be checked.
pub struct Resolved {
    steps: Vec<Ready>,
}

impl Resolved {
    /// Runs the limiters in order. Delays (limit-req without `nodelay`, limit-conn beyond
    /// `conn`) are slept here; the request continues after them.
    pub async fn check(
        self,
        store: &Arc<LocalStore>,
        names: &HeaderNames,
    ) -> Result<Admitted, Refusal> {
        let mut admitted = Admitted::default();
        for step in self.steps {
            match step {
                Ready::Conn { lim, key, max } => {
                    let l = &*lim;
                    let Some(conn) = max else {
                        return Err(failed("conn"));
                    };
                    let most = conn.saturating_add(l.burst); // both may be as large as u64
                    let entered = match &l.common.policy {
                        Policy::Local => Ok(store.conn_enter(&key, most)),
                        Policy::Redis(b) => redis::conn_enter(b, &key, most).await,
                    };
                    match entered {
                        Ok(Some(n)) => {
                            admitted.guards.push(ConnGuard {
                                key,
                                policy: l.common.policy.clone(),
                                store: store.clone(),
                            });
                            if n > conn {
                                let delay = if l.only_default_delay {
                                    l.delay
                                } else {
                                    l.delay * ((n - 1) / conn.max(1)) as f64
                                };
                                sleep(delay).await;
                            }
                        }
                        Ok(None) => return Err(refused(&l.common.reject, Vec::new())),
                        Err(e) => {
                            log::error!("limit-conn: {e}");
                            if !l.common.degrade {
                                return Err(failed("conn"));
                            }
                        }
                    }
                }
                Ready::Count { lim, windows } => {
                    let l = &*lim;
                    let mut headers = Vec::new();
                    if windows.is_empty() {
                        // rules[] of which none applies to this request (APISIX: 500).
                        log::error!("limit-count: no rule applies to the request");
                        if !l.common.degrade {
                            return Err(failed("count"));
                        }
                    }
                    for w in windows {
                        let (Some(count), Some(window)) = (w.count, w.window) else {
                            log::error!("limit-count: count or time_window did not resolve");
                            return Err(failed("count"));
                        };
                        let state = match (&l.common.policy, l.sliding) {
                            (Policy::Local, false) => {
                                Ok(store.count_fixed(&w.key, count, window, 1))
                            }
                            (Policy::Local, true) => {
                                Ok(store.count_sliding(&w.key, count, window, 1))
                            }
                            (Policy::Redis(b), false) => {
                                redis::count_fixed(b, &w.key, count, window, 1).await
                            }
                            (Policy::Redis(b), true) => {
                                redis::count_sliding(b, &w.key, count, window, 1).await
                            }
                        };
                        match state {
                            Ok(st) => {
                                if l.show_headers {
                                    quota_headers(
                                        &mut headers,
                                        names,
                                        w.prefix.as_deref(),
                                        count,
                                        &st,
                                    );
                                }
                                if !st.allowed {
                                    // The first rule that refuses ends it: later rules are
                                    // neither counted nor shown (APISIX).
                                    return Err(refused(&l.common.reject, headers));
                                }
                            }
                            Err(e) => {
                                log::error!("limit-count: {e}");
                                if !l.common.degrade {
                                    return Err(failed("count"));
                                }
                            }
                        }
                    }
                    admitted.headers.extend(headers);
                }
                Ready::Req { lim, key } => {
                    let l = &*lim;
                    let verdict = match &l.common.policy {
                        Policy::Local => Ok(store.leaky_bucket(&key, l.rate, l.burst)),
                        Policy::Redis(b) => redis::leaky_bucket(b, &key, l.rate, l.burst).await,
                    };
                    match verdict {
                        Ok(Some(delay)) => {
                            if !l.nodelay && delay >= 0.001 {
                                sleep(delay).await;
                            }
                        }
                        Ok(None) => return Err(refused(&l.common.reject, Vec::new())),
                        Err(e) => {
                            log::error!("limit-req: {e}");
                            if !l.common.degrade {
                                return Err(failed("req"));
                            }
                        }
                    }
                }
            }
        }
        Ok(admitted)
    }
}

async fn sleep(secs: f64) {
    if secs > 0.0 && secs.is_finite() {
        tokio::time::sleep(seconds(secs.min(3600.0))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);
    impl RequestVars for Map {
        fn method(&self) -> &str {
            "GET"
        }
        fn host(&self) -> &str {
            ""
        }
        fn path(&self) -> &str {
            "/"
        }
        fn remote_addr(&self) -> Option<std::net::IpAddr> {
            None
        }
        fn var(&self, name: &str) -> Option<Cow<'_, str>> {
            self.0.get(name).map(|v| Cow::Borrowed(*v))
        }
    }

    fn vars(pairs: &[(&'static str, &'static str)]) -> Map {
        Map(pairs.iter().copied().collect())
    }

    fn spec(name: &str, owner: &str, conf: Value) -> LimiterSpec {
        LimiterSpec {
            name: name.into(),
            owner: owner.into(),
            conf,
            filter: None,
        }
    }

    fn one(name: &str, conf: Value) -> Arc<Limits> {
        Limits::build(&[spec(name, "routes/1", conf)])
            .unwrap()
            .unwrap()
    }

    fn run(limits: &Limits, v: &Map, store: &Arc<LocalStore>) -> Result<Admitted, Refusal> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(limits.resolve(v).check(store, &HeaderNames::default()))
    }

    #[test]
    fn combination_keys_resolve_like_apisix() {
        let k = KeySpec::parse("$remote_addr $http_x_user", "var_combination").unwrap();
        let v = vars(&[("remote_addr", "1.2.3.4"), ("http_x_user", "u")]);
        assert_eq!(k.resolve(&v).as_deref(), Some("1.2.3.4 u"));
        assert_eq!(k.resolve(&vars(&[])), None, "nothing resolved: fall back");
        let braces = KeySpec::parse("${http_a}-x", "var_combination").unwrap();
        assert_eq!(
            braces.resolve(&vars(&[("http_a", "1")])).as_deref(),
            Some("1-x")
        );
    }

    #[test]
    fn count_rejects_with_headers_and_configured_message() {
        let store = Arc::new(LocalStore::default());
        let limits = one(
            "limit-count",
            json!({"count": 2, "time_window": 60, "rejected_code": 429, "rejected_msg": "slow"}),
        );
        let v = vars(&[("remote_addr", "10.0.0.1")]);
        let ok = run(&limits, &v, &store).unwrap();
        let h: HashMap<_, _> = ok
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        assert_eq!(h["x-ratelimit-limit"], "2");
        assert_eq!(h["x-ratelimit-remaining"], "1");
        assert_eq!(h["x-ratelimit-reset"], "60");
        run(&limits, &v, &store).unwrap();
        let no = run(&limits, &v, &store).err().unwrap();
        assert_eq!(no.status, 429);
        assert_eq!(no.msg.as_deref(), Some("slow"));
        assert!(no
            .headers
            .iter()
            .any(|(k, v)| k == "x-ratelimit-remaining" && v == "0"));
        // Another client has its own counter.
        run(&limits, &vars(&[("remote_addr", "10.0.0.2")]), &store).unwrap();
    }

    #[test]
    fn counter_identity_follows_owner_conf_and_group() {
        let a = spec(
            "limit-count",
            "routes/1",
            json!({"count": 1, "time_window": 60}),
        );
        let same = spec(
            "limit-count",
            "routes/1",
            json!({"time_window": 60, "count": 1}),
        );
        let other_conf = spec(
            "limit-count",
            "routes/1",
            json!({"count": 2, "time_window": 60}),
        );
        let other_route = spec(
            "limit-count",
            "routes/2",
            json!({"count": 1, "time_window": 60}),
        );
        let id = |s: &LimiterSpec| match Limiter::build(s).unwrap() {
            Limiter::Count(c) => c.common.ident.clone(),
            _ => unreachable!(),
        };
        assert_eq!(id(&a), id(&same));
        assert_ne!(id(&a), id(&other_conf));
        assert_ne!(id(&a), id(&other_route));
        let g1 = spec(
            "limit-count",
            "routes/1",
            json!({"count": 1, "time_window": 60, "group": "g"}),
        );
        let g2 = spec(
            "limit-count",
            "routes/2",
            json!({"count": 1, "time_window": 60, "group": "g"}),
        );
        assert_eq!(id(&g1), id(&g2));
    }

    /// The python engine computes the same hash (tests/test_limits.py pins this number), so
    /// nodes of both engines on one Redis share counters.
    #[test]
    fn conf_hash_is_fnv1a_of_compact_sorted_json_without_meta() {
        let conf = json!({
            "count": 2, "time_window": 60, "rejected_msg": "sl\u{f6}w \"down\"\n\u{1}",
            "rate": 0.5, "burst": 1.0, "big": 1e16, "small": 1e-5, "tiny": 2.5e-7,
            "nested": {"b": [1, 2.5, true, null], "a": "x"},
            "_meta": {"filter": [["arg_a", "==", "1"]]}
        });
        assert_eq!(conf_hash(&conf), 15269562751155801864);
        let id = match Limiter::build(&spec("limit-req", "routes/r1", conf)).unwrap() {
            Limiter::Req(r) => r.common.ident.clone(),
            _ => unreachable!(),
        };
        assert_eq!(id, "limit-req:routes/r1:15269562751155801864");
    }

    #[test]
    fn rules_use_prefixed_headers_and_each_window() {
        let store = Arc::new(LocalStore::default());
        let limits = one(
            "limit-count",
            json!({"rules": [
                {"count": 5, "time_window": 60, "key": "$remote_addr", "header_prefix": "minute"},
                {"count": 1, "time_window": 3600, "key": "${http_user}"}
            ]}),
        );
        let v = vars(&[("remote_addr", "1.1.1.1"), ("http_user", "u")]);
        let ok = run(&limits, &v, &store).unwrap();
        let names: Vec<_> = ok
            .headers
            .iter()
            .map(|(k, _)| k.as_str().to_owned())
            .collect();
        assert!(
            names.contains(&"x-minute-ratelimit-limit".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"x-2-ratelimit-remaining".to_owned()),
            "{names:?}"
        );
        assert_eq!(run(&limits, &v, &store).err().unwrap().status, 503);
    }

    #[test]
    fn rules_apply_when_their_key_resolves_and_stop_at_the_first_refusal() {
        let store = Arc::new(LocalStore::default());
        let limits = one(
            "limit-count",
            json!({"rules": [
                {"count": 1, "time_window": 60, "key": "${http_user}", "header_prefix": "u"},
                {"count": 5, "time_window": 60, "key": "$remote_addr", "header_prefix": "ip"}
            ]}),
        );
        // No user header: the first rule does not apply, the second does.
        let anon = vars(&[("remote_addr", "1.1.1.1")]);
        let names = |h: &[(HeaderName, HeaderValue)]| {
            h.iter()
                .map(|(k, _)| k.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        let ok = run(&limits, &anon, &store).unwrap();
        assert_eq!(names(&ok.headers)[0], "x-ip-ratelimit-limit");
        // The user's rule refuses its second request; the ip rule is not counted for it.
        let user = vars(&[("remote_addr", "2.2.2.2"), ("http_user", "jack")]);
        assert!(run(&limits, &user, &store).is_ok());
        let refused = run(&limits, &user, &store).err().unwrap();
        assert_eq!(refused.status, 503);
        assert!(names(&refused.headers)
            .iter()
            .all(|n| n.starts_with("x-u-")));
        let after = run(&limits, &vars(&[("remote_addr", "2.2.2.2")]), &store).unwrap();
        let remaining = after
            .headers
            .iter()
            .find(|(k, _)| k == "x-ip-ratelimit-remaining");
        assert_eq!(
            remaining.unwrap().1,
            "3",
            "the refused request took an ip slot"
        );
        // No rule applies at all: the request fails (APISIX answers 500).
        let none = one(
            "limit-count",
            json!({"rules": [{"count": 1, "time_window": 60, "key": "${http_user}"}]}),
        );
        assert_eq!(run(&none, &anon, &store).err().unwrap().status, 500);
    }

    #[test]
    fn amounts_are_templates_with_defaults() {
        let store = Arc::new(LocalStore::default());
        let limits = one(
            "limit-count",
            json!({"count": "${http_quota ?? 2}", "time_window": "$http_window", "key": "remote_addr"}),
        );
        let v = vars(&[("remote_addr", "1.1.1.1"), ("http_window", "60")]);
        assert!(run(&limits, &v, &store).is_ok());
        assert!(run(&limits, &v, &store).is_ok());
        assert_eq!(
            run(&limits, &v, &store).err().unwrap().status,
            503,
            "the default 2 counts"
        );
        let given = vars(&[
            ("remote_addr", "3.3.3.3"),
            ("http_window", "60"),
            ("http_quota", "1"),
        ]);
        assert!(run(&limits, &given, &store).is_ok());
        assert_eq!(run(&limits, &given, &store).err().unwrap().status, 503);
        // Not a positive integer once resolved: the request fails.
        let bad = vars(&[("remote_addr", "4.4.4.4"), ("http_window", "1.5")]);
        assert_eq!(run(&limits, &bad, &store).err().unwrap().status, 500);
    }

    #[test]
    fn templates_keep_the_text_after_a_non_ascii_default() {
        let pieces = parse_combination("${http_x ?? é}-t");
        assert_eq!(
            pieces,
            vec![
                Piece::Var("http_x".into(), Some("é".into())),
                Piece::Text("-t".into())
            ]
        );
        // a fixed amount that is not a positive integer fails each request (as APISIX)
        let store = Arc::new(LocalStore::default());
        let limits = one(
            "limit-count",
            json!({"count": "1.5", "time_window": 60, "key": "remote_addr"}),
        );
        let v = vars(&[("remote_addr", "1.1.1.1")]);
        assert_eq!(run(&limits, &v, &store).err().unwrap().status, 500);
    }

    #[test]
    fn conn_slots_are_released_by_the_guard() {
        let store = Arc::new(LocalStore::default());
        let limits = one(
            "limit-conn",
            json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}),
        );
        let v = vars(&[("remote_addr", "1.1.1.1")]);
        let held = run(&limits, &v, &store).unwrap();
        assert!(run(&limits, &v, &store).is_err());
        drop(held);
        assert!(run(&limits, &v, &store).is_ok());
    }

    #[test]
    fn consumer_confs_replace_the_routes_same_plugin() {
        let route = Limits::build(&[
            spec(
                "limit-conn",
                "routes/1",
                json!({"conn": 5, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}),
            ),
            spec(
                "limit-count",
                "routes/1",
                json!({"count": 100, "time_window": 60}),
            ),
        ])
        .unwrap()
        .unwrap();
        let consumer = Limits::build(&[spec(
            "limit-count",
            "consumers/jack",
            json!({"count": 1, "time_window": 60}),
        )])
        .unwrap()
        .unwrap();
        let both = Limits::overlay(Some(&route), &consumer);
        let names: Vec<_> = both.steps.iter().map(|(l, _)| l.name()).collect();
        assert_eq!(names, ["limit-conn", "limit-count"]);
        let store = Arc::new(LocalStore::default());
        let v = vars(&[("remote_addr", "1.1.1.1")]);
        let ok = run(&both, &v, &store).unwrap();
        assert!(ok
            .headers
            .iter()
            .any(|(k, v)| k == "x-ratelimit-limit" && v == "1"));
        assert!(
            run(&both, &v, &store).is_err(),
            "the consumer's count applies"
        );
    }

    #[test]
    fn meta_filter_skips_the_limiter() {
        let store = Arc::new(LocalStore::default());
        let mut s = spec(
            "limit-count",
            "routes/1",
            json!({"count": 1, "time_window": 60}),
        );
        s.filter = Some(json!([["http_x_limited", "==", "yes"]]));
        let limits = Limits::build(&[s]).unwrap().unwrap();
        let free = vars(&[("remote_addr", "1.1.1.1")]);
        for _ in 0..3 {
            assert!(run(&limits, &free, &store).is_ok());
        }
        let limited = vars(&[("remote_addr", "1.1.1.1"), ("http_x_limited", "yes")]);
        assert!(run(&limits, &limited, &store).is_ok());
        assert!(run(&limits, &limited, &store).is_err());
    }

    #[test]
    fn bad_specs_name_plugin_and_owner() {
        let err = Limiter::build(&spec("limit-count", "routes/7", json!({"count": 1})))
            .err()
            .unwrap();
        assert!(
            err.contains("limit-count") && err.contains("routes/7"),
            "{err}"
        );
        let err = Limiter::build(&spec(
            "limit-req",
            "routes/7",
            json!({"rate": 1, "burst": 0, "key": "remote_addr", "policy": "redis"}),
        ))
        .err()
        .unwrap();
        assert!(err.contains("redis_host"), "{err}");
    }
}
