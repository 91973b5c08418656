//! HTTP route matching with APISIX's `radixtree_host_uri` semantics,
//! incrementally updatable.
//!
//! Matching order (lua-resty-radixtree, APISIX `radixtree_host_uri`):
//!
//! 1. Routes with `hosts` live in a host router keyed by the reversed host,
//!    each host owning its own URI sub-router. The request host is tried as
//!    an exact host first, then against wildcard hosts (`*.foo.com`) longest
//!    suffix first, ending with `*`. For every candidate host its URI
//!    sub-router runs; when nothing matches there the next host is tried.
//! 2. Only if no host-bound route matched are the host-less routes tried.
//! 3. Inside a URI router: the exact routes of the path first, then every
//!    stored prefix of the path, longest first. At each key routes are tried
//!    by priority (descending), then longer template first, then `seq`
//!    (ascending); the first whose methods, remote_addrs, vars and parameter
//!    template all pass wins, otherwise matching falls through to the next
//!    shorter key.
//!
//! Readers never block: [`Router::matches`] loads an immutable snapshot.
//! Writers are serialized and build the next snapshot from the previous one
//! with structural sharing (persistent radix trees), so a one-route change
//! costs time proportional to the depth of the affected keys, not to the
//! number of routes.

pub mod expr;
pub mod ipmatch;
mod path;
mod tree;

#[cfg(test)]
mod tests;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::cmp::Reverse;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use crate::router::expr::Expr;
pub use crate::router::ipmatch::IpMatcher;
use crate::router::path::UriTemplate;
use crate::router::tree::{PTree, Slot};

/// The request facts the router needs; implemented by the data plane.
/// Variables are asked for lazily, only when a candidate route has `vars`.
pub trait RequestVars {
    /// The request method, upper-case (`GET`, `POST`, ...).
    fn method(&self) -> &str;
    /// The request host: lower-case, without port (nginx `$host`).
    fn host(&self) -> &str;
    /// The (normalised) request path, without query string (`$uri`).
    fn path(&self) -> &str;
    /// The client address, if known.
    fn remote_addr(&self) -> Option<IpAddr>;
    /// A request variable by its APISIX name (`uri`, `host`, `arg_*`,
    /// `http_*`, `cookie_*`, `remote_addr`, ...); `None` when absent.
    /// A list-valued variable (for the `has` operator) is given as a
    /// comma-separated string.
    fn var(&self, name: &str) -> Option<Cow<'_, str>>;
}

/// How `:` and `*` in URI templates are interpreted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathMode {
    /// APISIX `radixtree_uri` / `radixtree_host_uri`: `:` is literal, a
    /// trailing `*` makes a prefix route, and a `*` elsewhere matches
    /// anything.
    #[default]
    Plain,
    /// APISIX `radixtree_uri_with_parameter`: additionally `:name` segments
    /// match one path segment and are captured.
    Params,
}

/// The matching-relevant fields of one APISIX route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteSpec {
    /// The route id; an upsert with an existing id replaces that route.
    pub id: String,
    /// URI templates (`uri` or `uris`); at least one.
    pub uris: Vec<String>,
    /// Hosts (`host`/`hosts`, or inherited from the service): exact host,
    /// `*.suffix` wildcard, or `*`. `None` or empty: host-less route.
    pub hosts: Option<Vec<String>>,
    /// Allowed methods; `None` or empty: any method.
    pub methods: Option<Vec<String>>,
    /// Allowed client addresses or CIDRs; `None` or empty: any client.
    pub remote_addrs: Option<Vec<String>>,
    /// A lua-resty-expr expression over request variables.
    pub vars: Option<serde_json::Value>,
    /// Higher priority is tried first among routes stored under one key.
    pub priority: i64,
    /// Insertion order: the final tie-breaker (ascending).
    pub seq: u64,
}

/// A route that could not be compiled. `message` uses APISIX's wording where
/// APISIX has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterError {
    /// The id of the offending route.
    pub route_id: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route '{}': {}", self.route_id, self.message)
    }
}

impl std::error::Error for RouterError {}

/// The result of a successful match.
pub struct Matched<T> {
    /// The id of the matched route.
    pub route_id: Arc<str>,
    /// The payload attached at upsert time.
    pub payload: Arc<T>,
    /// Captured template parameters, in template order (`:name` and `*name`
    /// segments; an unnamed `*` segment is captured as `:ext`).
    pub params: Vec<(String, String)>,
}

