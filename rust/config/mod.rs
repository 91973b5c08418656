//! The compiled snapshot the control plane hands to the data plane.
//!
//! Python validates APISIX objects and resolves every reference; what arrives here is
//! already flat (see `docs/CONTRACT-snapshot.md`). These types only deserialize it.

use std::time::Duration;

use serde::Deserialize;

/// A set of changes applied as one step: a full load is a change set of upserts only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeSet {
    /// Upstreams created or replaced.
    #[serde(default)]
    pub upsert_upstreams: Vec<CompiledUpstream>,
    /// Keys of upstreams removed.
    #[serde(default)]
    pub delete_upstreams: Vec<String>,
    /// Routes created or replaced.
    #[serde(default)]
    pub upsert_routes: Vec<CompiledRoute>,
    /// Ids of routes removed.
    #[serde(default)]
    pub delete_routes: Vec<String>,
    /// `plugin_metadata` by plugin name, when it changed (replaces the previous one).
    #[serde(default)]
    pub plugin_metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Upstream `timeout` in seconds, APISIX's `{connect, send, read}`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Timeouts {
    /// Time allowed to establish the TCP connection.
    pub connect: f64,
    /// Time allowed between two writes of the request.
    pub send: f64,
    /// Time allowed between two reads of the response.
    pub read: f64,
}

impl Default for Timeouts {
    /// nginx's `proxy_*_timeout` defaults, which APISIX keeps: 60 s each.
    fn default() -> Self {
        Timeouts {
            connect: 60.0,
            send: 60.0,
            read: 60.0,
        }
    }
}

/// A route with its service, plugin_config and upstream reference already resolved.
#[derive(Debug, Clone, Deserialize)]
pub struct CompiledRoute {
    /// Route id.
    pub id: String,
    /// Route name, exposed as the `route_name` variable.
    #[serde(default)]
    pub name: Option<String>,
    /// Insertion order, the last tie-break of the router.
    #[serde(default)]
    pub seq: u64,
    /// `uri` / `uris`.
    pub uris: Vec<String>,
    /// Lower-cased hosts, the route's own or inherited from its service.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// Allowed methods; none means any.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Client addresses or CIDRs.
    #[serde(default)]
    pub remote_addrs: Option<Vec<String>>,
    /// A lua-resty-expr expression.
    #[serde(default)]
    pub vars: Option<serde_json::Value>,
    /// Higher wins among routes stored under the same path key.
    #[serde(default)]
    pub priority: i64,
    /// Key of the upstream this route proxies to.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Route-level timeouts, overriding the upstream's.
    #[serde(default)]
    pub timeout: Option<Timeouts>,
    /// The service the route belongs to.
    #[serde(default)]
    pub service_id: Option<String>,
    /// Merged plugin confs (consumed by the plugin pipeline).
    #[serde(default)]
    pub plugins: serde_json::Map<String, serde_json::Value>,
    /// Plugin phases the route's plugins (and global rules) implement; empty: no Python.
    #[serde(default)]
    pub phases: Vec<String>,
    /// Native limiters (limit-conn, limit-count, limit-req) in execution order.
    #[serde(default)]
    pub limits: Vec<crate::limit::LimiterSpec>,
    /// `enable_websocket` (the route's, else its service's): an `Upgrade` request is
    /// passed on with its `Upgrade` header, and a 101 answer becomes a tunnel.
    #[serde(default)]
    pub websocket: bool,
}

/// One upstream node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompiledNode {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Weight for round robin; 0 takes no traffic.
    pub weight: u32,
    /// Higher priority nodes are tried first; lower ones only when those failed.
    #[serde(default)]
    pub priority: i64,
}

/// APISIX `keepalive_pool`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct KeepalivePool {
    /// Idle connections kept per upstream.
    pub size: usize,
    /// Seconds an idle connection is kept.
    pub idle_timeout: f64,
    /// Requests served by one connection before it is closed.
    pub requests: u64,
}

impl Default for KeepalivePool {
    fn default() -> Self {
        KeepalivePool {
            size: 320,
            idle_timeout: 60.0,
            requests: 1000,
        }
    }
}

/// How the upstream `Host` header is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PassHost {
    /// The client's Host is forwarded.
    #[default]
    Pass,
    /// The chosen node's host (and non-default port).
    Node,
    /// `upstream_host`.
    Rewrite,
}

