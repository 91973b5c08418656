//! Upstreams: nodes, balancer, keep-alive pools, and the registry routes point into.

pub mod balancer;
pub mod h1;
pub mod pool;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use parking_lot::Mutex;

use crate::config::{CompiledUpstream, PassHost, Timeouts};
use balancer::Balancer;
use pool::Pool;

/// One node of an upstream.
pub struct Node {
    /// Host as configured.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The address when `host` is an IP literal; names are resolved per connect.
    pub addr: Option<SocketAddr>,
    /// The Host header used with `pass_host: node`.
    pub host_header: HeaderValue,
    /// Idle connections to this node.
    pub pool: Arc<Pool>,
}

impl Node {
    /// The socket address to connect to, resolving a host name if needed.
    pub async fn resolve(&self) -> Result<SocketAddr, String> {
        if let Some(a) = self.addr {
            return Ok(a);
        }
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("failed to resolve {}: {e}", self.host))?;
        addrs
            .next()
            .ok_or_else(|| format!("no address for {}", self.host))
    }
}

/// A live upstream, built once per config change.
pub struct Upstream {
    /// Its key (`upstreams/1`, `routes/7`, ...).
    pub key: String,
    /// Nodes, in configured order.
    pub nodes: Vec<Node>,
    /// Picks nodes.
    pub balancer: Balancer,
    /// Tries after the first.
    pub retries: u32,
    /// Deadline for retries.
    pub retry_timeout: Option<Duration>,
    /// Upstream-level timeouts.
    pub timeouts: Option<Timeouts>,
    /// Host header policy.
    pub pass_host: PassHost,
    /// Host used with `rewrite`.
    pub upstream_host: Option<HeaderValue>,
}

impl Upstream {
    /// Builds an upstream; errors name the field.
    pub fn build(c: &CompiledUpstream) -> Result<Self, String> {
        if c.scheme != "http" {
            return Err(format!(
                "upstream {}: scheme \"{}\" is not supported yet",
                c.key, c.scheme
            ));
        }
        let mut nodes = Vec::with_capacity(c.nodes.len());
        for n in &c.nodes {
            // IPv6 literals may come bracketed, as APISIX writes them.
            let host = n.host.trim_start_matches('[').trim_end_matches(']');
            let addr = host
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, n.port));
            let shown = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            let header = if n.port == 80 {
                shown
            } else {
                format!("{shown}:{}", n.port)
            };
            let host_header = HeaderValue::from_str(&header)
                .map_err(|_| format!("upstream {}: invalid node host {:?}", c.key, n.host))?;
            nodes.push(Node {
                host: host.to_owned(),
                port: n.port,
                addr,
                host_header,
                pool: Pool::new(c.keepalive_pool),
            });
        }
        let weights: Vec<(u32, i64)> = c.nodes.iter().map(|n| (n.weight, n.priority)).collect();
        let balancer = Balancer::new(&weights);
        let retries = c
            .retries
            .unwrap_or_else(|| balancer.node_count().saturating_sub(1) as u32);
        let upstream_host = match (&c.pass_host, &c.upstream_host) {
            (PassHost::Rewrite, Some(h)) => Some(
                HeaderValue::from_str(h)
                    .map_err(|_| format!("upstream {}: invalid upstream_host", c.key))?,
            ),
            (PassHost::Rewrite, None) => {
                return Err(format!(
                    "upstream {}: pass_host rewrite needs upstream_host",
                    c.key
                ))
            }
            _ => None,
        };
        Ok(Upstream {
            key: c.key.clone(),
            nodes,
            balancer,
            retries,
            retry_timeout: c
                .retry_timeout
                .filter(|t| *t > 0.0)
                .map(Duration::from_secs_f64),
            timeouts: c.timeout,
            pass_host: c.pass_host,
            upstream_host,
        })
    }
}

/// A named place a route points at; swapping what it holds updates every route using it.
pub type UpstreamSlot = ArcSwapOption<Upstream>;

/// Upstream slots by key. Locked only when config changes.
#[derive(Default)]
pub struct Registry {
    slots: Mutex<HashMap<String, Arc<UpstreamSlot>>>,
}

impl Registry {
    /// The slot for `key`, created empty if new.
    pub fn slot(&self, key: &str) -> Arc<UpstreamSlot> {
        self.slots
            .lock()
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(ArcSwapOption::empty()))
            .clone()
    }

    /// Publishes a new version of an upstream.
    pub fn upsert(&self, up: Upstream) {
        let slot = self.slot(&up.key);
        slot.store(Some(Arc::new(up)));
    }

    /// Empties a slot: routes still pointing at it answer 502.
    pub fn remove(&self, key: &str) {
        if let Some(slot) = self.slots.lock().get(key) {
            slot.store(None);
        }
    }

    /// The current upstream of `key` (tests).
    pub fn get(&self, key: &str) -> Option<Arc<Upstream>> {
        self.slots.lock().get(key).and_then(|s| s.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CompiledNode, KeepalivePool};

    fn compiled(nodes: Vec<(&str, u16, u32)>) -> CompiledUpstream {
        CompiledUpstream {
            key: "upstreams/1".into(),
            nodes: nodes
                .into_iter()
                .map(|(h, p, w)| CompiledNode {
                    host: h.into(),
                    port: p,
                    weight: w,
                    priority: 0,
                })
                .collect(),
            lb_type: "roundrobin".into(),
            retries: None,
            retry_timeout: None,
            timeout: None,
            pass_host: PassHost::Pass,
            upstream_host: None,
            scheme: "http".into(),
            keepalive_pool: KeepalivePool::default(),
        }
    }

    #[test]
    fn default_retries_is_nodes_minus_one() {
        let up =
            Upstream::build(&compiled(vec![("127.0.0.1", 1, 1), ("127.0.0.1", 2, 1)])).unwrap();
        assert_eq!(up.retries, 1);
        let up = Upstream::build(&compiled(vec![("127.0.0.1", 1, 1)])).unwrap();
        assert_eq!(up.retries, 0);
    }

    #[test]
    fn node_host_header_has_port_unless_80() {
        let up = Upstream::build(&compiled(vec![
            ("a.test", 80, 1),
            ("::1", 8080, 1),
            ("[::1]", 8081, 1),
        ]))
        .unwrap();
        assert_eq!(up.nodes[0].host_header, "a.test");
        assert_eq!(up.nodes[1].host_header, "[::1]:8080");
        assert_eq!(up.nodes[2].host_header, "[::1]:8081");
        assert!(up.nodes[0].addr.is_none());
        assert!(up.nodes[1].addr.is_some() && up.nodes[2].addr.is_some());
    }

    #[test]
    fn rewrite_without_host_is_an_error() {
        let mut c = compiled(vec![("127.0.0.1", 1, 1)]);
        c.pass_host = PassHost::Rewrite;
        assert!(Upstream::build(&c).is_err());
    }

    #[test]
    fn registry_slot_is_shared_and_swapped() {
        let reg = Registry::default();
        let slot = reg.slot("upstreams/1");
        assert!(slot.load().is_none());
        reg.upsert(Upstream::build(&compiled(vec![("127.0.0.1", 1, 1)])).unwrap());
        assert_eq!(slot.load().as_ref().unwrap().nodes[0].port, 1);
        reg.remove("upstreams/1");
        assert!(slot.load().is_none());
    }
}