impl<T> Clone for Matched<T> {
    fn clone(&self) -> Self {
        Matched {
            route_id: Arc::clone(&self.route_id),
            payload: Arc::clone(&self.payload),
            params: self.params.clone(),
        }
    }
}

impl<T> fmt::Debug for Matched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Matched")
            .field("route_id", &self.route_id)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Compiled routes

const METHOD_NAMES: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

fn method_bit(method: &str) -> u16 {
    METHOD_NAMES
        .iter()
        .position(|m| *m == method)
        .map_or(0, |i| 1 << i)
}

/// A host of a route, as a key of the reversed-host tree.
#[derive(Debug, PartialEq, Eq)]
struct HostKey {
    key: Box<[u8]>,
    slot: Slot,
}

struct Route<T> {
    id: Arc<str>,
    payload: Arc<T>,
    priority: i64,
    seq: u64,
    /// Bit set over [`METHOD_NAMES`]; 0 means any method.
    methods: u16,
    remote: Option<IpMatcher>,
    vars: Option<Expr>,
    uris: Vec<UriTemplate>,
    /// Empty for a host-less route.
    hosts: Vec<HostKey>,
}

fn valid_host(h: &str) -> bool {
    if h == "*" {
        return true;
    }
    let body = h.strip_prefix('*').unwrap_or(h);
    !body.is_empty()
        && body.bytes().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        })
}

fn compile_route<T>(
    spec: RouteSpec,
    payload: Arc<T>,
    mode: PathMode,
) -> Result<Route<T>, RouterError> {
    let id = spec.id;
    let fail = |message: String| RouterError {
        route_id: id.clone(),
        message,
    };
    if id.is_empty() {
        return Err(fail("missing route id".into()));
    }
    if spec.uris.is_empty() {
        return Err(fail(
            "invalid configuration: property \"uris\" validation failed: expect array to have at least 1 items".into(),
        ));
    }
    let mut uris: Vec<UriTemplate> = Vec::with_capacity(spec.uris.len());
    for u in &spec.uris {
        if uris.iter().any(|x| &*x.template == u.as_str()) {
            continue;
        }
        uris.push(UriTemplate::compile(u, mode).map_err(fail)?);
    }

    let mut hosts: Vec<HostKey> = Vec::new();
    for (i, h) in spec.hosts.iter().flatten().enumerate() {
        if !valid_host(h) {
            return Err(fail(format!(
                "invalid configuration: property \"hosts\" validation failed: failed to validate item {}: failed to match pattern \"^\\\\*?[0-9a-zA-Z-._\\\\[\\\\]:]+$\" with \"{h}\"",
                i + 1
            )));
        }
        let lower = h.to_ascii_lowercase();
        let (body, slot) = match lower.strip_prefix('*') {
            Some(suffix) => (suffix, Slot::Prefix),
            None => (lower.as_str(), Slot::Exact),
        };
        let key = HostKey {
            key: body.bytes().rev().collect(),
            slot,
        };
        if !hosts.contains(&key) {
            hosts.push(key);
        }
    }

    let mut methods = 0u16;
    for (i, m) in spec.methods.iter().flatten().enumerate() {
        match method_bit(m) {
            0 => {
                return Err(fail(format!(
                    "invalid configuration: property \"methods\" validation failed: failed to validate item {}: matches none of the enum values",
                    i + 1
                )))
            }
            b => methods |= b,
        }
    }

    let remote = match spec.remote_addrs.as_deref() {
        None | Some([]) => None,
        Some(list) => Some(IpMatcher::new_indexed(list).map_err(|(i, e)| {
            fail(format!(
                "invalid configuration: property \"remote_addrs\" validation failed: failed to validate item {}: {e}",
                i + 1
            ))
        })?),
    };

    let vars = match &spec.vars {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => {
            let e = Expr::compile(v)
                .map_err(|e| fail(format!("failed to validate the 'vars' expression: {e}")))?;
            Some(e)
        }
    };

    Ok(Route {
        id: id.as_str().into(),
        payload,
        priority: spec.priority,
        seq: spec.seq,
        methods,
        remote,
        vars,
        uris,
        hosts,
    })
}

// ---------------------------------------------------------------------------
// Snapshots

/// One route stored under one key: the route and which of its URIs.
struct Entry<T> {
    route: Arc<Route<T>>,
    uri: usize,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry {
            route: Arc::clone(&self.route),
            uri: self.uri,
        }
    }
}

impl<T> Entry<T> {
    fn template(&self) -> &UriTemplate {
        &self.route.uris[self.uri]
    }