/// An upstream with nodes in list form.
#[derive(Debug, Clone, Deserialize)]
pub struct CompiledUpstream {
    /// `upstreams/<id>`, `routes/<id>` or `services/<id>`.
    pub key: String,
    /// The nodes.
    pub nodes: Vec<CompiledNode>,
    /// Balancer type; `roundrobin`.
    #[serde(default = "default_type", rename = "type")]
    pub lb_type: String,
    /// Retries after the first try; none means nodes − 1.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Seconds within which retries may happen; none or 0 means no limit.
    #[serde(default)]
    pub retry_timeout: Option<f64>,
    /// Timeouts.
    #[serde(default)]
    pub timeout: Option<Timeouts>,
    /// Host header policy.
    #[serde(default)]
    pub pass_host: PassHost,
    /// The Host used with `pass_host: rewrite`.
    #[serde(default)]
    pub upstream_host: Option<String>,
    /// `http` (https is refused by the control plane for now).
    #[serde(default = "default_scheme")]
    pub scheme: String,
    /// Connection pool limits.
    #[serde(default)]
    pub keepalive_pool: KeepalivePool,
}

/// The longest [`seconds`] gives: about 31 years, far from any overflow of `Instant`.
pub const MAX_SECONDS: f64 = 1e9;

/// Seconds from a config or a request variable as a `Duration`, never a panic: APISIX's
/// schemas bound few timeouts (`1e300` is a valid one), and `Duration::from_secs_f64`
/// panics past its range or on NaN. Negative and NaN give zero; the rest is capped at
/// [`MAX_SECONDS`].
pub fn seconds(s: f64) -> Duration {
    if s.is_nan() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(s.clamp(0.0, MAX_SECONDS))
}

/// Deserializers for the integers of plugin confs that APISIX's schemas leave unbounded
/// (`burst: 1e20` is valid there): any JSON number, saturated into the field's type (`as`
/// saturates, NaN gives 0), rather than a change set refused whole.
pub mod saturating {
    use serde::{Deserialize, Deserializer};

    /// A `u64` field.
    pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(f64::deserialize(d)? as u64)
    }

    /// A `u32` field.
    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        Ok(f64::deserialize(d)? as u32)
    }

    /// A `u16` field.
    pub fn u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        Ok(f64::deserialize(d)? as u16)
    }
}

fn default_type() -> String {
    "roundrobin".to_owned()
}

fn default_scheme() -> String {
    "http".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_set_parses_contract_example() {
        let text = r#"{"upsert_upstreams":[{"key":"upstreams/1","nodes":[{"host":"127.0.0.1","port":1980,"weight":1,"priority":0}],"type":"roundrobin","retries":null,"retry_timeout":null,"timeout":null,"pass_host":"pass","upstream_host":null,"scheme":"http","keepalive_pool":{"size":320,"idle_timeout":60,"requests":1000}}],
            "upsert_routes":[{"id":"1","name":null,"seq":0,"uris":["/a*"],"hosts":null,"methods":["GET"],"remote_addrs":null,"vars":null,"priority":0,"upstream":"upstreams/1","timeout":null,"service_id":null,"plugins":{}}],
            "delete_routes":["9"],"delete_upstreams":[]}"#;
        let cs: ChangeSet = serde_json::from_str(text).unwrap();
        assert_eq!(cs.upsert_routes[0].uris, vec!["/a*"]);
        assert_eq!(cs.upsert_upstreams[0].keepalive_pool.size, 320);
        assert_eq!(cs.upsert_upstreams[0].pass_host, PassHost::Pass);
        assert_eq!(cs.delete_routes, vec!["9"]);
    }

    #[test]
    fn unknown_change_kind_is_rejected() {
        assert!(serde_json::from_str::<ChangeSet>(r#"{"upsert_ssl":[]}"#).is_err());
    }

    #[test]
    fn seconds_never_panic() {
        assert_eq!(seconds(f64::NAN), Duration::ZERO);
        assert_eq!(seconds(-3.0), Duration::ZERO);
        assert_eq!(seconds(1e300), Duration::from_secs_f64(MAX_SECONDS));
        assert_eq!(seconds(f64::INFINITY), Duration::from_secs_f64(MAX_SECONDS));
        assert_eq!(seconds(1.5), Duration::from_millis(1500));
    }

    #[test]
    fn saturating_integers_take_any_json_number() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "saturating::u64")]
            a: u64,
            #[serde(deserialize_with = "saturating::u16")]
            b: u16,
        }
        let t: T = serde_json::from_str(r#"{"a": 1e20, "b": 100000}"#).unwrap();
        assert_eq!((t.a, t.b), (u64::MAX, u16::MAX));
        let t: T = serde_json::from_str(r#"{"a": 7, "b": 2.0}"#).unwrap();
        assert_eq!((t.a, t.b), (7, 2));
    }
}
