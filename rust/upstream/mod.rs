//! Upstreams: nodes, balancer, keep-alive pools, and the registry routes point into.

pub mod balancer;
pub mod h1;
pub mod pool;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use parking_lot::Mutex;

use crate::config::{seconds, CompiledUpstream, KeepalivePool, PassHost, Timeouts};
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
    /// Idle connections to this node (shared, see [`Pools`]).
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
    /// Builds an upstream, its nodes' pools taken from `pools`; errors name the field.
    pub fn build(c: &CompiledUpstream, pools: &Pools) -> Result<Self, String> {
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
                pool: pools.get(host, n.port, c.keepalive_pool),
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
            retry_timeout: c.retry_timeout.filter(|t| *t > 0.0).map(seconds),
            timeouts: c.timeout,
            pass_host: c.pass_host,
            upstream_host,
        })
    }
}

/// The keep-alive pools of every node, by address and limits: one pool however many upstreams
/// name a node, and the same pool across config versions. APISIX keys its pools by
/// `scheme#host#port` per worker, so editing an upstream (a weight, a node added, a retry
/// count) or re-creating a route keeps the connections to the nodes that stay; a pool built
/// per upstream version would drop them all and reconnect under load.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<PoolMap>,
}

/// Host, port, then the limits (`idle_timeout` as bits: a pool is made with its limits).
type PoolKey = (String, u16, usize, u64, u64);

#[derive(Default)]
struct PoolMap {
    live: HashMap<PoolKey, Weak<Pool>>,
    prune_at: usize,
}

impl Pools {
    /// The pool of `host:port` with `limits`, made if no live upstream has it.
    pub fn get(&self, host: &str, port: u16, limits: KeepalivePool) -> Arc<Pool> {
        let key = (
            host.to_owned(),
            port,
            limits.size,
            limits.requests,
            limits.idle_timeout.to_bits(),
        );
        let mut map = self.pools.lock();
        if let Some(pool) = map.live.get(&key).and_then(Weak::upgrade) {
            return pool;
        }
        let pool = Pool::new(limits);
        map.live.insert(key, Arc::downgrade(&pool));
        if map.live.len() >= map.prune_at {
            // Forget pools no upstream holds any more (amortised: the bound doubles).
            map.live.retain(|_, w| w.strong_count() > 0);
            map.prune_at = (map.live.len() * 2).max(64);
        }
        pool
    }

    /// Pools still held by an upstream (tests).
    pub fn live(&self) -> usize {
        let map = self.pools.lock();
        map.live.values().filter(|w| w.strong_count() > 0).count()
    }
}

/// A named place a route points at; swapping what it holds updates every route using it.
pub type UpstreamSlot = ArcSwapOption<Upstream>;

/// Upstream slots by key. Locked only when config changes.
#[derive(Default)]
pub struct Registry {
    slots: Mutex<HashMap<String, Arc<UpstreamSlot>>>,
    /// The nodes' keep-alive pools, shared by every upstream built for this registry.
    pub pools: Pools,
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

    fn build(nodes: Vec<(&str, u16, u32)>) -> Upstream {
        Upstream::build(&compiled(nodes), &Pools::default()).unwrap()
    }

    #[test]
    fn pools_are_shared_by_address_and_limits_across_versions() {
        let pools = Pools::default();
        let v1 = Upstream::build(
            &compiled(vec![("127.0.0.1", 1, 1), ("127.0.0.1", 2, 1)]),
            &pools,
        )
        .unwrap();
        // a new version (weights changed, node 2 gone, node 3 added) keeps node 1's pool
        let v2 = Upstream::build(
            &compiled(vec![("127.0.0.1", 1, 5), ("127.0.0.1", 3, 1)]),
            &pools,
        )
        .unwrap();
        assert!(Arc::ptr_eq(&v1.nodes[0].pool, &v2.nodes[0].pool));
        assert!(!Arc::ptr_eq(&v1.nodes[1].pool, &v2.nodes[1].pool));
        // another upstream naming the same node shares it; other limits get their own
        let mut other = compiled(vec![("127.0.0.1", 1, 1)]);
        other.key = "routes/9".into();
        let shared = Upstream::build(&other, &pools).unwrap();
        assert!(Arc::ptr_eq(&v1.nodes[0].pool, &shared.nodes[0].pool));
        other.keepalive_pool.size = 7;
        let sized = Upstream::build(&other, &pools).unwrap();
        assert!(!Arc::ptr_eq(&v1.nodes[0].pool, &sized.nodes[0].pool));
        assert_eq!(pools.live(), 4);
        drop((v1, v2, shared, sized));
        assert_eq!(pools.live(), 0);
        let again = Upstream::build(&compiled(vec![("127.0.0.1", 1, 1)]), &pools).unwrap();
        assert_eq!((pools.live(), again.nodes.len()), (1, 1));
    }

    #[test]
    fn default_retries_is_nodes_minus_one() {
        let up = build(vec![("127.0.0.1", 1, 1), ("127.0.0.1", 2, 1)]);
        assert_eq!(up.retries, 1);
        let up = build(vec![("127.0.0.1", 1, 1)]);
        assert_eq!(up.retries, 0);
    }

    #[test]
    fn node_host_header_has_port_unless_80() {
        let up = build(vec![
            ("a.test", 80, 1),
            ("::1", 8080, 1),
            ("[::1]", 8081, 1),
        ]);
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
        assert!(Upstream::build(&c, &Pools::default()).is_err());
    }

    #[test]
    fn registry_slot_is_shared_and_swapped() {
        let reg = Registry::default();
        let slot = reg.slot("upstreams/1");
        assert!(slot.load().is_none());
        reg.upsert(build(vec![("127.0.0.1", 1, 1)]));
        assert_eq!(slot.load().as_ref().unwrap().nodes[0].port, 1);
        reg.remove("upstreams/1");
        assert!(slot.load().is_none());
    }
}