    /// The lua-resty-radixtree order: priority desc, template length desc,
    /// then insertion order; the id makes the order total.
    fn order_key(&self) -> (Reverse<i64>, Reverse<usize>, u64, &str) {
        (
            Reverse(self.route.priority),
            Reverse(self.template().template.len()),
            self.route.seq,
            &self.route.id,
        )
    }
}

/// The routes stored under one key, in matching order.
type Bucket<T> = Arc<[Entry<T>]>;
/// A URI router: path keys to buckets.
type UriTree<T> = PTree<Bucket<T>>;

fn bucket_insert<T>(old: Option<&Bucket<T>>, entry: Entry<T>) -> Bucket<T> {
    let old: &[Entry<T>] = old.map_or(&[], |b| b);
    let pos = old.partition_point(|e| e.order_key() <= entry.order_key());
    let mut v = Vec::with_capacity(old.len() + 1);
    v.extend_from_slice(&old[..pos]);
    v.push(entry);
    v.extend_from_slice(&old[pos..]);
    v.into()
}

fn bucket_remove<T>(old: Option<&Bucket<T>>, route: &Arc<Route<T>>) -> Option<Bucket<T>> {
    let old = old?;
    let v: Vec<Entry<T>> = old
        .iter()
        .filter(|e| !Arc::ptr_eq(&e.route, route))
        .cloned()
        .collect();
    (!v.is_empty()).then(|| v.into())
}

struct Snapshot<T> {
    /// Route id to route.
    ids: PTree<Arc<Route<T>>>,
    count: usize,
    /// Host-less routes.
    uri: UriTree<T>,
    /// Reversed host to that host's URI router.
    hosts: PTree<UriTree<T>>,
}

impl<T> Clone for Snapshot<T> {
    fn clone(&self) -> Self {
        Snapshot {
            ids: self.ids.clone(),
            count: self.count,
            uri: self.uri.clone(),
            hosts: self.hosts.clone(),
        }
    }
}

impl<T> Snapshot<T> {
    fn empty() -> Self {
        Snapshot {
            ids: PTree::default(),
            count: 0,
            uri: PTree::default(),
            hosts: PTree::default(),
        }
    }

    fn get(&self, id: &str) -> Option<&Arc<Route<T>>> {
        self.ids.get(id.as_bytes(), Slot::Exact)
    }

    fn add_to_uri_tree(tree: &mut UriTree<T>, route: &Arc<Route<T>>) {
        for (i, u) in route.uris.iter().enumerate() {
            let entry = Entry {
                route: Arc::clone(route),
                uri: i,
            };
            tree.update(u.key.as_bytes(), u.slot, |old| {
                Some(bucket_insert(old.as_ref(), entry))
            });
        }
    }

    fn remove_from_uri_tree(tree: &mut UriTree<T>, route: &Arc<Route<T>>) {
        for u in &route.uris {
            tree.update(u.key.as_bytes(), u.slot, |old| {
                bucket_remove(old.as_ref(), route)
            });
        }
    }

    fn insert(&mut self, route: Arc<Route<T>>) {
        if let Some(old) = self.get(&route.id).cloned() {
            self.remove_route(&old);
        }
        if route.hosts.is_empty() {
            Self::add_to_uri_tree(&mut self.uri, &route);
        } else {
            for h in &route.hosts {
                self.hosts.update(&h.key, h.slot, |old| {
                    let mut sub = old.unwrap_or_default();
                    Self::add_to_uri_tree(&mut sub, &route);
                    Some(sub)
                });
            }
        }
        let id = Arc::clone(&route.id);
        self.ids.update(id.as_bytes(), Slot::Exact, |_| Some(route));
        self.count += 1;
    }

    fn remove_route(&mut self, route: &Arc<Route<T>>) {
        if route.hosts.is_empty() {
            Self::remove_from_uri_tree(&mut self.uri, route);
        } else {
            for h in &route.hosts {
                self.hosts.update(&h.key, h.slot, |old| {
                    let mut sub = old?;
                    Self::remove_from_uri_tree(&mut sub, route);
                    (!sub.is_empty()).then_some(sub)
                });
            }
        }
        self.ids.update(route.id.as_bytes(), Slot::Exact, |_| None);
        self.count -= 1;
    }

    fn remove_id(&mut self, id: &str) -> bool {
        match self.get(id).cloned() {
            Some(route) => {
                self.remove_route(&route);
                true
            }
            None => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Matching

struct Request<'a, V: ?Sized> {
    vars: &'a V,
    path: &'a str,
    method: u16,
}

impl<V: RequestVars + ?Sized> Request<'_, V> {
    fn try_entry<T>(&self, entry: &Entry<T>) -> Option<Matched<T>> {
        let route = &*entry.route;
        if route.methods != 0 && route.methods & self.method == 0 {
            return None;
        }
        if let Some(m) = &route.remote {
            match self.vars.remote_addr() {
                Some(ip) if m.matches(ip) => {}
                _ => return None,
            }
        }
        if let Some(e) = &route.vars {
            if !e.eval(self.vars) {
                return None;
            }
        }
        let mut params = Vec::new();
        if !entry.template().check(self.path, &mut params) {
            return None;
        }
        Some(Matched {
            route_id: Arc::clone(&route.id),
            payload: Arc::clone(&route.payload),
            params,
        })
    }

    fn in_tree<T>(&self, tree: &UriTree<T>) -> Option<Matched<T>> {
        tree.find_map(self.path.as_bytes(), |bucket| {
            bucket.iter().find_map(|e| self.try_entry(e))
        })
    }
}

/// Host names up to this length are reversed on the stack.
const HOST_BUF: usize = 256;

// ---------------------------------------------------------------------------
// The router

/// An incrementally updatable `radixtree_host_uri` router carrying a payload
/// of type `T` per route.
pub struct Router<T> {
    mode: PathMode,
    current: ArcSwap<Snapshot<T>>,
    writer: Mutex<()>,
}

impl<T: Send + Sync + 'static> Router<T> {
    /// An empty router interpreting URI templates per `mode`.
    pub fn new(mode: PathMode) -> Self {
        Router {
            mode,
            current: ArcSwap::from_pointee(Snapshot::empty()),
            writer: Mutex::new(()),
        }
    }

    /// The path mode chosen at construction.
    pub fn mode(&self) -> PathMode {
        self.mode
    }

    /// Inserts a route, or replaces the route with the same id (its old keys
    /// are removed). Publishes a new version.
    pub fn upsert(&self, spec: RouteSpec, payload: Arc<T>) -> Result<(), RouterError> {
        let route = Arc::new(compile_route(spec, payload, self.mode)?);
        let _w = self.writer.lock();
        let mut next = Snapshot::clone(&self.current.load());
        next.insert(route);
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// Removes a route by id; returns whether it existed.
    pub fn remove(&self, id: &str) -> bool {
        let _w = self.writer.lock();
        let mut next = Snapshot::clone(&self.current.load());
        if !next.remove_id(id) {
            return false;
        }
        self.current.store(Arc::new(next));
        true
    }

    /// Applies removals, then upserts (in order; a later upsert of the same
    /// id wins), and publishes the result as one version. All or nothing:
    /// if any route fails to compile nothing changes and the error names it.
    pub fn apply_batch(
        &self,
        upserts: Vec<(RouteSpec, Arc<T>)>,
        removes: Vec<String>,
    ) -> Result<(), RouterError> {
        let mut routes = Vec::with_capacity(upserts.len());
        for (spec, payload) in upserts {
            routes.push(Arc::new(compile_route(spec, payload, self.mode)?));
        }
        let _w = self.writer.lock();
        let mut next = Snapshot::clone(&self.current.load());
        for id in &removes {
            next.remove_id(id);
        }
        for r in routes {
            next.insert(r);
        }
        self.current.store(Arc::new(next));
        Ok(())
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.current.load().count
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when a route with this id is present.
    pub fn contains(&self, id: &str) -> bool {
        self.current.load().get(id).is_some()
    }

    /// Finds the route for a request; `None` means APISIX's 404.
    pub fn matches<V: RequestVars + ?Sized>(&self, req: &V) -> Option<Matched<T>> {
        let snap = self.current.load();
        let r = Request {
            vars: req,
            path: req.path(),
            method: method_bit(req.method()),
        };
        if !snap.hosts.is_empty() {
            let host = req.host().as_bytes();
            let mut buf = [0u8; HOST_BUF];
            let heap: Vec<u8>;
            let rev: &[u8] = if host.len() <= HOST_BUF {
                for (d, s) in buf.iter_mut().zip(host.iter().rev()) {
                    *d = s.to_ascii_lowercase();
                }
                &buf[..host.len()]
            } else {
                heap = host.iter().rev().map(u8::to_ascii_lowercase).collect();
                &heap
            };
            if let Some(m) = snap.hosts.find_map(rev, |sub| r.in_tree(sub)) {
                return Some(m);
            }
        }
        r.in_tree(&snap.uri)
    }
}
